"""The planner: coupling, budgets, exactness against brute force, agreement with analyze, exports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import costplan
from costplan.api import analyze, estimate_latency, load_graph
from costplan.errors import CostplanError
from costplan.hardware import load_profile
from costplan.hardware.profile import parse_profile
from costplan.planfile import Plan
from costplan.planning.coupling import default_fixed, find_groups
from costplan.planning.export import export
from costplan.planning.importance import Importance, gaussian_nm, gaussian_unstructured
from costplan.planning.planner import (_Tables, build_problem, build_units, candidate_patterns, parse_budget,
                                       plan_from_choice)
from costplan.planning.solver import Infeasible, Pair, Problem, brute_force, solve
from tests.conftest import SmallCNN, graph_of


def test_budget_forms() -> None:
    assert parse_budget("2ms").seconds(1.0) == pytest.approx(2e-3)
    assert parse_budget("500us").seconds(1.0) == pytest.approx(5e-4)
    assert parse_budget("2x").seconds(0.01) == pytest.approx(0.005)
    for bad in ("2", "-2ms", "0ms", "fast", "1x", "2 parsecs"):
        with pytest.raises(CostplanError):
            parse_budget(bad)


def test_resnet_residual_channels_are_one_group(resnet50_graph) -> None:
    coupling = find_groups(resnet50_graph, default_fixed(resnet50_graph))
    stage = coupling.groups["layer1.0.conv3"]
    assert set(stage.members) == {"layer1.0.conv3", "layer1.0.downsample.0", "layer1.1.conv3", "layer1.2.conv3"}
    assert coupling.groups["conv1"].fixed and coupling.groups["fc"].fixed  # the ends stay dense
    assert not coupling.groups["layer1.0.conv1"].fixed
    assert coupling.input_group["layer1.0.conv2"] == "layer1.0.conv1"
    assert coupling.input_group["layer1.0.bn2"] == "layer1.0.conv2"
    assert coupling.input_group["layer1.1.conv1"] == "layer1.0.conv3"


def test_transformer_heads_and_hidden_width(bert_graph) -> None:
    coupling = find_groups(bert_graph, default_fixed(bert_graph))
    heads = coupling.groups["encoder.layer.3.attention.self"]
    assert heads.kind == "head" and heads.width == 12 and not heads.fixed and len(heads.members) == 3
    assert not coupling.groups["encoder.layer.3.intermediate.dense"].fixed
    hidden = next(g for g in coupling.groups.values() if "encoder.layer.3.output.dense" in g.members)
    assert hidden.fixed  # the residual stream reaches the output and the embeddings
    assert find_groups(graph_of("vit_b_16")).groups["encoder.layers.encoder_layer_0.self_attention"].kind == "head"


def test_depthwise_and_squeeze_excite_couple() -> None:
    graph = graph_of("efficientnet_b0")
    coupling = find_groups(graph, default_fixed(graph))
    # the squeeze-excite expansion multiplies the depthwise output: same channels as the expand conv
    group = next(g for g in coupling.groups.values() if "features.2.0.block.0.0" in g.members)
    assert "features.2.0.block.2.fc2" in group.members


def test_gaussian_importance_closed_forms() -> None:
    assert gaussian_unstructured(0.0) == 0.0
    # by hand: q = 0.6745 (median |x|); 2 * (Phi(q) - 1/2 - q phi(q)) = 2 * (0.25 - 0.6745 * 0.3178) = 0.0713
    assert gaussian_unstructured(0.5) == pytest.approx(0.0713, abs=1e-3)
    assert gaussian_unstructured(0.9) < 0.9 and gaussian_unstructured(0.9) > gaussian_unstructured(0.5)
    import numpy as np

    x = np.sort(np.random.default_rng(1).standard_normal((100_000, 4)) ** 2, axis=1)
    assert gaussian_nm(2, 4) == pytest.approx(x[:, :2].sum() / x.sum(), abs=3e-3)
    assert gaussian_unstructured(0.5) < gaussian_nm(2, 4)  # 2:4 is constrained, so it costs more


TOY = parse_profile({
    "name": "toy", "peak_tflops": {"float32": 0.002}, "memory": {"bandwidth_gbs": 1.0, "onchip_mb": 0.0},
    "overhead": {"per_op_us": 1.0},
    "sparsity": {"unstructured": {"compute_speedup": 4.0, "compressed_weights": True, "index_bits": 4}},
}, "toy")


@pytest.mark.parametrize("method", ["fronts", "milp"])
@pytest.mark.parametrize("fraction", [0.45, 0.6, 0.75, 0.9])
def test_solver_matches_brute_force(fraction: float, method: str) -> None:
    graph = load_graph(SmallCNN(), input="1x3x16x16")
    coupling = find_groups(graph, [])
    patterns = candidate_patterns("auto", TOY, "float32", coupling)
    units = build_units(graph, coupling, patterns, levels=4, max_ratio=0.75, excluded=[], bounds={})
    problem = build_problem(graph, coupling, units, _Tables(graph, TOY, "float32"), Importance(graph))
    assert len(problem.pairs) >= 2  # producer/consumer terms are exercised
    dense = problem.latency([0] * len(units))
    best = brute_force(problem, dense * fraction)
    found = solve(problem, dense * fraction, rel_gap=1e-9, method=method)
    assert found.removed == pytest.approx(best.removed, abs=1e-9)
    assert found.latency <= dense * fraction * (1 + 1e-9)
    # the problem's arithmetic is analyze's arithmetic
    plan = plan_from_choice(graph, units, found.choice)
    assert estimate_latency(graph, TOY, plan).latency_s == pytest.approx(found.latency, rel=1e-12)


def staged_problem(seed: int, hubs: int = 3, options: int = 3, blocks: int = 2) -> Problem:
    """A random problem shaped like a residual network: a chain of stage groups (hubs), each with
    blocks of two inner units between it and (for the first block) the previous stage."""
    rng = np.random.default_rng(seed)
    n_units = hubs * (1 + 2 * blocks) + 1
    cost = [np.concatenate([[0.0], np.sort(rng.uniform(0, 1, options - 1))]) for _ in range(n_units)]
    unary = [np.sort(rng.uniform(0, 1, options))[::-1].copy() for _ in range(n_units)]
    pairs = []

    def pair(a: int, b: int) -> None:
        classes = rng.integers(0, 2, options)
        classes[0] = 0
        classes = np.unique(classes, return_inverse=True)[1]
        pairs.append(Pair(a, b, classes, rng.uniform(0, 1, (classes.max() + 1, options))))

    for h in range(hubs):
        for b in range(blocks):
            inner = hubs + 2 * (h * blocks + b)
            source = h - 1 if b == 0 and h > 0 else h
            pair(source, inner)          # the block's first conv reads the stage (or the previous one)
            pair(inner, inner + 1)
            pair(inner + 1, h)           # its last conv writes the stage
        if h > 0:
            pair(h - 1, h)               # the downsampling shortcut
    return Problem(cost, unary, pairs, float(rng.uniform(0, 1)))  # the last unit stands alone


def every_choice(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """Latency and importance removed of every choice at once (an array axis per unit)."""
    n = len(problem.cost)

    def along(axes: tuple[int, ...], table: np.ndarray) -> np.ndarray:
        if len(axes) == 2 and axes[0] > axes[1]:
            axes, table = axes[::-1], table.T
        shape = [1] * n
        for a, size in zip(axes, table.shape):
            shape[a] = size
        return table.reshape(shape)

    latency = sum(along((u,), v) for u, v in enumerate(problem.unary)) + problem.constant
    cost = sum(along((u,), c) for u, c in enumerate(problem.cost))
    for q in problem.pairs:
        latency = latency + along((q.a, q.b), q.table[q.class_of_a])
    return latency, cost


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), fraction=st.floats(0.0, 1.0))
def test_fronts_are_exact_on_staged_problems(seed: int, fraction: float) -> None:
    problem = staged_problem(seed, hubs=2, options=3, blocks=2)   # 3^11 choices
    latency, cost = every_choice(problem)
    fastest = solve(problem, None, minimise="latency", method="fronts")
    assert fastest.latency == pytest.approx(latency.min(), rel=1e-12)
    budget = latency.min() + fraction * (latency.max() - latency.min())
    found = solve(problem, budget, method="fronts")
    assert found.status == "optimal"
    assert found.removed == pytest.approx(cost[latency <= budget].min(), abs=1e-9)
    assert found.latency <= budget * (1 + 1e-9)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fronts_agree_with_the_milp_on_larger_problems(seed: int) -> None:
    problem = staged_problem(seed, hubs=4, options=6, blocks=3)
    dense = problem.latency([0] * len(problem.cost))
    fastest = solve(problem, None, minimise="latency").latency
    budget = (dense + fastest) / 2
    fronts, milp = solve(problem, budget, method="fronts"), solve(problem, budget, method="milp", rel_gap=1e-9)
    assert milp.status == "optimal"
    assert fronts.removed == pytest.approx(milp.removed, rel=1e-6, abs=1e-9)
    with pytest.raises(Infeasible):
        solve(problem, fastest * 0.99, method="fronts")


def test_resnet50_with_20_levels_plans_exactly_in_seconds(resnet50_graph) -> None:
    for hw, budget in [("rtx3090", "0.8ms"), ("cpu-xeon", "1.3x")]:
        result = costplan.plan(resnet50_graph, budget=budget, hw=hw, levels=20)
        solver = result.plan.extra["solver"]
        assert solver["status"] == "optimal" and solver["gap"] == 0.0
        assert solver["seconds"] < 5.0, (hw, solver)


def test_analyze_reproduces_the_planned_latency(tmp_path) -> None:
    graph = graph_of("resnet18")
    result = costplan.plan(graph, budget="1.4x", hw="cpu-xeon", importance="gaussian")
    assert result.latency_s <= result.plan.budget["latency_ms"] * 1e-3 * (1 + 1e-9)
    assert result.solution.latency == pytest.approx(result.latency_s, rel=1e-12)
    path = tmp_path / "plan.json"
    costplan.save_plan(result.plan, path)
    report = analyze(graph, hw="cpu-xeon", plan=str(path))
    assert report.totals["latency_ms"] == pytest.approx(result.plan.predicted["latency_ms"], rel=1e-9)
    data = json.loads(path.read_text())
    assert data["costplan"] == "plan/1" and data["hardware"] == "cpu-xeon"
    assert {"latency_ms", "macs", "params", "dense_latency_ms"} <= set(data["predicted"])
    assert "gap" in data["solver"]


def _uniform(graph, hw: str, budget_s: float, importance: Importance) -> float:
    """Importance kept by the smallest single channel ratio for every prunable group that meets the budget."""
    coupling = find_groups(graph, default_fixed(graph))
    groups = coupling.prunable()
    for step in range(1, 91):
        r = step / 100
        plan = Plan.from_dict({"layers": {graph.layer(m).module: {"sparsity": r, "pattern": "channel"}
                                          for g in groups for m in g.members}})
        if estimate_latency(graph, hw, plan).latency_s <= budget_s:
            removed = sum(importance.removed_structured(g, round(g.width * (1 - r)) or 1) for g in groups)
            return 1 - removed / sum(len(g.members) for g in groups)
    return 0.0


def test_plan_keeps_more_than_one_uniform_ratio() -> None:
    graph = graph_of("resnet18")
    importance = Importance(graph)
    result = costplan.plan(graph, budget="1.5x", hw="cpu-xeon", importance=importance, patterns="channel")
    uniform = _uniform(graph, "cpu-xeon", result.plan.budget["latency_ms"] * 1e-3, importance)
    assert result.plan.predicted["importance_kept"] > uniform


def test_spends_sparsity_only_where_the_device_turns_it_into_time(resnet50_graph) -> None:
    with pytest.raises(CostplanError, match="does not speed up rtx3090"):
        costplan.plan(resnet50_graph, budget="1.2x", hw="rtx3090", patterns="unstructured")
    with pytest.raises(CostplanError, match="no attention heads"):
        costplan.plan(resnet50_graph, budget="1.2x", hw="rtx3090", patterns="head")
    assert [str(p) for p in candidate_patterns("auto", load_profile("rtx3090"), "float16",
                                               find_groups(resnet50_graph))] == ["channel", "2:4"]
    assert "unstructured" in [str(p) for p in candidate_patterns("auto", load_profile("edge-npu"), "int8",
                                                                  find_groups(resnet50_graph))]


def test_unreachable_budget_says_what_is_reachable(resnet50_graph) -> None:
    with pytest.raises(CostplanError, match=r"lowest latency reachable .* is \d+\.\d+ ms"):
        costplan.plan(resnet50_graph, budget="0.05ms", hw="rtx3090", importance="gaussian")


def test_exclusions_and_bounds_are_kept() -> None:
    graph = graph_of("resnet18")
    result = costplan.plan(graph, budget="1.5x", hw="cpu-xeon", importance="gaussian", patterns="channel",
                           exclude=["layer1.0.conv1"], bounds={"layer4.0.conv1": (0.0, 0.2)})
    assert "layer1.0.conv1" not in result.plan.layers
    assert result.plan.layers.get("layer4.0.conv1") is None or result.plan.layers["layer4.0.conv1"].sparsity <= 0.2
    with pytest.raises(CostplanError, match="no layer named"):
        costplan.plan(graph, budget="1.5x", hw="cpu-xeon", exclude=["layer9"])


def test_exports() -> None:
    plan = Plan.from_dict({"layers": {"layer1.0.conv1": {"sparsity": 0.5, "pattern": "channel"},
                                      "layer1.0.conv2": {"sparsity": 0.5, "pattern": "channel"},
                                      "fc": {"sparsity": 0.5, "pattern": "2:4"},
                                      "layer2.0.conv1": {"sparsity": 0.7, "pattern": "unstructured"}}})
    tp = export(plan, "torch-pruning")
    assert tp["pruning_ratio_dict"] == {"layer1.0.conv1": 0.5, "layer1.0.conv2": 0.5}
    assert set(tp["unsupported"]) == {"fc", "layer2.0.conv1"}
    nni = export(plan, "nni")["config_list"]
    assert {"op_names": ["layer1.0.conv1", "layer1.0.conv2"], "sparse_ratio": 0.5, "granularity": "out_channel"} in nni
    inc = export(plan, "inc")["pruning_configs"]
    assert any(c["pattern"] == "2:4" and c["op_names"] == ["fc"] for c in inc)
    assert any(c["pattern"] == "channelx1" for c in inc)
    with pytest.raises(CostplanError):
        export(plan, "onnx")


def test_taylor_importance_through_the_api() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    batches = [(torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))) for _ in range(2)]
    loss = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    before = [p.clone() for p in model.parameters()]
    result = costplan.plan(model, input="1x3x8x8", budget="1.3x", hw=TOY, importance="taylor",
                           data=batches, loss_fn=loss)
    assert result.plan.extra["importance"] == "measured" and result.plan.layers
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # nothing modified
    assert all(p.grad is None for p in model.parameters())


def test_a_problem_with_nothing_to_choose() -> None:
    empty = Problem([], [], [], 1e-3)
    assert solve(empty, 2e-3, method="fronts").choice == ()
    assert solve(empty, None, minimise="latency", method="fronts").choice == ()
    with pytest.raises(Infeasible):
        solve(empty, 0.5e-3, method="fronts")


def test_channel_levels_keep_multiples_of_the_device_tile() -> None:
    from costplan.planning.planner import aligned_ratios

    ratios = [0.1 * i for i in range(1, 10)]
    for width in (64, 256, 2048):
        aligned = aligned_ratios(width, ratios, 8)
        kept = [round(width * (1 - r)) for r in aligned]
        assert all(k % 8 == 0 and 8 <= k < width for k in kept) and len(set(kept)) == len(kept)
        assert max(aligned) <= max(ratios) + 1e-9
    assert aligned_ratios(26, ratios, 8) == ratios  # a width that is not a multiple keeps its levels
    assert aligned_ratios(8, ratios, 8) == []        # one tile: nothing to remove in whole tiles


def test_plans_for_a_profile_with_a_channel_multiple_keep_whole_tiles() -> None:
    from pathlib import Path

    from costplan.api import plan
    from costplan.sparsity import kept_count

    profile = str(Path(__file__).parent / "data" / "avx2-calibrated.toml")
    graph = graph_of("resnet18")
    result = plan(graph, budget="1.6x", hw=profile, patterns="channel")
    widths = {l.module: l.width for l in graph.layers if l.width}
    assert result.plan.layers
    for name, entry in result.plan.layers.items():
        assert kept_count(widths[name], entry.sparsity) % 8 == 0, name
