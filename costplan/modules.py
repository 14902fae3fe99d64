"""What costplan knows about each kind of ``nn.Module``, in one registry: its geometry (the shape facts
latency models and pruning read), its weight layout (GPT-2's ``Conv1D`` stores its weight as
(inputs, outputs)) and the integer attributes compaction may set after resizing its tensors.

The tracer records a module's geometry from here, compaction syncs and a saved description replays
attributes from here, and every reader of a weight in (outputs, inputs, ...) layout (importance,
sensitivity, masks, analysis under a plan) turns it with :func:`out_in`. A new module kind is one
:class:`ModuleKind` entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from costplan.errors import CostplanError

# attention modules' head counts and head-width totals, as the libraries name them
HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads", "n_head", "n_heads")
HEAD_WIDTH_ATTRS = ("all_head_size", "split_size")

Attrs = dict[str, object]


@dataclass(frozen=True)
class ModuleKind:
    """One kind of module: how to recognise it, read its geometry and re-derive its attributes."""

    name: str
    matches: Callable[[nn.Module], bool]
    geometry: Callable[[nn.Module], Attrs]              # shape facts for the layer graph
    sync: Callable[[nn.Module], dict[str, int]]         # attributes as its (resized) tensors say
    editable: tuple[str, ...]                           # attributes a saved description may set
    transposed_weight: bool = False                     # weight stored as (inputs, outputs)


def _is_gpt2_conv1d(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(getattr(module, "nf", None), int) and isinstance(weight, torch.Tensor) and weight.dim() == 2


def _conv_geometry(m: nn.Module) -> Attrs:
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "groups": m.groups,
            "kernel_size": tuple(m.kernel_size), "stride": tuple(m.stride), "dilation": tuple(m.dilation),
            "transposed": m.transposed}


def _conv_sync(m: nn.Module) -> dict[str, int]:
    if m.transposed:
        return {}
    out, per_group = int(m.weight.shape[0]), int(m.weight.shape[1])
    if m.groups > 1:     # depthwise: one filter per channel
        return {"groups": out, "in_channels": out, "out_channels": out}
    return {"in_channels": per_group, "out_channels": out}


def _norm_sync(m: nn.Module) -> dict[str, int]:
    ref = m.running_mean if m.running_mean is not None else m.weight
    return {"num_features": int(ref.shape[0])}


def _recurrent_geometry(m: nn.Module) -> dict[str, object]:
    """What runs per step: the cell ('LSTM', 'GRU', 'RNN_TANH', 'RNN_RELU'), its widths and stacking."""
    return {"mode": str(m.mode), "input_size": int(m.input_size), "hidden_size": int(m.hidden_size),
            "num_layers": int(m.num_layers), "bidirectional": bool(m.bidirectional),
            "proj_size": int(getattr(m, "proj_size", 0)), "batch_first": bool(m.batch_first)}


KINDS: tuple[ModuleKind, ...] = (
    ModuleKind("conv", lambda m: isinstance(m, nn.modules.conv._ConvNd), _conv_geometry, _conv_sync,
               ("in_channels", "out_channels", "groups")),
    ModuleKind("linear", lambda m: isinstance(m, nn.Linear),
               lambda m: {"in_features": m.in_features, "out_features": m.out_features},
               lambda m: {"out_features": int(m.weight.shape[0]), "in_features": int(m.weight.shape[1])},
               ("in_features", "out_features")),
    ModuleKind("gpt2_conv1d", _is_gpt2_conv1d,   # transformers' GPT-2 linear
               lambda m: {"in_features": int(m.weight.shape[0]), "out_features": m.nf, "transposed_weight": True},
               lambda m: {"nf": int(m.weight.shape[1]), "nx": int(m.weight.shape[0])},
               ("nf", "nx"), transposed_weight=True),
    ModuleKind("batch_norm", lambda m: isinstance(m, nn.modules.batchnorm._BatchNorm), lambda m: {}, _norm_sync,
               ("num_features",)),
    ModuleKind("recurrent", lambda m: isinstance(m, nn.RNNBase), _recurrent_geometry,
               lambda m: {"hidden_size": int(m.weight_hh_l0.shape[1]), "input_size": int(m.weight_ih_l0.shape[1])},
               ("hidden_size", "input_size")),
)

# head counts and widths live on attention modules of many libraries: editable wherever they are
EDITABLE = frozenset({a for k in KINDS for a in k.editable} | set(HEAD_COUNT_ATTRS) | set(HEAD_WIDTH_ATTRS))


def kind_of(module: nn.Module) -> ModuleKind | None:
    """The registered kind of ``module``, or None."""
    return next((k for k in KINDS if k.matches(module)), None)


def geometry(module: nn.Module) -> Attrs:
    """The shape facts of a conv or linear layer that pruning and latency models need ({} otherwise)."""
    kind = kind_of(module)
    return kind.geometry(module) if kind else {}


def sync_attributes(module: nn.Module) -> dict[str, int]:
    """Set a resized module's shape attributes from its tensors; the attributes set."""
    kind = kind_of(module)
    attrs = kind.sync(module) if kind else {}
    for key, value in attrs.items():
        setattr(module, key, value)
    return attrs


def head_count(module: object) -> int | None:
    """The number of attention heads ``module`` (or a config) declares, if it declares one."""
    return next((int(getattr(module, a)) for a in HEAD_COUNT_ATTRS if isinstance(getattr(module, a, None), int)), None)


def attention_heads(model: nn.Module) -> dict[str, int]:
    """Attention modules of ``model`` and their head counts, from the usual attribute names (on the
    module, or its ``config``)."""
    heads: dict[str, int] = {}
    for name, module in model.named_modules():
        if "attention" not in type(module).__name__.lower() or not name:
            continue
        count = head_count(module) or head_count(getattr(module, "config", None))
        if count:
            heads[name] = count
    return heads


def out_in(tensor: torch.Tensor, transposed: bool) -> torch.Tensor:
    """A weight (or its scores or mask) in (outputs, inputs, ...) layout, from its stored layout;
    applied twice it gives the stored layout back."""
    return tensor.t() if transposed and tensor.dim() == 2 else tensor


def out_in_shape(shape: Sequence[int], transposed: bool) -> tuple[int, ...]:
    """:func:`out_in` for a shape."""
    return tuple(reversed(shape)) if transposed and len(shape) == 2 else tuple(shape)


def replace_tensor(model: nn.Module, param: str, value: torch.Tensor) -> None:
    """Put ``value`` in place of the tensor ``param`` names (a parameter stays a parameter)."""
    owner, _, attr = param.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    old = getattr(module, attr)
    if isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        setattr(module, attr, value)


def apply_edits(model: nn.Module, edits: Mapping[str, Mapping[str, int]], state: Mapping[str, torch.Tensor]) -> None:
    """Replay compaction's edits (:func:`costplan.pruning.compact.shrink`) on a freshly built model: set the recorded attributes and give
    every tensor the shape ``state`` (the saved weights) has, ready for ``load_state_dict``."""
    for name, attrs in edits.items():
        module = model.get_submodule(name) if name else model
        for attr, value in attrs.items():
            if attr not in EDITABLE or not isinstance(value, int) or isinstance(value, bool):
                raise CostplanError(f"saved model description sets '{attr}' of '{name}', which costplan does not edit")
            setattr(module, attr, value)
    own = dict(model.state_dict(keep_vars=True))
    for key, value in state.items():
        current = own.get(key)
        if current is not None and tuple(current.shape) != tuple(value.shape):
            replace_tensor(model, key, torch.empty(value.shape, dtype=current.dtype, device=current.device))
