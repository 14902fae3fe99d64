"""Physical compaction: cut the removed units out of every tensor that holds them, so the smaller model
runs dense kernels, and record the changes so the architecture can be rebuilt.

What to cut is read from the prunable groups' tensor slices (:mod:`costplan.trace.groups`), the same
records analysis counts, so the compacted model is the one ``analyze --plan`` predicted. Edits are plain
data: the integer attributes each changed module needs (``out_channels``, ``hidden_size``, head
counts); :func:`apply_edits` replays them on a freshly built model and gives each tensor the shape the
saved weights have. Nothing is pickled.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from costplan.errors import CostplanError
from costplan.trace.groups import HEAD_COUNT_ATTRS, HEAD_WIDTH_ATTRS, Structure, kept_positions

# the attributes a saved description may set: shape facts of the layers compaction resizes
EDITABLE = frozenset({"in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
                      "nf", "nx", "hidden_size", "input_size", *HEAD_COUNT_ATTRS, *HEAD_WIDTH_ATTRS})


def _replace(model: nn.Module, param: str, value: torch.Tensor) -> None:
    owner, _, attr = param.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    old = getattr(module, attr)
    if isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        setattr(module, attr, value)


def sync_attributes(module: nn.Module) -> dict[str, int]:
    """Set a resized module's shape attributes from its tensors; the attributes set."""
    attrs: dict[str, int] = {}
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        out, per_group = int(module.weight.shape[0]), int(module.weight.shape[1])
        if module.groups > 1:     # depthwise: one filter per channel
            attrs = {"groups": out, "in_channels": out, "out_channels": out}
        else:
            attrs = {"in_channels": per_group, "out_channels": out}
    elif isinstance(module, nn.Linear):
        attrs = {"out_features": int(module.weight.shape[0]), "in_features": int(module.weight.shape[1])}
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        ref = module.running_mean if module.running_mean is not None else module.weight
        attrs = {"num_features": int(ref.shape[0])}
    elif isinstance(module, nn.RNNBase):
        attrs = {"hidden_size": int(module.weight_hh_l0.shape[1]), "input_size": int(module.weight_ih_l0.shape[1])}
    elif type(module).__name__ == "Conv1D" and hasattr(module, "nf"):     # transformers' GPT-2 linear
        attrs = {"nf": int(module.weight.shape[1]), "nx": int(module.weight.shape[0])}
    for key, value in attrs.items():
        setattr(module, key, value)
    return attrs


def shrink(model: nn.Module, structure: Structure, kept: Mapping[str, torch.Tensor]) -> dict[str, dict[str, int]]:
    """Cut ``model`` in place down to the ``kept`` units of each group; the attribute edits made, by module."""
    edits: dict[str, dict[str, int]] = {}
    touched: list[str] = []
    for param, dims in kept_positions(structure, kept).items():
        try:
            tensor = model.get_parameter(param) if param in dict(model.named_parameters()) else model.get_buffer(param)
        except AttributeError:
            raise CostplanError(f"the model has no tensor '{param}' the plan's groups name") from None
        new = tensor.detach()
        for dim, mask in dims.items():
            new = new.index_select(dim, torch.nonzero(mask).flatten().to(new.device))
        _replace(model, param, new.clone())
        owner = param.rpartition(".")[0]
        if owner not in touched:
            touched.append(owner)
    for owner in touched:
        attrs = sync_attributes(model.get_submodule(owner) if owner else model)
        if attrs:
            edits[owner] = attrs
    for name, units in kept.items():
        group = structure.groups[name]
        if group.attention is None:
            continue
        attention = model.get_submodule(group.attention)
        heads = int(len(units))
        attrs = {a: heads for a in HEAD_COUNT_ATTRS if isinstance(getattr(attention, a, None), int)}
        attrs |= {a: heads * group.unit_size for a in HEAD_WIDTH_ATTRS if isinstance(getattr(attention, a, None), int)}
        for a, v in attrs.items():
            setattr(attention, a, v)
        edits.setdefault(group.attention, {}).update(attrs)
    return edits


def apply_edits(model: nn.Module, edits: Mapping[str, Mapping[str, int]], state: Mapping[str, torch.Tensor]) -> None:
    """Replay :func:`shrink`'s edits on a freshly built model: set the recorded attributes and give
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
            _replace(model, key, torch.empty(value.shape, dtype=current.dtype, device=current.device))
