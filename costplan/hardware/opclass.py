"""Which op classes a hardware profile prices apart, read off the aten op a layer records: memory-only
ops slower than their bytes, elementwise work a compiler folds, ops that write in place. Hardware
facts about ops, so they live with the hardware; the op registry only says what an op is.
"""

from __future__ import annotations



def is_elementwise(aten_op: str) -> bool:
    """Whether 'aten.relu_.default' (an op as a Layer records it) is elementwise or a batch norm:
    work a compiler folds into the kernel that produced its input."""
    from costplan.trace.ops import OpKind, aten, classify, is_pointwise   # torch: only when estimating

    parts = aten_op.split(".")
    packet = getattr(aten, parts[1], None) if len(parts) == 3 else None
    func = getattr(packet, parts[2], None) if packet is not None else None
    if func is None:
        return False
    name = parts[1].rstrip("_")
    return is_batch_norm(aten_op) or (classify(func) is OpKind.MEMORY and is_pointwise(func, name)) or \
        name in ("hardswish", "hardsigmoid", "hardtanh", "relu6", "elu", "selu", "leaky_relu", "gelu", "silu")


# op classes of a recurrent cell's step (the roofline's 'lstm', 'gru', 'rnn')
RECURRENT = ("lstm", "gru", "rnn")

_TRANSCENDENTAL = {"gelu", "tanh", "erf", "exp", "log", "softplus", "mish", "elu",
                   "_softmax", "_safe_softmax", "_log_softmax", "pow", "rsqrt"}
_SIGMOID = {"silu", "sigmoid", "log_sigmoid_forward"}   # one exp per element: 1.6-1.9x GELU's rate here
_POOLING = {"max_pool2d", "max_pool3d", "max_pool2d_with_indices", "max_pool3d_with_indices"}
_AVG_POOLING = {"avg_pool1d", "avg_pool2d", "avg_pool3d"}   # 2.4-3x max-pools' rate over the same windows here
_POOLING_1D = {"max_pool1d", "max_pool1d_with_indices"}   # a kernel of its own, ~10x 2-D pools' bytes/s on CPUs
_NORM = {"native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
         "native_layer_norm", "native_group_norm"}
_GATHER = {"embedding", "index_select", "embedding_bag", "_embedding_bag", "_embedding_bag_forward_only"}
_REDUCTION = {"sum", "mean", "amax", "amin", "max", "min", "var", "std", "var_mean", "std_mean", "logsumexp",
              "prod", "norm", "linalg_vector_norm", "_adaptive_avg_pool2d", "_adaptive_avg_pool3d",
              "adaptive_max_pool2d", "argmax", "argmin"}
RATED_KINDS = ("transcendental", "sigmoid", "pooling", "pooling1d", "avgpool", "norm", "gather", "reduction")
POOL_KINDS = frozenset({"pooling", "pooling1d", "avgpool"})   # windowed pools: priced by roofline.pool_bytes


def rated_kind(aten_op: str) -> str | None:
    """The kind of memory-only op that CPUs run slower than its bytes would allow, with a rate of
    its own in a profile: 'transcendental' (GELU, softmax: math per element), 'sigmoid' (sigmoid,
    SiLU: one exponential per element), 'pooling' (max windows; adaptive pooling, a plain
    reduction, is not one; 1-D max pools are 'pooling1d'), 'avgpool' (average windows), 'norm' (batch/layer/group norm:
    statistics and a per-channel loop), 'gather' (embedding lookups: rows read at scattered
    addresses) or 'reduction' (sums, means, maxima over a dimension; global average pooling).
    None for other ops."""
    parts = aten_op.split(".")
    if len(parts) != 3:
        return None
    name = parts[1]
    if name.rstrip("_") in _TRANSCENDENTAL:
        return "transcendental"
    if name.rstrip("_") in _SIGMOID:
        return "sigmoid"
    if name in _GATHER:
        return "gather"
    if name in _REDUCTION and parts[2] != "other":    # max.other is elementwise
        return "reduction"
    if name in _POOLING_1D:
        return "pooling1d"
    if name in _AVG_POOLING:
        return "avgpool"
    return "pooling" if name in _POOLING else "norm" if name in _NORM else None


def is_batch_norm(aten_op: str) -> bool:
    """Whether 'aten.native_batch_norm.default' is a batch norm (per-channel statistics over samples)."""
    parts = aten_op.split(".")
    return len(parts) == 3 and "batch_norm" in parts[1]


def is_gather(aten_op: str) -> bool:
    """Whether 'aten.embedding.default' reads rows of its weight picked by indices: it reads the rows
    it picks, not the table."""
    return rated_kind(aten_op) == "gather"


def writes_in_place(aten_op: str) -> bool:
    """Whether 'aten.relu_.default' writes into its input (an in-place op: trailing underscore)
    rather than a fresh output tensor."""
    parts = aten_op.split(".")
    return len(parts) == 3 and parts[1].endswith("_") and not parts[1].endswith("__")
