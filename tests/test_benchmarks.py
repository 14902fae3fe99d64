"""The arithmetic behind a benchmark's verdict (benchmarks/planning_quality.py)."""

from __future__ import annotations

import importlib
import math
import warnings
from pathlib import Path

import pytest


@pytest.fixture
def pq(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    with warnings.catch_warnings():   # the benchmark silences warnings for its own run
        return importlib.import_module("planning_quality")


def test_uniform_is_read_at_costplans_latency_off_its_line(pq) -> None:
    """planning_quality.at_latency: accuracies at latencies over costplan's, read at 1 on the line in log
    latency (not at the matched model's own reading), and called extrapolated where no point is slower."""
    # one point of accuracy per e-fold of latency, 95.0 at costplan's
    assert pq.at_latency([(0.5, 95.0 + math.log(0.5)), (2.0, 95.0 + math.log(2.0))]) == (pytest.approx(95.0), True)
    # the matched model read 0.93x (faster), its slower neighbour 1.05x: uniform is read at 1.0, above 0.93x's
    level, inside = pq.at_latency([(0.93, 94.30), (1.05, 94.54), (0.85, 94.10)])
    assert 94.40 < level < 94.50 and inside
    assert pq.at_latency([(0.80, 94.0), (0.90, 94.2)])[1] is False


def test_the_line_is_drawn_through_the_nearest_readings_beyond_the_margin_either_side(pq) -> None:
    """planning_quality.neighbours picks by reading, not by ratio (latency steps with tile widths, so a
    more pruned model can read slower), and leaves out a side no ratio reached."""
    readings = {0.50: 1.20, 0.55: 1.04, 0.60: 1.01, 0.65: 0.99, 0.70: 0.96, 0.75: 0.90}
    assert pq.neighbours(readings, 0.03) == [0.55, 0.70]
    # a more pruned model reading slower, a less pruned one faster: the nearest readings, whatever the ratio
    assert pq.neighbours({0.50: 1.04, 0.55: 1.10, 0.60: 0.85, 0.65: 0.96, 0.70: 0.90}, 0.03) == [0.50, 0.65]
    assert pq.neighbours({0.90: 1.10, 0.95: 1.08}, 0.03) == [0.95]
