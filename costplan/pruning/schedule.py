"""When to prune and how far: sparsity rising from a start step to an end step.

The shapes are those of the gradual-pruning literature: AGP's cubic (Zhu & Gupta, 2017) prunes fast
while the network has redundancy and slowly near the target; linear, cosine and exponential are the
other common ramps (Intel Neural Compressor's ``exp``/``cos``/``cube``/``linear`` schedulers). Every
shape reaches exactly the target at ``end_step``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from costplan.errors import CostplanError

DECAYS = ("cube", "exp", "cos", "linear")
_EXP_RATE = 5.0   # exp ramp: 1 - e^-5 = 99.3% of the way by the end before the final normalisation


@dataclass(frozen=True)
class Schedule:
    """Prune at ``start_step``, every ``frequency`` steps after it, and at ``end_step`` (inclusive).
    ``start_step == end_step`` is one-shot pruning."""

    start_step: int = 0
    end_step: int = 0
    frequency: int = 1
    decay: str = "cube"
    initial: float = 0.0          # share of the target already applied at start_step

    def __post_init__(self) -> None:
        if self.start_step < 0:
            raise CostplanError(f"schedule start_step must be >= 0, got {self.start_step}")
        if self.end_step < self.start_step:
            raise CostplanError(f"schedule end_step ({self.end_step}) precedes start_step ({self.start_step})")
        if self.frequency < 1:
            raise CostplanError(f"schedule frequency must be >= 1, got {self.frequency}")
        if self.decay not in DECAYS:
            raise CostplanError(f"unknown schedule decay '{self.decay}': use {', '.join(DECAYS)}")
        if not 0.0 <= self.initial <= 1.0:
            raise CostplanError(f"schedule initial must be in [0, 1], got {self.initial}")

    @classmethod
    def one_shot(cls, step: int = 0) -> Schedule:
        return cls(step, step, 1)

    def is_pruning_step(self, step: int) -> bool:
        """True at the steps where masks are recomputed."""
        if step == self.end_step:
            return True
        return self.start_step <= step < self.end_step and (step - self.start_step) % self.frequency == 0

    def progress(self, step: int) -> float:
        """Share of the target sparsity in force at ``step``: 0 before start, 1 from end on."""
        if step < self.start_step:
            return 0.0
        if step >= self.end_step:
            return 1.0
        t = (step - self.start_step) / (self.end_step - self.start_step)
        return self.initial + (1.0 - self.initial) * ramp(self.decay, t)

    def sparsity(self, step: int, target: float) -> float:
        """The sparsity in force at ``step`` for a layer whose plan says ``target``."""
        return target * self.progress(step)


def ramp(decay: str, t: float) -> float:
    """Share of the way from the initial to the target sparsity at time ``t`` in [0, 1]; each shape
    is 0 at 0, 1 at 1 and never decreasing."""
    if decay == "linear":
        return t
    if decay == "cube":          # AGP: s_t = s_f + (s_i - s_f)(1 - t)^3
        return 1.0 - (1.0 - t) ** 3
    if decay == "cos":
        return (1.0 - math.cos(math.pi * t)) / 2.0
    if decay == "exp":
        return (1.0 - math.exp(-_EXP_RATE * t)) / (1.0 - math.exp(-_EXP_RATE))
    raise CostplanError(f"unknown schedule decay '{decay}'")
