"""The arithmetic behind a benchmark's verdict (benchmarks/planning_quality.py)."""

from __future__ import annotations

import importlib
import math
import warnings
from pathlib import Path

import pytest


def test_uniform_is_read_at_costplans_latency_off_its_line(monkeypatch) -> None:
    """planning_quality.at_latency: accuracies at latencies over costplan's, read at 1 on the line in log
    latency (not at the matched model's own reading), and called extrapolated where no point is slower."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    with warnings.catch_warnings():   # the benchmark silences warnings for its own run
        pq = importlib.import_module("planning_quality")
    # one point of accuracy per e-fold of latency, 95.0 at costplan's
    assert pq.at_latency([(0.5, 95.0 + math.log(0.5)), (2.0, 95.0 + math.log(2.0))]) == (pytest.approx(95.0), True)
    # the matched model read 0.93x (faster), its slower neighbour 1.05x: uniform is read at 1.0, above 0.93x's
    level, inside = pq.at_latency([(0.93, 94.30), (1.05, 94.54), (0.85, 94.10)])
    assert 94.40 < level < 94.50 and inside
    assert pq.at_latency([(0.80, 94.0), (0.90, 94.2)])[1] is False
