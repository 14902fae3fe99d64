"""Does the planner beat the obvious? Importance kept at equal predicted latency.

    python benchmarks/bench_plan.py [--speedup 1.5] [--solvers]

For ResNet-50 and BERT-base (seq 128) on rtx3090, cpu-xeon and edge-npu, at a budget of the dense
latency / speedup, compare the share of (layer-normalised) importance kept by
  - costplan's plan (patterns the device exploits, exact solver),
  - one uniform channel ratio for every prunable group (the smallest that meets the budget, up to 0.9 as the planner),
  - global magnitude ranking (remove the channels with the smallest raw L2 norms model-wide until
    the budget is met), as Torch-Pruning's global pruning does.
All three are scored by the same importance and timed by the same roofline. Weights are random
(torchvision / HF initialisation), so the figures compare the methods, not trained models.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import costplan
from costplan.api import estimate_latency, importance_for, load_graph
from costplan.models import instantiate, resolve
from costplan.planfile import Plan
from costplan.planning.importance import Importance
from costplan.planning.units import default_fixed
from costplan.trace.groups import structure_of

warnings.filterwarnings("ignore")


def structured_plan(graph, groups, kept: dict[str, int]) -> Plan:
    layers = {}
    for g in groups:
        ratio = 1 - kept[g.name] / g.width
        if ratio <= 0:
            continue
        if g.kind == "head":
            layers[g.name] = {"sparsity": ratio, "pattern": "head"}
        else:
            for m in g.members:
                layers[m] = {"sparsity": ratio, "pattern": "channel"}
    return Plan.from_dict({"layers": layers})


def kept_share(importance: Importance, groups, kept: dict[str, int]) -> float:
    removed = sum(importance.removed_structured(g, kept[g.name]) for g in groups)
    return 1 - removed / sum(len(g.members) for g in groups)


def search(fits, lo: float = 0.0, hi: float = 0.9, steps: int = 18) -> float | None:
    """The smallest x in [lo, hi] with fits(x), by bisection (fits is monotone)."""
    if not fits(hi):
        return None
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def uniform(graph, hw, groups, importance, budget_s) -> float | None:
    def kept_at(r: float) -> dict[str, int]:
        return {g.name: max(1, round(g.width * (1 - r))) for g in groups}

    r = search(lambda r: estimate_latency(graph, hw, structured_plan(graph, groups, kept_at(r))).latency_s <= budget_s)
    return None if r is None else kept_share(importance, groups, kept_at(r))


def global_magnitude(graph, hw, groups, importance, module, budget_s) -> float | None:
    raw = []  # (L2 norm of the unit over its group's members' rows, group)
    for g in groups:
        per_unit = torch.zeros(g.width, dtype=torch.float64)
        for sl in g.slices:
            if sl.role == "out" and sl.tensor == "weight" or sl.role == "out" and sl.tensor.startswith("weight_"):
                w = module.get_parameter(sl.param).detach().double().pow(2)
                rows = w.movedim(sl.dim, 0).reshape(w.shape[sl.dim], -1).sum(1)
                units = torch.as_tensor(sl.units)
                per_unit.index_add_(0, units[units >= 0], rows[units >= 0])
        raw += [(float(v), g.name) for v in per_unit.sqrt()]
    raw.sort()

    def kept_at(fraction: float) -> dict[str, int]:
        removed: dict[str, int] = {}
        for _, name in raw[: int(fraction * len(raw))]:
            removed[name] = removed.get(name, 0) + 1
        return {g.name: max(1, g.width - removed.get(g.name, 0)) for g in groups}

    f = search(lambda f: estimate_latency(graph, hw, structured_plan(graph, groups, kept_at(f))).latency_s <= budget_s)
    return None if f is None else kept_share(importance, groups, kept_at(f))


def solver_times(spec: str = "resnet50", levels: int = 20) -> None:
    """The exact solvers side by side on the planner's own problem: the Pareto-front programme
    against scipy's MILP (HiGHS, 10 s limit), same problem, same budget."""
    from costplan.hardware import load_profile
    from costplan.planning.planner import _Tables, build_problem
    from costplan.planning.solver import solve
    from costplan.planning.units import build_units, candidate_patterns

    graph = load_graph(spec)
    importance = Importance(graph)
    print(f"\nsolver time, {spec}, {levels} ratio levels per group (seconds; removed = importance removed)")
    print(f"{'hardware':10s} {'budget':>8s} {'units':>5s} {'options':>7s} {'fronts s':>9s} {'milp s':>7s} "
          f"{'milp status':>12s} {'milp gap':>8s} {'removed (fronts / milp)':>24s}")
    for hw in ("rtx3090", "cpu-xeon", "edge-npu"):
        profile = load_profile(hw)
        structure = structure_of(graph)
        tables = _Tables(graph, structure, profile, None)
        excluded = default_fixed(graph)
        patterns = candidate_patterns("auto", profile, tables.ctx.precision, structure)
        units = build_units(graph, structure, patterns, levels=levels, max_ratio=0.9, excluded=excluded, bounds={},
                            channel_multiple=profile.channel_multiple)
        problem, _ = build_problem(graph, structure, units, tables, importance)
        dense = problem.latency([0] * len(units))
        fastest = solve(problem, None, minimise="latency").latency
        for speedup in (1.2, 1.4, 2.0):
            if dense / speedup < fastest:
                print(f"{hw:10s} {f'/{speedup}':>8s}  unreachable (fastest is /{dense / fastest:.2f})")
                continue
            f = solve(problem, dense / speedup, method="fronts")
            m = solve(problem, dense / speedup, method="milp")
            print(f"{hw:10s} {f'/{speedup}':>8s} {len(units):5d} {sum(len(u.options) for u in units):7d} "
                  f"{f.seconds:9.2f} {m.seconds:7.2f} {m.status.value:>12s} "
                  f"{'-' if m.gap is None else f'{m.gap:.2%}':>8s} "
                  f"{f'{f.removed:.4f} / {m.removed:.4f}':>24s}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speedup", type=float, default=1.3)
    parser.add_argument("--solvers", action="store_true", help="only time the exact solvers on ResNet-50")
    args = parser.parse_args()
    if args.solvers:
        solver_times()
        return
    print(f"budget: dense latency / {args.speedup}; importance kept (higher is better)\n")
    print(f"{'model':14s} {'hardware':10s} {'budget ms':>9s} {'costplan':>9s} {'uniform':>9s} {'global':>9s} "
          f"{'patterns':>24s} {'solver':>16s}")
    for spec in ("resnet50", "hf:bert-base"):
        graph = load_graph(spec)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)    # the weights importance_for builds
            module = instantiate(resolve(spec), "cpu").module
        importance = importance_for(graph, spec, "magnitude", None, None, {})
        fixed = set(default_fixed(graph))
        groups = [g for g in structure_of(graph).prunable() if not fixed & set(g.members)]
        for hw in ("rtx3090", "cpu-xeon", "edge-npu"):
            dense = estimate_latency(graph, hw).latency_s
            budget = dense / args.speedup
            start = time.perf_counter()
            try:
                result = costplan.plan(graph, budget=f"{budget * 1e3}ms", hw=hw, importance=importance)
                ours = f"{result.plan.predicted['importance_kept']:.1%}"
                patterns = ",".join(result.patterns)
                solver = f"{result.solver.status.value[:7]} {time.perf_counter() - start:.1f}s"
            except costplan.CostplanError:
                ours, patterns, solver = "unreach.", "", ""
            u = uniform(graph, hw, groups, importance, budget)
            g = global_magnitude(graph, hw, groups, importance, module, budget)
            fmt = lambda v: "unreach." if v is None else f"{v:.1%}"  # noqa: E731
            print(f"{spec:14s} {hw:10s} {budget * 1e3:9.3f} {ours:>9s} {fmt(u):>9s} {fmt(g):>9s} {patterns:>24s} "
                  f"{solver:>16s}", flush=True)
    solver_times()


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
