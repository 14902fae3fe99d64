"""The profile file's schema, read and written from one table: where each figure of a
:class:`~costplan.hardware.profile.HardwareProfile` lives in the TOML file, in which unit, and how it is
checked. :func:`costplan.hardware.profile.parse_profile` reads the scalar fields through
:func:`read_scalars`; :func:`profile_toml` writes every field back (``costplan calibrate`` writes its
profiles with it), so a file written is a file read: ``parse_profile(profile_toml(p)) == p``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from costplan.hardware.fields import Fields
from costplan.hardware.opclass import RECURRENT


@dataclass(frozen=True)
class Field:
    """One scalar figure: ``key`` in the file (``section.name``), ``attr`` on the profile, ``scale``
    profile units per file unit (GB/s -> bytes/s: 1e9), and how it is read."""

    key: str
    attr: str
    kind: str                      # text | number | optional | flag | int
    scale: float = 1.0
    default: Any = None            # None: required (number, text) or absent (optional, int)
    high: float | None = None
    positive: bool = False
    # an optional figure a fit may find to be 0: written as 0 rather than left out, since a profile
    # without it predates the term (roofline.predated_layers), where 0 is a measurement
    zero_ok: bool = False


SCALARS: tuple[Field, ...] = (
    Field("name", "name", "text"),
    Field("kind", "kind", "text", default="gpu"),
    Field("description", "description", "text", default=""),
    Field("threads", "threads", "int"),
    Field("channel_multiple", "channel_multiple", "int", default=1),
    Field("memory.bandwidth_gbs", "bandwidth", "number", 1e9, positive=True),
    Field("memory.onchip_mb", "onchip_bytes", "number", 1e6, default=0.0),
    Field("memory.capacity_gb", "memory_capacity", "optional", 1e9),
    Field("memory.onchip_bandwidth_gbs", "onchip_bandwidth", "optional", 1e9),
    Field("memory.weights_on_chip", "weights_on_chip", "flag", default=False),
    Field("memory.weights_overlap", "weights_overlap", "flag", default=True),
    Field("memory.pool_windows", "pool_windows", "flag", default=False),
    Field("memory.layout_reorders", "layout_reorders", "flag", default=False),
    Field("memory.fresh_output_mb", "fresh_output_bytes", "optional", 1e6),
    Field("memory.first_touch_gbs", "first_touch_bandwidth", "optional", 1e9),
    Field("efficiency.memory", "memory_efficiency", "number", default=1.0, high=1.0, positive=True),
    Field("efficiency.half_util_us", "half_util_s", "optional", 1e-6),
    Field("efficiency.weight_only", "weight_only_efficiency", "number", default=0.9, high=1.0, positive=True),
    Field("overhead.per_op_us", "per_op_s", "number", 1e-6, default=0.0),
    Field("overhead.norm_plane_ns", "norm_plane_s", "optional", 1e-9, zero_ok=True),
    Field("overhead.fuse_elementwise", "fuse_elementwise", "flag", default=False),
    Field("overhead.dispatch_overlaps", "dispatch_overlaps", "flag", default=False),
    Field("overhead.fuse_siblings", "fuse_siblings", "flag", default=False),
    Field("energy.pj_per_dram_byte", "energy_pj_per_dram_byte", "optional"),
    Field("calibration.reference_ms", "reference_s", "optional", 1e-3),
)

# figures kept per op class (or rated kind) in an inline table: (key, profile attribute, scale)
CLASS_TABLES = (("overhead.per_class_us", "per_class_s", 1e-6), ("overhead.per_call_us", "per_call_s", 1e-6),
                ("efficiency.strided", "strided", 1.0), ("efficiency.off_tile", "off_tile", 1.0),
                ("efficiency.one_tile_pass", "one_tile_pass", 1.0))
PEAK_SCALE = 1e12 / 2      # file: TFLOPS (vendors quote FLOPS = 2 x MACs); profile: MAC/s
RATED_SCALE = 1e9          # memory.<kind>_gbs -> bytes/s


def positive_int(f: Fields, key: str, default: int | None) -> int | None:
    value = f.get(key, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise f.fail(key, f"must be a positive integer, got {value!r}")
    return value


def read_scalars(sections: Mapping[str, Fields]) -> dict[str, Any]:
    """The profile attributes of :data:`SCALARS` from the file's tables (``""`` is the top level)."""
    out: dict[str, Any] = {}
    for field in SCALARS:
        section, _, key = field.key.rpartition(".")
        t = sections[section]
        if field.kind == "text":
            out[field.attr] = t.text(key, field.default)
        elif field.kind == "number":
            out[field.attr] = t.number(key, field.default, high=field.high, positive=field.positive) * field.scale
        elif field.kind == "optional":
            out[field.attr] = t.optional(key, field.scale, positive=not field.zero_ok)
        elif field.kind == "flag":
            out[field.attr] = t.flag(key, field.default)
        else:
            out[field.attr] = positive_int(t, key, field.default)
    return out


# ---- writing -------------------------------------------------------------------------------------

def _number(value: float) -> str:
    text = f"{value:.10g}"     # ten digits: the figure, not the float's last bits
    return text if any(c in text for c in ".en") else text + ".0"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value) if isinstance(value, int) else _number(value)
    if isinstance(value, str):
        return json.dumps(value)        # a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} to a profile")


def _key(name: str) -> str:
    return name if name.replace("_", "").replace("-", "").isalnum() else json.dumps(name)


class _Writer:
    def __init__(self, notes: Mapping[str, str]) -> None:
        self.notes = notes
        # the usual order of a profile file; other tables follow as they come
        self.sections: dict[str, list[str]] = {k: [] for k in ("", "peak_tflops", "memory", "efficiency", "overhead")}

    def put(self, key: str, value: Any) -> None:
        section, _, name = key.rpartition(".")
        if section.startswith("sparsity.") or section.startswith("runtimes."):   # one table per entry
            head, _, entry = section.partition(".")
            section = f"{head}.{_key(entry)}"
        note = self.notes.get(key)
        line = f"{_key(name)} = {_value(value)}" + (f"   # {note}" if note else "")
        self.sections.setdefault(section, []).append(line)

    def text(self, header: str) -> str:
        out = [header.rstrip("\n")] if header else []
        out += self.sections.pop("", [])
        for section, lines in self.sections.items():
            if lines:
                out += ["", f"[{section}]", *lines]
        return "\n".join(out) + "\n"


def profile_toml(profile: Any, notes: Mapping[str, str] | None = None, header: str = "") -> str:
    """``profile`` (a HardwareProfile) as a profile file: ``header`` comment lines first, and
    ``notes`` (field key -> comment, e.g. ``"memory.bandwidth_gbs"``) beside their fields."""
    p, w = profile, _Writer(notes or {})
    w.put("default_dtype", p.default_dtype)
    w.put("runtime", p.runtime)
    if p.calibrated:
        w.put("calibrated", list(p.calibrated))
    for field in SCALARS:
        value = getattr(p, field.attr)
        if value is not None:
            w.put(field.key, value / field.scale if field.kind in ("number", "optional") else value)
    if p.tf32_macs:
        w.put("tf32_classes", list(p.tf32_classes))
        w.put("peak_tflops.tf32", p.tf32_macs / PEAK_SCALE)
    if p.fp16_accumulate_macs:
        w.put("peak_tflops.float16_acc16", p.fp16_accumulate_macs / PEAK_SCALE)
    for dtype, macs in p.peak_macs.items():
        w.put(f"peak_tflops.{dtype}", macs / PEAK_SCALE)
    for kind, rate in p.rated_bandwidth.items():
        w.put(f"memory.{kind}_gbs", rate / RATED_SCALE)
    for klass, value in p.efficiency.items():
        w.put(f"efficiency.{klass}", value)
    halves = {v for k, v in p.half_util_macs.items() if k not in RECURRENT}   # 0 unless given: profile._half_util
    if len(halves) == 1 and not any(p.half_util_macs.get(k) for k in RECURRENT):
        w.put("efficiency.half_util_macs", halves.pop())
    else:
        w.put("efficiency.half_util_macs", dict(p.half_util_macs))
    if p.half_util_dims:
        w.put("efficiency.half_util_dims", {k: list(v) for k, v in p.half_util_dims.items()})
    if p.weight_only_memory:
        w.put("efficiency.weight_only_memory", dict(p.weight_only_memory))
    for key, attr, scale in CLASS_TABLES:
        if getattr(p, attr):
            w.put(key, {k: v / scale for k, v in getattr(p, attr).items()})
    for dtype, table in p.efficiency_by_dtype.items():
        for klass, value in table.items():
            w.put(f"efficiency.{dtype}.{klass}", value)
    if p.energy_pj_per_mac:
        w.put("energy.pj_per_mac", dict(p.energy_pj_per_mac))
    if p.winograd_dtypes:
        w.put("winograd.speedup", p.winograd_speedup)
        w.put("winograd.dtypes", list(p.winograd_dtypes))
    for name, runtime in p.runtimes.items():
        w.put(f"runtimes.{name}.per_op_us", runtime.per_op_s * 1e6)
        for flag in runtime._fields[1:]:       # the flags, each under its field's name
            w.put(f"runtimes.{name}.{flag}", getattr(runtime, flag))
    for pattern, s in p.sparsity.items():
        for attr in ("compute_speedup", "efficiency", "compressed_weights", "index_bits", "min_sparsity"):
            w.put(f"sparsity.{pattern}.{attr}", getattr(s, attr))
        if s.dtypes:
            w.put(f"sparsity.{pattern}.dtypes", list(s.dtypes))
    return w.text(header)
