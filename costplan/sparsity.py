"""What a plan leaves of each layer: effective MACs, non-zero parameters and kept widths.

A plan is first checked against the graph's prunable groups (:mod:`costplan.trace.groups`): a channel
entry must name every member of its group with one ratio, a head entry an attention module whose
heads can go, an element-wise entry a weight its pattern fits. What passes becomes a :class:`Resolved`
plan: units kept per group and element-wise entries per weight. The pruner applies the same object.

Every layer is then recomputed from the kept sizes of its tensors: the MACs of a weight's op scale with
the weight's kept elements, the MACs of other ops are their formula on the kept shapes, and
element-wise patterns keep exactly the weights their masks keep (``Pattern.kept``).
"""

from __future__ import annotations

import dataclasses

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from costplan.errors import CostplanError, close_names
from costplan.modules import out_in_shape
from costplan.patterns import Pattern
from costplan.planfile import LayerPlan, Plan
from costplan.trace.graph import Layer, LayerGraph
from costplan.trace.groups import Keep, PrunableGroup, Structure, mac_count, structure_of


@dataclass(frozen=True)
class Effective:
    """One layer under a plan. ``in_keep``/``out_keep`` are the kept shares of its activations."""

    macs: float                    # MACs left: structured pruning, then element-wise density
    params: float
    in_keep: float = 1.0
    out_keep: float = 1.0
    density: float = 1.0           # kept share of its weight's elements inside the (smaller) shape
    plan: LayerPlan | None = None  # its weight's element-wise entry
    shape_scale: float = 1.0       # kept share of the weights it reads, from structured pruning
    shape_macs: float | None = None  # MACs of the smaller shapes, zeros included (None: ``macs``)


@dataclass(frozen=True)
class Resolved:
    """A plan checked against a graph: what it removes, as the structure says it."""

    keep: Mapping[str, int] = field(default_factory=dict)                 # group -> units kept
    ratios: Mapping[str, float] = field(default_factory=dict)             # group -> plan sparsity
    elementwise: Mapping[str, LayerPlan] = field(default_factory=dict)    # weight parameter -> entry


def kept_count(total: int, sparsity: float) -> int:
    """Units kept of ``total`` after removing ``sparsity`` of them (at least one stays)."""
    return max(1, round(total * (1.0 - sparsity)))


def kept_fraction(total: int | None, sparsity: float) -> float:
    """Kept share of ``total`` units after removing ``sparsity`` of them (at least one stays)."""
    if not total:
        return 1.0 - sparsity
    return kept_count(total, sparsity) / total


def heads_of(graph: LayerGraph, module: str) -> int | None:
    if module in graph.heads:
        return graph.heads[module]
    return next((h for m, h in graph.heads.items() if m.startswith(module + ".")), None)


def weight_shape(structure: Structure, layer: Layer, keep: Keep) -> tuple[int, ...] | None:
    """A layer's weight as (outputs, inputs, ...) after structured pruning."""
    param = layer.weight_param
    if param is None or param not in structure.shapes:
        return None
    shape = structure.param_shape(param, keep) or structure.shapes[param]
    return out_in_shape(shape, layer.transposed_weight)


def resolve(graph: LayerGraph, plan: Plan | None) -> Resolved:
    """Check ``plan`` against ``graph``; raise CostplanError naming every layer it cannot take and why."""
    if plan is None:
        return Resolved()
    structure = structure_of(graph)
    problems: list[str] = []
    missing = sorted(name for name in plan.layers if name not in graph.module_names)
    if missing:
        hint = close_names(missing[0], graph.module_names)
        raise CostplanError(f"the plan names {len(missing)} layer(s) that {graph.model} lacks: "
                            f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}.{hint}")
    for name, lp in plan.layers.items():
        if not 0.0 <= lp.sparsity < 1.0:
            problems.append(f"'{name}' has sparsity {lp.sparsity}; it must be in [0, 1)")
    named: dict[str, dict[str, float]] = {}      # group -> member -> sparsity
    for key, lp in plan.layers.items():
        if lp.pattern.kind == "head":
            _head_entry(graph, structure, key, lp, named, problems)
        elif lp.pattern.kind == "channel":
            _channel_entry(graph, structure, key, lp, named, problems)
    keep, ratios = {}, {}
    for gname, members in named.items():
        group = structure.groups[gname]
        values = set(members.values())
        if group.kind == "channel":
            absent = [m for m in group.members if m not in members]
            if absent and values == {0.0}:
                continue      # named members dense, the rest unnamed: nothing to remove
            if absent:
                problems.append(
                    f"'{next(iter(members))}' shares its output channels with {_list(absent)} (they are "
                    f"{_why_coupled(group)}): a channel plan must give every member of the group one ratio; "
                    f"add {_list(absent)} with sparsity {next(iter(values)):g}, or prune it element-wise")
                continue
        if len(values) > 1:
            problems.append(f"{_list(list(members))} share output channels but the plan gives them different "
                            f"ratios ({', '.join(f'{v:g}' for v in sorted(values))}); give them one ratio")
            continue
        sparsity = values.pop()
        if sparsity > 0:
            keep[gname] = kept_count(group.width, sparsity)
            ratios[gname] = sparsity
    elementwise = _elementwise_entries(graph, structure, plan, keep, problems)
    if problems:
        raise CostplanError("the plan does not fit the model:\n  " + "\n  ".join(problems))
    return Resolved(keep, ratios, elementwise)


def _list(names: list[str], n: int = 4) -> str:
    shown = ", ".join(f"'{x}'" for x in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def _why_coupled(group: PrunableGroup) -> str:
    return "added or multiplied together" if len(group.members) > 1 else "one set of channels"


def _head_entry(graph: LayerGraph, structure: Structure, key: str, lp: LayerPlan,
                named: dict[str, dict[str, float]], problems: list[str]) -> None:
    groups = [g for g in structure.groups.values() if g.kind == "head" and
              (g.name == key or g.name.startswith(key + "."))]
    fixed = [g for g in structure.groups.values() if g.name == key and g.fixed]
    if not groups:
        member = structure.member_of.get(key)
        if member is not None and structure.groups[member].kind == "head":
            problems.append(f"'{key}' is one projection of attention '{member}': prune heads by naming "
                            f"'{member}'")
        elif key in graph.heads or fixed:
            why = fixed[0].fixed if fixed else _head_fixed_reason(structure, key)
            problems.append(f"heads of '{key}' cannot be removed: {why}")
        else:
            problems.append(f"'{key}' is not an attention module with heads costplan can remove"
                            f"{'; attention modules: ' + _list(list(graph.heads)) if graph.heads else ''}")
        return
    for g in groups:
        if g.fixed:
            problems.append(f"heads of '{g.name}' cannot be removed: {g.fixed}")
            continue
        named.setdefault(g.name, {})[key] = lp.sparsity


def _head_fixed_reason(structure: Structure, attention: str) -> str:
    inside = [g for g in structure.groups.values() if any(m.startswith(attention + ".") for m in g.members)]
    return next((g.fixed for g in inside if g.fixed), "its projections are not split into heads costplan can follow")


def _channel_entry(graph: LayerGraph, structure: Structure, key: str, lp: LayerPlan,
                   named: dict[str, dict[str, float]], problems: list[str]) -> None:
    modules = [key] if key in structure.member_of else sorted(
        {m for m in structure.member_of if m.startswith(key + ".")})
    if not modules:
        problems.append(f"'{key}' has no output channels to prune (not a conv, linear or recurrent layer)")
        return
    for module in modules:
        group = structure.groups[structure.member_of[module]]
        if group.kind == "head":
            problems.append(f"'{module}' projects attention heads: prune it with the 'head' pattern on "
                            f"'{group.name}'")
        elif group.fixed:
            problems.append(f"channels of '{module}' cannot be removed: {group.fixed}")
        elif group.width <= 1:
            problems.append(f"'{module}' has a single output channel")
        else:
            named.setdefault(group.name, {})[module] = lp.sparsity


def _elementwise_entries(graph: LayerGraph, structure: Structure, plan: Plan, keep: Keep,
                         problems: list[str]) -> dict[str, LayerPlan]:
    out: dict[str, LayerPlan] = {}
    for key in sorted(plan.layers, key=len):        # an inner module's entry overrides its container's
        lp = plan.layers[key]
        if not lp.pattern.elementwise:
            continue
        weights = [l for l in graph.layers_of_module(key) if l.weight_param is not None]
        if not weights:
            problems.append(f"'{key}' has no conv or linear weight to prune {lp.pattern}")
            continue
        for layer in weights:
            param = layer.weight_param
            if layer.tied and lp.sparsity > 0:
                problems.append(f"'{layer.module}' shares its weight with '{param.rpartition('.')[0]}' (tied): "
                                f"{lp.pattern} zeros would change both; costplan does not prune tied weights")
                continue
            shape = weight_shape(structure, layer, keep)
            why = lp.pattern.fits(shape) if shape and lp.sparsity > 0 else None
            if why:
                problems.append(f"'{layer.module or layer.name}' cannot take {lp.pattern}: {why}")
            elif lp.sparsity > 0:
                out[param] = lp
    return out


def layer_effective(structure: Structure, layer: Layer, keep: Keep,
                    elementwise: Mapping[str, LayerPlan] | None = None) -> Effective:
    """``layer`` when each group keeps ``keep`` units and weights take their ``elementwise`` entries."""
    nodes = structure.nodes.get(layer.name)
    elementwise = elementwise or {}
    param = layer.weight_param
    lp = elementwise.get(param) if param else None
    density = 1.0
    if lp is not None:
        shape = weight_shape(structure, layer, keep)
        numel = math.prod(shape)
        density = lp.pattern.kept(shape, lp.sparsity) / numel if numel else 1.0
    if nodes is None:
        return Effective(layer.macs * density, layer.params, density=density, plan=lp, shape_macs=layer.macs)
    macs = shape_macs = 0.0
    for part, operands, out in nodes.macs:
        m = mac_count(part, operands, out, structure, keep, part.formula)
        shape_macs += m
        macs += m * (density if part.param is not None and part.param == param else 1.0)
    params = 0.0
    for p in layer.param_names:
        elements = math.prod(structure.shapes[p]) * structure.param_fraction(p, keep)
        params += elements * (density if p == param else 1.0)
    read = sum(math.prod(structure.shapes[p]) for p in layer.reads)
    shape_scale = sum(math.prod(structure.shapes[p]) * structure.param_fraction(p, keep)
                      for p in layer.reads) / read if read else 1.0
    return Effective(macs, params, _share(nodes.ins, layer.in_shapes, structure, keep),
                     _share(nodes.outs, layer.out_shapes, structure, keep), density, lp, shape_scale, shape_macs)


def _share(dims: tuple, shapes: tuple, structure: Structure, keep: Keep) -> float:
    """Kept share of the elements of a layer's tensors (weighted by size)."""
    total = kept = 0.0
    for i, shape in enumerate(shapes):
        n = math.prod(shape)
        total += n
        d = dims[i] if i < len(dims) else None
        kept += n * (d.fraction(keep, structure.widths) if d is not None else 1.0)
    return kept / total if total else 1.0


def plan_in_force(graph: LayerGraph, plan: Plan | None) -> Plan | None:
    """The plan analysis of ``graph`` applies: ``plan`` as given; for a model costplan pruned, given
    nothing or the plan its file records, that recorded plan: its element-wise entries where the
    channels and heads were already cut out (their zeros are still in the weights), all of it where
    they are zeros in dense shapes."""
    applied = graph.applied
    if applied is None:
        return plan
    recorded = Plan.from_dict(applied["plan"], source=f"the plan {graph.model} records")
    if plan is not None and dict(plan.layers) != dict(recorded.layers):
        return plan
    layers = {k: lp for k, lp in recorded.layers.items() if lp.pattern.elementwise or not applied["compacted"]}
    return dataclasses.replace(recorded, layers=layers, model=graph.model, input=None)


def plan_notes(plan: Plan | None, graph: LayerGraph, hardware: str | None = None,
               runtime: str | None = None) -> tuple[str, ...]:
    """Warnings when ``plan`` was made for another model, input, device or runtime than it is applied to."""
    if plan is None:
        return ()
    notes = []
    if plan.model and plan.model != graph.model:
        notes.append(f"the plan was made for {plan.model}, not {graph.model}")
    made = plan.input.shapes if plan.input else None
    if made and tuple(tuple(s) for s in graph.inputs.shapes) != made:
        shown = ", ".join("x".join(map(str, s)) for s in made)
        now = ", ".join("x".join(map(str, s)) for s in graph.inputs.shapes)
        notes.append(f"the plan was made for input {shown}, not {now}: its latencies and ratios assumed that input")
    if hardware and plan.hardware and plan.hardware != hardware:
        notes.append(f"the plan was made for {plan.hardware}, not {hardware}: another device may want another plan")
    made_runtime = (plan.predicted or {}).get("runtime")
    if runtime and made_runtime and made_runtime != runtime:
        notes.append(f"the plan was made for the {made_runtime} runtime, not {runtime}: per-op overheads differ, "
                     "so another plan may fit the budget better")
    return tuple(notes)


def apply_plan(graph: LayerGraph, plan: Plan | Resolved | None) -> dict[str, Effective]:
    """Effective MACs and parameters of every layer under ``plan`` (dense when None)."""
    if plan is None:
        return {l.name: Effective(l.macs, l.params) for l in graph.layers}
    resolved = plan if isinstance(plan, Resolved) else resolve(graph, plan)
    structure = structure_of(graph)
    return {l.name: layer_effective(structure, l, resolved.keep, resolved.elementwise) for l in graph.layers}


def effective_totals(graph: LayerGraph, effective: Mapping[str, Effective]) -> tuple[int, int]:
    """(effective MACs, non-zero parameters) of the whole model."""
    macs = sum(e.macs for e in effective.values())
    attributed = sum(l.params for l in graph.layers)
    params = graph.total_params - attributed + sum(e.params for e in effective.values())
    return round(macs), round(params)


__all__ = ["Effective", "Pattern", "Resolved", "apply_plan", "effective_totals", "heads_of", "kept_count",
           "kept_fraction", "layer_effective", "plan_in_force", "plan_notes", "resolve"]
