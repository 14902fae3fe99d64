"""How each aten op reads and writes channel ids: the rules :class:`costplan.trace.channels.Tracker`
applies to one op. A rule tags the op's outputs and logs slices, couplings and barriers; an op with no
rule raises :class:`Untracked`, and the channels it read become fixed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils._pytree import tree_leaves

from costplan.trace.grids import NONE, Grid, broadcast, meeting_ids
from costplan.trace.ops import ATTENTION_OPS, op_name

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
_ATTENTION = set(ATTENTION_OPS)
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


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


class Untracked(Exception):
    """An op reads channels in a way pruning would change: its message says how."""


class OpRules:
    """The per-op rules, mixed into the tracker (which supplies ``names``, ``tensors``, ``params``,
    ``barrier``, ``couple``, ``slice`` and ``new_source``)."""

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
        if functional == "index_copy" and outs:
            return self._index_copy(args, outs, grids, node)
        if functional in _COPIES or self._pointwise(func, functional):
            return self._elementwise(args, kwargs, outs, grids, node, name)
        raise Untracked(f"{name} (no rule for how it reads channels)")

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
            raise Untracked("a convolution with a computed weight")
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
                raise Untracked("a linear layer with a computed weight")
            in_dim, out_dim, x_axis = 1, 0, x.dim() - 1
        else:
            a, w = (args[1], args[2]) if name in ("addmm", "_addmm_activation") else (args[0], args[1])
            b = args[0] if name in ("addmm", "_addmm_activation") else None
            if a in self.names and w not in self.names:     # weight on the left: W @ x
                raise Untracked("a weight multiplied from the left")
            x = a
            wname = self.names.get(w)
            if wname is None:
                raise Untracked("a matrix product with a computed weight")
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
        raise Untracked("a weight of unexpected shape")

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
            raise Untracked(f"{name} with a parameter costplan does not slice")
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
        heads, kv_heads = q.shape[-3], k.shape[-3]
        if kv_heads != heads and kv_heads > 0 and heads % kv_heads == 0:
            k, v, grids = self._shared_heads(q, k, v, heads // kv_heads, grids, node)
        operands = [(q, batch + "hid"), (k, batch + "hjd"), (v, batch + "hje")]
        mask = next((a for a in args[3:] if isinstance(a, torch.Tensor) and a.dim() >= 2), None)
        if mask is not None:
            spec = (batch + "hij")[-mask.dim():]
            operands.append((mask, spec))
        out = self._einsum(operands, batch + "hie", outs[0], grids, node, "attention")
        return [out] + [None] * (len(outs) - 1)

    def _shared_heads(self, q, k, v, g, grids, node):  # noqa: ANN001, ANN202
        """Grouped-query attention: K and V as the query heads read them, each KV head repeated for
        its g query heads (as repeat_kv does), and the queries' heads marked as going g at a time.
        Stand-ins of the repeated shapes carry the repeated grids (only their shapes are read)."""
        grids = dict(grids)
        out = []
        for t in (k, v):
            grid = grids.get(id(t)) if t not in self.names else None
            axis = t.dim() - 3
            shape = (*t.shape[:axis], t.shape[axis] * g, *t.shape[axis + 1:])
            stand = torch.empty(shape, device="meta")
            if grid is not None:
                if axis not in grid.axes:
                    raise Untracked("grouped-query attention reads key/value channels it cannot repeat")
                grids[id(stand)] = Grid(grid.axes, np.repeat(grid.ids, g, axis=grid.axes.index(axis)), shape)
            out.append(stand)
        qgrid = grids.get(id(q))
        if qgrid is not None:
            self.head_groups.append((qgrid.ids, g))
        return out[0], out[1], grids

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
                    if sizes.get(x, 1) not in (1, int(s)):    # grouped-query heads: 8 queries share 2 keys
                        raise Untracked(f"{what} pairs them across different sizes")
                    sizes[x] = int(s)
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
                        axis = spec.index(x)
                        inner = len(grid.axes) > 1 and axis == max(grid.axes) and \
                            all(t2.shape[spec2.index(y)] == 1 for y in tagged - {x} if y in spec2)
                        self.barrier(grid.ids, node, f"they meet {who} in {what}",
                                     grid.ids.shape[grid.axes.index(axis)] if inner else 0)
            for t2, spec2, grid2, tagged2 in entries[:i]:
                shared = tagged & tagged2
                if grid2 is not None and shared:
                    self.couple(*meeting_ids(grid, spec, grid2, spec2, sizes), node)
                    break
        wanted = {x for x in out_letters if any(x in e[3] for e in entries)}
        if not wanted:
            return None
        for t, spec, grid, tagged in entries:
            if grid is not None and wanted <= tagged:
                onto = [x for x in out_letters if x in wanted]
                full = broadcast(grid, spec, sorted(tagged), sizes)
                order = sorted(tagged)
                index = tuple(slice(None) if x in wanted else 0 for x in order)
                ids = full[index]
                kept = [x for x in order if x in wanted]
                ids = np.transpose(ids, [kept.index(x) for x in onto])
                axes = tuple(out_letters.index(x) for x in onto)
                if any(out.shape[a] != ids.shape[j] for j, a in enumerate(axes)):
                    raise Untracked(f"{what} broadcasts them")
                return Grid(axes, np.ascontiguousarray(ids), tuple(out.shape))
        raise Untracked(f"{what} combines channels of two layers on different axes")

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
            raise Untracked("a copy into part of another tensor")
        return [grids.get(id(src))]

    def _index_copy(self, args, outs, grids, node):  # noqa: ANN001, ANN202
        """A KV cache's update (``index_copy_(cache, positions axis, index, new keys)``): the cache
        holds the new keys' channels on the same axes, at other positions."""
        dst, dim, src = args[0], int(args[1]) % args[0].dim(), args[3]
        grid, old = grids.get(id(src)), grids.get(id(dst))
        if grid is None or dim in grid.axes or (old is not None and old.axes != grid.axes) or dst.dim() != src.dim():
            raise Untracked("index_copy (a write into part of another tensor)")
        if old is not None:
            self.couple(old.ids, grid.ids, node)
        return [Grid(grid.axes, grid.ids, tuple(outs[0].shape))]

    def _cat(self, args, kwargs, outs, grids, node):  # noqa: ANN001, ANN202
        tensors = [t for t in args[0] if not (t.dim() == 1 and t.shape[0] == 0)]  # legacy empty operands
        out = outs[0]
        dim = int(args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim()
        tags = [grids.get(id(t)) if t not in self.names else None for t in tensors]
        along = [g for g in tags if g is not None and dim in g.axes]
        if along:
            inner = along[0].axes
            if (len(inner) > 1 and inner[-1] == dim and all(g is not None and g.axes == inner for g in tags)
                    and len({g.ids.shape[:-1] for g in tags}) == 1):
                # rotate_half: a head's two halves swapped, each head's channels staying in its head
                return [Grid(inner, np.concatenate([g.ids for g in tags], axis=-1), tuple(out.shape))]
            if any(g is not None and g.axes != (dim,) for g in tags):
                raise Untracked("a concatenation of channels spread over several axes")
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
            raise Untracked(f"{name} runs along their axis")
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
            raise Untracked(f"{op_name(func)} reduces over them")
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
            raise Untracked(f"{functional.lstrip('_')} runs along them")
        return [grid if o.shape == x.shape else None for o in outs]

    def _index_select(self, args, outs, grids, node):  # noqa: ANN001, ANN202
        x, dim = args[0], int(args[1]) % args[0].dim()
        grid = grids.get(id(x))
        if dim in grid.axes:
            raise Untracked("index_select picks among them")
        return [Grid(grid.axes, grid.ids, tuple(outs[0].shape))]
