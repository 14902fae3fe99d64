"""One plan, one answer: what ``analyze --plan`` predicts against the model ``prune`` writes, on the zoo.

    python benchmarks/agreement_zoo.py

For every model of ``tests/zoo.py`` (small configurations of the families costplan prunes), two
solver plans on cpu-xeon (budgets 30% and 70% of the way to a uniform 85% ratio) and one whole-group
hand plan (every prunable group at 50%): predicted effective MACs and non-zero parameters beside the
compacted model's MACs (FlopCounterMode / 2 on a real forward) and parameter count, and whether its
outputs equal the masked model's. ``tests/test_agreement.py`` asserts the same on random plans.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

import costplan  # noqa: E402
from costplan.api import importance_for  # noqa: E402
from costplan.planfile import Plan  # noqa: E402
from tests.zoo import ZOO, budgets, prune_and_compact, traced  # noqa: E402


def row(name: str, label: str, plan: Plan) -> str:
    report = costplan.analyze(traced(name)[2], plan=plan)
    done = prune_and_compact(name, plan)
    kinds = sorted({str(lp.pattern) for lp in plan.layers.values()})
    same = "yes" if torch.allclose(done.compacted, done.masked, atol=1e-4, rtol=1e-3) else "NO"
    t = report.totals
    agree = "exact" if (done.macs, done.params) == (t["effective_macs"], t["nonzero_params"]) else "DIFFER"
    return (f"{name:20s} {label:9s} {'+'.join(kinds):14s} {t['macs']:>13,} {t['effective_macs']:>13,} {done.macs:>13,} "
            f"{t['nonzero_params']:>11,} {done.params:>11,} {agree:>7s} {same:>8s}")


def main() -> None:
    print(f"{'model':20s} {'plan':9s} {'patterns':14s} {'dense MACs':>13s} {'predicted':>13s} {'pruned':>13s} "
          f"{'pred. params':>11s} {'params':>11s} {'agree':>7s} {'outputs':>8s}")
    for name in ZOO:
        model, _, graph = traced(name)
        importance = importance_for(graph, model, "magnitude", None, None, {})
        for label, budget in zip(("solver-30", "solver-70"), budgets(name)):
            result = costplan.plan(graph, budget=f"{budget}ms", hw="cpu-xeon", importance=importance, levels=8)
            print(row(name, label, result.plan), flush=True)
        layers = {}
        for kind in ("channel", "head"):
            layers.update(costplan.uniform_plan(graph, kind, 0.5, keep_ends_dense=False).layers)
        print(row(name, "groups-50", Plan(layers)), flush=True)


if __name__ == "__main__":
    main()
