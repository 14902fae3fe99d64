"""One criterion per name (costplan/scoring.py): the planner's importance and the pruner's masks rank
by the same definition, so the channels a plan's importance figure describes are the ones cut."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from costplan.api import importance_for, load_graph
from costplan.patterns import parse_pattern
from costplan.planfile import LayerPlan, Plan
from costplan.pruning.pruner import Pruner
from costplan.scoring import collect_scores
from costplan.trace.groups import structure_of, unit_scores


def _spiky_and_flat() -> nn.Module:
    """Rows 0-2 of the first layer: one large weight (high L2, low L1); rows 3-5: many small ones
    (low L2, high L1). L1 and L2 rank them in opposite orders."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        w = torch.zeros(6, 8)
        for k in range(3):
            w[k, k] = 3.0 + 0.01 * k
            w[3 + k] = 0.6 + 0.001 * k
        model[0].weight.copy_(w)
        model[0].bias.zero_()
    return model


@pytest.mark.parametrize(("criterion", "cut"), [("magnitude", {3, 4, 5}), ("l2", {3, 4, 5}), ("l1", {0, 1, 2})])
def test_plan_and_prune_remove_the_channels_the_plans_importance_scored(criterion: str, cut: set[int]) -> None:
    model = _spiky_and_flat()
    graph = load_graph(model, input="2x8")
    group = next(g for g in structure_of(graph).prunable() if "0" in {m.split(".")[0] for m in g.members})
    importance = importance_for(graph, model, criterion, None, None, {})
    planned = importance.removed_structured(group, group.width - 3)   # what the planner says 3 channels cost

    pruner = Pruner(model, Plan({"0": LayerPlan(0.5, parse_pattern("channel"))}), criterion=criterion, graph=graph)
    pruner.prune()
    removed = sorted(set(range(group.width)) - set(pruner.kept[group.name].tolist()))

    assert set(removed) == cut
    ranked = unit_scores(group, importance.raw)
    assert float(ranked[removed].sum()) == pytest.approx(planned, rel=1e-9)


def test_magnitude_is_the_squared_weight_and_l1_the_absolute() -> None:
    model = _spiky_and_flat()
    w = model[0].weight.detach()
    assert torch.equal(collect_scores(model, ["0.weight"], "magnitude")["0.weight"], w.pow(2))
    assert torch.equal(collect_scores(model, ["0.weight"], "l1")["0.weight"], w.abs())


def test_taylor_scores_are_the_criterion_the_pruner_accumulates() -> None:
    model = _spiky_and_flat()
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 0, 1])
    loss = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])   # noqa: E731
    scores = collect_scores(model, ["0.weight"], "taylor", [(x, y), (x, y)], loss)["0.weight"]
    assert model[0].weight.grad is None            # the module's own gradients are left as they were
    loss(model, (x, y)).backward()
    expected = 2 * (model[0].weight.detach() * model[0].weight.grad).abs()
    assert torch.allclose(scores, expected)


def test_the_cli_offers_every_weight_only_criterion_as_importance() -> None:
    from costplan.arguments import IMPORTANCE_CHOICES
    from costplan.scoring import CRITERIA

    weight_only = {name for name, kind in CRITERIA.items() if not kind().needs_grad}
    assert set(IMPORTANCE_CHOICES) == weight_only | {"gaussian"}
