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
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import least_squares, nnls

from costplan.hardware.profile import HardwareProfile, parse_profile
from costplan.hardware.roofline import activation_cost

ELEMENTWISE_SHAPES = ((32, 112), (64, 56), (144, 56), (256, 28), (512, 14))  # (channels, spatial)
NORM_SHAPES = ((64, 112), (64, 56), (256, 56), (512, 28), (1024, 14), (2048, 7))  # as in ResNets
POOLING_SHAPES = ((64, 112), (128, 56), (256, 28))  # (channels, input spatial) of 3x3 stride-2 max-pools
CHAIN = 8  # ops per chain: each reads what the previous one wrote, as layers in a network do
WIDTHS = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024, 1536, 2048)
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

    @property
    def rows(self) -> int:
        return self.spatial if self.kernel == 0 else math.ceil(self.spatial / self.stride) ** 2

    @property
    def reduction(self) -> int:
        """MACs per output, as :func:`costplan.hardware.roofline.dims` counts them: inputs x window."""
        return self.cin * max(self.kernel, 1) ** 2 if self.kind != "depthwise" else self.kernel ** 2

    @property
    def macs(self) -> int:
        return self.rows * self.cout * self.reduction

    @property
    def weight_bytes(self) -> int:
        return 4 * self.cout * self.reduction

    @property
    def activation_bytes(self) -> tuple[int, int]:
        inputs = self.cin * (self.spatial if self.kernel == 0 else self.spatial ** 2)
        return 4 * inputs, 4 * self.rows * self.cout


def _width(value: float) -> int:
    return int(min(2048, max(8, round(value / 8) * 8)))


def sample_shapes(kind: str, count: int, seed: int = 0) -> list[Shape]:
    """``count`` layers of one op class drawn as networks have them (seeded), batch 1. Convolutions:
    a 7x7 to 112x112 map, a width about 64 x 56 / side (channels grow as maps shrink) scaled by
    1/4 to 3 for pruned and wide layers, the output width 1/4 to 4 times the input's (bottlenecks,
    expansions), multiples of 8 from 8 to 2048, stride 1 or 2 (1x1: stride 1). GEMMs: 1 to 1024 rows,
    independent widths from 8 to 2048."""
    rng = np.random.default_rng(seed)
    out: list[Shape] = []
    while len(out) < count:
        stride = int(rng.choice((1, 1, 2)))
        spatial = int(rng.choice((7, 14, 28, 56, 112)))
        cin = _width(64 * 56 / spatial * 2 ** rng.uniform(-2, 1.5))
        cout = _width(cin * float(rng.choice((0.25, 0.5, 1, 1, 2, 4))))
        if kind == "gemm":
            cin, cout = (int(w) for w in rng.choice(WIDTHS, 2))
            shape = Shape(kind, cin, cout, int(rng.choice((1, 8, 32, 64, 128, 256, 512, 1024))))
        elif kind == "depthwise":
            shape = Shape(kind, cout, cout, spatial, int(rng.choice((3, 3, 5))), stride)
        elif kind == "conv":
            shape = Shape(kind, cin, cout, spatial, 3, stride)
        else:  # stride-2 1x1 convolutions (ResNet shortcuts) run another kernel, ~30% slower than this fit
            shape = Shape(kind, cin, cout, spatial, 1, 1)
        inputs, outputs = shape.activation_bytes
        if 2e5 <= shape.macs <= 4e8 and max(inputs, outputs) <= 4 * MAX_ACTIVATION:
            out.append(shape)
    return out


def _module(shape: Shape) -> tuple[torch.nn.Module, torch.Tensor]:
    if shape.kind == "gemm":
        return torch.nn.Linear(shape.cin, shape.cout), torch.randn(shape.spatial, shape.cin)
    groups = shape.cin if shape.kind == "depthwise" else 1
    layer = torch.nn.Conv2d(shape.cin, shape.cout, shape.kernel, stride=shape.stride, padding=shape.kernel // 2,
                            groups=groups, bias=False)
    return layer, torch.randn(1, shape.cin, shape.spatial, shape.spatial)


@dataclass(frozen=True)
class ClassFit:
    """One op class fitted to its sampled layers: seconds = max(MACs / (rate x utilisation), memory
    seconds) + per-op overhead + ``fixed_s``, utilisation = product of d / (d + half) over the GEMM
    dimensions (rows, outputs, reduction)."""

    rate: float                            # MAC/s plateau
    half_dims: tuple[float, float, float]  # rows, outputs, reduction at half the plateau
    fixed_s: float                         # seconds per call beyond the generic per-op overhead
    median_error: float                    # median |predicted / measured - 1| over the samples


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

    def profile(self) -> HardwareProfile:
        """The calibration as a profile, exactly as ``--hw`` would read the file :func:`profile_toml` writes."""
        return parse_profile(tomllib.loads(profile_toml(self)), f"calibration of {self.cpu}")

    def summary(self) -> str:
        classes = ", ".join(f"{k} {v.rate / 1e9:.1f} GMAC/s (fit {v.median_error:.0%})" for k, v in self.fits.items())
        rated = ", ".join(f"{k} {v / 1e9:.2g}" for k, v in self.rated_bandwidth.items())
        return (f"plateaus {classes}; DRAM {self.bandwidth / 1e9:.1f} GB/s, in-cache {self.onchip_bandwidth / 1e9:.1f} GB/s "
                f"({rated} GB/s), {self.per_op_s * 1e6:.1f} us/op, channels in multiples of {self.channel_multiple}, {self.threads} threads")


def _median_seconds(fn: Callable[[], object], budget_s: float, min_runs: int = 5) -> float:
    """Median time of ``fn`` over as many runs as fit in ``budget_s`` (at least ``min_runs``): the
    same statistic ``costplan measure`` reports, so interference weighs on both alike."""
    fn()  # warm caches and lazy initialisation
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < budget_s and len(times) < 200):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


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


def _memory_seconds(shapes: list[Shape], bandwidth: float, onchip_bandwidth: float, onchip_bytes: float) -> np.ndarray:
    """Weights from DRAM, activations in cache or DRAM: the roofline's memory side for each sampled shape."""
    def activation(nbytes: float) -> float:
        return activation_cost(nbytes, bandwidth, onchip_bytes, onchip_bandwidth)[0]
    return np.array([s.weight_bytes / bandwidth + sum(map(activation, s.activation_bytes)) for s in shapes])


def fit_class(shapes: list[Shape], seconds: list[float], memory_s: np.ndarray, per_op: float) -> ClassFit:
    """Fit :class:`ClassFit` to timed shapes on log time, weighted by the square root of time, with a
    soft-L1 loss: one shape timed while the machine was busy does not drag the whole fit."""
    macs = np.array([s.macs for s in shapes], dtype=float)
    dims = np.array([(s.rows, s.cout, s.reduction) for s in shapes], dtype=float)
    measured = np.array(seconds)
    top = float((macs / measured).max())

    def predict(p: np.ndarray) -> np.ndarray:
        u = np.prod(dims / (dims + p[1:4]), axis=1)
        return np.maximum(macs / (p[0] * top * u), memory_s) + per_op + p[4] * 1e-6

    # long layers weigh more: a network's total is mostly its long layers, and a 30 us layer's
    # relative error matters less than a 3 ms one's
    weight = np.sqrt(measured / np.median(measured))
    fit = least_squares(lambda p: weight * np.log(predict(p) / measured), x0=(1.0, 16.0, 16.0, 16.0, 5.0),
                        loss="soft_l1", f_scale=0.1, bounds=([0.3, 0, 0, 0, 0], [5.0, 1e5, 1e4, 1e4, 1e3]))
    error = float(np.median(np.abs(predict(fit.x) / measured - 1)))
    rows, outputs, reduction = (float(v) for v in fit.x[1:4])
    return ClassFit(float(fit.x[0]) * top, (rows, outputs, reduction), float(fit.x[4]) * 1e-6, error)


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


def calibrate(name: str = "local", quick: bool = False, progress: bool = True, seed: int = 0) -> Calibration:
    """Run the microbenchmarks (about a minute; 10 s with ``quick``). Layer shapes are sampled
    with ``seed``."""
    from rich.progress import Progress

    budget = 0.05 if quick else 0.15
    per_class = 12 if quick else 48
    classes = ("gemm", "conv", "pointwise", "depthwise")
    shapes = {kind: sample_shapes(kind, per_class, seed + i) for i, kind in enumerate(classes)}
    steps: list[tuple[str, Callable[[], tuple[str, float, float]]]] = []

    def layer(shape: Shape) -> tuple[str, float, float]:
        module, x = _module(shape)
        module.eval()
        with torch.inference_mode():
            seconds = _median_seconds(lambda: module(x), budget)
        return shape.kind, shape.macs, seconds

    def elementwise(c: int, hw: int, kind: str = "elementwise") -> tuple[str, float, float]:
        ops = {"elementwise": (torch.nn.ReLU(),), "transcendental": (torch.nn.GELU(), torch.nn.Softmax(1))}[kind]
        chain = torch.nn.Sequential(*[ops[i % len(ops)] for i in range(CHAIN)]).eval()
        x = torch.randn(1, c, hw, hw)
        with torch.inference_mode():
            seconds = _median_seconds(lambda: chain(x), budget)
        return kind, CHAIN * 2.0 * x.numel() * 4, seconds / CHAIN  # bytes moved, seconds per op

    def norm(c: int, hw: int) -> tuple[str, float, float]:
        # timed right after the convolution that writes its input, as in a network: a batch norm
        # reading a convolution's fresh output runs 1.5-3x slower than one re-reading its own input
        conv, bn = torch.nn.Conv2d(64, c, 1, bias=False).eval(), torch.nn.BatchNorm2d(c).eval()
        x, times = torch.randn(1, 64, hw, hw), []
        with torch.inference_mode():
            for _ in range(max(5, int(budget / 0.002))):
                y = conv(x)
                start = time.perf_counter()
                bn(y)
                times.append(time.perf_counter() - start)
        return "norm", 2.0 * c * hw * hw * 4, statistics.median(times[1:])

    def pooling(c: int, hw: int) -> tuple[str, float, float]:
        pool, x = torch.nn.MaxPool2d(3, 2, 1), torch.randn(1, c, hw, hw)
        with torch.inference_mode():
            seconds = _median_seconds(lambda: pool(x), budget)
        return "pooling", 4.0 * x.numel() * 1.25, seconds  # bytes read + written (a quarter as many)

    def bandwidth() -> tuple[str, float, float]:
        n = (16 if quick else 64) * 1024 * 1024  # floats: well past any cache
        src, dst = torch.randn(n), torch.empty(n)
        seconds = _median_seconds(lambda: dst.copy_(src), budget * 2)
        return "bandwidth", 0.0, 2 * n * 4 / seconds  # read + write

    def first_touch() -> tuple[str, float, float]:
        # glibc maps blocks over 32 MiB afresh on every allocation, whatever was freed before: a layer
        # writing such an output first faults in every page of it
        n = (FRESH_OUTPUT_BYTES + 16 * 2 ** 20) // 4
        kept = torch.empty(n)
        fresh = _median_seconds(lambda: torch.empty(n).fill_(1.0), budget)
        reused = _median_seconds(lambda: kept.fill_(1.0), budget)
        return "first_touch", 4.0 * n, max(fresh - reused, 0.0)

    def overhead() -> tuple[str, float, float]:
        relu, x = torch.nn.ReLU(), torch.randn(1, 8)
        with torch.no_grad():
            seconds = _median_seconds(lambda: relu(x), budget)
        return "overhead", 0.0, seconds

    steps += [("memory bandwidth", bandwidth), ("per-op overhead", overhead), ("fresh pages", first_touch)]
    steps += [(f"ReLU chain {c}x{s}x{s}", lambda c=c, s=s: elementwise(c, s)) for c, s in ELEMENTWISE_SHAPES]
    steps += [(f"batch norm {c}x{s}x{s}", lambda c=c, s=s: norm(c, s)) for c, s in (NORM_SHAPES[::2] if quick else NORM_SHAPES)]
    steps += [(f"GELU/softmax chain {c}x{s}x{s}", lambda c=c, s=s: elementwise(c, s, "transcendental"))
              for c, s in ELEMENTWISE_SHAPES[1::2]]
    steps += [(f"max-pool {c}x{s}x{s}", lambda c=c, s=s: pooling(c, s)) for c, s in POOLING_SHAPES]
    # the sampled layers in passes: a spell of a busy machine lands on one pass of a shape, not all
    for _ in range(1 if quick else 2):
        for kind in classes:
            steps += [(f"{kind} {s.cin}->{s.cout} at {s.spatial}", lambda s=s: layer(s)) for s in shapes[kind]]

    samples: dict[str, list[tuple[float, float]]] = {}
    # a large block allocated and freed first, as a running network's would be: glibc then serves
    # later outputs from its heap instead of mapping fresh pages for each (10x on small convs)
    warm = torch.empty(MAX_ACTIVATION * 2)  # 16 MB: glibc adapts its threshold only to blocks under 32 MB
    warm.fill_(0.0)
    del warm
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("calibrating", total=len(steps))
        for label, step in steps:
            bar.update(task, description=f"calibrating: {label}")
            kind, size, value = step()
            samples.setdefault(kind, []).append((size, value))
            bar.advance(task)

    per_op = samples["overhead"][0][1]
    dram = samples["bandwidth"][0][1]
    onchip = _onchip(samples["elementwise"], per_op)
    norm_fixed, norm_bandwidth = fit_linear(samples["norm"], per_op)
    touched, touch_s = samples["first_touch"][0]
    first_touch_bw = touched / touch_s if touch_s * dram > 0.2 * touched else None  # under 20% of a copy: noise
    rated = {"transcendental": _onchip(samples["transcendental"], per_op), "norm": norm_bandwidth,
             "pooling": statistics.median(b / max(t - per_op, 1e-9) for b, t in samples["pooling"])}
    onchip_bytes = cache_bytes()
    fits = {}
    for kind in classes:
        memory = _memory_seconds(shapes[kind], dram, onchip, onchip_bytes)
        passes = np.array([t for _, t in samples[kind]]).reshape(-1, len(shapes[kind]))
        samples[kind] = list(zip([float(s.macs) for s in shapes[kind]], np.median(passes, axis=0).tolist()))
        fits[kind] = fit_class(shapes[kind], [t for _, t in samples[kind]], memory, per_op)
    peak = max(f.rate for f in fits.values())
    _, half_gemm = fit_saturation([(m, m / t) for m, t in samples["gemm"]])
    return Calibration(
        name=name, peak_macs=peak, half_util_macs={"gemm": half_gemm},
        efficiency={k: float(min(1.0, max(0.005, f.rate / peak))) for k, f in fits.items()}, fits=fits,
        bandwidth=dram, onchip_bandwidth=onchip, rated_bandwidth=rated, norm_fixed_s=norm_fixed, first_touch_bandwidth=first_touch_bw, per_op_s=per_op, onchip_bytes=onchip_bytes, threads=torch.get_num_threads(),
        channel_multiple=channel_multiple(), cpu=_cpu_name(), samples=samples,
    )


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
    return f"""# Measured by `costplan calibrate` on {today}: {c.cpu}, {c.threads} threads, torch {torch.__version__}.
# Eager PyTorch at float32 on this machine; recalibrate after changing threads or hardware.
name = "{c.name}"
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
onchip_bandwidth_gbs = {c.onchip_bandwidth / 1e9:.4g}   # ReLU chains on cache-sized activations
transcendental_gbs = {c.rated_bandwidth["transcendental"] / 1e9:.4g}     # GELU/softmax chains: per-element math, not bandwidth, bounds them
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
memory = 1.0                # the bandwidth above is what a copy attains
half_util_macs = {{ gemm = {c.half_util_macs["gemm"]:.4g} }}   # matmuls without a layer shape (attention)
half_util_dims = {{ {", ".join(f"{k} = {dims(k)}" for k in c.fits)} }}

[overhead]
per_op_us = {c.per_op_s * 1e6:.4g}        # an nn.ReLU call on a tiny tensor: eager dispatch per layer
per_class_us = {{ {", ".join(f"{k} = {f.fixed_s * 1e6:.4g}" for k, f in c.fits.items())}, norm = {c.norm_fixed_s * 1e6:.4g} }}   # fitted: oneDNN setup, weight reorders
fuse_elementwise = false    # eager PyTorch runs every norm and activation as its own op

[sparsity.unstructured]
compute_speedup = 1.0       # dense kernels multiply zeros
"""
