"""Does a calibration hold? Two calibrations in a row on the quiet machine, then one with a core busy.

    python benchmarks/calibration_stability.py

1. Calibrates twice (quiet) and compares the two profiles' predictions for resnet50,
   mobilenet_v3_large and vit_b_16 at batch 1. Goal: within 5%.
2. Starts a busy loop on one core, calibrates again, stops the loop. Goal: the profile's predictions
   stay within 15% of the quiet one's, or calibrate refuses (and says how busy the machine was).
Prints each calibration's wall time, self-check and the machine's speed by round.

The three networks are each calibration's held-out set, timed in its interleaved rounds. So beside
the change in predictions the table shows the change in the networks' measured times: on a machine
whose speed drifts between calibrations (a VM), a calibration that tracks the machine must move with
it, and the change in predicted / measured is what the calibration itself adds.
"""

from __future__ import annotations

import subprocess
import sys
import time
import warnings

warnings.filterwarnings("ignore")

from costplan.errors import CostplanError
from costplan.hardware.calibrate import calibrate
from costplan.models import instantiate, resolve

MODELS = ("resnet50", "mobilenet_v3_large", "vit_b_16")


Row = tuple[float, float]   # (predicted, measured) seconds


def run(label: str) -> dict[str, Row] | None:
    start = time.perf_counter()
    try:
        c = calibrate(progress=False, check={m: instantiate(resolve(m, batch=1), "cpu") for m in MODELS})
    except CostplanError as exc:
        print(f"{label}: refused after {time.perf_counter() - start:.1f} s: {exc}")
        return None
    print(f"{label}: {time.perf_counter() - start:.1f} s")
    for line in c.warnings() + c.quality.lines():
        print(f"  {line}")
    return dict(c.quality.check)


def table(a: dict[str, Row], b: dict[str, Row], label: str) -> float:
    print(f"  {'model':20s} {'predicted':>21s} {'change':>7s} {'measured':>21s} {'change':>7s} {'error change':>12s}")
    worst = 0.0
    for m in MODELS:
        (pa, ma), (pb, mb) = a[m], b[m]
        diff = pb / pa - 1
        worst = max(worst, abs(diff))
        print(f"  {m:20s} {pa * 1e3:9.2f} {pb * 1e3:9.2f} ms {diff:+7.1%} {ma * 1e3:9.2f} {mb * 1e3:9.2f} ms "
              f"{mb / ma - 1:+7.1%} {(pb / mb) / (pa / ma) - 1:+12.1%}")
    print(f"  {label}: largest difference in predictions {worst:.1%}")
    return worst


if __name__ == "__main__":
    first, second = run("quiet calibration 1"), run("quiet calibration 2")
    if first and second:
        print("\npredictions, quiet 1 against quiet 2 (goal: within 5%)")
        table(first, second, "quiet vs quiet")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        loaded = run("calibration with one core busy")
    finally:
        busy.kill()
    if loaded and first:
        print("\npredictions, quiet 1 against busy (goal: within 15%, or a refusal)")
        table(first, loaded, "quiet vs busy")
