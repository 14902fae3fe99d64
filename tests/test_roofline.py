"""Roofline latency (costplan/hardware/roofline.py): hand-computed layers, GEMM dimensions, op-class
rates, and what each device gains from each sparsity pattern."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costplan.api import analyze, estimate_latency, load_graph
from costplan.errors import CostplanError
from costplan.hardware import load_profile
from costplan.hardware.profile import parse_profile
from costplan.hardware.roofline import algorithm_speedup, dims, layer_latency
from costplan.planfile import Plan
from costplan.sparsity import Effective, apply_plan
from tests.conftest import SHIPPED, TOY, applied, graph_of, whole_groups


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


def test_channels_off_the_tile_run_at_their_factor_of_the_rate() -> None:
    """``[efficiency] off_tile = { depthwise = 0.5 }`` with a tile of 16: a depthwise convolution of 72
    channels (MobileNet-v3's) takes twice its utilisation's compute time, one of 64 or 80 does not, nor one
    pruned from 80 to 64; pruned from 80 to 72 it is off the tile again. A 1x1 convolution 72 wide is off the
    tile too (it runs padded to 80), so the pointwise factor applies to it and not to one 64 wide."""
    from torch.nn import Conv2d

    base = {**TOY, "channel_multiple": 16,
            "efficiency": {"conv": 0.5, "depthwise": 0.5, "pointwise": 0.5,
                           "half_util_dims": {"depthwise": [0, 0, 0], "pointwise": [0, 0, 0]}}}
    plain = parse_profile(base, "toy")
    off = parse_profile({**base, "efficiency": {**base["efficiency"],
                                                "off_tile": {"depthwise": 0.5, "pointwise": 0.8}}}, "toy")

    def ratio(module: Conv2d, keep: float = 1.0) -> float:
        layer = load_graph(module, input=f"1x{module.in_channels}x28x28").layers[0]
        eff = Effective(layer.macs * keep, layer.params * keep, in_keep=keep, out_keep=keep)
        return layer_latency(layer, eff, off, "float32").compute_s / layer_latency(layer, eff, plain, "float32").compute_s

    assert ratio(Conv2d(72, 72, 3, padding=1, groups=72)) == pytest.approx(2.0)
    assert ratio(Conv2d(64, 64, 3, padding=1, groups=64)) == ratio(Conv2d(80, 80, 3, padding=1, groups=80)) == 1.0
    assert ratio(Conv2d(80, 80, 3, padding=1, groups=80), 64 / 80) == 1.0
    assert ratio(Conv2d(80, 80, 3, padding=1, groups=80), 72 / 80) == pytest.approx(2.0)
    assert ratio(Conv2d(72, 64, 1)) == pytest.approx(1 / 0.8) and ratio(Conv2d(64, 64, 1)) == 1.0
    assert plain.off_tile == {} and off.off_tile == {"depthwise": 0.5, "pointwise": 0.8}


def test_a_1x1_convolution_runs_channels_under_one_tile_as_a_whole_tile() -> None:
    """On a CPU of tile 16 a 3x3 convolution reads 8 input channels unpadded (half the math of 16), but
    oneDNN's 1x1 kernel reads and writes whole tiles: 8 to 8 channels over 8 x 28 x 28 ran 137 us against
    88 us for 16 to 16, 64 to 8 as 64 to 16. So a 1x1 of 8 to 8, built so or cut from 16 by a plan, is
    priced as 16 to 16, and a plan halving a 1x1's 16 inputs saves it nothing."""
    from torch.nn import Conv2d

    cpu = parse_profile({**TOY, "kind": "cpu", "channel_multiple": 16,
                         "efficiency": {"conv": 0.5, "pointwise": 0.5,
                                        "half_util_dims": {"conv": [0, 0, 0], "pointwise": [0, 0, 0]}}}, "toy")

    def compute_s(module: Conv2d, in_keep: float = 1.0) -> float:
        layer = load_graph(module, input=f"8x{module.in_channels}x28x28").layers[0]
        eff = Effective(layer.macs * in_keep, layer.params * in_keep, in_keep=in_keep)
        return layer_latency(layer, eff, cpu, "float32").compute_s

    assert compute_s(Conv2d(8, 8, 1)) == pytest.approx(compute_s(Conv2d(16, 16, 1)))
    assert compute_s(Conv2d(64, 8, 1)) == pytest.approx(compute_s(Conv2d(64, 16, 1)))
    assert compute_s(Conv2d(16, 16, 1), in_keep=0.5) == pytest.approx(compute_s(Conv2d(16, 16, 1)))
    assert compute_s(Conv2d(8, 16, 3, padding=1)) == pytest.approx(compute_s(Conv2d(16, 16, 3, padding=1)) / 2)


def test_a_cpu_convolution_writes_outputs_under_one_tile_as_a_whole_tile() -> None:
    """On a CPU of tile 16 a convolution built with 8 outputs runs as one with 16 (32 to 8 channels over
    64 x 40 steps: 197 us, 32 to 16: 199 us), as one pruned from 32 to 8 does: the plan and its compacted
    model are priced alike. A GPU profile keeps a built width under its tile."""
    from torch.nn import Conv1d

    cpu = parse_profile({**TOY, "kind": "cpu", "channel_multiple": 16,
                         "efficiency": {"conv": 0.5, "conv1d": 0.5, "half_util_dims": {"conv": [0, 0, 0]}}}, "toy")

    def compute_s(profile, cout: int, keep: float = 1.0) -> float:
        layer = load_graph(Conv1d(32, cout, 3, padding=1), input="64x32x40").layers[0]
        eff = Effective(layer.macs * keep, layer.params * keep, out_keep=keep)
        return layer_latency(layer, eff, profile, "float32").compute_s

    assert compute_s(cpu, 8) == pytest.approx(compute_s(cpu, 16)) == pytest.approx(compute_s(cpu, 32, 0.25))
    gpu = parse_profile({**TOY, "kind": "gpu", "channel_multiple": 16}, "toy")
    assert compute_s(gpu, 8) == pytest.approx(compute_s(gpu, 16) / 2)


def test_which_convolutions_onednn_runs_one_output_tile_a_pass() -> None:
    """oneDNN's AVX-512 init_conf, by hand: its explicit-broadcast kernel (windows up to 3 wide over rows
    longer than 28, or any 3-D window but for one sample over short rows) with a tile count of 7, 11 or
    13 (112, 176, 208 outputs) computes one tile a pass; 96, 128 and 192 outputs (6, 8, 12 tiles) share
    passes; a 5-wide window, 14 x 14 rows, a strided layer of at most 192 outputs over 28 rows and an
    8-lane tile never take that path. All were timed so on a 2-core EPYC (0.74-0.80 of the rate)."""
    from costplan.hardware.roofline import ConvGeometry, one_tile_a_pass

    def one_pass(kw, ow, oh, batch, ndim, outputs, inputs=128, strided=False, multiple=16):
        return one_tile_a_pass(ConvGeometry(kw, ow, oh, batch, ndim), outputs, inputs, strided, multiple)

    assert [one_pass(3, 198, 1, 16, 1, w) for w in (96, 112, 128, 176, 192, 208)] == [False, True, False, True, False, True]
    assert not one_pass(5, 196, 1, 16, 1, 112) and one_pass(2, 199, 1, 16, 1, 112)
    assert one_pass(3, 56, 56, 1, 2, 112) and not one_pass(3, 14, 14, 8, 2, 112)
    assert one_pass(3, 28, 28, 2, 2, 208, strided=True) and not one_pass(3, 28, 28, 2, 2, 176, strided=True)
    assert one_pass(3, 8, 8, 2, 3, 112) and not one_pass(3, 8, 8, 1, 3, 112)
    assert one_pass(3, 13, 13, 2, 2, 112, inputs=256) and not one_pass(3, 13, 13, 2, 2, 112, inputs=128)
    assert not one_pass(3, 198, 1, 16, 1, 112, multiple=8) and not one_pass(3, 198, 1, 16, 1, 16)


def test_a_convolution_run_one_tile_a_pass_is_priced_at_its_factor_even_pruned_to_it() -> None:
    """``[efficiency] one_tile_pass = { conv = 0.75 }`` on a tile of 16: a 1-D convolution of 112 outputs
    over 200 steps (the text CNN's shape, measured -36% before) takes 1/0.75 of its utilisation's time,
    conv1d taking conv's factor; one of 128 does not. A plan cutting 128 outputs to 112 is priced as
    the 112-wide layer is, slower than the 128 it pruned (as timed); to 96 it is faster again."""
    from torch.nn import Conv1d

    base = {**TOY, "channel_multiple": 16,
            "efficiency": {"conv": 0.5, "conv1d": 0.5, "half_util_dims": {"conv": [0, 0, 0]}}}
    plain = parse_profile(base, "toy")
    factor = parse_profile({**base, "efficiency": {**base["efficiency"], "one_tile_pass": {"conv": 0.75}}}, "toy")

    def compute_s(profile, cout: int, keep: float = 1.0) -> float:
        layer = load_graph(Conv1d(128, cout, 3), input="16x128x200").layers[0]
        eff = Effective(layer.macs * keep, layer.params * keep, out_keep=keep)
        return layer_latency(layer, eff, profile, "float32").compute_s

    assert compute_s(factor, 112) == pytest.approx(compute_s(plain, 112) / 0.75)
    assert compute_s(factor, 128) == compute_s(plain, 128) and compute_s(factor, 96) == compute_s(plain, 96)
    assert compute_s(factor, 128, 112 / 128) == pytest.approx(compute_s(factor, 112))
    assert compute_s(factor, 128, 112 / 128) > compute_s(factor, 128) > compute_s(factor, 128, 96 / 128)
    assert factor.one_tile_pass == {"conv": 0.75} and plain.one_tile_pass == {}


def test_a_convolution_pays_its_layout_reorders_beside_its_math_where_the_profile_says() -> None:
    """``memory.layout_reorders = true`` (calibrated CPUs): a convolution's input is converted to the
    kernels' blocked layout and its output back, one more read and write of each, before and after the
    kernel: 2 x (input + output) / bandwidth on top of the roofline, whether the layer is bound by its
    math (a 3x3 conv) or its bytes (a depthwise one). Linear layers and profiles without the flag pay none."""
    from torch.nn import Conv2d, Linear

    plain = parse_profile({**TOY, "efficiency": {"gemm": 0.5, "conv": 0.5, "depthwise": 0.5}}, "toy")
    reordering = replace(plain, layout_reorders=True)
    for module, shape, reordered in ((Conv2d(64, 64, 3, padding=1), "1x64x32x32", True),
                                     (Conv2d(16, 16, 3, padding=1, groups=16), "8x16x64x64", True),
                                     (Linear(64, 64), "8x64", False)):
        layer = load_graph(module, input=shape).layers[0]
        eff = Effective(layer.macs, layer.params)
        before, after = (layer_latency(layer, eff, p, "float32") for p in (plain, reordering))
        moved = (layer.act_in_bytes + layer.act_out_bytes) / 1e11          # TOY: 100 GB/s, nothing on chip
        assert after.latency_s - before.latency_s == pytest.approx(2 * moved if reordered else 0.0)
        assert after.bound == before.bound


def test_a_plan_is_priced_on_the_kernel_its_compacted_model_runs() -> None:
    """PyTorch picks im2col or oneDNN for a convolution from the input it is given: a 3x3 over 14 x 14
    reading 256 channels runs oneDNN (50,176 elements), cut to 96 it runs im2col (18,816, under 20,480).
    A plan is priced as its compacted model is, layer by layer: ResNet-18 planned at 1.50x had been
    priced 2.3% faster than its compacted model, its three such layers at the conv class's rate."""
    import torch

    import costplan
    from costplan.hardware.roofline import cost_kind
    from tests.conftest import calibrated_cpu

    profile = calibrated_cpu()
    model = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.Conv2d(16, 256, 3, padding=1),
                                torch.nn.ReLU(), torch.nn.Conv2d(256, 64, 3, padding=1)).eval()
    graph = load_graph(model, input="1x16x14x14")
    plan = costplan.uniform_plan(graph, "channel", 0.625)            # 256 -> 96 channels into '3'
    pruner = costplan.Pruner(model, plan, graph=graph)
    pruner.prune()
    small = load_graph(pruner.compact().eval(), input="1x16x14x14")
    assert small.layer("3").in_shapes[0][1] == 96
    assert cost_kind(graph.layer("3"), profile) == "conv" and cost_kind(small.layer("3"), profile) == "im2col"
    planned, compacted = estimate_latency(graph, profile, plan), estimate_latency(small, profile)
    for name in ("1", "3"):
        assert planned.layers[name].latency_s == pytest.approx(compacted.layers[name].latency_s, rel=1e-9), name
    assert planned.latency_s == pytest.approx(compacted.latency_s, rel=1e-9)
    assert planned.layers["3"].kind == compacted.layers["3"].kind == "im2col"
    assert estimate_latency(graph, profile).layers["3"].kind == "conv"
    # on a profile that never timed im2col, the plan's estimate names the layer it turned into one
    untimed = replace(profile, calibrated=tuple(k for k in profile.calibrated if k != "im2col"))
    said = "convolution of one small sample (PyTorch runs it as im2col and a GEMM): this model's "
    assert any(said + "3 ('0', '1', '3')" in w for w in estimate_latency(graph, untimed, plan).warnings)
    assert any(said + "3 ('0', '1', '3')" in w for w in estimate_latency(small, untimed).warnings)
    assert any(said + "2 ('0', '1')" in w for w in estimate_latency(graph, untimed).warnings)   # dense: oneDNN


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


def test_a_width_built_between_tiles_runs_as_the_tile_above() -> None:
    """oneDNN on AVX-512 (tile 16) ran convolutions of 20, 24 and 28 channels as slowly as of 32 and
    of 40 as of 48: a convolution built 24 to 40 wide is priced as one pruned to those widths from 32
    to 48 (both run 32 to 48). GEMMs (linear layers, convolutions run as im2col) and grouped
    convolutions keep the widths they were built with."""
    import torch

    built = load_graph(torch.nn.Conv1d(24, 40, 3, padding=1), input="64x24x20").layers[0]
    pruned = load_graph(torch.nn.Conv1d(32, 48, 3, padding=1), input="64x32x20").layers[0]
    shape = dims(built, Effective(0, 0), multiple=16, onednn_tiling=True)
    assert (shape.outputs, shape.reduction) == (48, 32 * 3) and shape.padding == pytest.approx(48 * 32 / (40 * 24))
    cut = dims(pruned, Effective(0, 0, in_keep=24 / 32, out_keep=40 / 48), multiple=16, onednn_tiling=True)
    assert (cut.rows, cut.outputs, cut.reduction, cut.padding) == pytest.approx(
        (shape.rows, shape.outputs, shape.reduction, shape.padding))
    linear = dims(load_graph(torch.nn.Linear(24, 40), input="64x24").layers[0], Effective(0, 0), multiple=16)
    assert (linear.outputs, linear.reduction, linear.padding) == (40, 24, 1.0)
    assert dims(built, Effective(0, 0), multiple=16, onednn_tiling=True, im2col=True).padding == 1.0
    grouped = load_graph(torch.nn.Conv2d(24, 40, 3, padding=1, groups=8), input="1x24x8x8").layers[0]
    assert dims(grouped, Effective(0, 0), multiple=16).padding == 1.0


def test_on_a_cpu_inputs_pruned_under_one_tile_run_unpadded() -> None:
    """Conv 64->128 keeping 4 of 64 inputs (half a tile of 8): on a CPU the reduction is 4 x 9 (oneDNN
    reads so few channels plain), padded to 8 x 9 elsewhere; outputs under a tile stay padded."""
    layer = _conv_layer()
    eff = Effective(layer.macs / 16 / 2, 0, in_keep=4 / 64, out_keep=4 / 128)
    cpu = dims(layer, eff, multiple=8, onednn_tiling=True)
    assert (cpu.reduction, cpu.outputs) == (4 * 9, 8) and cpu.padding == pytest.approx(2.0)
    assert dims(layer, eff, multiple=8).reduction == 8 * 9
    profile = load_profile(str(Path(__file__).parent / "data" / "avx2-calibrated.toml"))
    half, whole = (layer_latency(layer, Effective(layer.macs * k / 64, 0, in_keep=k / 64), profile, "float32")
                   for k in (4, 8))
    assert half.compute_s < 0.75 * whole.compute_s   # the profile prices what the kernel runs


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


def test_a_batch_of_short_sequences_is_priced_by_its_steps_per_sample() -> None:
    """A conv1d class with a fourth half figure (steps per sample, 4) prices 64 samples of 10 steps
    at 10 / 14 of what one sample of 640 steps attains: the same GEMM rows, 640. A profile of three
    figures prices both alike, and an im2col convolution (a GEMM over unfolded columns) has no steps."""
    import torch

    data = {**TOY, "efficiency": {**TOY["efficiency"], "half_util_dims": {"conv1d": [64, 16, 32, 4]}}}
    four = parse_profile(data, "toy")
    three = parse_profile({**data, "efficiency": {**data["efficiency"], "half_util_dims": {"conv1d": [64, 16, 32]}}},
                          "toy")
    conv = torch.nn.Conv1d(128, 128, 5, padding=2)
    short, long = (load_graph(conv, input=shape).layers[0] for shape in ("64x128x10", "1x128x640"))
    assert (short.macs, dims(short, Effective(short.macs, 0)).rows) == (long.macs, 640)
    assert dims(short, Effective(short.macs, 0)).length == 10
    assert dims(short, Effective(short.macs, 0), im2col=True).length == 0

    def compute(layer, profile):
        return layer_latency(layer, Effective(layer.macs, 0), profile, "float32").compute_s

    assert compute(short, four) / compute(long, four) == pytest.approx((640 / 644) / (10 / 14))
    assert compute(short, three) == pytest.approx(compute(long, three))
    with pytest.raises(CostplanError, match="steps per sample"):
        parse_profile({**data, "efficiency": {**data["efficiency"], "half_util_dims": {"conv1d": [1, 2, 3, 4, 5]}}},
                      "toy")


def test_pooling_moves_at_its_calibrated_rate() -> None:
    import torch

    graph = load_graph(torch.nn.MaxPool2d(3, 2, 1), input="1x64x112x112")
    layer = graph.layers[0]
    profile = parse_profile({**TOY, "memory": {**TOY["memory"], "pooling_gbs": 1.0}}, "toy")
    lat = layer_latency(layer, Effective(0, 0), profile, "float32")
    assert lat.memory_s == pytest.approx((64 * 112 * 112 + 64 * 56 * 56) * 4 / 1e9)
    assert layer_latency(layer, Effective(0, 0), parse_profile(TOY, "toy"), "float32").memory_s < lat.memory_s / 10


def test_a_calibrated_pool_moves_its_input_and_its_output_once_per_window_element() -> None:
    """ResNet's 3x3 stride-2 max-pool on 1x64x112x112 at pooling_gbs = 1: a profile calibrated with
    pool windows moves its input plus 9 x its output (3.2 + 7.2 MB: 10.4 ms); a 2x2 one over the same
    input 3.2 + 4 x 0.8 MB (6.4 ms); a 1-D max-pool of 3 over 8x64x100, 3 x its output beside its input.
    An older profile (no pool_windows) prices input plus output, as it was calibrated."""
    import torch

    windows = parse_profile({**TOY, "memory": {**TOY["memory"], "pooling_gbs": 1.0, "pooling1d_gbs": 1.0,
                                                 "pool_windows": True}}, "toy")
    older = parse_profile({**TOY, "memory": {**TOY["memory"], "pooling_gbs": 1.0}}, "toy")
    image = 64 * 112 * 112 * 4
    for pool, out, window in ((torch.nn.MaxPool2d(3, 2, 1), image / 4, 9), (torch.nn.MaxPool2d(2, 2), image / 4, 4)):
        layer = load_graph(pool, input="1x64x112x112").layers[0]
        assert layer_latency(layer, Effective(0, 0), windows, "float32").memory_s == pytest.approx((image + window * out) / 1e9)
        assert layer_latency(layer, Effective(0, 0), older, "float32").memory_s == pytest.approx((image + out) / 1e9)
    layer = load_graph(torch.nn.MaxPool1d(3, 2, 1), input="8x64x100").layers[0]
    assert layer_latency(layer, Effective(0, 0), windows, "float32").memory_s == pytest.approx(
        (8 * 64 * 100 + 3 * 8 * 64 * 50) * 4 / 1e9)


def test_silu_moves_at_the_sigmoid_rate_and_old_profiles_keep_the_transcendental_one() -> None:
    """SiLU on 1x64x56x56 (0.8 MB in, 0.8 MB out) at sigmoid_gbs = 2 moves 1.6 MB in 0.8 ms; GELU
    stays at transcendental_gbs = 1 (1.6 ms); a file without sigmoid_gbs gives SiLU the
    transcendental rate, as before the two were timed apart."""
    import torch

    from costplan.hardware.opclass import rated_kind

    assert rated_kind("aten.silu_.default") == "sigmoid" and rated_kind("aten.gelu.default") == "transcendental"
    nbytes = 2 * 64 * 56 * 56 * 4
    both = parse_profile({**TOY, "memory": {**TOY["memory"], "transcendental_gbs": 1.0, "sigmoid_gbs": 2.0}}, "toy")
    old = parse_profile({**TOY, "memory": {**TOY["memory"], "transcendental_gbs": 1.0}}, "toy")
    for module, profile, rate in ((torch.nn.SiLU(), both, 2e9), (torch.nn.GELU(), both, 1e9),
                                  (torch.nn.SiLU(), old, 1e9)):
        layer = load_graph(module, input="1x64x56x56").layers[0]
        assert layer_latency(layer, Effective(0, 0), profile, "float32").memory_s == pytest.approx(nbytes / rate)


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


def test_sibling_projections_share_one_launch_and_floor_in_a_fusing_runtime() -> None:
    """q, k and v read one normed activation: TensorRT/vLLM run them as one GEMM, so on the a100's
    fused runtime each pays a third of the launch and of the kernel floor (its math is its own);
    under eager PyTorch each is its own kernel. A linear reading another tensor shares nothing, and
    the planner prices the layers with the same shares."""
    import torch

    class Attention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = torch.nn.LayerNorm(512)
            self.q, self.k, self.v = (torch.nn.Linear(512, 512) for _ in range(3))
            self.out = torch.nn.Linear(512, 512)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.norm(x)
            return self.out(self.q(h) * self.k(h) + self.v(h))

    import costplan

    graph = load_graph(Attention(), input="4096x512")
    a100 = load_profile("a100")
    fused = estimate_latency(graph, a100, dtype="float16")
    eager = estimate_latency(graph, a100, dtype="float16", runtime="eager")
    assert fused.context.shares == {"q": 1 / 3, "k": 1 / 3, "v": 1 / 3} and not eager.context.shares
    assert a100.fuse_siblings and not load_profile("edge-npu").fuse_siblings     # a DPU runs layer by layer
    math_s = eager.layers["q"].compute_s - a100.half_util_s       # 4096x512x512 MACs at the FP16 rate
    for name in ("q", "k", "v"):
        assert fused.layers[name].overhead_s == pytest.approx(a100.per_op_s / 3)
        assert fused.layers[name].compute_s == pytest.approx(math_s + a100.half_util_s / 3)
    assert fused.layers["out"].overhead_s == pytest.approx(a100.per_op_s)
    assert eager.layers["q"].overhead_s == pytest.approx(a100.with_runtime("eager").per_op_s)
    result = costplan.plan(graph, budget="1.05x", hw=a100, dtype="float16", importance="gaussian")
    assert result.solution.latency == pytest.approx(
        estimate_latency(graph, a100, result.plan, dtype="float16").latency_s, rel=1e-9)
    assert result.plan.predicted["dense_latency_ms"] == pytest.approx(fused.latency_s * 1e3, rel=1e-9)


def test_eager_dispatch_overlaps_the_gpu_kernels_it_launches() -> None:
    """PyTorch eager launches asynchronously: on a GPU a layer takes the longer of its host dispatch
    and its kernel, not their sum (summing priced DeepLearningExamples' batch-8 rows 28-46% slow). TF1's
    graph runtime keeps the sum, and a CPU runs dispatch and kernel on one thread."""
    import torch

    small = load_graph(torch.nn.Conv2d(64, 64, 3, padding=1), input="1x64x14x14")
    large = load_graph(torch.nn.Conv2d(256, 256, 3, padding=1), input="64x256x56x56")
    v100 = load_profile("v100")
    eager, graph = v100.with_runtime("eager"), v100.with_runtime("graph")
    assert eager.dispatch_overlaps and not graph.dispatch_overlaps and not load_profile("cpu-xeon").dispatch_overlaps
    for g in (small, large):
        name = g.layers[0].name
        lat = estimate_latency(g, eager).layers[name]
        kernel = max(lat.compute_s, lat.memory_s)
        assert lat.overhead_s == pytest.approx(eager.per_op_s)
        assert lat.latency_s == pytest.approx(max(kernel, eager.per_op_s))
        summed = estimate_latency(g, graph).layers[name]
        assert summed.latency_s == pytest.approx(max(summed.compute_s, summed.memory_s) + graph.per_op_s)
    assert estimate_latency(small, eager).latency_s == pytest.approx(eager.per_op_s)     # the host is the floor
    assert estimate_latency(large, eager).latency_s > 10 * eager.per_op_s                  # the kernel hides it
    # a host-bound estimate says its figure is the host's, which differs between servers
    assert any("host's dispatch" in w for w in estimate_latency(small, eager).warnings)
    assert not any("host's dispatch" in w for w in estimate_latency(large, eager).warnings)
    # the eager runtime's overlap is the profile's, and with_runtime swaps it back and forth
    assert eager.with_runtime("fused").dispatch_overlaps is False and eager.with_runtime("fused") == v100
