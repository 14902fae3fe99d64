"""The one error type users see."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CostplanError(Exception):
    """A problem with what the user gave (model, input, profile, plan, budget).

    The CLI prints the message on one line and exits non-zero; the message says what was wrong and
    what to do about it.
    """


class BudgetOutOfReach(CostplanError):
    """A budget below the lowest latency the allowed pruning reaches: ``floor_s``, that latency, and
    ``dense_s``, the dense model's (seconds, as the planner predicts them), so that a script can ask
    for what can be reached."""

    def __init__(self, message: str, floor_s: float, dense_s: float) -> None:
        super().__init__(message)
        self.floor_s, self.dense_s = floor_s, dense_s


def close_names(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """' Did you mean a, b?' for the candidates closest to ``name``, or '' when none is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)
    return f" Did you mean {', '.join(matches)}?" if matches else ""
