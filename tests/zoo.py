"""Small members of every model family costplan prunes, with random weights and example inputs, and
an independent count of what a (compacted) model computes: the zoo the agreement test and
``benchmarks/agreement_zoo.py`` run."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

import costplan
from costplan.planfile import Plan
from costplan.trace import trace


class GroupedConcat(nn.Module):
    """A grouped conv and a plain conv side by side, concatenated, normalised and read by a 1x1 conv;
    a flatten feeds the classifier (four input features per channel)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.plain = nn.Conv2d(32, 16, 3, padding=1)
        self.norm = nn.BatchNorm2d(48)
        self.mix = nn.Conv2d(48, 24, 1)
        self.fc = nn.Linear(24 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        y = torch.relu(self.norm(torch.cat([self.grouped(x), self.plain(x)], 1)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.mix(y), 2), 1))


class ConvLSTM(nn.Module):
    """A Conv1d front end feeding a two-layer LSTM, read at its last step."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(8, 32, 3, padding=1)
        self.c2 = nn.Conv1d(32, 48, 3, padding=1)
        self.lstm = nn.LSTM(48, 40, 2, batch_first=True)
        self.fc = nn.Linear(40, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        out, _ = self.lstm(h.transpose(1, 2))
        return self.fc(out[:, -1])


class GRUNet(nn.Module):
    """A linear embedding, a bidirectional GRU averaged over time, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 32)
        self.gru = nn.GRU(32, 24, 1, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(48, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(torch.tanh(self.embed(x)))
        return self.fc(out.mean(1))


@dataclass(frozen=True)
class Member:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[], tuple[torch.Tensor, ...]]


def _vision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None)
    return build


def _hf(config: str, model: str, **kwargs: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        transformers.logging.set_verbosity_error()
        return getattr(transformers, model)(getattr(transformers, config)(**kwargs))
    return build


def _ids(n: int = 12) -> Callable[[], tuple[torch.Tensor, ...]]:
    return lambda: (torch.randint(0, 100, (2, n), generator=torch.Generator().manual_seed(1)),)


def _images(*shape: int) -> Callable[[], tuple[torch.Tensor, ...]]:
    return lambda: (torch.randn(*shape, generator=torch.Generator().manual_seed(1)),)


SMALL_TRANSFORMER = dict(num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, vocab_size=100)
ZOO: dict[str, Member] = {m.name: m for m in [
    Member("resnet18", _vision("resnet18"), _images(2, 3, 64, 64)),
    Member("mobilenet_v2", _vision("mobilenet_v2"), _images(2, 3, 64, 64)),
    Member("efficientnet_b0", _vision("efficientnet_b0"), _images(2, 3, 64, 64)),
    Member("grouped_concat", GroupedConcat, _images(2, 3, 16, 16)),
    Member("densenet121", _vision("densenet121"), _images(2, 3, 32, 32)),
    Member("conv1d_lstm", ConvLSTM, _images(2, 8, 20)),
    Member("gru", GRUNet, _images(2, 7, 12)),
    Member("transformer_encoder",
           lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2,
                                         enable_nested_tensor=False),
           _images(2, 10, 32)),
    Member("hf:bert-base", _hf("BertConfig", "BertModel", hidden_size=64, **SMALL_TRANSFORMER), _ids()),
    Member("hf:gpt2", _hf("GPT2Config", "GPT2LMHeadModel", n_embd=64, n_layer=2, n_head=4, vocab_size=100,
                          n_positions=64, use_cache=False), _ids()),
    Member("hf:distilbert", _hf("DistilBertConfig", "DistilBertModel", dim=64, n_layers=2, n_heads=4, hidden_dim=96,
                                vocab_size=100), _ids()),
    # rotary embeddings read each head in swapped halves: heads are still the unit
    Member("hf:llama", _hf("LlamaConfig", "LlamaForCausalLM", hidden_size=64,
                           **{**SMALL_TRANSFORMER, "intermediate_size": 96}), _ids()),
    # grouped-query attention: 4 query heads share 2 KV heads (a KV head and its 2 query heads go together)
    Member("hf:llama-gqa", _hf("LlamaConfig", "LlamaForCausalLM", hidden_size=64, num_key_value_heads=2,
                               **{**SMALL_TRANSFORMER, "intermediate_size": 96}), _ids()),
    Member("hf:vit-base", _hf("ViTConfig", "ViTModel", hidden_size=64, image_size=32, patch_size=8,
                              **{**SMALL_TRANSFORMER, "vocab_size": None}), _images(2, 3, 32, 32)),
]}


def build(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A fresh zoo model (seeded weights, eval mode, norms with non-trivial statistics) and its input."""
    torch.manual_seed(0)
    member = ZOO[name]
    model = member.build().eval()
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model, member.inputs()


def output(result: object) -> torch.Tensor:
    """The tensor a model's output leads with (HF models return records)."""
    if torch.is_tensor(result):
        return result
    for key in ("last_hidden_state", "logits"):
        if getattr(result, key, None) is not None:
            return getattr(result, key)
    return result[0]


def counted_macs(model: nn.Module, inputs: Sequence[torch.Tensor], sparse: Sequence[str] = ()) -> tuple[int, torch.Tensor]:
    """MACs of one real forward by ``torch.utils.flop_counter.FlopCounterMode`` / 2, and the output.

    torch 2.14's counter has no formula for the CPU flash-attention kernel nor for oneDNN's RNN kernel,
    so models with an RNN run without oneDNN (RNNs decompose into matmuls it counts) and the CPU attention
    kernel gets torch's own SDPA formula (``sdpa_flop_count``); the encoder's fused fast path is off
    (it hides its layers from the counter). With ``sparse`` (weights pruned element-wise), each such
    leaf module's MACs are reduced by the share of its weight that is zero, as costplan counts them.
    """
    import torch.utils.flop_counter as fc

    def cpu_flash(q, k, v, *args, out_shape=None, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        return fc.sdpa_flop_count(q, k, v)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    # oneDNN off only where an RNN needs it: PyTorch's fallback convolutions are ~100x slower
    recurrent = any(isinstance(m, nn.RNNBase) for m in model.modules())
    try:
        with torch.no_grad(), torch.backends.mkldnn.flags(enabled=not recurrent), \
                fc.FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            result = model(*inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    total = counter.get_total_flops() / 2
    per_module = {k.partition(".")[2]: sum(v.values()) / 2 for k, v in counter.get_flop_counts().items()}
    for param in sparse:
        weight = model.get_parameter(param)
        total -= per_module.get(param.rpartition(".")[0], 0.0) * float((weight == 0).float().mean())
    return round(total), output(result)


def copy_of(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


@functools.cache
def traced(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...], object]:
    """A zoo model, its input and its trace, built once per process (copy the model before changing it)."""
    model, inputs = build(name)
    return model, inputs, trace(model, inputs, name=name)


def budgets(name: str) -> list[float]:
    """Two latency budgets (ms) on cpu-xeon, 30% and 70% of the way from the dense model to what one
    uniform 85% ratio on every group reaches."""
    graph = traced(name)[2]
    dense = costplan.estimate_latency(graph, "cpu-xeon").latency_s
    layers = {}
    for kind in ("channel", "head"):
        layers.update(costplan.uniform_plan(graph, kind, 0.85).layers)
    fast = costplan.estimate_latency(graph, "cpu-xeon", Plan(layers)).latency_s
    return [(dense - f * (dense - fast)) * 1e3 for f in (0.3, 0.7)]


@dataclass(frozen=True)
class Pruned:
    """A zoo model pruned to a plan the way ``costplan prune`` does it, beside what was predicted."""

    masked: torch.Tensor           # the masked model's output
    compacted: torch.Tensor        # the compacted model's output
    macs: int                      # the compacted model's MACs (FlopCounterMode / 2), zeros counted out
    params: int                    # its parameters, zeros inside element-wise pruned weights counted out
    elements: tuple[str, ...]      # the weights pruned element-wise
    model: nn.Module               # the compacted model


def prune_and_compact(name: str, plan: object, model: nn.Module | None = None) -> Pruned:
    """Mask ``model`` (a copy of the zoo's, by default) to ``plan``, compact it and count the result."""
    from costplan.pruning.pruner import Pruner

    _, inputs, graph = traced(name)
    model = model if model is not None else copy_of(traced(name)[0])
    pruner = Pruner(model, plan, graph=graph)
    pruner.prune()
    with torch.no_grad():
        masked = output(model(*inputs))
    small = pruner.compact().eval()
    macs, compacted = counted_macs(small, inputs, sparse=list(pruner.elements))
    zeros = sum(int((small.get_parameter(p) == 0).sum()) for p in pruner.elements)
    params = sum(p.numel() for p in small.parameters()) - zeros
    return Pruned(masked, compacted, macs, params, tuple(pruner.elements), small)
