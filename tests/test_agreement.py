"""One plan, one answer, on a zoo of model families: for solver plans and random hand plans, either the
plan is refused (by analysis and by the pruner alike, before a weight is touched, naming a layer and
why), or the compacted model's MACs (FlopCounterMode / 2 on a real forward) and parameter count equal
``analyze --plan``'s ``effective_macs`` and ``nonzero_params``, and its outputs equal the masked model's.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import costplan
from costplan.api import importance_for
from costplan.errors import CostplanError
from costplan.planfile import Plan
from costplan.pruning.pruner import Pruner
from costplan.trace.groups import structure_of
from tests.conftest import calibrated_cpu
from tests.zoo import ZOO, budgets, copy_of, prune_and_compact, trace, traced

PATTERNS = ["channel", "head", "unstructured", "2:4", "4x1"]


def check(name: str, plan: Plan, priced: bool = False) -> str:
    """'refused' or 'agreed'; fails the test on any disagreement. ``priced``: the compacted model's
    latency is the plan's too, on a calibrated CPU and a GPU."""
    model, inputs, graph = traced(name)
    model = copy_of(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        report = costplan.analyze(graph, plan=plan)
    except CostplanError as exc:
        with pytest.raises(CostplanError) as again:
            Pruner(model, plan, graph=graph)
        assert str(again.value) == str(exc)                       # the same verdict, the same words
        assert any(f"'{key}'" in str(exc) or key in str(exc) for key in plan.layers), str(exc)
        after = model.state_dict()
        assert all(torch.equal(v, after[k]) for k, v in before.items())
        return "refused"
    done = prune_and_compact(name, plan, model)
    macs, predicted = done.macs, report.totals["effective_macs"]
    if done.elements:   # zeros inside a weight: per-layer MACs times density, rounded per layer
        assert abs(macs - predicted) <= 1e-6 * predicted + len(done.elements), (macs, predicted)
    else:
        assert macs == predicted, (macs, predicted)
    assert done.params == report.totals["nonzero_params"], (done.params, report.totals["nonzero_params"])
    assert torch.allclose(done.compacted, done.masked, atol=1e-4, rtol=1e-3), (done.compacted - done.masked).abs().max()
    if priced:   # within 0.1%: a linear layer a plan prunes off a multiple is priced padded, the same width
        # built is not (roofline.gemm_dims), up to 0.05% of these models
        small = trace(done.model, inputs, name=name)
        for profile in (calibrated_cpu(), "rtx3090"):
            planned, compacted = costplan.estimate_latency(graph, profile, plan), costplan.estimate_latency(small, profile)
            assert planned.latency_s == pytest.approx(compacted.latency_s, rel=1e-3), (name, str(profile))
    return "agreed"


@pytest.mark.parametrize("name", list(ZOO))
def test_solver_plans_agree(name: str) -> None:
    """Plans the solver makes at two budgets are never refused, and the pruned model is the predicted one."""
    model, _, graph = traced(name)
    importance = importance_for(graph, model, "magnitude", None, None, {})
    for budget in budgets(name):
        result = costplan.plan(graph, budget=f"{budget}ms", hw="cpu-xeon", importance=importance, levels=8)
        # the budgets sit close above the floor, where the planner says so; no other warning
        assert result.plan.layers and all("of the lowest latency" in w for w in result.warnings)
        assert check(name, result.plan, priced=True) == "agreed"


def _candidates(name: str) -> tuple[list[str], list[str], list]:
    """Modules a hand plan may name: leaves with a weight (any pattern), other group members and
    attention modules (structured patterns); and the prunable groups (for whole-group entries)."""
    _, _, graph = traced(name)
    structure = structure_of(graph)
    leaves = sorted({l.module for l in graph.layers if l.weight_param and l.kind == "module"})
    others = sorted({m for g in structure.groups.values() for m in g.members} | set(graph.heads) - set(leaves))
    return leaves, others, structure.prunable()


@st.composite
def hand_plans(draw, name: str) -> Plan:  # noqa: ANN001
    leaves, others, groups = _candidates(name)
    layers: dict[str, dict] = {}
    for _ in range(draw(st.integers(1, 4))):
        sparsity = draw(st.floats(0.05, 0.9).map(lambda x: round(x, 2)))
        kind = draw(st.sampled_from(["group", "leaf", "other"] if others else ["group", "leaf"]))
        if kind == "group" and groups:
            group = draw(st.sampled_from(groups))
            keys = [group.name] if group.kind == "head" else list(group.members)
            layers.update({k: {"sparsity": sparsity, "pattern": group.kind} for k in keys})
        elif kind == "leaf" and leaves:
            layers[draw(st.sampled_from(leaves))] = {"sparsity": sparsity, "pattern": draw(st.sampled_from(PATTERNS))}
        elif others:
            layers[draw(st.sampled_from(others))] = {"sparsity": sparsity,
                                                     "pattern": draw(st.sampled_from(["channel", "head"]))}
    return Plan.from_dict({"layers": layers})


# the deep CNNs take 1-3 s an example: 5 in every run, 8 more in CI's slow step (hypothesis draws
# new ones each run: the suite's time goes to fresh examples, not to many of one run)
DEEP = ("densenet121", "mobilenet_v2", "efficientnet_b0")
SLOW_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large]


@pytest.mark.parametrize("name", [n for n in ZOO if n not in DEEP])
@settings(max_examples=25, deadline=None, suppress_health_check=SLOW_CHECKS)
@given(data=st.data())
def test_hand_plans_agree_or_are_refused(name: str, data) -> None:  # noqa: ANN001
    event(check(name, data.draw(hand_plans(name))))


@pytest.mark.parametrize("name", DEEP)
@settings(max_examples=5, deadline=None, suppress_health_check=SLOW_CHECKS)
@given(data=st.data())
def test_hand_plans_agree_on_the_deep_cnns(name: str, data) -> None:  # noqa: ANN001
    event(check(name, data.draw(hand_plans(name))))


@pytest.mark.slow
@pytest.mark.parametrize("name", DEEP)
@settings(max_examples=8, deadline=None, suppress_health_check=SLOW_CHECKS)   # 5 more in every run: new draws each time
@given(data=st.data())
def test_hand_plans_agree_on_the_deep_cnns_thoroughly(name: str, data) -> None:  # noqa: ANN001
    event(check(name, data.draw(hand_plans(name))))


def test_the_issue_cases_are_refused_or_agree() -> None:
    """The cases of issue 11: a partial ResNet plan is refused, naming the missing members; the LSTM,
    grouped-concat, encoder and GPT-2 plans prune to what analysis predicted."""
    partial = Plan.from_dict({"layers": {"layer1.0.conv2": {"sparsity": 0.5, "pattern": "channel"},
                                         "layer3.1.conv1": {"sparsity": 0.5, "pattern": "channel"}}})
    with pytest.raises(CostplanError, match=r"'layer1.0.conv2' shares its output channels with 'conv1', 'layer1.1.conv2'"):
        costplan.analyze(traced("resnet18")[2], plan=partial)
    assert check("resnet18", Plan.from_dict({"layers": {"layer3.1.conv1": {"sparsity": 0.5, "pattern": "channel"}}})) == "agreed"
    lstm = Plan.from_dict({"layers": {"c2": {"sparsity": 0.5, "pattern": "channel"}}})
    assert check("conv1d_lstm", lstm) == "agreed"
    effective = costplan.analyze(traced("conv1d_lstm")[2], plan=lstm).layers
    lstm_row = next(r for r in effective if r.name == "lstm")
    # only layer 0's input weights read c2's channels: 20 steps x 2 sequences x 160 gates x 24 inputs kept fewer
    assert lstm_row.macs - lstm_row.effective_macs == 20 * 2 * 160 * 24
    assert check("conv1d_lstm", Plan.from_dict({"layers": {"lstm": {"sparsity": 0.5, "pattern": "channel"}}})) == "agreed"
    assert check("grouped_concat", Plan.from_dict({"layers": {"plain": {"sparsity": 0.5, "pattern": "channel"}}})) == "agreed"
    assert check("transformer_encoder", Plan.from_dict({"layers": {"layers.0.linear1": {"sparsity": 0.5,
                                                                                        "pattern": "channel"}}})) == "agreed"
    assert check("hf:gpt2", Plan.from_dict({"layers": {"transformer.h.0.attn": {"sparsity": 0.5, "pattern": "head"},
                                                       "transformer.h.1.mlp.c_fc": {"sparsity": 0.25,
                                                                                    "pattern": "channel"}}})) == "agreed"
    with pytest.raises(CostplanError, match="grouped convolution"):
        costplan.analyze(traced("grouped_concat")[2], plan=Plan.from_dict({"layers": {"stem": {"sparsity": 0.5,
                                                                                               "pattern": "channel"}}}))
    with pytest.raises(CostplanError, match="heads of 'layers.0.self_attn' cannot be removed"):
        costplan.analyze(traced("transformer_encoder")[2],
                         plan=Plan.from_dict({"layers": {"layers.0.self_attn": {"sparsity": 0.5, "pattern": "head"}}}))
