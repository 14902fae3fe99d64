"""Per-layer sparsity that meets a latency budget while removing the least importance.

The planner turns a layer graph into the solver's discrete problem: units (channel groups, head
groups, single layers) with options (ratio levels of the patterns the device can exploit), each
option's importance removed, and latency tables from the same roofline ``costplan analyze`` uses,
so that ``analyze --plan`` reproduces the planner's prediction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from costplan.errors import CostplanError
from costplan.hardware import Estimate, HardwareProfile, estimate
from costplan.hardware.roofline import context, layer_latency
from costplan.planfile import LayerPlan, Pattern, Plan, parse_pattern
from costplan.planning.coupling import Coupling, Group, default_fixed, find_groups
from costplan.planning.importance import Importance
from costplan.planning.solver import Infeasible, Pair, Problem, Solution, solve
from costplan.sparsity import apply_plan, effective_totals, kept_fraction, layer_effective
from costplan.trace.graph import Layer, LayerGraph

STRUCTURED = ("channel", "head")


@dataclass(frozen=True)
class Budget:
    """A latency budget in milliseconds, or a speedup over the dense model."""

    kind: str       # 'latency' or 'speedup'
    value: float

    def seconds(self, dense_s: float) -> float:
        return self.value * 1e-3 if self.kind == "latency" else dense_s / self.value

    def __str__(self) -> str:
        return f"{self.value:g} ms" if self.kind == "latency" else f"{self.value:g}x"


def parse_budget(text: str) -> Budget:
    """'2ms', '500us', '0.5s' or '2x' (a speedup)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(ms|us|µs|s|x)\s*", str(text).lower())
    if not m:
        raise CostplanError(f"unparseable budget '{text}': give a latency like 2ms or 500us, or a speedup like 2x")
    value, unit = float(m[1]), m[2]
    if value <= 0:
        raise CostplanError(f"the budget must be positive, got '{text}'")
    if unit == "x":
        if value <= 1:
            raise CostplanError(f"a speedup budget must be above 1x, got '{text}'")
        return Budget("speedup", value)
    return Budget("latency", value * {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}[unit])


@dataclass(frozen=True)
class Option:
    """One choice for a unit: keep it dense, or prune with a pattern at a ratio."""

    pattern: Pattern | None          # None: dense
    sparsity: float = 0.0
    keep: float = 1.0                # kept fraction of the unit's output channels (heads)

    def layer_plan(self) -> LayerPlan | None:
        return None if self.pattern is None else LayerPlan(self.sparsity, self.pattern)


@dataclass(frozen=True)
class Unit:
    name: str
    group: Group | None              # None: a single layer pruned element-wise
    layers: tuple[str, ...]
    options: tuple[Option, ...]

    @property
    def structured(self) -> bool:
        return any(o.pattern is not None and o.pattern.kind in STRUCTURED for o in self.options)


@dataclass(frozen=True)
class PlanResult:
    """A solved plan with what the planner knew when it made it."""

    plan: Plan
    graph: LayerGraph
    profile: HardwareProfile
    precision: str
    dense_latency_s: float
    latency_s: float
    solution: Solution
    units: tuple[Unit, ...]
    rows: tuple[Mapping[str, object], ...] = field(default_factory=tuple)


# ---- options ------------------------------------------------------------------------------------

def candidate_patterns(spec: str, profile: HardwareProfile, precision: str, coupling: Coupling) -> list[Pattern]:
    """The patterns to plan with: 'auto' is every pattern the device turns into time."""
    has = {kind: any(g.kind == kind for g in coupling.prunable()) for kind in STRUCTURED}
    if spec.strip().lower() == "auto":
        patterns = [Pattern(kind) for kind in STRUCTURED if has[kind]]
        for text in ("2:4", "unstructured", "4x1"):
            support = profile.support(text, precision)
            if support is not None and support.useful:
                patterns.append(parse_pattern(text))
        return patterns
    patterns = [parse_pattern(p) for p in spec.split(",") if p.strip()]
    if not patterns:
        raise CostplanError("--pattern names no pattern")
    for p in patterns:
        if p.kind in STRUCTURED:
            if not has[p.kind]:
                what = "attention heads it can prune" if p.kind == "head" else "channels it can prune"
                raise CostplanError(f"the model has no {what} (its groups are tied to the input or output)")
            continue
        support = profile.support(str(p), precision)
        if support is None or not support.useful:
            usable = [t for t in ("2:4", "unstructured", "4x1") if (s := profile.support(t, precision)) and s.useful]
            why = "its dense kernels multiply the zeros" if support is not None else "it has no kernels for it"
            raise CostplanError(
                f"{p} sparsity does not speed up {profile.name} at {precision} ({why}); patterns it can use: "
                f"channel, head{', ' + ', '.join(usable) if usable else ''}")
    return patterns


def _levels(max_ratio: float, levels: int) -> list[float]:
    return [float(r) for r in np.linspace(0.0, max_ratio, levels)[1:]]


def _fits_nm(layer: Layer, m: int) -> bool:
    width = layer.attrs.get("in_channels", layer.attrs.get("in_features"))
    groups = int(layer.attrs.get("groups", 1))
    return bool(width) and (int(width) // groups) % m == 0


def _elementwise_options(layers: Sequence[Layer], patterns: Sequence[Pattern], ratios: Sequence[float]) -> list[Option]:
    options = []
    for p in patterns:
        if p.kind == "nm":
            if all(_fits_nm(l, p.m) for l in layers):
                options.append(Option(p, 1.0 - p.n / p.m))
        elif p.elementwise:
            options += [Option(p, r) for r in ratios]
    return options


def aligned_ratios(width: int, ratios: Sequence[float], multiple: int) -> list[float]:
    """``ratios`` moved to the nearest ones that keep a multiple of ``multiple`` channels (at least
    one multiple), where ``width`` itself is a multiple: the widths a device's kernels tile without
    padding. Other widths keep ``ratios``; a width of one multiple has nothing to remove."""
    if multiple <= 1 or width % multiple:
        return list(ratios)
    least = width * (1.0 - max(ratios, default=0.0)) - 1e-9  # never past the largest ratio asked for
    kept = {max(multiple, round(width * (1.0 - r) / multiple) * multiple) for r in ratios}
    kept = {k if k >= least else k + multiple for k in kept}
    return [1.0 - k / width for k in sorted(kept, reverse=True) if k < width]


def _structured_options(group: Group, ratios: Sequence[float], max_ratio: float, multiple: int = 1) -> list[Option]:
    """Channel ratio levels (kept counts aligned to ``multiple``), or for heads every whole number of
    heads up to ``max_ratio``."""
    if group.kind == "head":
        ratios = [(group.width - h) / group.width for h in range(group.width - 1, 0, -1)]
        ratios = [r for r in ratios if r <= max_ratio + 1e-9]
    else:
        ratios = aligned_ratios(group.width, ratios, multiple)
    seen, options = set(), []
    for r in ratios:
        keep = kept_fraction(group.width, r)
        if keep < 1.0 and keep not in seen:
            seen.add(keep)
            options.append(Option(Pattern(group.kind), r, keep))
    return options


def _bounded(options: Iterable[Option], layers: Sequence[Layer], bounds: Mapping[str, tuple[float, float]]) -> list[Option]:
    limits = [bounds[k] for l in layers for k in (l.name, l.module) if k in bounds]
    low = max((lo for lo, _ in limits), default=0.0)
    high = min((hi for _, hi in limits), default=1.0)
    return [o for o in options if low - 1e-9 <= o.sparsity <= high + 1e-9]


def build_units(graph: LayerGraph, coupling: Coupling, patterns: Sequence[Pattern], *, levels: int, max_ratio: float,
                excluded: Iterable[str], bounds: Mapping[str, tuple[float, float]], channel_multiple: int = 1) -> list[Unit]:
    """Units and their options: a prunable group takes a structured ratio (kept channels a multiple
    of ``channel_multiple``) or one element-wise option for all its members; other layers take
    element-wise options alone."""
    ratios = _levels(max_ratio, levels)
    kinds = {p.kind for p in patterns}
    elementwise = [p for p in patterns if p.elementwise]
    excluded = set(excluded)
    units, covered = [], set()
    for group in coupling.prunable():
        members = [graph.layer(m) for m in group.members]
        options = _structured_options(group, ratios, max_ratio, channel_multiple) if group.kind in kinds else []
        if elementwise and all(m.kind == "module" for m in members):
            options += _elementwise_options(members, elementwise, ratios)
        if options:
            options = _bounded([Option(None), *options], members, bounds)
            if options:
                units.append(Unit(group.name, group, group.members, tuple(options)))
                covered |= set(group.members)
    if elementwise:
        for layer in graph.layers:
            if (layer.name in covered or layer.name in excluded or layer.module in excluded
                    or not layer.has_weights or layer.kind != "module" or not layer.attrs):
                continue
            options = _bounded([Option(None), *_elementwise_options([layer], elementwise, ratios)], [layer], bounds)
            if len(options) > 1:
                units.append(Unit(layer.module or layer.name, None, (layer.name,), tuple(options)))
    return units


# ---- the problem --------------------------------------------------------------------------------

class _Tables:
    """Latency of each layer for each (input width, own option), from the shared roofline."""

    def __init__(self, graph: LayerGraph, profile: HardwareProfile, dtype: str | None) -> None:
        # the dense model's context: whether weights fit on chip is not a per-layer term
        self.profile = profile
        self.ctx = context(graph, profile, apply_plan(graph, None), dtype)

    def latency(self, layer: Layer, in_keep: float, option: Option | None, heads: int | None) -> float:
        lp = option.layer_plan() if option is not None else None
        eff = layer_effective(layer, in_keep, lp, heads)
        return layer_latency(layer, eff, self.profile, self.ctx.precision, byte_scale=self.ctx.byte_scale,
                             weights_cached=self.ctx.weights_cached).latency_s


def build_problem(graph: LayerGraph, coupling: Coupling, units: Sequence[Unit], tables: _Tables,
                  importance: Importance) -> Problem:
    """Importance and latency of every option: each layer's latency is a term of the unit that
    sets its input width and the unit that sets its own shape."""
    owner = {layer: i for i, u in enumerate(units) for layer in u.layers}
    width_unit = {u.group.name: i for i, u in enumerate(units) if u.group is not None and u.structured}
    cost = [np.array([_removed(importance, graph, u, o) for o in u.options]) for u in units]
    unary = [np.zeros(len(u.options)) for u in units]
    pairs: dict[tuple[int, int], list] = {}
    constant = 0.0
    for layer in graph.layers:
        own = owner.get(layer.name)
        group = coupling.input_group.get(layer.name)
        inn = width_unit.get(group) if group is not None else None
        own_opts = units[own].options if own is not None else (None,)
        heads = units[own].group.width if own is not None and units[own].group is not None \
            and units[own].group.kind == "head" else None
        if inn is None:
            values = np.array([tables.latency(layer, 1.0, o, heads) for o in own_opts])
            if own is None:
                constant += float(values[0])
            else:
                unary[own] += values
            continue
        keeps = sorted({o.keep for o in units[inn].options}, reverse=True)
        classes = np.array([keeps.index(o.keep) for o in units[inn].options])
        by_keep = np.array([[tables.latency(layer, keep, o, heads) for o in own_opts] for keep in keeps])
        if own is None:
            unary[inn] += by_keep[classes, 0]
        elif own == inn:
            unary[inn] += by_keep[classes, np.arange(len(classes))]
        elif (inn, own) in pairs:
            pairs[(inn, own)][1] = pairs[(inn, own)][1] + by_keep
        else:
            pairs[(inn, own)] = [classes, by_keep]
    return Problem(cost, unary, [Pair(a, b, c, t) for (a, b), (c, t) in pairs.items()], constant)


def _removed(importance: Importance, graph: LayerGraph, unit: Unit, option: Option) -> float:
    if option.pattern is None:
        return 0.0
    if option.pattern.kind in STRUCTURED:
        kept = round(option.keep * unit.group.width)
        return importance.removed_structured(unit.group, kept)
    return sum(importance.removed_elementwise(m, option.pattern, option.sparsity) for m in unit.layers)


def plan_from_choice(graph: LayerGraph, units: Sequence[Unit], choice: Sequence[int], **meta: object) -> Plan:
    """The plan file for one option per unit (dense units are left out)."""
    layers: dict[str, LayerPlan] = {}
    for unit, k in zip(units, choice):
        option = unit.options[k]
        if option.pattern is None:
            continue
        if option.pattern.kind == "head":
            layers[unit.group.name] = option.layer_plan()
        else:
            for member in unit.layers:
                layers[graph.layer(member).module or member] = option.layer_plan()
    return Plan(layers=layers, **meta)  # type: ignore[arg-type]


# ---- the planner --------------------------------------------------------------------------------

def make_plan(graph: LayerGraph, profile: HardwareProfile, budget: Budget | str, *, patterns: str = "auto",
              dtype: str | None = None, levels: int = 20, max_ratio: float = 0.9, exclude: Iterable[str] = (),
              keep_ends_dense: bool = True, bounds: Mapping[str, tuple[float, float]] | None = None,
              importance: Importance | None = None, time_limit: float = 10.0) -> PlanResult:
    """Solve for per-layer sparsity meeting ``budget`` on ``profile``. Raises CostplanError when
    the input is bad or the budget cannot be met (saying the lowest latency that can)."""
    budget = parse_budget(budget) if isinstance(budget, str) else budget
    if not 2 <= levels <= 200:
        raise CostplanError(f"--levels must be between 2 and 200, got {levels}")
    if not 0 < max_ratio < 1:
        raise CostplanError(f"--max-ratio must be in (0, 1), got {max_ratio}")
    bounds = dict(bounds or {})
    unknown = [k for k in [*exclude, *bounds] if k not in graph.module_names and k not in graph.graph]
    if unknown:
        raise CostplanError(f"no layer named {', '.join(unknown)} in {graph.model}")
    tables = _Tables(graph, profile, dtype)
    precision = tables.ctx.precision
    excluded = [*exclude, *(default_fixed(graph) if keep_ends_dense else [])]
    coupling = find_groups(graph, excluded)
    pattern_list = candidate_patterns(patterns, profile, precision, coupling)
    units = build_units(graph, coupling, pattern_list, levels=levels, max_ratio=max_ratio, excluded=excluded,
                        bounds=bounds, channel_multiple=profile.channel_multiple)
    importance = importance or Importance(graph)
    problem = build_problem(graph, coupling, units, tables, importance)
    dense = estimate(graph, profile, apply_plan(graph, None), dtype)
    dense_s = dense.latency_s
    target = budget.seconds(dense_s)
    try:
        solution = solve(problem, target, time_limit=time_limit)
    except Infeasible:
        raise CostplanError(_unreachable(graph, profile, precision, problem, units, budget, target,
                                         dense_s, pattern_list, dtype)) from None
    choice = solution.choice
    meta = dict(model=graph.model, hardware=profile.name,
                budget={"latency_ms": round(target * 1e3, 6), **({"speedup": budget.value} if budget.kind == "speedup" else {})})
    plan = plan_from_choice(graph, units, choice, **meta)
    return _finish(graph, profile, precision, plan, solution, units, dense, dtype, importance, pattern_list)


def _finish(graph: LayerGraph, profile: HardwareProfile, precision: str, plan: Plan, solution: Solution,
            units: Sequence[Unit], dense: Estimate, dtype: str | None, importance: Importance,
            patterns: Sequence[Pattern]) -> PlanResult:
    effective = apply_plan(graph, plan)
    est = estimate(graph, profile, effective, dtype)
    dense_s = dense.latency_s
    macs, params = effective_totals(graph, effective)
    scored = sum(len(u.layers) for u in units)
    predicted = {
        "latency_ms": est.latency_s * 1e3, "dense_latency_ms": dense_s * 1e3, "speedup": dense_s / est.latency_s,
        "macs": macs, "dense_macs": graph.total_macs, "params": params, "dense_params": graph.total_params,
        "precision": precision, "importance_removed": solution.removed,
        "importance_kept": 1.0 - solution.removed / scored if scored else 1.0,
    }
    extra = {"solver": {"method": solution.method, "gap": solution.gap,
                        "seconds": round(solution.seconds, 3), "units": len(units),
                        "options": sum(len(u.options) for u in units), "status": solution.status},
             "importance": importance.kind, "patterns": [str(p) for p in patterns]}
    plan = Plan(layers=plan.layers, model=plan.model, hardware=plan.hardware, budget=plan.budget,
                predicted=predicted, extra=extra)
    rows = []
    for key, lp in plan.layers.items():
        names = [l.name for l in graph.layers_of_module(key)]
        after = [est.layers[n] for n in names]
        rows.append({"layer": key, "pattern": str(lp.pattern), "sparsity": lp.sparsity,
                     "before_ms": sum(dense.layers[n].latency_s for n in names) * 1e3,
                     "after_ms": sum(a.latency_s for a in after) * 1e3,
                     "bound": max(after, key=lambda a: a.latency_s).bound if after else "-"})
    return PlanResult(plan, graph, profile, precision, dense_s, est.latency_s, solution, tuple(units), tuple(rows))


def _unreachable(graph: LayerGraph, profile: HardwareProfile, precision: str, problem: Problem,
                 units: Sequence[Unit], budget: Budget, target: float, dense_s: float,
                 patterns: Sequence[Pattern], dtype: str | None) -> str:
    fastest = solve(problem, None, minimise="latency")
    plan = plan_from_choice(graph, units, fastest.choice)
    est = estimate(graph, profile, apply_plan(graph, plan), dtype)
    by_bound: dict[str, float] = {}
    for lat in est.layers.values():
        by_bound[lat.bound] = by_bound.get(lat.bound, 0.0) + lat.latency_s
    top = max(by_bound, key=by_bound.get)
    fixed = sum(est.layers[l.name].latency_s for l in graph.layers if not any(l.name in u.layers for u in units)
                and l.has_weights)
    return (f"the budget {budget} ({target * 1e3:.3f} ms) cannot be met on {profile.name} at {precision}: the "
            f"lowest latency reachable with {', '.join(map(str, patterns))} pruning (up to the maximum ratio) is "
            f"{est.latency_s * 1e3:.3f} ms (dense {dense_s * 1e3:.3f} ms); at that point {by_bound[top] / est.latency_s:.0%} "
            f"of the time is {top}-bound and layers kept dense take {fixed * 1e3:.3f} ms. Raise the budget, allow "
            "more patterns (--pattern auto) or a higher --max-ratio")
