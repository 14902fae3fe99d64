"""Prunable groups: which channels go together and what removing one shrinks, built once per graph.

:mod:`costplan.trace.channels` logs, for one forward pass, which channel ids every weight slice holds,
which ids meet and which cannot be removed. Here the log becomes one typed structure:

- A *source* is one producer's output channels. Sources whose channels meet (a residual add, a
  concatenation feeding an add, the q/k/v of one attention) are joined into a :class:`PrunableGroup`
  with union-find; a group removes *units* (channels, recurrent hidden units, or attention heads: a
  head is ``unit_size`` consecutive channels, and a fused q/k/v projection holds each unit once per
  chunk).
- Every tensor that holds a group's units is a :class:`TensorSlice`: which unit each position along
  one dim of a parameter holds. Masks and compaction read these slices, nothing else.
- Every dim of every tensor is an :class:`AxisWidth`: how many positions survive when each group keeps
  some of its units. Analysis under a plan and the planner's latency tables read these; so what
  ``analyze --plan`` predicts is what compaction writes.

A group is *fixed* (``PrunableGroup.fixed`` says why) when its units reach the model's output, meet a
tensor of fixed width, or are read in a way removing some would change for the others.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from networkx.utils import UnionFind

from costplan.trace.channels import NONE, ChannelLog, Grid, MacPart, Source
from costplan.trace.graph import LayerGraph

Keep = Mapping[str, int]   # group name -> units kept (groups not named keep all)

# Attention-module attributes that hold a head count, or the width of all heads together: compaction
# updates them, because attention code reshapes by them.
HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads", "n_head", "n_heads")
HEAD_WIDTH_ATTRS = ("all_head_size", "split_size")


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


# ---- building ------------------------------------------------------------------------------------

class _Sources:
    """Id -> source lookups over a log's sources."""

    def __init__(self, sources: Sequence[Source]) -> None:
        self.list = list(sources)
        self.first = np.array([s.first for s in sources], dtype=np.int64)
        self.width = np.array([s.width for s in sources], dtype=np.int64)

    def of(self, ids: np.ndarray) -> np.ndarray:
        """Source index of each id (-1 for NONE)."""
        ids = np.asarray(ids)
        if not self.list:
            return np.full(ids.shape, -1)
        s = np.searchsorted(self.first, ids, side="right") - 1
        return np.where(ids >= 0, s, -1)


class _Builder:
    def __init__(self, graph: LayerGraph, log: ChannelLog) -> None:
        self.graph = graph
        self.log = log
        self.src = _Sources(log.sources)
        self.uf = UnionFind(range(len(log.sources)))
        self.fixed: dict[int, str] = {}
        self.chunks = np.ones(len(log.sources), dtype=np.int64)
        self.unit = np.ones(len(log.sources), dtype=np.int64)

    def fix(self, sources: object, reason: str, node: str) -> None:
        where = f" (at {node})" if node and not node.startswith("<") else ""
        for s in np.unique(np.asarray(sources).ravel()):
            if s >= 0 and int(s) not in self.fixed:
                self.fixed[int(s)] = reason + where

    # units: chunks of a fused projection, heads
    def units(self) -> None:
        """Chunks (a fused q/k/v projection read in equal contiguous parts) and units (heads: the
        channels a split view puts on its innermost axis) of every source; then a source any op reads
        only some units of is fixed."""
        ranges: dict[int, list[tuple[int, int, str]]] = defaultdict(list)
        splits: dict[int, list[tuple[int, str]]] = defaultdict(list)
        reads: list[tuple[np.ndarray, np.ndarray, str]] = []
        seen: set[int] = set()
        for grid, node in self.log.reads:
            if id(grid.ids) in seen:
                continue
            seen.add(id(grid.ids))
            srcs = self.src.of(grid.ids)
            reads.append((grid.ids, srcs, node))
            for s in np.unique(srcs[srcs >= 0]):
                mine = np.unique(grid.ids[srcs == s] - self.src.first[s])
                lo, hi = int(mine[0]), int(mine[-1]) + 1
                if mine.size == hi - lo < self.src.width[s]:        # a contiguous slice of whole channels
                    ranges[int(s)].append((lo, hi, node))
                if len(grid.axes) > 1:
                    splits[int(s)].append((self._inner(grid, srcs == s, int(self.src.first[s])), node))
        for s, source in enumerate(self.src.list):
            attention = self._attention(source)
            if ranges.get(s):
                sizes = {hi - lo for lo, hi, _ in ranges[s]}
                size = sizes.pop() if len(sizes) == 1 else 0
                if attention is None or not size or self.src.width[s] % size or any(lo % size for lo, _, _ in ranges[s]):
                    self.fix(s, "only part of its channels is read (a slice costplan would have to move)",
                             ranges[s][0][2])
                    continue
                self.chunks[s] = self.src.width[s] // size
            if splits.get(s):
                inners = {i for i, _ in splits[s]}
                chunk = self.src.width[s] // self.chunks[s]
                if attention is None or len(inners) != 1 or 0 in inners or chunk % next(iter(inners)):
                    self.fix(s, "its channels are reshaped across several axes", splits[s][0][1])
                    continue
                self.unit[s] = inners.pop()
        for ids, srcs, node in reads:
            _, units = self.unit_of(ids)
            for s in np.unique(srcs[srcs >= 0]):
                if int(s) not in self.fixed and np.unique(units[srcs == s]).size < self.unit_count(int(s)):
                    self.fix(s, "only some of its channels are read (a slice costplan would have to move)", node)

    def _attention(self, source: Source) -> str | None:
        return next((m for m in reversed(source.scope) if m in self.graph.heads), None)

    @staticmethod
    def _inner(grid: Grid, mine: np.ndarray, first: int) -> int:
        """Length of the grid axis along which this source's ids step by one (a head's size); 0 if none."""
        ids = grid.ids
        for a in range(ids.ndim - 1, -1, -1):
            if ids.shape[a] > 1:
                step = np.diff(ids, axis=a)
                keep = np.take(mine, range(1, ids.shape[a]), axis=a) & np.take(mine, range(ids.shape[a] - 1), axis=a)
                if keep.any() and (step[keep] == 1).all():
                    return ids.shape[a]
        return 0

    def unit_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source, unit) of each id; (-1, -1) for NONE."""
        s = self.src.of(ids)
        safe = np.where(s >= 0, s, 0)
        chunk = self.src.width[safe] // self.chunks[safe]
        unit = ((np.asarray(ids) - self.src.first[safe]) % chunk) // self.unit[safe]
        return s, np.where(s >= 0, unit, -1)

    def unit_count(self, s: int) -> int:
        return int(self.src.width[s] // self.chunks[s] // self.unit[s])

    # couplings
    def couple(self) -> None:
        pairs = [(c.a, c.b, c.node) for c in self.log.couples]
        by_param: dict[tuple[str, int], np.ndarray] = {}
        for sl in self.log.slices:               # a weight used twice: its positions are one set of channels
            key = (sl.param, sl.dim)
            if key in by_param and by_param[key].shape == sl.ids.shape:
                pairs.append((by_param[key], sl.ids, sl.node))
            by_param.setdefault(key, sl.ids)
        for a, b, node in pairs:
            sa, ua = self.unit_of(a)
            sb, ub = self.unit_of(b)
            one = (sa >= 0) != (sb >= 0)
            if one.any():
                self.fix(np.concatenate([sa[one], sb[one]]), "they meet channels of fixed width", node)
            both = (sa >= 0) & (sb >= 0)
            if not both.any():
                continue
            for x, y in {(int(x), int(y)) for x, y in zip(sa[both], sb[both])}:
                self.uf.union(x, y)
            bad = both & (ua != ub)
            mismatch = {(int(x), int(y)) for x, y in zip(sa[both], sb[both]) if self.unit_count(x) != self.unit_count(y)}
            if bad.any() or mismatch:
                self.fix(np.concatenate([sa[both], sb[both]]), "their channels meet in a different order or "
                         "width", node)

    def build(self) -> Structure:
        self.units()
        for b in self.log.barriers:
            self.fix(self.src.of(b.ids), b.reason, b.node)
        self.couple()
        for _ in range(4):   # a layout found uneven below fixes its groups; then rebuild
            structure, uneven = self._assemble()
            if not uneven:
                return structure
            for s, (reason, node) in uneven.items():
                self.fix(s, reason, node)
        return structure

    def _assemble(self) -> tuple[Structure, dict[int, tuple[str, str]]]:
        groups, group_of = self._groups()
        widths = {g.name: g.width for g in groups.values()}
        index = {name: i for i, name in enumerate(groups)}
        prunable = np.array([groups[n].prunable for n in groups] or [False])
        uneven: dict[int, tuple[str, str]] = {}

        def keys(ids: np.ndarray) -> np.ndarray:
            """Unit key per id: group index * 2^32 + unit, or -1 where nothing is removed."""
            s, u = self.unit_of(ids)
            g = np.where(s >= 0, group_of[np.where(s >= 0, s, 0)], -1)
            ok = (g >= 0) & prunable[np.where(g >= 0, g, 0)]
            return np.where(ok, g.astype(np.int64) * (1 << 32) + u, -1)

        names = list(groups)

        def axis_width(k: np.ndarray, size: int, node: str) -> AxisWidth | None:
            """``k``: (positions, rest) unit keys of one dim."""
            if (k < 0).all():
                return None
            first = k[:, :1]
            single = ((k == first) | (k < 0)).all(1) & (first[:, 0] >= 0)
            fixed = int((~single).sum())
            terms = []
            for g in np.unique(k[k >= 0] >> 32):
                name = names[int(g)]
                in_g = (k >> 32) == g
                rows_g = single & (first[:, 0] >> 32 == g)
                counts = np.bincount((first[rows_g, 0] & 0xFFFFFFFF).astype(np.int64), minlength=widths[name])
                mixed = in_g.any(1) & ~single
                # a position holding several units survives while any does: only when it holds them all
                full = all(np.unique(k[r][(k[r] >> 32) == g]).size == widths[name] for r in np.flatnonzero(mixed))
                if counts.size != widths[name] or (counts != counts[0]).any() or not full:
                    for s in np.flatnonzero(group_of == g):
                        uneven[int(s)] = ("its units are laid out unevenly in a tensor", node)
                    continue
                if counts[0]:
                    terms.append((name, int(counts[0])))
            return AxisWidth(size, fixed, tuple(terms)) if terms else None

        def dims_of(grid: Grid | None, node: str) -> Dims | None:
            if grid is None:
                return None
            k = keys(grid.ids)
            axes: list[AxisWidth | None] = [None] * len(grid.shape)
            for j, a in enumerate(grid.axes):
                rows = np.moveaxis(k, j, 0).reshape(k.shape[j], -1)
                axes[a] = axis_width(rows, grid.shape[a], node)
            return Dims(tuple(grid.shape), tuple(axes)) if any(axes) else None

        params: dict[str, Dims] = {}
        param_ids: dict[tuple[str, int], np.ndarray] = {}
        for sl in self.log.slices:
            param_ids.setdefault((sl.param, sl.dim), sl.ids)
        by_param: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
        for (p, d), ids in param_ids.items():
            by_param[p][d] = ids
        for p, per_dim in by_param.items():
            shape = self.log.params[p]
            axes = [None] * len(shape)
            for d, ids in per_dim.items():
                axes[d] = axis_width(keys(ids)[:, None], shape[d], p)
            if any(axes):
                params[p] = Dims(shape, tuple(axes))

        nodes = {}
        for layer in self.graph.layers:
            ins, outs = self.log.tensors.get(layer.name, ((), ()))
            parts = tuple((part, tuple(dims_of(o, layer.name) if isinstance(o, Grid) else None for o in part.operands),
                           dims_of(part.out, layer.name) if isinstance(part.out, Grid) else None)
                          for part in self.log.macs.get(layer.name, ()))
            nodes[layer.name] = NodeDims(tuple(dims_of(g, layer.name) for g in ins),
                                         tuple(dims_of(g, layer.name) for g in outs), parts)

        final = {}
        for name, g in groups.items():
            slices = []
            if g.prunable:
                gi = index[name]
                for (p, d), ids in param_ids.items():
                    k = keys(ids)
                    if ((k >> 32) == gi).any() and (k >= 0).any():
                        units = np.where((k >> 32) == gi, k & 0xFFFFFFFF, -1)
                        role = next(sl.role for sl in self.log.slices if sl.param == p and sl.dim == d)
                        slices.append(TensorSlice(p, d, units, role))
            modules = lambda role: tuple(dict.fromkeys(s.module for s in slices if s.role == role))  # noqa: E731
            members = set(g.members)
            final[name] = PrunableGroup(
                g.name, g.kind, g.width, g.unit_size, g.members, g.nodes,
                tuple(m for m in modules("follow") if m not in members),
                tuple(m for m in modules("in") if m not in members), tuple(slices), g.attention, g.fixed)
        member_of = {m: g.name for g in final.values() for m in g.members}
        return Structure(final, params, nodes, member_of, widths, dict(self.log.params)), uneven

    def _groups(self) -> tuple[dict[str, PrunableGroup], np.ndarray]:
        classes: dict[int, list[int]] = defaultdict(list)
        for s in range(len(self.src.list)):
            classes[self.uf[s]].append(s)
        groups: dict[str, PrunableGroup] = {}
        group_of = np.full(len(self.src.list), -1, dtype=np.int64)
        for members in sorted(classes.values(), key=min):
            sources = [self.src.list[s] for s in members]
            unit_counts = {self.unit_count(s) for s in members}
            fixed = next((self.fixed[s] for s in members if s in self.fixed), None)
            if len(unit_counts) > 1:
                fixed = fixed or "layers of different widths add their outputs"
            heads = any(self.unit[s] > 1 for s in members)
            attention = next((a for s in members if (a := self._attention(self.src.list[s]))), None) if heads else None
            modules = tuple(dict.fromkeys(src.module or src.node for src in sources))
            name = attention if heads and attention else modules[0]
            if name in groups:   # two groups keyed by one module (it produced twice, uncoupled)
                name = f"{name}#{len(groups)}"
            group_of[members] = len(groups)
            groups[name] = PrunableGroup(
                name=name, kind="head" if heads else "channel", width=min(unit_counts),
                unit_size=int(max(self.unit[s] for s in members)), members=modules,
                nodes=tuple(dict.fromkeys(src.node for src in sources)), followers=(), consumers=(), slices=(),
                attention=attention, fixed=fixed)
        return groups, group_of


def build_structure(graph: LayerGraph) -> Structure:
    """The prunable groups of ``graph`` (traced with channel tracking)."""
    if graph.channels is None:
        raise ValueError(f"{graph.model} was traced without channel tracking")
    return _Builder(graph, graph.channels).build()


def structure_of(graph: LayerGraph) -> Structure:
    """``graph``'s structure, built on first use and kept with the graph."""
    cached = getattr(graph, "_structure", None)
    if cached is None:
        cached = build_structure(graph)
        graph._structure = cached  # type: ignore[attr-defined]
    return cached


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


__all__ = ["HEAD_COUNT_ATTRS", "HEAD_WIDTH_ATTRS", "AxisWidth", "Dims", "NodeDims", "PrunableGroup", "Structure",
           "TensorSlice", "build_structure", "mac_count", "structure_of", "unit_scores"]
