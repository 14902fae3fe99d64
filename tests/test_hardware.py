"""Hardware profiles and roofline latency: published figures, hand-computed layers, the seeds' lessons."""

from __future__ import annotations

import platform
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costplan.api import analyze, estimate_latency, load_graph
from costplan.errors import CostplanError
from costplan.hardware import list_profiles, load_profile
from costplan.hardware.profile import parse_profile
from costplan.hardware.roofline import algorithm_speedup, dims, layer_latency
from costplan.planfile import Plan
from costplan.sparsity import Effective, apply_plan
from tests.conftest import applied, graph_of, whole_groups

SHIPPED = ["a100", "cpu-xeon", "edge-npu", "fpga-zcu102", "h100", "rtx3090", "t4", "v100"]


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
    v100, t4 = load_profile("v100"), load_profile("t4")
    assert (v100.peak_macs["float32"] * 2, v100.peak_macs["float16"] * 2, v100.bandwidth) == \
        pytest.approx((15.7e12, 125e12, 900e9))
    assert (t4.peak_macs["float32"] * 2, t4.peak_macs["float16"] * 2, t4.bandwidth) == \
        pytest.approx((8.1e12, 65e12, 320e9))


def test_float32_convolutions_run_as_tf32_on_ampere_but_matmuls_do_not() -> None:
    # torch.backends.cudnn.allow_tf32 is True by default, torch.backends.cuda.matmul.allow_tf32 False
    a100, v100 = load_profile("a100"), load_profile("v100")
    assert a100.peak_for("float32", "conv") * 2 == pytest.approx(156e12)
    assert a100.peak_for("float32", "gemm") * 2 == pytest.approx(19.5e12)
    assert a100.peak_for("float16", "conv") * 2 == pytest.approx(312e12)
    assert v100.peak_for("float32", "conv") == v100.peak_macs["float32"]   # Volta has no TF32
    # and the roofline uses it: a conv's compute time at float32 is 19.5/156 of what FP32 would take
    graph = load_graph(torch_conv(), input="1x256x56x56")
    name = graph.layers[0].name
    tf32 = estimate_latency(graph, a100, dtype="float32").layers[name].compute_s
    fp32 = estimate_latency(graph, replace(a100, tf32_macs=None), dtype="float32").layers[name].compute_s
    assert fp32 / tf32 == pytest.approx(156 / 19.5)


def torch_conv():
    import torch

    return torch.nn.Conv2d(256, 256, 3, padding=1)


def test_a_profile_states_its_runtime_and_switches_to_the_ones_it_knows() -> None:
    a100 = load_profile("a100")
    assert (a100.runtime, a100.per_op_s, a100.fuse_elementwise) == ("fused", pytest.approx(4e-6), True)
    eager = a100.with_runtime("eager")
    assert (eager.runtime, eager.per_op_s, eager.fuse_elementwise) == ("eager", pytest.approx(51.9e-6), False)
    back = eager.with_runtime("fused")
    assert (back.per_op_s, back.fuse_elementwise) == (a100.per_op_s, a100.fuse_elementwise)
    with pytest.raises(CostplanError, match="no 'graph' runtime; it knows eager"):
        load_profile("cpu-xeon").with_runtime("graph")
    # batch 1 ResNet-50 in PyTorch eager on a V100 is ~10 ms whatever its FLOPs (NVIDIA
    # DeepLearningExamples, PyTorch ResNet-50 v1.5, 21.03: 10.37 ms); a fused runtime is far below
    graph = graph_of("resnet50")
    fused = estimate_latency(graph, "v100").latency_s
    assert estimate_latency(graph, "v100", runtime="eager").latency_s == pytest.approx(10.37e-3, rel=0.05)
    assert fused < 0.5 * 10.37e-3


def test_gpu_profiles_against_published_tables_outside_their_fits() -> None:
    """Rows of benchmarks/gpu_published.py that no figure was fitted to (NVIDIA DeepLearningExamples
    ResNet-50 v1.5 inference tables, PyTorch 21.03 and TensorFlow 20.06): each within 20%. The
    efficiencies were fitted to PyTorch at batch 256; TensorFlow's V100 and T4 FP32 rows check them."""
    graph = graph_of("resnet50", batch=64)
    rows = [("v100", "eager", "float16", 23.18), ("t4", "eager", "float32", 152.73),
            ("t4", "eager", "float16", 57.41), ("t4", "graph", "float32", 150.82),
            ("v100", "graph", "float32", 51.12), ("t4", "graph", "float16", 64.56)]
    for gpu, runtime, dtype, published in rows:
        predicted = estimate_latency(graph, gpu, dtype=dtype, runtime=runtime).latency_s * 1e3
        assert abs(predicted / published - 1) < 0.2, (gpu, runtime, dtype, predicted, published)


def test_winograd_convolutions_need_fewer_multiplies_where_the_profile_says() -> None:
    """cuDNN runs FP32 3x3 stride-1 convolutions as Winograd (F(2x2,3x3): 2.25x fewer multiplies);
    strided, dilated, grouped and 5x5 convolutions, other dtypes and TF32 tensor cores run direct."""
    from torch.nn import Conv2d

    toy = parse_profile({**TOY, "peak_tflops": {"float32": 2.0, "float16": 2.0},
                         "winograd": {"speedup": 2.25, "dtypes": ["float32"]}}, "toy")

    def compute(module, dtype: str = "float32") -> tuple[float, float]:
        layer = load_graph(module, input="1x64x32x32").layers[0]
        return layer_latency(layer, Effective(layer.macs, layer.params), toy, dtype).compute_s, layer.macs

    seconds, macs = compute(Conv2d(64, 64, 3, padding=1))
    assert macs == 32 * 32 * 64 * 64 * 9 and seconds == pytest.approx(macs / 2.25 / 0.5e12)
    for direct in (Conv2d(64, 64, 3, stride=2, padding=1), Conv2d(64, 64, 3, padding=2, dilation=2),
                   Conv2d(64, 64, 3, padding=1, groups=2), Conv2d(64, 64, 5, padding=2)):
        seconds, macs = compute(direct)
        assert seconds == pytest.approx(macs / 0.5e12), direct
    seconds, macs = compute(Conv2d(64, 64, 3, padding=1), "float16")
    assert seconds == pytest.approx(macs / 0.5e12)
    v100 = load_profile("v100")
    assert (v100.winograd_speedup, v100.winograd_dtypes) == (2.25, ("float32",))
    layer = load_graph(Conv2d(64, 64, 3, padding=1), input="1x64x32x32").layers[0]
    assert algorithm_speedup(layer, "conv", v100, "float32") == 2.25
    a100 = replace(load_profile("a100"), winograd_speedup=2.25, winograd_dtypes=("float32",))
    assert algorithm_speedup(layer, "conv", a100, "float32") == 1.0     # TF32 tensor cores
    with pytest.raises(CostplanError, match="winograd.dtypes"):
        parse_profile({**TOY, "winograd": {"speedup": 2.25, "dtypes": ["fp32"]}}, "toy")


def test_a_strided_convolution_runs_at_its_factor_of_the_rate() -> None:
    """``[efficiency] strided = { conv = 0.8 }`` on a profile with per-dimension fits: a stride-2 3x3
    conv takes 1 / 0.8 the compute time of its utilisation alone; stride 1 and linear layers do not."""
    from torch.nn import Conv2d, Linear

    base = {**TOY, "efficiency": {"gemm": 0.5, "conv": 0.5, "half_util_dims": {"conv": [0, 0, 0], "gemm": [0, 0, 0]}}}
    plain = parse_profile(base, "toy")
    strided = parse_profile({**base, "efficiency": {**base["efficiency"], "strided": {"conv": 0.8}}}, "toy")
    for module, shape, factor in ((Conv2d(64, 64, 3, stride=2, padding=1), "1x64x32x32", 1 / 0.8),
                                  (Conv2d(64, 64, 3, padding=1), "1x64x32x32", 1.0), (Linear(64, 64), "8x64", 1.0)):
        layer = load_graph(module, input=shape).layers[0]
        eff = Effective(layer.macs, layer.params)
        assert layer_latency(layer, eff, strided, "float32").compute_s == \
            pytest.approx(layer_latency(layer, eff, plain, "float32").compute_s * factor)
        assert layer_latency(layer, eff, plain, "float32").compute_s == pytest.approx(layer.macs / 0.5e12)
    with pytest.raises(CostplanError, match="efficiency.strided.convs"):
        parse_profile({**base, "efficiency": {**base["efficiency"], "strided": {"convs": 0.8}}}, "toy")


def test_a_precision_can_have_efficiencies_of_its_own() -> None:
    """``[efficiency.float16]`` overrides the shared figures at that precision: pointwise follows
    conv and attention follows gemm, other classes and precisions keep the shared ones."""
    from torch.nn import Conv2d

    toy = parse_profile({**TOY, "peak_tflops": {"float32": 2.0, "float16": 8.0},
                         "efficiency": {"gemm": 0.5, "conv": 0.5, "float16": {"conv": 0.25}}}, "toy")
    assert [toy.efficiency_for("float16", c) for c in ("conv", "pointwise", "gemm", "attention")] == \
        [0.25, 0.25, 0.5, 0.5]
    assert toy.efficiency_for("float32", "conv") == 0.5
    layer = load_graph(Conv2d(64, 64, 1), input="1x64x32x32").layers[0]
    lat = layer_latency(layer, Effective(layer.macs, layer.params), toy, "float16")
    assert lat.compute_s == pytest.approx(32 * 32 * 64 * 64 / (4e12 * 0.25))
    with pytest.raises(CostplanError, match="efficiency.float16.convv"):
        parse_profile({**TOY, "efficiency": {"conv": 0.5, "float16": {"convv": 0.3}}}, "toy")
    # the T4 is power-capped: an FP16 GEMM sustains ~24 of its 65 TFLOPS (NVIDIA developer forums)
    t4 = load_profile("t4")
    assert (t4.efficiency_for("float16", "gemm"), t4.efficiency_for("float16", "conv")) == (0.37, 0.37)


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


def test_weights_that_do_not_overlap_add_their_read_to_the_math() -> None:
    """A calibrated CPU (``weights_overlap = false``): Linear 1024->1024 at batch 4096 computes for
    8.6 ms, moves 33.5 MB of activations in 0.34 ms and reads 4 MiB of weights in 42 us; the weights
    add (8.6 ms + 42 us + 1 us), where an overlapping device hides them (8.6 ms + 1 us)."""
    import torch

    overlapping = parse_profile(TOY, "toy")
    serial = parse_profile({**TOY, "memory": {**TOY["memory"], "weights_overlap": False}}, "toy")
    assert overlapping.weights_overlap and not serial.weights_overlap
    graph = load_graph(torch.nn.Linear(1024, 1024, bias=False), input="4096x1024")
    layer = graph.layers[0]
    compute, weights = 4096 * 1024 * 1024 / (1e12 * 0.5), 1024 * 1024 * 4 / 1e11
    lat = layer_latency(layer, Effective(layer.macs, layer.params), serial, "float32")
    assert lat.latency_s == pytest.approx(compute + weights + 1e-6)
    assert layer_latency(layer, Effective(layer.macs, layer.params), overlapping, "float32").latency_s == \
        pytest.approx(compute + 1e-6)


def _conv_layer(cin: int = 64, cout: int = 128, size: int = 56):
    import torch

    return load_graph(torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False), input=f"1x{cin}x{size}x{size}").layers[0]


def test_gemm_dimensions_of_a_pruned_conv_by_hand() -> None:
    """Conv 64->128, 3x3 at 56x56: 3136 rows; keeping 48 inputs and 64 outputs leaves a
    3136 x 64 x (48 x 9) GEMM. Keeping 44.8 inputs (70%) runs as 48: padding 48 / 44.8."""
    layer = _conv_layer()
    shape = dims(layer, Effective(0, 0, in_keep=0.75, out_keep=0.5), multiple=8)
    assert (shape.rows, shape.outputs, shape.reduction, shape.padding) == (3136, 64, 432, 1.0)
    padded = dims(layer, Effective(0, 0, in_keep=0.7, out_keep=0.5), multiple=8)
    assert padded.reduction == 48 * 9 and padded.padding == pytest.approx(48 / 44.8)
    assert dims(layer, Effective(0, 0, in_keep=0.7, out_keep=0.5), multiple=1).reduction == pytest.approx(44.8 * 9)
    rgb = load_graph(__import__("torch").nn.Conv2d(3, 64, 7, stride=2, padding=3), input="1x3x224x224").layers[0]
    assert dims(rgb, Effective(0, 0), multiple=8).padding == 1.0  # a width that never was a multiple keeps its kernel


def test_per_dimension_utilisation_by_hand() -> None:
    """Where a profile gives half_util_dims, compute = MACs / (peak x eff x prod d / (d + half)):
    a 3136 x 128 x 576 conv with halves (64, 16, 32) on 1e12 MAC/s at 50% efficiency."""
    layer = _conv_layer()
    data = {**TOY, "efficiency": {**TOY["efficiency"], "half_util_dims": {"conv": [64, 16, 32]}},
            "overhead": {"per_op_us": 1.0, "per_class_us": {"conv": 20.0}}}
    profile = parse_profile(data, "toy")
    u = 3136 / (3136 + 64) * 128 / (128 + 16) * 576 / (576 + 32)
    lat = layer_latency(layer, Effective(layer.macs, layer.params), profile, "float32")
    assert lat.compute_s == pytest.approx(layer.macs / (1e12 * 0.5 * u))
    assert lat.overhead_s == pytest.approx(21e-6)
    assert lat.latency_s == pytest.approx(max(lat.compute_s, lat.memory_s) + 21e-6)
    # halving the outputs costs more than half the time: the thinner GEMM runs slower
    half = layer_latency(layer, Effective(layer.macs / 2, 0, out_keep=0.5, shape_scale=0.5), profile, "float32")
    assert half.compute_s == pytest.approx(layer.macs / 2 / (1e12 * 0.5 * u * (64 / 80) / (128 / 144)))
    assert half.compute_s > lat.compute_s / 2


def test_pooling_moves_at_its_calibrated_rate() -> None:
    import torch

    graph = load_graph(torch.nn.MaxPool2d(3, 2, 1), input="1x64x112x112")
    layer = graph.layers[0]
    profile = parse_profile({**TOY, "memory": {**TOY["memory"], "pooling_gbs": 1.0}}, "toy")
    lat = layer_latency(layer, Effective(0, 0), profile, "float32")
    assert lat.memory_s == pytest.approx((64 * 112 * 112 + 64 * 56 * 56) * 4 / 1e9)
    assert layer_latency(layer, Effective(0, 0), parse_profile(TOY, "toy"), "float32").memory_s < lat.memory_s / 10


def test_silu_moves_at_the_sigmoid_rate_and_old_profiles_keep_the_transcendental_one() -> None:
    """SiLU on 1x64x56x56 (0.8 MB in, 0.8 MB out) at sigmoid_gbs = 2 moves 1.6 MB in 0.8 ms; GELU
    stays at transcendental_gbs = 1 (1.6 ms); a file without sigmoid_gbs gives SiLU the
    transcendental rate, as before the two were timed apart."""
    import torch

    from costplan.trace.ops import rated_kind

    assert rated_kind("aten.silu_.default") == "sigmoid" and rated_kind("aten.gelu.default") == "transcendental"
    nbytes = 2 * 64 * 56 * 56 * 4
    both = parse_profile({**TOY, "memory": {**TOY["memory"], "transcendental_gbs": 1.0, "sigmoid_gbs": 2.0}}, "toy")
    old = parse_profile({**TOY, "memory": {**TOY["memory"], "transcendental_gbs": 1.0}}, "toy")
    for module, profile, rate in ((torch.nn.SiLU(), both, 2e9), (torch.nn.GELU(), both, 1e9),
                                  (torch.nn.SiLU(), old, 1e9)):
        layer = load_graph(module, input="1x64x56x56").layers[0]
        assert layer_latency(layer, Effective(0, 0), profile, "float32").memory_s == pytest.approx(nbytes / rate)


@pytest.mark.parametrize("change,message", [
    (lambda d: d["memory"].pop("bandwidth_gbs"), "field 'memory.bandwidth_gbs' is missing"),
    (lambda d: d["memory"].update(bandwidth_gbs="fast"), "must be a number"),
    (lambda d: d["memory"].update(bandwidth_gbs=-1), "must be positive"),
    (lambda d: d["peak_tflops"].update(fp64=1.0), "field 'peak_tflops.fp64' is not a dtype"),
    (lambda d: d["efficiency"].update(gemm=1.5), "field 'efficiency.gemm' must be in"),
    (lambda d: d.update(sparsity={"2:4": {"compute_speedup": 0.5}}), "sparsity.2:4.compute_speedup"),
    (lambda d: d.pop("name"), "field 'name' is missing"),
    (lambda d: d.update(channel_multiple=0), "field 'channel_multiple' must be a positive integer"),
    (lambda d: d["efficiency"].update(half_util_dims={"conv": [1, 2]}), "efficiency.half_util_dims.conv' must be three"),
    (lambda d: d["efficiency"].update(half_util_dims={"fft": [1, 2, 3]}), "'efficiency.half_util_dims.fft' is not an op class"),
    (lambda d: d["overhead"].update(per_class_us={"conv": -1}), "'overhead.per_class_us.conv' must be >= 0"),
    (lambda d: d["memory"].update(first_touch_gbs=2.0), "must be given together"),
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


CALIBRATED = str(Path(__file__).parent / "data" / "avx2-calibrated.toml")
PROFILES = [*SHIPPED, CALIBRATED]
PATTERNS = ["unstructured", "2:4", "4x1", "channel"]


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(PROFILES), st.sampled_from(PATTERNS), st.sampled_from(["float32", "float16", "int8"]),
       st.floats(0.0, 0.9), st.floats(0.0, 0.09), st.integers(0, 19))
def test_more_sparsity_never_predicts_more_latency(hw, pattern, dtype, low, more, index) -> None:
    graph = graph_of("resnet18")
    layer = [l for l in graph.layers if l.has_weights and l.module != "fc"][index]
    plans = [Plan.from_dict({"layers": whole_groups(graph, {layer.module: (s, pattern)})}) for s in (low, low + more)]
    for p in plans:
        applied(graph, p)
    a, b = (estimate_latency(graph, hw, p, dtype).latency_s for p in plans)
    assert b <= a * (1 + 1e-12)
    assert a <= estimate_latency(graph, hw, None, dtype).latency_s * (1 + 1e-12)


def test_plan_effects_feed_latency(resnet50_graph) -> None:
    plan = Plan.from_dict({"layers": {"layer1.0.conv1": {"sparsity": 0.5, "pattern": "channel"}}})
    eff = apply_plan(resnet50_graph, plan)
    dense, pruned = estimate_latency(resnet50_graph, "rtx3090"), estimate_latency(resnet50_graph, "rtx3090", plan)
    assert pruned.layers["layer1.0.conv2"].latency_s < dense.layers["layer1.0.conv2"].latency_s
    assert eff["layer1.0.conv2"].in_keep == 0.5


def test_a_calibration_file_states_what_was_measured(tmp_path) -> None:
    """The TOML read on its own (tomllib, not the writer's parser) gives the figures calibrate measured."""
    import tomllib

    from costplan.hardware import load_profile
    from costplan.hardware.calibrate import calibrate, profile_toml

    c = calibrate(quick=True, progress=False, strict=False)
    text = profile_toml(c)
    data = tomllib.loads(text)
    assert data["peak_tflops"]["float32"] * 1e12 / 2 == pytest.approx(c.peak_macs, rel=1e-5)
    assert data["memory"]["bandwidth_gbs"] * 1e9 == pytest.approx(c.bandwidth, rel=1e-3)
    assert data["memory"]["onchip_bandwidth_gbs"] * 1e9 == pytest.approx(c.onchip_bandwidth, rel=1e-3)
    assert data["memory"]["norm_gbs"] * 1e9 == pytest.approx(c.rated_bandwidth["norm"], rel=1e-3)
    assert data["overhead"]["per_op_us"] * 1e-6 == pytest.approx(c.per_op_s, rel=1e-3)
    for kind, fit in c.fits.items():
        assert data["efficiency"][kind] == pytest.approx(c.efficiency[kind], rel=1e-3)
        assert data["overhead"]["per_class_us"][kind] * 1e-6 == pytest.approx(fit.fixed_s, rel=1e-3, abs=1e-9)
        written = data["efficiency"]["half_util_dims"][kind]
        assert written == pytest.approx([v if v >= 1e-3 else 0 for v in fit.half_dims], rel=1e-3)
    assert data["threads"] == c.threads and data["channel_multiple"] == c.channel_multiple
    assert data["memory"]["weights_overlap"] is False and not c.profile().weights_overlap
    assert data["efficiency"]["strided"]["conv"] == pytest.approx(c.fits["conv"].strided, rel=1e-3)
    assert c.profile().strided["conv"] == pytest.approx(c.fits["conv"].strided, rel=1e-3)
    assert "self-check (held-out networks" in text and "interleaved rounds" in text    # the header grades it
    assert set(c.quality.check) == {"resnet18", "mobilenet_v2", "transformer encoder"}
    if platform.libc_ver()[0] == "glibc":     # timed without page faults, and the header says so
        assert c.kept_memory and "keeping freed memory" in text
        assert "first_touch_gbs" not in data["memory"] and "first_touch" not in c.samples   # nothing faults
    path = tmp_path / "local.toml"
    path.write_text(text)
    assert load_profile(path).bandwidth == pytest.approx(c.bandwidth, rel=1e-3)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_kept_memory_stops_page_faults_between_calls() -> None:
    """With glibc's defaults a 64 MiB tensor allocated and freed in a loop is mapped afresh and
    faults its 16,384 pages in every time; after keep_freed_memory() (as calibrate times) it reuses
    them once the heap has grown (a few calls). A fresh process each way: the setting lasts for the
    process."""
    import subprocess
    import sys

    code = ("import resource, sys, torch\n"
            "from costplan.hardware.timing import keep_freed_memory\n"
            "assert sys.argv[1] == 'default' or keep_freed_memory()\n"
            "for _ in range(4):\n    torch.empty(2 ** 24).fill_(1.0)\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for _ in range(5):\n    torch.empty(2 ** 24).fill_(1.0)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")

    def faults(mode: str) -> int:
        return int(subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                                  check=True).stdout)

    assert faults("default") > 5 * 10_000
    assert faults("kept") < 1_000


def test_measure_warns_when_forward_passes_fault_pages_in() -> None:
    """measure counts page faults per timed pass and says what they cost and how to avoid them."""
    from costplan.measure import FAULTS_NOTED, Comparison, fault_warning
    from costplan.render import measure_table

    assert fault_warning(None) is None and fault_warning(FAULTS_NOTED - 1) is None
    said = fault_warning(78_668)
    assert "78,668 page faults (322 MB" in said and "MALLOC_MMAP_MAX_=0" in said
    c = Comparison(model="m", hardware="h", input_shapes=((1, 3),), predicted_ms=1.0, measured_ms=2.0,
                   measured_runs_ms=(2.0,), layers=(), page_faults_per_run=78_668)
    assert c.warnings == (said,) and c.to_dict()["warnings"] == [said]
    assert "78,668 page faults" in str(measure_table(c)[1])
    assert Comparison(**{**c.__dict__, "page_faults_per_run": 0.0}).warnings == ()


def test_robust_timing_takes_quiet_blocks_and_reports_noise() -> None:
    from costplan.hardware.timing import robust, round_robin

    spell = robust([1.0, 2.6, 1.02, 3.1, 2.9])          # three of five blocks in a busy spell
    fluke = robust([1.6, 1.0, 1.7, 1.65, 1.62])         # one block unlike all the others
    assert spell.seconds == 1.0 and spell.noise == pytest.approx(0.02)   # two quiet blocks agree
    assert fluke.seconds == 1.0 and fluke.noise == pytest.approx(0.6)    # the lowest stands alone
    ticks = iter([0.5] * 4 + [0.5, 0.9, 0.5, 0.5, 0.5, 0.5, 0.9, 0.5] * 3)   # two warm-up calls, then blocks
    timings = round_robin({"a": lambda: next(ticks), "b": lambda: 0.001}, rounds=3, block_s=0.0)
    assert timings["a"].seconds == 0.5 and timings["b"].noise == 0.0



def test_shuffled_rounds_spread_a_fast_spell_over_every_kind_of_probe() -> None:
    """The machine runs fast for the first 20 calls of each round after the first. In a fixed order
    the first 20 probes always catch the spell and the other 20 never do: two kinds timed 2x apart
    on the same machine. In a new order each round nearly every probe catches it once."""
    from costplan.hardware.timing import round_robin

    calls = [10 ** 6]

    def probe() -> float:
        calls[0] += 1
        return 1.0 if calls[0] <= 20 else 2.0

    def new_round(r: int) -> None:
        calls[0] = 0

    probes = {f"p{i}": probe for i in range(40)}
    fixed = round_robin(probes, 6, block_s=0.0, on_round=new_round)
    assert sum(t.seconds == 1.0 for t in fixed.values()) == 20
    calls[0] = 10 ** 6
    shuffled = round_robin(probes, 6, block_s=0.0, on_round=new_round, shuffle=0)
    assert sum(t.seconds == 1.0 for t in shuffled.values()) >= 36
    assert all(len(t.blocks) == 6 for t in shuffled.values())


def test_a_machine_that_changes_speed_between_rounds_is_named_in_the_profile() -> None:
    """Forty probes with scattered noise; in rounds 3 and 4 every probe runs 1.3x slower (a VM whose
    host got busy). The speed by round sees the 30% through the noise, and the profile's header warns;
    the same probes without the slow spell show no drift and no warning."""
    import random

    from costplan.hardware.calibrate import Quality
    from costplan.hardware.timing import robust, speed_by_round

    rng = random.Random(0)
    base = [rng.uniform(1e-4, 1e-2) for _ in range(40)]

    def timings(slow: float) -> dict[str, object]:
        out = {}
        for i, t in enumerate(base):
            blocks = [t * (1 + abs(rng.gauss(0, 0.03))) * (slow if r in (2, 3) else 1.0) for r in range(6)]
            blocks[rng.randrange(6)] *= 1.5            # one busy block per probe, in no particular round
            out[f"p{i}"] = robust(blocks)
        return out

    drifting = speed_by_round(timings(1.3), 6)
    assert max(drifting) / min(drifting) == pytest.approx(1.3, rel=0.05)
    steady = speed_by_round(timings(1.0), 6)
    assert max(steady) / min(steady) < 1.05
    said = Quality(200, 6, 0.02, 0.01, 0, 0.0, speed=drifting)
    assert said.drift == pytest.approx(0.3, abs=0.05)
    assert any("speed changed by 3" in w for w in said.warnings())
    assert any("machine speed by round" in line for line in said.lines())
    assert Quality(200, 6, 0.02, 0.01, 0, 0.0, speed=steady).warnings() == []

def test_the_load_meter_sees_another_process() -> None:
    import subprocess
    import sys
    import time

    from costplan.hardware.timing import LoadMeter

    meter = LoadMeter()
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        time.sleep(0.3)
        meter.start()
        time.sleep(1.5)
        load = meter.stop()
    finally:
        busy.kill()
    assert load is not None and load > 0.5     # one busy loop: about one core


def test_a_busy_machine_gets_no_profile(tmp_path) -> None:
    from costplan.hardware.calibrate import ClassFit, Quality, refusal

    fits = {"conv": ClassFit(1e11, (1.0, 1.0, 1.0), 0.0, 0.08)}
    quiet = Quality(200, 6, 0.02, 0.01, 3, 0.05)
    assert refusal(quiet, fits) is None
    busy = refusal(Quality(200, 6, 0.02, 0.01, 3, 0.95), fits)
    assert "other processes kept 0.95 cores busy" in busy and "no profile was written" in busy
    noisy = refusal(Quality(200, 6, 0.18, 0.45, 60, 0.0), fits)
    assert "45% of the timings still varied" in noisy
    assert "conv 40%" in refusal(quiet, {"conv": ClassFit(1e11, (1.0, 1.0, 1.0), 0.0, 0.40)})


def test_calibration_fit_recovers_known_parameters() -> None:
    """Timings made by the model itself (rate 50 GMAC/s, halves 40/24/16, 30 us fixed) with 5%
    noise on a third of them: the fit finds the parameters and the calibrated prediction matches
    the roofline's for the same layer."""
    import numpy as np

    from costplan.hardware.calibrate import _memory_seconds, fit_class, sample_shapes

    shapes = sample_shapes("conv", 48, seed=3)
    memory = _memory_seconds(shapes, 20e9, 40e9, 32e6)
    u = np.array([s.rows / (s.rows + 40) * s.outputs / (s.outputs + 24) * s.reduction / (s.reduction + 16) for s in shapes])
    seconds = np.maximum(np.array([s.macs for s in shapes]) / (50e9 * u), memory) + 5e-6 + 30e-6
    seconds[::3] *= 1.05
    fit = fit_class(shapes, list(seconds), memory, per_op=5e-6)
    assert fit.rate == pytest.approx(50e9, rel=0.05)
    assert fit.half_dims == pytest.approx((40, 24, 16), rel=0.25)
    assert fit.fixed_s == pytest.approx(30e-6, rel=0.25)
    assert fit.median_error < 0.03
    # outliers: a busy spell triples a tenth of the timings; the robust loss keeps the parameters
    spiked = seconds.copy()
    spiked[1::10] *= 3.0
    robust_fit = fit_class(shapes, list(spiked), memory, per_op=5e-6)
    assert robust_fit.rate == pytest.approx(50e9, rel=0.10)
    # the fixed cost is under a third of the smallest layer's time, so spikes may move it; what
    # must hold is that the robust fit still predicts the clean timings
    fitted_u = np.array([np.prod([d / (d + h) for d, h in zip((s.rows, s.outputs, s.reduction), robust_fit.half_dims)])
                         for s in shapes])
    predicted = (np.maximum(np.array([s.macs for s in shapes]) / (robust_fit.rate * fitted_u), memory) + 5e-6
                 + robust_fit.fixed_s)
    clean = seconds / np.where(np.arange(len(seconds)) % 3 == 0, 1.05, 1.0)
    assert np.median(np.abs(predicted / clean - 1)) < 0.05
    assert robust_fit.median_error < 0.05        # the median error marks the fit good, the spikes as off
    assert fit.strided == pytest.approx(1.0, abs=0.03)       # these timings treat strides alike
    # strided convolutions at 0.8 of the rate: the fit finds the factor instead of blending the two
    slower = np.where([s.stride > 1 for s in shapes], 1 / 0.8, 1.0)
    timed = np.maximum(np.array([s.macs for s in shapes]) / (50e9 * u) * slower, memory) + 5e-6 + 30e-6
    assert fit_class(shapes, list(timed), memory, per_op=5e-6).strided == pytest.approx(0.8, rel=0.05)


def test_batch_norm_costs_a_fixed_part_and_its_bytes() -> None:
    """fit_linear recovers 40 us + bytes / 25 GB/s; a profile with those figures prices a batch norm
    on 64x56x56 (0.8 MB in, 0.8 MB out) at per-op + 40 us + 1.6 MB / 25 GB/s."""
    import torch

    from costplan.hardware.calibrate import fit_linear

    samples = [(b, 5e-6 + 40e-6 + b / 25e9) for b in (0.4e6, 1.6e6, 6.4e6, 3.2e6)]
    fixed, rate = fit_linear(samples, per_op=5e-6)
    assert fixed == pytest.approx(40e-6) and rate == pytest.approx(25e9)
    profile = parse_profile({**TOY, "memory": {**TOY["memory"], "norm_gbs": 25.0},
                             "overhead": {"per_op_us": 1.0, "per_class_us": {"norm": 40.0}}}, "toy")
    layer = load_graph(torch.nn.BatchNorm2d(64).eval(), input="1x64x56x56").layers[0]
    lat = layer_latency(layer, Effective(0, layer.params), profile, "float32")
    nbytes = 2 * 64 * 56 * 56 * 4
    assert lat.memory_s == pytest.approx(layer.weights_read * 4 / 1e11 + nbytes / 25e9)  # norm rate, not 1e11
    assert lat.latency_s == pytest.approx(41e-6 + lat.memory_s)


def test_outputs_over_the_fresh_page_size_pay_for_first_touch() -> None:
    """A 1x1 conv writing 8x96x112x112 floats (38.5 MB, over 32 MiB) faults its pages in at
    2 GB/s on a profile that says so; the same conv at batch 4 (19.3 MB) and an in-place ReLU do not."""
    import torch

    data = {**TOY, "memory": {**TOY["memory"], "fresh_output_mb": 33.554432, "first_touch_gbs": 2.0}}
    profile, plain = parse_profile(data, "toy"), parse_profile(TOY, "toy")
    for batch, fresh in ((8, True), (4, False)):
        layer = load_graph(torch.nn.Conv2d(16, 96, 1, bias=False), input=f"{batch}x16x112x112").layers[0]
        eff = Effective(layer.macs, layer.params)
        extra = layer_latency(layer, eff, profile, "float32").memory_s - layer_latency(layer, eff, plain, "float32").memory_s
        assert extra == pytest.approx(batch * 96 * 112 * 112 * 4 / 2e9 if fresh else 0.0)
    relu = load_graph(torch.nn.ReLU(inplace=True), input="8x96x112x112").layers[0]
    assert relu.aten_ops == ("aten.relu_.default",)
    assert layer_latency(relu, Effective(0, 0), profile, "float32") == layer_latency(relu, Effective(0, 0), plain, "float32")


def test_calibration_shapes_are_the_gemms_the_roofline_sees() -> None:
    """The fit's half-dimensions are read back by roofline.dims: both must count rows, outputs and
    reduction (inputs x kernel window) alike, or a 3x3 conv's reduction half is off by 9x; a grouped
    convolution is the GEMM one group runs (8 outputs, 8 x 9 reduction for groups of 8)."""
    from costplan.hardware.calibrate import Shape, _module, sample_shapes

    grouped = Shape("conv", 64, 64, 14, 3, 1, 2, groups=8)
    assert (grouped.outputs, grouped.reduction, grouped.macs) == (8, 72, 2 * 14 * 14 * 64 * 72)
    shapes = [s for kind in ("gemm", "conv", "pointwise", "depthwise") for s in sample_shapes(kind, 4, seed=7)]
    assert any(s.groups > 1 for s in sample_shapes("conv", 48, seed=1))
    for shape in [*shapes, grouped]:
        module, x = _module(shape)
        layer = next(l for l in load_graph(module, input="x".join(map(str, x.shape))).layers if l.macs)
        seen = dims(layer, Effective(layer.macs, layer.params))
        assert (seen.rows, seen.outputs, seen.reduction) == (shape.rows, shape.outputs, shape.reduction), shape
        assert layer.macs == shape.macs


def test_a_calibrated_profile_warns_on_convolutions_it_never_timed() -> None:
    """Calibration probes 2-D convolutions and linear layers; a 1-D convolution network on its
    profile is estimated with a warning naming the layers (they ran 2x slower than predicted on the
    MNIST-1D network of benchmarks/planning_quality.py). 2-D networks and shipped profiles get none."""
    import torch

    import costplan
    from tests.conftest import SmallCNN

    calibrated = "tests/data/avx2-calibrated.toml"
    conv1d = torch.nn.Sequential(torch.nn.Conv1d(1, 16, 5), torch.nn.ReLU(), torch.nn.Conv1d(16, 16, 3),
                                 torch.nn.Flatten(), torch.nn.Linear(16 * 34, 10))
    graph = costplan.load_graph(conv1d, input="8x1x40")
    (warning,) = costplan.estimate_latency(graph, calibrated).warnings
    assert "1-D/3-D convolutions ('0' and 1 more) were never timed" in warning
    assert costplan.estimate_latency(graph, "cpu-xeon").warnings == ()
    assert costplan.estimate_latency(costplan.load_graph(SmallCNN(), input="1x3x8x8"), calibrated).warnings == ()


def test_a_held_out_network_is_timed_on_its_second_call_in_a_row() -> None:
    """Users time repeated inference: a check probe runs the network once untimed, then times the
    next call (here the first of each pair sleeps 50 ms, the second does not)."""
    import time

    import torch

    from costplan.hardware.calibrate import check_probes
    from costplan.models import Instance

    class Alternating(torch.nn.Module):
        calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            Alternating.calls += 1
            if Alternating.calls % 2:
                time.sleep(0.05)
            return x

    (kind, _, probe, _), = check_probes({"net": Instance(Alternating(), (torch.zeros(1),))}).values()
    assert kind == "check" and probe() < 0.02 and Alternating.calls == 2


def test_fused_attention_is_its_own_class_with_gemm_figures_by_default() -> None:
    """softmax(Q K^T) V over 8 heads x 64 tokens x 32 wide (2.1 MMAC) as one fused kernel: its GEMM is
    512 rows x 32 outputs x 64 keys; a profile with attention figures (efficiency 0.25, half at 64
    keys: utilisation 1/2) gives 2.1 MMAC / (1e12 x 0.25 x 0.5) = 16.8 us, one without gives it the
    GEMM's (0.5, no curve): 4.2 us."""
    import torch

    from costplan.hardware.roofline import op_class
    from costplan.trace import trace

    class Attention(torch.nn.Module):
        def forward(self, q: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.scaled_dot_product_attention(q, q, q)

    graph = trace(Attention(), (torch.randn(1, 8, 64, 32),))
    (layer,) = [l for l in graph.layers if l.macs]
    assert op_class(layer) == "attention" and layer.macs == 8 * 64 * 64 * 64
    eff = Effective(layer.macs, 0)
    shape = dims(layer, eff)
    assert (shape.rows, shape.outputs, shape.reduction) == (512, 32, 64)
    tuned = parse_profile({**TOY, "efficiency": {**TOY["efficiency"], "attention": 0.25,
                                                 "half_util_dims": {"attention": [0, 0, 64]}}}, "toy")
    assert layer_latency(layer, eff, tuned, "float32").compute_s == pytest.approx(layer.macs / (1e12 * 0.25 * 0.5))
    plain = parse_profile(TOY, "toy")
    assert plain.efficiency["attention"] == plain.efficiency["gemm"]
    assert layer_latency(layer, eff, plain, "float32").compute_s == pytest.approx(layer.macs / (1e12 * 0.5))


def test_a_lasting_load_is_refused_without_timing_every_round(monkeypatch) -> None:
    """Load is read after every round; from the second on, a load over the limit refuses at once
    rather than after the whole timing (52 s with one core busy here). A limit of -1 core is
    exceeded by any load; one cheap probe stands in for the microbenchmarks."""
    import costplan.hardware.calibrate as calibration
    from costplan.errors import CostplanError
    from costplan.hardware.timing import timed

    monkeypatch.setattr(calibration, "_probes", lambda *_: {"tick": ("overhead", 0.0, timed(lambda: None), 1.0)})
    with pytest.raises(CostplanError, match="after 2 of 4 rounds of timing, the machine was too busy"):
        calibration.calibrate(quick=True, progress=False, check=False, load_limit=-1.0)
