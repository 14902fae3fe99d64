"""Fitting calibration's timings: per op class a plateau rate, three half-dimensions and a fixed cost
(scipy's ``least_squares`` on log time), saturation curves, and linear byte rates.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares, nnls

from costplan.hardware.probes import CHAIN, AttentionShape, RecurrentShape, Shape
from costplan.hardware.roofline import activation_cost

@dataclass(frozen=True)
class ClassFit:
    """One op class fitted to its sampled layers: seconds = max(MACs / (rate x utilisation), memory
    seconds) + per-op overhead + ``fixed_s``, utilisation = product of d / (d + half) over the GEMM
    dimensions (rows, outputs, reduction; and a direct 1-D convolution's steps per sample where its
    shapes have them), times ``strided`` for a strided convolution, ``off_tile`` for one whose
    channels are off the kernels' tile (:func:`costplan.hardware.roofline.off_tile`) and ``one_tile_pass``
    for one run one output tile a pass (:func:`costplan.hardware.roofline.one_tile_a_pass`)."""

    rate: float                            # MAC/s plateau
    half_dims: tuple[float, ...]           # rows, outputs, reduction[, 1-D steps per sample] at half the plateau
    fixed_s: float                         # seconds per call beyond the generic per-op overhead
    median_error: float                    # median |predicted / measured - 1| over the samples
    strided: float = 1.0                   # rate of a stride > 1 layer over a stride-1 one's
    call_s: float = 0.0                    # recurrent cells: seconds per call beyond its steps (fit_recurrent)
    off_tile: float = 1.0                  # rate of a layer with channels off the kernels' tile over one on it
    one_tile_pass: float | None = None     # rate of a convolution run one output tile a pass over one run
                                           # several; None where too few shapes ran so to fit it


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


def _memory_seconds(shapes: Sequence[Shape | AttentionShape], bandwidth: float, onchip_bandwidth: float, onchip_bytes: float,
                    weights: bool = True) -> np.ndarray:
    """Weights from DRAM (unless ``weights`` is False), activations in cache or DRAM: the roofline's
    memory side for each sampled shape."""
    def activation(nbytes: float) -> float:
        return activation_cost(nbytes, bandwidth, onchip_bytes, onchip_bandwidth)[0]
    return np.array([weights * s.weight_bytes / bandwidth + sum(map(activation, s.activation_bytes)) for s in shapes])


def weight_seconds(shapes: Sequence[Shape | AttentionShape], bandwidth: float) -> np.ndarray:
    """Each sampled shape's weights read from DRAM, seconds."""
    return np.array([s.weight_bytes / bandwidth for s in shapes], dtype=float)


# shapes run one output tile a pass that a class needs to fit its own factor (else it takes its leader's)
LEAST_ONE_PASS = 3


def fit_class(shapes: Sequence[Shape | AttentionShape], seconds: list[float], memory_s: np.ndarray, per_op: float,
              weights_first_s: np.ndarray | None = None) -> ClassFit:
    """Fit :class:`ClassFit` to timed shapes on log time, weighted by the square root of time, with a
    soft-L1 loss: one shape timed while the machine was busy does not drag the whole fit.
    ``weights_first_s``: the weights' DRAM read, added before the math as the roofline adds it where
    a profile's weights do not overlap (``weights_overlap = false``, every calibrated CPU); without it
    the weights are in ``memory_s``, overlapped."""
    first = np.zeros(len(shapes)) if weights_first_s is None else np.asarray(weights_first_s, dtype=float)
    strided = np.array([getattr(s, "stride", 1) > 1 for s in shapes])
    return _fit(shapes, seconds, memory_s, first + per_op, np.ones(len(shapes)), strided, per_call=False)


def fit_recurrent(shapes: Sequence[RecurrentShape], seconds: Sequence[float], once_s: Sequence[float],
                  memory_s: np.ndarray) -> ClassFit:
    """Fit a recurrent cell's step (:class:`ClassFit`: rate, half dimensions, fixed cost per step) and
    its fixed cost per call (``call_s``) to whole calls: ``seconds = once_s + call_s + steps x (max(MACs
    / (rate x utilisation), memory_s) + fixed_s)``, ``once_s`` being what the other classes' fits price
    (dispatch, the input projection, weights and sequence). Probes of 10, 20 and 50 steps tell the two
    fixed costs apart: oneDNN sets its LSTM primitive up on every call (about 0.3 ms on 2 EPYC cores),
    which a per-step figure alone took as 6-30 us more per step, mispricing held-out calls by 30-70%."""
    return _fit(shapes, seconds, memory_s, np.asarray(once_s, dtype=float),
                np.array([s.steps for s in shapes], dtype=float), np.zeros(len(shapes), dtype=bool), per_call=True)


def _fit(shapes: Sequence[Shape | AttentionShape | RecurrentShape], seconds: Sequence[float], memory_s: np.ndarray,
         base_s: np.ndarray, repeats: np.ndarray, strided: np.ndarray, per_call: bool) -> ClassFit:
    """The one fit behind :func:`fit_class` and :func:`fit_recurrent`: ``seconds = base_s + call_s +
    repeats x (max(MACs / (rate x utilisation), memory_s) + fixed_s)``, utilisation the product of d / (d
    + half) over the GEMM dimensions, times the strided factor where ``strided`` and the off-tile factor
    where a shape's channels are off the kernels' tile (its ``dims.off_tile``) and the one-tile-a-pass
    factor where it runs so (``dims.one_tile_pass``); ``call_s`` is fitted only with ``per_call``, each
    factor only where some shape has it (one tile a pass: at least :data:`LEAST_ONE_PASS` shapes), and a
    half length only where some shape is a direct 1-D convolution (its ``dims.length``)."""
    # the MACs a kernel runs, widths padded to its channel tile, as the roofline prices them
    macs = np.array([s.macs * s.dims.padding for s in shapes], dtype=float)
    dims = np.array([(s.rows, s.outputs, s.reduction) for s in shapes], dtype=float)
    # oneDNN blocks a direct 1-D convolution's steps within each sample: 64 samples of 10 steps ran
    # 28% slower per MAC than one of 640 on a 2-core EPYC (of 40 steps, 1-10%), the same rows to a GEMM
    length = np.array([s.dims.length for s in shapes], dtype=float)
    off = np.array([s.dims.off_tile for s in shapes], dtype=bool)
    by_off = bool(off.any())
    one_pass = np.array([s.dims.one_tile_pass for s in shapes], dtype=bool)
    by_pass = int(one_pass.sum()) >= LEAST_ONE_PASS
    # the parameters: rate, 3 halves, fixed, strided, per call[, off tile][, one tile a pass][, length]
    at_pass = 7 + by_off
    at_length = at_pass + by_pass
    by_length = bool((length > 0).any())
    measured = np.array(seconds, dtype=float)
    # the scale of the rate, from the rates the shapes attained beyond their fixed part: a shape timed
    # faster than that part (a linear layer whose weights a hot probe read from cache, priced from
    # DRAM), or barely slower, is left out of it, or its MACs over 1e-9 s set the rate's bounds
    spare = measured - base_s
    ok = spare > 0
    attained = macs[ok] * repeats[ok] / spare[ok] if ok.any() else macs * repeats / measured
    top = float(np.percentile(attained, 90))

    def predict(p: np.ndarray) -> np.ndarray:
        u = np.prod(dims / (dims + p[1:4]), axis=1) * np.where(strided, p[5], 1.0)
        if by_off:
            u = u * np.where(off, p[7], 1.0)
        if by_pass:
            u = u * np.where(one_pass, p[at_pass], 1.0)
        if by_length:
            u = u * np.where(length > 0, length / (length + p[at_length]), 1.0)
        return base_s + p[6] * 1e-6 + repeats * (np.maximum(macs / (p[0] * top * u), memory_s) + p[4] * 1e-6)

    # long layers weigh more: a network's total is mostly its long layers, and a 30 us layer's
    # relative error matters less than a 3 ms one's. Strided convolutions read their input with
    # gaps and run slower per MAC (fitted here at 0.81-0.86 of the rate, beside the cost per call):
    # their own factor, or stride-1 layers (most of a ResNet) are predicted slow by the blend of the two.
    weight = np.sqrt(measured / np.median(measured))
    high = 1.5 if strided.any() else 1.0 + 1e-9
    fit = least_squares(lambda p: weight * np.log(predict(p) / measured),
                        x0=(1.0, 16.0, 16.0, 16.0, 5.0, 1.0, 50.0 if per_call else 0.0, *(0.9,) * by_off,
                            *(0.9,) * by_pass, *(4.0,) * by_length),
                        loss="soft_l1", f_scale=0.1,
                        bounds=([0.3, 0, 0, 0, 0, 0.3, 0, *(0.2,) * by_off, *(0.3,) * by_pass, *(0.0,) * by_length],
                                [5.0, 1e5, 1e4, 1e4, 1e3, high, 1e4 if per_call else 1e-9, *(1.0,) * by_off,
                                 *(1.0,) * by_pass, *(1e3,) * by_length]))
    error = float(np.median(np.abs(predict(fit.x) / measured - 1)))
    halves = tuple(float(v) for v in fit.x[1:4]) + ((float(fit.x[at_length]),) if by_length else ())
    return ClassFit(float(fit.x[0]) * top, halves, float(fit.x[4]) * 1e-6, error,
                    float(fit.x[5]) if strided.any() else 1.0, float(fit.x[6]) * 1e-6 if per_call else 0.0,
                    float(fit.x[7]) if by_off else 1.0, float(fit.x[at_pass]) if by_pass else None)


def fit_linear(samples: list[tuple[float, float]], per_op: float) -> tuple[float, float]:
    """(fixed seconds, bytes/s) of ``seconds - per_op = fixed + bytes / rate`` over (bytes, seconds)
    samples, both non-negative (scipy's NNLS)."""
    fixed, rate, _ = fit_linear_planes(samples, [0.0] * len(samples), per_op)
    return fixed, rate


def fit_linear_planes(samples: list[tuple[float, float]], planes: Sequence[float], per_op: float
                      ) -> tuple[float, float, float]:
    """(fixed seconds, bytes/s, seconds per plane) of ``seconds - per_op = fixed + bytes / rate + planes
    x per_plane`` over (bytes, seconds) samples and each one's planes (a batch norm's samples x
    channels), all non-negative (scipy's NNLS)."""
    nbytes = np.array([b for b, _ in samples], dtype=float)
    seconds = np.array([t for _, t in samples]) - per_op
    columns = [np.ones_like(nbytes), nbytes] + ([np.asarray(planes, dtype=float)] if any(planes) else [])
    coef, _ = nnls(np.column_stack(columns), seconds)
    return float(coef[0]), 1.0 / max(float(coef[1]), 1e-15), float(coef[2]) if len(coef) > 2 else 0.0


def _onchip(samples: list[tuple[float, float]], per_op: float) -> float:
    """Bytes/s at which memory-only ops (ReLU, GELU/softmax) move cache-sized activations inside a
    network, from chains of them (each op reading what the previous one wrote), less the per-op overhead."""
    return statistics.median(nbytes / CHAIN / max(seconds - per_op, 1e-9) for nbytes, seconds in samples)
