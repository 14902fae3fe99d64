"""Sensitivity importance: the scan measures what the pruner will remove, and the planner uses it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import costplan
from costplan.api import importance_for, load_graph
from costplan.errors import CostplanError
from costplan.planfile import Pattern
from costplan.planning.importance import scored_params
from costplan.scoring import collect_scores
from costplan.planning.sensitivity import Sensitivity
from costplan.planning.units import build_units, plan_from_choice
from costplan.pruning.loop import cross_entropy
from costplan.trace.groups import structure_of
from tests.conftest import SmallCNN

INPUT = "8x3x8x8"


@pytest.fixture(scope="module")
def setup():
    """SmallCNN with BatchNorm statistics and affine terms away from identity (a masked channel's BN
    shift then matters, as in a trained model) and 3 calibration batches."""
    torch.manual_seed(0)
    model = SmallCNN().eval()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    inputs = [torch.randn(8, 3, 8, 8) for _ in range(3)]
    with torch.no_grad():   # the model's own answers as labels: pruning can only make it worse
        batches = [(x, model(x).argmax(1)) for x in inputs]
    graph = load_graph(model, input=INPUT)
    structure = structure_of(graph)
    units = build_units(graph, structure, [Pattern("channel"), Pattern("unstructured")], levels=5, max_ratio=0.75,
                        excluded=(), bounds={})
    scores = collect_scores(model, scored_params(graph))
    before = {k: v.clone() for k, v in model.state_dict().items()}   # the model as given to the scan
    sens = Sensitivity(graph, model, batches, cross_entropy, scores, progress=False)
    return model, batches, graph, units, sens, before


def _loss(model: torch.nn.Module, batches) -> float:
    """The mean loss over ``batches`` after re-estimating the BatchNorm statistics on all of them at once
    (EagleEye's adaptive BatchNorm), on a copy."""
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        model(torch.cat([x for x, _ in batches]))
        model.eval()
        return sum(float(cross_entropy(model, b)) for b in batches) / len(batches)


def test_the_scan_measures_what_the_pruner_removes(setup) -> None:
    """For every option of every unit, the loss of the model the Pruner masks to that option alone (one
    shot, l2: the ranking magnitude and sensitivity use), its BatchNorm statistics re-estimated on the
    calibration batches, is the scan's base loss plus its measurement; the model scanned is left as it was."""
    model, batches, graph, units, sens, before = setup
    assert sens.base == pytest.approx(_loss(model, batches), rel=1e-5)
    with torch.no_grad():   # on the dense statistics the base differs: the re-estimate is what is measured
        assert sens.base != pytest.approx(sum(float(cross_entropy(model, b)) for b in batches) / 3, rel=1e-3)
    checked = 0
    for unit in units:
        for k, option in enumerate(unit.options):
            if option.pattern is None:
                continue
            choice = [k if u is unit else 0 for u in units]
            pruned = copy.deepcopy(model)
            pruner = costplan.Pruner(pruned, plan_from_choice(graph, units, choice), criterion="l2", graph=graph)
            pruner.prune()
            increase = _loss(pruned.eval(), batches) - sens.base
            assert sens._measure(unit, option) == pytest.approx(max(0.0, increase), abs=1e-5), (unit.name, option)
            checked += 1
    assert checked >= 10 and any(u.structured for u in units)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_curves_are_zero_when_dense_convex_and_never_below_the_scan(setup) -> None:
    model, _, _, units, sens, _ = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sens.prepare(units)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # masks undone
    rising = 0
    for unit in units:
        values = {o: sens.removed(unit, o) for o in unit.options}
        assert values[unit.options[0]] == 0.0
        for kind in ("channel", "unstructured"):
            options = [o for o in sorted(unit.options, key=lambda o: o.sparsity)
                       if o.pattern is not None and o.pattern.kind == kind]
            curve = [values[o] for o in options]
            assert all(v >= sens._measure(unit, o) - 1e-9 for v, o in zip(curve, options))   # never below the scan
            x, y = np.array([0.0] + [o.sparsity for o in options]), np.array([0.0, *curve])
            slopes = np.diff(y) / np.diff(x)
            assert np.all(np.diff(slopes) >= -1e-9), (unit.name, kind, curve)   # convex: no step cheaper
            rising += len(set(curve)) > 1
    assert rising >= 2   # the scan saw something: not all zeros


def test_sensitivity_is_the_default_with_data_and_needs_data() -> None:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    graph = load_graph(model, input=INPUT)
    batches = [(torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,)))]
    assert isinstance(importance_for(graph, model, None, batches, None, {}), Sensitivity)
    without = importance_for(graph, model, None, None, None, {})
    assert without.kind == "magnitude" and without.origin.startswith("magnitude")
    with pytest.raises(CostplanError, match="needs data"):
        importance_for(graph, model, "sensitivity", None, None, {})


def test_a_sensitivity_plan_avoids_the_group_whose_loss_it_measured() -> None:
    """Two parallel branches of equal cost: one feeds the classifier, the other (twice the weights) is
    scaled to nearly nothing. Magnitude would prune the first; the scan sees that only it matters, and
    the plan prunes the other."""

    class TwoBranches(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a1, self.a2 = torch.nn.Conv2d(3, 128, 3, padding=1), torch.nn.Conv2d(128, 8, 1)
            self.b1, self.b2 = torch.nn.Conv2d(3, 128, 3, padding=1), torch.nn.Conv2d(128, 8, 1)
            self.stem, self.fc = torch.nn.Conv2d(3, 3, 1), torch.nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            a = self.a2(torch.relu(self.a1(x))).mean((2, 3))
            b = self.b2(torch.relu(self.b1(x))).mean((2, 3)) * 1e-3
            return self.fc(torch.cat([a, b], 1))

    torch.manual_seed(0)
    model = TwoBranches().eval()
    with torch.no_grad():
        model.b1.weight.copy_(2 * model.a1.weight)
        model.b2.weight.copy_(2 * model.a2.weight)
    x = torch.randn(64, 3, 16, 16)
    data = [(x, model(x).argmax(1))]
    result = costplan.plan(model, input="64x3x16x16", budget="1.3x", hw="cpu-xeon", patterns="channel", data=data)
    ratio = {name: entry.sparsity for name, entry in result.plan.layers.items()}
    assert ratio.get("b1", 0.0) >= ratio.get("a1", 0.0) + 0.5   # magnitude: 0.625 and 0.5
    assert result.importance == "sensitivity" and result.importance_from.startswith("sensitivity")


def test_the_scan_takes_batches_up_to_its_sample_count_in_passes_it_can_hold() -> None:
    """12 batches of 100: the scan takes 11 (1,100 samples, the first count past 1,024), runs them in 6
    passes of at most 256 samples, and its base loss is the loss over all 11, not the first 4 (the old
    cap); 20 batches of 8 stop at 16 batches."""
    torch.manual_seed(0)
    model = SmallCNN().eval()
    graph = load_graph(model, input=INPUT)
    scores = collect_scores(model, scored_params(graph))
    with torch.no_grad():
        # the model's own answers for the first 4 and random labels after, so that which batches are taken
        # shows in the loss (inputs alike, so that the BatchNorm statistics of a pass are those of all)
        batches = [(x, model(x).argmax(1) if i < 4 else torch.randint(0, 10, (100,)))
                   for i, x in enumerate(torch.randn(100, 3, 8, 8) for _ in range(12))]
    sens = Sensitivity(graph, model, batches, cross_entropy, scores, progress=False)
    assert len(sens.batches) == 11 and [n for _, n in sens._stacks] == [2, 2, 2, 2, 2, 1]
    assert sens.base == pytest.approx(_loss(model, batches[:11]), rel=1e-3)
    assert sens.base != pytest.approx(_loss(model, batches[:4]), rel=1e-3)
    small = [(torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))) for _ in range(20)]
    assert len(Sensitivity(graph, model, small, cross_entropy, scores, progress=False).batches) == 16


def test_the_batchnorm_re_estimate_weighs_each_pass_by_its_samples() -> None:
    """A batch of 300 images around +1 and one of 100 around -1 run as two passes: the re-estimated
    BatchNorm mean is that of all 400 at once (a per-pass average would weigh the 100 as the 300)."""
    torch.manual_seed(0)
    model = SmallCNN().eval()
    graph = load_graph(model, input=INPUT)
    batches = [(torch.randn(n, 3, 8, 8) + shift, torch.randint(0, 10, (n,))) for n, shift in ((300, 1.0), (100, -1.0))]
    sens = Sensitivity(graph, model, batches, cross_entropy, collect_scores(model, scored_params(graph)),
                       progress=False)
    assert len(sens._stacks) == 2
    whole = copy.deepcopy(model)
    for bn in (whole.bn1, whole.bn2):
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    with torch.no_grad():
        whole(torch.cat([x for x, _ in batches]))
        sens._adapt_norms()
    # the first BatchNorm's: what the second sees depends on the first's statistics of each pass
    assert torch.allclose(model.bn1.running_mean, whole.bn1.running_mean, rtol=1e-4, atol=1e-5)
