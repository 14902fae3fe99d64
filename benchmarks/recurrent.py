"""Are large recurrent layers priced from a measurement or from an extrapolation?

    python benchmarks/recurrent.py [--trials 3]

Each trial calibrates once, then times eight recurrent models it never saw, round-robin, in the same
process: two-layer LSTMs and GRUs 1024 wide at batch 64 (past the scale of every drawn call, which
the anchors are for) and 1, a 256-wide LSTM at batch 128, a GRU at 8 x 100 steps, a small LSTM, and
the fidelity benchmark's LSTM tagger and Conv1d+GRU+transformer model. From the same timings it fits
each recurrent cell twice: on every call calibrate timed (``probes.recurrent_probes``: the drawn calls
and the anchors, as calibrate fits) and on the drawn calls alone, as before the anchors. One set of
timings for both, so the machine's drift, which moves every row, cannot favour either. Prints each
trial's recurrent plateaus (GMAC/s) both ways, the errors, and per variant the median and largest
|error| over every row and over the two large models' rows. All rows are held out.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).parent))   # seqmodels, beside this script

import seqmodels  # noqa: E402

import costplan  # noqa: E402
from costplan.hardware import calibrate as calibration  # noqa: E402
from costplan.hardware.fitting import ClassFit  # noqa: E402
from costplan.hardware.probes import RecurrentShape, recurrent_anchors  # noqa: E402
from costplan.measure import time_round_robin  # noqa: E402
from costplan.models import Instance  # noqa: E402


class Recurrent(nn.Module):
    """A two-layer recurrent stack over batch-first sequences, returning its outputs."""

    def __init__(self, cell: str, width: int) -> None:
        super().__init__()
        self.rnn = getattr(nn, cell)(width, width, num_layers=2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


MODELS = {  # name -> (cell, width, input batch x steps x width)
    "lstm 1024 b64": ("LSTM", 1024, (64, 50, 1024)),
    "gru 1024 b64": ("GRU", 1024, (64, 50, 1024)),
    "lstm 256 b128": ("LSTM", 256, (128, 50, 256)),
    "lstm 1024 b1": ("LSTM", 1024, (1, 50, 1024)),
    "gru 256 b8 x100": ("GRU", 256, (8, 100, 256)),
    "lstm 128 b16 x20": ("LSTM", 128, (16, 20, 128)),
}
SEQUENCE_MODELS = ("stacked_lstm", "conv_gru_transformer")   # benchmarks/seqmodels.py
# the models whose recurrent GEMMs lie past every drawn call's (2e8 MACs a call): what the anchors are for
LARGE = ("lstm 1024 b64", "gru 1024 b64")


def drawn(shape: RecurrentShape) -> bool:
    """Whether a timed call is one of the drawn ones, not an anchor."""
    return shape not in recurrent_anchors()


def with_recurrent_fits(cal: calibration.Calibration, fits: dict[str, ClassFit]) -> calibration.Calibration:
    """``cal`` with its recurrent fits replaced, peak and efficiencies as calibrate derives them."""
    fits = {**cal.fits, **fits}
    peak = max(f.rate for f in fits.values())
    return dataclasses.replace(cal, fits=fits, peak_macs=peak,
                               efficiency={k: float(min(1.0, max(0.005, f.rate / peak))) for k, f in fits.items()})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    instances = {k: Instance(Recurrent(cell, width).eval(), (torch.randn(*s),)) for k, (cell, width, s) in MODELS.items()}
    for name in SEQUENCE_MODELS:
        module, x = seqmodels.MODELS[name]()
        instances[name] = Instance(module.eval(), (x,))
    graphs = {k: costplan.load_graph(i.module, input="x".join(map(str, i.args[0].shape))) for k, i in instances.items()}
    fit = calibration.fit_recurrent
    errors: dict[str, list[float]] = {"with anchors": [], "drawn calls only": []}
    start = time.perf_counter()
    for trial in range(args.trials):
        timed: dict[str, tuple] = {}

        def capture(shapes, seconds, once, memory):  # noqa: ANN001, ANN202
            timed[shapes[0].recurrent.cell] = (shapes, seconds, once, memory)
            return fit(shapes, seconds, once, memory)
        calibration.fit_recurrent = capture
        try:
            cal = calibration.calibrate(progress=False, check=False, seed=trial)
        finally:
            calibration.fit_recurrent = fit
        with torch.inference_mode():
            runs = {k: statistics.median(v) for k, v in time_round_robin(instances, rounds=5).items()}
        alone = {}
        for cell, (shapes, seconds, once, memory) in timed.items():
            keep = [i for i, s in enumerate(shapes) if drawn(s)]
            alone[cell] = fit([shapes[i] for i in keep], [seconds[i] for i in keep], [once[i] for i in keep], memory[keep])
        for variant, profile in (("with anchors", cal.profile()),
                                 ("drawn calls only", with_recurrent_fits(cal, alone).profile())):
            rates = ", ".join(f"{c} {profile.peak_for('float32', c) * profile.efficiency_for('float32', c) / 1e9:.0f}"
                              for c in ("lstm", "gru", "rnn"))
            print(f"trial {trial}, {variant}: plateaus {rates} GMAC/s")
            for name, graph in graphs.items():
                predicted = costplan.estimate_latency(graph, profile).latency_s
                errors[variant].append(predicted / runs[name] - 1)
                print(f"  {name:20s} predicted {predicted * 1e3:8.1f} ms  measured {runs[name] * 1e3:8.1f} ms  "
                      f"{predicted / runs[name] - 1:+6.1%}")
    large = [i for i, name in enumerate(graphs) if name in LARGE]
    for variant, errs in errors.items():
        for label, rows in (("every row", errs), ("the rows past the drawn calls' scale",
                                                  [e for i, e in enumerate(errs) if i % len(graphs) in large])):
            absolute = [abs(e) for e in rows]
            print(f"{variant}, {label}: median |error| {statistics.median(absolute):.1%}, largest "
                  f"{max(absolute):.1%}, within 20%: {sum(a <= 0.2 for a in absolute)} of {len(absolute)}")
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
