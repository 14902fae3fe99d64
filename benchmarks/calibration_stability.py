"""Does a calibration hold? Two calibrations in a row on the quiet machine, then one with a core busy.

    python benchmarks/calibration_stability.py

1. Calibrates twice (quiet) and compares the two profiles' predictions for resnet50,
   mobilenet_v3_large and vit_b_16 at batch 1. Goal: within 5%.
2. Starts a busy loop on one core, calibrates again, stops the loop. Goal: the profile's predictions
   stay within 15% of the quiet one's, or calibrate refuses (and says how busy the machine was).
Prints each calibration's wall time and self-check.
"""

from __future__ import annotations

import subprocess
import sys
import time
import warnings

warnings.filterwarnings("ignore")

from costplan.api import load_graph  # noqa: E402
from costplan.errors import CostplanError  # noqa: E402
from costplan.hardware import estimate  # noqa: E402
from costplan.hardware.calibrate import calibrate  # noqa: E402
from costplan.sparsity import apply_plan  # noqa: E402

MODELS = ("resnet50", "mobilenet_v3_large", "vit_b_16")


def run(label: str) -> dict[str, float] | None:
    start = time.perf_counter()
    try:
        c = calibrate(progress=False)
    except CostplanError as exc:
        print(f"{label}: refused after {time.perf_counter() - start:.1f} s: {exc}")
        return None
    print(f"{label}: {time.perf_counter() - start:.1f} s; " + "; ".join(c.quality.lines()))
    profile = c.profile()
    return {m: estimate(g, profile, apply_plan(g, None)).latency_s * 1e3 for m, g in GRAPHS.items()}


def table(a: dict[str, float], b: dict[str, float], label: str) -> float:
    worst = 0.0
    for m in MODELS:
        diff = b[m] / a[m] - 1
        worst = max(worst, abs(diff))
        print(f"  {m:20s} {a[m]:9.2f} ms  {b[m]:9.2f} ms  {diff:+7.1%}")
    print(f"  {label}: largest difference {worst:.1%}")
    return worst


if __name__ == "__main__":
    GRAPHS = {m: load_graph(m) for m in MODELS}
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
