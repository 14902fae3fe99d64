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
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

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


@dataclass(frozen=True, eq=False)
class MacPart:
    """Part of a node's MACs. With ``param``: the MACs scale with that weight's kept elements.
    Without: ``formula`` re-evaluated on the kept sizes of ``operands`` (Grid, or a plain shape) and
    ``out``."""

    macs: int
    param: str | None = None
    formula: object = None
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
    mesh = np.ix_(*[np.arange(sizes[b]) for b in tagged])
    rel = rel0 + sum(m * strides[b] for m, b in zip(mesh, tagged))
    idx = _unravel(base.sizes, base.strides, np.asarray(rel).ravel())
    if idx is None:
        raise ValueError("view outside its base")
    ids = base.grid.ids[tuple(idx[:, a] for a in channel_axes)].reshape([sizes[b] for b in tagged])
    return Grid(tuple(tagged), ids, sizes)


def _broadcast(grid: Grid, letters: Sequence[str], onto: Sequence[str], sizes: Mapping[str, int]) -> np.ndarray:
    """``grid``'s ids (axes named ``letters``) broadcast onto the letters ``onto``."""
    own = [letters[a] for a in grid.axes]
    ids = grid.ids
    order = [own.index(x) for x in onto if x in own]
    ids = np.transpose(ids, order) if order else ids
    shape = [sizes[x] if x in own else 1 for x in onto]
    return np.broadcast_to(ids.reshape(shape), [sizes[x] for x in onto])


# ---- which ops do what --------------------------------------------------------------------------

_COPIES = {"clone", "copy", "_to_copy", "contiguous", "native_dropout", "dropout", "alias", "lift_fresh_copy",
           "detach_copy", "fill", "zero", "bernoulli", "masked_fill", "where", "hardswish", "hardsigmoid",
           "hardtanh", "relu6", "elu", "selu", "celu", "leaky_relu", "gelu", "silu", "mish", "softplus",
           "threshold", "log_sigmoid_forward", "glu_never"}
_BATCH_NORMS = {"native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
                "_native_batch_norm_legit_functional", "batch_norm"}
_LAST_NORMS = {"native_layer_norm": "normalized_shape", "rms_norm": "normalized_shape",
               "_fused_rms_norm": "normalized_shape"}
_SPATIAL = {  # ops that work on the trailing k axes of (N, C, *spatial): channels pass unchanged
    "max_pool1d": 1, "max_pool2d": 2, "max_pool3d": 3, "max_pool2d_with_indices": 2,
    "max_pool3d_with_indices": 3, "avg_pool1d": 1, "avg_pool2d": 2, "avg_pool3d": 3,
    "adaptive_avg_pool1d": 1, "adaptive_avg_pool2d": 2, "adaptive_avg_pool3d": 3, "_adaptive_avg_pool2d": 2,
    "_adaptive_avg_pool3d": 3, "adaptive_max_pool1d": 1, "adaptive_max_pool2d": 2, "adaptive_max_pool3d": 3,
    "upsample_nearest1d": 1, "upsample_nearest2d": 2, "upsample_nearest3d": 3, "upsample_bilinear2d": 2,
    "upsample_bicubic2d": 2, "_upsample_nearest_exact2d": 2, "_upsample_bilinear2d_aa": 2, "upsample_linear1d": 1,
    "upsample_trilinear3d": 3, "reflection_pad1d": 1, "reflection_pad2d": 2, "reflection_pad3d": 3,
    "replication_pad1d": 1, "replication_pad2d": 2, "replication_pad3d": 3,
}
_REDUCTIONS = {"sum", "mean", "amax", "amin", "max", "min", "var", "var_mean", "std", "std_mean", "prod", "norm",
               "linalg_vector_norm", "logsumexp", "any", "all", "argmax", "argmin", "count_nonzero", "nansum",
               "nanmean", "median", "nanmedian", "mode", "aminmax"}
_ALONG_DIM = {"_softmax", "_safe_softmax", "_log_softmax", "softmax", "log_softmax", "cumsum", "cumprod",
              "cummax", "cummin", "logcumsumexp", "sort", "topk", "kthvalue", "flip", "roll", "glu"}
_ATTENTION = {"_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention",
              "_scaled_dot_product_flash_attention", "_scaled_dot_product_cudnn_attention",
              "_scaled_dot_product_attention_math", "_scaled_dot_product_fused_attention_overrideable"}
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _name(func: object) -> str:
    packet = getattr(func, "overloadpacket", func)
    return getattr(packet, "__name__", str(packet)).split(".")[-1]


def _bind(func: object, args: Sequence[object], kwargs: Mapping[str, object]) -> dict[str, object]:
    """The op's arguments by schema name."""
    schema = getattr(func, "_schema", None)
    if schema is None:
        return dict(kwargs)
    bound = {a.name: a.default_value for a in schema.arguments if a.has_default_value()}
    for a, value in zip(schema.arguments, args):
        bound[a.name] = value
    bound.update(kwargs)
    return bound


def _dims(value: object, ndim: int) -> list[int]:
    """Normalised dims of a 'dim' argument (None: every dim)."""
    if value is None or value == []:
        return list(range(ndim))
    values = [value] if isinstance(value, int) else list(value)
    return [int(v) % ndim if ndim else 0 for v in values]


class Tracker:
    """Follows channel ids through the ops a :class:`~costplan.trace.tracer` recorder sees."""

    def __init__(self, named: Mapping[str, torch.Tensor]) -> None:
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
    def barrier(self, ids: np.ndarray, node: str, reason: str) -> None:
        ids = np.unique(np.asarray(ids).ravel())
        ids = ids[ids >= 0]
        if ids.size:
            self.barriers.append(Barrier(ids, node, reason))

    def couple(self, a: np.ndarray, b: np.ndarray, node: str) -> None:
        a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
        if (a >= 0).any() or (b >= 0).any():
            self.couples.append(Couple(a.copy(), b.copy(), node))

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
        name = _name(func)
        functional = name.rstrip("_")
        try:
            result = self._rule(func, name, functional, args, kwargs, ins, outs, grids, node, module, scope)
        except _Untracked as exc:
            result = None
            for g in grids.values():
                if g is not None:
                    self.barrier(g.ids, node, str(exc))
        if result is not None:
            for t, g in zip(outs, result):
                self.tag(t, g)
        else:
            for t in outs:
                if not any(t is i for i in ins):
                    self.tag(t, None)

    def _record_macs(self, func: object, args: Sequence[object], out: object, node: str, macs: int,
                     grids: Mapping[int, Grid | None]) -> None:
        if macs <= 0:
            return
        parts = self.node_macs.setdefault(node, [])
        weights = [(self.names[a], a) for a in args if isinstance(a, torch.Tensor) and a in self.names
                   and self.names[a] in self.tensors and isinstance(self.tensors[self.names[a]], torch.nn.Parameter)]
        if _name(func) == "mkldnn_rnn_layer" and len(weights) >= 2:
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
        parts.append(MacPart(macs, None, getattr(func, "overloadpacket", func), operands,
                             out_grid or (tuple(first.shape) if first is not None else ())))

    def _rule(self, func, name, functional, args, kwargs, ins, outs, grids, node, module, scope):  # noqa: ANN001, ANN202, C901
        acts = [t for t in ins if t not in self.names]
        if not any(grids.get(id(t)) is not None for t in acts):
            return self._untagged_inputs(name, functional, args, kwargs, outs, node, module, scope)
        if name in ("convolution", "_convolution"):
            return self._convolution(args, outs, grids, node, module, scope)
        if name in ("addmm", "mm", "_addmm_activation", "linear") and self._has_param(args):
            return self._linear(name, args, outs, grids, node, module, scope)
        if functional in _BATCH_NORMS:
            return self._batch_norm(func, args, kwargs, outs, grids, node)
        if functional in _LAST_NORMS or functional == "native_group_norm":
            return self._norm(func, functional, args, kwargs, outs, grids, node)
        if name in ("bmm", "baddbmm", "mm", "mv", "dot", "vdot", "addmm", "addbmm", "addmv"):
            return self._product(name, args, outs, grids, node)
        if name in _ATTENTION:
            return self._attention(args, outs, grids, node)
        if name == "cat":
            return self._cat(args, kwargs, outs, grids, node)
        if name == "stack":
            return self._stack(args, kwargs, outs, grids, node)
        if name in _SPATIAL or name == "constant_pad_nd":
            return self._spatial(name, args, outs, grids, node)
        if functional in _REDUCTIONS:
            return self._reduction(func, args, kwargs, outs, grids, node)
        if functional in _ALONG_DIM:
            return self._along_dim(func, functional, args, kwargs, outs, grids, node)
        if name == "index_select":
            return self._index_select(args, outs, grids, node)
        if name == "copy_" and outs:
            return self._copy_into(args, outs, grids, node)
        if functional in _COPIES or self._pointwise(func, functional):
            return self._elementwise(args, kwargs, outs, grids, node, name)
        raise _Untracked(f"{name} (no rule for how it reads channels)")

    @staticmethod
    def _pointwise(func: object, functional: str) -> bool:
        if torch.Tag.pointwise in getattr(func, "tags", ()):
            return True
        twin = getattr(getattr(torch.ops.aten, functional, None), "default", None)
        return twin is not None and torch.Tag.pointwise in twin.tags

    def _has_param(self, args: Sequence[object]) -> bool:
        return any(isinstance(a, torch.Tensor) and a in self.names for a in args)

    def _untagged_inputs(self, name, functional, args, kwargs, outs, node, module, scope):  # noqa: ANN001, ANN202
        """No input carries channels: producers still start new ones."""
        if name in ("convolution", "_convolution"):
            return self._convolution(args, outs, {}, node, module, scope)
        if name in ("addmm", "mm", "_addmm_activation", "linear") and self._has_param(args):
            return self._linear(name, args, outs, {}, node, module, scope)
        return None

    # ---- producers and followers ------------------------------------------------------------------
    def _channel_ids(self, grid: Grid | None, axis: int, width: int, node: str, what: str) -> np.ndarray:
        """Ids along ``axis`` of an input whose channels a weight reads (-1 where untagged)."""
        if grid is None:
            return np.full(width, NONE, dtype=np.int64)
        if grid.axes != (axis,):
            self.barrier(grid.ids, node, f"{what} reads them spread over several axes")
            return np.full(width, NONE, dtype=np.int64)
        return grid.ids

    def _convolution(self, args, outs, grids, node, module, scope):  # noqa: ANN001, ANN202
        x, w, b = args[0], args[1], args[2]
        transposed, groups = bool(args[6]), int(args[8])
        grid = grids.get(id(x))
        wname = self.names.get(w)
        if wname is None:
            raise _Untracked("a convolution with a computed weight")
        cin = int(x.shape[1]) if x.dim() > 1 else 0
        ids = self._channel_ids(grid, 1, cin, node, "a convolution")
        bname = self.names.get(b) if isinstance(b, torch.Tensor) else None
        cout = int(outs[0].shape[1])
        if transposed:
            self.barrier(ids, node, "a transposed convolution reads them")
            return [None]
        if groups == 1:
            self.slice(wname, 1, ids, "in", node)
            own = self.new_source(node, module, cout, scope)
            self.slice(wname, 0, own, "out", node)
            if bname:
                self.slice(bname, 0, own, "out", node)
            return [Grid((1,), own, tuple(outs[0].shape))]
        if groups == cin == cout:            # depthwise: one filter per channel
            self.slice(wname, 0, ids, "follow", node)
            if bname:
                self.slice(bname, 0, ids, "follow", node)
            return [Grid((1,), ids, tuple(outs[0].shape))] if (ids >= 0).any() else [None]
        self.barrier(ids, node, f"a grouped convolution (groups={groups}) reads them in fixed groups")
        return [None]

    def _linear(self, name, args, outs, grids, node, module, scope):  # noqa: ANN001, ANN202
        if name == "linear":
            x, w, b = args[0], args[1], (args[2] if len(args) > 2 else None)
            wname = self.names.get(w)
            if wname is None or x in self.names:
                raise _Untracked("a linear layer with a computed weight")
            in_dim, out_dim, x_axis = 1, 0, x.dim() - 1
        else:
            a, w = (args[1], args[2]) if name in ("addmm", "_addmm_activation") else (args[0], args[1])
            b = args[0] if name in ("addmm", "_addmm_activation") else None
            if a in self.names and w not in self.names:     # weight on the left: W @ x
                raise _Untracked("a weight multiplied from the left")
            x = a
            wname = self.names.get(w)
            if wname is None:
                raise _Untracked("a matrix product with a computed weight")
            param = self.tensors[wname]
            in_dim = self._param_dim(param, w, 0)
            out_dim = self._param_dim(param, w, 1)
            x_axis = 1
        grid = grids.get(id(x))
        ids = self._channel_ids(grid, x_axis, int(x.shape[x_axis]), node, "a linear layer")
        self.slice(wname, in_dim, ids, "in", node)
        width = int(outs[0].shape[-1])
        own = self.new_source(node, module, width, scope)
        self.slice(wname, out_dim, own, "out", node)
        bname = self.names.get(b) if isinstance(b, torch.Tensor) else None
        if bname and self.params[bname] == (width,):
            self.slice(bname, 0, own, "out", node)
        return [Grid((outs[0].dim() - 1,), own, tuple(outs[0].shape))]

    @staticmethod
    def _param_dim(param: torch.Tensor, view: torch.Tensor, axis: int) -> int:
        """The dim of ``param`` that axis ``axis`` of ``view`` (a transpose of it, or itself) runs along."""
        if view.dim() == 2 and param.dim() == 2:
            if view.stride() == param.stride() and view.shape == param.shape:
                return axis
            return 1 - axis
        raise _Untracked("a weight of unexpected shape")

    def _batch_norm(self, func, args, kwargs, outs, grids, node):  # noqa: ANN001, ANN202
        bound = _bind(func, args, kwargs)
        x = bound.get("input")
        grid = grids.get(id(x))
        channels = int(x.shape[1]) if x.dim() > 1 else int(x.shape[0])
        ids = self._channel_ids(grid, 1, channels, node, "a batch norm")
        for key in ("weight", "bias", "running_mean", "running_var"):
            t = bound.get(key)
            if isinstance(t, torch.Tensor) and t in self.names:
                self.slice(self.names[t], 0, ids, "follow", node)
        keep = Grid((1,), ids, tuple(x.shape)) if (ids >= 0).any() else None
        return [keep] + [None] * (len(outs) - 1)

    def _norm(self, func, functional, args, kwargs, outs, grids, node):  # noqa: ANN001, ANN202
        bound = _bind(func, args, kwargs)
        x = bound.get("input")
        grid = grids.get(id(x))
        if functional == "native_group_norm":
            normalised = list(range(1, x.dim()))
        else:
            shape = bound.get(_LAST_NORMS[functional]) or []
            normalised = list(range(x.dim() - len(shape), x.dim()))
        if grid is not None and set(grid.axes) & set(normalised):
            self.barrier(grid.ids, node, f"{functional.lstrip('_')} normalises over them (their mean and "
                                         "variance would change)")
        return [grid] + [None] * (len(outs) - 1)

    # ---- products --------------------------------------------------------------------------------
    def _product(self, name, args, outs, grids, node):  # noqa: ANN001, ANN202
        if name in ("mm", "addmm", "addbmm", "addmv", "baddbmm") and self._has_param(args):
            raise _Untracked(f"{name} with a parameter costplan does not slice")
        specs = {"bmm": (["bmk", "bkn"], "bmn"), "mm": (["mk", "kn"], "mn"), "mv": (["mn", "n"], "m"),
                 "dot": (["n", "n"], ""), "vdot": (["n", "n"], ""), "addmm": (["mn", "mk", "kn"], "mn"),
                 "baddbmm": (["bmn", "bmk", "bkn"], "bmn"), "addmv": (["m", "mn", "n"], "m"),
                 "addbmm": (["mn", "bmk", "bkn"], "mn")}
        letters, out_letters = specs[name]
        tensors = [a for a in args[:len(letters)]]
        operands = []
        for t, spec in zip(tensors, letters):
            if name in ("addmm", "baddbmm", "addmv", "addbmm") and spec == letters[0]:
                spec = spec[len(spec) - t.dim():] if t.dim() < len(spec) else spec    # a broadcast bias
            operands.append((t, spec))
        return [self._einsum(operands, out_letters, outs[0], grids, node, name)]

    def _attention(self, args, outs, grids, node):  # noqa: ANN001, ANN202
        q, k, v = args[0], args[1], args[2]
        batch = _LETTERS[:q.dim() - 3]
        operands = [(q, batch + "hid"), (k, batch + "hjd"), (v, batch + "hje")]
        mask = next((a for a in args[3:] if isinstance(a, torch.Tensor) and a.dim() >= 2), None)
        if mask is not None:
            spec = (batch + "hij")[-mask.dim():]
            operands.append((mask, spec))
        out = self._einsum(operands, batch + "hie", outs[0], grids, node, "attention")
        return [out] + [None] * (len(outs) - 1)

    def _einsum(self, operands, out_letters, out, grids, node, what):  # noqa: ANN001, ANN202
        """Couple the ids that meet when ``operands`` ((tensor, letters) pairs) combine along shared
        letters, and the output's grid. An operand without ids but with a size above 1 along a letter
        another operand tags meets those channels at a fixed width: a barrier."""
        sizes: dict[str, int] = {}
        entries = []
        for t, spec in operands:
            if not isinstance(t, torch.Tensor):
                continue
            for x, s in zip(spec, t.shape):
                if s > 1:
                    sizes[x] = max(sizes.get(x, 1), int(s))
            grid = grids.get(id(t)) if t not in self.names else None
            tagged = {spec[a] for a in grid.axes} if grid is not None else set()
            entries.append((t, spec, grid, tagged))
        for i, (t, spec, grid, tagged) in enumerate(entries):
            if grid is None:
                continue
            for t2, spec2, grid2, tagged2 in entries:
                for x in tagged - tagged2:
                    if x in spec2 and t2.shape[spec2.index(x)] > 1:
                        who = f"parameter {self.names[t2]}" if t2 in self.names else "a tensor of fixed width"
                        self.barrier(grid.ids, node, f"they meet {who} in {what}")
            for t2, spec2, grid2, tagged2 in entries[:i]:
                shared = tagged & tagged2
                if grid2 is not None and shared:
                    onto = sorted(tagged | tagged2)
                    self.couple(_broadcast(grid, spec, onto, sizes), _broadcast(grid2, spec2, onto, sizes), node)
                    break
        wanted = {x for x in out_letters if any(x in e[3] for e in entries)}
        if not wanted:
            return None
        for t, spec, grid, tagged in entries:
            if grid is not None and wanted <= tagged:
                onto = [x for x in out_letters if x in wanted]
                full = _broadcast(grid, spec, sorted(tagged), sizes)
                order = sorted(tagged)
                index = tuple(slice(None) if x in wanted else 0 for x in order)
                ids = full[index]
                kept = [x for x in order if x in wanted]
                ids = np.transpose(ids, [kept.index(x) for x in onto])
                axes = tuple(out_letters.index(x) for x in onto)
                if any(out.shape[a] != ids.shape[j] for j, a in enumerate(axes)):
                    raise _Untracked(f"{what} broadcasts them")
                return Grid(axes, np.ascontiguousarray(ids), tuple(out.shape))
        raise _Untracked(f"{what} combines channels of two layers on different axes")

    # ---- shape ops --------------------------------------------------------------------------------
    def _elementwise(self, args, kwargs, outs, grids, node, name):  # noqa: ANN001, ANN202
        if not outs:
            return None
        out = outs[0]
        n = out.dim()
        operands = []
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor) and t.dim() <= n:
                operands.append((t, _LETTERS[n - t.dim():n]))
        grid = self._einsum(operands, _LETTERS[:n], out, grids, node, name)
        return [grid] * len(outs) if all(o.shape == out.shape for o in outs) else [grid] + [None] * (len(outs) - 1)

    def _copy_into(self, args, outs, grids, node):  # noqa: ANN001, ANN202
        dst, src = args[0], args[1]
        if dst in self.bases or dst.shape != src.shape:
            raise _Untracked("a copy into part of another tensor")
        return [grids.get(id(src))]

    def _cat(self, args, kwargs, outs, grids, node):  # noqa: ANN001, ANN202
        tensors = [t for t in args[0] if not (t.dim() == 1 and t.shape[0] == 0)]  # legacy empty operands
        out = outs[0]
        dim = int(args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim()
        tags = [grids.get(id(t)) if t not in self.names else None for t in tensors]
        along = [g for g in tags if g is not None and dim in g.axes]
        if along:
            if any(g is not None and g.axes != (dim,) for g in tags):
                raise _Untracked("a concatenation of channels spread over several axes")
            parts = [g.ids if g is not None else np.full(t.shape[dim], NONE, dtype=np.int64)
                     for t, g in zip(tensors, tags)]
            for t, g in zip(tensors, tags):
                if g is None and t in self.names:
                    self.barrier(np.concatenate(parts), node, f"they are concatenated with parameter {self.names[t]}")
            return [Grid((dim,), np.concatenate(parts), tuple(out.shape))]
        letters = _LETTERS[:out.dim()]
        operands = [(t, letters[:dim] + "#" + letters[dim + 1:]) for t in tensors]
        return [self._einsum(operands, letters[:dim] + "#" + letters[dim + 1:], out, grids, node, "cat")]

    def _stack(self, args, kwargs, outs, grids, node):  # noqa: ANN001, ANN202
        tensors = list(args[0])
        out = outs[0]
        dim = int(args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim()
        letters = _LETTERS[:out.dim()]
        spec = letters[:dim] + letters[dim + 1:]
        return [self._einsum([(t, spec) for t in tensors], letters, out, grids, node, "stack")]

    def _spatial(self, name, args, outs, grids, node):  # noqa: ANN001, ANN202
        x = args[0]
        grid = grids.get(id(x))
        if name == "constant_pad_nd":
            pads = list(args[1])
            spatial = [x.dim() - 1 - i // 2 for i, p in enumerate(pads) if p]
        else:
            spatial = list(range(x.dim() - _SPATIAL[name], x.dim()))
        if grid is not None and (set(grid.axes) & set(spatial)):
            raise _Untracked(f"{name} runs along their axis")
        results = []
        for o in outs:
            ok = grid is not None and o.dim() == x.dim() and all(o.shape[a] == x.shape[a] for a in grid.axes)
            results.append(Grid(grid.axes, grid.ids, tuple(o.shape)) if ok else None)
        return results

    def _reduction(self, func, args, kwargs, outs, grids, node):  # noqa: ANN001, ANN202
        bound = _bind(func, args, kwargs)
        x = args[0]
        grid = grids.get(id(x))
        dims = _dims(bound.get("dim"), x.dim())
        if set(grid.axes) & set(dims):
            raise _Untracked(f"{_name(func)} reduces over them")
        keep = bool(bound.get("keepdim", False))
        axes = tuple(a if keep else a - sum(d < a for d in dims) for a in grid.axes)
        return [Grid(axes, grid.ids, tuple(o.shape)) for o in outs]

    def _along_dim(self, func, functional, args, kwargs, outs, grids, node):  # noqa: ANN001, ANN202
        bound = _bind(func, args, kwargs)
        x = args[0]
        grid = grids.get(id(x))
        dims = _dims(bound.get("dim", bound.get("dims", -1)), x.dim())
        if functional in ("flip", "roll") and bound.get("dims") is not None:
            dims = _dims(bound.get("dims"), x.dim())
        if set(grid.axes) & set(dims):
            raise _Untracked(f"{functional.lstrip('_')} runs along them")
        return [grid if o.shape == x.shape else None for o in outs]

    def _index_select(self, args, outs, grids, node):  # noqa: ANN001, ANN202
        x, dim = args[0], int(args[1]) % args[0].dim()
        grid = grids.get(id(x))
        if dim in grid.axes:
            raise _Untracked("index_select picks among them")
        return [Grid(grid.axes, grid.ids, tuple(outs[0].shape))]

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
            macs={k: tuple(v) for k, v in self.node_macs.items()}, params=dict(self.params))


class _Untracked(Exception):
    """An op reads channels in a way pruning would change: its message says how."""


__all__ = ["NONE", "Barrier", "ChannelLog", "Couple", "Grid", "MacPart", "Slice", "Source", "Tracker", "view_grid"]
