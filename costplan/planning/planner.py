"""Per-layer sparsity that meets a latency budget while removing the least importance.

The planner turns a layer graph into the solver's discrete problem: units (:mod:`costplan.planning.units`)
with options, each option's importance removed, and latency tables from the same roofline and the same
layer arithmetic (:func:`costplan.sparsity.layer_effective`) ``costplan analyze`` uses. A layer's latency
is a term of the (at most two) units whose choices change its shapes. The rare layer that depends on
more (a convolution reading a concatenation of three groups) is tabulated against its two largest
influences; the chosen plan is then re-estimated exactly and, if that misses the budget, re-solved
against a tighter one, so the prediction reported is ``analyze --plan``'s.
"""

from __future__ import annotations

import dataclasses
import functools

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from costplan.errors import BudgetOutOfReach, CostplanError
from costplan.hardware import Estimate, HardwareProfile, estimate
from costplan.hardware.roofline import context, latency_in, onednn_tiling
from costplan.planfile import LayerPlan, Plan, PlanInput
from costplan.patterns import Pattern
from costplan.planning.importance import Importance
from costplan.planning.problem import Infeasible, Pair, Problem, Solution, SolverStatus
from costplan.planning.solver import solve
from costplan.planning.units import (
    Option,
    Unit,
    build_units,
    candidate_patterns,
    default_fixed,
    plan_from_choice,
)
from costplan.sparsity import Effective, apply_plan, effective_totals, layer_effective, resolve
from costplan.trace.graph import Layer, LayerGraph
from costplan.trace.groups import Structure, structure_of


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
    m = re.fullmatch(r"\s*([+-]?[0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(ms|us|µs|s|x)\s*", str(text).lower())
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
class SolverInfo:
    """How the plan was solved."""

    method: str
    status: SolverStatus
    gap: float | None              # relative optimality gap: 0 when proven optimal, None when unknown
    seconds: float
    units: int
    options: int
    approximated: int = 0          # layers depending on more than two choices, tabulated on two

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["status"] = self.status.value
        d["seconds"] = round(self.seconds, 3)
        return d


@dataclass(frozen=True)
class PlanRow:
    """A module whose time the plan changes: its entry (pattern and share removed; none for a layer
    that only reads pruned channels) and its layers' latency before and after (milliseconds)."""

    layer: str
    pattern: str
    sparsity: float | None
    before_ms: float
    after_ms: float
    bound: str


@dataclass(frozen=True)
class PlanResult:
    """A solved plan with what the planner knew when it made it."""

    plan: Plan
    graph: LayerGraph
    profile: HardwareProfile
    precision: str
    dense_latency_s: float
    latency_s: float               # the plan's latency as analyze --plan predicts it
    solution: Solution
    solver: SolverInfo
    units: tuple[Unit, ...]
    rows: tuple[PlanRow, ...]
    importance: str                # what scored it: a criterion (magnitude, l1, taylor, ...), gaussian or sensitivity
    patterns: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    importance_from: str = ""      # whose weights the importance was read from


@dataclass(frozen=True)
class SweepPoint:
    """One budget of a sweep: its plan, or why none meets it."""

    fraction: float
    result: PlanResult | None
    unreachable: str | None = None


Pricing = Callable[[Mapping[str, Effective]], Estimate]   # effective layers -> the estimate at the plan's precision
Fastest = Callable[[], tuple[Sequence[int], Estimate]]   # the fastest choice the units allow, and its estimate


# ---- latency tables -----------------------------------------------------------------------------

class _Tables:
    """Latency of a layer when some groups keep fewer units, from the shared roofline."""

    def __init__(self, graph: LayerGraph, structure: Structure, profile: HardwareProfile, dtype: str | None,
                 weights_dtype: str | None = None, autocast: bool = False) -> None:
        # the dense model's context: whether weights fit on chip is not a per-layer term
        self.structure = structure
        self.profile = profile
        self.ctx = context(graph, profile, apply_plan(graph, None), dtype, weights_dtype, autocast)

    def latency(self, layer: Layer, keep: Mapping[str, int], elementwise: Mapping[str, LayerPlan] | None = None) -> float:
        eff = layer_effective(self.structure, layer, keep, elementwise)
        return latency_in(layer, eff, self.profile, self.ctx).latency_s


def _effects(unit: Unit, option: Option, layer: Layer, own: bool) -> tuple[dict[str, int], dict[str, LayerPlan]]:
    """What choosing ``option`` of ``unit`` changes for ``layer``: units kept per group, and (when the
    layer is the unit's own) its weight's element-wise entry."""
    keep = {unit.group.name: option.kept} if option.structured and unit.group is not None else {}
    param = layer.weight_param
    lp = option.layer_plan()
    ew = {param: lp} if own and param and lp is not None and lp.pattern.elementwise else {}
    return keep, ew


def build_problem(graph: LayerGraph, structure: Structure, units: Sequence[Unit], tables: _Tables,
                  importance: Importance) -> tuple[Problem, int]:
    """Importance and latency of every option; also how many layers were tabulated approximately."""
    own_of = {node: i for i, u in enumerate(units) for node in u.layers}
    by_group = {u.group.name: i for i, u in enumerate(units) if u.group is not None and u.structured}
    importance.prepare(units)
    cost = [np.array([importance.removed(u, o) for o in u.options]) for u in units]
    unary = [np.zeros(len(u.options)) for u in units]
    pairs: dict[tuple[int, int], list] = {}
    constant, approximated = 0.0, 0
    for layer in graph.layers:
        own = own_of.get(layer.name)
        others = sorted({by_group[g] for g in structure.node_groups(layer.name, layer.reads) if g in by_group} - {own},
                        key=lambda i: -units[i].group.width)
        involved = ([own] if own is not None else []) + others
        if len(involved) > 2:
            approximated += 1
        if not involved:
            constant += tables.latency(layer, {})
            continue
        if len(involved) == 1:
            u = involved[0]
            unary[u] += [tables.latency(layer, *_effects(units[u], o, layer, u == own)) for o in units[u].options]
            continue
        a, b = others[0], (own if own is not None else others[1])
        keeps = sorted({o.kept if o.structured else units[a].group.width for o in units[a].options}, reverse=True)
        classes = np.array([keeps.index(o.kept if o.structured else units[a].group.width) for o in units[a].options])
        table = np.zeros((len(keeps), len(units[b].options)))
        for c, kept in enumerate(keeps):
            for kb, ob in enumerate(units[b].options):
                keep, ew = _effects(units[b], ob, layer, b == own)
                table[c, kb] = tables.latency(layer, {units[a].group.name: kept, **keep}, ew)
        if (a, b) in pairs:
            pairs[(a, b)][1] = pairs[(a, b)][1] + table
        else:
            pairs[(a, b)] = [classes, table]
    return Problem(cost, unary, [Pair(a, b, c, t) for (a, b), (c, t) in pairs.items()], constant), approximated


# ---- the planner --------------------------------------------------------------------------------

def make_plans(graph: LayerGraph, profile: HardwareProfile, budgets: Sequence[Budget | str], *,
               patterns: str = "auto", dtype: str | None = None, levels: int = 20, max_ratio: float | None = None,
               exclude: Iterable[str] = (), keep_ends_dense: bool = True,
               bounds: Mapping[str, tuple[float, float]] | None = None, importance: Importance | None = None,
               time_limit: float = 10.0, weights_dtype: str | None = None,
               autocast: bool = False) -> list[PlanResult | CostplanError]:
    """A plan for each of ``budgets`` on ``profile`` at ``dtype`` (weights stored as ``weights_dtype``
    where given), or the CostplanError saying why that budget cannot be met. The problem (every
    option's importance and latency) is built once for all: on ResNet-50 it is most of a plan's time.
    Raises CostplanError when the input is bad."""
    budgets = [parse_budget(b) if isinstance(b, str) else b for b in budgets]
    if not 2 <= levels <= 200:
        raise CostplanError(f"--levels must be between 2 and 200, got {levels}")
    if max_ratio is not None and not 0 < max_ratio < 1:
        raise CostplanError(f"--max-ratio must be in (0, 1), got {max_ratio}")
    bounds = dict(bounds or {})
    unknown = [k for k in [*exclude, *bounds] if k not in graph.module_names and k not in graph.graph]
    if unknown:
        raise CostplanError(f"no layer named {', '.join(unknown)} in {graph.model}")
    structure = structure_of(graph)
    tables = _Tables(graph, structure, profile, dtype, weights_dtype, autocast)
    precision = tables.ctx.precision
    price = functools.partial(estimate, graph, profile, dtype=dtype, weights_dtype=weights_dtype, autocast=autocast)
    excluded = [*exclude, *(default_fixed(graph) if keep_ends_dense else [])]
    pattern_list = candidate_patterns(patterns, profile, precision, structure)
    units = build_units(graph, structure, pattern_list, levels=levels, max_ratio=max_ratio, excluded=excluded,
                        bounds=bounds, channel_multiple=profile.channel_multiple,
                        half_tile=onednn_tiling(profile))
    importance = importance or Importance(graph)
    problem, approximated = build_problem(graph, structure, units, tables, importance)
    dense = price(apply_plan(graph, None))

    # the fastest plan the units allow is one for every budget: found once, where a budget needs it
    fastest = functools.cache(lambda: _fastest(graph, problem, units, price))
    results: list[PlanResult | CostplanError] = []
    for budget in budgets:
        try:
            results.append(_solve_for(graph, profile, budget, problem, units, structure, precision, pattern_list,
                                      price, dense, importance, approximated, time_limit, fastest))
        except CostplanError as exc:
            results.append(exc)
    return results


def _solve_for(graph: LayerGraph, profile: HardwareProfile, budget: Budget, problem: Problem,
               units: Sequence[Unit], structure: Structure, precision: str, pattern_list: Sequence[Pattern],
               price: Pricing, dense: Estimate, importance: Importance, approximated: int,
               time_limit: float, fastest: Fastest) -> PlanResult:
    """The plan meeting ``budget`` on the built ``problem``; raises CostplanError where none can."""
    target = budget.seconds(dense.latency_s)
    meta = dict(model=graph.model, hardware=profile.name,
                budget={"latency_ms": round(target * 1e3, 6), **({"speedup": budget.value} if budget.kind == "speedup" else {})},
                input=PlanInput(tuple(tuple(s) for s in graph.inputs.shapes), graph.inputs.dtype))
    goal, warnings = target, list(dense.warnings)   # a precision the device lacks, said once
    for _ in range(4):   # the tables approximate layers of 3+ choices: re-solve until the exact estimate fits
        try:
            solution = solve(problem, goal, time_limit=time_limit)
        except Infeasible:
            usable = candidate_patterns("auto", profile, precision, structure)
            raise _unreachable(graph, profile, precision, units, budget, target, dense.latency_s, pattern_list,
                               fastest, usable) from None
        plan = plan_from_choice(graph, units, solution.choice, **meta)
        exact = price(apply_plan(graph, plan)).latency_s
        if exact <= target * (1 + 1e-9):
            break
        goal -= (exact - target) * 1.05
    else:
        warnings.append(f"the plan is predicted at {exact * 1e3:.4f} ms, {exact / target - 1:.2%} over the budget: "
                        f"{approximated} layer(s) depend on more than two choices and the solver's tables "
                        "approximate them")
    near = _near_floor(units, solution.choice, target, fastest, pattern_list)
    if near:
        warnings.append(near)
    info = SolverInfo(solution.method, solution.status, solution.gap, solution.seconds, len(units),
                      sum(len(u.options) for u in units), approximated)
    return _finish(graph, profile, precision, plan, solution, info, units, dense, price, importance, pattern_list,
                   tuple(warnings))


def _finish(graph: LayerGraph, profile: HardwareProfile, precision: str, plan: Plan, solution: Solution,
            info: SolverInfo, units: Sequence[Unit], dense: Estimate, price: Pricing, importance: Importance,
            patterns: Sequence[Pattern], warnings: tuple[str, ...]) -> PlanResult:
    effective = apply_plan(graph, resolve(graph, plan))
    est = price(effective)
    dense_s = dense.latency_s
    macs, params = effective_totals(graph, effective)
    scored = sum(len(u.layers) for u in units)
    predicted = {
        "latency_ms": est.latency_s * 1e3, "dense_latency_ms": dense_s * 1e3, "speedup": dense_s / est.latency_s,
        "macs": macs, "dense_macs": graph.total_macs, "params": params, "dense_params": graph.total_params,
        "precision": precision, "runtime": profile.runtime, "importance_removed": solution.removed,
        # a share of normalised scores; a sensitivity scan's sum of loss increases has no whole to share
        "importance_kept": None if importance.kind == "sensitivity" else 1.0 - solution.removed / scored if scored else 1.0,
    }
    extra = {**plan.extra, "solver": info.to_dict(), "importance": importance.kind,
             "importance_from": importance.origin, "patterns": [str(p) for p in patterns]}
    plan = dataclasses.replace(plan, predicted=predicted, extra=extra)
    rows = _rows(graph, plan, dense, est)
    return PlanResult(plan, graph, profile, precision, dense_s, est.latency_s, solution, info, tuple(units),
                      tuple(rows), importance.kind, tuple(str(p) for p in patterns), warnings, importance.origin)


def _rows(graph: LayerGraph, plan: Plan, dense: Estimate, est: Estimate) -> tuple[PlanRow, ...]:
    """Every module whose predicted time the plan changes, in model order: the pruned ones with their
    entry, and the layers that read pruned channels (their inputs shrink) with none."""
    by_module: dict[str, list[str]] = {}
    for layer in graph.layers:
        if abs(est.layers[layer.name].latency_s - dense.layers[layer.name].latency_s) > 1e-12 or \
                (layer.module or layer.name) in plan.layers:
            by_module.setdefault(layer.module or layer.name, []).append(layer.name)
    for key in plan.layers:             # a head entry names the attention module, not a layer
        if key not in by_module:
            by_module[key] = [l.name for l in graph.layers_of_module(key)]
    rows = []
    for key, names in by_module.items():
        entry = plan.layers.get(key)
        after = [est.layers[n] for n in names]
        rows.append(PlanRow(key, str(entry.pattern) if entry else "-", entry.sparsity if entry else None,
                            sum(dense.layers[n].latency_s for n in names) * 1e3, sum(a.latency_s for a in after) * 1e3,
                            max(after, key=lambda a: a.latency_s).bound if after else "-"))
    return tuple(rows)


def _fastest(graph: LayerGraph, problem: Problem, units: Sequence[Unit],
             price: Pricing) -> tuple[Sequence[int], Estimate]:
    """The fastest choice the units allow (every group as far as allowed) and its exact estimate."""
    choice = solve(problem, None, minimise="latency").choice
    return choice, price(apply_plan(graph, plan_from_choice(graph, units, choice)))


# a budget this close above the fastest plan leaves the solver almost no choice
NEAR_FLOOR = 0.05


def _near_floor(units: Sequence[Unit], choice: Sequence[int], target: float, fastest: Fastest,
                patterns: Sequence[Pattern]) -> str | None:
    """A warning where ``target`` (seconds) lies within :data:`NEAR_FLOOR` above the lowest latency the
    patterns reach and the plan (``choice``) prunes at least half the groups as the fastest plan
    does, whatever their importance (on a 1-D ResNet, sensitivity, magnitude and Taylor importance
    gave one plan 2% above the floor, and 13 points less accuracy after fine-tuning than a uniform
    ratio at the same measured latency)."""
    if not units:
        return None
    quickest, est = fastest()
    floor = est.latency_s
    same = sum(a == b for a, b in zip(choice, quickest))
    if target >= floor * (1 + NEAR_FLOOR) or same * 2 < len(units):   # close, but importance still chooses
        return None
    return (f"the budget ({target * 1e3:.3f} ms) is within {max(target / floor - 1, 0):.1%} of the lowest latency "
            f"{', '.join(map(str, patterns))} pruning reaches ({floor * 1e3:.3f} ms): {same} of {len(units)} groups "
            "are pruned as in that fastest plan, whatever their importance, so expect more accuracy lost than a "
            "looser budget costs; and a small error of the latency model puts such a budget out of reach: "
            "check the speedup with `costplan measure A B`")


def _unreachable(graph: LayerGraph, profile: HardwareProfile, precision: str, units: Sequence[Unit],
                 budget: Budget, target: float, dense_s: float, patterns: Sequence[Pattern], fastest: Fastest,
                 usable: Sequence[Pattern]) -> BudgetOutOfReach:
    """Why the budget cannot be met, with only the levers that would help in this case."""
    quickest, est = fastest()
    by_bound: dict[str, float] = {}
    for lat in est.layers.values():
        by_bound[lat.bound] = by_bound.get(lat.bound, 0.0) + lat.latency_s
    top = max(by_bound, key=by_bound.get)
    dense_layers = [l.name for l in graph.layers if not any(l.name in u.layers for u in units) and l.has_weights]
    fixed = sum(est.layers[n].latency_s for n in dense_layers)
    message = (f"the budget {budget} ({target * 1e3:.3f} ms) cannot be met on {profile.name} "
               f"at {precision} ({profile.runtime} runtime): the "
               f"lowest latency reachable with {', '.join(map(str, patterns))} pruning (up to the maximum ratio) is "
               f"{est.latency_s * 1e3:.3f} ms (dense {dense_s * 1e3:.3f} ms); at that point "
               f"{by_bound[top] / est.latency_s:.0%} of the time is in {top}-bound layers, and the layers kept dense "
               f"take {fixed * 1e3:.3f} ms. " + _levers(profile, est, units, quickest, patterns, usable, dense_layers))
    return BudgetOutOfReach(message, est.latency_s, dense_s)


def _levers(profile: HardwareProfile, est: Estimate, units: Sequence[Unit], choice: Sequence[int],
            patterns: Sequence[Pattern], usable: Sequence[Pattern], dense_layers: Sequence[str]) -> str:
    """The changes that could reach a lower latency here, each named only where it would help: a higher
    cap where structured groups sit at it with time pruning can shrink (N:M is fixed at its own
    share), patterns the device exploits that were left out, the layers kept dense, and, where per-op
    overhead dominates, a runtime with less of it."""
    def shrinkable(names: Sequence[str]) -> float:   # share of the time that pruning these layers can remove
        return sum(est.layers[n].latency_s - est.layers[n].fixed_s for n in names) / est.latency_s

    levers = ["raise the budget"]
    capped = [u for u, k in zip(units, choice) if u.options[k].structured
              and u.options[k].sparsity >= max(o.sparsity for o in u.options if o.structured) - 1e-9]
    if capped and shrinkable([n for u in capped for n in u.layers]) > 0.05:
        levers.append(f"allow a higher --max-ratio ({len(capped)} channel/head group(s) are at it)")
    missing = [str(p) for p in usable if p not in patterns]
    if missing:
        levers.append(f"add the patterns {profile.name} also exploits ({', '.join(missing)}; --pattern auto)")
    if shrinkable(dense_layers) > 0.1:
        levers.append(f"prune the layers kept dense ({shrinkable(dense_layers):.0%} of the time; --prune-ends, "
                      "fewer --exclude)")
    overhead = est.fixed_share
    if overhead > 0.3:
        lighter = [name for name, runtime in profile.runtimes.items() if runtime.per_op_s < profile.per_op_s]
        levers.append(f"{overhead:.0%} of the time is per-op overhead (dispatch, launch, a kernel's setup), which "
                      "pruning does not remove: "
                      + (f"a runtime with less of it (--runtime {', '.join(lighter)}) or " if lighter else "")
                      + "a larger batch")
    return levers[0][0].upper() + "; ".join(levers)[1:] + "."


__all__ = ["Budget", "PlanResult", "PlanRow", "SolverInfo", "SweepPoint", "build_problem", "make_plans", "parse_budget"]
