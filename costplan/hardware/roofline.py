"""Roofline latency per layer: compute time against memory time, plus per-op overhead.

Compute time is the MACs left after what the device exploits of a layer's sparsity, over the
throughput attainable for the op's class and size. Memory time is the bytes that must cross DRAM
(weights, compressed where the device supports it; activations too large to stay on chip) over the
attainable bandwidth. Elementwise layers that a device fuses into their producer cost nothing extra.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from costplan.hardware.profile import HardwareProfile
from costplan.humanize import listed
from costplan.spellings import DTYPE_BYTES, byte_scales, weight_bytes
from costplan.patterns import Pattern
from costplan.sparsity import Effective
from costplan.trace.graph import Layer, LayerGraph, Recurrent
from costplan.hardware.opclass import (POOL_KINDS, RECURRENT, is_batch_norm, is_elementwise, is_gather, rated_kind,
                                       writes_in_place)


# the share of an estimate in host-dispatch-bound layers above which it says the figure is the host's
HOST_BOUND_WARN = 0.2


@dataclass(frozen=True)
class LayerLatency:
    """One layer's predicted time on one device. Seconds, MACs, bytes and joules."""

    latency_s: float
    compute_s: float
    memory_s: float
    overhead_s: float
    bound: str                     # compute | memory | overhead | fused
    exec_macs: float               # MACs the device actually executes
    dram_bytes: float
    attained: float                # executed MAC rate as a share of the device's peak
    energy_j: float | None
    kind: str                      # what it was priced as (kind_of: an op class or a rated memory kind)
    sparse_path: bool = False      # whether the device's sparse kernel beat its dense one

    @property
    def fixed_s(self) -> float:
        """Seconds of the latency that pruning cannot remove: the layer's fixed costs (dispatch, launch,
        a kernel's setup), all of it where they set it."""
        return min(self.overhead_s, self.latency_s)


@dataclass(frozen=True)
class Estimate:
    """Per-layer latency of a graph on a profile; totals in seconds and joules."""

    profile: HardwareProfile
    precision: str                 # the precision the device runs
    layers: Mapping[str, LayerLatency]
    requested: str | None = None   # the precision asked for
    # cost kind -> names of the layers of a kind the profile's calibration never timed
    unsampled: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    context: Context | None = None  # the precisions and byte factors every layer was priced with
    notes: tuple[str, ...] = ()     # what was asked of the estimate and could not apply (autocast at float32)
    # term (PREDATED_TERMS) -> names of the layers it prices, where the profile's calibration predates it
    predated: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def warnings(self) -> tuple[str, ...]:
        note = self.profile.precision_note(self.requested) if self.requested else None
        out = ((note,) if note else ()) + self.profile.option_notes(self.precision) + self.notes
        for kind, names in self.unsampled.items():
            out += ((f"{self.profile.name} was calibrated without timing any {KIND_WORDS.get(kind, kind)}: this "
                     f"model's {len(names)} ({listed(names)}) carry {self.share_of(names):.0%} of its predicted "
                     "time, priced from other kinds' figures, and may be off by several times (recalibrate "
                     "with this version's `costplan calibrate`; `costplan measure` shows it per layer)"),)
        if self.predated:
            terms = "; ".join(f"{PREDATED_TERMS[term]}: this model's {len(names)} ({listed(names)}) carry "
                              f"{self.share_of(names):.0%} of its predicted time"
                              for term, names in self.predated.items())
            out += ((f"{self.profile.name} was calibrated by an earlier costplan, which did not yet time {terms}. "
                     "Those layers are priced without it, likely fast (the dense 1-D ResNet of "
                     "benchmarks/planning_quality.py read ~15% fast without both); recalibrate with this "
                     "version's `costplan calibrate`"),)
        host = self.overhead_share
        if self.profile.dispatch_overlaps and host >= HOST_BOUND_WARN:
            out += ((f"{host:.0%} of this estimate is the host's dispatch, {self.profile.per_op_s * 1e6:.1f} us "
                     f"per op ({self.profile.name}'s {self.profile.runtime} runtime): that figure is the host CPU's, "
                     "not the GPU's, and published rows put two servers 1.6x apart; time a few ops on yours"),)
        return out

    @property
    def latency_s(self) -> float:
        return sum(l.latency_s for l in self.layers.values())

    def share_of(self, names: Iterable[str]) -> float:
        """The share of the predicted latency the layers ``names`` carry."""
        total = self.latency_s
        return sum(self.layers[n].latency_s for n in names) / total if total > 0 else 0.0

    @property
    def overhead_share(self) -> float:
        """The share of the latency in layers bound by per-op overhead (dispatch and launch)."""
        total = self.latency_s
        return sum(l.latency_s for l in self.layers.values() if l.bound == "overhead") / total if total > 0 else 0.0

    @property
    def fixed_share(self) -> float:
        """The share of the latency that pruning cannot remove (:attr:`LayerLatency.fixed_s`). Not
        :attr:`overhead_share`: on a CPU a convolution's setup adds to its math, and a layer bound by it
        still shrinks when pruned."""
        total = self.latency_s
        return sum(l.fixed_s for l in self.layers.values()) / total if total > 0 else 0.0

    @property
    def energy_j(self) -> float | None:
        values = [l.energy_j for l in self.layers.values()]
        return None if any(v is None for v in values) else sum(values)  # type: ignore[misc]


def op_class(layer: Layer) -> str | None:
    """'conv', 'pointwise', 'depthwise', 'conv1d', 'conv3d', 'attention', 'lstm', 'gru', 'rnn' or 'gemm' for
    layers with MACs; None for memory-only layers."""
    if layer.macs == 0:
        return None
    if layer.recurrent is not None:
        return layer.recurrent.cell
    if layer.op == "attention":
        return "attention"
    if layer.conv_channels is not None:   # a convolution's geometry (GPT-2's "Conv1D" is a linear layer)
        if layer.depthwise:
            return "depthwise"
        # a 1x1 convolution of any dimension runs oneDNN's 1x1 kernel: a 1-D one over 64x20 positions
        # ran in 104 us, a 2-D one over 64x1x20 or 64x4x5 in 100-104 us, and a 1-D one with a 3-wide
        # window over as many positions in 150 us
        if all(k == 1 for k in layer.kernel_size or (0,)):
            return "pointwise"
        return f"conv{len(layer.kernel_size)}d" if len(layer.kernel_size) in (1, 3) else "conv"
    return "gemm"


# PyTorch's CPU convolutions run oneDNN's kernels except where its dispatcher judges them slower
# (at::native::ConvParams::use_mkldnn): a float32 convolution of one sample over a small input then
# runs as im2col (vol2col in 3-D) and a GEMM. An input of at most this many elements over its first
# four dimensions (a 1-D convolution's input viewed as N x C x 1 x L) is small.
IM2COL_ELEMENTS = 20480


def runs_im2col(input_shape: Sequence[int], kernel: tuple[int, ...], *, groups: int = 1,
                transposed: bool = False) -> bool:
    """Whether PyTorch runs a float32 CPU convolution over an input of ``input_shape`` (N, C, spatial...)
    as im2col and a GEMM (``_slow_conv2d_forward``, ``slow_conv3d_forward``, ``slow_conv_dilated2d``)
    rather than oneDNN's kernel: one sample whose input has at most :data:`IM2COL_ELEMENTS` over its
    first four dimensions (a 1-D input viewed as N x C x 1 x L, as PyTorch views it), without groups,
    with a window not over 3 in either of its last two dimensions (a 1-D window's height is 1). Both
    paths were seen in torch 2.14's profiler: a 1-D convolution of 64 channels over 100 steps and a
    2-D 3x3 one of 256 channels on 7x7 ran im2col, over 400 steps or 512 channels oneDNN. On one
    thread PyTorch also runs unstrided 1x1 convolutions of under 16 samples this way, whatever their
    size; a one-thread calibration's pointwise fit is theirs. Transposed convolutions run kernels of
    their own."""
    dims = [int(d) for d in input_shape]
    if len(dims) == 3:
        dims.insert(2, 1)
    if transposed or len(dims) < 4:
        return False
    height, width = ((1, *kernel) if len(kernel) == 1 else kernel)[-2:]
    return not (groups > 1 or (width > 3 and height > 3) or dims[0] > 1 or math.prod(dims[:4]) > IM2COL_ELEMENTS)


def kept_input(input_shape: Sequence[int], in_keep: float) -> tuple[int, ...]:
    """A convolution's input shape (N, C, spatial...) with ``in_keep`` of its channels: what PyTorch sees
    once a plan is compacted (a ResNet-18's 3x3 over 14 x 14 read 256 channels through oneDNN and, cut to
    96, runs as im2col)."""
    dims = tuple(int(d) for d in input_shape)
    return dims if in_keep == 1.0 or len(dims) < 2 else (dims[0], round(dims[1] * in_keep), *dims[2:])


# the classes of convolutions PyTorch may run as im2col and a GEMM (depthwise ones never do)
IM2COL_CLASSES = ("conv", "pointwise", "conv1d", "conv3d")

# a linear layer whose weights overflow this share of a CPU's cache streams them from DRAM as it
# computes: on a 2-core EPYC (32 MB L3) 128 rows ran 72 GMAC/s with 9 MB of weights, 55 with 19 MB, 45 with 38-154 MB
DRAM_WEIGHTS = 0.5


def priced_class(layer: Layer, profile: HardwareProfile, weight_bytes: float | None = None,
                 precision: str = "float32", in_keep: float = 1.0) -> str | None:
    """:func:`op_class`, except that on a calibrated CPU a linear layer whose weights (``weight_bytes``;
    by default all its float32 weights) overflow :data:`DRAM_WEIGHTS` of the cache is 'gemm_dram'
    (vocabulary heads, LLM projections, VGG's classifier), and a float32 convolution PyTorch runs as
    im2col and a GEMM (:func:`runs_im2col`, on its input's channels ``in_keep`` of which a plan keeps)
    is 'im2col', each priced by a fit of its own; a profile calibrated without them prices them by
    their leaders' figures and says so (:func:`unsampled_layers`)."""
    klass = op_class(layer)
    if (klass in IM2COL_CLASSES and profile.kind == "cpu" and profile.calibrated and precision == "float32"
            and layer.in_shapes and runs_im2col(kept_input(layer.in_shapes[0], in_keep), layer.kernel_size,
                                                groups=layer.groups, transposed=layer.conv_transposed)):
        return "im2col"
    if klass == "gemm" and profile.kind == "cpu" and profile.calibrated and overflows_cache(
            weights_touched(layer) * 4.0 if weight_bytes is None else weight_bytes, profile.onchip_bytes):
        return "gemm_dram"
    return klass


def overflows_cache(weight_bytes: float, onchip_bytes: float) -> bool:
    """Whether a linear layer's weights stream from DRAM as it computes (:data:`DRAM_WEIGHTS`); the
    calibration's linear probes are fitted as 'gemm' or 'gemm_dram' by the same test."""
    return weight_bytes > DRAM_WEIGHTS * onchip_bytes


def cost_kind(layer: Layer, profile: HardwareProfile | None = None, precision: str = "float32") -> str:
    """What dense ``layer`` is priced as (one of ``profile.COST_KINDS``): its op class (on ``profile`` at
    ``precision``, see :func:`priced_class`), else the rated kind of its memory-only ops (pooling, norm,
    gather, ...), else 'elementwise'. Under a plan, the layer's ``LayerLatency.kind`` says it."""
    return kind_of(layer, op_class(layer) if profile is None else priced_class(layer, profile, precision=precision))


def kind_of(layer: Layer, klass: str | None) -> str:
    """The cost kind of ``layer`` priced as op class ``klass`` (None: a memory-only op's rated kind)."""
    return klass if klass is not None else next(iter(sorted(rated_kinds(layer))), "elementwise")


def pool_bytes(in_bytes: float, out_bytes: float, window: int) -> float:
    """The bytes a pool's rate is fitted on and priced by: its input read once and its output once per
    element of its window (a max-pool compares every element of every window). Max-pools over one
    input, 3x3 stride 2 against 2x2 stride 2, ran 1.50-1.60x as long here: (4 + 9) / (4 + 4) = 1.63;
    3x3 stride 1 against 3x3 stride 2, 2.8-3.3x: 10 / (13 / 4) = 3.1. Input plus output, 1.0x and 3.2x,
    left ResNets' 3x3 pools 28-37% under their measured time."""
    return in_bytes + out_bytes * window


def norm_planes(layer: Layer) -> float:
    """A batch norm's (sample, channel) planes, over each of which its kernel loops; 0 for other layers
    and for a norm over (samples, features) alone."""
    shape = layer.in_shapes[0] if layer.in_shapes else ()
    if len(shape) < 3 or not any(map(is_batch_norm, layer.aten_ops or ())):
        return 0.0
    return float(shape[0] * shape[1])


def rated_kinds(layer: Layer) -> set[str]:
    """The rated kinds (opclass.rated_kind) of a memory-only layer's ops. A 1-D max-pool reaches the
    tracer as a 2-D one over a height of 1, but runs a 1-D kernel of its own at ~30x the rate: an
    nn.MaxPool1d, or a function over a height of 1 (an nn.MaxPool2d over one is the 2-D kernel)."""
    if layer.macs:
        return set()
    kinds = {rated_kind(op) for op in layer.aten_ops} - {None}
    shape = layer.in_shapes[0] if layer.in_shapes else ()
    one_d = layer.op == "maxpool1d" or (layer.kind == "function" and len(shape) == 4 and shape[-2] == 1)
    if "pooling" in kinds and one_d and any("max_pool" in op for op in layer.aten_ops):
        kinds = (kinds - {"pooling"}) | {"pooling1d"}
    return kinds  # type: ignore[return-value]


def weights_touched(layer: Layer) -> float:
    """Parameters the call reads: all it holds, except that an embedding lookup reads only the rows
    its indices pick (one output element per weight element read)."""
    if layer.aten_ops and any(map(is_gather, layer.aten_ops)) and layer.out_shapes:
        return min(layer.weights_read, math.prod(layer.out_shapes[0]))
    return layer.weights_read


@dataclass(frozen=True)
class Dims:
    """A layer as the GEMM its kernel runs: ``rows`` (output pixels or tokens), ``outputs``
    (channels or features it writes; a group's, in a grouped convolution), ``reduction`` (MACs per
    output), after the plan and any padding; ``length``: a direct 1-D convolution's output steps per
    sample (0 for other layers), which its kernel blocks within each sample."""

    rows: float
    outputs: float
    reduction: float
    padding: float = 1.0           # MACs run over MACs needed, from widths rounded up to the multiple
    strided: bool = False          # a convolution with a stride over 1
    length: float = 0.0            # 1-D convolutions: output steps per sample (rows = batch x length)
    off_tile: bool = False         # channels off the kernels' tile, run with a remainder (:func:`off_tile`)
    one_tile_pass: bool = False    # outputs one tile a pass over the input (:func:`one_tile_a_pass`)


def _padded(width: float, dense: int, multiple: int, part_tile: bool = False, built: bool = True,
            whole: bool = False) -> float:
    """Kernels tile channels by ``multiple``: a width of at least one tile runs as the next multiple
    up, whether a plan pruned it there or the layer was built so (oneDNN on AVX-512 ran 1-D and 2-D
    convolutions of 20, 24 and 28 channels as slowly as of 32, and of 40 as of 48). With ``built``
    False only a width pruned off a multiple is padded. Under one tile, a dense width that never was
    a multiple (an RGB input) keeps its own kernel, as, with ``part_tile``, does any; with ``whole``
    (oneDNN's 1x1 kernel) none does."""
    if multiple <= 1:
        return width
    if whole and width < multiple:
        return float(multiple)
    if (width < multiple and (part_tile or dense % multiple)) or (not built and dense % multiple):
        return width
    return math.ceil(round(width, 6) / multiple) * multiple


def gemm_dims(macs: float, cin: int, cout: int, *, groups: int = 1, window: int = 1, depthwise: bool = False,
              strided: bool = False, in_keep: float = 1.0, out_keep: float = 1.0, multiple: int = 1,
              onednn_tiling: bool = False, linear: bool = False, length: float = 0.0,
              geometry: ConvGeometry | None = None) -> Dims:
    """The GEMM a convolution or linear layer of ``macs`` MACs runs: rows = MACs over (outputs x
    reduction) of the dense layer; a grouped convolution's outputs and reduction are one group's, a
    depthwise one's outputs are its channels and its reduction the window. ``in_keep``/``out_keep``
    are the shares of input/output channels a plan keeps; widths run padded to ``multiple``
    (:func:`_padded`), except, with ``onednn_tiling`` (:func:`onednn_tiling`), a direct convolution's
    inputs under one tile, and the widths of a ``linear`` layer (or a convolution run as im2col and a
    GEMM) or of a grouped convolution unless a plan pruned them off a multiple: a GEMM's reduction ran
    in proportion to its width, its outputs 20 and 24 wide as 32 but 28 slower than 32, and padding
    them made the linear fit worse on one of two calibrations' timings (8.7% to 10.7%). ``length``: a 1-D
    convolution's output steps per sample, kept unless it runs as im2col and a GEMM (``linear``).
    ``geometry``: an ungrouped direct convolution's, to tell whether it runs one output tile a pass
    (:func:`one_tile_a_pass`). With ``onednn_tiling`` an ungrouped convolution writes outputs under
    one tile as a whole one, built so or pruned (a 1-D one of 32 to 8 channels over 64 x 40 steps ran
    197 us, of 32 to 16 199 us), and a 1x1 one reads them so too."""
    length = 0.0 if linear else length
    if depthwise:
        channels = cout * in_keep
        return Dims(macs / (cout * window), channels, window, strided=strided, length=length,
                    off_tile=off_tile(channels, multiple))
    outputs, inputs = cout * out_keep, cin * in_keep
    built = groups == 1 and not linear
    whole = onednn_tiling and built and window == 1    # oneDNN's 1x1 kernel reads and writes whole tiles
    # its other kernels write whole tiles too, however the layer was built: 32 to 8 channels ran as 32 to 16
    padded_out = _padded(outputs, cout, multiple, built=built, whole=onednn_tiling and built)
    padded_in = _padded(inputs, cin, multiple, onednn_tiling and not whole, built=built, whole=whole)
    one_pass = (geometry is not None and groups == 1 and not linear
                and one_tile_a_pass(geometry, padded_out, padded_in, strided, multiple))
    return Dims(macs / (cout * cin // groups * window), padded_out / groups, padded_in / groups * window,
                padded_out * padded_in / (outputs * inputs), strided=strided, length=length,
                off_tile=padded_out - outputs > 1e-6 or padded_in - inputs > 1e-6, one_tile_pass=one_pass)


def off_tile(channels: float, multiple: int) -> bool:
    """Whether ``channels`` are off the kernels' tile of ``multiple``: a depthwise convolution's, whose
    kernel runs a remainder, not padded channels (a convolution of a width :func:`_padded` rounds up is
    off its tile too). PyTorch runs both through oneDNN's blocked layout, whose reorders and kernels take
    slower paths off the tile: on an AVX-512 EPYC (tile 16) depthwise convolutions of 72 channels ran
    1.95-2.14x the time of 80, of 136 1.64-2.4x that of 144; 1x1 convolutions 136 wide, in or out, ran
    1.19-1.22x those 144 wide, where padding says 1.06x."""
    return multiple > 1 and abs(channels / multiple - round(channels / multiple)) > 1e-6


@dataclass(frozen=True)
class ConvGeometry:
    """What oneDNN's direct convolution picks its kernel by: the window's width (its last dimension),
    the output's width and height (1 for a 1-D convolution), the batch and the spatial dimensions."""

    window_w: int
    out_w: int
    out_h: int
    batch: int
    ndim: int


# oneDNN's direct AVX-512 float32 convolution computes up to this many output tiles in one pass over
# its input (jit_avx512_common_conv_kernel.cpp, init_conf: max_nb_oc = 5, nb_oc_blocking a divisor)
MOST_TILES_A_PASS = 5
DIRECT_TILE = 16     # the float32 lanes of that kernel's tile; no other ISA's rule was seen


def one_tile_a_pass(geometry: ConvGeometry, outputs: float, inputs: float, strided: bool, multiple: int) -> bool:
    """Whether oneDNN's direct AVX-512 convolution (tile ``multiple`` = 16) runs this layer one output
    tile a pass over its input: its explicit-broadcast kernel, the one init_conf takes unless the window
    is wider than 3 or a 3-wide one writes rows of at most 28 (its L1 test fails for 3-D windows; a
    strided one also needs at most 16 samples and 192 outputs or 10 rows; one sample takes it at rows
    of at most 28, a first layer's part-tile input, or rows of at most 147 and 96 outputs), over a tile
    count (``outputs`` / 16, padded) with no divisor from 2 to 5. On an AVX-512 EPYC such layers (112,
    176, 208 or 272 outputs) ran at 0.74-0.80 of their neighbours' rate, in 1-D, 2-D and 3-D, so that
    112 outputs took longer than 128; with the other kernel, or at 96, 128, 144 or 224, no step."""
    if multiple != DIRECT_TILE:
        return False
    tiles = round(outputs / multiple)
    if tiles < 2 or any(tiles % d == 0 for d in range(2, MOST_TILES_A_PASS + 1)):
        return False
    g = geometry
    fits_l1 = (g.window_w == 3 and g.out_w <= 28 and g.ndim < 3 and not (g.out_w == 13 and inputs >= 192)
               and not (g.out_w == 28 and inputs >= 512))
    broadcast_weights = (g.window_w > 3 or (not strided and fits_l1)
                         or (strided and g.batch <= 16 and (outputs <= 192 or g.out_h <= 10) and fits_l1)
                         or (g.batch == 1 and (g.out_w <= 28 or inputs < multiple or (g.out_w <= 147 and outputs <= 96))))
    return not broadcast_weights


def attention_dims(macs: float, keys: int, qk_width: int, v_width: int, in_keep: float = 1.0) -> Dims:
    """Fused attention as a GEMM: rows = batch x heads x queries (heads pruned away leave), outputs =
    value width, reduction = keys; its MACs (Q K^T and the sum over V) are the layer's, not this product."""
    return Dims(macs / (keys * (qk_width + v_width)) * in_keep, v_width, keys)


def onednn_tiling(profile: HardwareProfile) -> bool:
    """Whether ``profile``'s kernels tile channels as oneDNN's CPU kernels do (:func:`gemm_dims`): CPUs'
    do. A direct convolution reads fewer input channels than one tile plain, as an RGB stem's (on an
    AVX-512 EPYC 1-D convolutions reading 8 of 32 channels ran in 83 us against 108 us for 16, 2-D ones
    8 to 8 channels in 53 us against 103 us for 16 to 16), and writes outputs under one tile as a whole
    tile (8 of 32 outputs ran as 16). oneDNN's 1x1 kernel reads and writes whole tiles: over 8 x 28 x 28
    it ran 8 to 8 channels in 137 us against 88 us for 16 to 16, 8 to 64 in 204 us against 167 us, 64 to
    8 as 64 to 16. GPUs' tensor cores want whole tiles on both sides of a GEMM. The roofline prices
    widths so, and the planner offers half a tile where inputs are read plain."""
    return profile.kind == "cpu"


def dims(layer: Layer, eff: Effective, multiple: int = 1, onednn_tiling: bool = False,
         im2col: bool = False) -> Dims | None:
    """The GEMM shape of a convolution, linear layer or fused attention under its plan (channels
    padded to ``multiple``: :func:`gemm_dims`; a convolution run as ``im2col`` and a GEMM pads as a
    linear layer does); None for other layers."""
    if layer.macs <= 0:
        return None
    if layer.op == "attention" and layer.in_shapes and all(len(s) >= 2 for s in layer.in_shapes[:3]):
        # one tensor read as q, k and v is recorded once
        q = layer.in_shapes[0]
        k = layer.in_shapes[1] if len(layer.in_shapes) > 1 else q
        v = layer.in_shapes[2] if len(layer.in_shapes) > 2 else k
        return attention_dims(layer.macs, int(k[-2]), int(q[-1]), int(v[-1]), eff.in_keep)
    if layer.conv_channels:
        (cin, cout), groups = layer.conv_channels, layer.groups
        one_d = len(layer.kernel_size) == 1 and layer.out_shapes and len(layer.out_shapes[0]) == 3
        return gemm_dims(layer.macs, cin, cout, groups=groups, window=math.prod(layer.kernel_size or (1,)),
                         depthwise=layer.depthwise, strided=any(v > 1 for v in layer.stride),
                         in_keep=eff.in_keep, out_keep=eff.out_keep, multiple=multiple,
                         onednn_tiling=onednn_tiling, linear=im2col,
                         length=float(layer.out_shapes[0][-1]) if one_d else 0.0, geometry=conv_geometry(layer))
    if layer.linear_features:
        cin, cout = layer.linear_features
        return gemm_dims(layer.macs, cin, cout, in_keep=eff.in_keep, out_keep=eff.out_keep, multiple=multiple,
                         onednn_tiling=onednn_tiling, linear=True)
    return None


def conv_geometry(layer: Layer) -> ConvGeometry | None:
    """A direct convolution's :class:`ConvGeometry`; None for a 1x1 (oneDNN runs those with a kernel
    of its own) or transposed one, or one without a traced output shape."""
    kernel = layer.kernel_size
    out = layer.out_shapes[0] if layer.out_shapes else ()
    if not kernel or all(k == 1 for k in kernel) or layer.conv_transposed or len(out) != len(kernel) + 2:
        return None
    return ConvGeometry(int(kernel[-1]), int(out[-1]), int(out[-2]) if len(kernel) > 1 else 1, int(out[0]),
                        len(kernel))


def utilisation(macs: float, shape: Dims | None, klass: str, profile: HardwareProfile) -> float:
    """Share of the class's plateau rate an op attains: per GEMM dimension where the profile
    gives ``half_util_dims`` and the layer has a shape (times its ``strided`` factor for a strided
    convolution, its ``off_tile`` factor for channels off the kernels' tile, its ``one_tile_pass``
    factor for a convolution run one output tile a pass (:func:`one_tile_a_pass`), and, where the class
    has a fourth figure, a 1-D convolution's by its steps per sample), else by its MAC count."""
    halves = profile.class_figure(profile.half_util_dims, klass)
    if halves is not None and shape is not None:
        u = profile.class_figure(profile.strided, klass, 1.0) if shape.strided else 1.0
        if shape.off_tile:
            u *= profile.class_figure(profile.off_tile, klass, 1.0)
        if shape.one_tile_pass:
            u *= profile.class_figure(profile.one_tile_pass, klass, 1.0)
        for size, half in zip((shape.rows, shape.outputs, shape.reduction), halves):
            u *= size / (size + half) if size > 0 else 0.0
        if len(halves) > 3 and shape.length > 0:
            u *= shape.length / (shape.length + halves[3])
        return u
    half = profile.half_util_macs[klass]
    return macs / (macs + half) if half > 0 else 1.0


def compute_seconds(macs: float, klass: str | None, profile: HardwareProfile, precision: str,
                    shape: Dims | None = None, share: float = 1.0) -> float:
    """MACs (padded to the kernels' channel multiple) over the attainable rate: peak x class
    efficiency x utilisation (see :func:`utilisation`); on a profile with ``half_util_s``, the MACs
    at the plateau rate plus that time, or ``share`` of it for a layer that runs inside a GEMM it
    shares with siblings (:func:`sibling_shares`)."""
    if macs <= 0 or klass is None:
        return 0.0
    run = macs * (shape.padding if shape is not None else 1.0)
    rate = profile.peak_for(precision, klass) * profile.efficiency_for(precision, klass)
    if profile.half_util_s is not None and klass not in RECURRENT and (
            shape is None or profile.class_figure(profile.half_util_dims, klass) is None):
        return run / rate + profile.half_util_s * share     # u = ideal / (ideal + half): the floor is a time
    u = utilisation(run, shape, klass, profile)
    return run / (rate * u) if u > 0 else 0.0


def algorithm_speedup(layer: Layer, klass: str | None, profile: HardwareProfile, precision: str) -> float:
    """How many times fewer multiplies the kernel needs than the layer's MACs: the profile's Winograd
    speedup for a dense 3x3 stride-1 convolution at a Winograd dtype, unless it runs on TF32
    tensor cores (cuDNN's tensor-core kernels are implicit GEMMs); else 1."""
    if (klass != "conv" or precision not in profile.winograd_dtypes
            or profile.peak_for(precision, klass) != profile.peak_macs[precision]
            or layer.kernel_size != (3, 3) or layer.stride not in ((), (1, 1))
            or layer.dilation not in ((), (1, 1)) or layer.groups != 1 or layer.conv_transposed):
        return 1.0
    return profile.winograd_speedup


def activation_cost(nbytes: float, dram: float, onchip_bytes: float, onchip: float | None) -> tuple[float, float]:
    """(seconds, DRAM bytes) to move an activation of ``nbytes``: a tensor that fits in half the
    ``onchip_bytes`` stays there and moves at ``onchip`` bytes/s (free when None); a larger one goes
    through DRAM at ``dram`` bytes/s."""
    if nbytes > onchip_bytes / 2:
        return nbytes / dram, nbytes
    return (nbytes / onchip if onchip else 0.0), 0.0


def activation_seconds(nbytes: float, profile: HardwareProfile) -> tuple[float, float]:
    """:func:`activation_cost` on ``profile``: its attainable DRAM bandwidth and on-chip memory."""
    return activation_cost(nbytes, profile.bandwidth * profile.memory_efficiency, profile.onchip_bytes,
                           profile.onchip_bandwidth)


# the classes PyTorch runs through oneDNN's blocked layout on a CPU (not im2col, which is a GEMM)
REORDERED = frozenset({"conv", "pointwise", "depthwise", "conv1d", "conv3d"})


def reorder_passes(klass: str | None) -> float:
    """How many more times a convolution of ``klass`` moves its input and output, beside its kernel's
    once: PyTorch converts a plain (NCHW) input to oneDNN's blocked layout before the kernel and the
    blocked output back after it, each a read and a write of the tensor, one after the other with the
    kernel: 2 (0 for other classes). On this 2-core EPYC a depthwise convolution over 8 x 96 x 112 x 112
    (38.5 MB) ran 2.6 ms reordering in, 2.9 ms in the kernel and 2.5 ms reordering out; one pass of its
    input and output at DRAM bandwidth is 2.2 ms."""
    return 2.0 if klass in REORDERED else 0.0


def first_touch_seconds(layer: Layer, out_bytes: float, profile: HardwareProfile) -> float:
    """Seconds to fault in fresh pages for an output over the profile's ``fresh_output_bytes``
    (0 for ops that write in place, like ``relu_``, and on profiles without the figures)."""
    if (not profile.fresh_output_bytes or not profile.first_touch_bandwidth or out_bytes <= profile.fresh_output_bytes
            or (layer.aten_ops and all(map(writes_in_place, layer.aten_ops)))):
        return 0.0
    return out_bytes / profile.first_touch_bandwidth


def _weight_bytes(numel: float, density: float, pattern: Pattern | None, compressed: bool,
                  index_bits: float, element: float) -> float:
    if not compressed or pattern is None:
        return numel * element
    stored = numel * density
    per_index = pattern.n * pattern.m if pattern.kind == "block" else 1
    return stored * element + stored / per_index * index_bits / 8


def _roofline(macs: float, weight_bytes: float, act_s: float, klass: str | None, shape: Dims | None,
              profile: HardwareProfile, precision: str, overhead: float,
              fewer: float = 1.0, share: float = 1.0, reorder_s: float = 0.0) -> tuple[float, float, float, str]:
    """(latency, compute, memory, bound) of a layer; ``reorder_s`` is memory traffic before and after
    the kernel (:func:`reorder_passes`), which nothing overlaps."""
    compute = compute_seconds(macs, klass, profile, precision, shape, share) / fewer
    weight_s = weight_bytes / (profile.bandwidth * profile.memory_efficiency)
    memory = weight_s + act_s + reorder_s
    if profile.weights_overlap:
        device = max(compute, weight_s + act_s) + reorder_s
    else:      # the weights are read before the math starts (see HardwareProfile.weights_overlap)
        device = max(compute, act_s) + weight_s + reorder_s
    # an asynchronous host dispatches while the device runs (HardwareProfile.dispatch_overlaps)
    latency = max(device, overhead) if profile.dispatch_overlaps else device + overhead
    if overhead > max(compute, memory):
        bound = "overhead"
    else:
        bound = "compute" if compute >= memory else "memory"
    return latency, compute, memory, bound


def layer_latency(layer: Layer, eff: Effective, profile: HardwareProfile, precision: str, *,
                  byte_scale: float = 1.0, weights_cached: bool = False, weight_element: float | None = None,
                  state_scale: float | None = None, autocast: bool = False, weight_memory: float = 1.0,
                  share: float = 1.0) -> LayerLatency:
    """Latency of one layer under its plan entry. ``byte_scale`` converts traced activation bytes to
    the precision's; ``weights_cached`` says the whole model's weights sit on chip; ``weight_element``
    is bytes per weight where the weights are stored narrower than the math (weight-only int4/int8:
    their GEMMs run at ``profile.weight_only_efficiency`` of the math's rate, dequantising);
    ``state_scale`` converts traced KV cache bytes, which always cross DRAM, to the cache's precision;
    ``autocast`` (PyTorch AMP over float32 weights) gives a layer with weights one more kernel, the cast
    of its float32 weight to the precision (read 4 bytes, write the precision's, per weight);
    ``weight_memory`` is the share of the bandwidth a weight-only format's kernels read weights at;
    ``share`` is the layer's part of a GEMM it runs in with its siblings (:func:`sibling_shares`): it
    pays that part of the kernel's launch and floor."""
    peak = profile.peak_macs[precision]
    if profile.fuse_elementwise and layer.macs == 0 and layer.aten_ops and all(map(is_elementwise, layer.aten_ops)):
        return LayerLatency(0.0, 0.0, 0.0, 0.0, "fused", 0.0, 0.0, 0.0, 0.0 if _has_energy(profile, precision) else None,
                            kind=kind_of(layer, None))
    element = DTYPE_BYTES[precision] if weight_element is None else weight_element
    dequant = profile.weight_only_efficiency if weight_element is not None and layer.weights_read else 1.0
    rnn = layer.recurrent
    if rnn is not None and layer.macs > 0:
        return recurrent_latency(layer, rnn, eff, profile, precision, byte_scale=byte_scale,
                                 weights_cached=weights_cached)
    weights = 0.0 if weights_cached else weights_touched(layer) * eff.shape_scale
    klass = priced_class(layer, profile, weights * element, precision, eff.in_keep)
    in_bytes = layer.act_in_bytes * eff.in_keep * byte_scale
    out_bytes = layer.act_out_bytes * eff.out_keep * byte_scale
    act_in_s, act_in_dram = activation_seconds(in_bytes, profile)
    act_out_s, act_out_dram = activation_seconds(out_bytes, profile)
    act, act_dram = act_in_s + act_out_s, act_in_dram + act_out_dram
    passes = reorder_passes(klass) if profile.layout_reorders else 0.0
    reorder, act_dram = passes * act, act_dram * (1.0 + passes)
    act += first_touch_seconds(layer, out_bytes, profile)
    if layer.state_bytes:      # the KV cache lives in DRAM between passes, whatever its size
        state = layer.state_bytes * eff.in_keep * (byte_scale if state_scale is None else state_scale)
        act, act_dram = act + state / (profile.bandwidth * profile.memory_efficiency), act_dram + state
    rated = rated_kinds(layer)
    rates = [profile.rated_bandwidth[k] for k in rated if k in profile.rated_bandwidth]
    if rates:
        pooled = profile.pool_windows and bool(rated & POOL_KINDS)
        act = max(act, pool_bytes(in_bytes, out_bytes, math.prod(layer.kernel_size) if pooled else 1) / min(rates))
    shape_macs = eff.shape_macs if eff.shape_macs is not None else eff.macs / eff.density if eff.density else 0.0
    shape = (dims(layer, eff, profile.channel_multiple, onednn_tiling(profile), im2col=klass == "im2col")
             if klass is not None else None)
    kinds = ({klass} | rated) - {None} or {"elementwise"}
    overhead = (profile.per_op_s + sum(profile.class_figure(profile.per_class_s, k, 0.0) for k in kinds)) * share
    if profile.norm_plane_s:
        overhead += norm_planes(layer) * eff.in_keep * profile.norm_plane_s
    if layer.macs == 0 and layer.kernels > 1 and not profile.fuse_elementwise:
        # an unfused memory-only module of several kernels (GPT-2's GELU, written as seven elementwise
        # ops: 7x one kernel's time here) dispatches each, and each reads and writes a tensor its size
        more = layer.kernels - 1
        overhead += more * profile.per_op_s
        act += more * 2 * activation_seconds(out_bytes, profile)[0]

    if autocast and klass is not None and layer.weights_read and not weights_cached:
        overhead += profile.per_op_s
        act += weights_touched(layer) * (4 + DTYPE_BYTES[precision]) / (profile.bandwidth * profile.memory_efficiency)
    fewer = algorithm_speedup(layer, klass, profile, precision) * dequant
    best = _roofline(shape_macs, weights * element / weight_memory, act, klass, shape, profile, precision, overhead,
                     fewer, share, reorder)
    exec_macs, dram, sparse = shape_macs / fewer, weights * element + act_dram, False
    plan = eff.plan
    if plan is not None and plan.pattern.elementwise and eff.density < 1.0:
        support = profile.support(str(plan.pattern), precision)
        if support is not None and plan.sparsity >= support.min_sparsity:
            factor = 1.0
            if support.compute_speedup > 1.0:
                factor = max(eff.density, 1.0 / support.compute_speedup) / support.efficiency
            w = _weight_bytes(weights, eff.density, plan.pattern, support.compressed_weights,
                              support.index_bits, element)
            candidate = _roofline(shape_macs * factor, w, act, klass, shape, profile, precision, overhead,
                                  share=share, reorder_s=reorder)
            if candidate[0] < best[0]:
                best, exec_macs, dram, sparse = candidate, shape_macs * min(factor, 1.0), w + act_dram, True
    latency, compute, memory, bound = best
    return LayerLatency(
        latency_s=latency, compute_s=compute, memory_s=memory, overhead_s=overhead, bound=bound,
        exec_macs=exec_macs, dram_bytes=dram,
        attained=exec_macs / (latency * peak) if latency > 0 else 0.0,
        energy_j=_energy(profile, precision, exec_macs, dram), sparse_path=sparse, kind=kind_of(layer, klass),
    )


@dataclass(frozen=True)
class RecurrentCost:
    """An LSTM/GRU/RNN call's seconds: ``call_s`` for what runs once (dispatch, the input
    projections, the weights' DRAM read, the sequence in and out) and ``step_s`` summed over every
    step of every layer and direction (the recurrent GEMM or the gates' bytes, and the fixed cost
    per step), with the cell's fixed cost per call of a layer and direction."""

    call_s: float
    step_s: float
    step_fixed_s: float            # the part of step_s that is fixed cost per step
    project_s: float               # the part of call_s that is input projections' math
    memory_s: float                # the part of call_s that is DRAM and cache traffic
    macs: float


def recurrent_cost(rnn: Recurrent, profile: HardwareProfile, precision: str, *, in_keep: float = 1.0,
                   out_keep: float = 1.0, weight_bytes: float = 0.0, act_bytes: tuple[float, ...] = ()) -> RecurrentCost:
    """:class:`RecurrentCost` of ``rnn``: per layer and direction, the input projection as one
    'gemm' over the whole sequence (``steps`` x ``batch`` rows), then ``steps`` times the
    hidden-to-gates GEMM at ``batch`` rows (the cell's class, 'lstm', 'gru' or 'rnn': its rate, its
    half dimensions and its fixed cost per step, which holds the gate kernels and their dispatch) or the gates' bytes if
    those take longer, and the cell's fixed cost per call (``per_call_s``: a primitive set up each call). ``out_keep`` scales the hidden units, ``in_keep`` the first layer's inputs;
    ``weight_bytes`` are read from DRAM once per call, ``act_bytes`` (input and output) move once."""
    element = DTYPE_BYTES[precision]
    hidden = rnn.hidden_size * out_keep
    state = rnn.state_size * (out_keep if not rnn.proj_size else 1.0)
    gates = rnn.gates * hidden
    rows = rnn.steps * rnn.batch
    project_s = step_s = macs = 0.0
    for l in range(rnn.num_layers):
        width = rnn.input_size * in_keep if l == 0 else state * rnn.directions
        project = rows * gates * width
        step = rnn.batch * gates * state + rnn.batch * hidden * rnn.proj_size
        gate_s = activation_seconds(3.0 * rnn.batch * gates * element, profile)[0]  # gates read twice, state written
        one_step = max(compute_seconds(step, rnn.cell, profile, precision, Dims(rnn.batch, gates, state)), gate_s)
        project_s += rnn.directions * compute_seconds(project, "gemm", profile, precision, Dims(rows, gates, width))
        step_s += rnn.directions * rnn.steps * one_step
        macs += rnn.directions * (project + rnn.steps * step)
    calls = rnn.num_layers * rnn.directions
    fixed = calls * (rnn.steps * profile.class_figure(profile.per_class_s, rnn.cell, 0.0)
                     + profile.per_call_s.get(rnn.cell, 0.0))
    memory = weight_bytes / (profile.bandwidth * profile.memory_efficiency) + \
        sum(activation_seconds(b, profile)[0] for b in act_bytes)
    call = profile.per_op_s + calls * profile.class_figure(profile.per_class_s, "gemm", 0.0) + project_s + memory
    return RecurrentCost(call, step_s + fixed, fixed, project_s, memory, macs)


def recurrent_latency(layer: Layer, rnn: Recurrent, eff: Effective, profile: HardwareProfile, precision: str, *,
                      byte_scale: float = 1.0, weights_cached: bool = False) -> LayerLatency:
    """An LSTM/GRU/RNN layer as it runs (:func:`recurrent_cost`) under its plan entry."""
    element = DTYPE_BYTES[precision]
    weights = 0.0 if weights_cached else layer.weights_read * eff.shape_scale * element
    cost = recurrent_cost(rnn, profile, precision, in_keep=eff.in_keep, out_keep=eff.out_keep, weight_bytes=weights,
                          act_bytes=(layer.act_in_bytes * eff.in_keep * byte_scale,
                                     layer.act_out_bytes * eff.out_keep * byte_scale))
    latency = cost.call_s + cost.step_s
    compute = cost.project_s + cost.step_s - cost.step_fixed_s
    overhead = latency - compute - cost.memory_s
    bound = "overhead" if overhead > max(compute, cost.memory_s) else "compute" if compute >= cost.memory_s else "memory"
    peak = profile.peak_macs[precision]
    return LayerLatency(latency_s=latency, compute_s=compute, memory_s=cost.memory_s, overhead_s=overhead, bound=bound,
                        exec_macs=cost.macs, dram_bytes=weights,
                        attained=cost.macs / (latency * peak) if latency > 0 else 0.0,
                        energy_j=_energy(profile, precision, cost.macs, weights), kind=kind_of(layer, rnn.cell))


def _has_energy(profile: HardwareProfile, precision: str) -> bool:
    return precision in profile.energy_pj_per_mac and profile.energy_pj_per_dram_byte is not None


def _energy(profile: HardwareProfile, precision: str, macs: float, dram_bytes: float) -> float | None:
    if not _has_energy(profile, precision):
        return None
    return (macs * profile.energy_pj_per_mac[precision] + dram_bytes * profile.energy_pj_per_dram_byte) * 1e-12


@dataclass(frozen=True)
class Context:
    """What every layer of one estimate shares: the precision the math runs at, the factors from
    traced bytes to the run's (activations, weights, KV cache), and whether the whole model's weights
    sit on chip."""

    precision: str
    byte_scale: float              # activations
    weights_cached: bool
    weight_scale: float = 1.0      # weights: byte_scale, or a weight-only format's over the traced dtype
    state_scale: float = 1.0       # the KV cache (kv_dtype of the precision)
    weights_dtype: str | None = None   # a weight-only format (int4, int8, float8), None: the precision's
    autocast: bool = False         # PyTorch AMP: float32 weights cast to the precision at every call
    weight_memory: float = 1.0     # share of the bandwidth weights are read at (weight-only kernels)
    # layer -> its part of the one GEMM a fusing runtime runs it in with its siblings (sibling_shares)
    shares: Mapping[str, float] = field(default_factory=dict)

    @property
    def weight_element(self) -> float | None:
        """Bytes per weight of a weight-only format; None where weights are stored at the precision."""
        return weight_bytes(self.weights_dtype) if self.weights_dtype else None


def latency_in(layer: Layer, eff: Effective, profile: HardwareProfile, ctx: Context) -> LayerLatency:
    """:func:`layer_latency` of ``layer`` under ``ctx``: what every layer of one estimate (and the
    planner's tables) is priced with."""
    return layer_latency(layer, eff, profile, ctx.precision, byte_scale=ctx.byte_scale,
                         weights_cached=ctx.weights_cached, weight_element=ctx.weight_element,
                         state_scale=ctx.state_scale, autocast=ctx.autocast, weight_memory=ctx.weight_memory,
                         share=ctx.shares.get(layer.name, 1.0))


SIBLING_CLASSES = ("gemm", "pointwise")


def sibling_shares(graph: LayerGraph) -> dict[str, float]:
    """Layer -> 1/n for each of n >= 2 linear layers (or 1x1 convolutions of one stride) that read the
    same activation: a transformer's q/k/v projections, an MLP's gate and up. A fusing runtime runs
    them as one GEMM over their concatenated weights (TensorRT's BERT plugins and horizontal fusion,
    vLLM's QKVParallelLinear and MergedColumnParallelLinear, TensorRT-LLM), so the group pays one
    launch and one kernel floor, each member its part; their math and bytes add as they are. Layers
    with no producer in the graph (reading the model's input) are left alone."""
    groups: dict[tuple, list[str]] = {}
    for layer in graph.layers:
        klass = op_class(layer)
        if klass not in SIBLING_CLASSES or not layer.weights_read or layer.recurrent is not None:
            continue
        producers = tuple(sorted(graph.predecessors(layer.name)))
        if not producers:
            continue
        key = (producers, layer.in_shapes[:1], klass, layer.stride if klass == "pointwise" else ())
        groups.setdefault(key, []).append(layer.name)
    return {name: 1.0 / len(names) for names in groups.values() if len(names) > 1 for name in names}


def traced_dtype_of(graph: LayerGraph) -> str:
    return graph.inputs.dtype if graph.inputs.dtype in DTYPE_BYTES else "float32"


def context(graph: LayerGraph, profile: HardwareProfile, effective: Mapping[str, Effective],
            dtype: str | None = None, weights_dtype: str | None = None, autocast: bool = False) -> Context:
    """``dtype`` is the precision asked for (default: the traced dtype); a device that lacks it runs
    the precision :meth:`HardwareProfile.precision` picks, and bytes are rescaled from the traced
    dtype to it. ``weights_dtype`` stores the weights narrower (weight-only int4/int8/float8);
    ``autocast`` runs a float32 model under PyTorch AMP at a 16-bit precision (a cast kernel per
    weighted layer; no effect at float32 or on a model whose weights are stored narrower). A runtime
    that says so (``profile.fuse_siblings``) runs sibling projections as one GEMM (:func:`sibling_shares`)."""
    traced = traced_dtype_of(graph)
    precision = profile.precision(dtype or traced)
    acts, weights, state = byte_scales(traced, precision, weights_dtype)
    weight_total = sum(effective[l.name].params for l in graph.layers) * weights * DTYPE_BYTES[traced]
    return Context(precision, acts, profile.weights_on_chip and weight_total <= profile.onchip_bytes,
                   weights, state, weights_dtype, autocast and precision in ("float16", "bfloat16") and not weights_dtype,
                   profile.weight_only_memory.get((weights_dtype or "").partition("-")[0], 1.0),
                   sibling_shares(graph) if profile.fuse_siblings else {})


def estimate(graph: LayerGraph, profile: HardwareProfile, effective: Mapping[str, Effective],
             dtype: str | None = None, weights_dtype: str | None = None, autocast: bool = False) -> Estimate:
    """Latency of every layer of ``graph`` under ``effective`` (from ``sparsity.apply_plan``) at
    precision ``dtype``, its weights stored as ``weights_dtype``, under AMP with ``autocast``
    (see :func:`context`)."""
    ctx = context(graph, profile, effective, dtype, weights_dtype, autocast)
    layers = {l.name: latency_in(l, effective[l.name], profile, ctx) for l in graph.layers}
    notes = () if ctx.autocast or not autocast else (
        f"--autocast prices a float32 model under AMP at 16-bit; this estimate runs at {ctx.precision}"
        f"{' with weights stored as ' + weights_dtype if weights_dtype else ''}, so it adds no cast kernels",)
    kinds = {name: lat.kind for name, lat in layers.items()}
    return Estimate(profile, ctx.precision, layers, dtype or traced_dtype_of(graph),
                    unsampled_layers(graph, profile, kinds), ctx, notes,
                    predated_layers(graph, profile, kinds, effective))


KIND_WORDS = {"conv": "3x3 convolution", "pointwise": "1x1 convolution", "depthwise": "depthwise convolution",
              "gemm": "linear layer", "attention": "attention", "conv1d": "1-D convolution",
              "conv3d": "3-D convolution", "lstm": "LSTM layer", "gru": "GRU layer", "rnn": "RNN layer",
              "transcendental": "GELU/softmax", "sigmoid": "sigmoid/SiLU", "pooling": "max-pool",
              "norm": "normalisation", "gather": "embedding lookup", "elementwise": "elementwise op",
              "pooling1d": "1-D max-pool", "avgpool": "average pool", "reduction": "reduction (mean, max over a dimension, global pooling)",
              "gemm_dram": "linear layer whose weights overflow the cache",
              "im2col": "convolution of one small sample (PyTorch runs it as im2col and a GEMM)"}


def unsampled_layers(graph: LayerGraph, profile: HardwareProfile, kinds: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """Cost kind (``kinds``: each layer's, as its estimate priced it) -> the layers of that kind, for every kind a calibrated ``profile``
    (one that lists what it ``calibrated``) never timed: their price comes from other kinds' figures (a GRU priced as
    one big GEMM was 95% fast here; 1-D convolutions at short lengths 2x). Empty for profiles from
    spec sheets, which are checked against published figures instead."""
    if not profile.calibrated:
        return {}
    out: dict[str, list[str]] = {}
    for layer in graph.layers:
        kind = kinds[layer.name]
        if kind not in profile.calibrated:
            out.setdefault(kind, []).append(layer.name)
    return {k: tuple(v) for k, v in out.items()}


# terms of the CPU model a calibration fits, newer than some calibrated profiles: term -> what it prices
PREDATED_TERMS = {"conv1d_steps": "a 1-D convolution's steps per sample",
                  "norm_planes": "a batch norm's cost per (sample, channel) plane",
                  "layout_reorders": "a convolution's layout reorders through DRAM (its input converted to "
                                     "oneDNN's blocked layout and its output back)",
                  "off_tile": "the rate of a convolution whose channels are off the kernels' tile (a depthwise "
                              "one of 72 channels ran 2x one of 80)",
                  "one_tile_pass": "the rate of a convolution run one output tile a pass (one of 112 outputs "
                                   "ran longer than one of 128)",
                  "strided_pointwise": "a strided 1x1 convolution's rate (without it, a strided 3x3's: "
                                       "ResNet-50's strided shortcuts read 41-44% fast, 28-33% with it)"}
# the classes of convolutions oneDNN runs with its direct kernel, which may run one output tile a pass
DIRECT_CLASSES = frozenset({"conv", "conv1d", "conv3d"})


def predated_layers(graph: LayerGraph, profile: HardwareProfile, kinds: Mapping[str, str],
                    effective: Mapping[str, Effective]) -> dict[str, tuple[str, ...]]:
    """Term (:data:`PREDATED_TERMS`) -> the layers it prices, for each term a calibrated ``profile``
    lacks though it timed the layers' kind: written before costplan fitted it, the profile prices them
    without it (a fourth 'conv1d' figure in ``half_util_dims``; ``norm_plane_s``, 0 where fitted so;
    ``layout_reorders``, whose lack its fits absorbed for tensors in cache, not for those through DRAM;
    an ``off_tile`` factor for the layer's class, which calibration writes for every class it draws; a
    ``one_tile_pass`` factor for its class or the class it follows, written where calibration timed such layers;
    a ``strided`` factor for 'pointwise', which follows conv's without one).
    ``kinds``: each layer's cost kind as its estimate priced it; ``effective``: its plan entry."""
    if not profile.calibrated:
        return {}
    halves = profile.class_figure(profile.half_util_dims, "conv1d")
    lacks = {"conv1d_steps": "conv1d" in profile.calibrated and halves is not None and len(halves) < 4,
             "norm_planes": "norm" in profile.calibrated and profile.norm_plane_s is None,
             "layout_reorders": bool(REORDERED & set(profile.calibrated)) and not profile.layout_reorders,
             "off_tile": bool(REORDERED & set(profile.calibrated) - set(profile.off_tile)),
             # only on the direct kernel's tile can a layer run one tile a pass, or a profile lack its factor
             "one_tile_pass": profile.channel_multiple == DIRECT_TILE and any(
                 k in profile.calibrated and profile.class_figure(profile.one_tile_pass, k) is None for k in DIRECT_CLASSES),
             "strided_pointwise": "pointwise" in profile.calibrated and "pointwise" not in profile.strided}
    if not any(lacks.values()):     # every profile calibrated since: no walk over the layers per estimate
        return {}
    out: dict[str, list[str]] = {}
    for layer in graph.layers:
        eff, kind = effective[layer.name], kinds[layer.name]
        if lacks["conv1d_steps"] and kind == "conv1d":
            out.setdefault("conv1d_steps", []).append(layer.name)
        if lacks["norm_planes"] and norm_planes(layer) > 0:
            out.setdefault("norm_planes", []).append(layer.name)
        if (lacks["layout_reorders"] and kind in REORDERED
                and max(layer.act_in_bytes * eff.in_keep, layer.act_out_bytes * eff.out_keep) > profile.onchip_bytes / 2):
            out.setdefault("layout_reorders", []).append(layer.name)
        if lacks["off_tile"] and kind in REORDERED and kind in profile.calibrated and kind not in profile.off_tile:
            shape = dims(layer, eff, profile.channel_multiple, onednn_tiling(profile))
            if shape is not None and shape.off_tile:
                out.setdefault("off_tile", []).append(layer.name)
        if (lacks["one_tile_pass"] and kind in DIRECT_CLASSES and kind in profile.calibrated
                and profile.class_figure(profile.one_tile_pass, kind) is None):
            shape = dims(layer, eff, profile.channel_multiple, onednn_tiling(profile))
            if shape is not None and shape.one_tile_pass:
                out.setdefault("one_tile_pass", []).append(layer.name)
        if lacks["strided_pointwise"] and kind == "pointwise" and any(v > 1 for v in layer.stride):
            out.setdefault("strided_pointwise", []).append(layer.name)
    return {k: tuple(v) for k, v in out.items()}

