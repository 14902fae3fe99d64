"""Every layer kind priced as what runs (costplan/hardware/roofline.py): recurrent layers step by step,
embedding lookups by the rows they read, classes without figures following their leaders, and the
probes calibrate times being the shapes the roofline prices."""

from __future__ import annotations

import os

import pytest
import torch

from costplan.api import load_graph
from costplan.hardware.profile import parse_profile
from costplan.hardware.roofline import estimate, layer_latency, recurrent_cost, weights_touched
from costplan.sparsity import Effective, apply_plan
from costplan.trace import trace
from tests.conftest import TOY


def _layer(module: torch.nn.Module, x: torch.Tensor):
    graph = load_graph(module, input="x".join(map(str, x.shape)))
    return graph, next(l for l in graph.layers if l.macs or l.weights_read)


class _Recurrent(torch.nn.Module):
    def __init__(self, cell: type, batch_first: bool, **kwargs: object) -> None:
        super().__init__()
        self.rnn = cell(24, 16, batch_first=batch_first, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


@pytest.mark.parametrize("cell, kwargs", [(torch.nn.GRU, {}), (torch.nn.LSTM, {"num_layers": 2}),
                                           (torch.nn.RNN, {"bidirectional": True, "num_layers": 2}),
                                           (torch.nn.LSTM, {"bidirectional": True, "proj_size": 8})])
@pytest.mark.parametrize("batch_first", [True, False])
def test_a_recurrent_layer_is_its_projections_and_its_steps(cell, kwargs, batch_first) -> None:
    """The tracer counts the MACs the cell runs; the roofline's step-by-step account of the same
    call (input projections over the sequence, then a hidden-to-gates GEMM per step, every layer and
    direction) adds up to the same MACs, and reads steps and batch off the output however it is laid out."""
    x = torch.randn(5, 7, 24) if batch_first else torch.randn(7, 5, 24)      # batch 5, 7 steps
    _, layer = _layer(_Recurrent(cell, batch_first, **kwargs), x)
    rnn = layer.recurrent
    assert (rnn.steps, rnn.batch, rnn.hidden_size) == (7, 5, 16)
    assert recurrent_cost(rnn, parse_profile(TOY, "toy"), "float32").macs == layer.macs


def test_every_step_pays_its_fixed_cost() -> None:
    """A GRU of 100 steps on a device with 10 us per step (and math and bytes made free) takes
    100 x 10 us per layer and direction plus one dispatch, one projection's fixed cost each: a step
    count priced as one big GEMM (as before) costs one dispatch in all. A cost per call adds once per
    layer and direction."""
    free = {**TOY, "peak_tflops": {"float32": 1e9}, "memory": {"bandwidth_gbs": 1e9, "onchip_mb": 0.0},
            "overhead": {"per_op_us": 5.0, "per_class_us": {"gru": 10.0, "gemm": 2.0}}}
    profile = parse_profile(free, "free")
    model = _Recurrent(torch.nn.GRU, True, num_layers=2, bidirectional=True)
    graph, layer = _layer(model, torch.randn(4, 100, 24))
    latency = layer_latency(layer, apply_plan(graph, None)[layer.name], profile, "float32")
    assert latency.latency_s == pytest.approx(5e-6 + 4 * 2e-6 + 4 * 100 * 10e-6, rel=1e-3)
    assert latency.bound == "overhead"
    # and every call of a layer and direction its cell's fixed cost per call (oneDNN's primitive set-up)
    per_call = parse_profile({**free, "overhead": {**free["overhead"], "per_call_us": {"gru": 300.0}}}, "per call")
    again = layer_latency(layer, apply_plan(graph, None)[layer.name], per_call, "float32")
    assert again.latency_s - latency.latency_s == pytest.approx(4 * 300e-6, rel=1e-3)


def test_spec_sheet_gpus_price_a_step_by_its_kernels_not_a_half_wave() -> None:
    """A GPU profile's kernel floor (half_util_us) is for one big kernel; a recurrent step is
    priced at the plateau plus the profile's fixed cost per step (cuDNN's two launches)."""
    from costplan.hardware import load_profile

    a100 = load_profile("a100")
    assert a100.half_util_macs["gru"] == 0.0 and a100.half_util_s > 0
    graph, layer = _layer(_Recurrent(torch.nn.GRU, True), torch.randn(8, 100, 24))
    latency = layer_latency(layer, apply_plan(graph, None)[layer.name], a100, "float32")
    assert latency.latency_s == pytest.approx(a100.per_op_s + a100.per_class_s["gru"] * 100, rel=0.05)


def test_an_embedding_lookup_reads_the_rows_it_picks() -> None:
    """GPT-2's 50,257-row table looked up by 16 tokens reads 16 rows of 64, not the table (which
    made a lookup dearer than an encoder layer)."""
    table = torch.nn.Embedding(50257, 64)
    ids = torch.randint(0, 50257, (1, 16))
    graph = trace(table, (ids,))
    (layer,) = graph.layers
    assert layer.weights_read == 50257 * 64 and weights_touched(layer) == 16 * 64
    latency = layer_latency(layer, apply_plan(graph, None)[layer.name], parse_profile(TOY, "toy"), "float32")
    # nothing stays on the toy's chip: the rows read, the int64 indices in, the rows written out
    assert latency.dram_bytes == 4 * 16 * 64 + 8 * 16 + 4 * 16 * 64


def test_a_class_without_figures_follows_its_leader() -> None:
    """1-D/3-D convolutions follow 2-D ones and recurrent steps linear layers where a profile gives
    nothing of their own; given, their own figures hold."""
    plain = parse_profile(TOY, "toy")
    assert plain.efficiency_for("float32", "conv1d") == plain.efficiency["conv"] == 0.5
    own = parse_profile({**TOY, "efficiency": {**TOY["efficiency"], "conv1d": 0.25,
                                               "half_util_dims": {"conv": [1, 2, 3]}}}, "own")
    assert own.efficiency_for("float32", "conv1d") == 0.25 and own.efficiency_for("float32", "conv3d") == 0.5
    assert own.class_figure(own.half_util_dims, "conv1d") == (1.0, 2.0, 3.0)
    assert own.class_figure(own.half_util_dims, "gru") is None


def test_calibration_probes_are_what_the_roofline_prices() -> None:
    """A 1-D or 3-D convolution probe is the GEMM roofline.dims gives the traced layer, a recurrent
    probe's step-by-step cost counts the MACs its traced module runs, and a pooling probe's bytes are
    the traced pool's as the roofline prices them."""
    from costplan.hardware.probes import _module, recurrent_shapes, sample_shapes
    from costplan.hardware.roofline import dims

    for shape in [*sample_shapes("conv1d", 4, seed=3), *sample_shapes("conv3d", 3, seed=3)]:
        module, x = _module(shape)
        layer = next(l for l in load_graph(module, input="x".join(map(str, x.shape))).layers if l.macs)
        seen = dims(layer, Effective(layer.macs, layer.params))
        assert (seen.rows, seen.outputs, seen.reduction) == (shape.rows, shape.outputs, shape.reduction), shape
        assert layer.macs == shape.macs
    toy = parse_profile(TOY, "toy")
    for r in recurrent_shapes(6, seed=2):
        graph = trace(r.module(), (torch.randn(r.batch, r.steps, r.inputs),))
        (layer,) = [l for l in graph.layers if l.macs]
        assert layer.recurrent == r.recurrent
        assert recurrent_cost(r.recurrent, toy, "float32").macs == layer.macs
        assert r.macs == r.batch * r.gates * r.hidden ** 2
    # a pooling probe's size is the bytes the roofline prices the traced pool by: input + output x window
    import math

    from costplan.hardware.probes import _pools, pool_probe_bytes
    from costplan.hardware.roofline import pool_bytes

    for pool, x in _pools():
        (layer,) = load_graph(pool, input="x".join(map(str, x.shape))).layers
        traced = pool_bytes(layer.act_in_bytes, layer.act_out_bytes, math.prod(layer.kernel_size))
        assert pool_probe_bytes(pool, x, pool(x)) == traced and math.prod(layer.kernel_size) > 1, pool


def test_each_convolution_probe_runs_the_path_its_class_prices() -> None:
    """PyTorch runs a float32 convolution of one sample over a small input as im2col and a GEMM, any
    other through oneDNN (torch's profiler names the kernel): every convolution probe calibrate draws
    is fitted as the class a calibrated CPU profile prices its traced layer by, 'im2col' exactly for
    those PyTorch runs so, and 1x1 ones of any dimension as 'pointwise'."""
    from torch.profiler import profile

    from costplan.hardware.probes import _module, sample_shapes
    from costplan.hardware.roofline import cost_kind, priced_class

    calibrated = parse_profile(_calibrated_fixture(), "fixture")
    threads = torch.get_num_threads()
    for kind in ("conv", "pointwise", "depthwise", "conv1d", "conv3d", "im2col"):
        for shape in sample_shapes(kind, 4, seed=5):
            module, x = _module(shape)
            # at calibrate's threads, every core (conftest gives each xdist worker its share): on one,
            # PyTorch runs 1x1 convolutions of under 16 samples as im2col too (roofline.runs_im2col)
            torch.set_num_threads(max(2, os.cpu_count() or 1))
            try:
                with torch.inference_mode(), profile() as prof:
                    module.eval()(x)
            finally:
                torch.set_num_threads(threads)
            slow = any("slow_conv" in e.name for e in prof.events())
            assert slow == (kind == "im2col"), (shape, sorted({e.name for e in prof.events()}))
            layer = next(l for l in load_graph(module, input="x".join(map(str, x.shape))).layers if l.macs)
            assert priced_class(layer, calibrated) == kind == cost_kind(layer, calibrated), shape
            assert priced_class(layer, calibrated, precision="bfloat16") != "im2col"
    # a 1x1 convolution over 64 x 20 steps is the 1x1 kernel a 2-D one over 64 x 1 x 20 runs
    _, one = _layer(torch.nn.Conv1d(32, 64, 1, stride=2), torch.randn(64, 32, 40))
    assert priced_class(one, calibrated) == "pointwise"
    # a GPU runs no im2col, and a spec sheet's CPU profile has no fit for it
    from costplan.hardware import load_profile

    _, small = _layer(torch.nn.Conv1d(32, 64, 3), torch.randn(1, 32, 40))
    assert priced_class(small, calibrated) == "im2col"
    assert priced_class(small, load_profile("rtx3090")) == "conv1d" == priced_class(small, load_profile("cpu-xeon"))


def _calibrated_fixture() -> dict:
    import tomllib

    with open("tests/data/avx2-calibrated.toml", "rb") as f:
        return tomllib.load(f)


def test_estimates_say_nothing_of_kinds_a_spec_sheet_profile_prices() -> None:
    """Shipped profiles come from spec sheets and published figures, not calibration: they list no
    calibrated kinds and their estimates carry no calibration warning."""
    model = _Recurrent(torch.nn.LSTM, True)
    graph = load_graph(model, input="2x10x24")
    assert estimate(graph, parse_profile(TOY, "toy"), apply_plan(graph, None)).warnings == ()


def test_gpt2s_conv1d_is_a_linear_layer_not_a_convolution() -> None:
    """transformers' GPT-2 ``Conv1D`` is named like a convolution but is a linear layer with an
    (in, out) weight: priced by the GEMM class (it was priced by the 3x3 convolutions' fit)."""
    from transformers.pytorch_utils import Conv1D

    from costplan.hardware.roofline import cost_kind, op_class

    _, layer = _layer(Conv1D(32, 16), torch.randn(4, 16))
    assert layer.op == "conv1d" and layer.linear_features == (16, 32)
    assert op_class(layer) == "gemm" == cost_kind(layer)
    _, conv = _layer(torch.nn.Conv1d(16, 32, 3), torch.randn(1, 16, 20))
    assert op_class(conv) == "conv1d"
    _, pointwise = _layer(torch.nn.Conv1d(16, 32, 1), torch.randn(1, 16, 20))
    assert op_class(pointwise) == "pointwise"


class _NewGELU(torch.nn.Module):
    """GPT-2's GELU as transformers writes it: eight elementwise kernels in eager PyTorch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(0.7978845608 * (x + 0.044715 * torch.pow(x, 3.0))))


def test_an_unfused_module_pays_for_every_kernel_it_runs() -> None:
    """A memory-only module of eight kernels costs eight dispatches and eight passes over its tensor
    where the runtime runs each op as its own kernel; a fusing runtime folds them into one."""
    graph = load_graph(torch.nn.Sequential(_NewGELU()), input="1x256")
    (layer,) = graph.layers
    assert layer.kernels == 8 and layer.macs == 0
    eff = apply_plan(graph, None)[layer.name]
    toy = parse_profile(TOY, "toy")                       # 1 us per op, nothing on chip, 1e11 B/s
    one_pass = 2 * 4 * 256 / 1e11
    assert layer_latency(layer, eff, toy, "float32").latency_s == pytest.approx(8 * 1e-6 + 8 * one_pass, rel=1e-6)
    fused = parse_profile({**TOY, "overhead": {"per_op_us": 1.0, "fuse_elementwise": True}}, "fused")
    assert layer_latency(layer, eff, fused, "float32").bound == "fused"


def test_a_1d_max_pool_is_priced_as_the_1d_kernel_that_runs() -> None:
    """nn.MaxPool1d reaches the tracer as a 2-D max-pool over a height of 1 but runs a 1-D kernel
    of its own (about 30x the 2-D one's bytes/s here); average pools, 1-D or 2-D, are priced apart."""
    from costplan.hardware.roofline import cost_kind

    def kind(module: torch.nn.Module, shape: str) -> str:
        (layer,) = load_graph(torch.nn.Sequential(module), input=shape).layers
        return cost_kind(layer)

    assert kind(torch.nn.MaxPool1d(2), "8x64x100") == "pooling1d"
    assert kind(torch.nn.MaxPool2d((1, 2)), "1x64x1x100") == "pooling"   # traced alike, but the 2-D kernel
    assert kind(torch.nn.MaxPool2d(2), "1x64x28x28") == "pooling"
    # average pools, 1-D or 2-D, are a kind of their own: 2.4-3x max-pools' rate over the same windows
    assert kind(torch.nn.AvgPool1d(2), "8x64x100") == "avgpool" == kind(torch.nn.AvgPool2d(2), "8x256x56x56")
    assert kind(torch.nn.AdaptiveAvgPool2d(1), "1x64x7x7") == "reduction"


def test_a_linear_layer_whose_weights_overflow_the_cache_is_priced_by_its_own_fit() -> None:
    """GPT-2's vocabulary head (768 x 50,257: 154 MB) streams its weights from DRAM as it computes
    (45 GMAC/s here at 128 rows against 72 for a 9 MB weight; priced as other linear layers, it was
    40% fast): on a calibrated CPU it is 'gemm_dram', at its own efficiency; pruned to 4,096 outputs,
    or a 768 x 4096 layer, it fits half a 32 MB cache; on a GPU it stays 'gemm'. A profile calibrated
    without the class names its share of the time."""
    from costplan.hardware import load_profile
    from costplan.hardware.roofline import cost_kind, priced_class

    head_graph, head = _layer(torch.nn.Linear(768, 50257, bias=False), torch.randn(128, 768))
    _, small = _layer(torch.nn.Linear(768, 4096, bias=False), torch.randn(128, 768))
    fitted = parse_profile({**TOY, "kind": "cpu", "memory": {**TOY["memory"], "onchip_mb": 32.0},
                            "calibrated": ["gemm", "gemm_dram"],
                            "efficiency": {**TOY["efficiency"], "gemm": 0.5, "gemm_dram": 0.25}}, "fitted")
    assert priced_class(head, fitted) == "gemm_dram" == cost_kind(head, fitted)
    assert priced_class(small, fitted) == "gemm" and priced_class(head, load_profile("a100")) == "gemm"
    assert priced_class(head, fitted, weight_bytes=768 * 4096 * 4.0) == "gemm"
    dense = layer_latency(head, apply_plan(head_graph, None)[head.name], fitted, "float32")
    as_gemm = layer_latency(head, apply_plan(head_graph, None)[head.name],
                            parse_profile({**TOY, "kind": "cpu", "memory": {**TOY["memory"], "onchip_mb": 1e6},
                                           "calibrated": ["gemm"], "efficiency": {**TOY["efficiency"], "gemm": 0.5}},
                                          "big cache"), "float32")
    assert dense.compute_s == pytest.approx(2 * as_gemm.compute_s, rel=1e-6)
    older = parse_profile({**TOY, "kind": "cpu", "memory": {**TOY["memory"], "onchip_mb": 32.0},
                           "calibrated": ["gemm"]}, "older")
    (warning,) = estimate(head_graph, older, apply_plan(head_graph, None)).warnings
    assert "linear layer whose weights overflow the cache" in warning and "100%" in warning
