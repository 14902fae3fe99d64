"""Hardware profiles and roofline latency: published figures, hand-computed layers, the seeds' lessons."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costplan.api import analyze, estimate_latency, load_graph
from costplan.errors import CostplanError
from costplan.hardware import list_profiles, load_profile
from costplan.hardware.profile import parse_profile
from costplan.hardware.roofline import layer_latency
from costplan.planfile import Plan
from costplan.sparsity import Effective, apply_plan
from tests.conftest import graph_of

SHIPPED = ["a100", "cpu-xeon", "edge-npu", "fpga-zcu102", "h100", "rtx3090"]


def test_shipped_profiles_load_with_their_published_figures() -> None:
    assert set(SHIPPED) <= set(list_profiles())
    gpu = load_profile("rtx3090")
    assert gpu.peak_macs["float32"] * 2 == pytest.approx(35.6e12)
    assert gpu.peak_macs["float16"] * 2 == pytest.approx(71e12)
    assert gpu.bandwidth == pytest.approx(936e9) and gpu.onchip_bytes == pytest.approx(6e6)
    assert gpu.support("2:4", "float16").compute_speedup == 2.0
    assert gpu.support("2:4", "float32") is None  # sparse tensor cores need a tensor-core dtype
    assert not gpu.support("unstructured", "float32").useful
    cpu = load_profile("cpu-xeon")
    assert cpu.peak_macs["float32"] * 2 == pytest.approx(40 * 2.3e9 * 64)
    fpga = load_profile("fpga-zcu102")
    assert fpga.peak_macs["int8"] * 2 == pytest.approx(4096 * 300e6)
    npu = load_profile("edge-npu")
    assert npu.support("unstructured", "int8").compressed_weights
    assert npu.precision("float32") == "int8"


def test_profiles_cite_a_source_for_each_figure() -> None:
    for name in SHIPPED:
        text = (load_profile(name).source and open(load_profile(name).source).read())
        for key in ("float32 =", "int8 =", "bandwidth_gbs", "onchip_mb"):
            for line in text.splitlines():
                if line.strip().startswith(key):
                    assert "#" in line, f"{name}: '{line.strip()}' cites no source"


TOY = {
    "name": "toy", "peak_tflops": {"float32": 2.0},       # 1e12 MAC/s
    "memory": {"bandwidth_gbs": 100.0, "onchip_mb": 0.0},  # 1e11 B/s, nothing stays on chip
    "efficiency": {"gemm": 0.5, "conv": 0.5},
    "overhead": {"per_op_us": 1.0},
}


def test_linear_layer_by_hand() -> None:
    """Linear 1024->1024 at batch 1: 1 MMAC in 2 us of compute, 4 MiB of weights in 42 us: memory-bound."""
    import torch

    profile = parse_profile(TOY, "toy")
    for batch, bound in ((1, "memory"), (4096, "compute")):
        graph = load_graph(torch.nn.Linear(1024, 1024, bias=False), input=f"{batch}x1024")
        layer = graph.layers[0]
        lat = layer_latency(layer, Effective(layer.macs, layer.params), profile, "float32")
        compute = batch * 1024 * 1024 / (1e12 * 0.5)
        memory = (1024 * 1024 * 4 + 2 * batch * 1024 * 4) / 1e11
        assert lat.compute_s == pytest.approx(compute)
        assert lat.memory_s == pytest.approx(memory)
        assert lat.latency_s == pytest.approx(max(compute, memory) + 1e-6)
        assert lat.bound == bound


@pytest.mark.parametrize("change,message", [
    (lambda d: d["memory"].pop("bandwidth_gbs"), "field 'memory.bandwidth_gbs' is missing"),
    (lambda d: d["memory"].update(bandwidth_gbs="fast"), "must be a number"),
    (lambda d: d["memory"].update(bandwidth_gbs=-1), "must be positive"),
    (lambda d: d["peak_tflops"].update(fp64=1.0), "field 'peak_tflops.fp64' is not a dtype"),
    (lambda d: d["efficiency"].update(gemm=1.5), "field 'efficiency.gemm' must be in"),
    (lambda d: d.update(sparsity={"2:4": {"compute_speedup": 0.5}}), "sparsity.2:4.compute_speedup"),
    (lambda d: d.pop("name"), "field 'name' is missing"),
])
def test_bad_profiles_name_file_and_field(tmp_path, change, message) -> None:
    import copy

    data = copy.deepcopy(TOY)
    change(data)
    path = tmp_path / "bad.toml"
    path.write_text(_toml(data))
    with pytest.raises(CostplanError, match=message) as err:
        load_profile(str(path))
    assert str(path) in str(err.value)


def _toml(data: dict, prefix: str = "") -> str:
    scalars = "".join(f"{k} = {_value(v)}\n" for k, v in data.items() if not isinstance(v, dict))
    tables = "".join(f"\n[{prefix}{_key(k)}]\n" + _toml(v, f"{prefix}{_key(k)}.") for k, v in data.items()
                     if isinstance(v, dict))
    return scalars + tables


def _key(k: str) -> str:
    return f'"{k}"' if ":" in k else k


def _value(v: object) -> str:
    return f'"{v}"' if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)


def test_unknown_profile_suggests() -> None:
    with pytest.raises(CostplanError, match="rtx3090"):
        load_profile("rtx309")
    with pytest.raises(CostplanError, match="no such hardware profile file"):
        load_profile("nowhere/x.toml")


def _inner_convs(graph) -> list[str]:
    return [l.module for l in graph.layers if l.has_weights and l.op == "conv2d" and l.module != "conv1"]


def _speedup(graph, hw: str, pattern: str, sparsity: float, dtype: str | None = None, layers=None) -> float:
    layers = layers or _inner_convs(graph)
    plan = Plan.from_dict({"layers": {m: {"sparsity": sparsity, "pattern": pattern} for m in layers}})
    dense = estimate_latency(graph, hw, None, dtype).latency_s
    return dense / estimate_latency(graph, hw, plan, dtype).latency_s


def test_gpu_gains_nothing_from_scattered_zeros_but_from_channels_and_2_4(resnet50_graph) -> None:
    assert _speedup(resnet50_graph, "rtx3090", "unstructured", 0.7) == pytest.approx(1.0)
    assert _speedup(resnet50_graph, "rtx3090", "channel", 0.7) > 1.3
    assert _speedup(resnet50_graph, "rtx3090", "2:4", 0.5, "float16") > 1.05
    assert _speedup(resnet50_graph, "rtx3090", "2:4", 0.5, "float32") == pytest.approx(1.0)


def test_memory_bound_accelerator_gains_from_compressed_weights(resnet50_graph, bert_graph) -> None:
    """edge-npu decompresses weights on chip: bandwidth-bound layers speed up, compute-bound do not."""
    est = estimate_latency(resnet50_graph, "edge-npu")
    memory_bound = [n for n, l in est.layers.items() if l.bound == "memory" and resnet50_graph.layer(n).has_weights]
    compute_bound = [n for n, l in est.layers.items() if l.bound == "compute"]
    assert memory_bound and compute_bound
    plan = Plan.from_dict({"layers": {resnet50_graph.layer(n).module: {"sparsity": 0.7, "pattern": "unstructured"}
                                      for n in memory_bound + compute_bound}})
    sparse = estimate_latency(resnet50_graph, "edge-npu", plan)
    assert all(sparse.layers[n].latency_s < est.layers[n].latency_s for n in memory_bound)
    # the classifier's time is its weights: 30% of int8 weights + 4-bit indices is 45% of the bytes
    assert sparse.layers["fc"].latency_s < 0.5 * est.layers["fc"].latency_s
    assert all(sparse.layers[n].latency_s == pytest.approx(est.layers[n].latency_s) for n in compute_bound)
    linears = [l.module for l in bert_graph.layers if l.op == "linear"]
    assert _speedup(bert_graph, "edge-npu", "unstructured", 0.7, layers=linears) > 1.15


def test_fpga_zero_skipping_speeds_up_compute_bound_layers(resnet50_graph) -> None:
    est = estimate_latency(resnet50_graph, "fpga-zcu102")
    layer = "layer2.1.conv2"
    assert est.layers[layer].bound == "compute"
    plan = Plan.from_dict({"layers": {layer: {"sparsity": 0.7, "pattern": "unstructured"}}})
    assert estimate_latency(resnet50_graph, "fpga-zcu102", plan).layers[layer].latency_s < \
        0.45 * est.layers[layer].latency_s
    assert _speedup(resnet50_graph, "fpga-zcu102", "unstructured", 0.7) > 1.5


def test_batch_moves_layers_from_memory_to_compute_bound() -> None:
    one = analyze(graph_of("resnet50"), hw="rtx3090")
    many = analyze(graph_of("resnet50", batch=64), hw="rtx3090")
    fc1 = next(r for r in one.layers if r.name == "fc")
    fc64 = next(r for r in many.layers if r.name == "fc")
    assert fc1.bound == "memory" and fc64.bound == "compute"
    assert fc64.intensity > fc1.intensity * 30
    # weights are reused across the batch, activations are not: every weight layer's intensity rises
    by_name = {r.name: r for r in many.layers}
    assert all(by_name[r.name].intensity > r.intensity for r in one.layers if r.params and r.macs)


def test_report_fields_on_hardware(resnet50_graph) -> None:
    report = analyze(resnet50_graph, hw="rtx3090").to_dict()
    t = report["totals"]
    assert report["hardware"] == "rtx3090" and t["latency_ms"] > 0
    assert t["latency_ms"] == pytest.approx(sum(l["latency_ms"] for l in report["layers"]))
    assert t["energy_mj"] == pytest.approx(sum(l["energy_mj"] for l in report["layers"]))
    assert t["ridge_macs_per_byte"] == pytest.approx(17.8e12 / 936e9, rel=1e-3)
    conv = next(l for l in report["layers"] if l["name"] == "layer1.0.conv2")
    assert conv["bound"] in ("compute", "memory", "overhead") and 0 < conv["attained"] <= 1
    assert {l["bound"] for l in report["layers"]} >= {"compute", "fused"}


def test_int8_rescales_bytes(resnet50_graph) -> None:
    fp32 = analyze(resnet50_graph, hw="edge-npu")  # the NPU runs int8 whatever was traced
    assert fp32.totals["precision"] == "int8"
    fc = next(r for r in fp32.layers if r.name == "fc")
    assert fc.extra["dram_bytes"] >= 2048 * 1000  # one byte per weight, not four
    assert fc.extra["dram_bytes"] < 2048 * 1000 * 2


PROFILES = SHIPPED
PATTERNS = ["unstructured", "2:4", "4x1", "channel"]


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(PROFILES), st.sampled_from(PATTERNS), st.sampled_from(["float32", "float16", "int8"]),
       st.floats(0.0, 0.9), st.floats(0.0, 0.09), st.integers(0, 19))
def test_more_sparsity_never_predicts_more_latency(hw, pattern, dtype, low, more, index) -> None:
    graph = graph_of("resnet18")
    layer = [l for l in graph.layers if l.has_weights][index]
    plans = [Plan.from_dict({"layers": {layer.module: {"sparsity": s, "pattern": pattern}}})
             for s in (low, low + more)]
    a, b = (estimate_latency(graph, hw, p, dtype).latency_s for p in plans)
    assert b <= a * (1 + 1e-12)
    assert a <= estimate_latency(graph, hw, None, dtype).latency_s * (1 + 1e-12)


def test_plan_effects_feed_latency(resnet50_graph) -> None:
    plan = Plan.from_dict({"layers": {"layer1.0.conv1": {"sparsity": 0.5, "pattern": "channel"}}})
    eff = apply_plan(resnet50_graph, plan)
    dense, pruned = estimate_latency(resnet50_graph, "rtx3090"), estimate_latency(resnet50_graph, "rtx3090", plan)
    assert pruned.layers["layer1.0.conv2"].latency_s < dense.layers["layer1.0.conv2"].latency_s
    assert eff["layer1.0.conv2"].in_keep == 0.5


def test_a_calibration_is_the_profile_its_file_gives(tmp_path) -> None:
    from costplan.hardware import load_profile
    from costplan.hardware.calibrate import calibrate, profile_toml

    result = calibrate(quick=True, progress=False)
    path = tmp_path / "local.toml"
    path.write_text(profile_toml(result))
    direct, loaded = result.profile(), load_profile(path)
    assert {k: v for k, v in vars(direct).items() if k != "source"} == \
        {k: v for k, v in vars(loaded).items() if k != "source"}
