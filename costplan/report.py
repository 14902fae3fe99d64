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
    """One layer's row of the report. Bytes are of the traced dtype; latency in milliseconds."""

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
        return {
            "model": self.model,
            "input": {"shape": shapes[0] if shapes else [], "dtype": self.dtype,
                      **({"shapes": shapes} if len(shapes) > 1 else {})},
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
                 extra_totals: Mapping[str, Any] | None = None, warnings: tuple[str, ...] = ()) -> Report:
    """Assemble the report of ``graph`` under ``plan``, with each layer's predicted ``latency`` if given."""
    effective: Mapping[str, Effective] = apply_plan(graph, plan)
    rows = []
    for layer in graph.layers:
        eff = effective[layer.name]
        est = latency[layer.name] if latency else None
        ms, bound, more = (est.latency_s * 1e3, est.bound, _latency_fields(est)) if est else (None, None, {})
        rows.append(LayerCost(
            name=layer.name, op=layer.op, module=layer.module, macs=layer.macs,
            effective_macs=round(eff.macs), params=layer.params, nonzero_params=round(eff.params),
            weight_bytes=layer.weight_bytes, act_in_bytes=layer.act_in_bytes,
            act_out_bytes=layer.act_out_bytes, reuse=layer.reuse, intensity=layer.intensity,
            latency_ms=ms, bound=bound, extra=more,
        ))
    eff_macs, nonzero = effective_totals(graph, effective)
    totals: dict[str, Any] = {
        "macs": graph.total_macs,
        "effective_macs": eff_macs,
        "params": graph.total_params,
        "nonzero_params": nonzero,
        "weight_bytes": graph.total_weight_bytes,
        "activation_bytes": sum(layer.act_out_bytes for layer in graph.layers),
        "latency_ms": sum(r.latency_ms for r in rows) if latency else None,
    }
    totals.update(extra_totals or {})
    return Report(model=graph.model, input_shapes=graph.inputs.shapes, dtype=graph.inputs.dtype,
                  traced_on=graph.inputs.device, hardware=hardware, layers=tuple(rows), totals=totals,
                  unsupported=dict(graph.unsupported), graph=graph, warnings=warnings)


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
