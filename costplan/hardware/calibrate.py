"""Fit a hardware profile of the local CPU by microbenchmarks.

GEMMs over sizes give the attainable peak and how throughput saturates with size (a curve fitted
with scipy); convolutions and depthwise convolutions give their efficiency against that curve; a
large copy gives memory bandwidth; a tiny module call gives the per-op overhead of eager PyTorch.
The profile describes this machine running eager PyTorch at float32 with its current thread count.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import least_squares, nnls

from costplan.hardware.profile import HardwareProfile, parse_profile
from costplan.hardware.roofline import activation_cost
from costplan.hardware.timing import LoadMeter, Probe, Timing, keep_freed_memory, round_robin, speed_by_round, timed
from costplan.models import Instance

ELEMENTWISE_SHAPES = ((32, 112), (64, 56), (144, 56), (256, 28), (512, 14))  # (channels, spatial)
NORM_SHAPES = ((64, 112), (64, 56), (256, 56), (512, 28), (1024, 14), (2048, 7))  # as in ResNets
POOLING_SHAPES = ((64, 112), (128, 56), (256, 28))  # (channels, input spatial) of 3x3 stride-2 max-pools
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

    @property
    def rows(self) -> int:
        return self.spatial if self.kernel == 0 else self.batch * math.ceil(self.spatial / self.stride) ** 2

    @property
    def outputs(self) -> int:
        """Outputs of the GEMM each group runs, as :func:`costplan.hardware.roofline.dims` counts them."""
        return self.cout // self.groups

    @property
    def reduction(self) -> int:
        """MACs per output, as :func:`costplan.hardware.roofline.dims` counts them: a group's inputs x window."""
        return self.cin // self.groups * max(self.kernel, 1) ** 2 if self.kind != "depthwise" else self.kernel ** 2

    @property
    def macs(self) -> int:
        return self.rows * self.cout * self.reduction

    @property
    def weight_bytes(self) -> int:
        return 4 * self.cout * self.reduction

    @property
    def activation_bytes(self) -> tuple[int, int]:
        inputs = self.cin * (self.spatial if self.kernel == 0 else self.batch * self.spatial ** 2)
        return 4 * inputs, 4 * self.rows * self.cout


def _width(value: float) -> int:
    return int(min(2048, max(8, round(value / 8) * 8)))


def sample_shapes(kind: str, count: int, seed: int = 0) -> list[Shape]:
    """``count`` layers of one op class drawn as networks have them (seeded). Convolutions:
    a 7x7 to 112x112 map, a width about 64 x 56 / side (channels grow as maps shrink) scaled by
    1/4 to 3 for pruned and wide layers, the output width 1/4 to 4 times the input's (bottlenecks,
    expansions), multiples of 8 from 8 to 2048, stride 1 or 2 (1x1: stride 1), batch 1 (half the
    draws) to 8; a quarter of the 3x3 ones grouped, 8 to 64 channels a group, as RegNets and ResNeXts
    have them. GEMMs: 1 to 8192 rows (tokens, or the pixels of channels-last linears in ConvNeXt),
    independent widths from 8 to 3072."""
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
        elif kind == "conv" and rng.random() < 0.25:
            group = int(rng.choice((8, 16, 24, 32, 64)))
            width = max(group, round(cin / group) * group)
            shape = Shape(kind, width, width, spatial, 3, stride, batch, width // group)
        elif kind == "conv":
            shape = Shape(kind, cin, cout, spatial, 3, stride, batch)
        else:  # stride-2 1x1 convolutions (ResNet shortcuts) run another kernel, ~30% slower than this fit
            shape = Shape(kind, cin, cout, spatial, 1, 1, batch)
        inputs, outputs = shape.activation_bytes
        if 2e5 <= shape.macs <= 4e8 * shape.batch ** 0.5 and max(inputs, outputs) <= 4 * MAX_ACTIVATION * min(batch, 3):
            out.append(shape)
    return out


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
    def rows(self) -> int:
        return self.batch * self.heads * self.tokens

    @property
    def cout(self) -> int:
        return self.width

    @property
    def outputs(self) -> int:
        return self.width

    @property
    def reduction(self) -> int:
        return self.tokens

    @property
    def macs(self) -> int:
        return self.rows * self.tokens * 2 * self.width

    @property
    def weight_bytes(self) -> int:
        return 0

    @property
    def activation_bytes(self) -> tuple[int, int]:
        return 3 * 4 * self.rows * self.width, 4 * self.rows * self.width

    def __str__(self) -> str:
        return f"{self.batch}x{self.heads}x{self.tokens}x{self.width}"


def attention_shapes(quick: bool = False) -> list[AttentionShape]:
    shapes = [AttentionShape(*s) for s in ATTENTION_SHAPES]
    return shapes[::2] if quick else shapes


def _module(shape: Shape) -> tuple[torch.nn.Module, torch.Tensor]:
    if shape.kind == "gemm":
        return torch.nn.Linear(shape.cin, shape.cout), torch.randn(shape.spatial, shape.cin)
    groups = shape.cin if shape.kind == "depthwise" else 1
    layer = torch.nn.Conv2d(shape.cin, shape.cout, shape.kernel, stride=shape.stride, padding=shape.kernel // 2,
                            groups=groups if shape.kind == "depthwise" else shape.groups, bias=False)
    return layer, torch.randn(shape.batch, shape.cin, shape.spatial, shape.spatial)


@dataclass(frozen=True)
class ClassFit:
    """One op class fitted to its sampled layers: seconds = max(MACs / (rate x utilisation), memory
    seconds) + per-op overhead + ``fixed_s``, utilisation = product of d / (d + half) over the GEMM
    dimensions (rows, outputs, reduction), times ``strided`` for a strided convolution."""

    rate: float                            # MAC/s plateau
    half_dims: tuple[float, float, float]  # rows, outputs, reduction at half the plateau
    fixed_s: float                         # seconds per call beyond the generic per-op overhead
    median_error: float                    # median |predicted / measured - 1| over the samples
    strided: float = 1.0                   # rate of a stride > 1 layer over a stride-1 one's


@dataclass(frozen=True)
class Calibration:
    """What the microbenchmarks found. Rates in MAC/s, bandwidth in bytes/s, times in seconds."""

    name: str
    peak_macs: float
    half_util_macs: dict[str, float]   # op class -> MACs at half that class's plateau (shapeless GEMMs)
    efficiency: dict[str, float]       # op class -> plateau over the peak
    fits: dict[str, ClassFit]
    bandwidth: float
    onchip_bandwidth: float
    rated_bandwidth: dict[str, float]  # 'transcendental' | 'pooling' | 'norm' -> bytes/s
    norm_fixed_s: float                # a batch norm's cost per call beyond the per-op overhead
    first_touch_bandwidth: float | None  # bytes/s of faulting in fresh pages; None where it costs nothing
    per_op_s: float
    onchip_bytes: int
    threads: int
    channel_multiple: int
    cpu: str
    samples: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # kind -> (MACs, seconds)
    quality: Quality | None = None     # how noisy the machine was, and the self-check
    kept_memory: bool = False          # timed with glibc keeping freed memory (timing.keep_freed_memory)

    def profile(self) -> HardwareProfile:
        """The calibration as a profile, exactly as ``--hw`` would read the file :func:`profile_toml` writes."""
        return parse_profile(tomllib.loads(profile_toml(self)), f"calibration of {self.cpu}")

    def summary(self) -> str:
        classes = ", ".join(f"{k} {v.rate / 1e9:.1f} GMAC/s (fit {v.median_error:.0%})" for k, v in self.fits.items())
        rated = ", ".join(f"{k} {v / 1e9:.2g}" for k, v in self.rated_bandwidth.items())
        return (f"plateaus {classes}; DRAM {self.bandwidth / 1e9:.1f} GB/s, in-cache {self.onchip_bandwidth / 1e9:.1f} GB/s "
                f"({rated} GB/s), {self.per_op_s * 1e6:.1f} us/op, channels in multiples of {self.channel_multiple}, {self.threads} threads")


def saturating(macs: np.ndarray, peak: float, half: float) -> np.ndarray:
    """Attained MAC/s of an op of ``macs`` MACs: peak x macs / (macs + half)."""
    return peak * macs / (macs + half)


def fit_saturation(samples: list[tuple[float, float]]) -> tuple[float, float]:
    """(peak MAC/s, half-utilisation MACs) fitted to (MACs, MAC/s) samples.

    Relative residuals with a soft-L1 loss: one shape timed while the machine was busy does not drag
    the whole curve down.
    """
    macs = np.array([s[0] for s in samples])
    rates = np.array([s[1] for s in samples])

    def residuals(p: np.ndarray) -> np.ndarray:
        return saturating(macs, p[0], p[1]) / rates - 1.0

    fit = least_squares(residuals, x0=(rates.max(), float(np.median(macs)) / 10), loss="soft_l1", f_scale=0.1,
                        bounds=([rates.max() * 0.3, 0.0], [rates.max() * 3, macs.max()]))
    return float(fit.x[0]), float(fit.x[1])


def _memory_seconds(shapes: Sequence[Shape | AttentionShape], bandwidth: float, onchip_bandwidth: float, onchip_bytes: float) -> np.ndarray:
    """Weights from DRAM, activations in cache or DRAM: the roofline's memory side for each sampled shape."""
    def activation(nbytes: float) -> float:
        return activation_cost(nbytes, bandwidth, onchip_bytes, onchip_bandwidth)[0]
    return np.array([s.weight_bytes / bandwidth + sum(map(activation, s.activation_bytes)) for s in shapes])


def fit_class(shapes: Sequence[Shape | AttentionShape], seconds: list[float], memory_s: np.ndarray, per_op: float) -> ClassFit:
    """Fit :class:`ClassFit` to timed shapes on log time, weighted by the square root of time, with a
    soft-L1 loss: one shape timed while the machine was busy does not drag the whole fit."""
    macs = np.array([s.macs for s in shapes], dtype=float)
    dims = np.array([(s.rows, s.outputs, s.reduction) for s in shapes], dtype=float)
    strided = np.array([getattr(s, "stride", 1) > 1 for s in shapes])
    measured = np.array(seconds)
    top = float((macs / measured).max())

    def predict(p: np.ndarray) -> np.ndarray:
        u = np.prod(dims / (dims + p[1:4]), axis=1) * np.where(strided, p[5], 1.0)
        return np.maximum(macs / (p[0] * top * u), memory_s) + per_op + p[4] * 1e-6

    # long layers weigh more: a network's total is mostly its long layers, and a 30 us layer's
    # relative error matters less than a 3 ms one's. Strided convolutions read their input with
    # gaps and run slower per MAC (fitted here at 0.81-0.86 of the rate, beside the cost per call):
    # their own factor, or stride-1 layers (most of a ResNet) are predicted slow by the blend of the two.
    weight = np.sqrt(measured / np.median(measured))
    high = 1.5 if strided.any() else 1.0 + 1e-9
    fit = least_squares(lambda p: weight * np.log(predict(p) / measured), x0=(1.0, 16.0, 16.0, 16.0, 5.0, 1.0),
                        loss="soft_l1", f_scale=0.1, bounds=([0.3, 0, 0, 0, 0, 0.3], [5.0, 1e5, 1e4, 1e4, 1e3, high]))
    error = float(np.median(np.abs(predict(fit.x) / measured - 1)))
    rows, outputs, reduction = (float(v) for v in fit.x[1:4])
    return ClassFit(float(fit.x[0]) * top, (rows, outputs, reduction), float(fit.x[4]) * 1e-6, error,
                    float(fit.x[5]) if strided.any() else 1.0)


def fit_linear(samples: list[tuple[float, float]], per_op: float) -> tuple[float, float]:
    """(fixed seconds, bytes/s) of ``seconds - per_op = fixed + bytes / rate`` over (bytes, seconds)
    samples, both non-negative (scipy's NNLS)."""
    nbytes = np.array([b for b, _ in samples])
    seconds = np.array([t for _, t in samples]) - per_op
    (fixed, per_byte), _ = nnls(np.column_stack([np.ones_like(nbytes), nbytes]), seconds)
    return float(fixed), 1.0 / max(float(per_byte), 1e-15)


def _onchip(samples: list[tuple[float, float]], per_op: float) -> float:
    """Bytes/s at which memory-only ops (ReLU, GELU/softmax) move cache-sized activations inside a
    network, from chains of them (each op reading what the previous one wrote), less the per-op overhead."""
    return statistics.median(nbytes / CHAIN / max(seconds - per_op, 1e-9) for nbytes, seconds in samples)


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


def channel_multiple() -> int:
    """Float32 lanes of the widest vector unit PyTorch uses here: kernels tile channels by it."""
    capability = torch.backends.cpu.get_cpu_capability()
    return 16 if "512" in capability else 8 if "AVX" in capability else 4


NOISE_LIMIT = 0.10      # a probe whose two quietest blocks differ by more than 10% is unstable
UNSTABLE_LIMIT = 0.20   # share of probes still unstable after the retries at which calibrate refuses
LOAD_LIMIT = 0.35       # cores other processes may keep busy on average before calibrate refuses
FIT_LIMIT = 0.35        # a class whose fit is off by more than this (median) cannot be trusted
CHECK_LIMIT = 0.25      # a self-check error above which the profile says it is off
DRIFT_LIMIT = 0.15      # a change of the machine's speed between rounds above which the profile says so


@dataclass(frozen=True)
class Quality:
    """How trustworthy a calibration is: how noisy the machine was while timing, and how well the
    profile predicts whole networks it was not fitted on."""

    probes: int
    rounds: int
    median_noise: float                  # median over probes of (second-lowest block / lowest block - 1)
    unstable: float                      # share of probes whose noise stayed over NOISE_LIMIT after retries
    retried: int                         # probes re-timed because they were unstable
    background_cores: float | None       # cores other processes kept busy on average (None: unknown)
    check: dict[str, tuple[float, float]] = field(default_factory=dict)  # network -> (predicted, measured) s
    speed: tuple[float, ...] = ()        # the machine's speed in each round (timing.speed_by_round)

    @property
    def drift(self) -> float:
        """How much faster the machine ran in its quickest round than in its slowest, less 1."""
        return max(self.speed) / min(self.speed) - 1.0 if self.speed and min(self.speed) > 0 else 0.0

    @property
    def check_errors(self) -> dict[str, float]:
        return {k: p / m - 1.0 for k, (p, m) in self.check.items()}

    @property
    def check_worst(self) -> float:
        return max((abs(e) for e in self.check_errors.values()), default=0.0)

    def lines(self) -> list[str]:
        """What the output and the profile's header say about the calibration."""
        load = "unknown" if self.background_cores is None else f"{self.background_cores:.2f} cores"
        out = [f"timing: {self.probes} probes in {self.rounds} interleaved rounds, median noise "
               f"{self.median_noise:.1%}, {self.retried} re-timed, {self.unstable:.0%} still noisy; other "
               f"processes used {load} on average"]
        if self.speed:
            out.append(f"machine speed by round (1 = every probe at its quickest): "
                       f"{', '.join(f'{v:.2f}' for v in self.speed)}; drift {self.drift:.0%}")
        if self.check:
            errors = ", ".join(f"{k} {e:+.1%}" for k, e in self.check_errors.items())
            out.append(f"self-check (held-out networks, timed in the same rounds as the probes): {errors}: "
                       f"this profile predicts these networks within {self.check_worst:.0%}")
        return out

    def warnings(self) -> list[str]:
        out = []
        if self.check and self.check_worst > CHECK_LIMIT:
            out.append(f"WARNING: this profile is off by up to {self.check_worst:.0%} on the held-out networks; "
                       "recalibrate on a quiet machine before trusting its latencies")
        if self.drift > DRIFT_LIMIT:
            out.append(f"WARNING: this machine's speed changed by {self.drift:.0%} between rounds while calibrating "
                       "(a VM sharing its host, or a CPU changing its clock): the profile describes its quicker "
                       "spells, and its latencies, like a second calibration's, may be off by as much")
        return out


def refusal(quality: Quality, fits: dict[str, ClassFit], load_limit: float = LOAD_LIMIT) -> str | None:
    """Why the timings cannot be fitted, or None."""
    why = []
    if quality.background_cores is not None and quality.background_cores > load_limit:
        why.append(f"other processes kept {quality.background_cores:.2f} cores busy on average")
    if quality.unstable > UNSTABLE_LIMIT:
        why.append(f"{quality.unstable:.0%} of the timings still varied by more than {NOISE_LIMIT:.0%} between "
                   f"rounds after re-timing (median noise {quality.median_noise:.0%})")
    bad = {k: f.median_error for k, f in fits.items() if f.median_error > FIT_LIMIT}
    if bad:
        why.append("the fits are off by " + ", ".join(f"{k} {e:.0%}" for k, e in bad.items()))
    if not why:
        return None
    return ("the machine was too busy to calibrate: " + "; ".join(why) + ". Close other programs and run "
            "`costplan calibrate` again, or calibrate with fewer threads than idle cores (--threads 1); "
            "no profile was written")


def _probes(shapes: dict[str, list[Shape]], quick: bool,
            kept_memory: bool = False) -> dict[str, tuple[str, float, Probe, float]]:
    """name -> (kind, size, probe, divisor): the probe's seconds divided by ``divisor`` are the sample;
    the fresh-page probes only where freed memory is not kept (see :func:`keep_freed_memory`)."""
    probes: dict[str, tuple[str, float, Probe, float]] = {}
    for kind, kind_shapes in shapes.items():
        for i, shape in enumerate(kind_shapes):
            module, x = _module(shape)
            probes[f"{kind} {i}"] = (kind, float(shape.macs), timed(lambda m=module.eval(), x=x: m(x)), 1.0)
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
    for c, hw in (NORM_SHAPES[::2] if quick else NORM_SHAPES):
        # timed right after the convolution that writes its input, as in a network: a batch norm
        # reading a convolution's fresh output runs 1.5-3x slower than one re-reading its own input
        conv, bn, x = torch.nn.Conv2d(64, c, 1, bias=False).eval(), torch.nn.BatchNorm2d(c).eval(), torch.randn(1, 64, hw, hw)

        def norm(conv: torch.nn.Module = conv, bn: torch.nn.Module = bn, x: torch.Tensor = x) -> float:
            y = conv(x)
            start = time.perf_counter()
            bn(y)
            return time.perf_counter() - start
        probes[f"norm {c}x{hw}"] = ("norm", 2.0 * c * hw * hw * 4, norm, 1.0)
    for shape in attention_shapes(quick):
        q = torch.randn(shape.batch, shape.heads, shape.tokens, shape.width)
        probes[f"attention {shape}"] = ("attention", float(shape.macs),
                                        timed(lambda q=q: torch.nn.functional.scaled_dot_product_attention(q, q, q)), 1.0)
    for c, hw in POOLING_SHAPES:
        pool, x = torch.nn.MaxPool2d(3, 2, 1), torch.randn(1, c, hw, hw)
        probes[f"pool {c}x{hw}"] = ("pooling", 4.0 * x.numel() * 1.25, timed(lambda p=pool, x=x: p(x)), 1.0)
    n = (16 if quick else 64) * 1024 * 1024   # floats: well past any cache
    src, dst = torch.randn(n), torch.empty(n)
    probes["copy"] = ("bandwidth", 2.0 * n * 4, timed(lambda: dst.copy_(src)), 1.0)
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


def _time_all(probes: dict[str, tuple[str, float, Probe, float]], rounds: int, block_s: float,
              progress: bool, label: str, after_round: Callable[[int], None] | None = None,
              seed: int = 0) -> dict[str, Timing]:
    from rich.progress import Progress

    def on_round(r: int) -> None:
        bar.advance(task)
        if after_round is not None:
            after_round(r)

    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(label, total=rounds)
        return round_robin({k: v[2] for k, v in probes.items()}, rounds, block_s, on_round=on_round, shuffle=seed)


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
    module = network.module.eval()

    def probe() -> float:
        module(*network.args, **network.kwargs)
        start = time.perf_counter()
        module(*network.args, **network.kwargs)
        return time.perf_counter() - start
    return probe


def check_probes(networks: Mapping[str, Instance]) -> dict[str, tuple[str, float, Probe, float]]:
    """Held-out networks as probes, timed in the same interleaved rounds as the fitted layers,
    so a drift of the machine's speed cannot pass for an error of the fit."""
    return {f"check {name}": ("check", 0.0, _warm_call(n), 1.0) for name, n in networks.items()}


def predict_checks(profile: HardwareProfile, networks: Mapping[str, Instance]) -> dict[str, float]:
    """Predicted seconds of ``networks`` on ``profile``."""
    from costplan.hardware.roofline import estimate
    from costplan.sparsity import apply_plan
    from costplan.trace import trace

    out = {}
    for name, n in networks.items():
        graph = trace(n.module.eval(), n.args, n.kwargs, name=name)
        out[name] = estimate(graph, profile, apply_plan(graph, None)).latency_s
    return out


def calibrate(name: str = "local", quick: bool = False, progress: bool = True, seed: int = 0,
              threads: int | None = None, check: bool | Mapping[str, Instance] = True,
              load_limit: float = LOAD_LIMIT, strict: bool = True) -> Calibration:
    """Run the microbenchmarks (about 20 s; fewer shapes and rounds with ``quick``) on ``threads``
    threads (default: torch's), and grade the fitted profile on held-out networks timed in the same
    interleaved rounds: :func:`check_networks`, or the ``check`` mapping given (name -> instance).

    Raises CostplanError, writing nothing, when the machine was too busy to fit: other processes kept
    more than ``load_limit`` cores busy, or too many timings stayed noisy after re-timing, or a class's
    fit is too far off. With ``strict`` False it never refuses (its quality says how noisy it was).

    Sets glibc's malloc to keep freed memory for the rest of the process (:func:`keep_freed_memory`),
    so that page faults, which depend on the process's history, do not pass for kernel time; the
    profile's header says so."""
    from costplan.errors import CostplanError

    before = torch.get_num_threads()
    if threads is not None:
        if threads <= 0:
            raise CostplanError(f"--threads must be positive, got {threads}")
        torch.set_num_threads(threads)
    try:
        networks = check if isinstance(check, Mapping) else check_networks() if check else {}
        return _calibrate(name, quick, progress, seed, networks, load_limit if strict else math.inf, strict)
    finally:
        torch.set_num_threads(before)


def _calibrate(name: str, quick: bool, progress: bool, seed: int, check: Mapping[str, Instance],
               load_limit: float, strict: bool) -> Calibration:
    from costplan.errors import CostplanError

    rounds, block_s = (4, 0.002) if quick else (6, 0.004)
    kept = keep_freed_memory()   # outputs reuse freed memory instead of faulting fresh pages in
    classes = ("gemm", "conv", "pointwise", "depthwise")
    shapes = {kind: sample_shapes(kind, 16 if quick else 48, seed + i) for i, kind in enumerate(classes)}
    meter = LoadMeter()
    meter.start()
    with torch.inference_mode():
        probes = {**_probes(shapes, quick, kept), **check_probes(check)}

        def refuse_a_lasting_load(r: int) -> None:
            # from the second round on: a load that lasts, which retries will not help, refuses at once
            load = meter.stop()
            if strict and r >= 1 and load is not None and load > load_limit:
                why = refusal(Quality(len(probes), r + 1, 0.0, 0.0, 0, load), {}, load_limit) or ""
                raise CostplanError(f"after {r + 1} of {rounds} rounds of timing, {why}")
        timings = _time_all(probes, rounds, block_s, progress, "calibrating", refuse_a_lasting_load, seed)
        speed = speed_by_round(timings, rounds)
        retried: set[str] = set()
        for attempt in range(2):   # a busy spell passes: re-time what it disturbed
            unstable = {k: probes[k] for k, t in timings.items() if t.noise > NOISE_LIMIT}
            if not unstable:
                break
            retried |= set(unstable)
            again = _time_all(unstable, rounds, block_s, progress, f"re-timing {len(unstable)} noisy probes",
                              seed=seed + attempt + 1)
            for k, t in again.items():
                timings[k] = Timing(min(t.seconds, timings[k].seconds), t.noise, timings[k].blocks + t.blocks)
    load = meter.stop()         # over the whole timing, retries included
    noise = [t.noise for t in timings.values()]
    quality = Quality(len(probes), rounds, statistics.median(noise),
                      sum(n > NOISE_LIMIT for n in noise) / len(noise), len(retried), load, speed=speed)

    samples: dict[str, list[tuple[float, float]]] = {}
    for key, (kind, size, _, divisor) in probes.items():
        samples.setdefault(kind, []).append((size, timings[key].seconds / divisor))
    per_op = samples["overhead"][0][1]
    dram = samples["bandwidth"][0][0] / samples["bandwidth"][0][1]
    onchip = _onchip([(b * CHAIN, t * CHAIN) for b, t in samples["elementwise"]], per_op)
    norm_fixed, norm_bandwidth = fit_linear(samples["norm"], per_op)
    first_touch_bw = None   # kept memory: outputs reuse pages, nothing is faulted in
    if "first_touch" in samples:
        touched, fresh_s = samples["first_touch"][0]
        touch_s = max(fresh_s - samples["reused"][0][1], 0.0)
        first_touch_bw = touched / touch_s if touch_s * dram > 0.2 * touched else None  # under 20% of a copy: noise
    rated = {"transcendental": _onchip([(b * CHAIN, t * CHAIN) for b, t in samples["transcendental"]], per_op),
             "sigmoid": _onchip([(b * CHAIN, t * CHAIN) for b, t in samples["sigmoid"]], per_op),
             "norm": norm_bandwidth,
             "pooling": statistics.median(b / max(t - per_op, 1e-9) for b, t in samples["pooling"])}
    onchip_bytes = cache_bytes()
    fits = {}
    for kind, kind_shapes in {**shapes, "attention": attention_shapes(quick)}.items():
        memory = _memory_seconds(kind_shapes, dram, onchip, onchip_bytes)
        fits[kind] = fit_class(kind_shapes, [t for _, t in samples[kind]], memory, per_op)
    why = refusal(quality, fits, load_limit)
    if why and strict:
        raise CostplanError(why)
    peak = max(f.rate for f in fits.values())
    _, half_gemm = fit_saturation([(m, m / t) for m, t in samples["gemm"]])
    calibration = Calibration(
        name=name, peak_macs=peak, half_util_macs={"gemm": half_gemm},
        efficiency={k: float(min(1.0, max(0.005, f.rate / peak))) for k, f in fits.items()}, fits=fits,
        bandwidth=dram, onchip_bandwidth=onchip, rated_bandwidth=rated, norm_fixed_s=norm_fixed,
        first_touch_bandwidth=first_touch_bw, per_op_s=per_op, onchip_bytes=onchip_bytes,
        threads=torch.get_num_threads(), channel_multiple=channel_multiple(), cpu=_cpu_name(), samples=samples,
        quality=quality, kept_memory=kept)
    if check:
        predicted = predict_checks(calibration.profile(), check)
        measured = {key.removeprefix("check "): timings[key].seconds for key in probes if key.startswith("check ")}
        checked = Quality(**{**quality.__dict__, "check": {n: (predicted[n], measured[n]) for n in predicted}})
        calibration = Calibration(**{**calibration.__dict__, "quality": checked})
    return calibration


def profile_toml(c: Calibration) -> str:
    """The calibration as a profile file that ``--hw`` accepts."""
    today = datetime.date.today().isoformat()
    def dims(kind: str) -> str:
        return "[" + ", ".join(f"{v:.4g}" if v >= 1e-3 else "0" for v in c.fits[kind].half_dims) + "]"  # fits' 1e-17 is 0
    def count(kind: str) -> int:
        return len(c.samples.get(kind, []))
    first_touch = "" if c.first_touch_bandwidth is None else (
        f"\nfresh_output_mb = {FRESH_OUTPUT_BYTES / 1e6:.4g}   # outputs over 32 MiB: glibc maps fresh pages for them on every call"
        f"\nfirst_touch_gbs = {c.first_touch_bandwidth / 1e9:.4g}    # faulting those pages in: a fresh 48 MiB fill less a reused one")
    quality = "".join(f"# {line}\n" for line in (c.quality.warnings() + c.quality.lines() if c.quality else []))
    kept = ("# Timed with glibc keeping freed memory (mallopt): latencies assume a process whose allocator reuses\n"
            "# memory (jemalloc, tcmalloc, or MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647); with glibc's\n"
            "# defaults, networks with activations of tens of MB fault their pages in on every call.\n"
            if c.kept_memory else "")
    return f"""# Measured by `costplan calibrate` on {today}: {c.cpu}, {c.threads} threads, torch {torch.__version__}.
# Eager PyTorch at float32 on this machine; recalibrate after changing threads or hardware.
{kept}{quality}name = "{c.name}"
kind = "cpu"
description = "{c.cpu} ({c.threads} threads), calibrated {today}"
default_dtype = "float32"
threads = {c.threads}
channel_multiple = {c.channel_multiple}   # float32 lanes of {torch.backends.cpu.get_cpu_capability()}: kernels tile channels by it

[peak_tflops]
float32 = {2 * c.peak_macs / 1e12:.6g}   # fastest class's fitted plateau: {c.peak_macs / 1e9:.2f} GMAC/s

[memory]
bandwidth_gbs = {c.bandwidth / 1e9:.4g}   # large tensor copy, bytes read + written
onchip_mb = {c.onchip_bytes / 1e6:.4g}      # largest CPU cache (sysfs)
weights_overlap = false   # in a network each layer's weights arrive cold and are packed before its math: their DRAM read adds
onchip_bandwidth_gbs = {c.onchip_bandwidth / 1e9:.4g}   # ReLU chains on cache-sized activations
transcendental_gbs = {c.rated_bandwidth["transcendental"] / 1e9:.4g}     # GELU/softmax chains: per-element math, not bandwidth, bounds them
sigmoid_gbs = {c.rated_bandwidth["sigmoid"] / 1e9:.4g}     # SiLU/sigmoid chains: one exponential per element
norm_gbs = {c.rated_bandwidth["norm"] / 1e9:.4g}     # batch norms right after a convolution, ResNet shapes (+ per_class_us.norm per call)
pooling_gbs = {c.rated_bandwidth["pooling"] / 1e9:.4g}     # 3x3 stride-2 max-pools: window loops, not bandwidth, bound them{first_touch}

[efficiency]
# Each class's rate = peak x efficiency x utilisation, utilisation = product over the GEMM the layer
# runs (rows = output pixels or tokens, outputs = channels written, reduction = MACs per output)
# of d / (d + half_util_dims), fitted to layers sampled as networks have them.
gemm = {c.efficiency["gemm"]:.4g}          # linear layers, {count("gemm")} shapes, fit's median error {c.fits["gemm"].median_error:.0%}
conv = {c.efficiency["conv"]:.4g}          # 3x3 convolutions, {count("conv")} shapes, {c.fits["conv"].median_error:.0%}
pointwise = {c.efficiency["pointwise"]:.4g}     # 1x1 convolutions, {count("pointwise")} shapes, {c.fits["pointwise"].median_error:.0%}
depthwise = {c.efficiency["depthwise"]:.4g}     # depthwise convolutions, {count("depthwise")} shapes, {c.fits["depthwise"].median_error:.0%}
attention = {c.efficiency["attention"]:.4g}     # fused scaled-dot-product attention, {count("attention")} shapes, {c.fits["attention"].median_error:.0%}
strided = {{ {", ".join(f"{k} = {f.strided:.4g}" for k, f in c.fits.items() if f.strided != 1.0)} }}   # a stride > 1 convolution's rate over a stride-1 one's
memory = 1.0                # the bandwidth above is what a copy attains
half_util_macs = {{ gemm = {c.half_util_macs["gemm"]:.4g} }}   # matmuls without a layer shape
half_util_dims = {{ {", ".join(f"{k} = {dims(k)}" for k in c.fits)} }}

[overhead]
per_op_us = {c.per_op_s * 1e6:.4g}        # an nn.ReLU call on a tiny tensor: eager dispatch per layer
per_class_us = {{ {", ".join(f"{k} = {f.fixed_s * 1e6:.4g}" for k, f in c.fits.items())}, norm = {c.norm_fixed_s * 1e6:.4g} }}   # fitted: oneDNN setup, weight reorders
fuse_elementwise = false    # eager PyTorch runs every norm and activation as its own op

[sparsity.unstructured]
compute_speedup = 1.0       # dense kernels multiply zeros
"""
