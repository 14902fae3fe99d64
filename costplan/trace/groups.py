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
from collections.abc import Sequence

import numpy as np
from networkx.utils import UnionFind

from costplan.trace.graph import LayerGraph
from costplan.trace.grids import ChannelLog, Grid, Source
from costplan.trace.structure import (
    AxisWidth,
    Dims,
    Keep,
    NodeDims,
    PrunableGroup,
    Structure,
    TensorSlice,
    kept_positions,
    mac_count,
    positions_mask,
    unit_scores,
)


def _distinct_per_row(k: np.ndarray) -> np.ndarray:
    """How many distinct values >= 0 each row of ``k`` holds."""
    ordered = np.sort(k, axis=1)
    new = np.diff(ordered, axis=1, prepend=-2) != 0
    return (new & (ordered >= 0)).sum(axis=1)


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


class _UnitKeys:
    """Every channel id as a unit key (group index * 2^32 + unit; -1 where nothing can be removed),
    and the widths of tensor axes those keys run along. Axes holding a group's units unevenly are
    collected in ``uneven`` (source -> (why, where))."""

    def __init__(self, builder: _Builder, groups: dict[str, PrunableGroup], group_of: np.ndarray) -> None:
        self.builder, self.group_of = builder, group_of
        self.names = list(groups)
        self.widths = {g.name: g.width for g in groups.values()}
        self.prunable = np.array([groups[n].prunable for n in groups] or [False])
        self.uneven: dict[int, tuple[str, str]] = {}

    def keys(self, ids: np.ndarray) -> np.ndarray:
        s, u = self.builder.unit_of(ids)
        g = np.where(s >= 0, self.group_of[np.where(s >= 0, s, 0)], -1)
        ok = (g >= 0) & self.prunable[np.where(g >= 0, g, 0)]
        return np.where(ok, g.astype(np.int64) * (1 << 32) + u, -1)

    def axis_width(self, k: np.ndarray, size: int, node: str) -> AxisWidth | None:
        """``k``: (positions, rest) unit keys of one dim."""
        if (k < 0).all():
            return None
        first = k[:, :1]
        single = ((k == first) | (k < 0)).all(1) & (first[:, 0] >= 0)
        fixed = int((~single).sum())
        terms = []
        for g in np.unique(k[k >= 0] >> 32):
            name = self.names[int(g)]
            in_g = (k >> 32) == g
            rows_g = single & (first[:, 0] >> 32 == g)
            counts = np.bincount((first[rows_g, 0] & 0xFFFFFFFF).astype(np.int64), minlength=self.widths[name])
            mixed = in_g.any(1) & ~single
            # a position holding several units survives while any does: only when it holds them all
            full = bool((_distinct_per_row(np.where((k[mixed] >> 32) == g, k[mixed], -1)) == self.widths[name]).all())
            if counts.size != self.widths[name] or (counts != counts[0]).any() or not full:
                for s in np.flatnonzero(self.group_of == g):
                    self.uneven[int(s)] = ("its units are laid out unevenly in a tensor", node)
                continue
            if counts[0]:
                terms.append((name, int(counts[0])))
        return AxisWidth(size, fixed, tuple(terms)) if terms else None

    def dims_of(self, grid: Grid | None, node: str) -> Dims | None:
        if grid is None:
            return None
        k = self.keys(grid.ids)
        axes: list[AxisWidth | None] = [None] * len(grid.shape)
        for j, a in enumerate(grid.axes):
            rows = np.moveaxis(k, j, 0).reshape(k.shape[j], -1)
            axes[a] = self.axis_width(rows, grid.shape[a], node)
        return Dims(tuple(grid.shape), tuple(axes)) if any(axes) else None


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
                unit = max(inners)
                # rotary embeddings read each head in halves (rotate_half): a half is inside one head,
                # so the head stays the unit (any other mix of lengths spans heads: nn.MultiheadAttention)
                if attention is None or 0 in inners or chunk % unit or not inners <= {unit, unit // 2}:
                    self.fix(s, "its channels are reshaped across several axes", splits[s][0][1])
                    continue
                self.unit[s] = unit
        grouped: set[int] = set()
        for ids, g in self.log.head_groups:     # grouped-query attention: g query heads per KV head
            for s in np.unique(self.src.of(ids)):
                s = int(s)
                if s < 0 or s in grouped or s in self.fixed:
                    continue
                grouped.add(s)
                chunk = self.src.width[s] // self.chunks[s]
                if self.unit[s] <= 1 or chunk % (self.unit[s] * g):
                    self.fix(s, "its heads do not group evenly onto the key/value heads", "")
                    continue
                self.unit[s] *= g
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
                # a head's channels in another order (rotate_half's halves swapped) are still one head
                step = np.diff(np.sort(ids, axis=a) if mine.all() else ids, axis=a)
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

    def unit_counts(self, s: int | np.ndarray | slice = slice(None)) -> np.ndarray:
        """Units (channels, or heads) of source(s) ``s``: all by default."""
        return self.src.width[s] // self.chunks[s] // self.unit[s]

    def unit_count(self, s: int) -> int:
        return int(self.unit_counts(s))

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
            # the distinct (source, source) pairs, found in numpy: a 7B model's couplings are 35 M ids
            met = np.unique(sa[both].astype(np.int64) * len(self.src.width) + sb[both])
            x, y = np.divmod(met, len(self.src.width))
            for i, j in zip(x.tolist(), y.tolist()):
                self.uf.union(i, j)
            counts = self.unit_counts()
            bad = both & (ua != ub)
            if bad.any() or (counts[x] != counts[y]).any():
                self.fix(np.concatenate([sa[both], sb[both]]), "their channels meet in a different order or "
                         "width", node)

    def build(self) -> Structure:
        self.units()
        for b in self.log.barriers:
            sources = np.unique(self.src.of(b.ids))
            if b.within:    # fixed along a head's channels only: whole heads may go
                sources = [s for s in sources if s < 0 or self.unit[s] <= 1 or self.unit[s] % b.within]
            self.fix(sources, b.reason, b.node)
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
        units = _UnitKeys(self, groups, group_of)
        param_ids: dict[tuple[str, int], np.ndarray] = {}
        roles: dict[tuple[str, int], str] = {}
        for sl in self.log.slices:
            param_ids.setdefault((sl.param, sl.dim), sl.ids)
            roles.setdefault((sl.param, sl.dim), sl.role)
        params = self._param_dims(units, param_ids)
        nodes = {layer.name: self._node_dims(units, layer.name) for layer in self.graph.layers}
        by_group: dict[int, list[TensorSlice]] = defaultdict(list)
        for (p, d), ids in param_ids.items():
            k = units.keys(ids)
            for gi in np.unique(k[k >= 0] >> 32):
                by_group[int(gi)].append(TensorSlice(p, d, np.where((k >> 32) == gi, k & 0xFFFFFFFF, -1), roles[(p, d)]))
        final = {}
        for gi, (name, g) in enumerate(groups.items()):
            slices = by_group[gi] if g.prunable else []
            modules = lambda role: tuple(dict.fromkeys(s.module for s in slices if s.role == role))  # noqa: E731
            members = set(g.members)
            final[name] = PrunableGroup(
                g.name, g.kind, g.width, g.unit_size, g.members, g.nodes,
                tuple(m for m in modules("follow") if m not in members),
                tuple(m for m in modules("in") if m not in members), tuple(slices), g.attention, g.fixed)
        member_of = {m: g.name for g in final.values() for m in g.members}
        return Structure(final, params, nodes, member_of, units.widths, dict(self.log.params)), units.uneven

    def _param_dims(self, units: _UnitKeys, param_ids: dict[tuple[str, int], np.ndarray]) -> dict[str, Dims]:
        """Each parameter's axes that groups' units run along."""
        by_param: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
        for (p, d), ids in param_ids.items():
            by_param[p][d] = ids
        params: dict[str, Dims] = {}
        for p, per_dim in by_param.items():
            shape = self.log.params[p]
            axes: list[AxisWidth | None] = [None] * len(shape)
            for d, ids in per_dim.items():
                axes[d] = units.axis_width(units.keys(ids)[:, None], shape[d], p)
            if any(axes):
                params[p] = Dims(shape, tuple(axes))
        return params

    def _node_dims(self, units: _UnitKeys, node: str) -> NodeDims:
        """The widths of a node's inputs, outputs and MAC operands under groups' units."""
        ins, outs = self.log.tensors.get(node, ((), ()))
        parts = tuple((part, tuple(units.dims_of(o, node) if isinstance(o, Grid) else None for o in part.operands),
                       units.dims_of(part.out, node) if isinstance(part.out, Grid) else None)
                      for part in self.log.macs.get(node, ()))
        return NodeDims(tuple(units.dims_of(g, node) for g in ins), tuple(units.dims_of(g, node) for g in outs), parts)

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


__all__ = ["AxisWidth", "Dims", "Keep", "NodeDims", "PrunableGroup", "Structure",
           "TensorSlice", "build_structure", "kept_positions", "mac_count", "positions_mask", "structure_of",
           "unit_scores"]
