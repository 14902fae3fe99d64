"""Registry of aten ops: what each costs in MACs, and which kind of op it is.

Shaped like ``torch.utils.flop_counter``: one small pure function per op, registered by
``@mac_formula(aten.op)``; registering an op twice is an error (``override=True`` replaces on
purpose), and one trace may use other formulas: ``trace(..., mac_formulas={aten.op: fn})``, as
``FlopCounterMode(custom_mapping=...)`` does. A formula takes the shapes of the op's tensor arguments (positional, in
order; non-tensor arguments pass through unchanged) and ``out_shape``, and returns MACs. One MAC is
two FLOPs, so totals agree with ``FlopCounterMode`` / 2.

Ops without a formula are sorted into kinds: views (free, alias their input), sources (create tensors
from nothing), memory ops (known to do no multiply-accumulates: elementwise, norms, pooling,
reductions, data movement) and unknown. Unknown ops are reported, never silently counted as zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from enum import Enum

import torch

aten = torch.ops.aten

Shape = Sequence[int]
MacFormula = Callable[..., int]

MAC_FORMULAS: dict[object, MacFormula] = {}


class OpKind(str, Enum):
    MACS = "macs"
    VIEW = "view"
    SOURCE = "source"
    MEMORY = "memory"
    UNKNOWN = "unknown"


def mac_formula(*packets: object, override: bool = False) -> Callable[[MacFormula], MacFormula]:
    """Register ``fn`` as the MAC formula of the given aten op packets (or ops: their packet is taken).
    A packet that already has a formula raises ValueError unless ``override``: a second registration
    silently winning would change every count."""

    def register(fn: MacFormula) -> MacFormula:
        for packet in packets:
            packet = getattr(packet, "overloadpacket", packet)
            old = MAC_FORMULAS.get(packet)
            if old is not None and old is not fn and not override:
                raise ValueError(f"{op_name(packet)} already has a MAC formula ({old.__name__}); pass override=True "
                                 "to replace it, or give one for a single trace: trace(..., mac_formulas={op: fn})")
            MAC_FORMULAS[packet] = fn
        return fn

    return register


def with_overrides(overrides: Mapping[object, MacFormula] | None) -> Mapping[object, MacFormula]:
    """The registry with ``overrides`` (op or packet -> formula) in force, for one trace."""
    if not overrides:
        return MAC_FORMULAS
    return {**MAC_FORMULAS, **{getattr(op, "overloadpacket", op): fn for op, fn in overrides.items()}}


def op_name(func: object) -> str:
    """'aten._safe_softmax.default' (or its packet) -> '_safe_softmax'."""
    packet = getattr(func, "overloadpacket", func)
    return getattr(packet, "__name__", str(packet)).split(".")[-1]


def formula_of(func: object, formulas: Mapping[object, MacFormula] = MAC_FORMULAS) -> MacFormula | None:
    """The MAC formula of ``func`` (an aten OpOverload), or None."""
    return formulas.get(getattr(func, "overloadpacket", None))


def _prod(xs: Shape) -> int:
    return math.prod(int(x) for x in xs)


@mac_formula(aten.mm, aten.addmm, aten._addmm_activation)
def mm_macs(*shapes: Shape, out_shape: Shape) -> int:
    """(m, k) @ (k, n); addmm's leading bias costs no MACs."""
    a, b = shapes[-2], shapes[-1]
    return int(a[0]) * int(a[1]) * int(b[1])


@mac_formula(aten.bmm, aten.baddbmm)
def bmm_macs(*shapes: Shape, out_shape: Shape) -> int:
    """(b, m, k) @ (b, k, n)."""
    a, b = shapes[-2], shapes[-1]
    return int(a[0]) * int(a[1]) * int(a[2]) * int(b[2])


@mac_formula(aten.mv, aten.addmv)
def mv_macs(*shapes: Shape, out_shape: Shape) -> int:
    """(m, n) @ (n,)."""
    return _prod(shapes[-2])


@mac_formula(aten.dot, aten.vdot)
def dot_macs(a: Shape, b: Shape, out_shape: Shape) -> int:
    return int(a[0])


@mac_formula(aten.convolution, aten._convolution)
def conv_macs(x: Shape, w: Shape, bias: object, stride: object, padding: object, dilation: object,
              transposed: bool, *rest: object, out_shape: Shape) -> int:
    """Each output element of a convolution takes (C_in / groups) x kernel MACs.

    Weights are (C_out, C_in/groups, *k), or (C_in, C_out/groups, *k) when transposed, where each
    *input* element is scattered over C_out/groups x kernel outputs instead.
    """
    per_element = _prod(w[1:])
    return _prod(x) * per_element if transposed else _prod(out_shape) * per_element


def _attention_macs(q: Shape, k: Shape, v: Shape) -> int:
    """softmax(Q K^T) V for (batch, heads, s_q, d) queries: s_q x s_k x (d + d_v) MACs per head."""
    *batch, s_q, d = (int(x) for x in q)
    s_k, d_v = int(k[-2]), int(v[-1])
    return _prod(batch) * s_q * s_k * (d + d_v)


# every fused attention kernel torch dispatches scaled_dot_product_attention to (the channel rules read it)
ATTENTION_OPS = tuple(name for name in (
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_attention_math", "_scaled_dot_product_fused_attention_overrideable",
) if hasattr(aten, name))


@mac_formula(*(getattr(aten, name) for name in ATTENTION_OPS))
def sdpa_macs(q: Shape, k: Shape, v: Shape, *rest: object, out_shape: Shape) -> int:
    return _attention_macs(q, k, v)


@mac_formula(aten._native_multi_head_attention)
def native_mha_macs(q: Shape, k: Shape, v: Shape, embed_dim: int, num_heads: int, *rest: object,
                    out_shape: Shape) -> int:
    """Fused nn.MultiheadAttention: q/k/v projections, attention, output projection."""
    batch, s_q, e = (int(x) for x in q)
    s_k = int(k[1])
    projections = batch * (2 * s_q + 2 * s_k) * e * e
    heads = int(num_heads)
    per_head = (batch, heads, s_q, e // heads)
    return projections + _attention_macs(per_head, (batch, heads, s_k, e // heads),
                                         (batch, heads, s_k, e // heads))


@mac_formula(aten._grouped_mm)
def grouped_mm_macs(a: Shape, b: Shape, *rest: object, out_shape: Shape) -> int:
    """Mixture-of-experts matmuls: each row (token) of ``a`` meets one group's (expert's) matrix of
    ``b``, so the MACs are those of one (rows, k) @ (k, n) product; 3-D operands are batched per group."""
    if len(a) == 2 and len(b) == 3:
        return int(a[0]) * int(a[1]) * int(b[2])
    if len(a) == 3:
        return int(a[0]) * int(a[1]) * int(a[2]) * int(b[-1])
    return int(a[0]) * int(a[1]) * int(b[1])       # 2-D x 2-D, groups along k


@mac_formula(aten.addbmm)
def addbmm_macs(bias: Shape, a: Shape, b: Shape, *rest: object, out_shape: Shape) -> int:
    """sum over b of (n, m) @ (m, p)."""
    return int(a[0]) * int(a[1]) * int(a[2]) * int(b[2])


@mac_formula(aten._trilinear)
def trilinear_macs(i1: Shape, i2: Shape, i3: Shape, expand1: Sequence[int], expand2: Sequence[int],
                   expand3: Sequence[int], sumdim: Sequence[int], *rest: object, out_shape: Shape) -> int:
    """nn.Bilinear's x1^T A x2: one MAC per element of the broadcast product that is summed."""
    shapes = []
    for shape, expand in ((i1, expand1), (i2, expand2), (i3, expand3)):
        dims = [int(d) for d in shape]
        for e in sorted(int(x) for x in expand):
            dims.insert(e, 1)
        shapes.append(dims)
    return _prod(max(d) for d in zip(*shapes))


@mac_formula(aten._cdist_forward)
def cdist_macs(x1: Shape, x2: Shape, *rest: object, out_shape: Shape) -> int:
    """Pairwise distances: one multiply-accumulate per (row of x1, row of x2, feature)."""
    return _prod(out_shape) * int(x1[-1])


@mac_formula(aten.mkldnn_rnn_layer)
def mkldnn_rnn_macs(x: Shape, w_ih: Shape, w_hh: Shape, *rest: object, out_shape: Shape) -> int:
    """One layer and direction of an LSTM/GRU/RNN as oneDNN runs it on CPUs: every step multiplies
    its input by the (gates x hidden, input) weight and its hidden state by the (gates x hidden, hidden)
    one."""
    steps = _prod(x) // int(x[-1])
    return steps * (_prod(w_ih) + _prod(w_hh))


# Ops that alias their input: no node, no cost; the output's producer is the input's.
_VIEWS = {
    "view", "_unsafe_view", "_reshape_alias", "reshape", "t", "transpose", "permute", "expand",
    "select", "slice", "unsqueeze", "squeeze", "alias", "detach", "lift_fresh", "as_strided",
    "split", "split_with_sizes", "unbind", "chunk", "narrow", "unflatten", "flatten", "view_as",
    "expand_as", "numpy_T", "diagonal", "unfold", "_unsafe_split", "movedim", "swapaxes",
    "unsafe_split", "unsafe_split_with_sizes", "unsafe_chunk",
}

# Ops that create tensors from shapes alone: their outputs depend on no activation.
_SOURCES = {
    "empty", "empty_like", "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "full",
    "full_like", "arange", "scalar_tensor", "new_empty", "new_zeros", "new_ones", "new_full",
    "new_empty_strided", "rand", "randn", "randint", "rand_like", "randn_like", "linspace",
    "eye", "lift_fresh_copy", "sym_size", "sym_numel", "sym_stride", "_local_scalar_dense",
    "tensor", "empty_permuted",
}

# Ops known to do no multiply-accumulates: they cost bytes and time, not MACs.
_MEMORY = {
    # normalisation
    "native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit_functional", "native_layer_norm", "native_group_norm",
    "_fused_rms_norm", "instance_norm", "rms_norm",
    # activations torch does not tag as pointwise
    "hardswish", "hardsigmoid", "hardtanh", "relu6", "elu", "selu", "celu", "leaky_relu", "gelu",
    "silu", "mish", "softplus", "prelu", "_prelu_kernel", "glu", "threshold", "log_sigmoid_forward",
    # pooling and resampling
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "max_pool3d_with_indices",
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "adaptive_avg_pool3d", "_adaptive_avg_pool2d", "_adaptive_avg_pool3d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "upsample_nearest1d", "upsample_nearest2d",
    "upsample_nearest3d", "upsample_bilinear2d", "upsample_bicubic2d", "_upsample_nearest_exact2d",
    "_upsample_bilinear2d_aa", "grid_sampler_2d", "pixel_shuffle", "pixel_unshuffle",
    "channel_shuffle", "native_channel_shuffle",
    # reductions and softmax
    "sum", "mean", "amax", "amin", "max", "min", "var", "var_mean", "std", "std_mean", "prod",
    "norm", "linalg_vector_norm", "logsumexp", "any", "all", "argmax", "argmin", "cumsum",
    "cumprod", "_softmax", "_log_softmax", "_safe_softmax", "softmax", "log_softmax", "topk",
    "sort", "count_nonzero",
    # data movement and indexing
    "cat", "stack", "clone", "copy", "copy_", "_to_copy", "to", "contiguous", "index_select",
    "gather", "scatter", "scatter_add", "index", "index_put", "index_put_", "masked_fill",
    "masked_fill_", "masked_scatter", "constant_pad_nd", "reflection_pad1d", "reflection_pad2d",
    "replicate_pad1d", "replicate_pad2d", "pad", "tril", "triu", "tril_", "triu_", "repeat",
    "repeat_interleave", "roll", "flip", "embedding", "embedding_bag", "_embedding_bag",
    "native_dropout", "bernoulli", "bernoulli_", "fill_", "zero_", "im2col", "col2im",
    "_pdist_forward", "nonzero", "where", "resize_", "set_", "_assert_async", "_assert_scalar",
    "histc", "bincount", "floor_divide", "aminmax", "index_add", "_unique2", "unique_dim", "unique_consecutive",
    "_weight_norm_interface", "searchsorted", "bucketize", "index_copy", "index_fill", "scatter_reduce",
    "masked_select", "take", "_local_scalar_dense", "equal", "uniform", "normal", "random", "exponential",
    "geometric", "log_normal", "cauchy",
}


def classify(func: object, formulas: Mapping[object, MacFormula] = MAC_FORMULAS) -> OpKind:
    """Which kind of op ``func`` (an aten OpOverload) is, with ``formulas`` the MAC formulas in force."""
    if formula_of(func, formulas) is not None:
        return OpKind.MACS
    name = op_name(func)
    functional = name.rstrip("_")  # in-place 'relu_' behaves as 'relu'
    if getattr(func, "is_view", False) or functional in _VIEWS:
        return OpKind.VIEW
    if name in _SOURCES:
        return OpKind.SOURCE
    if name in _MEMORY or functional in _MEMORY or is_pointwise(func, functional):
        return OpKind.MEMORY
    return OpKind.UNKNOWN


def is_pointwise(func: object, functional: str) -> bool:
    """Elementwise ops carry torch's pointwise tag; some in-place variants only on their functional twin."""
    if torch.Tag.pointwise in getattr(func, "tags", ()):
        return True
    twin = getattr(getattr(aten, functional, None), "default", None)
    return twin is not None and torch.Tag.pointwise in twin.tags


def op_macs(func: object, args: Sequence[object], out: object,
            formulas: Mapping[object, MacFormula] = MAC_FORMULAS) -> int:
    """MACs of one call of ``func``; 0 for ops without a formula."""
    formula = formula_of(func, formulas)
    if formula is None:
        return 0
    shapes = [tuple(a.shape) if isinstance(a, torch.Tensor) else a for a in args]
    first_out = out[0] if isinstance(out, (tuple, list)) else out
    out_shape = tuple(first_out.shape) if isinstance(first_out, torch.Tensor) else ()
    return int(formula(*shapes, out_shape=out_shape))


_FRIENDLY = {
    "mm": "matmul", "bmm": "matmul", "baddbmm": "matmul", "mv": "matmul", "addmv": "matmul",
    "dot": "matmul", "_safe_softmax": "softmax", "_softmax": "softmax",
    "_log_softmax": "log_softmax", "native_layer_norm": "layer_norm",
    "native_batch_norm": "batch_norm", "_native_batch_norm_legit_no_training": "batch_norm",
    "native_group_norm": "group_norm", "max_pool2d_with_indices": "max_pool2d",
    "_adaptive_avg_pool2d": "adaptive_avg_pool2d", "native_dropout": "dropout",
    "_to_copy": "copy", "_native_multi_head_attention": "multi_head_attention",
    "_fused_rms_norm": "rms_norm",
}


def friendly_name(func: object, weight_shape: Shape | None = None) -> str:
    """A short op name for a node built from one aten call: 'conv2d', 'linear', 'matmul', 'add'."""
    name = op_name(func)
    if name in ("convolution", "_convolution") and weight_shape is not None:
        return f"conv{len(weight_shape) - 2}d"
    if name in ("addmm", "_addmm_activation") or (name == "mm" and weight_shape is not None):
        return "linear"
    if name.startswith("_scaled_dot_product"):
        return "attention"
    return _FRIENDLY.get(name, name.rstrip("_"))
