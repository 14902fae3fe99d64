"""The records of a graph's prunable groups: units, the tensor slices that hold them, and how every
tensor's dims shrink when groups keep fewer units. :mod:`costplan.trace.groups` builds them; analysis,
the planner and the pruner read them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from costplan.trace.grids import Grid, MacPart

Keep = Mapping[str, int]   # group name -> units kept (groups not named keep all)

# Attention-module attributes that hold a head count, or the width of all heads together: compaction
# updates them, because attention code reshapes by them.


@dataclass(frozen=True, eq=False)
class AxisWidth:
    """One dim of a tensor: ``fixed`` positions that always stay, plus ``per`` positions for each kept
    unit of each group in ``terms`` ((group, per) pairs)."""

    size: int
    fixed: int = 0
    terms: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, eq=False)
class Dims:
    """A tensor's dims, each with how it shrinks."""

    shape: tuple[int, ...]
    axes: tuple[AxisWidth | None, ...]    # None: a dim no group shrinks

    def under(self, keep: Keep, widths: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(s if a is None else _kept(a, keep, widths) for s, a in zip(self.shape, self.axes))

    def fraction(self, keep: Keep, widths: Mapping[str, int]) -> float:
        """Share of the tensor's elements that survive."""
        f = 1.0
        for s, a in zip(self.shape, self.axes):
            if a is not None and s:
                f *= _kept(a, keep, widths) / s
        return f

    @property
    def groups(self) -> set[str]:
        return {g for a in self.axes if a is not None for g, _ in a.terms}


def _kept(axis: AxisWidth, keep: Keep, widths: Mapping[str, int]) -> int:
    return axis.fixed + sum(per * keep.get(g, widths[g]) for g, per in axis.terms)


@dataclass(frozen=True, eq=False)
class TensorSlice:
    """Along ``dim`` of ``param`` (a qualified parameter or buffer name), position i holds unit
    ``units[i]`` of the group (-1: a position this group does not remove). ``role`` is 'out' (the
    rows a member writes its units to), 'follow' (a norm's or depthwise conv's entry per unit) or
    'in' (columns that read the units)."""

    param: str
    dim: int
    units: np.ndarray
    role: str

    @property
    def module(self) -> str:
        return self.param.rpartition(".")[0]

    @property
    def tensor(self) -> str:
        return self.param.rpartition(".")[2]


@dataclass(frozen=True, eq=False)
class PrunableGroup:
    """Units (channels, hidden units or heads) that are removed together, and every tensor they are in."""

    name: str                      # plan key: the attention module for heads, else the first member
    kind: str                      # 'channel' or 'head'
    width: int                     # units
    unit_size: int                 # channels per unit in each member (a head's size; 1 for channels)
    members: tuple[str, ...]       # modules whose outputs are the units, in execution order
    nodes: tuple[str, ...]         # graph nodes that produce them
    followers: tuple[str, ...]     # other modules with an entry per unit (norms, depthwise convs)
    consumers: tuple[str, ...]     # modules that read the units
    slices: tuple[TensorSlice, ...]
    attention: str | None = None   # for heads: the module whose head attributes compaction updates
    fixed: str | None = None       # why the units cannot be removed (None: they can)

    @property
    def prunable(self) -> bool:
        return self.fixed is None and self.width > 1


@dataclass(frozen=True, eq=False)
class NodeDims:
    """A graph node's activation tensors and MAC parts, with how each dim shrinks."""

    ins: tuple[Dims | None, ...]   # aligned with the layer's in_shapes (None: no group shrinks it)
    outs: tuple[Dims | None, ...]
    macs: tuple[tuple[MacPart, tuple[Dims | None, ...], Dims | None], ...]   # part, operands, output


@dataclass(frozen=True, eq=False)
class Structure:
    """The prunable groups of a graph and how every tensor shrinks with them."""

    groups: Mapping[str, PrunableGroup]
    params: Mapping[str, Dims]                 # parameter or buffer -> its dims
    nodes: Mapping[str, NodeDims]
    member_of: Mapping[str, str]               # member module -> group name
    widths: Mapping[str, int]                  # group -> units
    shapes: Mapping[str, tuple[int, ...]]      # every parameter and buffer -> its shape

    def prunable(self) -> list[PrunableGroup]:
        return [g for g in self.groups.values() if g.prunable]

    def param_fraction(self, param: str, keep: Keep) -> float:
        dims = self.params.get(param)
        return 1.0 if dims is None else dims.fraction(keep, self.widths)

    def param_shape(self, param: str, keep: Keep) -> tuple[int, ...] | None:
        dims = self.params.get(param)
        return None if dims is None else dims.under(keep, self.widths)

    def node_groups(self, node: str, reads: Sequence[str] = ()) -> set[str]:
        """Groups whose choices change this node's shapes."""
        n = self.nodes.get(node)
        found: set[str] = set()
        if n is not None:
            for d in (*n.ins, *n.outs, *(o for _, ops, _ in n.macs for o in ops), *(out for _, _, out in n.macs)):
                if d is not None:
                    found |= d.groups
        for p in reads:
            if p in self.params:
                found |= self.params[p].groups
        return {g for g in found if self.groups[g].prunable}


def unit_scores(group: PrunableGroup, scores: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """One importance per unit of ``group`` from per-element ``scores`` of its members' tensors
    (keyed by parameter name): each member tensor's rows summed and normalised to sum to one (so no
    member outweighs another by scale), then summed per unit. None when a member's scores are missing.
    The planner and the pruner both rank units by this."""
    total = torch.zeros(group.width, dtype=torch.float64)
    outs = [s for s in group.slices if s.role == "out" and len(s.units) and s.param in scores
            and scores[s.param].dim() > 1]     # weights, not biases
    if not outs or any(s.param not in scores for s in group.slices if s.role == "out" and s.tensor != "bias"
                       and not s.tensor.startswith("bias")):
        return None
    for s in outs:
        t = scores[s.param].detach()
        rows = t.movedim(s.dim, 0).reshape(t.shape[s.dim], -1).sum(1).double().cpu()
        norm = rows.abs().sum()
        rows = rows / norm if norm > 0 else rows
        units = torch.as_tensor(s.units)
        mask = units >= 0
        total.index_add_(0, units[mask], rows[mask])
    return total


def kept_positions(structure: Structure, kept: Mapping[str, torch.Tensor]) -> dict[str, dict[int, torch.Tensor]]:
    """For every tensor the ``kept`` units (group -> unit indices) touch: per dim, a boolean mask of
    the positions that stay."""
    out: dict[str, dict[int, torch.Tensor]] = {}
    for name, units in kept.items():
        group = structure.groups[name]
        stay = torch.zeros(group.width, dtype=torch.bool)
        stay[units.cpu()] = True
        for sl in group.slices:
            pos = torch.as_tensor(sl.units)
            mask = (pos < 0) | stay[pos.clamp(min=0)]
            dims = out.setdefault(sl.param, {})
            dims[sl.dim] = dims[sl.dim] & mask if sl.dim in dims else mask
    return out


def positions_mask(shape: Sequence[int], positions: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """A boolean keep-mask of ``shape`` from per-dim masks of the positions that stay."""
    keep = torch.ones(tuple(shape), dtype=torch.bool)
    for dim, mask in positions.items():
        view = [1] * len(shape)
        view[dim] = -1
        keep &= mask.view(view)
    return keep


def mac_count(part: MacPart, operands: Sequence[Dims | None], out: Dims | None, structure: Structure,
              keep: Keep, formula: Callable[..., int] | None) -> float:
    """MACs of one part of a node when each group keeps ``keep`` units."""
    if part.param is not None:
        return part.macs * structure.param_fraction(part.param, keep)
    if formula is None or not any(d is not None for d in (*operands, out)):
        return float(part.macs)
    shapes = []
    for raw, dims in zip(part.operands, operands):
        if dims is not None:
            shapes.append(dims.under(keep, structure.widths))
        elif isinstance(raw, Grid):
            shapes.append(raw.shape)
        else:
            shapes.append(raw)
    out_shape = out.under(keep, structure.widths) if out is not None else (
        part.out.shape if isinstance(part.out, Grid) else part.out)
    return float(formula(*shapes, out_shape=out_shape))
