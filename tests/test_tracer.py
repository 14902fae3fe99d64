"""MAC and parameter counts of a trace (costplan/trace/tracer.py, ops.py) against published figures
and torch's own FlopCounterMode."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from costplan.api import analyze, load_graph
from costplan.models import instantiate, resolve
from costplan.trace import trace
from costplan.trace.grids import Grid, _Base, broadcast, meeting_ids, view_grid
from tests.conftest import TwoConvs, graph_of

# (MACs, params) from the issue; the torchvision/HF parameter counts are the published ones.
PINNED = {
    "resnet50": (4_089_184_256, 25_557_032),
    "mobilenet_v2": (300_774_272, 3_504_872),
    "vgg16": (15_470_264_320, 138_357_544),
    "hf:bert-base": (11_174_215_680, 109_482_240),
}


@pytest.mark.parametrize("spec", PINNED)
def test_published_counts(spec: str) -> None:
    graph = graph_of(spec)
    assert (graph.total_macs, graph.total_params) == PINNED[spec]


@pytest.mark.parametrize("spec,params", [
    ("hf:bert-large", 335_141_888), ("hf:gpt2", 124_439_808), ("hf:vit-base", 86_389_248),
    ("hf:llama-7b", 6_738_415_616),
])
def test_published_transformer_params(spec: str, params: int) -> None:
    assert graph_of(spec).total_params == params


def test_bert_attention_is_a_layer(bert_graph) -> None:
    """Q K^T and A V run as one fused attention node, as on a real CPU or GPU (not the matmuls and
    softmax PyTorch decomposes it into on meta): 12 heads x 128 x 128 x (64 + 64) MACs."""
    layer0 = [l for l in bert_graph.layers if l.name.startswith("encoder.layer.0.")]
    assert [l.macs for l in layer0 if l.op == "attention"] == [12 * 128 * 128 * (64 + 64)]
    assert not [l for l in layer0 if l.op in ("matmul", "softmax")]


def test_reuse_table_layers() -> None:
    """Issue 2's table: same MACs, params 147,456 vs 589,824, so reuse 784 vs 196."""
    report = analyze(TwoConvs(), input="1x64x56x56")
    rows = {r.name: r for r in report.layers}
    assert rows["layer0"].macs == rows["layer1"].macs == 115_605_504
    assert (rows["layer0"].params, rows["layer1"].params) == (147_456, 589_824)
    assert (rows["layer0"].reuse, rows["layer1"].reuse) == (784.0, 196.0)
    assert rows["layer1"].act_out_bytes == 14 * 14 * 256 * 4


# Every model must agree with FlopCounterMode / 2 within 0.1%, attribute every parameter to a
# layer, and leave no op unaccounted for. The full torchvision zoo passes (benchmarks/zoo_check.py);
# this is a spread of architectures that runs in seconds.
ZOO = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "densenet121", "inception_v3", "vit_b_16",
       "swin_t", "convnext_tiny", "regnet_y_400mf", "shufflenet_v2_x0_5", "squeezenet1_0",
       "hf:bert-base", "hf:gpt2", "hf:vit-base", "hf:distilbert", "hf:llama-7b"]


@pytest.mark.parametrize("spec", ZOO)
def test_agrees_with_flop_counter_mode(spec: str) -> None:
    source = resolve(spec)
    graph = graph_of(spec)
    inst = instantiate(source, graph.inputs.device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        inst.module(*inst.args, **inst.kwargs)
    reference = counter.get_total_flops() / 2
    assert graph.total_macs == pytest.approx(reference, rel=1e-3)
    assert sum(l.params for l in graph.layers) == graph.total_params
    assert not graph.unsupported


def test_builds_on_meta_and_falls_back_to_real_tensors() -> None:
    assert graph_of("hf:llama-7b").inputs.device == "meta"
    # RegNet's constructor computes its widths with tensors: it runs on the CPU, its weights on meta
    regnet = graph_of("regnet_y_400mf")
    assert regnet.inputs.device == "meta" and regnet.total_params == 4_344_144     # torchvision's count
    assert graph_of("ssdlite320_mobilenet_v3_large").inputs.device == "cpu"   # its forward needs real data


def test_fvcore_cross_check_on_real_weights() -> None:
    """fvcore counts one MAC as one 'flop' for conv and linear; it needs real tensors."""
    from fvcore.nn import FlopCountAnalysis
    import torchvision

    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 224, 224)
    by_op = FlopCountAnalysis(model, x).unsupported_ops_warnings(False).by_operator()
    graph = trace(model, (x,))
    ours = sum(l.macs for l in graph.layers if l.op in ("conv2d", "linear"))
    assert ours == by_op["conv"] + by_op["linear"]


def test_batch_scales_macs_not_params() -> None:
    one, eight = graph_of("resnet18"), graph_of("resnet18", batch=8)
    assert eight.total_macs == 8 * one.total_macs
    assert eight.total_params == one.total_params
    assert eight.inputs.shapes == ((8, 3, 224, 224),)


def test_fp16_halves_bytes() -> None:
    fp32, fp16 = graph_of("resnet18"), graph_of("resnet18", dtype="fp16")
    assert fp16.total_weight_bytes * 2 == fp32.total_weight_bytes
    assert fp16.inputs.dtype == "float16"
    assert fp16.total_macs == fp32.total_macs


def test_op_without_formula_is_reported() -> None:
    class Spectral(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(9, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.fft.rfft(x).abs())

    report = analyze(Spectral(), input="2x16")
    assert report.totals["macs"] == 2 * 9 * 4
    assert "aten._fft_r2c" in report.unsupported
    assert {"op": "aten._fft_r2c", "count": 1} in report.to_dict()["unsupported"]


def test_shared_leaf_module_calls_are_separate_nodes(resnet50_graph) -> None:
    names = [l.name for l in resnet50_graph.layers if l.module == "layer1.0.relu"]
    assert names == ["layer1.0.relu", "layer1.0.relu:1", "layer1.0.relu:2"]


def test_trace_leaves_module_state_alone() -> None:
    model = TwoConvs().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    load_graph(model, input="1x64x8x8")
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_per_layer_timing_times_a_second_call_of_ops_that_can_run_twice() -> None:
    """With ``timings`` each op that neither writes its inputs nor draws random numbers is run again
    and the second call timed (threads awake, inputs in cache, as in a forward pass); an in-place
    write runs once, so the model's state and result are what one forward pass leaves. A composite
    op is timed whole, as the forward pass runs it, not as its decomposition under the tracer."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.calls: dict[str, int] = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            self.calls[str(func)] = self.calls.get(str(func), 0) + 1
            return func(*args, **(kwargs or {}))

    class Stepper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(8, 8)
            self.register_buffer("steps", torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.steps.add_(1)
            return torch.relu(self.fc(x))

    model, x = Stepper(), torch.randn(4, 8)
    for timed, runs in ((False, 1), (True, 2)):
        with Count() as count:
            timings: dict[str, float] = {}
            trace(model, (x,), timings=timings if timed else None)
        assert count.calls["aten.relu.default"] == runs
        assert count.calls["aten.add_.Tensor"] == 1
    assert model.steps.item() == 2 and timings["fc"] > 0 and timings["relu"] > 0
    # under inference mode aten.linear reaches the tracer whole: timed whole (run, then timed again),
    # and its decomposition, which the tracer counts, runs once untimed
    with torch.inference_mode(), Count() as count:
        timings = {}
        trace(model, (x,), timings=timings, channels=False)
    assert count.calls["aten.linear.default"] == 2 and count.calls["aten.addmm.default"] == 1
    assert timings["fc"] > 0 and model.steps.item() == 3
    # a composite inside a timed composite's decomposition is counted, not timed again (a batch norm's
    # _batch_norm_impl_index was, and its time added to the layer: 287 us against 111 us)
    with torch.inference_mode(), Count() as count:
        trace(torch.nn.BatchNorm1d(8).eval(), (x,), timings={}, channels=False)
    assert count.calls["aten.batch_norm.default"] == 2 and count.calls["aten.native_batch_norm.default"] == 1
    assert "aten._batch_norm_impl_index.default" not in count.calls     # decomposed in the tracer, never run whole


def _components(a: np.ndarray, b: np.ndarray) -> tuple[set[frozenset[int]], set[int]]:
    """Channels joined through pairs that are both channels, and the channels paired with NONE."""
    graph = nx.Graph()
    graph.add_nodes_from(int(i) for i in np.concatenate([a, b]) if i >= 0)
    graph.add_edges_from((int(x), int(y)) for x, y in zip(a, b) if x >= 0 and y >= 0)
    meets_none = {int(x) for x, y in zip(a, b) if x >= 0 > y} | {int(y) for x, y in zip(a, b) if y >= 0 > x}
    return {frozenset(c) for c in nx.connected_components(graph)}, meets_none


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(2, 4), st.integers(2, 4), st.data())
def test_meeting_stars_join_what_the_full_product_joins(heads: int, width: int, other: int, data) -> None:
    """Queries (heads x width) against values (heads x other): the stars that stand for their
    product join the same channels and pair the same ones with NONE. Fails if either side's NONE
    centre is dropped from :func:`meeting_ids`, or its stars are centred on a fixed column."""
    ids = st.integers(-1, 9)
    q = np.array(data.draw(st.lists(ids, min_size=heads * width, max_size=heads * width))).reshape(heads, width)
    v = np.array(data.draw(st.lists(ids, min_size=heads * other, max_size=heads * other))).reshape(heads, other) + 20
    v[v == 19] = -1
    sizes = {"h": heads, "d": width, "e": other}
    qgrid, vgrid = Grid((0, 1), q, (heads, width)), Grid((0, 1), v, (heads, other))
    full = [broadcast(g, s, "deh", sizes).ravel() for g, s in ((qgrid, "hd"), (vgrid, "he"))]
    stars = meeting_ids(qgrid, "hd", vgrid, "he", sizes)
    assert stars[0].size < full[0].size or heads * (width + other) * 2 >= full[0].size
    assert _components(*stars) == _components(*full)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=2, max_size=4), st.data())
def test_a_view_reads_the_channels_at_its_storage_offsets(sizes: list[int], data) -> None:
    """Every position of a view (permuted, strided, flattened) of a written tensor (dense in some
    order of its axes, or itself a strided slice) holds the channel stored at its offset. Fails if the
    dense shortcut in :func:`view_grid` drops its modulo, or takes a strided base for a dense one."""
    order = data.draw(st.permutations(range(len(sizes))))
    storage = torch.empty([sizes[a] for a in order]).permute([order.index(a) for a in range(len(sizes))])
    if data.draw(st.booleans()):                              # a base that skips every other row
        storage = torch.empty([sizes[0] * 2, *sizes[1:]])[::2]
    channel = data.draw(st.integers(0, len(sizes) - 1))
    base = _Base(tuple(storage.shape), tuple(storage.stride()), storage.storage_offset(),
                 Grid((channel,), np.arange(sizes[channel]) + 100, tuple(storage.shape)))
    view = storage.permute(data.draw(st.permutations(range(len(sizes)))))
    view = view[tuple(slice(data.draw(st.integers(0, s - 1)), None, data.draw(st.integers(1, 2))) for s in view.shape)]
    if view.is_contiguous():
        view = view.view(-1)
    at = {storage.storage_offset() + sum(i * s for i, s in zip(index, storage.stride())): index[channel]
          for index in np.ndindex(*storage.shape)}
    expected = np.array([at[view.storage_offset() + sum(i * s for i, s in zip(index, view.stride()))] + 100
                         for index in np.ndindex(*view.shape)]).reshape(view.shape)
    grid = view_grid(base, view)
    shape = [view.shape[a] if a in grid.axes else 1 for a in range(view.dim())]
    assert np.array_equal(np.broadcast_to(np.asarray(grid.ids).reshape(shape), view.shape), expected)
