"""Channel ids on tensors: the records the tracer's channel log is made of, and how a view reads its
base's ids through the strides (see :mod:`costplan.trace.channels`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

NONE = -1   # the id of a position that is no producer's channel


@dataclass(frozen=True, eq=False)
class Grid:
    """Channel ids over the channel-carrying ``axes`` of a tensor of ``shape``."""

    axes: tuple[int, ...]
    ids: np.ndarray                # shape: the sizes of ``axes``
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Source:
    """A producer's output channels: ids ``first`` .. ``first + width - 1``."""

    node: str                      # graph node that produced them
    module: str | None             # module a plan names to prune them
    first: int
    width: int
    scope: tuple[str, ...]         # modules running when they were produced, outermost first
    gates: int = 0                 # recurrent layers: gate blocks per unit (LSTM 4, GRU 3, RNN 1)


@dataclass(frozen=True, eq=False)
class Slice:
    """Along ``dim`` of tensor ``param`` (a qualified parameter or buffer name), position i holds
    channel ``ids[i]``. ``role``: 'out' (a producer's own rows), 'follow' (one entry per channel of
    its input) or 'in' (columns reading its input)."""

    param: str
    dim: int
    ids: np.ndarray
    role: str
    node: str


@dataclass(frozen=True, eq=False)
class Couple:
    """Position i of ``a`` meets position i of ``b`` at ``node``."""

    a: np.ndarray
    b: np.ndarray
    node: str


@dataclass(frozen=True, eq=False)
class Barrier:
    ids: np.ndarray
    node: str
    reason: str
    # > 0: the fixed width runs only along the grid's innermost axis, of this length (rotary's cos and
    # sin along a head's channels): removing whole units of a multiple of it leaves it whole
    within: int = 0


@dataclass(frozen=True, eq=False)
class MacPart:
    """Part of a node's MACs. With ``param``: the MACs scale with that weight's kept elements.
    Without: ``formula`` re-evaluated on the kept sizes of ``operands`` (Grid, or a plain shape) and
    ``out``."""

    macs: int
    param: str | None = None
    formula: Callable[..., int] | None = None   # the MAC formula in force when traced
    operands: tuple[object, ...] = ()
    out: object = None


@dataclass(frozen=True)
class ChannelLog:
    """Everything the trace learnt about channels."""

    sources: tuple[Source, ...]
    slices: tuple[Slice, ...]
    couples: tuple[Couple, ...]
    barriers: tuple[Barrier, ...]
    reads: tuple[tuple[Grid, str], ...]                 # (grid an op read, node)
    tensors: Mapping[str, tuple[tuple[Grid | None, ...], tuple[Grid | None, ...]]]  # node -> (ins, outs)
    macs: Mapping[str, tuple[MacPart, ...]]
    params: Mapping[str, tuple[int, ...]]               # parameter or buffer name -> shape
    # (query ids, g): grouped-query attention, g query heads to a KV head; the queries' source removes
    # heads g at a time, with the KV head they share
    head_groups: tuple[tuple[np.ndarray, int], ...] = ()


@dataclass(frozen=True, eq=False)
class _Base:
    """A tensor an op wrote, with its grid: what views of it are read against."""

    sizes: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int
    grid: Grid


def _geometry(t: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    return tuple(t.shape), tuple(t.stride()), t.storage_offset()


def _unravel(sizes: Sequence[int], strides: Sequence[int], rel: np.ndarray) -> np.ndarray | None:
    """Index (n, ndim) of each storage offset ``rel`` in a dense tensor of these sizes and strides;
    None where an offset falls outside it."""
    idx = np.zeros((rel.size, len(sizes)), dtype=np.int64)
    rest = rel.astype(np.int64).copy()
    for axis in sorted(range(len(sizes)), key=lambda a: -strides[a]):
        if sizes[axis] <= 1 or strides[axis] <= 0:
            continue
        q = rest // strides[axis]
        if (q < 0).any() or (q >= sizes[axis]).any():
            return None
        idx[:, axis] = q
        rest -= q * strides[axis]
    return idx if not rest.any() else None


def view_grid(base: _Base, t: torch.Tensor) -> Grid | None:
    """The grid of ``t``, a view of ``base``'s storage: each of its positions looked up in the base by
    storage offset. None when ``t`` reads no channel; raises ValueError if the offsets do not map."""
    sizes, strides, offset = _geometry(t)
    if (sizes, strides, offset) == (base.sizes, base.strides, base.offset):
        return base.grid
    channel_axes = list(base.grid.axes)
    rel0 = offset - base.offset
    tagged = []
    for b, (size, stride) in enumerate(zip(sizes, strides)):
        if size <= 1 or stride == 0:
            continue
        idx = _unravel(base.sizes, base.strides, rel0 + np.arange(size) * stride)
        if idx is None:
            raise ValueError("view outside its base")
        if (idx[:, channel_axes] != idx[0, channel_axes]).any():
            tagged.append(b)
    if not tagged:
        idx = _unravel(base.sizes, base.strides, np.array([rel0]))
        if idx is None:
            raise ValueError("view outside its base")
        return Grid((), base.grid.ids[tuple(idx[0, channel_axes])].reshape(()), sizes)
    reach = [(sizes[b] - 1) * strides[b] for b in tagged]
    small = -2**31 <= rel0 + sum(min(r, 0) for r in reach) and rel0 + sum(max(r, 0) for r in reach) < 2**31
    mesh = np.ix_(*[np.arange(sizes[b], dtype=np.int32 if small else np.int64) for b in tagged])  # halves the work
    rel = np.asarray(rel0 + sum(m * strides[b] for m, b in zip(mesh, tagged))).ravel()
    span = _dense_span(base.sizes, base.strides)
    if span is not None:    # each channel index at once: a detection head's views are millions of positions
        if rel.min() < 0 or rel.max() >= span:
            raise ValueError("view outside its base")
        index = tuple((rel // base.strides[a]) % base.sizes[a] for a in channel_axes)
    else:
        idx = _unravel(base.sizes, base.strides, rel)
        if idx is None:
            raise ValueError("view outside its base")
        index = tuple(idx[:, a] for a in channel_axes)
    ids = base.grid.ids[index].reshape([sizes[b] for b in tagged])
    return Grid(tuple(tagged), ids, sizes)


def _dense_span(sizes: Sequence[int], strides: Sequence[int]) -> int | None:
    """Elements of a tensor of these sizes and strides if it is dense (every stride over 1 in size is
    the product of the sizes inside it, in some order of the axes), so that an offset below that
    unravels along each axis alone; else None."""
    span = 1
    for axis in sorted((a for a in range(len(sizes)) if sizes[a] > 1), key=lambda a: strides[a]):
        if strides[axis] != span:
            return None
        span *= sizes[axis]
    return span


def broadcast(grid: Grid, letters: Sequence[str], onto: Sequence[str], sizes: Mapping[str, int]) -> np.ndarray:
    """``grid``'s ids (axes named ``letters``) broadcast onto the letters ``onto``."""
    own = [letters[a] for a in grid.axes]
    ids = grid.ids
    order = [own.index(x) for x in onto if x in own]
    ids = np.transpose(ids, order) if order else ids
    shape = [sizes[x] if x in own else 1 for x in onto]
    return np.broadcast_to(ids.reshape(shape), [sizes[x] for x in onto])


def meeting_ids(grid: Grid, letters: Sequence[str], other: Grid, other_letters: Sequence[str],
                sizes: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """The ids of two grids that meet where they combine, as two arrays (``a[i]`` meets ``b[i]``): at
    each position of the letters both name, every id of one meets every id of the other. Where each
    has letters of its own (attention's values against its queries: head width x head width per head,
    1 M pairs a layer in a 70B model), stars stand for that product: every id of one side against
    the other's first channel (id >= 0) and first NONE at that position, and the other way round.
    They join the same sources, and pair a channel with NONE or with another unit exactly where the
    product does, which is all that grouping reads of them."""
    own = [letters[a] for a in grid.axes]
    theirs = [other_letters[a] for a in other.axes]
    shared = sorted(set(own) & set(theirs))
    mine, their = sorted(set(own) - set(theirs)), sorted(set(theirs) - set(own))
    if not mine or not their:
        onto = sorted(set(own) | set(theirs))
        return broadcast(grid, letters, onto, sizes), broadcast(other, other_letters, onto, sizes)
    positions = math.prod(sizes[x] for x in shared)
    a = broadcast(grid, letters, shared + mine, sizes).reshape(positions, -1)
    b = broadcast(other, other_letters, shared + their, sizes).reshape(positions, -1)
    rows = np.arange(positions)[:, None]
    firsts, seconds = [], []
    for every, centres, first in ((a, b, True), (b, a, False)):
        for hits in (centres >= 0, centres < 0):
            if not hits.any():
                continue
            centre = np.broadcast_to(centres[rows, hits.argmax(axis=1)[:, None]], every.shape)
            firsts.append((every if first else centre).ravel())
            seconds.append((centre if first else every).ravel())
    return np.concatenate(firsts), np.concatenate(seconds)
