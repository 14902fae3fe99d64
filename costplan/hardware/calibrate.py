"""Fit a hardware profile of the local CPU by microbenchmarks.

GEMMs over sizes give the attainable peak and how throughput saturates with size (a curve fitted
with scipy); convolutions and depthwise convolutions give their efficiency against that curve; a
large copy gives memory bandwidth; a tiny module call gives the per-op overhead of eager PyTorch.
The profile describes this machine running eager PyTorch at float32 with its current thread count.
"""

from __future__ import annotations

import datetime
import math
import random
import statistics
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from costplan.errors import CostplanError
from costplan.hardware.fitting import (
    ClassFit,
    _memory_seconds,
    _onchip,
    fit_class,
    fit_linear,
    fit_linear_planes,
    fit_recurrent,
    fit_saturation,
    weight_seconds,
)
from costplan.hardware.probes import (
    CHAIN,
    Shape,
    FRESH_OUTPUT_BYTES,
    _cpu_name,
    _probes,
    dram_weight_shapes,
    gather_shapes,
    norm_shapes,
    attention_shapes,
    cache_bytes,
    channel_multiple,
    check_networks,
    check_probes,
    recurrent_probes,
    one_pass_pairs,
    large_map_shapes,
    sample_shapes,
)
from costplan.hardware.roofline import overflows_cache, recurrent_cost, reorder_passes
from costplan.hardware.opclass import RECURRENT
from costplan.hardware.profile import (OP_CLASSES, HardwareProfile, SparsitySupport, following_leaders, half_util_by_class,
                                       parse_profile)
from costplan.hardware.schema import profile_toml as write_profile
from costplan.hardware.timing import (MIXED_GROUP, LoadMeter, Probe, Timing, keep_freed_memory, round_robin,
                                      speed_by_round)
from costplan.models import Instance
from costplan.progress import progress as bar

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
    fixed_s: dict[str, float]          # memory kind -> cost per call beyond the per-op overhead (norm, pooling, ...)
    first_touch_bandwidth: float | None  # bytes/s of faulting in fresh pages; None where it costs nothing
    per_op_s: float
    onchip_bytes: int
    threads: int
    channel_multiple: int
    cpu: str
    samples: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # kind -> (MACs, seconds)
    quality: Quality | None = None     # how noisy the machine was, and the self-check
    kept_memory: bool = False          # timed with glibc keeping freed memory (timing.keep_freed_memory)
    reference_s: float | None = None   # seconds of probes.reference_workload(), timed in the rounds
    norm_plane_s: float = 0.0          # a batch norm's seconds per (sample, channel) plane beyond its bytes

    def profile(self) -> HardwareProfile:
        """The calibration as a profile, exactly as ``--hw`` would read the file :func:`profile_toml` writes."""
        return parse_profile(tomllib.loads(profile_toml(self)), f"calibration of {self.cpu}")

    def warnings(self) -> list[str]:
        """The quality's warnings, and every class whose fit is off by more than half
        :data:`FIT_LIMIT`: the strict classes refuse a calibration only past the limit, and a linear
        fit off by 23% passed without a word (its plateau 96 GMAC/s against 72-79 in the runs before,
        the transformers -21% to -34% in the rounds)."""
        loose = [f"WARNING: the {k} fit is off by {f.median_error:.0%} (median over its probes): this model of "
                 f"{k} layers is that uncertain; a calibration in a quieter spell may fit it closer"
                 for k, f in self.fits.items() if f.median_error > FIT_LIMIT / 2]
        return (self.quality.warnings() if self.quality else []) + loose

    def summary(self) -> str:
        classes = ", ".join(f"{k} {v.rate / 1e9:.1f} GMAC/s (fit {v.median_error:.0%})" for k, v in self.fits.items())
        rated = ", ".join(f"{k} {v / 1e9:.2g}" for k, v in self.rated_bandwidth.items())
        return (f"plateaus {classes}; DRAM {self.bandwidth / 1e9:.1f} GB/s, in-cache {self.onchip_bandwidth / 1e9:.1f} GB/s "
                f"({rated} GB/s), {self.per_op_s * 1e6:.1f} us/op, channels in multiples of {self.channel_multiple}, {self.threads} threads")


SAMPLED = ("gemm", "conv", "pointwise", "depthwise", "conv1d", "conv3d", "im2col")  # classes drawn by sample_shapes
MINOR = ("conv3d", "im2col")   # rarer in networks: half as many shapes (conv1d has a fourth figure to fit)
# classes whose loose fit warns rather than refuses: rarer kinds, and recurrent steps (oneDNN runs a
# whole LSTM sequence as one primitive, which a per-step model fits within 15-31% here)
LENIENT = (*MINOR, *RECURRENT)
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
    bad = {k: f.median_error for k, f in fits.items() if f.median_error > FIT_LIMIT and k not in LENIENT}
    if bad:
        why.append("the fits are off by " + ", ".join(f"{k} {e:.0%}" for k, e in bad.items()))
    if not why:
        return None
    return ("the machine was too busy to calibrate: " + "; ".join(why) + ". Close other programs and run "
            "`costplan calibrate` again, or calibrate with fewer threads than idle cores (--threads 1); "
            "no profile was written")


def _time_all(probes: dict[str, tuple[str, float, Probe, float]], rounds: int, block_s: float,
              progress: bool, label: str, after_round: Callable[[int], None] | None = None,
              seed: int = 0) -> dict[str, Timing]:
    with bar(f"{label} (rounds of {len(probes)} probes)", rounds, progress) as advance:
        def on_round(r: int) -> None:
            advance()
            if after_round is not None:
                after_round(r)

        return round_robin({k: v[2] for k, v in probes.items()}, rounds, block_s, on_round=on_round, shuffle=seed,
                           mixed=[k for k, v in probes.items() if v[0] in OP_CLASSES])


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
    """Run the microbenchmarks (about 60 s on 2 cores; about 28 s with ``quick``) on ``threads``
    threads (default: torch's), and grade the fitted profile on held-out networks timed in the same
    interleaved rounds: :func:`check_networks`, or the ``check`` mapping given (name -> instance).

    Raises CostplanError, writing nothing, when the machine was too busy to fit: other processes kept
    more than ``load_limit`` cores busy, or too many timings stayed noisy after re-timing, or a class's
    fit is too far off. With ``strict`` False it refuses only where a recurrent cell has no call timed
    slower than its input projection, and fits each cell on the calls that were (its quality says how
    noisy the machine was).

    Sets glibc's malloc to keep freed memory for the rest of the process (:func:`keep_freed_memory`),
    so that page faults, which depend on the process's history, do not pass for kernel time; the
    profile's header says so."""
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


def layer_shapes(quick: bool, seed: int, tile: int, onchip_bytes: int) -> dict[str, list[Shape]]:
    """The layers calibration times, by class: drawn (:func:`sample_shapes`), with the pairs that
    fit one tile a pass and the convolutions over maps larger than a cache; linear layers whose
    weights overflow the cache (``onchip_bytes``) as a class of their own, ``gemm_dram``."""
    shapes = {kind: sample_shapes(kind, (16 if quick else 48) // (2 if kind in MINOR else 1), seed + i, tile)
                    + one_pass_pairs(kind, tile) + large_map_shapes(kind, tile) for i, kind in enumerate(SAMPLED)}
    # linear layers are fitted as the roofline prices them: those whose weights overflow the cache apart
    drawn = shapes["gemm"] + dram_weight_shapes(8 if quick else 16, onchip_bytes, seed, tile)
    shapes["gemm"] = [s for s in drawn if not overflows_cache(s.weight_bytes, onchip_bytes)]
    shapes["gemm_dram"] = [s for s in drawn if overflows_cache(s.weight_bytes, onchip_bytes)]
    return shapes


def _calibrate(name: str, quick: bool, progress: bool, seed: int, check: Mapping[str, Instance],
               load_limit: float, strict: bool) -> Calibration:
    kept = keep_freed_memory()   # outputs reuse freed memory instead of faulting fresh pages in
    onchip_bytes = cache_bytes()
    tile = channel_multiple()   # widths are priced padded to it, on the traced layers as on these
    shapes = layer_shapes(quick, seed, tile, onchip_bytes)
    rnns = recurrent_probes(quick, seed)
    with torch.inference_mode():
        probes = {**_probes(shapes, quick, kept, rnns), **check_probes(check)}
        timings, quality = _measure(probes, quick, progress, seed, load_limit)
    samples: dict[str, list[tuple[float, float]]] = {}
    for key, (kind, size, _, divisor) in probes.items():
        samples.setdefault(kind, []).append((size, timings[key].seconds / divisor))
    per_op = samples["overhead"][0][1]
    dram, onchip, fixed, rated, first_touch_bw, norm_plane = _memory_rates(samples, per_op, quick)
    fits = {}
    for kind, kind_shapes in {**shapes, "attention": attention_shapes(quick)}.items():
        # the profile adds each layer's weight read before its math (weights_overlap = false) and a
        # convolution's layout reorders before and after it (layout_reorders = true): fitted so
        memory = _memory_seconds(kind_shapes, dram, onchip, onchip_bytes, weights=False)
        fits[kind] = fit_class(kind_shapes, [t for _, t in samples[kind]], memory, per_op,
                               weights_first_s=weight_seconds(kind_shapes, dram) + reorder_passes(kind) * memory)
    _, half_gemm = fit_saturation([(m, m / t) for m, t in samples["gemm"]])

    def calibration_of(fits: dict[str, ClassFit]) -> Calibration:
        peak = max(f.rate for f in fits.values())
        return Calibration(
            name=name, peak_macs=peak, half_util_macs={"gemm": half_gemm},
            efficiency={k: float(min(1.0, max(0.005, f.rate / peak))) for k, f in fits.items()}, fits=fits,
            bandwidth=dram, onchip_bandwidth=onchip, rated_bandwidth=rated, fixed_s=fixed,
            first_touch_bandwidth=first_touch_bw, per_op_s=per_op, onchip_bytes=onchip_bytes,
            threads=torch.get_num_threads(), channel_multiple=tile, cpu=_cpu_name(), samples=samples,
            quality=quality, kept_memory=kept, reference_s=samples["reference"][0][1], norm_plane_s=norm_plane)
    before = calibration_of(fits).profile()
    for cell in RECURRENT:     # a call less its once-per-call work, priced by the fits above
        cells = [r for r in rnns if r.recurrent.cell == cell]
        calls = [t for _, t in samples[cell]]
        once = [recurrent_cost(r.recurrent, before, "float32", weight_bytes=r.weight_total,
                               act_bytes=r.sequence_bytes).call_s for r in cells]
        kept_calls = usable_calls(cell, calls, once, strict)
        cells = [r for r, ok in zip(cells, kept_calls) if ok]
        calls = [t for t, ok in zip(calls, kept_calls) if ok]
        once = [o for o, ok in zip(once, kept_calls) if ok]
        fits[cell] = fit_recurrent(cells, calls, once, _memory_seconds(cells, dram, onchip, onchip_bytes))
        samples[cell] = [(float(r.macs), (t - o - fits[cell].call_s) / r.steps) for r, t, o in zip(cells, calls, once)]
    why = refusal(quality, fits, load_limit)
    if why and strict:
        raise CostplanError(why)
    calibration = calibration_of(fits)
    if check:
        predicted = predict_checks(calibration.profile(), check)
        measured = {key.removeprefix("check "): timings[key].seconds for key in probes if key.startswith("check ")}
        checked = Quality(**{**quality.__dict__, "check": {n: (predicted[n], measured[n]) for n in predicted}})
        calibration = Calibration(**{**calibration.__dict__, "quality": checked})
    return calibration


def usable_calls(cell: str, calls_s: Sequence[float], once_s: Sequence[float], strict: bool) -> list[bool]:
    """Which of a recurrent cell's timed calls (seconds) can be fitted: those slower than their
    once-per-call work (``once_s``, priced by the other fits). A call timed faster than its own input
    projection was timed across a change of the machine's speed; strict calibration refuses then,
    lenient calibration leaves it out, and refuses only where no call is left."""
    usable = [t > o for t, o in zip(calls_s, once_s)]
    if not all(usable) and (strict or not any(usable)):
        raise CostplanError(f"the machine was too busy to calibrate: one {cell.upper()} call was timed faster than "
                            "its input projection alone, so the machine's speed changed while timing. Close other "
                            "programs and run `costplan calibrate` again; no profile was written")
    return usable


def _measure(probes: dict[str, tuple[str, float, Probe, float]], quick: bool, progress: bool, seed: int,
             load_limit: float) -> tuple[dict[str, Timing], Quality]:
    """Time ``probes`` in shuffled interleaved rounds, re-time the noisy ones, and grade the machine:
    a lasting load over ``load_limit`` cores refuses from the second round on."""
    rounds, block_s = (4, 0.002) if quick else (6, 0.004)
    meter = LoadMeter()
    meter.start()

    def refuse_a_lasting_load(r: int) -> None:
        # from the second round on: a load that lasts, which retries will not help, refuses at once
        load = meter.stop()
        if r >= 1 and load is not None and load > load_limit:
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
        again = _time_all({**unstable, **_fillers(probes, unstable, seed + attempt)}, rounds, block_s, progress,
                          f"re-timing {len(unstable)} noisy probes", seed=seed + attempt + 1)
        for k in unstable:
            t = again[k]
            timings[k] = Timing(min(t.seconds, timings[k].seconds), t.noise, timings[k].blocks + t.blocks)
    load = meter.stop()         # over the whole timing, retries included
    noise = [t.noise for t in timings.values()]
    return timings, Quality(len(probes), rounds, statistics.median(noise),
                            sum(n > NOISE_LIMIT for n in noise) / len(noise), len(retried), load, speed=speed)


def _fillers(probes: Mapping[str, tuple[str, float, Probe, float]], unstable: Mapping[str, object],
             seed: int) -> dict[str, tuple[str, float, Probe, float]]:
    """Stable layer probes to fill the re-timed layer probes' groups, timed and discarded: a layer probe
    interleaved with fewer others runs warmer than in the rounds it is compared with (timing.round_robin)."""
    short = -sum(probes[k][0] in OP_CLASSES for k in unstable) % MIXED_GROUP
    stable = sorted(k for k, v in probes.items() if v[0] in OP_CLASSES and k not in unstable)
    return {k: probes[k] for k in random.Random(seed).sample(stable, min(short, len(stable)))}


def _memory_rates(samples: Mapping[str, list[tuple[float, float]]], per_op: float, quick: bool
                  ) -> tuple[float, float, dict[str, float], dict[str, float], float | None, float]:
    """DRAM and in-cache bandwidth, fixed costs per call of memory kinds (norm, pooling, gather,
    elementwise), the rates of memory-only ops slower than their bytes, the first-touch rate of
    fresh pages (None where nothing faults), and a batch norm's seconds per (sample, channel) plane."""
    dram = samples["bandwidth"][0][0] / samples["bandwidth"][0][1]
    onchip = _onchip([(b * CHAIN, t * CHAIN) for b, t in samples["elementwise"]], per_op)
    fixed, fitted = {}, {}
    for kind in ("pooling", "pooling1d", "avgpool", "reduction"):
        fixed[kind], fitted[kind] = fit_linear(samples[kind], per_op)
    planes = [batch * channels for batch, channels, _, _ in norm_shapes(quick)]
    fixed["norm"], fitted["norm"], norm_plane = fit_linear_planes(samples["norm"], planes, per_op)
    # a lookup's rows are read from DRAM as weights are (roofline.weights_touched), its rate bounds the rest
    rows = [4.0 * batch * tokens * dim
            for _, dim, batch, tokens in gather_shapes(quick)]
    fixed["gather"], fitted["gather"] = fit_linear([(b, t - r / dram) for (b, t), r in zip(samples["gather"], rows)], per_op)
    # a lone small op (a residual add, a bias) beyond dispatch and its bytes in cache
    fixed["elementwise"] = statistics.median(max(t - per_op - b / onchip, 0.0) for b, t in samples["binary"])
    first_touch_bw = None   # kept memory: outputs reuse pages, nothing is faulted in
    if "first_touch" in samples:
        touched, fresh_s = samples["first_touch"][0]
        touch_s = max(fresh_s - samples["reused"][0][1], 0.0)
        first_touch_bw = touched / touch_s if touch_s * dram > 0.2 * touched else None  # under 20% of a copy: noise
    rated = {"transcendental": _onchip([(b * CHAIN, t * CHAIN) for b, t in samples["transcendental"]], per_op),
             "sigmoid": _onchip([(b * CHAIN, t * CHAIN) for b, t in samples["sigmoid"]], per_op),
             **fitted}
    return dram, onchip, fixed, rated, first_touch_bw, norm_plane


def calibrated_profile(c: Calibration) -> HardwareProfile:
    """The profile a calibration describes: eager PyTorch at float32 on this CPU."""
    return HardwareProfile(
        name=c.name, kind="cpu", description=f"{c.cpu} ({c.threads} threads), calibrated {datetime.date.today()}",
        peak_macs={"float32": c.peak_macs}, bandwidth=c.bandwidth, onchip_bytes=c.onchip_bytes,
        onchip_bandwidth=c.onchip_bandwidth, efficiency=following_leaders(c.efficiency, 1.0), memory_efficiency=1.0,
        half_util_macs=half_util_by_class(c.half_util_macs["gemm"]), per_op_s=c.per_op_s,
        fuse_elementwise=False, weights_on_chip=False, default_dtype="float32",
        sparsity={"unstructured": SparsitySupport()}, threads=c.threads,
        half_util_dims={k: tuple(v if v >= 1e-3 else 0.0 for v in f.half_dims) for k, f in c.fits.items()},  # fits' 1e-17 is 0
        per_class_s={**{k: f.fixed_s for k, f in c.fits.items()}, **c.fixed_s},
        per_call_s={k: f.call_s for k, f in c.fits.items() if k in RECURRENT},
        calibrated=(*c.fits, *c.rated_bandwidth, "elementwise"),
        strided={k: f.strided for k, f in c.fits.items() if f.strided != 1.0},
        off_tile={k: f.off_tile for k, f in c.fits.items() if k in SAMPLED},   # 1 too: a fit, not an older file
        one_tile_pass={k: f.one_tile_pass for k, f in c.fits.items() if f.one_tile_pass is not None},
        weights_overlap=False, pool_windows=True, layout_reorders=True, rated_bandwidth=dict(c.rated_bandwidth),
        channel_multiple=c.channel_multiple,
        fresh_output_bytes=None if c.first_touch_bandwidth is None else float(FRESH_OUTPUT_BYTES),
        first_touch_bandwidth=c.first_touch_bandwidth, runtime="eager", reference_s=c.reference_s,
        norm_plane_s=c.norm_plane_s)


def _notes(c: Calibration) -> dict[str, str]:
    """What each calibrated figure was measured on, beside it in the file."""
    def fit(kind: str, what: str) -> str:
        if kind not in c.fits:
            return ""
        return f"{what}, {len(c.samples.get(kind, []))} shapes, fit's median error {c.fits[kind].median_error:.0%}"
    return {
        "channel_multiple": f"float32 lanes of {torch.backends.cpu.get_cpu_capability()}: kernels tile channels by it",
        "peak_tflops.float32": f"fastest class's fitted plateau: {c.peak_macs / 1e9:.2f} GMAC/s",
        "memory.bandwidth_gbs": "large tensor copy, bytes read + written",
        "memory.onchip_mb": "largest CPU cache (sysfs)",
        "memory.weights_overlap": "in a network each layer's weights arrive cold and are packed before its math: "
                                  "their DRAM read adds",
        "memory.layout_reorders": "a convolution's input is converted to oneDNN's blocked layout and its output back, "
                                  "each one more read and write",
        "memory.onchip_bandwidth_gbs": "ReLU chains on cache-sized activations",
        "memory.transcendental_gbs": "GELU/softmax chains: per-element math, not bandwidth, bounds them",
        "memory.sigmoid_gbs": "SiLU/sigmoid chains: one exponential per element",
        "memory.norm_gbs": "batch norms right after a convolution, ResNet shapes (+ per_class_us.norm per call)",
        "memory.pool_windows": "pools' bytes are their input plus their output once per window element",
        "memory.pooling_gbs": "2-D max-pools: window loops, not bandwidth, bound them (+ per_class_us.pooling)",
        "memory.avgpool_gbs": "1-D and 2-D average pools (+ per_class_us.avgpool)",
        "memory.pooling1d_gbs": "1-D max-pools (+ per_class_us.pooling1d)",
        "memory.reduction_gbs": "means and maxima over a dimension, global average pools (+ per_class_us.reduction)",
        "memory.gather_gbs": "embedding lookups, rows read and written (+ per_class_us.gather)",
        "memory.fresh_output_mb": "outputs over 32 MiB: glibc maps fresh pages for them on every call",
        "memory.first_touch_gbs": "faulting those pages in: a fresh 48 MiB fill less a reused one",
        "efficiency.gemm": fit("gemm", "linear layers"),
        "efficiency.gemm_dram": fit("gemm_dram", "linear layers whose weights overflow half the cache"),
        "efficiency.conv": fit("conv", "3x3 convolutions"),
        "efficiency.pointwise": fit("pointwise", "1x1 convolutions"),
        "efficiency.depthwise": fit("depthwise", "depthwise convolutions"),
        "efficiency.attention": fit("attention", "fused scaled-dot-product attention"),
        "efficiency.conv1d": fit("conv1d", "1-D convolutions with a window over 1, 10 to 4000 steps"),
        "efficiency.im2col": fit("im2col", "convolutions of one small sample, which PyTorch runs as im2col and a GEMM"),
        "efficiency.conv3d": fit("conv3d", "3-D convolutions on small cubes"),
        **{f"efficiency.{cell}": fit(cell, f"{cell.upper()} calls, priced per step and per call") for cell in RECURRENT},
        "calibrated": "the op classes and memory kinds these figures were measured on",
        "calibration.reference_ms": "a fixed mix of convolutions, a linear layer and ReLUs (probes.reference_workload), "
                                    "timed in the rounds: measure times it again to see how the machine's speed moved",
        "efficiency.memory": "the bandwidth above is what a copy attains",
        "efficiency.half_util_macs": "matmuls without a layer shape",
        "efficiency.half_util_dims": "per GEMM dimension (rows, outputs, reduction; conv1d: "
                                     "and steps per sample): half the class's rate",
        "efficiency.strided": "a stride > 1 convolution's rate over a stride-1 one's",
        "efficiency.off_tile": "the rate of a convolution whose channels are off the kernels' tile (a depthwise one's "
                               "channels, a padded width) over one on it",
        "efficiency.one_tile_pass": "the rate of a convolution oneDNN runs one output tile a pass (112, 176 or 208 "
                                    "outputs) over one it runs several; a class without one takes conv's",
        "overhead.per_op_us": "an nn.ReLU call on a tiny tensor: eager dispatch per layer",
        "overhead.norm_plane_ns": "fitted: a batch norm's cost per (sample, channel) plane beyond its bytes "
                                  "(batches of short sequences)",
        "overhead.per_class_us": "fitted: oneDNN setup, weight reorders; lstm, gru, rnn: per step (gates and their dispatch); "
                                 "elementwise: a lone small op beyond dispatch",
        "overhead.per_call_us": "fitted: lstm, gru, rnn: per call of a layer and direction beyond its steps "
                                "(oneDNN sets its LSTM primitive up on every call)",
        "overhead.fuse_elementwise": "eager PyTorch runs every norm and activation as its own op",
        "sparsity.unstructured.compute_speedup": "dense kernels multiply zeros",
    }


def profile_toml(c: Calibration) -> str:
    """The calibration as a profile file that ``--hw`` accepts, written by the schema's writer."""
    quality = "".join(f"# {line}\n" for line in c.warnings() + (c.quality.lines() if c.quality else []))
    kept = ("# Timed with glibc keeping freed memory (mallopt): latencies assume a process whose allocator reuses\n"
            "# memory (jemalloc, tcmalloc, or MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647); with glibc's\n"
            "# defaults, networks with activations of tens of MB fault their pages in on every call.\n"
            if c.kept_memory else "")
    header = (f"# Measured by `costplan calibrate` on {datetime.date.today()}: {c.cpu}, {c.threads} threads, "
              f"torch {torch.__version__}.\n# Eager PyTorch at float32 on this machine; recalibrate after changing "
              f"threads or hardware.\n# Each class's rate = peak x efficiency x utilisation, utilisation = product "
              f"over the GEMM the layer\n# runs (rows = output pixels or tokens, outputs = channels written, "
              f"reduction = MACs per output;\n# 1-D convolutions: also steps per sample) of d / (d + half_util_dims), "
              f"fitted to layers sampled\n# as networks have them.\n{kept}{quality}")
    return write_profile(calibrated_profile(c), _notes(c), header)
