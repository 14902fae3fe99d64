"""Are large recurrent layers priced from a measurement or from an extrapolation?

    python benchmarks/recurrent.py [--trials 3]

Calibrates ``--trials`` times with the recurrent anchors (``probes.recurrent_anchors``: LSTM, GRU
and RNN calls at 512 and 1024 wide, batch 64 and 32) and as many times without them, alternately,
and after each calibration times six recurrent models it never saw, round-robin, in the same
process: two-layer LSTMs and GRUs 1024 wide at batch 64 (past the scale of every drawn call, which
the anchors are for) and 1, a 256-wide LSTM at batch 128, a GRU at 8 x 100 steps, a small LSTM. Each row is predicted against measured right after its calibration,
so a change of the machine's speed between calibrations moves both. Prints each calibration's
recurrent plateaus (GMAC/s) and fits, the errors, and per variant the median and largest |error|
over every row and over the two large models' rows.
All rows are held out: none of the models' shapes is a probe.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from torch import nn

warnings.filterwarnings("ignore")

import costplan  # noqa: E402
from costplan.hardware import calibrate as calibration  # noqa: E402
from costplan.hardware.probes import recurrent_shapes  # noqa: E402
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
# the models whose recurrent GEMMs lie past every drawn call's (2e8 MACs a call): what the anchors are for
LARGE = ("lstm 1024 b64", "gru 1024 b64")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    modules = {k: Recurrent(cell, width).eval() for k, (cell, width, _) in MODELS.items()}
    graphs = {k: costplan.load_graph(modules[k], input="x".join(map(str, s))) for k, (_, _, s) in MODELS.items()}
    anchored = calibration.recurrent_probes
    errors: dict[str, list[float]] = {"with anchors": [], "without": []}
    start = time.perf_counter()
    for trial in range(args.trials):
        for variant in errors:
            calibration.recurrent_probes = anchored if variant == "with anchors" else (
                lambda quick=False, seed=0: recurrent_shapes(45, seed))
            try:
                cal = calibration.calibrate(progress=False, check=False, seed=trial)
            finally:
                calibration.recurrent_probes = anchored
            profile = cal.profile()
            with torch.inference_mode():
                runs = time_round_robin({k: Instance(modules[k], (torch.randn(*s),)) for k, (_, _, s) in MODELS.items()},
                                        rounds=5)
            fits = ", ".join(f"{c} {cal.fits[c].rate / 1e9:.0f} GMAC/s (fit {cal.fits[c].median_error:.0%})"
                             for c in ("lstm", "gru", "rnn"))
            print(f"trial {trial}, {variant}: {fits}")
            for name, graph in graphs.items():
                predicted = costplan.estimate_latency(graph, profile).latency_s
                measured = statistics.median(runs[name])
                errors[variant].append(predicted / measured - 1)
                print(f"  {name:18s} predicted {predicted * 1e3:8.1f} ms  measured {measured * 1e3:8.1f} ms  "
                      f"{predicted / measured - 1:+6.1%}")
    large = [i for i, name in enumerate(MODELS) if name in LARGE]
    for variant, errs in errors.items():
        for label, rows in (("every row", errs), ("the rows past the drawn calls' scale",
                                                  [e for i, e in enumerate(errs) if i % len(MODELS) in large])):
            absolute = [abs(e) for e in rows]
            print(f"{variant}, {label}: median |error| {statistics.median(absolute):.1%}, largest "
                  f"{max(absolute):.1%}, within 20%: {sum(a <= 0.2 for a in absolute)} of {len(absolute)}")
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
