"""Time a real model on this machine and set the measurement beside the prediction.

The total is the median over rounds of plain forward passes' wall time (warm-up first), each round's
figure the mean of a block of passes after an untimed one (as calibrate times), between turns of the
calibration's reference workload and DRAM copy. Per layer, a leaf module's one call is timed around it
by forward hooks, in one more plain forward pass in each of those rounds (:class:`LayerClock`), so a
layer's reading and the total come from the same moments; other layers run under the tracer, which
times each layer's aten kernels; what the totals leave over is framework time
between kernels (Python, dispatch), reported as unattributed. The tracer's own bookkeeping between
kernels lets threads and caches cool, so short kernels read slow per layer: in a 4-layer transformer
encoder at batch 1 the per-layer times added up to 13.5 ms against 9.0 ms for the whole forward pass.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

from costplan.coerce import QUANTISED, as_plan, as_profile, as_shapes, canonical_dtype
from costplan.errors import CostplanError
from costplan.hardware import HardwareProfile, estimate
from costplan.hardware.probes import COPY_BYTES, bandwidth_workload, reference_workload
from costplan.hardware.roofline import Estimate
from costplan.hardware.timing import block_calls, keep_freed_memory, minor_faults
from costplan.trace.graph import LayerGraph
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
    kind: str = ""                 # what it was priced as (its LayerLatency.kind): an op class or memory kind
    # a leaf module's quickest and slowest reading over measure's rounds (measured_ms is their median);
    # None for a layer the tracer's clock read once a pass, outside the rounds
    quickest_ms: float | None = None
    slowest_ms: float | None = None


@dataclass(frozen=True)
class BlockTiming:
    """A module PyTorch ran by a fused path, skipping child modules the tracer sees run (at inference
    nn.MultiheadAttention runs one fused kernel, not its projections and attention): its layers'
    prices summed, against its one call timed in plain forward passes. Its layers' own measured times
    are the tracer's, of the unfused path, which the forward pass does not run."""

    name: str                      # the module's path
    layers: tuple[str, ...]        # the graph's layers inside it
    predicted_ms: float
    measured_ms: float
    quickest_ms: float | None = None   # its quickest and slowest reading over measure's rounds
    slowest_ms: float | None = None

    @property
    def error(self) -> float:
        return self.predicted_ms / self.measured_ms - 1.0


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
    device: str = "cpu"                        # where it was timed: cpu | cuda
    estimate_warnings: tuple[str, ...] = ()    # what the prediction and the trace said of themselves (kinds never
                                               # calibrated, heads at their caps, layers PyTorch may fuse)
    # the calibration's reference workload, timed between this model's runs, over its time when the
    # profile was calibrated: > 1 when the machine runs slower now (None: the profile has no reference)
    reference_ratio: float | None = None
    allocator: str = ""                        # how the timing process allocated memory (measure.allocator)
    # calibrate's DRAM copy, timed between this model's runs, over its time at the profile's bandwidth:
    # > 1 when DRAM runs slower now, which the reference workload's convolutions hardly feel
    bandwidth_ratio: float | None = None
    passes_per_round: int = 1                  # timed passes whose mean is each entry of measured_runs_ms
    blocks: tuple[BlockTiming, ...] = ()       # modules run by a fused path, timed whole (fused_blocks)

    @property
    def runs_said(self) -> str:
        """What :attr:`measured_ms` is the median of, in words."""
        n = len(self.measured_runs_ms)
        return f"median of {n}" + (f" rounds, each the mean of {self.passes_per_round} passes"
                                   if self.passes_per_round > 1 else "")

    @property
    def adjusted_ms(self) -> float | None:
        """The prediction scaled by how the machine moved since calibration, layer by layer
        (:func:`machine_ratio`)."""
        if self.reference_ratio is None:
            return None
        return sum(l.predicted_ms * machine_ratio(l.bound, self.reference_ratio, self.bandwidth_ratio)
                   for l in self.layers)

    @property
    def adjusted_error(self) -> float | None:
        """The error with the prediction scaled by how the machine moved since calibration (:attr:`adjusted_ms`)."""
        adjusted = self.adjusted_ms
        return None if adjusted is None else adjusted / self.measured_ms - 1.0

    @property
    def warnings(self) -> tuple[str, ...]:
        warning = fault_warning(self.page_faults_per_run)
        out = self.estimate_warnings + ((warning,) if warning else ())
        if self.device != "cpu":
            out += ("per-layer times are taken on the CPU only: on CUDA only the whole forward pass is timed",)
        return out

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
                "device": self.device, "allocator": self.allocator, "predicted_ms": self.predicted_ms, "measured_ms": self.measured_ms,
                "error": self.error, "reference_ratio": self.reference_ratio, "bandwidth_ratio": self.bandwidth_ratio,
                "adjusted_error": self.adjusted_error,
                "unattributed_ms": self.unattributed_ms,
                "measured_runs_ms": list(self.measured_runs_ms), "passes_per_round": self.passes_per_round,
                "page_faults_per_run": self.page_faults_per_run, "warnings": list(self.warnings),
                "layers": [asdict(layer) for layer in self.layers],
                "blocks": [{**asdict(block), "error": block.error} for block in self.blocks]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def machine_ratio(bound: str, reference_ratio: float, bandwidth_ratio: float | None) -> float:
    """How much longer than at calibration the machine runs a layer so ``bound``: the DRAM copy's
    ratio for a memory-bound layer where the copy was timed, else the reference workload's."""
    return bandwidth_ratio if bound == "memory" and bandwidth_ratio is not None else reference_ratio


ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647"}


def allocator(kept_here: bool) -> str:
    """How this process allocates memory, in words: an allocator preloaded, glibc keeping freed
    memory from its start (:data:`ALLOCATOR_ENV`) or from now on (``kept_here``: mallopt), or glibc's
    defaults."""
    import os

    preloaded = [a for a in ("jemalloc", "tcmalloc", "mimalloc") if a in os.environ.get("LD_PRELOAD", "")]
    if preloaded:
        return f"{preloaded[0]} (LD_PRELOAD)"
    if all(os.environ.get(k) == v for k, v in ALLOCATOR_ENV.items()):
        return "glibc keeping freed memory from the start (" + " ".join(f"{k}={v}" for k, v in ALLOCATOR_ENV.items()) + ")"
    if kept_here:
        return "glibc keeping freed memory from the model's build on (mallopt)"
    return "glibc's defaults (freed blocks over its mmap threshold go back to the system)"


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


def _on_cuda(instance: Instance) -> bool:
    """Whether ``instance`` runs on a CUDA device, whose kernels run asynchronously."""
    return any(p.is_cuda for p in instance.module.parameters()) or any(
        getattr(a, "is_cuda", False) for a in instance.args)


def time_forward(instance: Instance, repeat: int = 10, warmup: int = 3) -> list[float]:
    """Seconds of each of ``repeat`` forward passes, after ``warmup`` untimed ones (on CUDA, each
    waited for to its end), each on new token ids where the model takes them (:meth:`Instance.call`)."""
    # asked once, not inside the timed span: walking a model's parameters costs microseconds per call
    synchronize = torch.cuda.synchronize if _on_cuda(instance) else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeat):
            synchronize()
            start = time.perf_counter()
            instance.call()
            synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


# the reference workload's calls per turn: calibration timed it in blocks of about 4 ms (probes.reference_workload);
# the DRAM copy's, about 5 ms a call
REFERENCE_BLOCK = {"reference": 4, "bandwidth": 2}
# a model's turn, as calibration times every probe and held-out network: an untimed call, then calls
# for about this many seconds (one at least) whose mean is the round's figure, as a model served in a
# loop runs. After the 64 MB copy an embedding-bag classifier's first call took 1.5-1.6 ms, its second
# 0.95 ms, its fourth on 0.77 ms (measure read it at 3.0 ms timing the first, 1.33 ms the second); the
# text CNN and resnet18 at batch 1 ran 1.04-1.05x on their first, larger models 1.01x
MODEL_BLOCK_S = 0.004


def model_block(seconds: float) -> int:
    """Timed calls per turn of a model whose call takes ``seconds``: :data:`MODEL_BLOCK_S` worth, as
    calibrate's blocks (:func:`~costplan.hardware.timing.block_calls`)."""
    return block_calls(seconds, MODEL_BLOCK_S)


def _warm_turns(timed: Mapping[str, Instance], models: Iterable[str], warmup: int) -> dict[str, int]:
    """Run every instance ``warmup`` times, then time one pass of each of ``models``, after an untimed
    one as in its turns (straight after the DRAM copy a first pass runs cold): their calls per turn."""
    time_round_robin(timed, rounds=0, warmup=warmup)
    return {k: model_block(min(time_forward(timed[k], repeat=1, warmup=1))) for k in models}


def time_round_robin(instances: Mapping[str, Instance], rounds: int, repeat: int = 1,
                     warmup: int = 1, blocks: Mapping[str, int] | None = None,
                     clocks: Mapping[str, Callable[[], object]] | None = None) -> dict[str, list[float]]:
    """Seconds of each forward pass of each instance, ``repeat`` runs of each in turn for ``rounds``
    rounds after ``warmup`` untimed runs of each: a machine whose speed drifts weighs on all alike.
    The instances named in ``blocks`` are timed as calibration times its probes: at each turn one
    untimed call (a second call in a row, its weights in cache), then that many calls whose mean is
    the round's one entry (a millisecond's single call scatters by 30% here, a block's mean by half that).
    An instance named in ``clocks`` (one of ``blocks``) also runs its clock once a turn, between the
    untimed call and the block: a pass whose layers are timed (:class:`LayerClock`), warm, and outside
    the timed block. Each round starts one instance further on (round r times them from the r-th): an
    instance always timed after the same one, or first, would carry what that place costs into every
    round's ratio."""
    blocks, clocks = blocks or {}, clocks or {}
    if set(clocks) - set(blocks):
        raise ValueError(f"clocked instances must be timed in blocks: {sorted(set(clocks) - set(blocks))}")
    for instance in instances.values():
        time_forward(instance, repeat=0, warmup=warmup)
    runs: dict[str, list[float]] = {name: [] for name in instances}
    names = list(instances)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            instance = instances[name]
            if name in blocks:
                time_forward(instance, repeat=0, warmup=1)
                if name in clocks:
                    clocks[name]()
                block = time_forward(instance, repeat=blocks[name], warmup=0)
                runs[name].append(sum(block) / len(block))
            else:
                runs[name] += time_forward(instance, repeat=repeat, warmup=0)
    return runs


def traced_seconds(instance: Instance, repeat: int = 3) -> tuple[dict[str, float], LayerGraph]:
    """Median seconds per layer by the tracer's clock around each op, over ``repeat`` traces after an
    untimed one (a first call pays for first-time setup), under the inference mode the forward passes
    are timed in; and the graph traced. measure takes a leaf module's one call from :class:`LayerClock`
    instead: the tracer's clock read a GRU of 100 steps at 2.0x its time in the forward pass (34 ms
    against 17 ms; the whole model ran 27 ms), as under its dispatch mode the recurrent op runs as its
    hundreds of per-step ops, each through Python. Traced under no_grad, a dispatch mode sends composite ops down
    their tensor-subclass paths, which are not what the forward pass runs: a text CNN's MaxPool1d read
    2.3 ms so against 0.18 ms."""
    runs: list[dict[str, float]] = []
    for i in range(repeat + 1):
        timings: dict[str, float] = {}
        with torch.inference_mode():
            graph = trace(instance.module, instance.args, instance.kwargs, timings=timings, channels=False)
        if i:
            runs.append(timings)
    return {name: statistics.median(run.get(name, 0.0) for run in runs) for name in runs[0]}, graph


def single_calls(graph: LayerGraph) -> dict[str, str]:
    """Module path -> its layer, for each module that is one layer of ``graph`` (called once a pass):
    the layers a forward hook can time around their call."""
    calls: dict[str, list[str]] = {}
    for layer in graph.layers:
        if layer.kind == "module" and layer.module:
            calls.setdefault(layer.module, []).append(layer.name)
    return {module: names[0] for module, names in calls.items() if len(names) == 1}


def module_calls(instance: Instance) -> dict[str, int]:
    """How often each of the model's modules (by path) is called in one plain forward pass (0: never)."""
    calls = {name: 0 for name, _ in instance.module.named_modules()}
    hooks = [m.register_forward_hook(lambda m, a, o, name=name: calls.__setitem__(name, calls[name] + 1))
             for name, m in instance.module.named_modules()]
    try:
        with torch.inference_mode():
            instance.call()
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def fused_blocks(graph: LayerGraph, calls: Mapping[str, int]) -> dict[str, tuple[str, ...]]:
    """Modules run by a fused path (module path -> the graph's layers inside it): for each module the
    tracer saw called that a plain forward pass skips (``calls``: :func:`module_calls`), the innermost
    module around it the pass calls once. The tracer turns PyTorch's fast paths off to see the layers
    they fuse; a fused nn.MultiheadAttention ran in 3.5 ms where the tracer's clock read its unfused
    attention alone 1.15 ms against 0.75 ms inside the fused kernel."""
    skipped = {l.module for l in graph.layers if l.module and calls.get(l.module) == 0}
    blocks: set[str] = set()
    for module in skipped:
        parts = module.split(".")
        for depth in range(len(parts) - 1, -1, -1):
            parent = ".".join(parts[:depth])
            if calls.get(parent) == 1:
                blocks.add(parent)
                break
    outermost = {b for b in blocks if not any(b != o and (o == "" or b.startswith(o + ".")) for o in blocks)}
    return {b: tuple(l.name for l in graph.layers if b == "" or l.name.startswith(b + ".")) for b in sorted(outermost)}


@dataclass(frozen=True)
class Readings:
    """One module's seconds over a clock's passes: the median, the quickest and the slowest."""

    median: float
    quickest: float
    slowest: float


class LayerClock:
    """Forward hooks around named modules of a model, on for one plain forward pass at a time: each
    module's seconds in each pass the clock runs. measure runs it once in each of its rounds, so a
    layer's reading comes from the same moments as the model's total and the machine's references;
    read once before the rounds, mobilenet_v2's 112x112-stage convolutions at batch 1 read 3x their
    price in one process and within 10% of it in the next. A module called other than once in a
    pass (a module a fused path skips, as PyTorch's TransformerEncoderLayer skips its children at
    inference) has no reading."""

    def __init__(self, instance: Instance, names: Iterable[str]) -> None:
        wanted = set(names)
        self.instance = instance
        self.modules = {name: m for name, m in instance.module.named_modules() if name in wanted}
        self.spans: dict[str, list[float]] = {name: [] for name in self.modules}
        self.passes = 0

    def __call__(self) -> None:
        """One forward pass (untimed as a whole) with every named module's call timed."""
        started: dict[str, float] = {}
        seen: dict[str, list[float]] = {name: [] for name in self.modules}
        hooks = []
        for name, module in self.modules.items():
            hooks.append(module.register_forward_pre_hook(lambda m, a, name=name: started.__setitem__(name, time.perf_counter())))
            hooks.append(module.register_forward_hook(lambda m, a, o, name=name: seen[name].append(time.perf_counter() - started[name])))
        try:
            with torch.inference_mode():
                self.instance.call()
        finally:
            for hook in hooks:
                hook.remove()
        self.passes += 1
        for name, spans in seen.items():
            if len(spans) == 1:
                self.spans[name].append(spans[0])

    def readings(self) -> dict[str, Readings]:
        """Each module called once in every pass the clock ran: its seconds' median, quickest, slowest."""
        return {name: Readings(statistics.median(s), min(s), max(s)) for name, s in self.spans.items()
                if s and len(s) == self.passes}


def device_for(profile: HardwareProfile) -> str:
    """Where a model is timed to set it beside ``profile``'s predictions: this CPU for a CPU profile,
    the CUDA GPU for a GPU profile where one is present; anything else compares unlike with unlike."""
    if profile.kind == "cpu":
        return "cpu"
    if profile.kind == "gpu" and torch.cuda.is_available():
        return "cuda"
    here = "this machine has no CUDA GPU" if profile.kind == "gpu" else f"costplan cannot run models on an {profile.kind}"
    raise CostplanError(
        f"{profile.name} is a {profile.kind} profile and measure times the model here, where {here}: its "
        f"predictions cannot be checked on this machine. Give a profile of this CPU (`costplan calibrate` writes "
        f"one), or run measure on a machine with the device")


@dataclass(frozen=True)
class _Prepared:
    name: str
    instance: Instance
    graph: LayerGraph
    estimate: Estimate
    traced_seconds: dict[str, float]       # layer -> seconds by the tracer's clock (CPU only)
    alone: dict[str, str]                  # module -> its layer, for modules timed by the clock
    blocks: dict[str, tuple[str, ...]]     # fused module -> its layers (fused_blocks)
    clock: LayerClock | None               # run once a round: the alone modules' and blocks' readings


def _prepare(model: str, profile: HardwareProfile, device: str, plan: str | None, dtype: str, repeat: int,
             **kwargs: Any) -> _Prepared:
    source = resolve(model, dtype=dtype, **kwargs)
    instance = instantiate(source, device)
    # timed as it is predicted, in eval mode: a factory's model comes in training mode, whose dropout
    # and batch statistics are work inference does not do (a transformer encoder ran 2x as long)
    instance.module.eval()
    # per-layer kernel times come from the tracer's clock around each op, which CUDA's queue makes meaningless
    traced = traced_seconds(instance, repeat=max(1, min(3, repeat)))[0] if device == "cpu" else {}
    graph = trace(instance.module, instance.args, instance.kwargs, name=source.name, notes=instance.notes)
    if source.pruned is not None:   # a file costplan.save wrote: measured under what was done to it
        graph.applied = source.pruned.applied()  # type: ignore[attr-defined]
    est = estimate(graph, profile, apply_plan(graph, plan_in_force(graph, as_plan(plan))), dtype)
    alone, blocks, clock = {}, {}, None
    if device == "cpu":
        alone, blocks = single_calls(graph), fused_blocks(graph, module_calls(instance))
        clock = LayerClock(instance, [*alone, *blocks])
    return _Prepared(source.name, instance, graph, est, traced, alone, blocks, clock)


def _comparison(p: _Prepared, profile: HardwareProfile, runs: list[float], faults: float | None,
                device: str, machine: Mapping[str, list[float]], kept: bool, passes: int = 1) -> Comparison:
    """``machine``: the reference workload's and the DRAM copy's runs, where timed (:func:`_reference`);
    ``kept``: whether this process set glibc to keep freed memory (it may have failed to)."""
    reference, copies = machine.get("reference", []), machine.get("bandwidth", [])
    read = p.clock.readings() if p.clock is not None else {}
    by_layer = {layer: read[module] for module, layer in p.alone.items() if module in read}
    layers = []
    for l in p.graph.layers:
        priced = p.estimate.layers[l.name]
        r = by_layer.get(l.name)
        layers.append(LayerTiming(l.name, l.op, priced.latency_s * 1e3,
                                  (r.median if r else p.traced_seconds.get(l.name, 0.0)) * 1e3, priced.bound, priced.kind,
                                  r.quickest * 1e3 if r else None, r.slowest * 1e3 if r else None))
    return Comparison(model=p.name, hardware=profile.name, input_shapes=p.graph.inputs.shapes,
                      predicted_ms=p.estimate.latency_s * 1e3, measured_ms=statistics.median(runs) * 1e3,
                      measured_runs_ms=tuple(t * 1e3 for t in runs), layers=tuple(layers), page_faults_per_run=faults,
                      device=device, estimate_warnings=p.estimate.warnings + p.graph.notes,
                      reference_ratio=statistics.median(reference) / profile.reference_s
                      if reference and profile.reference_s else None, allocator=allocator(kept),
                      bandwidth_ratio=copy_ratio(statistics.median(copies), profile) if copies else None,
                      passes_per_round=passes,
                      blocks=tuple(BlockTiming(b, names, sum(p.estimate.layers[n].latency_s for n in names) * 1e3,
                                               read[b].median * 1e3, read[b].quickest * 1e3, read[b].slowest * 1e3)
                                   for b, names in p.blocks.items() if b in read))


def copy_ratio(seconds: float, profile: HardwareProfile) -> float:
    """Seconds of calibrate's DRAM copy (:data:`~costplan.hardware.probes.COPY_BYTES`) over its
    seconds at ``profile``'s attainable bandwidth: > 1 when DRAM runs slower than calibrated."""
    return seconds * profile.bandwidth * profile.memory_efficiency / COPY_BYTES


def measure(model: str, *, hw: HardwareProfile | str, plan: str | None = None, dtype: str = "float32",
            repeat: int = 10, warmup: int = 3, input: str | None = None, batch: int | None = None,
            seq_len: int | None = None, trust_pickle: bool = False, weights: str | None = None,
            keep_memory: bool = True) -> Comparison:
    """Build ``model`` (random weights, or ``weights``) on the device ``hw`` describes (this CPU, or
    a CUDA GPU for a GPU profile: :func:`device_for`), time it, and compare with ``hw``'s prediction.

    With ``keep_memory`` (default) glibc's malloc keeps freed memory for the rest of the process, as
    ``calibrate`` timed (:func:`costplan.hardware.timing.keep_freed_memory`)."""
    profile, device, kept, shared = _setup(hw, dtype, keep_memory, input, batch, seq_len, trust_pickle, weights)
    with _threads(profile):
        prepared = _prepare(model, profile, device, plan, dtype, repeat, **shared)
        # the calibration's reference workload in turn with the model: how the machine's speed moved since
        timed = {"model": prepared.instance, **_reference(profile, device)}
        blocks = _warm_turns(timed, ["model"], warmup)
        clocks = {"model": prepared.clock} if prepared.clock is not None else {}
        before_faults = minor_faults()
        runs = time_round_robin(timed, rounds=repeat, warmup=0, blocks={**REFERENCE_BLOCK, **blocks}, clocks=clocks)
        after_faults = minor_faults()
    # the model's passes in the rounds, the untimed and the clocked ones too
    passes = max(1, repeat * (blocks["model"] + 1 + len(clocks)))
    faults = None if before_faults is None or after_faults is None else (after_faults - before_faults) / passes
    return _comparison(prepared, profile, runs["model"], faults, device, runs, kept, blocks["model"])


def _reference(profile: HardwareProfile, device: str) -> dict[str, Instance]:
    """The reference workload and calibrate's DRAM copy where the profile recorded the reference's
    time (calibrated CPUs), else nothing."""
    if not profile.reference_s or device != "cpu":
        return {}
    return {"reference": reference_workload(), "bandwidth": bandwidth_workload()}


@dataclass(frozen=True)
class PairComparison:
    """Two models timed alternately in one run on one device: each one's comparison, and their
    measured ratio beside the predicted one (first over second: a speedup when the second is pruned)."""

    first: Comparison
    second: Comparison
    round_ratios: tuple[float, ...]   # first / second in each round: a drift of the machine cancels out

    @property
    def predicted_ratio(self) -> float:
        return self.first.predicted_ms / self.second.predicted_ms

    @property
    def measured_ratio(self) -> float:
        """Median over rounds of the first model's time over the second's, timed back to back."""
        return statistics.median(self.round_ratios)

    @property
    def ratio_error(self) -> float:
        return self.predicted_ratio / self.measured_ratio - 1.0

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.first.warnings + self.second.warnings))

    def to_dict(self) -> dict[str, Any]:
        return {"first": self.first.to_dict(), "second": self.second.to_dict(),
                "predicted_ratio": self.predicted_ratio, "measured_ratio": self.measured_ratio,
                "ratio_error": self.ratio_error, "round_ratios": list(self.round_ratios)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def measure_pair(first: str, second: str, *, hw: HardwareProfile | str, plan: str | None = None,
                 dtype: str = "float32", repeat: int = 10, warmup: int = 3, input: str | None = None,
                 batch: int | None = None, seq_len: int | None = None, trust_pickle: bool = False,
                 weights: str | None = None, keep_memory: bool = True) -> PairComparison:
    """Time ``first`` and ``second`` alternately, a turn of each per round (an untimed forward pass,
    then passes for about :data:`MODEL_BLOCK_S`, their mean the round's figure) for ``repeat``
    rounds, and compare their measured ratio with the predicted one: whether a pruned model met its
    plan, in one run on a machine whose speed drifts. ``plan`` and ``weights`` apply to ``first``; a
    file costplan saved is predicted under the plan it records. See :func:`measure`."""
    profile, device, kept, shared = _setup(hw, dtype, keep_memory, input, batch, seq_len, trust_pickle, None)
    with _threads(profile):
        a = _prepare(first, profile, device, plan, dtype, repeat, **{**shared, "weights": weights})
        b = _prepare(second, profile, device, None, dtype, repeat, **shared)
        timed = {"a": a.instance, "b": b.instance, **_reference(profile, device)}
        blocks = _warm_turns(timed, ["a", "b"], warmup)
        clocks = {k: p.clock for k, p in (("a", a), ("b", b)) if p.clock is not None}
        runs = time_round_robin(timed, rounds=repeat, warmup=0, blocks={**REFERENCE_BLOCK, **blocks}, clocks=clocks)
    ratios = tuple(x / y for x, y in zip(runs["a"], runs["b"]))
    return PairComparison(_comparison(a, profile, runs["a"], None, device, runs, kept, blocks["a"]),
                          _comparison(b, profile, runs["b"], None, device, runs, kept, blocks["b"]), ratios)


def _setup(hw: HardwareProfile | str, dtype: str, keep_memory: bool, input: str | None, batch: int | None,
           seq_len: int | None, trust_pickle: bool, weights: str | None
           ) -> tuple[HardwareProfile, str, bool, dict[str, Any]]:
    """The profile, the device to time on, whether freed memory is now kept (False where glibc's
    mallopt is not there to ask, or it was not asked), and the model's build arguments."""
    dtype = canonical_dtype(dtype)
    if dtype in QUANTISED:
        raise CostplanError(f"measure runs the model in PyTorch; {dtype} is not a dtype it can run")
    profile = as_profile(hw)
    device = device_for(profile)
    kept = keep_freed_memory() if keep_memory else False
    return profile, device, kept, {"input_shapes": as_shapes(input), "batch": batch, "seq_len": seq_len,
                             "trust": trust_pickle, "weights": weights}


@contextmanager
def _threads(profile: HardwareProfile) -> Iterator[None]:
    """The threads the profile was calibrated with, while timing: its figures hold for them."""
    before = torch.get_num_threads()
    if profile.threads and profile.kind == "cpu":
        torch.set_num_threads(profile.threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
