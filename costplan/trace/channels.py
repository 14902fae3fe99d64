"""Which channels each tensor carries, followed through one traced forward pass.

Every output channel of a convolution or linear layer (a *producer*) gets a global integer id. A tensor
an op writes carries a *grid*: for the axes that hold channels, the id at every position (-1 where a
position is no producer's channel: the model input, a lookup table). A view shares its base's storage,
so its grid is read off the base's through the strides: a flatten, a transpose, a head split, a slice or
a concatenation offset is followed exactly, never guessed from shapes.

Ops say what happens to the ids they read:

- a producer's weight columns hold the ids of its input (``in`` slices) and its rows hold new ids
  (``out``); a batch norm or depthwise convolution holds one entry per id (``follow``);
- ops that combine tensors position by position (add, mul, cat, attention matmuls) *couple* the ids that
  meet: those channels are removed together or not at all;
- an op that reads channels in a way removing some would change for the others (a norm or reduction
  over channels, a grouped convolution, an op with no rule here) sets a *barrier* on them.

:mod:`costplan.trace.groups` turns this log into the prunable groups.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from costplan.trace.channel_rules import OpRules, Untracked
from costplan.trace.grids import (
    NONE,
    Barrier,
    ChannelLog,
    Couple,
    Grid,
    MacPart,
    Slice,
    Source,
    _Base,
    _geometry,
    view_grid,
)
from costplan.trace.ops import MAC_FORMULAS, MacFormula, formula_of, op_name


def _owned(ids: np.ndarray) -> np.ndarray:
    """``ids`` flat, in memory of their own: ravel already copies a broadcast grid, which is what
    most couplings are, and a second copy doubled the time couplings took."""
    flat = np.ravel(ids)
    return flat.copy() if np.may_share_memory(flat, ids) else flat


class Tracker(OpRules):
    """Follows channel ids through the ops a :class:`~costplan.trace.tracer` recorder sees."""

    def __init__(self, named: Mapping[str, torch.Tensor], formulas: Mapping[object, MacFormula] = MAC_FORMULAS) -> None:
        self.formulas = formulas
        self.bases: WeakIdKeyDictionary = WeakIdKeyDictionary()   # tensor -> _Base (views share their base's)
        self.names: WeakIdKeyDictionary = WeakIdKeyDictionary()   # parameter or buffer (or a view) -> name
        self.params = {n: tuple(t.shape) for n, t in named.items()}
        self.tensors = dict(named)
        for n, t in named.items():
            self.names[t] = n
        self.next_id = 0
        self.sources: list[Source] = []
        self.slices: list[Slice] = []
        self.couples: list[Couple] = []
        self.barriers: list[Barrier] = []
        self.head_groups: list[tuple[np.ndarray, int]] = []
        self.reads: list[tuple[Grid, str]] = []
        self.node_tensors: dict[str, tuple[list[Grid | None], list[Grid | None]]] = {}
        self.node_macs: dict[str, list[MacPart]] = {}
        self.suspended = 0                     # > 0 inside a module with a module-level rule

    # ---- tags ------------------------------------------------------------------------------------
    def alias(self, source: torch.Tensor, outs: Sequence[torch.Tensor]) -> None:
        base = self.bases.get(source)
        name = self.names.get(source)
        for t in outs:
            if base is not None:
                self.bases[t] = base
            if name is not None:
                self.names[t] = name

    def grid(self, t: torch.Tensor, node: str = "") -> Grid | None:
        """The grid ``t`` carries (None: no channels)."""
        base = self.bases.get(t)
        if base is None or t.is_nested:
            return None
        try:
            grid = view_grid(base, t)
        except ValueError:
            self.barrier(base.grid.ids, node, "a view costplan cannot follow reads them")
            return None
        if grid is None or not grid.axes:
            return None
        return grid

    def tag(self, t: torch.Tensor, grid: Grid | None) -> None:
        if not isinstance(t, torch.Tensor) or t.is_nested:
            return
        if grid is None or not grid.axes:
            self.bases.pop(t, None) if t in self.bases else None
            return
        sizes, strides, offset = _geometry(t)
        self.bases[t] = _Base(sizes, strides, offset, Grid(grid.axes, grid.ids, sizes))

    def new_source(self, node: str, module: str | None, width: int, scope: tuple[str, ...], gates: int = 0) -> np.ndarray:
        ids = np.arange(self.next_id, self.next_id + width, dtype=np.int64)
        self.sources.append(Source(node, module, self.next_id, width, scope, gates))
        self.next_id += width
        return ids

    # ---- events ----------------------------------------------------------------------------------
    def barrier(self, ids: np.ndarray, node: str, reason: str, within: int = 0) -> None:
        ids = np.unique(np.asarray(ids).ravel())
        ids = ids[ids >= 0]
        if ids.size:
            self.barriers.append(Barrier(ids, node, reason, within))

    def couple(self, a: np.ndarray, b: np.ndarray, node: str) -> None:
        a, b = _owned(a), _owned(b)
        if (a >= 0).any() or (b >= 0).any():
            self.couples.append(Couple(a, b, node))

    def slice(self, param: str, dim: int, ids: np.ndarray, role: str, node: str) -> None:
        if (np.asarray(ids) >= 0).any():
            self.slices.append(Slice(param, dim, np.asarray(ids, dtype=np.int64), role, node))

    # ---- ops -------------------------------------------------------------------------------------
    def op(self, func: object, args: Sequence[object], kwargs: Mapping[str, object], out: object, node: str,
           module: str | None, scope: tuple[str, ...], macs: int) -> None:
        """Follow channels through one op that ran as part of ``node``."""
        ins = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if self.suspended:
            self._record_macs(func, args, out, node, macs, {})
            for t in outs:
                if t not in self.names and not any(t is i for i in ins):
                    self.bases.pop(t, None) if t in self.bases else None
            return
        grids = {id(t): self.grid(t, node) for t in ins if t not in self.names}
        for t in ins:
            g = grids.get(id(t))
            if g is not None:
                self.reads.append((g, node))
        self._record_macs(func, args, out, node, macs, grids)
        name = op_name(func)
        functional = name.rstrip("_")
        try:
            result = self._rule(func, name, functional, args, kwargs, ins, outs, grids, node, module, scope)
        except Untracked as exc:
            result = None
            self._fix_all(grids, node, str(exc))
        except Exception as exc:  # noqa: BLE001  a rule must never break the trace: fix what it read
            result = None
            self._fix_all(grids, node, f"costplan could not follow how {name} reads them "
                                       f"({type(exc).__name__})")
        if result is not None:
            for t, g in zip(outs, result):
                self.tag(t, g)
        else:
            for t in outs:
                if not any(t is i for i in ins):
                    self.tag(t, None)

    def _fix_all(self, grids: Mapping[int, Grid | None], node: str, reason: str) -> None:
        for g in grids.values():
            if g is not None:
                self.barrier(g.ids, node, reason)

    def _record_macs(self, func: object, args: Sequence[object], out: object, node: str, macs: int,
                     grids: Mapping[int, Grid | None]) -> None:
        if macs <= 0:
            return
        parts = self.node_macs.setdefault(node, [])
        weights = [(self.names[a], a) for a in args if isinstance(a, torch.Tensor) and a in self.names
                   and self.names[a] in self.tensors and isinstance(self.tensors[self.names[a]], torch.nn.Parameter)]
        if op_name(func) == "mkldnn_rnn_layer" and len(weights) >= 2:
            # input and hidden projections: MACs in proportion to each weight's elements
            total = sum(math.prod(w.shape) for _, w in weights[:2])
            for name, w in weights[:2]:
                parts.append(MacPart(round(macs * math.prod(w.shape) / total), name))
            return
        if weights:
            name, _ = max(weights, key=lambda nw: math.prod(nw[1].shape))
            parts.append(MacPart(macs, name))
            return
        operands = tuple(grids.get(id(a)) or tuple(a.shape) if isinstance(a, torch.Tensor) else a for a in args)
        first = next((t for t in tree_leaves(out) if isinstance(t, torch.Tensor)), None)
        out_grid = self.grid(first, node) if first is not None else None
        parts.append(MacPart(macs, None, formula_of(func, self.formulas), operands,
                             out_grid or (tuple(first.shape) if first is not None else ())))

    # ---- modules with rules of their own ----------------------------------------------------------
    def recurrent(self, module: torch.nn.RNNBase, name: str, node: str, args: Sequence[object], output: object,
                  scope: tuple[str, ...]) -> None:
        """An LSTM/GRU/RNN: its input weights read the input's channels; its hidden units are one new
        set of channels shared by every layer and direction (they share ``hidden_size``)."""
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor):
            for t in tree_leaves(args):
                if isinstance(t, torch.Tensor) and (g := self.grid(t, node)) is not None:
                    self.barrier(g.ids, node, "a packed sequence feeds a recurrent layer")
            return
        prefix = f"{name}." if name else ""
        dirs = 2 if module.bidirectional else 1
        suffixes = ["", "_reverse"][:dirs]
        grid = self.grid(x, node)
        ids = self._channel_ids(grid, x.dim() - 1, int(x.shape[-1]), node, "a recurrent layer")
        for sfx in suffixes:
            self.slice(f"{prefix}weight_ih_l0{sfx}", 1, ids, "in", node)
        outs = [t for t in tree_leaves(output) if isinstance(t, torch.Tensor)]
        if getattr(module, "proj_size", 0):
            for t in outs:
                self.tag(t, None)
            return
        gates = {"LSTM": 4, "GRU": 3}.get(module.mode, 1)
        units = self.new_source(node, name, module.hidden_size, scope, gates)
        rows = np.tile(units, gates)
        for layer in range(module.num_layers):
            for sfx in suffixes:
                self.slice(f"{prefix}weight_ih_l{layer}{sfx}", 0, rows, "out", node)
                self.slice(f"{prefix}weight_hh_l{layer}{sfx}", 0, rows, "out", node)
                self.slice(f"{prefix}weight_hh_l{layer}{sfx}", 1, units, "in", node)
                if layer:
                    self.slice(f"{prefix}weight_ih_l{layer}{sfx}", 1, np.tile(units, dirs), "in", node)
                if module.bias:
                    self.slice(f"{prefix}bias_ih_l{layer}{sfx}", 0, rows, "out", node)
                    self.slice(f"{prefix}bias_hh_l{layer}{sfx}", 0, rows, "out", node)
        for i, t in enumerate(outs):
            width = int(t.shape[-1])
            last = np.tile(units, width // module.hidden_size) if width % module.hidden_size == 0 else None
            self.tag(t, Grid((t.dim() - 1,), last, tuple(t.shape)) if last is not None else None)

    def outputs(self, outs: Sequence[torch.Tensor]) -> None:
        """The model's outputs keep their width."""
        for t in outs:
            g = self.grid(t, "<output>")
            if g is not None:
                self.barrier(g.ids, "<output>", "they reach the model's output")

    def log(self) -> ChannelLog:
        return ChannelLog(
            sources=tuple(self.sources), slices=tuple(self.slices), couples=tuple(self.couples),
            barriers=tuple(self.barriers), reads=tuple(self.reads),
            tensors={k: (tuple(v[0]), tuple(v[1])) for k, v in self.node_tensors.items()},
            macs={k: tuple(v) for k, v in self.node_macs.items()}, params=dict(self.params),
            head_groups=tuple(self.head_groups))


__all__ = ["NONE", "Barrier", "ChannelLog", "Couple", "Grid", "MacPart", "Slice", "Source", "Tracker", "view_grid"]
