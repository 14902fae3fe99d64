"""Physical compaction: slice the kept channels (or heads) out of every tensor that holds them, so
the smaller model runs dense kernels, and record each change so the architecture can be rebuilt.

Edits are plain data: a module's new constructor arguments, or attributes of an attention module.
:func:`apply_edits` replays them on a fresh model; nothing is pickled.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from costplan.errors import CostplanError
from costplan.pruning.targets import GroupTarget

# modules compaction rebuilds, by name: the only classes a saved description may name
REBUILDABLE: dict[str, type[nn.Module]] = {
    c.__name__: c for c in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)}
HEAD_ATTRS = ("num_attention_heads", "num_heads", "n_head")


def _spec(module: nn.Module) -> dict[str, Any]:
    """Constructor arguments that rebuild ``module``'s shape."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return {"type": type(module).__name__, "in_channels": module.in_channels, "out_channels": module.out_channels,
                "kernel_size": list(module.kernel_size), "stride": list(module.stride),
                "padding": module.padding if isinstance(module.padding, str) else list(module.padding),
                "dilation": list(module.dilation), "groups": module.groups, "bias": module.bias is not None,
                "padding_mode": module.padding_mode}
    if isinstance(module, nn.Linear):
        return {"type": "Linear", "in_features": module.in_features, "out_features": module.out_features,
                "bias": module.bias is not None}
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return {"type": type(module).__name__, "num_features": module.num_features, "eps": module.eps,
                "momentum": module.momentum, "affine": module.affine,
                "track_running_stats": module.track_running_stats}
    raise CostplanError(f"cannot resize a {type(module).__name__}")


def _take(module: nn.Module, name: str, index: torch.Tensor, dim: int) -> None:
    tensor = getattr(module, name, None)
    if tensor is None:
        return
    new = tensor.detach().index_select(dim, index.to(tensor.device)).clone()
    if isinstance(tensor, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=tensor.requires_grad))
    else:
        setattr(module, name, new)


def slice_outputs(module: nn.Module, rows: torch.Tensor, name: str) -> None:
    """Keep output rows ``rows`` of a conv or linear layer."""
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups == 1 and not module.transposed:
        module.out_channels = len(rows)
    elif isinstance(module, nn.Linear):
        module.out_features = len(rows)
    else:
        raise CostplanError(f"cannot remove output channels of '{name}' ({type(module).__name__})")
    _take(module, "weight", rows, 0)
    _take(module, "bias", rows, 0)


def slice_channels(module: nn.Module, index: torch.Tensor, name: str) -> None:
    """Keep channels ``index`` of a layer with one entry per channel: a norm or a depthwise conv."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.num_features = len(index)
        for tensor in ("weight", "bias", "running_mean", "running_var"):
            _take(module, tensor, index, 0)
    elif isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.in_channels == module.out_channels:
        module.in_channels = module.out_channels = module.groups = len(index)
        _take(module, "weight", index, 0)
        _take(module, "bias", index, 0)
    else:
        raise CostplanError(f"cannot remove channels of '{name}' ({type(module).__name__}): only batch norms and "
                            "depthwise convolutions follow a pruned channel")


def slice_inputs(module: nn.Module, columns: torch.Tensor, width: int, name: str) -> None:
    """Keep input columns ``columns`` (of ``width`` channels) of a conv or linear layer; a linear layer
    after a flatten reads several features per channel."""
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups == 1 and not module.transposed:
        module.in_channels = len(columns)
        _take(module, "weight", columns, 1)
    elif isinstance(module, nn.Linear):
        per = module.in_features // width
        if per * width != module.in_features:
            raise CostplanError(f"'{name}' reads {module.in_features} features, not a multiple of {width} channels")
        cols = (columns[:, None] * per + torch.arange(per)).flatten() if per > 1 else columns
        module.in_features = len(cols)
        _take(module, "weight", cols, 1)
    else:
        raise CostplanError(f"cannot remove input channels of '{name}' ({type(module).__name__})")


def rows_of(target: GroupTarget, kept: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Tensor rows (or columns) of ``kept`` channels; a head is a block of rows."""
    if target.kind != "head":
        return kept
    size = (module.out_features if isinstance(module, nn.Linear) else module.weight.shape[0]) // target.width
    return (kept[:, None] * size + torch.arange(size)).flatten()


def shrink(model: nn.Module, kept: dict[GroupTarget, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """Slice ``model`` in place to the ``kept`` channels of each group; the edits made, by module."""
    edits: dict[str, dict[str, Any]] = {}
    for target, index in kept.items():
        index = index.cpu()
        if len(index) == target.width:
            continue
        member = model.get_submodule(target.members[0])
        rows = rows_of(target, index, member)
        for name in target.members:
            slice_outputs(model.get_submodule(name), rows, name)
        for name in target.followers:
            slice_channels(model.get_submodule(name), rows, name)
        for name in target.consumers:
            width = target.width * (len(rows) // len(index))
            slice_inputs(model.get_submodule(name), rows, width, name)
        for name in (*target.members, *target.followers, *target.consumers):
            edits[name] = _spec(model.get_submodule(name))
        if target.attention is not None:
            attention = model.get_submodule(target.attention)
            attrs = {a: len(index) for a in HEAD_ATTRS if hasattr(attention, a)}
            if hasattr(attention, "all_head_size"):
                attrs["all_head_size"] = len(rows)
            if not attrs:
                raise CostplanError(f"'{target.attention}': no head-count attribute to update")
            for a, v in attrs.items():
                setattr(attention, a, v)
            edits[target.attention] = {"attrs": attrs}
    return edits


def apply_edits(model: nn.Module, edits: dict[str, dict[str, Any]]) -> None:
    """Replay :func:`shrink`'s edits on a freshly built model: new empty modules of the recorded
    shapes (weights come from the state dict), new head counts."""
    for name, edit in edits.items():
        if "attrs" in edit:
            target = model.get_submodule(name)
            for attr, value in edit["attrs"].items():
                if attr not in (*HEAD_ATTRS, "all_head_size"):
                    raise CostplanError(f"saved model description sets unknown attribute '{attr}'")
                setattr(target, attr, int(value))
            continue
        kwargs = dict(edit)
        cls = REBUILDABLE.get(kwargs.pop("type", ""))
        if cls is None:
            raise CostplanError(f"saved model description names an unknown module type for '{name}'")
        for key in ("kernel_size", "stride", "dilation"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        if isinstance(kwargs.get("padding"), list):
            kwargs["padding"] = tuple(kwargs["padding"])
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        device = next((p.device for p in old.parameters()), torch.device("cpu"))
        setattr(parent, child, cls(**kwargs, device=device))
