"""Time a real model on this machine and set the measurement beside the prediction.

The total is the median wall time of plain forward passes (warm-up first). Per layer, the model runs
under the tracer, which times each layer's aten kernels; what the totals leave over is framework time
between kernels (Python, dispatch), reported as unattributed. The tracer's own bookkeeping between
kernels lets threads and caches cool, so short kernels read slow per layer: in a 4-layer transformer
encoder at batch 1 the per-layer times added up to 13.5 ms against 9.0 ms for the whole forward pass.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from costplan.coerce import QUANTISED, as_plan, as_profile, as_shapes, canonical_dtype
from costplan.errors import CostplanError
from costplan.hardware import estimate
from costplan.hardware.timing import minor_faults
from costplan.models import Instance, instantiate, resolve
from costplan.sparsity import apply_plan, plan_in_force
from costplan.trace import trace


@dataclass(frozen=True)
class LayerTiming:
    name: str
    op: str
    predicted_ms: float
    measured_ms: float
    bound: str


@dataclass(frozen=True)
class Comparison:
    """Predicted against measured latency of one model on this machine, in milliseconds."""

    model: str
    hardware: str
    input_shapes: tuple[tuple[int, ...], ...]
    predicted_ms: float
    measured_ms: float
    measured_runs_ms: tuple[float, ...]
    layers: tuple[LayerTiming, ...]
    page_faults_per_run: float | None = None   # minor page faults per timed forward pass (None: unknown)

    @property
    def warnings(self) -> tuple[str, ...]:
        warning = fault_warning(self.page_faults_per_run)
        return (warning,) if warning else ()

    @property
    def error(self) -> float:
        """Relative error of the prediction: predicted / measured - 1."""
        return self.predicted_ms / self.measured_ms - 1.0

    @property
    def unattributed_ms(self) -> float:
        """Measured time outside every layer's kernels (Python and dispatch between them)."""
        return self.measured_ms - sum(l.measured_ms for l in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "hardware": self.hardware,
                "input": {"shapes": [list(s) for s in self.input_shapes]},
                "predicted_ms": self.predicted_ms, "measured_ms": self.measured_ms,
                "error": self.error, "unattributed_ms": self.unattributed_ms,
                "measured_runs_ms": list(self.measured_runs_ms),
                "page_faults_per_run": self.page_faults_per_run, "warnings": list(self.warnings),
                "layers": [asdict(layer) for layer in self.layers]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


FAULTS_NOTED = 1000   # page faults per forward pass (4 MB of 4 KiB pages) worth a warning


def fault_warning(faults_per_run: float | None, page_bytes: int = 4096) -> str | None:
    """What to tell a user whose forward passes fault pages in (None under :data:`FAULTS_NOTED`)."""
    if faults_per_run is None or faults_per_run < FAULTS_NOTED:
        return None
    return (f"every forward pass took {faults_per_run:,.0f} page faults ({faults_per_run * page_bytes / 1e6:,.0f} MB of "
            "fresh pages): glibc's malloc gave freed activations back to the system and faults them in again on every "
            "call, which costs time no profile predicts (calibrate times with freed memory kept; mobilenet_v2 at batch 8 "
            "ran 2.0x slower with the faults). Measure and deploy with MALLOC_MMAP_MAX_=0 "
            "MALLOC_TRIM_THRESHOLD_=2147483647 set, or with jemalloc or tcmalloc")


def time_forward(instance: Instance, repeat: int = 10, warmup: int = 3) -> list[float]:
    """Seconds of each of ``repeat`` forward passes, after ``warmup`` untimed ones."""
    module, args, kwargs = instance.module, instance.args, instance.kwargs
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeat):
            start = time.perf_counter()
            module(*args, **kwargs)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


def time_round_robin(instances: Mapping[str, Instance], rounds: int, repeat: int = 1,
                     warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each forward pass of each instance, ``repeat`` runs of each in turn for ``rounds``
    rounds after ``warmup`` untimed runs of each: a machine whose speed drifts weighs on all alike."""
    for instance in instances.values():
        time_forward(instance, repeat=0, warmup=warmup)
    runs: dict[str, list[float]] = {name: [] for name in instances}
    for _ in range(rounds):
        for name, instance in instances.items():
            runs[name] += time_forward(instance, repeat=repeat, warmup=0)
    return runs


def time_layers(instance: Instance, repeat: int = 3) -> dict[str, float]:
    """Median kernel seconds per layer over ``repeat`` traced runs."""
    runs: list[dict[str, float]] = []
    for _ in range(repeat):
        timings: dict[str, float] = {}
        trace(instance.module, instance.args, instance.kwargs, timings=timings)
        runs.append(timings)
    return {name: statistics.median(run.get(name, 0.0) for run in runs) for name in runs[0]}


def measure(model: str, *, hw: str, plan: str | None = None, dtype: str = "float32", repeat: int = 10,
            warmup: int = 3, input: str | None = None, batch: int | None = None, seq_len: int | None = None,
            trust_pickle: bool = False, weights: str | None = None) -> Comparison:
    """Build ``model`` (random weights, or ``weights``) on the CPU, time it, and compare with ``hw``'s
    prediction."""
    dtype = canonical_dtype(dtype)
    if dtype in QUANTISED:
        raise CostplanError(f"measure runs the model in PyTorch on this CPU; {dtype} is not a dtype it can run")

    profile = as_profile(hw)
    source = resolve(model, input_shapes=as_shapes(input), batch=batch, seq_len=seq_len, dtype=dtype,
                     trust=trust_pickle, weights=weights)
    instance = instantiate(source, "cpu")
    before = torch.get_num_threads()
    if profile.threads:      # the threads the profile was calibrated with: its figures hold for them
        torch.set_num_threads(profile.threads)
    try:
        layer_seconds = time_layers(instance, repeat=max(1, min(3, repeat)))
        graph = trace(instance.module, instance.args, instance.kwargs, name=source.name)
        if source.pruned is not None:   # a file costplan.save wrote: measured under what was done to it
            graph.applied = source.pruned.applied()  # type: ignore[attr-defined]
        time_forward(instance, 0, warmup)
        before_faults = minor_faults()
        runs = time_forward(instance, repeat, 0)
        after_faults = minor_faults()
    finally:
        torch.set_num_threads(before)
    est = estimate(graph, profile, apply_plan(graph, plan_in_force(graph, as_plan(plan))), dtype)
    layers = tuple(LayerTiming(l.name, l.op, est.layers[l.name].latency_s * 1e3,
                               layer_seconds.get(l.name, 0.0) * 1e3, est.layers[l.name].bound)
                   for l in graph.layers)
    return Comparison(model=source.name, hardware=profile.name, input_shapes=graph.inputs.shapes,
                      predicted_ms=est.latency_s * 1e3, measured_ms=statistics.median(runs) * 1e3,
                      measured_runs_ms=tuple(t * 1e3 for t in runs), layers=layers,
                      page_faults_per_run=None if before_faults is None or after_faults is None
                      else (after_faults - before_faults) / max(1, len(runs)))
