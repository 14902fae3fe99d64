"""Fit a hardware profile of the local CPU by microbenchmarks.

GEMMs over sizes give the attainable peak and how throughput saturates with size (a curve fitted
with scipy); convolutions and depthwise convolutions give their efficiency against that curve; a
large copy gives memory bandwidth; a tiny module call gives the per-op overhead of eager PyTorch.
The profile describes this machine running eager PyTorch at float32 with its current thread count.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import least_squares

from costplan.hardware.profile import HardwareProfile, parse_profile

GEMM_SHAPES = (  # (rows, in, out) of F.linear: square GEMMs, transformer and classifier layers
    (64, 64, 64), (128, 128, 128), (256, 256, 256), (512, 512, 512), (1024, 1024, 1024),
    (128, 768, 768), (128, 768, 3072), (128, 3072, 768), (50, 768, 768), (1024, 768, 768),
    (8, 2048, 1000), (384, 768, 768),
)
CONV_SHAPES = ((16, 112), (32, 56), (64, 56), (128, 28), (256, 14), (512, 7))  # (channels, spatial), 3x3
POINTWISE_SHAPES = (  # (in, out, spatial) of 1x1 convolutions in MobileNet and ResNet blocks
    (16, 96, 112), (144, 24, 56), (32, 192, 28), (384, 64, 14), (576, 160, 7),
    (64, 256, 56), (512, 128, 28), (1024, 256, 14), (2048, 512, 7),
)
DEPTHWISE_SHAPES = ((32, 112), (96, 56), (144, 56), (192, 28), (384, 14), (960, 7))
ELEMENTWISE_SHAPES = ((32, 112), (64, 56), (144, 56), (256, 28), (512, 14))  # (channels, spatial)
CHAIN = 8  # ops per chain: each reads what the previous one wrote, as layers in a network do


@dataclass(frozen=True)
class Calibration:
    """What the microbenchmarks found. Rates in MAC/s, bandwidth in bytes/s, times in seconds."""

    name: str
    peak_macs: float
    half_util_macs: dict[str, float]   # op class -> MACs at half that class's plateau
    efficiency: dict[str, float]       # op class -> plateau over the GEMM plateau
    bandwidth: float
    onchip_bandwidth: float
    transcendental_bandwidth: float
    per_op_s: float
    onchip_bytes: int
    threads: int
    cpu: str
    samples: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # kind -> (MACs, MAC/s)

    def profile(self) -> HardwareProfile:
        """The calibration as a profile, exactly as ``--hw`` would read the file :func:`profile_toml` writes."""
        return parse_profile(tomllib.loads(profile_toml(self)), f"calibration of {self.cpu}")

    def summary(self) -> str:
        classes = ", ".join(f"{k} {v:.0%} (half at {self.half_util_macs[k]:.2g})" for k, v in self.efficiency.items())
        return (f"GEMM peak {self.peak_macs / 1e9:.1f} GMAC/s; {classes}; DRAM {self.bandwidth / 1e9:.1f} GB/s, in-cache "
                f"{self.onchip_bandwidth / 1e9:.1f} GB/s, GELU/softmax {self.transcendental_bandwidth / 1e9:.1f} GB/s, {self.per_op_s * 1e6:.1f} us/op, {self.threads} threads")


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


def _onchip(samples: list[tuple[float, float]], per_op: float) -> float:
    """Bytes/s at which norms and activations move cache-sized activations inside a network, from
    chains of them (each op reading what the previous one wrote), less the per-op overhead."""
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


def calibrate(name: str = "local", quick: bool = False, progress: bool = True) -> Calibration:
    """Run the microbenchmarks (about a minute; seconds with ``quick``)."""
    from rich.progress import Progress

    budget = 0.05 if quick else 0.4
    gemm_shapes = GEMM_SHAPES[::2] if quick else GEMM_SHAPES
    steps: list[tuple[str, Callable[[], tuple[str, float, float]]]] = []

    def gemm(m: int, k: int, n: int) -> tuple[str, float, float]:
        x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
        with torch.no_grad():
            seconds = _median_seconds(lambda: torch.nn.functional.linear(x, w, b), budget)
        return "gemm", m * k * n, m * k * n / seconds

    def conv(c: int, hw: int, k: int, groups: int = 1, out: int | None = None) -> tuple[str, float, float]:
        out = out or c
        layer = torch.nn.Conv2d(c, out, k, padding=k // 2, groups=groups, bias=False).eval()
        x = torch.randn(1, c, hw, hw)
        with torch.no_grad():
            seconds = _median_seconds(lambda: layer(x), budget)
        macs = out * hw * hw * (c // groups) * k * k
        kind = "depthwise" if groups > 1 else ("pointwise" if k == 1 else "conv")
        return kind, macs, macs / seconds

    def elementwise(c: int, hw: int, kind: str = "elementwise") -> tuple[str, float, float]:
        ops = (torch.nn.BatchNorm2d(c), torch.nn.ReLU()) if kind == "elementwise" else (torch.nn.GELU(), torch.nn.Softmax(1))
        chain = torch.nn.Sequential(*[ops[i % 2] for i in range(CHAIN)]).eval()
        x = torch.randn(1, c, hw, hw)
        with torch.no_grad():
            seconds = _median_seconds(lambda: chain(x), budget)
        return kind, CHAIN * 2.0 * x.numel() * 4, seconds / CHAIN  # bytes moved, seconds per op

    def bandwidth() -> tuple[str, float, float]:
        n = (16 if quick else 64) * 1024 * 1024  # floats: well past any cache
        src, dst = torch.randn(n), torch.empty(n)
        seconds = _median_seconds(lambda: dst.copy_(src), budget * 2)
        return "bandwidth", 0.0, 2 * n * 4 / seconds  # read + write

    def overhead() -> tuple[str, float, float]:
        relu, x = torch.nn.ReLU(), torch.randn(1, 8)
        with torch.no_grad():
            seconds = _median_seconds(lambda: relu(x), budget)
        return "overhead", 0.0, seconds

    steps += [(f"linear {m}x{k}->{n}", lambda m=m, k=k, n=n: gemm(m, k, n)) for m, k, n in gemm_shapes]
    steps += [(f"conv {c}x{s}x{s} 3x3", lambda c=c, s=s: conv(c, s, 3)) for c, s in CONV_SHAPES]
    steps += [(f"conv {i}->{o} at {s}x{s} 1x1", lambda i=i, o=o, s=s: conv(i, s, 1, out=o))
              for i, o, s in POINTWISE_SHAPES]
    steps += [(f"norm/activation chain {c}x{s}x{s}", lambda c=c, s=s: elementwise(c, s))
              for c, s in ELEMENTWISE_SHAPES]
    steps += [(f"GELU/softmax chain {c}x{s}x{s}", lambda c=c, s=s: elementwise(c, s, "transcendental"))
              for c, s in ELEMENTWISE_SHAPES[1::2]]
    steps += [(f"depthwise {c}x{s}x{s} 3x3", lambda c=c, s=s: conv(c, s, 3, groups=c)) for c, s in DEPTHWISE_SHAPES]
    steps += [("memory bandwidth", bandwidth), ("per-op overhead", overhead)]

    samples: dict[str, list[tuple[float, float]]] = {}
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("calibrating", total=len(steps))
        for label, step in steps:
            bar.update(task, description=f"calibrating: {label}")
            kind, macs, value = step()
            samples.setdefault(kind, []).append((macs, value))
            bar.advance(task)

    peak, half_gemm = fit_saturation(samples["gemm"])
    efficiency, half = {"gemm": 1.0}, {"gemm": half_gemm}
    for kind in ("conv", "pointwise", "depthwise"):
        plateau, half[kind] = fit_saturation(samples[kind])
        efficiency[kind] = float(min(1.0, max(0.005, plateau / peak)))
    per_op = samples["overhead"][0][1]
    dram = samples["bandwidth"][0][1]
    onchip = _onchip(samples["elementwise"], per_op)
    transcendental = _onchip(samples["transcendental"], per_op)
    return Calibration(
        name=name, peak_macs=peak, half_util_macs=half, efficiency=efficiency,
        bandwidth=dram, onchip_bandwidth=onchip, transcendental_bandwidth=transcendental, per_op_s=per_op, onchip_bytes=cache_bytes(), threads=torch.get_num_threads(),
        cpu=_cpu_name(), samples=samples,
    )


def profile_toml(c: Calibration) -> str:
    """The calibration as a profile file that ``--hw`` accepts."""
    today = datetime.date.today().isoformat()
    return f"""# Measured by `costplan calibrate` on {today}: {c.cpu}, {c.threads} threads, torch {torch.__version__}.
# Eager PyTorch at float32 on this machine; recalibrate after changing threads or hardware.
name = "{c.name}"
kind = "cpu"
description = "{c.cpu} ({c.threads} threads), calibrated {today}"
default_dtype = "float32"
threads = {c.threads}

[peak_tflops]
float32 = {2 * c.peak_macs / 1e12:.6g}   # fitted GEMM plateau: {c.peak_macs / 1e9:.2f} GMAC/s

[memory]
bandwidth_gbs = {c.bandwidth / 1e9:.4g}   # large tensor copy, bytes read + written
onchip_mb = {c.onchip_bytes / 1e6:.4g}      # largest CPU cache (sysfs)
onchip_bandwidth_gbs = {c.onchip_bandwidth / 1e9:.4g}   # batch-norm/ReLU chains on cache-sized activations
transcendental_gbs = {c.transcendental_bandwidth / 1e9:.4g}     # GELU/softmax chains: per-element math, not bandwidth, bounds them

[efficiency]
# Each class's throughput = peak x efficiency x MACs / (MACs + half_util_macs), fitted to its shapes.
gemm = 1.0                  # the peak above is the GEMM plateau itself
conv = {c.efficiency["conv"]:.4g}          # 3x3 convolutions, {len(c.samples.get('conv', []))} shapes
pointwise = {c.efficiency["pointwise"]:.4g}     # 1x1 convolutions, {len(c.samples.get('pointwise', []))} shapes
depthwise = {c.efficiency["depthwise"]:.4g}     # depthwise 3x3 convolutions, {len(c.samples.get('depthwise', []))} shapes
memory = 1.0                # the bandwidth above is what a copy attains
half_util_macs = {{ {", ".join(f"{k} = {v:.4g}" for k, v in c.half_util_macs.items())} }}

[overhead]
per_op_us = {c.per_op_s * 1e6:.4g}        # an nn.ReLU call on a tiny tensor: eager dispatch per layer
fuse_elementwise = false    # eager PyTorch runs every norm and activation as its own op

[sparsity.unstructured]
compute_speedup = 1.0       # dense kernels multiply zeros
"""
