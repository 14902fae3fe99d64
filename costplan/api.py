"""The public API the CLI and notebooks call: one call per question."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from costplan.errors import CostplanError
from costplan.hardware import Estimate, HardwareProfile, estimate, list_profiles, load_profile
from costplan.hardware.profile import profile_fields
from costplan.coerce import as_plan, as_profile, as_shapes, canonical_dtype, traced_dtype, writable
from costplan.models import Instance, ModelSource, instantiate, resolve
from costplan.models.source import example_input
from costplan.models.saved import provenance
from costplan.atomic import write_atomic
from costplan.planfile import SWEEP_FORMAT, Plan, load_plan, save_plan
from costplan.progress import status
from costplan.report import Report, build_report, reports_csv
from costplan.hardware.roofline import traced_dtype_of
from costplan.spellings import byte_scales, kv_dtype, weights_dtype as spell_weights
from costplan.sparsity import apply_plan, plan_in_force, plan_notes
from costplan.trace import LayerGraph, trace

if TYPE_CHECKING:
    from costplan.pruning.loop import Checkpoint, Evaluation

Shape = tuple[int, ...]
ModelLike = str | torch.nn.Module
IMPORTANCES = ("sensitivity", "gaussian")   # besides the criteria of costplan.scoring


def _describe(instance: Instance) -> str:
    shapes = [tuple(t.shape) for t in [*instance.args, *instance.kwargs.values()] if isinstance(t, torch.Tensor)]
    return ", ".join("x".join(map(str, s)) for s in shapes) or "no tensors"


def _trace_source(source: ModelSource) -> LayerGraph:
    graph = _traced(source)
    if source.pruned is not None:   # a file costplan.save wrote: what was done to it
        graph.applied = source.pruned.applied()  # type: ignore[attr-defined]
    return graph


def _trace_instance(inst: Instance, name: str) -> LayerGraph:
    return trace(inst.module, inst.args, inst.kwargs, name=name, state=inst.state,
                 generation=inst.generation, notes=inst.notes)  # type: ignore[arg-type]


def _traced(source: ModelSource) -> LayerGraph:
    if source.meta:
        try:
            inst = instantiate(source, "meta")
            return _trace_instance(inst, source.name)
        except CostplanError:
            raise
        except Exception as exc:  # noqa: BLE001  constructors or forwards that need real data: retry below
            if not source.cpu_fallback:   # a 70B model is not built on the CPU to find out
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise CostplanError(f"{source.name}: tracing on the meta device failed: {type(exc).__name__}: "
                                    f"{first}") from exc
    inst = instantiate(source, "cpu")
    try:
        return _trace_instance(inst, source.name)
    except Exception as exc:  # noqa: BLE001  the user's model failed: say how, with the input used
        raise CostplanError(f"{source.name}: forward failed on input {_describe(inst)}: "
                            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                            ) from exc


def load_graph(model: ModelLike, *, input: str | Sequence | None = None, batch: int | None = None,
               seq_len: int | None = None, dtype: str = "float32", trust_pickle: bool = False,
               example_inputs: Sequence[object] | None = None, weights: str | os.PathLike[str] | None = None,
               progress: bool = False, phase: str | None = None, context: int = 0) -> LayerGraph:
    """Trace ``model`` into a :class:`LayerGraph`.

    ``model`` is a spec string (``resnet50``, ``hf:bert-base``, ``file.py:factory``, a saved file) or
    an ``nn.Module``, which is called with ``example_inputs`` or seeded noise of ``input``'s shape
    (:func:`costplan.models.source.example_input`) and is not modified. Spec models are built on the meta device when possible (no weights allocated).
    ``phase`` ('prefill' or 'decode') traces an ``hf:`` causal LM's generation pass with a KV cache
    holding ``context`` tokens (decode: one new token per sequence; prefill: ``seq_len`` of them).
    """
    if isinstance(model, torch.nn.Module):
        if example_inputs is None:
            shapes = as_shapes(input)
            if shapes is None:
                raise CostplanError("give example_inputs or input= (a shape) to trace a module")
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            example_inputs = tuple(example_input(s, device) for s in shapes)
        graph = trace(model, tuple(example_inputs), name=type(model).__name__)
        pruned = provenance(model)
        if pruned is not None:    # a model costplan pruned: what was done to it
            graph.applied = pruned.applied()
        return graph
    source = resolve(model, input_shapes=as_shapes(input), batch=batch, seq_len=seq_len, dtype=dtype,
                     trust=trust_pickle, weights=weights, phase=phase, context=context)
    with status(f"tracing {model}") if progress else contextlib.nullcontext():   # after the spec was checked
        return _trace_source(source)


def _device(hw: HardwareProfile | str, runtime: str | None, tf32: bool, fp16_accumulate: bool) -> HardwareProfile:
    """The profile ``hw`` under ``runtime``, with the execution options asked (each warns where it
    cannot apply: HardwareProfile.option_notes)."""
    return as_profile(hw, runtime).with_tf32(tf32).with_fp16_accumulate(fp16_accumulate)


def estimate_latency(graph: LayerGraph, hw: HardwareProfile | str, plan: Plan | str | None = None,
                     dtype: str | None = None, runtime: str | None = None, *, weights_dtype: str | None = None,
                     tf32: bool = False, autocast: bool = False, fp16_accumulate: bool = False) -> Estimate:
    """Per-layer roofline latency of ``graph`` on ``hw`` (under ``runtime``) and ``plan`` (seconds,
    joules), at the precisions :func:`analyze` takes."""
    return estimate(graph, _device(hw, runtime, tf32, fp16_accumulate),
                    apply_plan(graph, plan_in_force(graph, as_plan(plan))), dtype and canonical_dtype(dtype),
                    spell_weights(weights_dtype), autocast)


def analyze(model: ModelLike | LayerGraph, *, hw: HardwareProfile | str | None = None,
            plan: Plan | str | None = None, dtype: str = "float32", runtime: str | None = None,
            weights_dtype: str | None = None, tf32: bool = False, autocast: bool = False,
            fp16_accumulate: bool = False, **kwargs: object) -> Report:
    """Per-layer MACs, parameters, bytes and reuse of ``model``, under ``plan`` if given, and with
    ``hw`` (a profile name, path or HardwareProfile) each layer's roofline latency and bound.

    ``dtype`` is the precision of the math (float32, float16, bfloat16, or int8/float8, which trace
    in float32 and rescale bytes); ``weights_dtype`` stores the weights narrower (weight-only int8,
    int4 or float8, dequantised in the GEMMs); ``tf32`` runs float32 matmuls on TF32 tensor cores as
    ``torch.backends.cuda.matmul.allow_tf32 = True`` does; ``autocast`` prices a float32 model run under
    PyTorch AMP at a 16-bit ``dtype`` (a cast kernel per weighted layer). Byte figures follow these
    precisions; ``fp16_accumulate`` prices float16 math accumulating in FP16 where the profile
    states that rate (GeForce: twice FP32 accumulation's).
    ``kwargs`` go to :func:`load_graph` (input, batch, seq_len, phase, context, trust_pickle, ...).
    """
    dtype = canonical_dtype(dtype)
    weights_dtype = spell_weights(weights_dtype)
    graph = model if isinstance(model, LayerGraph) else load_graph(model, dtype=traced_dtype(dtype), **kwargs)  # type: ignore[arg-type]
    parsed = plan_in_force(graph, as_plan(plan))
    notes = graph.notes + plan_notes(parsed, graph)
    if hw is None:
        scales = byte_scales(traced_dtype_of(graph), dtype, weights_dtype)
        return build_report(graph, parsed, warnings=notes, scales=scales)
    profile = _device(hw, runtime, tf32, fp16_accumulate)
    est = estimate(graph, profile, apply_plan(graph, parsed), dtype, weights_dtype, autocast)
    ctx = est.context
    totals = {"precision": est.precision, "requested_precision": canonical_dtype(est.requested or est.precision),
              "weights_dtype": weights_dtype or est.precision, "kv_cache_dtype": kv_dtype(est.precision),
              "tf32_matmuls": bool(tf32 and profile.tf32_macs), "autocast": ctx.autocast,
              "fp16_accumulate": bool(fp16_accumulate and profile.fp16_accumulate_macs), "runtime": profile.runtime,
              "ridge_macs_per_byte": round(profile.ridge(est.precision), 3),
              "energy_mj": None if est.energy_j is None else est.energy_j * 1e3}
    warnings = est.warnings + graph.notes + plan_notes(parsed, graph, profile.name, profile.runtime)
    report = build_report(graph, parsed, hardware=profile.name, latency=est.layers, extra_totals=totals,
                          warnings=warnings, scales=(ctx.byte_scale, ctx.weight_scale, ctx.state_scale),
                          memory_capacity=profile.memory_capacity)
    if report.totals.get("fits") is False:
        need, have = report.totals["memory_bytes"], report.totals["memory_capacity_bytes"]
        report = dataclasses.replace(report, warnings=report.warnings + (
            f"does not fit: weights + KV cache + activations need {need / 1e9:.1f} GB and {profile.name} has "
            f"{have / 1e9:.0f} GB; the latency is for a device with the memory (shard it, quantise the weights "
            "with --weights-dtype, or shorten --context/--batch)",))
    return report


@dataclass(frozen=True)
class GenerationEstimate:
    """A whole generation: prefill of ``prompt`` tokens (its latency is the time to first token), then
    ``generate - 1`` decode steps at contexts ``prompt`` .. ``prompt + generate - 2``. Decode time is
    priced at the first and the last step's context and summed as a straight line between them
    (attention's share grows linearly with the context; the rest does not change)."""

    prefill: Report
    first: Report                  # the first decode step (context = prompt)
    last: Report                   # the last decode step
    prompt: int
    generate: int

    @property
    def time_to_first_token_ms(self) -> float:
        return self.prefill.totals["latency_ms"]

    @property
    def decode_ms(self) -> float:
        steps = self.generate - 1
        return steps * (self.first.totals["latency_ms"] + self.last.totals["latency_ms"]) / 2 if steps else 0.0

    @property
    def total_ms(self) -> float:
        return self.time_to_first_token_ms + self.decode_ms

    def to_dict(self) -> dict[str, object]:
        batch = self.prefill.totals["batch"]
        steps = self.generate - 1
        last = self.last.totals
        return {"model": self.prefill.model, "hardware": self.prefill.hardware,
                "precision": last.get("precision"), "weights_dtype": last.get("weights_dtype"),
                "batch": batch, "prompt": self.prompt, "generate": self.generate,
                "time_to_first_token_ms": self.time_to_first_token_ms,
                "per_token_ms": {"first": self.first.totals["latency_ms"] if steps else None,
                                 "last": last["latency_ms"] if steps else None,
                                 "mean": self.decode_ms / steps if steps else None},
                "decode_ms": self.decode_ms, "total_ms": self.total_ms,
                "decode_tokens_per_s": batch * steps / (self.decode_ms * 1e-3) if steps else None,
                "tokens_per_s": batch * self.generate / (self.total_ms * 1e-3),
                "kv_cache_bytes": last["kv_cache_bytes"], "memory_bytes": last["memory_bytes"],
                "fits": last["fits"],
                "warnings": list(dict.fromkeys(w for r in (self.prefill, self.first, self.last) for w in r.warnings))}


def generation(model: str, *, hw: HardwareProfile | str, prompt: int, generate: int, batch: int | None = None,
               dtype: str = "float16", weights_dtype: str | None = None, plan: Plan | str | None = None,
               runtime: str | None = None, tf32: bool = False, fp16_accumulate: bool = False,
               autocast: bool = False, progress: bool = False) -> GenerationEstimate:
    """Time to first token, per-token latency and totals of generating ``generate`` tokens after a
    ``prompt``-token prompt with an ``hf:`` causal LM (see :class:`GenerationEstimate`)."""
    if prompt <= 0 or generate <= 0:
        raise CostplanError("--prompt and --generate must be positive token counts")
    traced = traced_dtype(canonical_dtype(dtype))

    def price(**phase: object) -> Report:
        graph = load_graph(model, batch=batch, dtype=traced, progress=progress, **phase)  # type: ignore[arg-type]
        return analyze(graph, hw=hw, dtype=dtype, weights_dtype=weights_dtype, plan=plan, runtime=runtime,
                       tf32=tf32, fp16_accumulate=fp16_accumulate, autocast=autocast)

    prefill = price(phase="prefill", seq_len=prompt)
    if generate == 1:     # the prefill's token is the only one
        return GenerationEstimate(prefill, prefill, prefill, prompt, generate)
    first = price(phase="decode", context=prompt)
    last = first if generate == 2 else price(phase="decode", context=prompt + generate - 2)
    return GenerationEstimate(prefill, first, last, prompt, generate)


def importance_for(graph: LayerGraph, model: ModelLike | LayerGraph, importance: object, data: object,
                   loss_fn: object, load_kwargs: dict) -> object:
    """Scores from real weights where they can be had: the user's module, or the spec built on the CPU
    (with its initial weights, drawn from a fixed seed so the same command gives the same plan).
    ``importance`` None is 'sensitivity' when ``data`` is given, else 'magnitude'; any criterion of
    :mod:`costplan.scoring` (magnitude, l1, l2, taylor, ...) scores as the pruner's criterion of that
    name does."""
    from costplan.planning.importance import Importance, scored_params
    from costplan.planning.sensitivity import Sensitivity
    from costplan.pruning.loop import cross_entropy
    from costplan.scoring import CRITERIA, collect_scores, make_criterion

    if isinstance(importance, Importance):
        return importance
    if importance is None:
        importance = "sensitivity" if data is not None else "magnitude"
    if importance == "gaussian" or isinstance(model, LayerGraph):
        return Importance(graph, origin="Gaussian weights (no real weights given)")   # kind "gaussian"
    if importance not in IMPORTANCES and importance not in CRITERIA:
        raise CostplanError(f"unknown importance '{importance}': use {', '.join(IMPORTANCES)} or a criterion "
                            f"({', '.join(CRITERIA)})")
    weights = load_kwargs.get("weights")
    if isinstance(model, torch.nn.Module):
        module, origin = model, "the module's weights"
    elif graph.total_weight_bytes > 4e9:
        return Importance(graph, origin="Gaussian weights (too large to build here)")
    else:
        source = resolve(model, input_shapes=as_shapes(load_kwargs.get("input")), batch=load_kwargs.get("batch"),
                         seq_len=load_kwargs.get("seq_len"), dtype="float32",
                         trust=bool(load_kwargs.get("trust_pickle")), weights=weights)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module = instantiate(source, "cpu").module
        origin = f"weights from {weights}" if weights else \
            "random initial weights, seed 0 (give --weights FILE to plan your trained model)"
    params = scored_params(graph)
    criterion = make_criterion("magnitude" if importance == "sensitivity" else str(importance))
    if (importance == "sensitivity" or criterion.needs_grad) and data is None:
        raise CostplanError(f"importance='{importance}' needs data= (calibration batches; loss_fn=(model, batch) "
                            "for a loss other than cross entropy on (inputs, targets))")
    loss = loss_fn or cross_entropy
    scores = collect_scores(module, params, criterion, data, loss)  # type: ignore[arg-type]
    if importance == "sensitivity":
        return Sensitivity(graph, module, data, loss, scores,  # type: ignore[arg-type]
                           origin=f"units ranked by magnitude, {origin}")
    return Importance(graph, scores, origin=f"{importance}, {origin}", kind=str(importance))


def plan(model: ModelLike | LayerGraph, *, budget: object, hw: HardwareProfile | str, patterns: str = "auto",
         dtype: str = "float32", levels: int = 20, max_ratio: float | None = None, exclude: Sequence[str] = (),
         keep_ends_dense: bool = True, bounds: dict[str, tuple[float, float]] | None = None,
         importance: object = None, data: object = None, loss_fn: object = None,
         time_limit: float = 10.0, runtime: str | None = None, weights_dtype: str | None = None,
         tf32: bool = False, autocast: bool = False, fp16_accumulate: bool = False,
         **kwargs: object):  # noqa: ANN201  (PlanResult)
    """Per-layer sparsity meeting ``budget`` ('2ms', '500us', '2x') on ``hw``, removing least importance.
    ``dtype``, ``weights_dtype``, ``tf32``, ``autocast`` and ``fp16_accumulate`` are the precisions as :func:`analyze` takes them; a
    generation pass is planned with ``phase`` and ``context`` (passed on to :func:`load_graph`).

    ``importance`` is 'sensitivity' (the loss increase measured on ``data`` when each group alone is
    pruned at each level; the default when ``data`` is given), 'magnitude' (normalised w^2 of real
    weights; the default without data), 'taylor' (|w * grad| over ``data``), 'gaussian' (no weights
    needed) or an ``Importance``. ``loss_fn(model, batch)`` defaults to cross entropy on (inputs,
    targets) batches. ``max_ratio`` caps every ratio; None: a channel group (or a layer's heads) keeps
    at least a fifth, an element-wise pattern removes at most 0.9 (:func:`costplan.planning.units.max_ratios`).
    Returns a PlanResult whose ``.plan`` serialises to the plan contract.
    """
    dtype = canonical_dtype(dtype)
    graph = model if isinstance(model, LayerGraph) else load_graph(model, dtype=traced_dtype(dtype), **kwargs)  # type: ignore[arg-type]
    scores = importance_for(graph, model, importance, data, loss_fn, dict(kwargs))
    result = _plans(graph, [budget], hw=hw, importance=scores, patterns=patterns, dtype=dtype, levels=levels,
                    max_ratio=max_ratio, exclude=exclude, keep_ends_dense=keep_ends_dense, bounds=bounds,
                    time_limit=time_limit, runtime=runtime, weights_dtype=weights_dtype, tf32=tf32,
                    autocast=autocast, fp16_accumulate=fp16_accumulate)[0]
    if isinstance(result, CostplanError):
        raise result
    return result


def _plans(graph: LayerGraph, budgets: Sequence[object], *, hw: HardwareProfile | str, importance: object,
           patterns: str = "auto", dtype: str = "float32", levels: int = 20, max_ratio: float | None = None,
           exclude: Sequence[str] = (), keep_ends_dense: bool = True,
           bounds: dict[str, tuple[float, float]] | None = None, time_limit: float = 10.0,
           runtime: str | None = None, weights_dtype: str | None = None, tf32: bool = False,
           autocast: bool = False, fp16_accumulate: bool = False) -> list:
    """A PlanResult, or the CostplanError saying why none can be made, for each of ``budgets``: the
    planner's problem built once for all (planner.make_plans); the options as :func:`plan` takes them."""
    from costplan.planning.planner import make_plans

    return make_plans(graph, _device(hw, runtime, tf32, fp16_accumulate), budgets,  # type: ignore[arg-type]
                      patterns=patterns, dtype=canonical_dtype(dtype), levels=levels, max_ratio=max_ratio,
                      exclude=exclude, keep_ends_dense=keep_ends_dense, bounds=bounds,
                      importance=importance, time_limit=time_limit,  # type: ignore[arg-type]
                      weights_dtype=spell_weights(weights_dtype), autocast=autocast)


def sweep(model: ModelLike | LayerGraph, *, hw: HardwareProfile | str, fractions: Sequence[float],
          **kwargs: object) -> list:
    """Plans at budgets of ``fractions`` of the dense latency: the latency/importance front, as
    :class:`~costplan.planning.planner.SweepPoint` records (a plan, or why none meets that budget)."""
    from costplan.planning.planner import Budget, SweepPoint

    profile = as_profile(hw, kwargs.pop("runtime", None))
    load = {k: kwargs.pop(k) for k in ("input", "batch", "seq_len", "trust_pickle", "weights", "phase", "context")
            if k in kwargs}
    dtype = str(kwargs.get("dtype", "float32"))
    graph = model if isinstance(model, LayerGraph) else load_graph(
        model, dtype=traced_dtype(dtype), **load)  # type: ignore[arg-type]
    importance = importance_for(graph, model, kwargs.pop("importance", None), kwargs.pop("data", None),
                                kwargs.pop("loss_fn", None), load)
    precision = {k: kwargs[k] for k in ("weights_dtype", "tf32", "autocast", "fp16_accumulate") if k in kwargs}
    dense_ms = estimate_latency(graph, profile, None, dtype, **precision).latency_s * 1e3  # type: ignore[arg-type]
    results = _plans(graph, [Budget("latency", dense_ms * f) for f in fractions], hw=profile, importance=importance,
                     **kwargs)  # type: ignore[arg-type]
    return [SweepPoint(f, None, str(r)) if isinstance(r, CostplanError) else SweepPoint(f, r)
            for f, r in zip(fractions, results)]


def uniform_plan(model: ModelLike | LayerGraph, pattern: str, sparsity: float, *, keep_ends_dense: bool = True,
                 exclude: Sequence[str] = (), **kwargs: object) -> Plan:
    """One ``sparsity`` for every group (channel, head) or weight (element-wise patterns) ``pattern``
    can prune: the baseline a plan is compared with. ``kwargs`` go to :func:`load_graph`."""
    from costplan.planning.units import uniform_plan as build

    graph = model if isinstance(model, LayerGraph) else load_graph(model, **kwargs)  # type: ignore[arg-type]
    return build(graph, pattern, sparsity, keep_ends_dense=keep_ends_dense, exclude=exclude)


@dataclass(frozen=True)
class PruneResult:
    """A pruned model and what was done to it: the channel/head groups and the element-wise pruned
    weights (parameter names), the training steps taken (0: one shot) and the plan's warnings."""

    model: torch.nn.Module
    groups: tuple[str, ...]
    weights: tuple[str, ...]
    steps: int
    warnings: tuple[str, ...]
    history: tuple[Checkpoint, ...] = ()  # one per progress report while training
    before: Evaluation | None = None      # on eval_data: the model as given
    after: Evaluation | None = None       # ... and pruned


def prune_with_result(model: torch.nn.Module | str, plan: Plan | str | os.PathLike[str], *, criterion: str = "magnitude",
          scope: str = "local", compact: bool = True, input: str | Sequence | None = None,
          example_inputs: Sequence[object] | None = None, graph: LayerGraph | None = None, source: str | None = None,
          data: object = None, loss_fn: object = None, steps: int = 0, lr: float = 0.01, frequency: int | None = None,
          decay: str = "cube", progress: bool = False, eval_data: object = None, report_every: int | None = None,
          log: object = None, **load: object) -> PruneResult:
    """Prune ``model`` (a module, left unchanged, or a spec such as ``resnet50``, built with its initial
    weights on the CPU) to ``plan``; with ``compact`` the physically smaller model, else the masked copy
    with the masks folded in.

    Without ``data``: one shot, by a weight-only ``criterion``. With ``data`` (batches, cycled) and
    ``steps``: SGD at ``lr`` with ``loss_fn(model, batch)`` (default cross entropy of (inputs, targets)),
    pruning gradually over the first three quarters of the steps (every ``frequency`` steps, ``decay``
    ramp), then fine-tuning at the plan's sparsity, reporting to ``log`` (a function of one line) every
    ``report_every`` steps: loss, the schedule's progress, zeros reached and, with ``eval_data``
    ((inputs, targets) batches), the evaluation. ``eval_data`` is also evaluated before and after
    (:attr:`PruneResult.before`, ``after``). For your own loop use :class:`Pruner`."""
    import copy

    from costplan.pruning.loop import cross_entropy, evaluate, train_while_pruning
    from costplan.pruning.pruner import Pruner
    from costplan.pruning.schedule import Schedule

    if isinstance(model, str):
        instance = instantiate(resolve(model, input_shapes=as_shapes(input), **load), "cpu")  # type: ignore[arg-type]
        source = source or model
        model, example_inputs = instance.module, example_inputs or instance.args
        if instance.kwargs:
            graph = graph or trace(model, instance.args, instance.kwargs, name=source)
    else:
        model = copy.deepcopy(model)
    schedule = None
    if data is not None:
        if steps <= 0:
            raise CostplanError("pruning while training needs steps > 0")
        end = max(0, int(steps * 0.75))       # the last quarter fine-tunes at the final sparsity
        schedule = Schedule(0, end, frequency or max(1, end // 20), decay)
    pruner = Pruner(model, plan, criterion=criterion, scope=scope, schedule=schedule, input=as_shapes(input),
                    example_inputs=example_inputs, graph=graph, source=source)
    notes = plan_notes(pruner.plan, pruner.graph)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    loss = loss_fn or cross_entropy
    before = evaluate(pruner.model, eval_data, loss) if eval_data is not None else None   # type: ignore[arg-type]
    history: list = []
    if data is not None:
        history = train_while_pruning(pruner, data, steps, lr=lr, loss_fn=loss, progress=progress,  # type: ignore[arg-type]
                                      eval_data=eval_data, report_every=report_every, log=log)  # type: ignore[arg-type]
        small = pruner.compact() if compact else pruner.remove()
    else:
        if pruner.criterion.needs_grad:
            raise CostplanError(f"criterion '{criterion}' needs gradients: give training data (--train) or use "
                                "costplan.Pruner in a training loop")
        with status("pruning and compacting") if progress else contextlib.nullcontext():
            pruner.prune()
            small = pruner.compact() if compact else pruner.remove()
    after = evaluate(small, eval_data, loss) if eval_data is not None else None   # type: ignore[arg-type]
    return PruneResult(small, tuple(g.name for g in pruner.groups), tuple(pruner.elements),
                       steps if data is not None else 0, tuple(notes), tuple(history), before, after)


def prune(model: torch.nn.Module | str, plan: Plan | str | os.PathLike[str], **kwargs: object) -> torch.nn.Module:
    """Prune ``model`` to ``plan`` and return the pruned model; the arguments are
    :func:`prune_with_result`'s, which also says what was pruned."""
    return prune_with_result(model, plan, **kwargs).model   # type: ignore[arg-type]


def training_data(spec: str) -> tuple[object, object]:
    """``FILE.py:FUNCTION`` (runs that file): the function returns batches of (inputs, targets), or a
    (batches, loss_fn(model, batch)) pair. Returns (batches, loss_fn or None)."""
    from costplan.models.files import load_callable

    path, _, name = spec.rpartition(":")
    if not path.endswith(".py") or not name:
        raise CostplanError(f"--train wants FILE.py:FUNCTION, got '{spec}'")
    made = load_callable(path, name)()
    return made if isinstance(made, tuple) and len(made) == 2 else (made, None)


def parse_budget(text: str):  # noqa: ANN201  (planning.planner.Budget)
    """'2ms', '500us', '0.5s' or '2x' (a speedup over the dense model)."""
    from costplan.planning.planner import parse_budget as parse

    return parse(text)


def export_plan(plan: Plan | str | os.PathLike[str], fmt: str) -> dict:
    """``plan`` in another pruner's configuration format: 'torch-pruning', 'nni' or 'inc'."""
    from costplan.planning.export import export

    return export(as_plan(plan), fmt)  # type: ignore[arg-type]


def calibrate(*, name: str = "local", quick: bool = False, progress: bool = True,
              threads: int | None = None):  # noqa: ANN201  (Calibration)
    """Fit a hardware profile of this machine's CPU by microbenchmarks and grade it on held-out networks
    (see :mod:`costplan.hardware.calibrate`); raises CostplanError when the machine is too busy to fit."""
    from costplan.hardware.calibrate import calibrate as fit

    return fit(name=name, quick=quick, progress=progress, threads=threads)


def write_profile(calibration: object, path: str | os.PathLike[str]) -> None:
    """Write a calibration as a profile file ``--hw`` accepts (atomically)."""
    from costplan.hardware.calibrate import profile_toml

    write_atomic(path, profile_toml(calibration))  # type: ignore[arg-type]


def measure(model: str, *, hw: HardwareProfile | str, **kwargs: object):  # noqa: ANN201  (measure.Comparison)
    """Run ``model`` on the device ``hw`` describes (this CPU; a CUDA GPU for a GPU profile) and set
    measured against predicted latency, per layer and in total (:func:`costplan.measure.measure`)."""
    from costplan.measure import measure as run

    return run(model, hw=hw, **kwargs)


def measure_pair(first: str, second: str, *, hw: HardwareProfile | str, **kwargs: object):  # noqa: ANN201
    """Time two models alternately on the device ``hw`` describes; their measured ratio beside the
    predicted one (:func:`costplan.measure.measure_pair`)."""
    from costplan.measure import measure_pair as run

    return run(first, second, hw=hw, **kwargs)


def model_names() -> dict[str, list[str]]:
    """The model names costplan builds, by family."""
    from costplan.models import hf, vision

    return {"torchvision": sorted(vision.names()), "hf": [f"hf:{n}" for n in hf.names()]}


def load(path: str | os.PathLike[str], *, trust_code: bool = False) -> torch.nn.Module:
    """A model :func:`costplan.save` wrote (rebuilt from its description; no pickled code)."""
    from costplan.pruning.saving import load as read

    return read(path, trust_code=trust_code)


def save(model: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Write a model costplan pruned: its weights and how to rebuild its architecture."""
    from costplan.pruning.saving import save as write

    write(model, path)


__all__ = ["SWEEP_FORMAT", "GenerationEstimate", "PruneResult", "analyze", "generation", "calibrate", "estimate_latency", "export_plan", "importance_for", "list_profiles",
           "load", "load_graph", "load_plan", "load_profile", "profile_fields", "reports_csv", "measure", "measure_pair", "model_names", "parse_budget", "plan", "prune", "prune_with_result",
           "save", "save_plan", "sweep", "training_data", "uniform_plan", "writable", "write_atomic", "write_profile"]
