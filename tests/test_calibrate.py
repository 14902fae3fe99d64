"""Calibration (costplan/hardware/calibrate.py, probes.py, fitting.py): fits recover known parameters,
probes are the GEMMs the roofline sees, a busy machine gets no profile."""

from __future__ import annotations

import platform

import pytest

from costplan.api import load_graph
from costplan.hardware.profile import parse_profile
from costplan.hardware.roofline import dims, layer_latency
from costplan.sparsity import Effective
from tests.conftest import TOY


def _timed_once(probes, quick, progress, seed, load_limit):   # noqa: ANN001, ANN202
    """calibrate's rounds cut to one call of each probe after an untimed one: every probe built and
    run and every figure fitted as calibrate does, in seconds; test_cli's calibrate times them all."""
    from costplan.hardware.calibrate import Quality
    from costplan.hardware.timing import Timing

    timings = {}
    for key, (_, _, probe, _) in probes.items():
        probe()
        seconds = max(probe(), 1e-7)
        timings[key] = Timing(seconds, 0.0, (seconds,))
    return timings, Quality(len(probes), 1, 0.0, 0.0, 0, 0.0)


def test_a_calibration_file_states_what_was_measured(tmp_path, monkeypatch) -> None:
    """The TOML read on its own (tomllib, not the writer's parser) gives the figures calibrate measured."""
    import tomllib

    from costplan.hardware import calibrate as calibration
    from costplan.hardware import load_profile
    from costplan.hardware.calibrate import calibrate, profile_toml

    monkeypatch.setattr(calibration, "_measure", _timed_once)
    fitted = []

    def fit_class(shapes, seconds, memory, per_op, weights_first_s):   # noqa: ANN001, ANN202
        fitted.append((shapes, memory, weights_first_s))
        return real_fit(shapes, seconds, memory, per_op, weights_first_s=weights_first_s)
    real_fit = calibration.fit_class
    monkeypatch.setattr(calibration, "fit_class", fit_class)
    c = calibrate(quick=True, progress=False, strict=False)
    text = profile_toml(c)
    data = tomllib.loads(text)
    # each convolution's fit takes its layout reorders out before the math, as the profile adds them
    assert data["memory"]["layout_reorders"] is True and c.profile().layout_reorders
    for shapes, memory, first in fitted:
        kind = getattr(shapes[0], "kind", "attention")
        reorders = 2 * memory if kind in ("conv", "pointwise", "depthwise", "conv1d", "conv3d") else 0 * memory
        assert first == pytest.approx(calibration.weight_seconds(shapes, c.bandwidth) + reorders), kind
    assert {getattr(s[0], "kind", "attention") for s, _, _ in fitted} >= {"gemm", "conv", "depthwise", "im2col"}
    assert data["peak_tflops"]["float32"] * 1e12 / 2 == pytest.approx(c.peak_macs, rel=1e-5)
    assert data["memory"]["bandwidth_gbs"] * 1e9 == pytest.approx(c.bandwidth, rel=1e-3)
    assert data["memory"]["onchip_bandwidth_gbs"] * 1e9 == pytest.approx(c.onchip_bandwidth, rel=1e-3)
    assert data["memory"]["norm_gbs"] * 1e9 == pytest.approx(c.rated_bandwidth["norm"], rel=1e-3)
    assert data["overhead"]["per_op_us"] * 1e-6 == pytest.approx(c.per_op_s, rel=1e-3)
    for kind, fit in c.fits.items():
        assert data["efficiency"][kind] == pytest.approx(c.efficiency[kind], rel=1e-3)
        assert data["overhead"]["per_class_us"][kind] * 1e-6 == pytest.approx(fit.fixed_s, rel=1e-3, abs=1e-9)
        written = data["efficiency"]["half_util_dims"][kind]
        assert written == pytest.approx([v if v >= 1e-3 else 0 for v in fit.half_dims], rel=1e-3)
    assert data["threads"] == c.threads and data["channel_multiple"] == c.channel_multiple
    assert data["memory"]["weights_overlap"] is False and not c.profile().weights_overlap
    assert data["efficiency"]["strided"]["conv"] == pytest.approx(c.fits["conv"].strided, rel=1e-3)
    # strided 1x1s (ResNet shortcuts) are drawn and fitted apart, not priced by a 3x3's factor
    assert data["efficiency"]["strided"]["pointwise"] == pytest.approx(c.fits["pointwise"].strided, rel=1e-3)
    assert c.profile().strided["conv"] == pytest.approx(c.fits["conv"].strided, rel=1e-3)
    assert data["efficiency"]["off_tile"] == pytest.approx({k: c.fits[k].off_tile for k in calibration.SAMPLED})
    # on AVX-512's tile the conv class times its pairs and fits the one-tile-a-pass factor; no tile, no factor
    one_pass = {k: f.one_tile_pass for k, f in c.fits.items() if f.one_tile_pass is not None}
    assert data["efficiency"].get("one_tile_pass", {}) == pytest.approx(one_pass)
    assert ("conv" in one_pass) == (c.channel_multiple == 16) and set(one_pass) <= {"conv", "conv1d", "conv3d"}
    assert "self-check (held-out networks" in text and "interleaved rounds" in text    # the header grades it
    assert set(c.quality.check) == {"resnet18", "mobilenet_v2", "transformer encoder"}
    # every kind the roofline prices apart was timed, and the profile says so
    from costplan.hardware.profile import COST_KINDS

    assert set(data["calibrated"]) == set(COST_KINDS) == set(c.profile().calibrated)
    assert {"lstm", "gru", "rnn", "conv1d", "conv3d"} <= set(data["overhead"]["per_class_us"])
    assert data["calibration"]["reference_ms"] * 1e-3 == pytest.approx(c.reference_s, rel=1e-6)
    if platform.libc_ver()[0] == "glibc":     # timed without page faults, and the header says so
        assert c.kept_memory and "keeping freed memory" in text
        assert "first_touch_gbs" not in data["memory"] and "first_touch" not in c.samples   # nothing faults
    path = tmp_path / "local.toml"
    path.write_text(text)
    assert load_profile(path).bandwidth == pytest.approx(c.bandwidth, rel=1e-3)


def test_a_busy_machine_gets_no_profile(tmp_path) -> None:
    from costplan.hardware.calibrate import Quality, refusal
    from costplan.hardware.fitting import ClassFit

    fits = {"conv": ClassFit(1e11, (1.0, 1.0, 1.0), 0.0, 0.08)}
    quiet = Quality(200, 6, 0.02, 0.01, 3, 0.05)
    assert refusal(quiet, fits) is None
    busy = refusal(Quality(200, 6, 0.02, 0.01, 3, 0.95), fits)
    assert "other processes kept 0.95 cores busy" in busy and "no profile was written" in busy
    noisy = refusal(Quality(200, 6, 0.18, 0.45, 60, 0.0), fits)
    assert "45% of the timings still varied" in noisy
    assert "conv 40%" in refusal(quiet, {"conv": ClassFit(1e11, (1.0, 1.0, 1.0), 0.0, 0.40)})
    # a loose fit of a rarer kind (an LSTM step: oneDNN runs the whole sequence) warns, not refuses
    assert refusal(quiet, {"lstm": ClassFit(1e11, (1.0, 1.0, 1.0), 0.0, 0.40)}) is None


def test_calibration_fit_recovers_known_parameters() -> None:
    """Timings made by the model itself (rate 50 GMAC/s, halves 40/24/16, 30 us fixed) with 5%
    noise on a third of them: the fit finds the parameters and the calibrated prediction matches
    the roofline's for the same layer."""
    import numpy as np

    from costplan.hardware.fitting import _memory_seconds, fit_class
    from costplan.hardware.probes import sample_shapes

    shapes = sample_shapes("conv", 48, seed=3)
    memory = _memory_seconds(shapes, 20e9, 40e9, 32e6)
    u = np.array([s.rows / (s.rows + 40) * s.outputs / (s.outputs + 24) * s.reduction / (s.reduction + 16) for s in shapes])
    seconds = np.maximum(np.array([s.macs for s in shapes]) / (50e9 * u), memory) + 5e-6 + 30e-6
    seconds[::3] *= 1.05
    fit = fit_class(shapes, list(seconds), memory, per_op=5e-6)
    assert fit.rate == pytest.approx(50e9, rel=0.05)
    assert fit.half_dims == pytest.approx((40, 24, 16), rel=0.25)
    assert fit.fixed_s == pytest.approx(30e-6, rel=0.25)
    assert fit.median_error < 0.03
    # outliers: a busy spell triples a tenth of the timings; the robust loss keeps the parameters
    spiked = seconds.copy()
    spiked[1::10] *= 3.0
    robust_fit = fit_class(shapes, list(spiked), memory, per_op=5e-6)
    assert robust_fit.rate == pytest.approx(50e9, rel=0.10)
    # the fixed cost is under a third of the smallest layer's time, so spikes may move it; what
    # must hold is that the robust fit still predicts the clean timings
    fitted_u = np.array([np.prod([d / (d + h) for d, h in zip((s.rows, s.outputs, s.reduction), robust_fit.half_dims)])
                         for s in shapes])
    predicted = (np.maximum(np.array([s.macs for s in shapes]) / (robust_fit.rate * fitted_u), memory) + 5e-6
                 + robust_fit.fixed_s)
    clean = seconds / np.where(np.arange(len(seconds)) % 3 == 0, 1.05, 1.0)
    assert np.median(np.abs(predicted / clean - 1)) < 0.05
    assert robust_fit.median_error < 0.05        # the median error marks the fit good, the spikes as off
    assert fit.strided == pytest.approx(1.0, abs=0.03)       # these timings treat strides alike
    # strided convolutions at 0.8 of the rate: the fit finds the factor instead of blending the two
    slower = np.where([s.stride > 1 for s in shapes], 1 / 0.8, 1.0)
    timed = np.maximum(np.array([s.macs for s in shapes]) / (50e9 * u) * slower, memory) + 5e-6 + 30e-6
    assert fit_class(shapes, list(timed), memory, per_op=5e-6).strided == pytest.approx(0.8, rel=0.05)


def timed_by_the_model(shapes, rate: float, halves: tuple[float, float, float], slow, factor: float):  # noqa: ANN001, ANN201
    """Shapes timed by the class model itself (5 us per op, 30 us fixed, memory at 20 GB/s in DRAM and
    40 in a 32 MB cache): (memory seconds, seconds all at ``rate``, seconds with the ``slow`` ones at
    ``factor`` of it)."""
    import numpy as np

    from costplan.hardware.fitting import _memory_seconds

    memory = _memory_seconds(shapes, 20e9, 40e9, 32e6)
    u = np.array([s.rows / (s.rows + halves[0]) * s.outputs / (s.outputs + halves[1])
                  * s.reduction / (s.reduction + halves[2]) for s in shapes])
    math_s = np.array([s.macs for s in shapes]) / (rate * u)
    return (memory, np.maximum(math_s, memory) + 5e-6 + 30e-6,
            np.maximum(math_s / np.where(slow, factor, 1.0), memory) + 5e-6 + 30e-6)


def test_a_depthwise_fit_finds_the_rate_of_channels_off_the_tile() -> None:
    """Depthwise convolutions drawn on a tile of 16 (both kinds among the draws), timed by the model
    itself, those off the tile at 0.55 of the rate (72 against 80 channels ran 2x here): the fit finds
    0.55, so it prices both kinds as timed, where one rate for both prices those on the tile slow and
    those off it fast. Timings that treat them alike give a factor of 1."""
    import numpy as np

    from costplan.hardware.fitting import fit_class
    from costplan.hardware.probes import sample_shapes

    shapes = sample_shapes("depthwise", 48, seed=3, multiple=16)
    off = np.array([s.dims.off_tile for s in shapes])
    assert 10 <= off.sum() <= 38 and all(s.dims.off_tile == bool(s.cout % 16) for s in shapes)
    memory, alike, timed = timed_by_the_model(shapes, 50e9, (40, 4, 60), off, 0.55)
    fit = fit_class(shapes, list(timed), memory, per_op=5e-6)
    assert fit.off_tile == pytest.approx(0.55, rel=0.05) and fit.median_error < 0.03
    assert fit_class(shapes, list(alike), memory, per_op=5e-6).off_tile == pytest.approx(1.0, abs=0.03)


def test_a_convolution_fit_finds_the_rate_of_one_output_tile_a_pass() -> None:
    """2-D convolutions drawn on a tile of 16 with calibration's pairs (112 outputs beside 128, 176 and 208
    beside 192), timed by the model itself, those oneDNN runs one tile a pass at 0.75 of the rate: the
    fit finds 0.75; timings that treat them alike give 1. The draws alone hold none such, so without the
    pairs the class fits no factor of its own (None: it takes its leader's)."""
    import numpy as np

    from costplan.hardware.fitting import fit_class
    from costplan.hardware.probes import one_pass_pairs, sample_shapes

    drawn = sample_shapes("conv", 48, seed=1, multiple=16)
    shapes = drawn + one_pass_pairs("conv", 16)
    flagged = np.array([s.dims.one_tile_pass for s in shapes])
    assert flagged.sum() == 3 and not flagged[:len(drawn)].any() and not one_pass_pairs("conv", 8)
    memory, alike, timed = timed_by_the_model(shapes, 100e9, (40, 8, 20), flagged, 0.75)
    fit = fit_class(shapes, list(timed), memory, per_op=5e-6)
    assert fit.one_tile_pass == pytest.approx(0.75, rel=0.03) and fit.median_error < 0.05
    assert fit_class(shapes, list(alike), memory, per_op=5e-6).one_tile_pass == pytest.approx(1.0, abs=0.03)
    assert fit_class(drawn, list(alike[:len(drawn)]), memory[:len(drawn)], per_op=5e-6).one_tile_pass is None


def test_a_conv1d_fit_finds_the_steps_per_sample_its_kernel_blocks() -> None:
    """1-D convolutions timed by the model itself with a half length of 6 steps beside halves 40/24/16:
    the fit recovers it, and so prices a batch of 64 short sequences apart from one long one of the same
    rows. A 2-D class has no such figure."""
    import numpy as np

    from costplan.hardware.fitting import _memory_seconds, fit_class
    from costplan.hardware.probes import sample_shapes

    shapes = sample_shapes("conv1d", 48, seed=4)
    assert any(s.batch == 64 and s.spatial <= 40 for s in shapes)     # the draws hold batches of short sequences
    memory = _memory_seconds(shapes, 20e9, 40e9, 32e6)
    u = np.array([s.rows / (s.rows + 40) * s.outputs / (s.outputs + 24) * s.reduction / (s.reduction + 16)
                  * s.dims.length / (s.dims.length + 6) for s in shapes])
    seconds = np.maximum(np.array([s.macs for s in shapes]) / (50e9 * u), memory) + 5e-6 + 30e-6
    seconds[::3] *= 1.03
    fit = fit_class(shapes, list(seconds), memory, per_op=5e-6)
    assert len(fit.half_dims) == 4 and fit.half_dims[3] == pytest.approx(6, rel=0.25)
    assert fit.median_error < 0.03
    assert len(fit_class(sample_shapes("conv", 24, seed=4), [1e-3] * 24, np.zeros(24), per_op=5e-6).half_dims) == 3


def test_a_class_fit_adds_the_weight_read_as_the_calibrated_profile_does() -> None:
    """Calibrated profiles read each layer's weights before its math (weights_overlap = false); the
    fit reads its timings the same way. Linear layers made by that model (60 GMAC/s, halves 8/16/16,
    weights at 20 GB/s, 10 us fixed) are fitted back; fitted as if the read overlapped the math, the
    rate came out low and every weight-heavy layer was then priced with its read twice."""
    import numpy as np

    from costplan.hardware.fitting import _memory_seconds, fit_class, weight_seconds
    from costplan.hardware.probes import sample_shapes

    shapes = sample_shapes("gemm", 48, seed=5)
    act = _memory_seconds(shapes, 20e9, 40e9, 32e6, weights=False)
    first = weight_seconds(shapes, 20e9)
    u = np.array([s.rows / (s.rows + 8) * s.outputs / (s.outputs + 16) * s.reduction / (s.reduction + 16) for s in shapes])
    seconds = np.maximum(np.array([s.macs for s in shapes]) / (60e9 * u), act) + first + 5e-6 + 10e-6
    fit = fit_class(shapes, list(seconds), act, per_op=5e-6, weights_first_s=first)
    assert fit.rate == pytest.approx(60e9, rel=0.05) and fit.median_error < 0.03
    assert fit.half_dims == pytest.approx((8, 16, 16), rel=0.25)   # overlapped, the rows' half came out 19


def test_a_shape_timed_faster_than_its_weight_read_does_not_throw_the_rate_off() -> None:
    """A hot probe reads a linear layer's weights from cache, which the fit prices from DRAM: timed
    faster than that read, it is an outlier, not the scale of the rate. The rate was scaled by its
    MACs over 1e-9 s once: a calibration fitted linear layers at 524,288 GMAC/s (fit 205%), and every
    class's efficiency, a share of that peak, was clamped to its floor."""
    import numpy as np

    from costplan.hardware.fitting import _memory_seconds, fit_class, weight_seconds
    from costplan.hardware.probes import sample_shapes

    shapes = sample_shapes("gemm", 48, seed=5)
    act = _memory_seconds(shapes, 20e9, 40e9, 32e6, weights=False)
    first = weight_seconds(shapes, 20e9)
    u = np.array([s.rows / (s.rows + 8) * s.outputs / (s.outputs + 16) * s.reduction / (s.reduction + 16) for s in shapes])
    seconds = np.maximum(np.array([s.macs for s in shapes]) / (60e9 * u), act) + first + 5e-6 + 10e-6
    heaviest = int(np.argmax(first))
    seconds[heaviest] = 0.5 * first[heaviest]       # its weights were in cache
    fit = fit_class(shapes, list(seconds), act, per_op=5e-6, weights_first_s=first)
    assert fit.rate == pytest.approx(60e9, rel=0.1) and fit.median_error < 0.05


def test_recurrent_fit_tells_a_cost_per_call_from_a_cost_per_step() -> None:
    """LSTM calls made by the model (rate 60 GMAC/s, halves 8/100/50, 5 us per step, 300 us per call
    on top of what the other fits price once) over calibration's 10, 20 and 50 steps: the fit finds
    both fixed costs, where a per-step cost alone (as before) spread the call's over its steps."""
    import numpy as np

    from costplan.hardware.fitting import fit_recurrent
    from costplan.hardware.probes import recurrent_shapes

    shapes = [r for r in recurrent_shapes(45, seed=4) if r.mode == "LSTM"]
    memory = np.zeros(len(shapes))
    once = [20e-6 + 1e-9 * r.inputs * r.batch * r.steps for r in shapes]
    u = np.array([r.rows / (r.rows + 8) * r.outputs / (r.outputs + 100) * r.reduction / (r.reduction + 50) for r in shapes])
    seconds = [o + 300e-6 + r.steps * (r.macs / (60e9 * ui) + 5e-6) for o, r, ui in zip(once, shapes, u)]
    fit = fit_recurrent(shapes, seconds, once, memory)
    assert fit.call_s == pytest.approx(300e-6, rel=0.1)
    assert fit.fixed_s == pytest.approx(5e-6, abs=2e-6)
    assert fit.median_error < 0.02


def test_a_large_recurrent_layer_is_priced_from_calls_of_its_scale_not_from_an_extrapolation() -> None:
    """GRU calls from a model whose small calls run at a third of its plateau (halves 8/50/300, as
    fitted here), each timed 10% off at random (lognormal), over the calls calibrate times: a 1024-wide
    GRU at batch 64 over 50 steps is priced within 20% for every draw of the noise. Drawn calls alone
    (up to 2e8 MACs) priced it 57% slow on one of 20 draws, 30% or more on five."""
    import numpy as np

    from costplan.hardware.fitting import fit_recurrent
    from costplan.hardware.probes import RecurrentShape, recurrent_probes

    def seconds(r: RecurrentShape) -> float:
        u = r.rows / (r.rows + 8) * r.outputs / (r.outputs + 50) * r.reduction / (r.reduction + 300)
        return 300e-6 + r.steps * (r.macs / (60e9 * u) + 5e-6)

    big = RecurrentShape("GRU", 1024, 1024, 64, 50)
    for seed in range(15):
        shapes = [r for r in recurrent_probes(seed=seed) if r.mode == "GRU"]
        noise = np.exp(np.random.default_rng(seed).normal(0.0, 0.1, len(shapes)))
        once = [20e-6 + 1e-9 * r.inputs * r.batch * r.steps for r in shapes]
        fit = fit_recurrent(shapes, [o + seconds(r) * n for o, r, n in zip(once, shapes, noise)], once,
                            np.zeros(len(shapes)))
        u = np.prod([d / (d + h) for d, h in zip((big.rows, big.outputs, big.reduction), fit.half_dims)])
        priced = fit.call_s + big.steps * (big.macs / (fit.rate * u) + fit.fixed_s)
        assert priced / seconds(big) - 1 == pytest.approx(0.0, abs=0.2), seed


def test_a_recurrent_call_timed_faster_than_its_projection_is_refused_strictly_and_left_out_leniently() -> None:
    """A GRU call timed at 0.9 ms against 1.0 ms priced for its input projection alone was timed across
    a change of speed (CI's slow step, calibrating beside another worker, met this): strict calibration
    refuses, lenient calibration fits on the other calls, and refuses only where none is left."""
    from costplan.errors import CostplanError
    from costplan.hardware.calibrate import usable_calls

    calls, once = [0.9e-3, 2.0e-3, 3.0e-3], [1.0e-3, 1.0e-3, 1.0e-3]
    with pytest.raises(CostplanError, match="too busy to calibrate: one GRU call was timed faster than its input projection"):
        usable_calls("gru", calls, once, strict=True)
    assert usable_calls("gru", calls, once, strict=False) == [False, True, True]
    assert usable_calls("gru", [2e-3, 3e-3], [1e-3, 1e-3], strict=True) == [True, True]
    with pytest.raises(CostplanError):
        usable_calls("gru", [0.5e-3, 0.9e-3], [1e-3, 1e-3], strict=False)


def test_batch_norm_costs_a_fixed_part_and_its_bytes() -> None:
    """fit_linear recovers 40 us + bytes / 25 GB/s; a profile with those figures prices a batch norm
    on 64x56x56 (0.8 MB in, 0.8 MB out) at per-op + 40 us + 1.6 MB / 25 GB/s."""
    import torch

    from costplan.hardware.fitting import fit_linear

    samples = [(b, 5e-6 + 40e-6 + b / 25e9) for b in (0.4e6, 1.6e6, 6.4e6, 3.2e6)]
    fixed, rate = fit_linear(samples, per_op=5e-6)
    assert fixed == pytest.approx(40e-6) and rate == pytest.approx(25e9)
    profile = parse_profile({**TOY, "memory": {**TOY["memory"], "norm_gbs": 25.0},
                             "overhead": {"per_op_us": 1.0, "per_class_us": {"norm": 40.0}}}, "toy")
    layer = load_graph(torch.nn.BatchNorm2d(64).eval(), input="1x64x56x56").layers[0]
    lat = layer_latency(layer, Effective(0, layer.params), profile, "float32")
    nbytes = 2 * 64 * 56 * 56 * 4
    assert lat.memory_s == pytest.approx(layer.weights_read * 4 / 1e11 + nbytes / 25e9)  # norm rate, not 1e11
    assert lat.latency_s == pytest.approx(41e-6 + lat.memory_s)


def test_a_batch_norm_also_costs_each_of_its_planes() -> None:
    """fit_linear_planes recovers 40 us + bytes / 25 GB/s + 4 ns per (sample, channel) plane from
    norms of as many bytes over 64 to 8192 planes; a profile with 4 ns prices BatchNorm1d over 64
    samples of 128 channels and 10 steps 8192 x 4 ns above the same norm without the figure, pruned
    to half its channels half that, and a norm over (samples, features) and a ReLU not at all."""
    import torch

    from costplan.hardware.fitting import fit_linear_planes
    from costplan.hardware.probes import norm_shapes

    shapes = norm_shapes(quick=False)
    planes = [b * c for b, c, _, _ in shapes]
    assert min(planes) <= 64 and max(planes) >= 8192      # the probes tell bytes and planes apart
    samples = [(2.0 * b * c * side ** nd * 4, 5e-6 + 40e-6 + 2.0 * b * c * side ** nd * 4 / 25e9 + b * c * 4e-9)
               for b, c, side, nd in shapes]
    fixed, rate, plane = fit_linear_planes(samples, planes, per_op=5e-6)
    assert (fixed, rate, plane) == pytest.approx((40e-6, 25e9, 4e-9), rel=1e-3)
    data = {**TOY, "memory": {**TOY["memory"], "norm_gbs": 25.0},
            "overhead": {"per_op_us": 1.0, "per_class_us": {"norm": 40.0}}}
    with_planes = parse_profile({**data, "overhead": {**data["overhead"], "norm_plane_ns": 4.0}}, "toy")
    without = parse_profile(data, "toy")

    def cost(module: torch.nn.Module, shape: str, profile, keep: float = 1.0) -> float:
        layer = load_graph(module.eval(), input=shape).layers[0]
        return layer_latency(layer, Effective(0, layer.params, in_keep=keep, out_keep=keep), profile, "float32").latency_s

    norm = torch.nn.BatchNorm1d(128)
    assert cost(norm, "64x128x10", with_planes) - cost(norm, "64x128x10", without) == pytest.approx(8192 * 4e-9)
    assert (cost(norm, "64x128x10", with_planes, 0.5) - cost(norm, "64x128x10", without, 0.5)
            == pytest.approx(4096 * 4e-9))
    assert cost(norm, "64x128", with_planes) == pytest.approx(cost(norm, "64x128", without))
    assert cost(torch.nn.ReLU(), "64x128x10", with_planes) == pytest.approx(cost(torch.nn.ReLU(), "64x128x10", without))


def test_outputs_over_the_fresh_page_size_pay_for_first_touch() -> None:
    """A 1x1 conv writing 8x96x112x112 floats (38.5 MB, over 32 MiB) faults its pages in at
    2 GB/s on a profile that says so; the same conv at batch 4 (19.3 MB) and an in-place ReLU do not."""
    import torch

    data = {**TOY, "memory": {**TOY["memory"], "fresh_output_mb": 33.554432, "first_touch_gbs": 2.0}}
    profile, plain = parse_profile(data, "toy"), parse_profile(TOY, "toy")
    for batch, fresh in ((8, True), (4, False)):
        layer = load_graph(torch.nn.Conv2d(16, 96, 1, bias=False), input=f"{batch}x16x112x112").layers[0]
        eff = Effective(layer.macs, layer.params)
        extra = layer_latency(layer, eff, profile, "float32").memory_s - layer_latency(layer, eff, plain, "float32").memory_s
        assert extra == pytest.approx(batch * 96 * 112 * 112 * 4 / 2e9 if fresh else 0.0)
    relu = load_graph(torch.nn.ReLU(inplace=True), input="8x96x112x112").layers[0]
    assert relu.aten_ops == ("aten.relu_.default",)
    assert layer_latency(relu, Effective(0, 0), profile, "float32") == layer_latency(relu, Effective(0, 0), plain, "float32")


def test_calibration_shapes_are_the_gemms_the_roofline_sees() -> None:
    """The fit's half-dimensions are read back by roofline.dims: both must count rows, outputs and
    reduction (inputs x kernel window) alike, or a 3x3 conv's reduction half is off by 9x; a grouped
    convolution is the GEMM one group runs (8 outputs, 8 x 9 reduction for groups of 8)."""
    from costplan.hardware.probes import Shape, _module, sample_shapes

    grouped = Shape("conv", 64, 64, 14, 3, 1, 2, groups=8)
    assert (grouped.outputs, grouped.reduction, grouped.macs) == (8, 72, 2 * 14 * 14 * 64 * 72)
    shapes = [s for kind in ("gemm", "conv", "pointwise", "depthwise") for s in sample_shapes(kind, 4, seed=7)]
    assert any(s.groups > 1 for s in sample_shapes("conv", 48, seed=1))
    for shape in [*shapes, grouped]:
        module, x = _module(shape)
        layer = next(l for l in load_graph(module, input="x".join(map(str, x.shape))).layers if l.macs)
        seen = dims(layer, Effective(layer.macs, layer.params))
        assert (seen.rows, seen.outputs, seen.reduction) == (shape.rows, shape.outputs, shape.reduction), shape
        assert layer.macs == shape.macs


def test_a_calibrated_profile_names_every_kind_it_never_timed_with_its_share() -> None:
    """A profile states what its calibration timed (``calibrated``; an older calibrated file: its
    fitted classes, rated kinds and elementwise chains). Every layer kind outside it is named in a
    warning with the share of the predicted time it carries: the fixture, calibrated before 1-D
    convolutions, norms and im2col convolutions were probed, warns on each; shipped spec-sheet
    profiles on none."""
    import tomllib

    import torch

    import costplan
    from costplan.hardware.profile import COST_KINDS
    from tests.conftest import SmallCNN

    calibrated = "tests/data/avx2-calibrated.toml"
    conv1d = torch.nn.Sequential(torch.nn.Conv1d(1, 16, 5), torch.nn.ReLU(), torch.nn.Conv1d(16, 16, 3),
                                 torch.nn.Flatten(), torch.nn.Linear(16 * 34, 10))
    graph = costplan.load_graph(conv1d, input="8x1x40")
    estimate = costplan.estimate_latency(graph, calibrated)
    share = (estimate.layers["0"].latency_s + estimate.layers["2"].latency_s) / estimate.latency_s
    (warning,) = estimate.warnings
    assert "without timing any 1-D convolution: this model's 2 ('0', '2') carry" in warning
    assert f"carry {share:.0%} of its predicted time" in warning and share > 0.5
    assert costplan.estimate_latency(graph, "cpu-xeon").warnings == ()
    # one 8x8 image: PyTorch runs its convolutions as im2col and a GEMM, which the fixture never timed
    convs, norms, means = costplan.estimate_latency(costplan.load_graph(SmallCNN(), input="1x3x8x8"), calibrated).warnings
    assert "convolution of one small sample (PyTorch runs it as im2col and a GEMM): this model's 3 ('conv1', 'conv2', 'conv3')" in convs
    assert "normalisation: this model's 2 ('bn1', 'bn2')" in norms and "reduction (mean, max over a dimension, global pooling): this model's 1 ('mean')" in means
    with open(calibrated, "rb") as f:         # the same figures, stated as timed on every kind: silent
        data = tomllib.load(f)
    everything = parse_profile({**data, "calibrated": list(COST_KINDS), "efficiency": {**data["efficiency"], "half_util_dims": {
        **data["efficiency"]["half_util_dims"], "conv1d": [20.0, 7.0, 1.0, 2.0]}}}, "everything")
    assert costplan.estimate_latency(graph, everything).warnings == ()
    # at bfloat16 PyTorch runs those convolutions through oneDNN: priced as 3x3 convolutions, named as such
    bf16 = parse_profile({**data, "peak_tflops": {**data["peak_tflops"], "bfloat16": 0.3}}, "bf16")
    small = costplan.load_graph(SmallCNN(), input="1x3x8x8")
    assert not any("small sample" in w for w in costplan.estimate_latency(small, bf16, dtype="bfloat16").warnings)
    assert any("small sample" in w for w in costplan.estimate_latency(small, bf16).warnings)


def test_a_profile_calibrated_before_a_term_names_the_layers_it_prices_without_it() -> None:
    """A profile calibrated before costplan fitted a 1-D convolution's steps per sample (a fourth
    'conv1d' figure) or a batch norm's cost per plane (``norm_plane_ns``) prices those layers without
    them, ~15% fast on a dense 1-D ResNet: the estimate names them with their share and asks for a
    recalibration. With both figures, a fitted 0 included (written as 0, not left out), it is silent."""
    import tomllib

    import torch

    import costplan
    from costplan.hardware.profile import COST_KINDS
    from costplan.hardware.schema import profile_toml

    with open("tests/data/avx2-calibrated.toml", "rb") as f:
        data = {**tomllib.load(f), "calibrated": list(COST_KINDS)}
    halves = data["efficiency"]["half_util_dims"]
    model = torch.nn.Sequential(torch.nn.Conv1d(4, 16, 5), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                torch.nn.Conv1d(16, 16, 3), torch.nn.Flatten(), torch.nn.Linear(16 * 34, 10))
    graph = costplan.load_graph(model, input="8x4x40")
    old = costplan.estimate_latency(graph, parse_profile(
        {**data, "efficiency": {**data["efficiency"], "half_util_dims": {**halves, "conv1d": [20.0, 7.0, 1.0]}}}, "old"))
    (warning,) = old.warnings
    convs = (old.layers["0"].latency_s + old.layers["3"].latency_s) / old.latency_s
    assert f"a 1-D convolution's steps per sample: this model's 2 ('0', '3') carry {convs:.0%}" in warning
    assert f"a batch norm's cost per (sample, channel) plane: this model's 1 ('1') carry {old.share_of(['1']):.0%}" in warning
    assert "local was calibrated by an earlier costplan" in warning and "recalibrate" in warning
    current = parse_profile({**data, "efficiency": {**data["efficiency"], "half_util_dims": {**halves, "conv1d": [20.0, 7.0, 1.0, 0.0]}},
                             "overhead": {**data["overhead"], "norm_plane_ns": 0.0}}, "current")
    assert costplan.estimate_latency(graph, current).warnings == ()
    assert parse_profile(tomllib.loads(profile_toml(current)), "again").norm_plane_s == 0.0
    # a layer the term does not price stays unnamed: a norm over (samples, features) has no planes
    flat = costplan.load_graph(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8)), input="4x8")
    assert costplan.estimate_latency(flat, old.profile).warnings == ()


def test_a_profile_calibrated_before_layout_reorders_names_the_convolutions_through_dram() -> None:
    """A profile calibrated before costplan priced a convolution's layout reorders fitted them into
    its rates and fixed costs, which holds for tensors in cache: a convolution whose input or output
    goes through DRAM (over half the cache) is named with its share; one in cache is not, nor is
    either on a profile that prices the reorders."""
    import tomllib

    import torch

    import costplan
    from costplan.hardware.profile import COST_KINDS

    with open("tests/data/avx2-calibrated.toml", "rb") as f:
        data = {**tomllib.load(f), "calibrated": list(COST_KINDS)}
    old = parse_profile(data, "old")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(8),
                                torch.nn.Conv2d(64, 64, 3, padding=1))
    graph = costplan.load_graph(model, input="8x3x112x112")     # 8 x 64 x 112 x 112: 25.7 MB, over 16.8
    (warning,) = costplan.estimate_latency(graph, old).warnings
    assert f"layout reorders through DRAM (its input converted to oneDNN's blocked layout and its output back): " \
           f"this model's 1 ('0') carry {costplan.estimate_latency(graph, old).share_of(['0']):.0%}" in warning
    now = parse_profile({**data, "memory": {**data["memory"], "layout_reorders": True}}, "now")
    assert costplan.estimate_latency(graph, now).warnings == ()
    assert costplan.estimate_latency(graph, now).latency_s > costplan.estimate_latency(graph, old).latency_s


def test_a_profile_calibrated_before_the_off_tile_factor_names_the_layers_off_the_tile() -> None:
    """A profile calibrated before costplan fitted ``efficiency.off_tile`` priced a depthwise convolution
    of 72 channels (off a tile of 16) at the rate of one of 80, where it ran 2x as long: it is named with
    its share; one of 80 is not, nor is the 72 on a profile with the class's factor (1 included)."""
    import tomllib

    import torch

    import costplan
    from costplan.hardware.profile import COST_KINDS

    with open("tests/data/avx2-calibrated.toml", "rb") as f:
        data = {**tomllib.load(f), "calibrated": list(COST_KINDS), "channel_multiple": 16}
    data["memory"]["layout_reorders"] = True
    old = parse_profile(data, "old")
    model = torch.nn.Sequential(torch.nn.Conv2d(80, 80, 3, padding=1, groups=80), torch.nn.Conv2d(80, 72, 1),
                                torch.nn.Conv2d(72, 72, 3, padding=1, groups=72))
    graph = costplan.load_graph(model, input="1x80x14x14")
    estimate = costplan.estimate_latency(graph, old)
    (warning,) = estimate.warnings
    assert f"off the kernels' tile (a depthwise one of 72 channels ran 2x one of 80): this model's 1 ('2') " \
           f"carry {estimate.share_of(['2']):.0%}" in warning        # the 1x1 over 14 x 14 runs as im2col, a GEMM
    # the depthwise class's factor is what counts, though the 3-D class still lacks one
    factors = {"efficiency": {**data["efficiency"], "off_tile": {k: 1.0 for k in ("conv", "pointwise", "depthwise",
                                                                                    "conv1d")}}}
    assert costplan.estimate_latency(graph, parse_profile({**data, **factors}, "now")).warnings == ()
    # under a plan the widths are the plan's: cut to 64, that depthwise is on the tile and not named
    model.append(torch.nn.Conv2d(72, 8, 1))
    graph = costplan.load_graph(model, input="1x80x14x14")
    assert "this model's 1 ('2')" in costplan.estimate_latency(graph, old).warnings[0]
    plan = costplan.uniform_plan(graph, "channel", 0.11, keep_ends_dense=False)
    assert plan.layers and costplan.estimate_latency(graph, old, plan).warnings == ()


def test_a_profile_calibrated_before_the_one_tile_pass_factor_names_the_convolutions_it_misprices() -> None:
    """A profile calibrated before costplan fitted ``efficiency.one_tile_pass`` priced a 1-D convolution of
    112 outputs over 198 steps at the rate of one of 128 (the text CNN's, 36% fast): it is named with its
    share; the 128-wide one is not, nor is either on a profile with conv's factor, which conv1d follows."""
    import tomllib

    import torch

    import costplan
    from costplan.hardware.profile import COST_KINDS

    with open("tests/data/avx2-calibrated.toml", "rb") as f:
        data = {**tomllib.load(f), "calibrated": list(COST_KINDS), "channel_multiple": 16}
    data["memory"]["layout_reorders"] = True
    data["efficiency"]["off_tile"] = {k: 1.0 for k in ("conv", "pointwise", "depthwise", "conv1d", "conv3d")}
    model = torch.nn.Sequential(torch.nn.Conv1d(128, 128, 3), torch.nn.Conv1d(128, 112, 3))
    graph = costplan.load_graph(model, input="16x128x200")
    estimate = costplan.estimate_latency(graph, parse_profile(data, "old"))
    (warning,) = estimate.warnings
    assert f"one output tile a pass (one of 112 outputs ran longer than one of 128): this model's 1 ('1') " \
           f"carry {estimate.share_of(['1']):.0%}" in warning
    data["efficiency"]["one_tile_pass"] = {"conv": 0.8}
    data["efficiency"]["half_util_dims"]["conv1d"] = [20.0, 7.0, 5.0, 0.0]    # steps per sample, fitted too
    assert costplan.estimate_latency(graph, parse_profile(data, "now")).warnings == ()


def test_a_profile_calibrated_before_strided_1x1_probes_names_the_strided_shortcuts(resnet50_graph) -> None:
    """A profile calibrated before calibration drew strided 1x1 convolutions prices them at conv's strided
    factor (its shortcuts 41-44% fast where their own read 28-33%): ResNet-50's three strided shortcuts
    are named with their share, its unstrided 1x1s (the first stage's shortcut among them) are not, and a
    profile with pointwise's own factor names none."""
    import tomllib

    import costplan
    from costplan.hardware.profile import COST_KINDS

    with open("tests/data/avx2-calibrated.toml", "rb") as f:
        data = {**tomllib.load(f), "calibrated": list(COST_KINDS)}
    data["efficiency"]["strided"] = {"conv": 0.88}
    estimate = costplan.estimate_latency(resnet50_graph, parse_profile(data, "old"))
    named = estimate.predated["strided_pointwise"]
    assert named == ("layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0")
    assert any(f"a strided 1x1 convolution's rate (without it, a strided 3x3's: ResNet-50's strided shortcuts " \
               f"read 41-44% fast, 28-33% with it): this model's 3 " in w and f"{estimate.share_of(named):.0%}" in w
               for w in estimate.warnings)
    data["efficiency"]["strided"] = {"conv": 0.88, "pointwise": 0.7}
    assert "strided_pointwise" not in costplan.estimate_latency(resnet50_graph, parse_profile(data, "now")).predated


@pytest.mark.slow   # real timing, a real calibration or a 7B graph: CI runs it in its own step
def test_a_held_out_network_is_timed_on_its_second_call_in_a_row() -> None:
    """Users time repeated inference: a check probe runs the network once untimed, then times the
    next call (here the first of each pair sleeps 50 ms, the second does not)."""
    import time

    import torch

    from costplan.hardware.probes import check_probes
    from costplan.models import Instance

    class Alternating(torch.nn.Module):
        calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            Alternating.calls += 1
            if Alternating.calls % 2:
                time.sleep(0.05)
            return x

    probes = check_probes({"net": Instance(Alternating(), (torch.zeros(1),))})
    kind, _, probe, _ = probes["check net"]
    assert kind == "check" and probe() < 0.02 and Alternating.calls == 2
    assert probes["reference"][0] == "reference"     # calibrate's reference workload rides along


def test_fused_attention_is_its_own_class_with_gemm_figures_by_default() -> None:
    """softmax(Q K^T) V over 8 heads x 64 tokens x 32 wide (2.1 MMAC) as one fused kernel: its GEMM is
    512 rows x 32 outputs x 64 keys; a profile with attention figures (efficiency 0.25, half at 64
    keys: utilisation 1/2) gives 2.1 MMAC / (1e12 x 0.25 x 0.5) = 16.8 us, one without gives it the
    GEMM's (0.5, no curve): 4.2 us."""
    import torch

    from costplan.hardware.roofline import op_class
    from costplan.trace import trace

    class Attention(torch.nn.Module):
        def forward(self, q: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.scaled_dot_product_attention(q, q, q)

    graph = trace(Attention(), (torch.randn(1, 8, 64, 32),))
    (layer,) = [l for l in graph.layers if l.macs]
    assert op_class(layer) == "attention" and layer.macs == 8 * 64 * 64 * 64
    eff = Effective(layer.macs, 0)
    shape = dims(layer, eff)
    assert (shape.rows, shape.outputs, shape.reduction) == (512, 32, 64)
    tuned = parse_profile({**TOY, "efficiency": {**TOY["efficiency"], "attention": 0.25,
                                                 "half_util_dims": {"attention": [0, 0, 64]}}}, "toy")
    assert layer_latency(layer, eff, tuned, "float32").compute_s == pytest.approx(layer.macs / (1e12 * 0.25 * 0.5))
    plain = parse_profile(TOY, "toy")
    assert plain.efficiency["attention"] == plain.efficiency["gemm"]
    assert layer_latency(layer, eff, plain, "float32").compute_s == pytest.approx(layer.macs / (1e12 * 0.5))


@pytest.mark.slow   # real timing, a real calibration or a 7B graph: CI runs it in its own step
def test_a_lasting_load_is_refused_without_timing_every_round(monkeypatch) -> None:
    """Load is read after every round; from the second on, a load over the limit refuses at once
    rather than after the whole timing (52 s with one core busy here). A limit of -1 core is
    exceeded by any load; one cheap probe stands in for the microbenchmarks."""
    import costplan.hardware.calibrate as calibration
    from costplan.errors import CostplanError
    from costplan.hardware.timing import timed

    monkeypatch.setattr(calibration, "_probes", lambda *_: {"tick": ("overhead", 0.0, timed(lambda: None), 1.0)})
    with pytest.raises(CostplanError, match="after 2 of 4 rounds of timing, the machine was too busy"):
        calibration.calibrate(quick=True, progress=False, check=False, load_limit=-1.0)


def test_probes_are_fitted_on_the_widths_their_kernels_run() -> None:
    """Convolutions made by a machine whose kernels tile channels by 16 (a 24-wide layer runs as 32,
    as oneDNN ran them on AVX-512; 60 GMAC/s, halves 8/16/16) are fitted back from probes drawn with
    that tile. The roofline prices traced layers padded so; a fit on the MACs asked for rather than
    the MACs run read the padded probes as slow and the rest as fast."""
    import numpy as np

    from costplan.hardware.fitting import fit_class
    from costplan.hardware.probes import sample_shapes

    shapes = sample_shapes("conv", 48, seed=3, multiple=16)
    assert sum(s.dims.padding > 1 for s in shapes) >= 10     # the draw has widths between tiles
    u = np.array([s.rows / (s.rows + 8) * s.outputs / (s.outputs + 16) * s.reduction / (s.reduction + 16) for s in shapes])
    seconds = np.array([s.macs * s.dims.padding for s in shapes]) / (60e9 * u) + 5e-6 + 10e-6
    fit = fit_class(shapes, list(seconds), np.zeros(len(shapes)), per_op=5e-6)
    assert fit.rate == pytest.approx(60e9, rel=0.05) and fit.median_error < 0.02


def test_linear_and_convolution_probes_read_their_weights_cold(monkeypatch) -> None:
    """Each call of a linear or convolution probe runs on a weight in the next slot of a pool several
    caches large, every slot in turn, as a network's layers find their weights evicted by a whole
    forward pass of others. Fails if a probe reads the layer's own weight, or one slot again and again."""
    import torch

    from costplan.hardware import probes

    for name, layer, x in (("linear", torch.nn.Linear(4, 3), torch.randn(2, 4)),
                           ("conv2d", torch.nn.Conv2d(2, 3, 1, bias=False), torch.randn(1, 2, 2, 2))):
        pool = torch.randn(layer.weight.numel() * 5 + 1)
        seen = []
        real = getattr(torch.nn.functional, name)

        def recording(inp, weight, *args, real=real, layer=layer, pool=pool, seen=seen):   # noqa: ANN001, ANN202
            seen.append(weight.data_ptr())
            assert weight.shape == layer.weight.shape and weight.untyped_storage().data_ptr() == pool.data_ptr()
            return real(inp, weight, *args)
        monkeypatch.setattr(torch.nn.functional, name, recording)
        probe = probes.cold_weights(layer, x, pool)
        for _ in range(10):
            assert probe() > 0
        assert len(set(seen)) == 5 and all(a != b for a, b in zip(seen, seen[1:])), name
    assert probes.COLD_CACHES * probes.cache_bytes() >= 2 * probes.cache_bytes()


def test_an_embedding_probe_looks_up_new_ids_in_a_cold_table(monkeypatch) -> None:
    """A lookup probe runs as a network's embedding does: on new ids each call, every set in turn, its
    table read since by a cache's worth of other data (the next cache-sized slice of the pool, read
    outside the timed span). Hot, on the same ids, BERT's word embeddings took 0.012 ms against
    0.06-0.14 ms cold, and the text models' lookups were priced 3-7x fast."""
    import torch

    from costplan.hardware import probes

    monkeypatch.setattr(probes, "cache_bytes", lambda: 64)          # a slice: 16 floats
    read: list[int] = []
    looked_up: list[torch.Tensor] = []

    class Pool:
        def numel(self) -> int:
            return 16 * 3 + 5                                         # three slices and a remainder

        def __getitem__(self, part: slice) -> torch.Tensor:
            assert part.stop - part.start == 16
            read.append(part.start)
            return torch.zeros(16)

    class Table(torch.nn.Module):
        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            assert len(read) == len(looked_up) + 1                    # the pool was read before this lookup
            looked_up.append(ids)
            return ids

    ids = [torch.full((2, 3), k) for k in range(4)]
    probe = probes.cold_gather(Table(), ids, Pool())
    for _ in range(8):
        assert probe() >= 0
    assert [int(i[0, 0]) for i in looked_up] == [1, 2, 3, 0, 1, 2, 3, 0]
    assert sorted(set(read)) == [0, 16, 32] and all(a != b for a, b in zip(read, read[1:]))
    # calibration's lookups are such probes
    made = [v[2] for k, v in probes._probes({}, quick=True).items() if v[0] == "gather"]
    assert made and all(p.__qualname__.startswith("cold_gather.") for p in made)


def test_every_convolution_class_is_calibrated_on_maps_larger_than_the_cache() -> None:
    """Random draws put few channels on large maps: none of 48 depthwise draws read over 15 MB, while
    MobileNet-V2 at batch 8 runs a depthwise convolution over 38.5 MB, priced 11-23% fast without such
    probes. Calibration adds early-stage convolutions at batch 8 whose input and output fill a 32 MB
    cache (over 24 MB) to each convolution class it fits with them."""
    from costplan.hardware.calibrate import layer_shapes

    cache = 32 * 2 ** 20
    for quick in (False, True):
        shapes = layer_shapes(quick, seed=0, tile=16, onchip_bytes=cache)
        for kind in ("conv", "pointwise", "depthwise"):
            large = [s for s in shapes[kind]
                     if 4 * s.batch * (s.cin * s.spatial ** 2 + s.cout * (s.spatial // s.stride) ** 2) > 0.75 * cache]
            assert len(large) >= 2, (kind, quick)
            assert {(s.cin, s.cout, s.spatial) for s in large} >= {(96, 96, 112)} if kind == "depthwise" else True
