"""Effective MACs and non-zero parameters under a plan (costplan/sparsity.py; the plan contract of
shared/DESIGN.md)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costplan.api import analyze, load_graph
from costplan.errors import CostplanError
from costplan.planfile import Plan, load_plan, parse_pattern, save_plan
from costplan.sparsity import apply_plan, effective_totals
from tests.conftest import SmallCNN, TwoConvs, applied, graph_of, whole_groups


def plan(**layers: tuple[float, str]) -> Plan:
    return Plan.from_dict({"layers": {k.replace("__", "."): {"sparsity": s, "pattern": p}
                                      for k, (s, p) in layers.items()}})


def test_half_of_each_table_layer_saves_equal_macs_unequal_params() -> None:
    """Issue 2: 50% of each saves 57.8M MACs either way, but 73,728 vs 294,912 params."""
    graph = load_graph(TwoConvs(), input="1x64x56x56")
    for name, saved_params in (("layer0", 73_728), ("layer1", 294_912)):
        report = analyze(graph, plan=plan(**{name: (0.5, "unstructured")}))
        assert report.totals["macs"] - report.totals["effective_macs"] == 57_802_752
        assert report.totals["params"] - report.totals["nonzero_params"] == saved_params


def test_channel_pruning_shrinks_consumers_by_hand() -> None:
    """conv1 keeps 8 of 16 filters: bn1 and conv2's input shrink with it; the rest stays."""
    graph = load_graph(SmallCNN(), input="1x3x8x8")
    eff = apply_plan(graph, plan(conv1=(0.5, "channel")))
    assert eff["conv1"].macs == 8 * 8 * 8 * 27
    assert eff["bn1"].params == 16
    assert eff["conv2"].macs == 8 * 8 * 32 * 8 * 9
    assert eff["conv2"].params == 32 * 8 * 9
    assert eff["dw"].macs == graph.layer("dw").macs
    assert eff["fc"].macs == graph.layer("fc").macs


def test_channel_pruning_through_depthwise_and_residual() -> None:
    """conv2's channels pass the depthwise conv and meet conv3's at the add: one group. Pruned together,
    the depthwise conv, conv3 (both sides) and fc's input shrink; naming conv2 alone is refused."""
    graph = load_graph(SmallCNN(), input="1x3x8x8")
    eff = apply_plan(graph, plan(conv2=(0.25, "channel"), conv3=(0.25, "channel")))
    assert eff["conv2"].macs == graph.layer("conv2").macs * 0.75
    assert eff["dw"].macs == graph.layer("dw").macs * 0.75
    assert eff["conv3"].macs == graph.layer("conv3").macs * 0.75 * 0.75
    assert eff["conv3"].out_keep == 0.75 and eff["conv3"].in_keep == 0.75
    assert eff["fc"].macs == graph.layer("fc").macs * 0.75
    with pytest.raises(CostplanError, match=r"'conv2' shares its output channels with 'conv3'"):
        apply_plan(graph, plan(conv2=(0.25, "channel")))
    with pytest.raises(CostplanError, match=r"different ratios"):
        apply_plan(graph, plan(conv2=(0.25, "channel"), conv3=(0.5, "channel")))
    with pytest.raises(CostplanError, match=r"channels of 'fc' cannot be removed: they reach the model's output"):
        apply_plan(graph, plan(fc=(0.5, "channel")))


def test_bert_heads_shrink_projections_and_attention(bert_graph) -> None:
    eff = apply_plan(bert_graph, plan(encoder__layer__0__attention__self=(0.5, "head")))
    prefix = "encoder.layer.0.attention."
    for name in ("self.query", "self.key", "self.value", "output.dense"):
        assert eff[prefix + name].macs == bert_graph.layer(prefix + name).macs / 2
    attn = [l for l in bert_graph.layers if l.name.startswith(prefix + "self.") and l.op == "attention"]
    assert len(attn) == 1 and all(eff[l.name].macs == l.macs / 2 for l in attn)
    assert eff["encoder.layer.0.intermediate.dense"].macs == bert_graph.layer("encoder.layer.0.intermediate.dense").macs


def test_zero_plan_changes_nothing(resnet50_graph) -> None:
    names = [l.module for l in resnet50_graph.layers if l.op == "conv2d"]
    report = analyze(resnet50_graph, plan=Plan.from_dict({"layers": {n: {"sparsity": 0.0, "pattern": "channel"} for n in names}}))
    assert report.totals["effective_macs"] == report.totals["macs"]
    assert report.totals["nonzero_params"] == report.totals["params"]


def test_unknown_layers_are_named(resnet50_graph) -> None:
    with pytest.raises(CostplanError, match="layer9.conv, nope") as err:
        apply_plan(resnet50_graph, plan(layer9__conv=(0.5, "unstructured"), nope=(0.1, "2:4")))
    assert "lacks" in str(err.value)


@pytest.mark.parametrize("bad", [
    {"layers": {"fc": {"sparsity": 1.0}}},
    {"layers": {"fc": {"sparsity": -0.1}}},
    {"layers": {"fc": {"sparsity": "half"}}},
    {"layers": {"fc": {"sparsity": 0.5, "pattern": "3:2"}}},
    {"layers": {"fc": {"sparsity": 0.5, "pattern": "diagonal"}}},
    {"layer": {}},
    [],
])
def test_malformed_plans_fail_clearly(bad: object) -> None:
    with pytest.raises(CostplanError):
        Plan.from_dict(bad)


def test_plan_round_trip_keeps_contract_keys(tmp_path) -> None:
    p = Plan.from_dict({"costplan": "plan/1", "model": "resnet50", "hardware": "rtx3090",
                        "budget": {"latency_ms": 2.0},
                        "layers": {"layer2.0.conv2": {"sparsity": 0.7, "pattern": "unstructured"},
                                   "fc": {"sparsity": 0.5, "pattern": "2:4"}},
                        "predicted": {"latency_ms": 1.93}, "solver": {"gap": 0.0}})
    save_plan(p, tmp_path / "plan.json")
    data = json.loads((tmp_path / "plan.json").read_text())
    assert data["layers"]["fc"] == {"sparsity": 0.5, "pattern": "2:4"}
    assert data["solver"] == {"gap": 0.0}
    assert load_plan(tmp_path / "plan.json") == p


def test_patterns_parse() -> None:
    assert str(parse_pattern("2:4")) == "2:4" and parse_pattern("2:4").elementwise
    assert str(parse_pattern("4x1")) == "4x1" and parse_pattern("4X1").kind == "block"
    assert not parse_pattern("channel").elementwise


_CNN = None


def _small_graph():
    global _CNN
    if _CNN is None:
        _CNN = load_graph(SmallCNN(), input="2x3x8x8")
    return _CNN


PRUNABLE = ["conv1", "conv2", "dw", "conv3", "fc"]
PATTERNS = ["unstructured", "2:4", "4x1", "channel"]


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(PRUNABLE), st.tuples(st.floats(0, 0.95), st.sampled_from(PATTERNS))),
       st.sampled_from(PRUNABLE), st.floats(0, 0.95))
def test_more_sparsity_never_adds_work(layers, layer, extra) -> None:
    """Raising one layer's sparsity never raises effective MACs or non-zero params."""
    graph = _small_graph()
    base = layers.get(layer, (0.0, "unstructured"))
    more = dict(layers)
    more[layer] = (max(base[0], min(0.95, base[0] + extra)), base[1])
    low = effective_totals(graph, applied(graph, whole_groups(graph, layers)))
    high = effective_totals(graph, applied(graph, whole_groups(graph, more)))
    assert high[0] <= low[0] and high[1] <= low[1]
    assert high[0] <= graph.total_macs and high[1] <= graph.total_params


@pytest.mark.slow   # real timing, a real calibration or a 7B graph: CI runs it in its own step
def test_llama_plan_on_meta_graph() -> None:
    graph = graph_of("hf:llama-7b")
    report = analyze(graph, plan=plan(model__layers__0__mlp__up_proj=(0.5, "2:4")))
    up = graph.layer("model.layers.0.mlp.up_proj")
    assert report.totals["macs"] - report.totals["effective_macs"] == up.macs // 2
