"""What calibration times: layers sampled as networks have them (GEMMs, 3x3, 1x1 and depthwise
convolutions, fused attention), memory and overhead probes, held-out networks, and the facts of
this machine (cache size, SIMD width, CPU name) a profile records.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from costplan.hardware.roofline import (
    DIRECT_TILE,
    ConvGeometry,
    Dims,
    attention_dims,
    gemm_dims,
    pool_bytes,
    runs_im2col,
)
from costplan.trace.graph import GATES, Recurrent
from costplan.hardware.timing import Probe, timed
from costplan.models import Instance
from costplan.models.source import FRESH_INPUTS

ELEMENTWISE_SHAPES = ((32, 112), (64, 56), (144, 56), (256, 28), (512, 14))  # (channels, spatial)
NORM_SHAPES = ((64, 112), (64, 56), (256, 56), (512, 28), (1024, 14), (2048, 7))  # as in ResNets
# (batch, channels, steps) of 1-D batch norms: batches of short sequences (MNIST-1D, text CNNs), whose
# kernel loops over each sample's channels: 64 x 128 planes of 10 steps ran 1.6x slower than one
# 2-D map of the same bytes on a 2-core EPYC
NORM_SHAPES_1D = ((64, 32, 40), (64, 128, 10), (64, 64, 20), (16, 256, 20))
POOLING_SHAPES = ((64, 112), (128, 56), (256, 28))  # (channels, input spatial) of 3x3 stride-2 max-pools
# (vocabulary, width, batch, tokens) of embedding lookups: word tables of text models (most far larger
# than a cache: their rows come from DRAM at scattered addresses), from a batch's few tokens to a long
# prompt's; a batch of sentences (batch > 1) looks up by a 2-D index, slower than a flat one
GATHER_SHAPES = ((1000, 64, 1, 64), (30522, 768, 1, 128), (50257, 768, 8, 128), (32000, 1024, 1, 64),
                 (8000, 512, 1, 4096), (100000, 256, 64, 128), (250000, 64, 1, 2048), (50000, 40, 8, 100))
# (shape, dimension) of reductions as networks run them, means and maxima in turn: over tokens, over
# time, global average pools, over features
REDUCTION_SHAPES = (((64, 128, 256), 1), ((32, 100, 200), -1), ((1, 512, 7, 7), (2, 3)), ((8, 2048, 7, 7), (2, 3)),
                    ((1, 197, 768), -1), ((16, 50, 256), 1))
SMALL_ELEMENTWISE = (256, 4096, 65536, 262144, 1048576)  # elements of a binary add: residuals, biases, gates
# (batch, heads, tokens, head width) of fused attention as encoders run it: ViT-B (197 tokens), BERT
# (128-384), small encoders (64), GPT-2 blocks
ATTENTION_SHAPES = ((1, 8, 64, 32), (1, 12, 128, 64), (1, 12, 197, 64), (1, 12, 384, 64), (1, 4, 32, 64),
                    (1, 16, 256, 64), (8, 12, 128, 64), (8, 8, 64, 32), (2, 12, 197, 64), (1, 8, 512, 64))
CHAIN = 8  # ops per chain: each reads what the previous one wrote, as layers in a network do
WIDTHS = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024, 1536, 2048, 3072)
BATCHES = (1, 1, 1, 2, 4, 8)  # convolutions' batch: most users time batch 1, throughput runs batch more
MAX_ACTIVATION = 2 ** 21  # floats (8 MB): the largest input or output a sampled layer may have
FRESH_OUTPUT_BYTES = 32 * 2 ** 20  # glibc's largest mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit)


@dataclass(frozen=True)
class Shape:
    """One sampled layer: a convolution (``kernel`` >= 1) or a linear layer (``kernel`` 0, ``spatial``
    its rows). Widths are multiples of 8, as pruned layers' should be."""

    kind: str          # gemm | conv | pointwise | depthwise
    cin: int
    cout: int
    spatial: int
    kernel: int = 0
    stride: int = 1
    batch: int = 1     # convolutions only: a linear layer's batch is in its rows
    groups: int = 1    # grouped 3x3 convolutions (RegNet, ResNeXt); depthwise ones are their own kind
    ndim: int = 2      # a convolution's spatial dimensions: 1 (conv1d), 2, 3 (conv3d)
    multiple: int = 1  # the channel tile of the kernels it runs on (:func:`channel_multiple` where timed)

    @property
    def positions(self) -> int:
        """Output positions: a linear layer's rows, a convolution's batch x output pixels."""
        return self.spatial if self.kernel == 0 else self.batch * math.ceil(self.spatial / self.stride) ** self.ndim

    @property
    def window(self) -> int:
        return max(self.kernel, 1) ** (self.ndim if self.kernel else 1)

    @property
    def macs(self) -> int:
        per_output = self.window if self.kind == "depthwise" else self.cin // self.groups * self.window
        return self.positions * self.cout * per_output

    @property
    def dims(self) -> Dims:
        """The GEMM the roofline gives this layer (:func:`costplan.hardware.roofline.gemm_dims`)."""
        return gemm_dims(self.macs, self.cin, self.cout, groups=self.groups, window=self.window,
                         depthwise=self.kind == "depthwise", strided=self.stride > 1, multiple=self.multiple,
                         onednn_tiling=True, linear=self.kernel == 0 or self.kind == "im2col",
                         length=math.ceil(self.spatial / self.stride) if self.ndim == 1 and self.kernel else 0.0,
                         geometry=self.geometry)

    @property
    def geometry(self) -> ConvGeometry | None:
        """A direct convolution's geometry (a 1x1 one, a depthwise one and a linear layer have none)."""
        if self.kernel <= 1 or self.kind in ("gemm", "depthwise"):
            return None
        out = math.ceil(self.spatial / self.stride)
        return ConvGeometry(self.kernel, out, out if self.ndim > 1 else 1, self.batch, self.ndim)

    rows = property(lambda self: self.dims.rows)
    outputs = property(lambda self: self.dims.outputs)
    reduction = property(lambda self: self.dims.reduction)

    @property
    def weight_bytes(self) -> int:
        return 4 * self.cout * self.macs // (self.positions * self.cout)

    @property
    def im2col(self) -> bool:
        """Whether PyTorch runs this convolution as im2col and a GEMM (:func:`runs_im2col`)."""
        if self.kind == "gemm":
            return False
        return runs_im2col((self.batch, self.cin, *(self.spatial,) * self.ndim), (self.kernel,) * self.ndim,
                           groups=self.cin if self.kind == "depthwise" else self.groups)

    @property
    def activation_bytes(self) -> tuple[int, int]:
        inputs = self.cin * (self.spatial if self.kernel == 0 else self.batch * self.spatial ** self.ndim)
        return 4 * inputs, 4 * self.positions * self.cout


def _width(value: float) -> int:
    return int(min(2048, max(8, round(value / 8) * 8)))


def sample_shapes(kind: str, count: int, seed: int = 0, multiple: int = 1) -> list[Shape]:
    """``count`` layers of one op class drawn as networks have them (seeded). Convolutions:
    a 7x7 to 112x112 map, a width about 64 x 56 / side (channels grow as maps shrink) scaled by
    1/4 to 3 for pruned and wide layers, the output width 1/4 to 4 times the input's (bottlenecks,
    expansions), multiples of 8 from 8 to 2048, stride 1 or 2, batch 1 (half the
    draws) to 8; a quarter of the 3x3 ones grouped, 8 to 64 channels a group, as RegNets and ResNeXts
    have them. GEMMs: 1 to 8192 rows (tokens, or the pixels of channels-last linears in ConvNeXt),
    independent widths from 8 to 3072. 1-D convolutions: 10 to 4000 steps, windows of 3 to 7, batch 1
    to 64 (a batch of short sequences runs slower per MAC than one long one), a fifth of them stems
    over 1 or 2 channels. A convolution PyTorch runs as im2col and a GEMM (:func:`runs_im2col`:
    one sample over a small input) is drawn only as 'im2col': 1-D ones over 10 to 250 steps with windows
    of 1 to 7, 2-D ones on 7x7 to 28x28 maps and 3-D ones on 4- and 8-cubes with windows of 1 or 3.
    ``multiple``: the channel tile of the kernels they are timed on, to which the roofline pads widths."""
    rng = np.random.default_rng(seed)
    out: list[Shape] = []
    while len(out) < count:
        stride = int(rng.choice((1, 1, 2)))
        spatial = int(rng.choice((7, 14, 28, 56, 112)))
        cin = _width(64 * 56 / spatial * 2 ** rng.uniform(-2, 1.5))
        cout = _width(cin * float(rng.choice((0.25, 0.5, 1, 1, 2, 4))))
        batch = int(rng.choice(BATCHES))
        if kind == "gemm":
            cin, cout = (int(w) for w in rng.choice(WIDTHS, 2))
            shape = Shape(kind, cin, cout, int(rng.choice((1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192))))
        elif kind == "depthwise":
            shape = Shape(kind, cout, cout, spatial, int(rng.choice((3, 3, 5))), stride, batch)
        elif kind == "conv1d":     # sequences: 10 to 4000 steps (MNIST-1D, audio front ends, text CNNs)
            length = int(rng.choice((10, 20, 40, 100, 250, 1000, 4000)))
            cin = _width(2 ** rng.uniform(3, 9))
            cout = _width(cin * float(rng.choice((0.5, 1, 1, 2))))
            if rng.random() < 0.2:   # a stem over a raw signal of 1 or 2 channels (a reduction of 3 to 14)
                cin, cout = int(rng.choice((1, 2))), _width(2 ** rng.uniform(4, 7))
            shape = Shape(kind, cin, cout, length, int(rng.choice((3, 3, 5, 7))), stride, int(rng.choice((1, 1, 8, 32, 64))),
                          ndim=1)
        elif kind == "im2col":     # one sample over a short sequence or a small map (runs_im2col)
            ndim = int(rng.choice((1, 1, 2, 2, 3)))
            spatial = int(rng.choice(((10, 20, 40, 100, 250), (7, 7, 14, 28), (4, 8))[ndim - 1]))
            cin = _width(2 ** rng.uniform(3, 9.5))
            kernel = int(rng.choice((1, 3, 3, 5, 7) if ndim == 1 else (1, 3, 3)))
            shape = Shape(kind, cin, _width(cin * float(rng.choice((0.5, 1, 1, 2, 4)))), spatial, kernel,
                          stride, 1, ndim=ndim)
        elif kind == "conv3d":     # video and volumes: small cubes
            side = int(rng.choice((4, 8, 14, 28)))
            cin = _width(2 ** rng.uniform(3, 7))
            shape = Shape(kind, cin, _width(cin * float(rng.choice((0.5, 1, 2)))), side, 3, stride,
                          int(rng.choice((1, 1, 2))), ndim=3)
        elif kind == "conv" and rng.random() < 0.25:
            group = int(rng.choice((8, 16, 24, 32, 64)))
            width = max(group, round(cin / group) * group)
            shape = Shape(kind, width, width, spatial, 3, stride, batch, width // group)
        elif kind == "conv":
            shape = Shape(kind, cin, cout, spatial, 3, stride, batch)
        else:  # a third strided (ResNet shortcuts, 1-D downsampling), fitted with a factor of their own
            shape = Shape(kind, cin, cout, spatial, 1, stride, batch)
        if shape.im2col != (kind == "im2col"):   # each convolution is fitted as the path PyTorch runs it on
            continue
        inputs, outputs = shape.activation_bytes
        least = 2e4 if kind == "im2col" else 2e5
        if least <= shape.macs <= 4e8 * shape.batch ** 0.5 and max(inputs, outputs) <= 4 * MAX_ACTIVATION * min(batch, 3):
            out.append(shape)
    return [replace(drawn, multiple=multiple) for drawn in out]


def one_pass_pairs(kind: str, multiple: int) -> list[Shape]:
    """Convolutions oneDNN runs one output tile a pass (:func:`costplan.hardware.roofline.one_tile_a_pass`),
    each beside a twin one tile wider that runs several, as calibration adds them to the drawn ``kind``
    (conv, conv1d) on kernels of its tile: random widths give a class none to three such shapes, too few
    to fit the factor (:data:`costplan.hardware.fitting.LEAST_ONE_PASS`), and a twin tells it from the
    outputs' half. None on other tiles."""
    if multiple != DIRECT_TILE:
        return []
    pairs = {"conv": [((64, 112, 56, 3, 1, 1), 128), ((32, 208, 56, 3, 2, 2), 192), ((64, 176, 112, 3, 2, 1), 192)],
             "conv1d": [((128, 112, 200, 3, 1, 16), 128), ((64, 176, 400, 3, 1, 4), 192)]}.get(kind, [])
    ndim = 1 if kind == "conv1d" else 2
    out = []
    for (cin, cout, spatial, kernel, stride, batch), twin in pairs:
        out += [Shape(kind, cin, width, spatial, kernel, stride, batch, ndim=ndim, multiple=multiple)
                for width in (cout, twin)]
    return out


# (in channels, out channels, map side, window, stride) of convolutions in the first stages of mobile
# and residual networks (MobileNet-V2/V3's and EfficientNet's 112x112 and 56x56 stages, ResNet-50's
# 56x56 expansions), timed at batch LARGE_MAP_BATCH, where their input and output (25-48 MB) fill or
# overflow a server's last-level cache. Random draws put few channels on large maps and never reach
# such maps (none of 48 depthwise draws read over 15 MB); fitted without them, depthwise convolutions
# over them, timed after a cache's worth of other reads, ran 11-23% over their price here (MobileNet-V2
# at batch 8: 4.66 ms against 4.04 for 8 x 96 x 112 x 112 at stride 2), 1x1 and 3x3 ones within 5%.
LARGE_MAPS = {"depthwise": ((96, 96, 112, 3, 2), (64, 64, 112, 3, 2), (144, 144, 56, 3, 1), (32, 32, 112, 3, 1)),
              "pointwise": ((16, 96, 112, 1, 1), (32, 192, 56, 1, 1), (64, 256, 56, 1, 1)),
              "conv": ((32, 64, 112, 3, 1), (24, 64, 112, 3, 1))}
LARGE_MAP_BATCH = 8


def large_map_shapes(kind: str, multiple: int) -> list[Shape]:
    """The convolutions of ``kind`` over maps larger than a last-level cache that calibration adds to
    the drawn ones (:data:`LARGE_MAPS`)."""
    return [Shape(kind, cin, cout, side, window, stride, LARGE_MAP_BATCH, multiple=multiple)
            for cin, cout, side, window, stride in LARGE_MAPS.get(kind, ())]


@dataclass(frozen=True)
class AttentionShape:
    """Fused self-attention over ``tokens`` tokens: the GEMM dimensions the roofline gives it
    (rows = batch x heads x queries, outputs = value width, reduction = keys); MACs as the tracer
    counts them (Q K^T and the weighted sum of V)."""

    batch: int
    heads: int
    tokens: int
    width: int

    @property
    def cout(self) -> int:
        return self.width

    @property
    def macs(self) -> int:
        return self.batch * self.heads * self.tokens * self.tokens * 2 * self.width

    @property
    def dims(self) -> Dims:
        """The GEMM the roofline gives fused attention (:func:`costplan.hardware.roofline.attention_dims`)."""
        return attention_dims(self.macs, self.tokens, self.width, self.width)

    rows = property(lambda self: self.dims.rows)
    outputs = property(lambda self: self.dims.outputs)
    reduction = property(lambda self: self.dims.reduction)

    @property
    def weight_bytes(self) -> int:
        return 0

    @property
    def activation_bytes(self) -> tuple[int, int]:
        queries = self.batch * self.heads * self.tokens
        return 3 * 4 * queries * self.width, 4 * queries * self.width

    def __str__(self) -> str:
        return f"{self.batch}x{self.heads}x{self.tokens}x{self.width}"


def attention_shapes(quick: bool = False) -> list[AttentionShape]:
    shapes = [AttentionShape(*s) for s in ATTENTION_SHAPES]
    return shapes[::2] if quick else shapes


# caches' worth of float32 weights the convolution and linear probes take turns over (see cold_weights)
COLD_CACHES = 4


def cold_weights(layer: torch.nn.Module, x: torch.Tensor, pool: torch.Tensor) -> Probe:
    """A probe of ``layer`` (a linear layer or convolution) on ``x`` as a network runs it: its
    weights cold, its input warm. Each call reads its weight from the next slot of ``pool`` (several
    caches of floats), so that the weights come from DRAM, as a layer's do a whole forward pass after
    their last use: on 2 EPYC cores (32 MB L3) a 768 x 3072 weight on 8 rows ran 1.08 ms cold against
    0.56 ms read again at once, 768 x 768 on 8 to 128 rows 1.7x to 1.2x as long; on 512 rows alike.
    BERT-base's linears are priced from these: hot probes had priced its batch of one 13-30% fast.
    Convolutions alike: with their weights read again at once, ten zoo networks' errors under one
    calibration spread over 29 points (mobilenet_v2 at batch 1 -40%, resnet50 -31%), cold over 13."""
    numel = layer.weight.numel()
    slots = max(1, pool.numel() // numel)
    turn = [0]
    run = ((lambda w: torch.nn.functional.linear(x, w, layer.bias)) if isinstance(layer, torch.nn.Linear)
           else (lambda w: layer._conv_forward(x, w, layer.bias)))

    def probe() -> float:
        turn[0] = (turn[0] + 1) % slots
        weight = pool[turn[0] * numel:(turn[0] + 1) * numel].view_as(layer.weight)
        start = time.perf_counter()
        run(weight)
        return time.perf_counter() - start
    return probe


def cold_gather(table: torch.nn.Embedding, ids: Sequence[torch.Tensor], pool: torch.Tensor | None) -> Probe:
    """A probe of an embedding lookup as a network runs it: new ids each call (``ids`` in turn), its
    table cold, read since its last call by a cache's worth of the rest of the forward pass (the next
    cache-sized slice of ``pool``, outside the timed span). Looked up again at once on the same ids,
    the rows stay in cache: on 2 EPYC cores (32 MB L3) BERT's word embeddings took 0.012 ms hot, 0.06-0.14
    ms cold, and in BERT's forward pass 0.11 ms; calibrated hot, the text models' lookups were priced 3-7x fast."""
    slice_ = cache_bytes() // 4
    slots = 0 if pool is None else pool.numel() // slice_
    turn = [0]

    def probe() -> float:
        turn[0] += 1
        if slots:
            pool[(turn[0] % slots) * slice_:(turn[0] % slots + 1) * slice_].sum()
        indices = ids[turn[0] % len(ids)]
        start = time.perf_counter()
        table(indices)
        return time.perf_counter() - start
    return probe


def _module(shape: Shape) -> tuple[torch.nn.Module, torch.Tensor]:
    if shape.kind == "gemm":
        return torch.nn.Linear(shape.cin, shape.cout), torch.randn(shape.spatial, shape.cin)
    conv = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)[shape.ndim - 1]
    layer = conv(shape.cin, shape.cout, shape.kernel, stride=shape.stride, padding=shape.kernel // 2,
                 groups=shape.cin if shape.kind == "depthwise" else shape.groups, bias=False)
    return layer, torch.randn(shape.batch, shape.cin, *(shape.spatial,) * shape.ndim)


@dataclass(frozen=True)
class RecurrentShape:
    """One step of a one-layer, one-direction LSTM/GRU/RNN: the GEMM of ``batch`` hidden states by
    the (gates x hidden, hidden) weight, and the gate work; a probe runs ``steps`` of them after the
    input projection (:func:`costplan.hardware.roofline.recurrent_latency` prices the same)."""

    mode: str          # LSTM | GRU | RNN_TANH
    inputs: int
    hidden: int
    batch: int
    steps: int

    @property
    def gates(self) -> int:
        return GATES[self.mode]

    @property
    def macs(self) -> int:
        """MACs of one step's hidden-to-gates GEMM."""
        return self.batch * self.gates * self.hidden * self.hidden

    @property
    def dims(self) -> Dims:
        return Dims(self.batch, self.gates * self.hidden, self.hidden)

    rows = property(lambda self: self.dims.rows)
    outputs = property(lambda self: self.dims.outputs)
    reduction = property(lambda self: self.dims.reduction)

    @property
    def weight_bytes(self) -> int:
        return 0       # read from DRAM once per call, not per step: see the call's rest in calibrate

    @property
    def activation_bytes(self) -> tuple[int, int]:
        return 3 * 4 * self.batch * self.gates * self.hidden, 0   # gates read twice, the state written

    @property
    def recurrent(self) -> Recurrent:
        """The call as the tracer records it."""
        return Recurrent(self.mode, self.inputs, self.hidden, 1, 1, 0, self.steps, self.batch)

    @property
    def weight_total(self) -> int:
        """Bytes of both weights and both biases, read once per call."""
        return 4 * self.gates * self.hidden * (self.inputs + self.hidden + 2)

    @property
    def sequence_bytes(self) -> tuple[int, int]:
        """The sequence in and the hidden states out."""
        return 4 * self.batch * self.steps * self.inputs, 4 * self.batch * self.steps * self.hidden

    def module(self) -> torch.nn.Module:
        cls = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN_TANH": torch.nn.RNN}[self.mode]
        return cls(self.inputs, self.hidden, batch_first=True).eval()

    def __str__(self) -> str:
        return f"{self.mode} {self.inputs}->{self.hidden} b{self.batch} t{self.steps}"


def recurrent_shapes(count: int, seed: int = 0) -> list[RecurrentShape]:
    """``count`` recurrent layers as sequence models have them (seeded): LSTM, GRU and tanh RNN
    cells alike, hidden 32 to 1024, batch 1 to 64, 10 to 50 steps, a call under 10 ms or so."""
    rng = np.random.default_rng(seed)
    modes = ("LSTM", "GRU", "RNN_TANH")
    out: list[RecurrentShape] = []
    while len(out) < count:
        shape = RecurrentShape(modes[len(out) % 3], _width(2 ** rng.uniform(4, 9)), _width(2 ** rng.uniform(5, 10)),
                               int(rng.choice((1, 2, 8, 16, 32, 64))), int(rng.choice((10, 20, 50))))
        if shape.macs * shape.steps <= 2e8:
            out.append(shape)
    return out


# (inputs, hidden, batch, steps) of recurrent calls at the scale of large sequence models, timed for
# every cell beside the drawn ones: the drawn calls stop at 2e8 MACs, under a third of the rate a
# 1024-wide GRU at batch 64 runs (21 against 53 GMAC/s on 2 EPYC cores), so the plateau was an
# extrapolation that swung 44-78 GMAC/s between calibrations. Fitted with and without these on the same
# timings (three calibrations), two-layer LSTMs and GRUs 1024 wide at batch 64 were priced 6.6% off in
# the median and 18% at most, against 20.5% and 32% (benchmarks/recurrent.py)
RECURRENT_ANCHORS = ((512, 512, 64, 10), (1024, 1024, 32, 10))


def recurrent_anchors(quick: bool = False) -> list[RecurrentShape]:
    """:data:`RECURRENT_ANCHORS` for each cell (the first only, ``quick``)."""
    chosen = RECURRENT_ANCHORS[:1] if quick else RECURRENT_ANCHORS
    return [RecurrentShape(mode, *a) for a in chosen for mode in ("LSTM", "GRU", "RNN_TANH")]


def recurrent_probes(quick: bool = False, seed: int = 0) -> list[RecurrentShape]:
    """The recurrent calls calibrate times: 15 drawn (45 without ``quick``) and the anchors."""
    return recurrent_shapes(15 if quick else 45, seed) + recurrent_anchors(quick)


def dram_weight_shapes(count: int, onchip_bytes: float, seed: int = 0, multiple: int = 1) -> list[Shape]:
    """``count`` linear layers whose float32 weights fill 0.75 to 2 caches (seeded): vocabulary
    heads, LLM projections, VGG's classifier; 768 to 4096 inputs, 1 to 512 rows, at most 2 GMACs."""
    rng = np.random.default_rng(seed)
    out: list[Shape] = []
    while len(out) < count:
        cin = int(rng.choice((768, 1024, 2048, 4096)))
        cout = max(8, round(onchip_bytes * 2 ** rng.uniform(-0.4, 1.0) / (4 * cin) / 8) * 8)
        shape = Shape("gemm", cin, cout, int(rng.choice((1, 4, 16, 64, 128, 256, 512))), multiple=multiple)
        if shape.macs <= 2e9:
            out.append(shape)
    return out


def gather_shapes(quick: bool) -> tuple[tuple[int, int, int, int], ...]:
    """The embedding lookups calibration times (:data:`GATHER_SHAPES`; every other one when quick)."""
    return GATHER_SHAPES[::2] if quick else GATHER_SHAPES


def _pools() -> list[tuple[torch.nn.Module, torch.Tensor]]:
    """Pooling as networks run it: ResNet's 3x3 stride-2 max-pool, VGG's 2x2, DenseNet's 2x2 and
    Inception's 3x3 stride-1 average pools, and 1-D max/average pools of sequence models, batch 1 and 8."""
    out: list[tuple[torch.nn.Module, torch.Tensor]] = []
    for c, hw in POOLING_SHAPES:
        out.append((torch.nn.MaxPool2d(3, 2, 1), torch.randn(1, c, hw, hw)))
        out.append((torch.nn.MaxPool2d(2, 2), torch.randn(1, c, hw, hw)))
    out += [(torch.nn.AvgPool2d(2, 2), torch.randn(1, 128, 56, 56)), (torch.nn.MaxPool2d(2, 2), torch.randn(8, 64, 28, 28)),
            (torch.nn.AvgPool2d(2, 2), torch.randn(8, 128, 56, 56)), (torch.nn.AvgPool2d(3, 1, 1), torch.randn(1, 192, 28, 28)),
            (torch.nn.MaxPool1d(2), torch.randn(8, 64, 100)), (torch.nn.MaxPool1d(3, 2, 1), torch.randn(1, 128, 1000)),
            (torch.nn.MaxPool1d(2), torch.randn(32, 256, 250)), (torch.nn.MaxPool1d(2), torch.randn(1, 32, 40)),
            (torch.nn.AvgPool1d(2), torch.randn(32, 128, 40))]
    return [(p.eval(), x) for p, x in out]


def pool_probe_bytes(pool: torch.nn.Module, x: torch.Tensor, out: torch.Tensor) -> float:
    """A pooling probe's size as the roofline prices the traced pool (roofline.pool_bytes), float32."""
    kernel = pool.kernel_size
    window = math.prod(kernel) if isinstance(kernel, tuple) else int(kernel) ** (x.dim() - 2)  # type: ignore[operator]
    return pool_bytes(4.0 * x.numel(), 4.0 * out.numel(), window)


def cache_bytes() -> int:
    """The largest CPU cache, read from sysfs (the last-level cache holds activations between ops)."""
    sizes = []
    for index in sorted(os.listdir("/sys/devices/system/cpu/cpu0/cache")) if os.path.isdir(
            "/sys/devices/system/cpu/cpu0/cache") else []:
        try:
            with open(f"/sys/devices/system/cpu/cpu0/cache/{index}/size") as f:
                text = f.read().strip()
        except OSError:
            continue
        scale = {"K": 1024, "M": 1024 ** 2}.get(text[-1], 1)
        sizes.append(int(text.rstrip("KM")) * scale)
    return max(sizes, default=8 * 1024 ** 2)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def norm_shapes(quick: bool) -> list[tuple[int, int, int, int]]:
    """(batch, channels, side, spatial dims) of the batch-norm probes, in the order :func:`_probes`
    times them: ResNets' 2-D maps at batch 1, then 1-D batches of short sequences."""
    two = [(1, c, hw, 2) for c, hw in (NORM_SHAPES[::2] if quick else NORM_SHAPES)]
    return two + [(b, c, steps, 1) for b, c, steps in (NORM_SHAPES_1D[:2] if quick else NORM_SHAPES_1D)]


def channel_multiple() -> int:
    """Float32 lanes of the widest vector unit PyTorch uses here: kernels tile channels by it."""
    capability = torch.backends.cpu.get_cpu_capability()
    return 16 if "512" in capability else 8 if "AVX" in capability else 4


def _probes(shapes: dict[str, list[Shape]], quick: bool, kept_memory: bool = False,
            recurrent: Sequence[RecurrentShape] = ()) -> dict[str, tuple[str, float, Probe, float]]:
    """name -> (kind, size, probe, divisor): the probe's seconds divided by ``divisor`` are the sample;
    the fresh-page probes only where freed memory is not kept (see :func:`keep_freed_memory`)."""
    probes: dict[str, tuple[str, float, Probe, float]] = {}
    pool = torch.randn(COLD_CACHES * cache_bytes() // 4) if any(shapes.values()) else None
    for kind, kind_shapes in shapes.items():
        for i, shape in enumerate(kind_shapes):
            module, x = _module(shape)
            probes[f"{kind} {i}"] = (kind, float(shape.macs), cold_weights(module.eval(), x, pool), 1.0)
    for i, rnn in enumerate(recurrent):
        x = torch.randn(rnn.batch, rnn.steps, rnn.inputs)
        probes[f"{rnn.recurrent.cell} {i}"] = (rnn.recurrent.cell, float(rnn.macs), timed(lambda m=rnn.module(), x=x: m(x)), 1.0)
    for vocab, dim, batch, tokens in gather_shapes(quick):
        table = torch.nn.Embedding(vocab, dim).eval()
        ids = [torch.randint(0, vocab, (batch, tokens)) for _ in range(FRESH_INPUTS)]
        tokens *= batch
        # the size is what the roofline's rate applies to (indices in, rows out); the rows read come on top
        probes[f"gather {vocab}x{dim} {batch}x{tokens}"] = ("gather", 8.0 * tokens + 4.0 * tokens * dim,
                                                     cold_gather(table, ids, pool), 1.0)
    for i, (shape, dim) in enumerate(REDUCTION_SHAPES):
        x = torch.randn(shape)
        out = x.mean(dim)
        probes[f"reduce {i} {shape}"] = ("reduction", 4.0 * (x.numel() + out.numel()),
                                         timed((lambda x=x, d=dim: x.mean(d)) if i % 2 == 0 else
                                               (lambda x=x, d=dim: x.amax(d))), 1.0)
    for n in SMALL_ELEMENTWISE:
        a, b = torch.randn(n), torch.randn(n)
        probes[f"add {n}"] = ("binary", 3 * 4.0 * n, timed(lambda a=a, b=b: torch.add(a, b)), 1.0)
    for c, hw in ELEMENTWISE_SHAPES:
        chain, x = torch.nn.Sequential(*[torch.nn.ReLU() for _ in range(CHAIN)]).eval(), torch.randn(1, c, hw, hw)
        probes[f"relu {c}x{hw}"] = ("elementwise", CHAIN * 2.0 * x.numel() * 4, timed(lambda f=chain, x=x: f(x)), CHAIN)
    for c, hw in ELEMENTWISE_SHAPES[1::2]:
        ops = (torch.nn.GELU(), torch.nn.Softmax(1))
        chain, x = torch.nn.Sequential(*[ops[i % 2] for i in range(CHAIN)]).eval(), torch.randn(1, c, hw, hw)
        probes[f"gelu {c}x{hw}"] = ("transcendental", CHAIN * 2.0 * x.numel() * 4, timed(lambda f=chain, x=x: f(x)), CHAIN)
        ops = (torch.nn.SiLU(), torch.nn.Sigmoid())
        chain = torch.nn.Sequential(*[ops[i % 2] for i in range(CHAIN)]).eval()
        probes[f"silu {c}x{hw}"] = ("sigmoid", CHAIN * 2.0 * x.numel() * 4, timed(lambda f=chain, x=x: f(x)), CHAIN)
    for batch, c, side, ndim in norm_shapes(quick):
        # timed right after the convolution that writes its input, as in a network: a batch norm
        # reading a convolution's fresh output runs 1.5-3x slower than one re-reading its own input
        conv_type, bn_type = (torch.nn.Conv1d, torch.nn.BatchNorm1d) if ndim == 1 else (torch.nn.Conv2d, torch.nn.BatchNorm2d)
        conv, bn = conv_type(64, c, 1, bias=False).eval(), bn_type(c).eval()
        x = torch.randn(batch, 64, *(side,) * ndim)

        def norm(conv: torch.nn.Module = conv, bn: torch.nn.Module = bn, x: torch.Tensor = x) -> float:
            y = conv(x)
            start = time.perf_counter()
            bn(y)
            return time.perf_counter() - start
        probes[f"norm {batch}x{c}x{side}^{ndim}"] = ("norm", 2.0 * batch * c * side ** ndim * 4, norm, 1.0)
    for shape in attention_shapes(quick):
        q = torch.randn(shape.batch, shape.heads, shape.tokens, shape.width)
        probes[f"attention {shape}"] = ("attention", float(shape.macs),
                                        timed(lambda q=q: torch.nn.functional.scaled_dot_product_attention(q, q, q)), 1.0)
    for i, (pool, x) in enumerate(_pools()):
        out = pool(x)
        kind = ("pooling1d" if isinstance(pool, torch.nn.MaxPool1d) else
                "avgpool" if isinstance(pool, (torch.nn.AvgPool1d, torch.nn.AvgPool2d)) else "pooling")
        probes[f"pool {i} {pool.__class__.__name__} {tuple(x.shape)}"] = (
            kind, pool_probe_bytes(pool, x, out), timed(lambda p=pool, x=x: p(x)), 1.0)
    n = BANDWIDTH_FLOATS * (1 if quick else 4)   # floats: well past any cache
    probes["copy"] = ("bandwidth", 2.0 * n * 4, timed(_Copy(n)), 1.0)
    if not kept_memory:
        # with glibc's defaults, blocks over 32 MiB are mapped afresh on every allocation and a layer
        # writing such an output faults in every page of it (where freed memory is kept, none does)
        fresh_n = (FRESH_OUTPUT_BYTES + 16 * 2 ** 20) // 4
        reused = torch.empty(fresh_n)
        probes["fresh pages"] = ("first_touch", 4.0 * fresh_n, timed(lambda: torch.empty(fresh_n).fill_(1.0)), 1.0)
        probes["reused pages"] = ("reused", 4.0 * fresh_n, timed(lambda: reused.fill_(1.0)), 1.0)
    relu, tiny = torch.nn.ReLU(), torch.randn(1, 8)
    probes["overhead"] = ("overhead", 0.0, timed(lambda: relu(tiny)), 1.0)
    return probes


class _Copy(torch.nn.Module):
    """A copy of ``n`` float32s, well past any cache: calibrate's DRAM probe as a module."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.register_buffer("src", torch.randn(n))
        self.register_buffer("dst", torch.empty(n))

    def forward(self) -> torch.Tensor:
        return self.dst.copy_(self.src)


# floats each side of the DRAM copy measure times beside a model (calibrate's quick copy: 64 MB each
# side, twice a 32 MB cache, ~5 ms here; calibrate's full one is 4x as long, at the same rate)
BANDWIDTH_FLOATS = 16 * 1024 * 1024
COPY_BYTES = 2.0 * BANDWIDTH_FLOATS * 4     # read and written


def bandwidth_workload() -> Instance:
    """The DRAM copy calibrate fits ``memory.bandwidth_gbs`` on (:data:`COPY_BYTES` moved): measure
    times it beside a model to see how the machine's bandwidth moved since, which the reference
    workload's convolutions do not (a 64 MB copy ran at 12-14 GB/s against a calibrated 27.3 GB/s
    25 minutes later, while the reference workload ran 1.2x as long)."""
    return Instance(_Copy(BANDWIDTH_FLOATS).eval(), ())


def reference_workload() -> Instance:
    """A fixed mix of what networks run (3x3 and 1x1 convolutions, a linear layer on 64 rows, ReLUs),
    about a millisecond on 2 cores: calibrate records its time, and measure times it again beside a
    model to see how the machine's speed has moved since."""
    torch.manual_seed(0)
    convs = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(64, 128, 1),
                                torch.nn.ReLU(), torch.nn.Flatten(2), torch.nn.Linear(28 * 28, 256), torch.nn.ReLU())
    return Instance(convs.eval(), (torch.randn(1, 64, 28, 28),))


def check_networks() -> dict[str, Instance]:
    """Three networks calibration never fits on, at batch 1: a residual CNN, a depthwise CNN and a
    stack of transformer encoder layers (run unfused, as costplan models them: see :class:`_Unfused`)."""
    import torchvision

    encoder = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(256, 8, 1024, batch_first=True), 4,
                                          enable_nested_tensor=False)
    return {"resnet18": Instance(torchvision.models.resnet18(), (torch.randn(1, 3, 224, 224),)),
            "mobilenet_v2": Instance(torchvision.models.mobilenet_v2(), (torch.randn(1, 3, 224, 224),)),
            "transformer encoder": Instance(_Unfused(encoder), (torch.randn(1, 64, 256),))}


class _Unfused(torch.nn.Module):
    """Runs ``inner`` with PyTorch's fused encoder fast path off: the separate layers costplan
    models (the tracer turns it off too), not one fused kernel."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: object) -> object:
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            return self.inner(*args)
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)


def _warm_call(network: Instance) -> Probe:
    """A probe of ``network``'s second call in a row: the steady state of repeated inference that
    users time, not a first call whose weights and code other probes have pushed out of the caches
    (18% slower for mobilenet_v2 here)."""
    network.module.eval()

    def probe() -> float:
        network.call()
        start = time.perf_counter()
        network.call()     # on new token ids, as a served model's (Instance.call)
        return time.perf_counter() - start
    return probe


def check_probes(networks: Mapping[str, Instance]) -> dict[str, tuple[str, float, Probe, float]]:
    """Held-out networks as probes, timed in the same interleaved rounds as the fitted layers,
    so a drift of the machine's speed cannot pass for an error of the fit; and the reference workload."""
    return {**{f"check {name}": ("check", 0.0, _warm_call(n), 1.0) for name, n in networks.items()},
            "reference": ("reference", 0.0, _warm_call(reference_workload()), 1.0)}
