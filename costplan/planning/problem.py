"""The planner's discrete problem and its solutions, as the solvers (:mod:`costplan.planning.solver`,
:mod:`costplan.planning.pareto`) share them.

Each unit (a channel group, a head group, a layer) picks exactly one option. Picking option k of unit
u removes ``cost[u][k]`` importance. Latency is a constant, plus for each unit a term of its own
option, plus for each layer whose shape two units set, a term of both choices: a multiple-choice
knapsack with pairwise terms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np


@dataclass(frozen=True)
class Pair:
    """Latency ``table[class_of_a[ka], kb]`` (seconds) when unit a picks ka and unit b picks kb."""

    a: int
    b: int
    class_of_a: np.ndarray   # option of a -> class index
    table: np.ndarray        # (classes of a, options of b)


@dataclass(frozen=True)
class Problem:
    cost: Sequence[np.ndarray]     # per unit, per option: importance removed
    unary: Sequence[np.ndarray]    # per unit, per option: latency in seconds
    pairs: Sequence[Pair]
    constant: float                # latency no choice changes, seconds

    def latency(self, choice: Sequence[int]) -> float:
        """Latency of one choice per unit, in seconds."""
        total = self.constant + sum(float(u[k]) for u, k in zip(self.unary, choice))
        return total + sum(float(p.table[p.class_of_a[choice[p.a]], choice[p.b]]) for p in self.pairs)

    def removed(self, choice: Sequence[int]) -> float:
        return sum(float(c[k]) for c, k in zip(self.cost, choice))


class SolverStatus(str, Enum):
    """How far a solution is proven: ``optimal`` (the solver proved no better choice exists),
    ``time limit`` (the MILP stopped with the gap it had reached) or ``heuristic`` (a greedy plan that
    meets the budget, nothing proven)."""

    OPTIMAL = "optimal"
    TIME_LIMIT = "time limit"
    HEURISTIC = "heuristic"


@dataclass(frozen=True)
class Solution:
    choice: tuple[int, ...]
    removed: float                 # importance removed
    latency: float                 # seconds, by the problem's own arithmetic
    gap: float | None              # relative optimality gap (0 when proven optimal; None: unknown)
    seconds: float
    status: SolverStatus
    method: str = "scipy.optimize.milp (HiGHS)"


class Infeasible(Exception):
    """No choice meets the budget."""


class NotDecomposable(Exception):
    """The problem's structure does not suit the Pareto-front programme."""
