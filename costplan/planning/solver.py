"""Exact solvers for the planner's discrete problem: Pareto fronts where the structure allows
(:mod:`costplan.planning.pareto`), else scipy's MILP (HiGHS).

Each unit (a channel group, a head group, a layer) picks exactly one option. Picking option k of
unit u removes ``cost[u][k]`` importance. Latency is a constant, plus for each unit a term of its own
option, plus for each consumer layer whose input width one unit sets and whose own shape another unit
sets, a term of both choices: a multiple-choice knapsack with pairwise terms.

Pairwise terms are linearised exactly: for units a and b, continuous y[c, k] >= 0 with
sum_k y[c, k] = (x_a in class c) and sum_c y[c, k] = x_b[k]; with x binary, y is the product of the
two choices. Options of a that leave the same width (every element-wise option keeps all channels)
share one class, which keeps the problem small. HiGHS proves optimality to ``rel_gap``; when its time
limit ends the search first, the best plan found is returned with the gap it had reached.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from costplan.planning.fronts import fronts_solve
from costplan.planning.problem import Infeasible, NotDecomposable, Pair, Problem, Solution, SolverStatus

__all__ = ["Infeasible", "Pair", "Problem", "Solution", "SolverStatus", "brute_force", "greedy", "solve"]


def greedy(problem: Problem, budget: float) -> tuple[int, ...]:
    """From all-dense, take the move that removes least importance per second saved until the budget
    is met: a feasible plan when branch and bound finds none in its time."""
    choice = [0] * len(problem.cost)
    current = problem.latency(choice)
    while current > budget:
        best = None
        for u, costs in enumerate(problem.cost):
            for k in range(len(costs)):
                trial = choice.copy()
                trial[u] = k
                saved = current - problem.latency(trial)
                if saved > 1e-15:
                    rate = (costs[k] - problem.cost[u][choice[u]]) / saved
                    if best is None or rate < best[0]:
                        best = (rate, u, k)
        if best is None:
            raise Infeasible("no move saves latency and the budget is not met")
        choice[best[1]] = best[2]
        current = problem.latency(choice)
    return tuple(choice)


def solve(problem: Problem, budget: float | None, *, minimise: str = "importance",
          time_limit: float = 10.0, rel_gap: float = 1e-4, method: str = "auto") -> Solution:
    """The choice that removes least importance with latency <= ``budget`` (seconds), or with
    ``minimise='latency'`` the fastest choice. Raises :class:`Infeasible`.

    ``method='auto'`` uses the exact Pareto-front programme (:mod:`costplan.planning.pareto`) when the
    problem decomposes into hubs and blocks (residual stages do), else the MILP; ``'fronts'`` or
    ``'milp'`` force one."""
    start = time.perf_counter()
    if method not in ("auto", "fronts", "milp"):
        raise ValueError(f"unknown method {method!r}")
    if method != "milp" and (budget is not None or minimise == "latency"):
        try:
            choice = fronts_solve(problem, None if minimise == "latency" else budget)
        except NotDecomposable:
            if method == "fronts":
                raise
        else:
            return Solution(choice, problem.removed(choice), problem.latency(choice), 0.0,
                            time.perf_counter() - start, SolverStatus.OPTIMAL, "Pareto-front dynamic programme")
    return _milp(problem, budget, minimise=minimise, time_limit=time_limit, rel_gap=rel_gap, start=start)


class _Rows:
    """Sparse constraint rows ``lower <= A x <= upper``, added one at a time."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.vals: list[float] = []
        self.lower: list[float] = []
        self.upper: list[float] = []

    def add(self, entries: list[tuple[int, float]], lo: float, hi: float) -> None:
        for col, val in entries:
            self.rows.append(len(self.lower))
            self.cols.append(col)
            self.vals.append(val)
        self.lower.append(lo)
        self.upper.append(hi)

    def constraint(self, n_vars: int) -> LinearConstraint:
        matrix = coo_matrix((self.vals, (self.rows, self.cols)), shape=(len(self.lower), n_vars)).tocsr()
        return LinearConstraint(matrix, self.lower, self.upper)


def _assignment(problem: Problem) -> tuple[_Rows, np.ndarray, np.ndarray]:
    """The MILP's variables and rows: one 0/1 variable per option (one option per unit), one per cell of
    each pair's latency table, linked to its two units' options. Returns the rows, every variable's
    latency coefficient, and where each unit's options start (its last entry: the option count)."""
    x_offset = np.cumsum([0] + [len(c) for c in problem.cost])
    y_offset = [int(x_offset[-1])]
    for p in problem.pairs:
        y_offset.append(y_offset[-1] + p.table.size)
    rows, latency = _Rows(), np.zeros(y_offset[-1])
    for u in range(len(problem.cost)):
        rows.add([(int(x_offset[u]) + k, 1.0) for k in range(len(problem.cost[u]))], 1.0, 1.0)
        latency[x_offset[u]:x_offset[u + 1]] += problem.unary[u]
    for i, p in enumerate(problem.pairs):
        n_classes, n_b = p.table.shape
        base = y_offset[i]
        for c in range(n_classes):  # sum_k y[c, k] = x_a in class c
            members = np.flatnonzero(p.class_of_a == c)
            rows.add([(base + c * n_b + k, 1.0) for k in range(n_b)] +
                     [(int(x_offset[p.a]) + int(m), -1.0) for m in members], 0.0, 0.0)
        for k in range(n_b):  # sum_c y[c, k] = x_b[k]
            rows.add([(base + c * n_b + k, 1.0) for c in range(n_classes)] + [(int(x_offset[p.b]) + k, -1.0)], 0.0, 0.0)
        latency[base:base + p.table.size] += p.table.ravel()
    return rows, latency, x_offset


def _milp(problem: Problem, budget: float | None, *, minimise: str, time_limit: float, rel_gap: float,
          start: float) -> Solution:
    rows, latency, x_offset = _assignment(problem)
    n_x, n_vars = int(x_offset[-1]), len(latency)
    if minimise == "latency":
        objective = latency
    else:
        objective = np.zeros(n_vars)
        objective[:n_x] = np.concatenate([np.asarray(c, dtype=float) for c in problem.cost])
        if budget is not None:
            # latency in units of the budget: coefficients near 1 keep HiGHS's tolerances meaningful
            nonzero = np.flatnonzero(latency)
            rows.add(list(zip(nonzero.tolist(), (latency[nonzero] / budget).tolist())), -np.inf,
                     (budget - problem.constant) / budget)
    integrality = np.zeros(n_vars)
    integrality[:n_x] = 1
    result = milp(objective, constraints=rows.constraint(n_vars), integrality=integrality,
                  bounds=Bounds(0, 1), options={"time_limit": time_limit, "mip_rel_gap": rel_gap})
    if result.x is None:
        if result.status == 1 and budget is not None and minimise != "latency":   # out of time, no plan yet
            choice = greedy(problem, budget)
            return Solution(choice, problem.removed(choice), problem.latency(choice), None,
                            time.perf_counter() - start, SolverStatus.HEURISTIC, "greedy (no MILP solution in time)")
        raise Infeasible(result.message)
    x = result.x[:n_x]
    choice = tuple(int(np.argmax(x[x_offset[u]:x_offset[u + 1]])) for u in range(len(problem.cost)))
    reported = getattr(result, "mip_gap", None)
    gap = None if reported is None else float(reported)
    status = SolverStatus.OPTIMAL if result.status == 0 else SolverStatus.TIME_LIMIT
    return Solution(choice, problem.removed(choice), problem.latency(choice), gap, time.perf_counter() - start,
                    status)


def brute_force(problem: Problem, budget: float) -> Solution:
    """Enumerate every choice: for checking :func:`solve` on small problems."""
    start = time.perf_counter()
    best: tuple[float, tuple[int, ...]] | None = None
    for choice in itertools.product(*(range(len(c)) for c in problem.cost)):
        if problem.latency(choice) <= budget * (1 + 1e-9):
            removed = problem.removed(choice)
            if best is None or removed < best[0] - 1e-12:
                best = (removed, choice)
    if best is None:
        raise Infeasible("no choice meets the budget")
    return Solution(best[1], best[0], problem.latency(best[1]), 0.0, time.perf_counter() - start,
                    SolverStatus.OPTIMAL, "exhaustive")
