"""Hardware profiles: devices as data (``hwprofiles/*.toml``), validated into frozen records.

A profile states peak throughput per dtype, memory bandwidth, on-chip memory, per-op overhead,
attainable efficiency per op class, how each sparsity pattern is exploited, and optionally energy.
A bad profile fails with the file, the field and what is wrong.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from costplan.errors import CostplanError, close_names
from costplan.hardware.fields import Fields
from costplan.hardware.schema import CLASS_TABLES, PEAK_SCALE, RATED_SCALE, read_scalars
from costplan.hardware.opclass import RATED_KINDS, RECURRENT
from costplan.spellings import DTYPE_BYTES, FALLBACK, canonical_dtype

# pointwise = 1x1 convolutions; attention = fused scaled-dot-product attention; conv1d/conv3d = 1-D
# and 3-D convolutions; im2col = a convolution PyTorch runs as im2col and a GEMM on a CPU (one small
# sample: roofline.runs_im2col); lstm/gru/rnn = one time step of that cell (its hidden-to-gates GEMM and gates:
# CPUs run the three by different code, an LSTM step here in half a GRU step's time: opclass.RECURRENT)
OP_CLASSES = ("conv", "pointwise", "depthwise", "gemm", "attention", "conv1d", "conv3d", *RECURRENT, "gemm_dram",
              "im2col")
# a class a profile gives no figures of its own takes its leader's
LEADERS = {"pointwise": "conv", "conv1d": "conv", "conv3d": "conv", "attention": "gemm",
           **dict.fromkeys(RECURRENT, "gemm"), "gemm_dram": "gemm", "im2col": "gemm"}
# what a layer costs as, beyond the op classes: memory-only kinds with rates of their own (embedding
# row gathers among them), and plain memory-only ops (elementwise, copies)
MEMORY_KINDS = (*RATED_KINDS, "elementwise")
COST_KINDS = (*OP_CLASSES, *MEMORY_KINDS)


@dataclass(frozen=True)
class SparsitySupport:
    """How a device exploits one sparsity pattern.

    Compute MACs scale by max(density, 1 / compute_speedup) and run at ``efficiency`` of the dense
    rate; with ``compressed_weights`` only non-zeros are read, plus ``index_bits`` of metadata per
    non-zero (per block for block patterns). Below ``min_sparsity`` the device runs dense kernels.
    """

    compute_speedup: float = 1.0
    efficiency: float = 1.0
    compressed_weights: bool = False
    index_bits: float = 0.0
    min_sparsity: float = 0.0
    dtypes: tuple[str, ...] = ()     # empty: every dtype

    def applies_to(self, dtype: str) -> bool:
        return not self.dtypes or dtype in self.dtypes

    @property
    def useful(self) -> bool:
        """Whether this pattern can make anything faster on the device."""
        return self.compute_speedup > 1.0 or self.compressed_weights


class Runtime(NamedTuple):
    """An execution of the model on a device: its per-op cost and what it fuses. The fields are the
    HardwareProfile's of the same names, which hold the runtime in force."""

    per_op_s: float                   # seconds of launch / dispatch per op
    fuse_elementwise: bool            # norms and activations fold into the producing kernel
    dispatch_overlaps: bool = False   # the host's dispatch overlaps the device's kernels (asynchronous)
    fuse_siblings: bool = False       # projections that read one activation run as one GEMM


@dataclass(frozen=True)
class HardwareProfile:
    """One device. Throughput in MAC/s, bandwidth in bytes/s, sizes in bytes, times in seconds."""

    name: str
    kind: str                         # gpu | cpu | npu | fpga
    description: str
    peak_macs: Mapping[str, float]    # dtype -> dense MAC/s
    bandwidth: float                  # DRAM bytes/s
    onchip_bytes: float               # cache / SRAM that holds activations between layers
    onchip_bandwidth: float | None    # bytes/s for activations that stay on chip; None: free
    efficiency: Mapping[str, float]   # op class -> attainable share of peak on large shapes
    memory_efficiency: float          # attainable share of bandwidth
    half_util_macs: Mapping[str, float]  # op class -> an op this size attains half its efficiency
    per_op_s: float                   # launch / dispatch overhead per layer
    fuse_elementwise: bool            # norms and activations fold into the producing kernel
    weights_on_chip: bool             # weights stay on chip when the whole model fits
    default_dtype: str
    sparsity: Mapping[str, SparsitySupport] = field(default_factory=dict)
    energy_pj_per_mac: Mapping[str, float] = field(default_factory=dict)
    energy_pj_per_dram_byte: float | None = None
    threads: int | None = None
    # op class -> (rows, outputs, reduction[, 1-D steps per sample]) at which the class attains half its
    # rate in that dimension; where given it replaces half_util_macs (a thin GEMM is slow however many MACs)
    half_util_dims: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    per_class_s: Mapping[str, float] = field(default_factory=dict)  # op class or rated kind -> fixed cost per call
    # recurrent cell -> fixed cost per call of a layer and direction, beside its per-step cost in per_class_s
    # (oneDNN's LSTM primitive is set up and its weights reordered on every call: ~0.3 ms on a 2-core EPYC)
    per_call_s: Mapping[str, float] = field(default_factory=dict)
    # op class -> rate of a strided convolution over a stride-1 one's (calibrated CPUs; default 1)
    strided: Mapping[str, float] = field(default_factory=dict)
    # op class -> rate of a layer whose channels are off the kernels' tile over one on it (roofline.off_tile;
    # calibrated CPUs; default 1)
    off_tile: Mapping[str, float] = field(default_factory=dict)
    # op class -> rate of a convolution run one output tile a pass over its input over one run several
    # (roofline.one_tile_a_pass; calibrated AVX-512 CPUs; a class without one takes its leader's, else 1)
    one_tile_pass: Mapping[str, float] = field(default_factory=dict)
    # False: a layer's weight read from DRAM adds to its time instead of hiding under its math
    # (eager CPU kernels pack or reorder their weights before computing, and in a network the
    # weights arrive cold: read at DRAM bandwidth first)
    weights_overlap: bool = True
    # True: a pool's rated bytes are its input plus its output once per window element (roofline.pool_bytes;
    # calibrations from 2026-12-03 on). False (older profiles): its input plus its output
    pool_windows: bool = False
    # True: a convolution's plain input is converted to the kernels' blocked layout and its output back,
    # each one more read and write before and after the math (roofline.reorder_passes; calibrations
    # from 2026-12-04 on). False: the layout reorders are in the fitted rates and fixed costs
    layout_reorders: bool = False
    # bytes/s (read + written) of memory-only ops slower than bandwidth: 'transcendental' (GELU,
    # softmax), 'sigmoid' (sigmoid, SiLU), 'pooling' (max/avg windows), 'norm' (batch/layer/group
    # norm); see opclass.rated_kind
    rated_bandwidth: Mapping[str, float] = field(default_factory=dict)
    channel_multiple: int = 1         # channel counts the kernels run best at: SIMD width, MMA tile
    # outputs larger than this many bytes get freshly mapped pages on every call (glibc mmaps blocks
    # over 32 MiB however often they are freed) and pay for first touching them at first_touch_bandwidth
    fresh_output_bytes: float | None = None
    first_touch_bandwidth: float | None = None
    source: str = ""                  # the file it came from
    # the execution the per-op overhead and fusion describe: 'eager' (PyTorch eager: a kernel per op,
    # dispatch per call), 'fused' (TensorRT-like: norms and activations folded in), 'graph' (...);
    # runtimes maps other executions the profile knows to their Runtime
    runtime: str = "fused"
    runtimes: Mapping[str, Runtime] = field(default_factory=dict)
    # the host dispatches each op while the device still runs earlier ones (PyTorch eager on a GPU:
    # asynchronous launches), so a layer takes the longer of its dispatch and its kernel, not the sum
    dispatch_overlaps: bool = False
    # projections that read one activation (q/k/v, gate/up) run as one GEMM, as TensorRT and vLLM run
    # them (roofline.sibling_shares)
    fuse_siblings: bool = False
    # float32 convolutions run as TF32 on tensor cores by default in PyTorch (cudnn.allow_tf32 is
    # True; matmuls default to full FP32): the MAC/s they get, and the op classes that get it
    tf32_macs: float | None = None
    tf32_classes: tuple[str, ...] = ()
    # dtype -> op class -> efficiency, where a precision's kernels attain another share of its peak
    # than ``efficiency`` says (CUDA-core FP32 against tensor-core FP16; a power-capped board)
    efficiency_by_dtype: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # 3x3 stride-1 convolutions run as Winograd at these dtypes (cuDNN picks it for FP32 on CUDA
    # cores), needing ``winograd_speedup`` times fewer multiplies than the direct convolution
    winograd_speedup: float = 1.0
    winograd_dtypes: tuple[str, ...] = ()
    # the op classes and memory kinds (COST_KINDS) whose figures were measured on this device by
    # `costplan calibrate`; empty for a profile from spec sheets and published figures
    calibrated: tuple[str, ...] = ()
    # seconds of probes.reference_workload() when calibrated: `costplan measure` times it again beside a
    # model, to say how much faster or slower the machine runs now than when its figures were measured
    reference_s: float | None = None
    # seconds at which an op of a class without half_util_dims attains half its rate, where given in
    # place of half_util_macs: a GPU kernel's floor (a wave's tail, its prologue) is a time, the same at
    # every precision, where a MAC count would make a CUDA-core FP32 GEMM's floor 16x a tensor-core one's
    half_util_s: float | None = None
    # MAC/s of FP16 tensor-core math accumulating in FP16 (GeForce parts run FP32 accumulation at half
    # the rate; cuBLAS with CUBLAS_COMPUTE_16F and some TensorRT tactics accumulate in FP16)
    fp16_accumulate_macs: float | None = None
    # execution options asked of this device (with_tf32, with_fp16_accumulate): option_notes says when
    # one cannot apply, so a flag is never dropped without a word
    options: tuple[str, ...] = ()
    memory_capacity: float | None = None   # bytes of device memory (DRAM/HBM) a model and its KV cache must fit
    # seconds a batch norm spends per (sample, channel) plane beyond its bytes (calibrated CPUs: its
    # kernel loops over planes, so 64 samples of 128 channels over 10 steps run slower than one map)
    norm_plane_s: float | None = None
    # a weight-only quantised GEMM (int4/int8 weights, 16-bit activations) runs at this share of the
    # 16-bit GEMM's rate: the dequantisation in its inner loop
    weight_only_efficiency: float = 0.9
    # weight-only format ('int8', 'int4', 'float8') -> share of the attainable bandwidth its GEMV
    # kernels reach reading weights (dequantising in the loop keeps them off the copy rate); 1 unless given
    weight_only_memory: Mapping[str, float] = field(default_factory=dict)

    def class_figure(self, table: Mapping[str, Any], klass: str, default: Any = None) -> Any:
        """``table[klass]``, or its leader's (:data:`LEADERS`) where the profile gives none of its own."""
        if klass in table:
            return table[klass]
        return table.get(LEADERS.get(klass, klass), default)

    def with_runtime(self, runtime: str | None) -> HardwareProfile:
        """This device under another execution (its per-op overhead and fusion)."""
        if runtime is None or runtime == self.runtime:
            return self
        if runtime not in self.runtimes:
            known = ", ".join([self.runtime, *self.runtimes])
            raise CostplanError(f"{self.name} describes no '{runtime}' runtime; it knows {known}")
        runtimes = {**{k: v for k, v in self.runtimes.items() if k != runtime},
                    self.runtime: Runtime(*(getattr(self, f) for f in Runtime._fields))}
        return replace(self, **self.runtimes[runtime]._asdict(), runtime=runtime, runtimes=runtimes)

    def with_tf32(self, on: bool = True) -> HardwareProfile:
        """This device with float32 matmuls on TF32 tensor cores too (``torch.backends.cuda.matmul.
        allow_tf32 = True``; PyTorch's default runs only convolutions so), where it has TF32; where it
        has none, :meth:`option_notes` says so."""
        if not on:
            return self
        asked = self._asking("tf32")
        return replace(asked, tf32_classes=tuple(OP_CLASSES)) if self.tf32_macs else asked

    def with_fp16_accumulate(self, on: bool = True) -> HardwareProfile:
        """This device with float16 matmuls accumulating in FP16, at the profile's
        ``float16_acc16`` peak where it states one (elsewhere FP16 accumulation runs at the same rate,
        and :meth:`option_notes` says so)."""
        if not on:
            return self
        asked = self._asking("fp16_accumulate")
        if not self.fp16_accumulate_macs:
            return asked
        return replace(asked, peak_macs={**self.peak_macs, "float16": self.fp16_accumulate_macs})

    def _asking(self, option: str) -> HardwareProfile:
        return self if option in self.options else replace(self, options=(*self.options, option))

    def option_notes(self, precision: str) -> tuple[str, ...]:
        """Warnings for the execution options asked of this device that change nothing: one it lacks,
        or one for another precision than ``precision``, the one the estimate runs at."""
        out = []
        if "tf32" in self.options:
            if not self.tf32_macs:
                out.append(f"--tf32: {self.name} has no TF32 tensor cores; float32 matmuls are priced at its FP32 rate")
            elif precision != "float32":
                out.append(f"--tf32 moves float32 matmuls onto TF32; this estimate runs at {precision}, which it leaves as is")
        if "fp16_accumulate" in self.options:
            if not self.fp16_accumulate_macs:
                out.append(f"--fp16-accumulate: {self.name} states no FP16-accumulate rate apart (on this part it is the "
                           "FP32-accumulate one); float16 math is priced at that")
            elif precision != "float16":
                out.append(f"--fp16-accumulate speeds float16 math; this estimate runs at {precision}, which it leaves as is")
        return tuple(out)

    def peak_for(self, precision: str, klass: str | None) -> float:
        """MAC/s an op class gets at ``precision``: TF32 for float32 convolutions where the device runs them so."""
        if precision == "float32" and self.tf32_macs and (klass in self.tf32_classes
                                                          or LEADERS.get(klass or "") in self.tf32_classes):
            return self.tf32_macs
        return self.peak_macs[precision]

    def efficiency_for(self, precision: str, klass: str) -> float:
        """Attainable share of ``peak_for(precision, klass)`` on large shapes."""
        own = self.efficiency_by_dtype.get(precision, {})
        return own[klass] if klass in own else self.class_figure(self.efficiency, klass)

    def precision(self, dtype: str) -> str:
        """The dtype the device runs ``dtype`` (any spelling: fp16, half, bf16) at: itself, or the
        device's default where it has no peak for it (:meth:`precision_note` says so)."""
        dtype = canonical_dtype(dtype)
        if dtype in self.peak_macs:
            return dtype
        return next((d for d in FALLBACK.get(dtype, ()) if d in self.peak_macs), self.default_dtype)

    def precision_note(self, dtype: str) -> str | None:
        """A warning when the device does not run ``dtype`` and estimates run at its default."""
        run = self.precision(dtype)
        asked = canonical_dtype(dtype)
        if run == asked:
            return None
        how = "its default precision" if run == self.default_dtype else "as the model would be served there"
        return (f"{self.name} has no {asked} figures (the device lacks {asked} math): latency is estimated at {run}, "
                f"{how} (available: {', '.join(self.peak_macs)})")

    def ridge(self, dtype: str) -> float:
        """Ridge point in MACs per byte: below it a layer is bandwidth-bound."""
        return self.peak_macs[self.precision(dtype)] / self.bandwidth

    def support(self, pattern: str, dtype: str) -> SparsitySupport | None:
        """How ``pattern`` ('unstructured', '2:4', '4x1', ...) is exploited at ``dtype``, if at all."""
        entry = self.sparsity.get(pattern)
        if entry is None and "x" in pattern:
            entry = self.sparsity.get("block")
        if entry is None and ":" in pattern:
            entry = self.sparsity.get("N:M")
        return entry if entry is not None and entry.applies_to(canonical_dtype(dtype)) else None


# ---- loading ---------------------------------------------------------------------------------

def _builtin_dir() -> Path:
    return Path(str(resources.files("costplan"))) / "hwprofiles"


def list_profiles() -> list[str]:
    """Names of the profiles shipped with costplan."""
    return sorted(p.stem for p in _builtin_dir().glob("*.toml"))


def _path_for(name: str) -> Path:
    if os.path.sep in name or name.endswith(".toml") or os.path.exists(name):
        path = Path(name)
        if not path.is_file():
            raise CostplanError(f"no such hardware profile file: {name}")
        return path
    path = _builtin_dir() / f"{name}.toml"
    if not path.is_file():
        raise CostplanError(f"unknown hardware profile '{name}'.{close_names(name, list_profiles())} "
                            f"Profiles: {', '.join(list_profiles())}; or give a path to a .toml file")
    return path


def _sparsity(fields: Fields) -> dict[str, SparsitySupport]:
    out = {}
    for pattern in fields.data:
        f = fields.table(pattern)
        dtypes = f.get("dtypes", [])
        if not isinstance(dtypes, list) or any(d not in DTYPE_BYTES for d in dtypes):
            raise f.fail("dtypes", f"must be a list of {', '.join(DTYPE_BYTES)}")
        out[pattern] = SparsitySupport(
            compute_speedup=f.number("compute_speedup", 1.0, low=1.0),
            efficiency=f.number("efficiency", 1.0, high=1.0, positive=True),
            compressed_weights=f.flag("compressed_weights", False),
            index_bits=f.number("index_bits", 0.0),
            min_sparsity=f.number("min_sparsity", 0.0, high=1.0),
            dtypes=tuple(dtypes),
        )
    return out


def _class_table(fields: Fields, key: str, allowed: tuple[str, ...] = OP_CLASSES) -> Fields:
    """The table ``key`` (empty when absent), each of whose keys must be in ``allowed``."""
    table = fields.table(key, required=False)
    for name in table.data:
        if name not in allowed:
            raise table.fail(name, f"is not an op class; use {', '.join(allowed)}")
    return table


def _efficiencies(eff: Fields, base: Mapping[str, float] | None = None) -> dict[str, float]:
    """Class efficiencies; a class left out takes ``base``'s (1 without), except that a class with
    a leader (:data:`LEADERS`: pointwise follows conv, attention gemm, ...) follows it where the leader
    is given here or there is no base."""
    default = {**dict.fromkeys(OP_CLASSES, 1.0), **(base or {})}
    out = {c: eff.number(c, default[c], high=1.0, positive=True) for c in OP_CLASSES if c not in LEADERS}
    for klass, leader in LEADERS.items():
        follows = base is None or leader in eff.data
        out[klass] = eff.number(klass, out[leader] if follows else default[klass], high=1.0, positive=True)
    return out


def _efficiency_by_dtype(eff: Fields, base: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """``[efficiency.<dtype>]`` tables: class efficiencies for one precision over the shared ``base``."""
    return {dtype: _efficiencies(_class_table(eff, dtype), base) for dtype in [k for k in eff.data if k in DTYPE_BYTES]}


def _winograd(f: Fields) -> tuple[float, tuple[str, ...]]:
    table = f.table("winograd", required=False)
    if not table.data:
        return 1.0, ()
    dtypes = table.get("dtypes", [])
    if not isinstance(dtypes, list) or not dtypes or any(d not in DTYPE_BYTES for d in dtypes):
        raise table.fail("dtypes", f"must be a non-empty list of {', '.join(DTYPE_BYTES)}")
    return table.number("speedup", low=1.0), tuple(dtypes)


def _half_util(eff: Fields) -> dict[str, float]:
    """``half_util_macs`` is one number for every class, or a table by class (missing ones: gemm's),
    except a recurrent step's (0 unless given): its floor is its fixed cost per step
    (``per_class_us.lstm``, ``gru``, ``rnn``), not a MAC count, which at a hundred steps of batch rows would
    price a GRU at a GPU's half-wave floor a hundred times."""
    value = eff.get("half_util_macs", 0.0)
    if isinstance(value, dict):
        table = _class_table(eff, "half_util_macs")
        default = table.number("gemm", 0.0)
        return {c: table.number(c, 0.0 if c in RECURRENT else default) for c in OP_CLASSES}
    return half_util_by_class(eff.number("half_util_macs", 0.0))


def half_util_by_class(shared: float) -> dict[str, float]:
    """One MAC-count floor for every op class but a recurrent step's (0: see :func:`_half_util`)."""
    return {c: 0.0 if c in RECURRENT else shared for c in OP_CLASSES}


def following_leaders(values: Mapping[str, float], default: float) -> dict[str, float]:
    """``values`` for every op class: a class without its own takes its leader's (:data:`LEADERS`),
    else ``default``."""
    return {c: values.get(c, values.get(LEADERS.get(c, ""), default)) for c in OP_CLASSES}


def _half_util_dims(eff: Fields) -> dict[str, tuple[float, ...]]:
    """``half_util_dims`` is a table by op class of [rows, outputs, reduction], each >= 0, and for a
    class of 1-D convolutions optionally a fourth: their steps per sample."""
    table = _class_table(eff, "half_util_dims")
    out = {}
    for key in table.data:
        value = table.get(key)
        if (not isinstance(value, list) or len(value) not in (3, 4)
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in value)):
            raise table.fail(key, f"must be three numbers >= 0 [rows, outputs, reduction], or four with "
                                  f"a 1-D convolution's steps per sample, not {value!r}")
        out[key] = tuple(float(v) for v in value)
    return out


def _factors(eff: Fields, key: str) -> dict[str, float]:
    """A per-class table of rate factors (``efficiency.strided``, ``efficiency.off_tile``,
    ``efficiency.one_tile_pass``)."""
    table = _class_table(eff, key)
    return {k: table.number(k, positive=True, high=2.0) for k in table.data}


def _fixed_costs(overhead: Fields, attr: str, allowed: tuple[str, ...]) -> dict[str, float]:
    """An ``[overhead]`` table of fixed costs (``per_class_us``, ``per_call_us``: the schema's
    CLASS_TABLES entry for ``attr``), in seconds."""
    key, scale = next((k.rpartition(".")[2], scale) for k, a, scale in CLASS_TABLES if a == attr)
    table = _class_table(overhead, key, allowed)
    return {name: table.number(name) * scale for name in table.data}


def _rated(memory: Fields) -> dict[str, float]:
    """Rates of memory-only ops slower than their bytes, bytes/s; a profile without a sigmoid rate
    (calibrated before it was timed apart) gives sigmoid/SiLU the transcendental one, as it did."""
    rated = {kind: memory.number(f"{kind}_gbs", positive=True) * RATED_SCALE
             for kind in RATED_KINDS if f"{kind}_gbs" in memory.data}
    if "sigmoid" not in rated and "transcendental" in rated:
        rated["sigmoid"] = rated["transcendental"]
    return rated


def _calibrated(f: Fields, half_util_dims: Mapping[str, object], rated: Mapping[str, float]) -> tuple[str, ...]:
    """``calibrated``: the kinds a calibration measured. A calibrated profile written before the field
    existed (it has per-shape fits) measured its fitted classes, its rated kinds and elementwise chains."""
    value = f.get("calibrated")
    if value is None:
        return (*half_util_dims, *rated, "elementwise") if half_util_dims else ()
    if not isinstance(value, list) or any(v not in COST_KINDS for v in value):
        raise f.fail("calibrated", f"must be a list of {', '.join(COST_KINDS)}")
    return tuple(value)


def _weight_only_memory(eff: Fields) -> dict[str, float]:
    table = eff.table("weight_only_memory", required=False)
    for key in table.data:
        if key not in ("int8", "int4", "float8"):
            raise table.fail(key, "is not a weight-only format; use int8, int4 or float8")
    return {key: table.number(key, positive=True, high=1.0) for key in table.data}


def _runtimes(f: Fields) -> dict[str, Runtime]:
    """``[runtimes.NAME]``: the other executions a profile knows."""
    known = f.table("runtimes", required=False)
    out = {}
    for name in list(known.data):
        r = known.table(name)
        out[name] = Runtime(r.number("per_op_us") * 1e-6, *(r.flag(flag, False) for flag in Runtime._fields[1:]))
    return out


def parse_profile(data: Mapping[str, Any], where: str) -> HardwareProfile:
    """Validate the TOML tables of a profile; ``where`` names the file in errors. The scalar fields
    are read through :mod:`costplan.hardware.schema`'s table, the one its writer uses."""
    f = Fields(data, where)
    peak = f.dtype_numbers("peak_tflops", extra=("tf32", "float16_acc16"))
    tf32 = peak.pop("tf32", None)
    acc16 = peak.pop("float16_acc16", None)
    tf32_classes = f.get("tf32_classes", ["conv", "pointwise"] if tf32 else [])
    if not isinstance(tf32_classes, list) or any(c not in OP_CLASSES for c in tf32_classes):
        raise f.fail("tf32_classes", f"must be a list of op classes ({', '.join(OP_CLASSES)})")
    runtime = f.text("runtime", "eager" if f.get("kind") == "cpu" else "fused")
    if not peak:
        raise f.fail("peak_tflops", "names no dtype")
    memory, eff, overhead = f.table("memory"), f.table("efficiency", False), f.table("overhead", False)
    default_dtype = f.text("default_dtype", "float32" if "float32" in peak else next(iter(peak)))
    if default_dtype not in peak:
        raise f.fail("default_dtype", f"'{default_dtype}' has no peak_tflops entry")
    energy = f.table("energy", required=False)
    if ("fresh_output_mb" in memory.data) != ("first_touch_gbs" in memory.data):
        raise memory.fail("first_touch_gbs", "and 'memory.fresh_output_mb' must be given together")
    scalars = read_scalars({"": f, "memory": memory, "efficiency": eff, "overhead": overhead, "energy": energy,
                            "calibration": f.table("calibration", required=False)})
    efficiency = _efficiencies(eff)
    half_util_dims, rated = _half_util_dims(eff), _rated(memory)
    winograd_speedup, winograd_dtypes = _winograd(f)
    profile = HardwareProfile(
        **scalars,
        peak_macs={d: v * PEAK_SCALE for d, v in peak.items()},
        efficiency=efficiency,
        efficiency_by_dtype=_efficiency_by_dtype(eff, efficiency),
        half_util_macs=_half_util(eff),
        default_dtype=default_dtype,
        sparsity=_sparsity(f.table("sparsity", required=False)),
        energy_pj_per_mac=energy.dtype_numbers("pj_per_mac", required=False) if energy.data else {},
        half_util_dims=half_util_dims,
        strided=_factors(eff, "strided"),
        off_tile=_factors(eff, "off_tile"),
        one_tile_pass=_factors(eff, "one_tile_pass"),
        per_class_s=_fixed_costs(overhead, "per_class_s", COST_KINDS),
        per_call_s=_fixed_costs(overhead, "per_call_s", RECURRENT),
        rated_bandwidth=rated, calibrated=_calibrated(f, half_util_dims, rated),
        source=where,
        runtime=runtime, runtimes=_runtimes(f), weight_only_memory=_weight_only_memory(eff),
        tf32_macs=tf32 * PEAK_SCALE if tf32 else None, tf32_classes=tuple(tf32_classes),
        fp16_accumulate_macs=acc16 * PEAK_SCALE if acc16 else None,
        winograd_speedup=winograd_speedup, winograd_dtypes=winograd_dtypes,
    )
    memory.seen.update(f"{kind}_gbs" for kind in RATED_KINDS)   # optional rates: known names too
    f.unread()
    return profile


def profile_fields(name: str | os.PathLike[str]) -> list[tuple[str, str, str]]:
    """(field, value, source) for every field a profile file sets: the value as written and the
    comment that cites it (on its line, or the comment lines just above it, or its table's)."""
    path = _path_for(str(name))
    rows: list[tuple[str, str, str]] = []
    table, above, table_note = "", [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line:
            above = []
            continue
        if line.startswith("#"):
            above.append(line.lstrip("# ").strip())
            continue
        code, _, comment = line.partition(" #")
        if code.startswith("["):
            table = code.strip("[] ").replace('"', "")
            table_note, above = " ".join(above), []
            continue
        key, _, value = code.partition("=")
        note = comment.strip(" #") or " ".join(above) or table_note
        field = f"{table}.{key.strip()}" if table else key.strip()
        if value.strip().startswith("{"):       # an inline table: a row per entry
            for k, v in tomllib.loads(f"x = {value.strip()}")["x"].items():
                rows.append((f"{field}.{k}", str(v), note))
        else:
            rows.append((field, value.strip(), note))
        above = []
    return rows


def load_profile(name: str | os.PathLike[str]) -> HardwareProfile:
    """A shipped profile by name (``rtx3090``) or a profile file by path."""
    path = _path_for(str(name))
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise CostplanError(f"{path}: not valid TOML: {exc}") from None
    return parse_profile(data, str(path))
