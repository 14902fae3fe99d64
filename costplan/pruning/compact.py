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
from costplan.modules import HEAD_COUNT_ATTRS, HEAD_WIDTH_ATTRS, replace_tensor, sync_attributes
from costplan.trace.groups import Structure, kept_positions


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
        replace_tensor(model, param, new.clone())
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
