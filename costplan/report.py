"""The cost report (shared/DESIGN.md contract): per-layer counts and latency, and totals."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from costplan.hardware.roofline import LayerLatency
from costplan.planfile import Plan
from costplan.sparsity import Effective, apply_plan, effective_totals
from costplan.trace.graph import LayerGraph


@dataclass(frozen=True)
class LayerCost:
    """One layer's row of the report. Bytes are of the precision the report is for (the traced dtype
    when none was asked); latency in milliseconds."""

    name: str
    op: str
    module: str | None
    macs: int
    effective_macs: int
    params: int
    nonzero_params: int
    weight_bytes: int
    act_in_bytes: int
    act_out_bytes: int
    reuse: float                   # MACs per weight
    intensity: float               # MACs per byte moved
    state_bytes: int = 0           # KV cache bytes read or written
    latency_ms: float | None = None
    bound: str | None = None       # compute | memory | overhead
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        d["reuse"] = round(self.reuse, 4)
        d["intensity"] = round(self.intensity, 4)
        return d


@dataclass(frozen=True)
class Report:
    """What ``costplan analyze`` prints and ``--json`` writes."""

    model: str
    input_shapes: tuple[tuple[int, ...], ...]
    dtype: str
    traced_on: str                 # 'meta' or 'cpu'
    hardware: str | None
    layers: tuple[LayerCost, ...]
    totals: Mapping[str, Any]
    unsupported: Mapping[str, int]
    graph: LayerGraph | None = field(default=None, compare=False, repr=False)
    warnings: tuple[str, ...] = ()   # what the numbers should be read with (a precision the device lacks)

    def to_dict(self) -> dict[str, Any]:
        shapes = [list(s) for s in self.input_shapes]
        gen = self.graph.generation if self.graph is not None else None
        return {
            "model": self.model,
            "input": {"shape": shapes[0] if shapes else [], "dtype": self.dtype,
                      **({"shapes": shapes} if len(shapes) > 1 else {}),
                      **({"phase": gen.phase, "context": gen.context} if gen is not None else {})},
            "hardware": self.hardware,
            "traced_on": self.traced_on,
            "totals": dict(self.totals),
            "layers": [layer.to_dict() for layer in self.layers],
            "unsupported": [{"op": op, "count": n} for op, n in self.unsupported.items()],
            "warnings": list(self.warnings),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_csv(self) -> str:
        return reports_csv([self])


def reports_csv(reports: Sequence[Report]) -> str:
    """Per-layer rows of one or more reports (one model on several devices) as one CSV table; with
    hardware, its first column says which device a row is for."""
    rows = [({"hardware": r.hardware} if r.hardware else {}) | layer.to_dict() for r in reports for layer in r.layers]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["name"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _latency_fields(l: LayerLatency) -> dict[str, Any]:
    """A layer's estimate beyond its latency and bound, in the report's units (ms, mJ)."""
    return {"compute_ms": l.compute_s * 1e3, "memory_ms": l.memory_s * 1e3, "overhead_ms": l.overhead_s * 1e3,
            "attained": round(l.attained, 4), "dram_bytes": round(l.dram_bytes),
            "energy_mj": None if l.energy_j is None else l.energy_j * 1e3, "sparse_kernel": l.sparse_path}


def build_report(graph: LayerGraph, plan: Plan | None = None, *, hardware: str | None = None,
                 latency: Mapping[str, LayerLatency] | None = None,
                 extra_totals: Mapping[str, Any] | None = None, warnings: tuple[str, ...] = (),
                 scales: tuple[float, float, float] = (1.0, 1.0, 1.0), memory_capacity: float | None = None) -> Report:
    """Assemble the report of ``graph`` under ``plan``, with each layer's predicted ``latency`` if given.
    ``scales`` (activations, weights, KV cache: ``spellings.byte_scales``) turn the traced bytes into the
    precision's; ``memory_capacity`` (bytes) is what a generation's memory is checked against."""
    effective: Mapping[str, Effective] = apply_plan(graph, plan)
    acts, weights, state = scales
    rows = []
    for layer in graph.layers:
        eff = effective[layer.name]
        est = latency[layer.name] if latency else None
        ms, bound, more = (est.latency_s * 1e3, est.bound, _latency_fields(est)) if est else (None, None, {})
        rows.append(LayerCost(
            name=layer.name, op=layer.op, module=layer.module, macs=layer.macs,
            effective_macs=round(eff.macs), params=layer.params, nonzero_params=round(eff.params),
            weight_bytes=round(layer.weight_bytes * weights), act_in_bytes=round(layer.act_in_bytes * acts),
            act_out_bytes=round(layer.act_out_bytes * acts), reuse=layer.reuse, intensity=layer.intensity,
            state_bytes=round(layer.state_bytes * state), latency_ms=ms, bound=bound, extra=more,
        ))
    eff_macs, nonzero = effective_totals(graph, effective)
    totals: dict[str, Any] = {
        "macs": graph.total_macs,
        "effective_macs": eff_macs,
        "params": graph.total_params,
        "nonzero_params": nonzero,
        "weight_bytes": round(graph.total_weight_bytes * weights),
        "activation_bytes": round(sum(layer.act_out_bytes for layer in graph.layers) * acts),
        "latency_ms": sum(r.latency_ms for r in rows) if latency else None,
    }
    if graph.generation is not None:
        writes = [(l.state_bytes, effective[l.name].in_keep) for l in graph.layers if l.state_bytes and not l.macs]
        kv_keep = sum(b * k for b, k in writes) / sum(b for b, _ in writes) if writes else 1.0
        weight_keep = nonzero / graph.total_params if graph.total_params else 1.0
        totals.update(generation_totals(graph, totals["latency_ms"], scales, memory_capacity,
                                        kv_keep=kv_keep, weight_keep=weight_keep))
    totals.update(extra_totals or {})
    return Report(model=graph.model, input_shapes=graph.inputs.shapes, dtype=graph.inputs.dtype,
                  traced_on=graph.inputs.device, hardware=hardware, layers=tuple(rows), totals=totals,
                  unsupported=dict(graph.unsupported), graph=graph, warnings=warnings)


def generation_totals(graph: LayerGraph, latency_ms: float | None, scales: tuple[float, float, float],
                      capacity: float | None, *, kv_keep: float = 1.0, weight_keep: float = 1.0) -> dict[str, Any]:
    """A generation pass's totals: tokens/s (new tokens of every sequence per second; prefill's is the
    prompt's throughput and its latency the time to first token), the KV cache, and the memory the
    pass needs (weights + KV cache + the largest layer's activations in and out) with whether it fits
    ``capacity`` bytes (None: the profile does not say). Under a plan, ``kv_keep`` is the share of
    the cache the kept KV heads hold, ``weight_keep`` the share of weights left non-zero (as stored
    compactly: structured pruning removes them, element-wise zeros need a sparse format)."""
    gen = graph.generation
    assert gen is not None
    acts, weights, state = scales
    kv = round(gen.kv_cache_bytes * state * kv_keep)
    peak = max((l.act_in_bytes + l.act_out_bytes for l in graph.layers), default=0) * acts
    memory = round(graph.total_weight_bytes * weights * weight_keep + kv + peak)
    out: dict[str, Any] = {"phase": gen.phase, "context": gen.context, "batch": gen.batch,
                           "new_tokens": gen.tokens, "kv_cache_bytes": kv, "memory_bytes": memory,
                           "memory_capacity_bytes": capacity,
                           "fits": None if capacity is None else memory <= capacity}
    if latency_ms:
        out["tokens_per_s"] = gen.batch * gen.tokens / (latency_ms * 1e-3)
        if gen.phase == "prefill":
            out["time_to_first_token_ms"] = latency_ms
        else:
            out["per_token_ms"] = latency_ms
    return out


def group_rows(layers: Sequence[LayerCost], depth: int) -> list[LayerCost]:
    """Sum rows whose names share their first ``depth`` dotted parts ('layer1.0' at depth 2)."""
    groups: dict[str, list[LayerCost]] = {}
    for row in layers:
        key = ".".join(row.name.split(":")[0].split(".")[:depth])
        groups.setdefault(key, []).append(row)
    out = []
    for key, rows in groups.items():
        if len(rows) == 1 and rows[0].name == key:
            out.append(rows[0])
            continue
        macs = sum(r.macs for r in rows)
        params = sum(r.params for r in rows)
        moved = sum(r.weight_bytes + r.act_in_bytes + r.act_out_bytes for r in rows)
        latencies = [r.latency_ms for r in rows if r.latency_ms is not None]
        out.append(LayerCost(
            name=key, op=f"{len(rows)} layers", module=key, macs=macs,
            effective_macs=sum(r.effective_macs for r in rows), params=params,
            nonzero_params=sum(r.nonzero_params for r in rows),
            weight_bytes=sum(r.weight_bytes for r in rows), act_in_bytes=sum(r.act_in_bytes for r in rows),
            act_out_bytes=sum(r.act_out_bytes for r in rows), reuse=macs / params if params else 0.0,
            intensity=macs / moved if moved else 0.0,
            latency_ms=sum(latencies) if latencies else None,
        ))
    return out
