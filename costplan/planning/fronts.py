"""Solving the planner's problem over Pareto fronts (:mod:`costplan.planning.pareto` decomposes it):
fronts summed hub by hub, pruned by the budget and a Lagrangian bound, and searched for the least
importance removed within the budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from costplan.planning.pareto import (
    _EMPTY,
    _EMPTY_REF,
    Front,
    Key,
    Piece,
    _Records,
    eliminate_scalars,
    elimination_order,
    pareto,
    pieces_of,
)
from costplan.planning.problem import Infeasible

if TYPE_CHECKING:
    from costplan.planning.problem import Problem

class _Fronts:
    """Sums and alternatives of fronts, dropping the points that cannot be part of a plan that meets
    the budget and removes at most the bound's importance."""

    def __init__(self, records: _Records, cap: float, lam: float, upper: float, lat_floor: np.ndarray,
                 lag_floor: np.ndarray) -> None:
        self.records = records
        self.cap = cap                    # latency the pieces may use, seconds
        self.lam = lam
        self.upper = upper                # bound on the optimum's Lagrangian value
        self.lat_floor = lat_floor        # per piece: its least latency, and least importance + lam x latency
        self.lag_floor = lag_floor

    def _room(self, pieces: frozenset[int]) -> tuple[float, float]:
        inside = list(pieces)
        rest_lat = self.lat_floor.sum() - self.lat_floor[inside].sum()
        rest_lag = self.lag_floor.sum() - self.lag_floor[inside].sum()
        tol = 1e-9 * (abs(self.cap) + abs(self.upper))
        return self.cap - rest_lat + tol, self.upper - rest_lag + tol

    def add(self, a: Front, b: Front) -> Front:
        pieces = a.pieces | b.pieces
        if not len(a.latency) or not len(b.latency):
            return Front(_EMPTY, _EMPTY, _EMPTY_REF, pieces)
        lat_room, lag_room = self._room(pieces)
        lat = (a.latency[:, None] + b.latency[None, :]).ravel()
        cost = (a.cost[:, None] + b.cost[None, :]).ravel()
        idx = np.flatnonzero((lat <= lat_room) & (cost + self.lam * lat <= lag_room))
        keep = idx[pareto(lat[idx], cost[idx])]
        ia, ib = np.divmod(keep, len(b.latency))
        return Front(lat[keep], cost[keep], self.records.sums(a.ref[ia], b.ref[ib]), pieces)

    def best(self, xs: Sequence[Front]) -> Front:
        lat = np.concatenate([f.latency for f in xs])
        cost = np.concatenate([f.cost for f in xs])
        ref = np.concatenate([f.ref for f in xs])
        keep = pareto(lat, cost)
        return Front(lat[keep], cost[keep], ref[keep], xs[0].pieces)

    def eliminate(self, pieces: Sequence[Piece], order: list[tuple[int, tuple[int, int] | None]]) -> Front:
        """:func:`eliminate_scalars` on fronts: the Pareto front of whole choices."""
        unary: dict[int, list[Front]] = {}
        binary: dict[tuple[int, int], dict[Key, Front]] = {}
        free: list[Front] = []
        for piece in pieces:
            if len(piece.scope) == 0:
                free.append(piece.per[()])
            elif len(piece.scope) == 1:
                h, old = piece.scope[0], unary.get(piece.scope[0])
                new = [piece.per[(k,)] for k in range(len(piece.per))]
                unary[h] = new if old is None else [self.add(o, f) for o, f in zip(old, new)]
            else:
                a, b = piece.scope
                table = piece.per if a < b else {(j, i): f for (i, j), f in piece.per.items()}
                key, old = (min(a, b), max(a, b)), binary.get((min(a, b), max(a, b)))
                binary[key] = table if old is None else {ij: self.add(old[ij], table[ij]) for ij in old}
        for h, edge in order:
            mine = unary.pop(h)
            if edge is None:
                free.append(self.best(mine))
                continue
            table = binary.pop(edge)
            g = edge[1] if edge[0] == h else edge[0]
            at = (lambda kh, kg: (kh, kg)) if edge[0] == h else (lambda kh, kg: (kg, kh))
            over_h = [self.best([self.add(f, table[at(kh, kg)]) for kh, f in enumerate(mine)])
                      for kg in range(len(unary[g]))]
            unary[g] = [self.add(u, o) for u, o in zip(unary[g], over_h)]
        total = free[0]
        for f in free[1:]:
            total = self.add(total, f)
        return total


class _Lagrangian:
    """The budget moved into the objective: importance + lam x latency, minimised by elimination on
    scalars. Its maximum over lam is a lower bound on the optimum (the LP bound of the MILP)."""

    def __init__(self, pieces: Sequence[Piece], sizes: dict[int, int], order: list) -> None:
        self.pieces, self.sizes, self.order = pieces, sizes, order
        self.hubs = [h for h, _ in order]
        self.scopes = [p.scope for p in pieces]
        self.stacked = []
        for piece in pieces:
            # keys in np.ndindex order, so that the minima reshape to the scope's sizes
            keys = list(np.ndindex(*[sizes[h] for h in piece.scope]))
            fronts = [piece.per[k] for k in keys]
            lengths = np.array([len(f.latency) for f in fronts])
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            self.stacked.append((keys, np.concatenate([f.latency for f in fronts]),
                                 np.concatenate([f.cost for f in fronts]), np.minimum(starts, max(lengths.sum() - 1, 0)),
                                 lengths == 0))

    def minima(self, lam: float, latency_only: bool = False) -> list[np.ndarray]:
        """Per piece, per hub choice (shaped by the scope): the least importance + lam x latency
        (or latency alone)."""
        out = []
        for scope, (keys, lat, cost, starts, empty) in zip(self.scopes, self.stacked):
            v = lat if latency_only else cost + lam * lat
            m = np.minimum.reduceat(v, starts) if len(v) else np.full(len(keys), np.inf)
            m[empty] = np.inf
            out.append(m.reshape([self.sizes[h] for h in scope]))
        return out

    def total(self, minima: list[np.ndarray]) -> float:
        return eliminate_scalars(self.scopes, minima, {h: self.sizes[h] for h in self.hubs}, self.order)

    def dual(self, lam: float, cap: float) -> float:
        """The bound at ``lam`` for a latency allowance of ``cap`` seconds."""
        return self.total(self.minima(lam)) - lam * cap

    def maximise(self, cap: float) -> tuple[float, float]:
        """The multiplier (importance per second) with the highest bound, and the bound."""
        lo, hi = -12.0, 12.0          # log10(lam): golden-section search, the dual being concave
        g = (np.sqrt(5) - 1) / 2
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        fa, fb = self.dual(10.0 ** a, cap), self.dual(10.0 ** b, cap)
        for _ in range(40):
            if fa < fb:
                lo, a, fa = a, b, fb
                b = lo + g * (hi - lo)
                fb = self.dual(10.0 ** b, cap)
            else:
                hi, b, fb = b, a, fa
                a = hi - g * (hi - lo)
                fa = self.dual(10.0 ** a, cap)
        best = (10.0 ** a, fa) if fa >= fb else (10.0 ** b, fb)
        zero = self.dual(0.0, cap)
        return (0.0, zero) if zero >= best[1] else best

    def hub_marginals(self, lam: float) -> dict[int, np.ndarray]:
        """For each hub and choice, the least Lagrangian value of any full choice that takes it."""
        minima = self.minima(lam)
        out = {}
        for h in self.hubs:
            own = next(i for i, p in enumerate(self.pieces) if p.scope == (h,))
            values = []
            for k in range(len(minima[own])):
                forced = list(minima)
                forced[own] = np.where(np.arange(len(minima[own])) == k, minima[own], np.inf)
                values.append(self.total(forced))
            out[h] = np.array(values)
        return out

    def prune(self, lam: float, upper: float, marginals: dict[int, np.ndarray], cap: float
              ) -> tuple[list[Piece], np.ndarray, np.ndarray]:
        """The pieces without the points no plan removing at most ``upper`` importance can use (a
        point's Lagrangian bound is its own value over its piece's best at its hub choice, plus the
        best full choice that takes those hubs), and each piece's least latency and Lagrangian value."""
        minima = self.minima(lam)
        limit = upper + lam * cap
        best = self.total(minima)
        out, lat_floor, lag_floor = [], [], []
        for piece, mins, (keys, lat, cost, _, _) in zip(self.pieces, minima, self.stacked):
            # the best full choice taking this piece's hub choices is at least each hub's marginal
            floor = np.full(mins.shape, best if not piece.scope else -np.inf)
            for axis, h in enumerate(piece.scope):
                shape = [1] * len(piece.scope)
                shape[axis] = -1
                floor = np.maximum(floor, marginals[h].reshape(shape))
            lengths = [len(piece.per[k].latency) for k in keys]
            per_point = np.repeat(np.arange(len(keys)), lengths)
            value = cost + lam * lat
            keep = floor.ravel()[per_point] + value - mins.ravel()[per_point] <= limit + 1e-9 * (abs(limit) + 1)
            counts = np.bincount(per_point[keep], minlength=len(keys))
            refs = np.concatenate([piece.per[k].ref for k in keys]) if keys else _EMPTY_REF
            bounds = np.cumsum(counts)[:-1]
            fronts = zip(np.split(lat[keep], bounds), np.split(cost[keep], bounds), np.split(refs[keep], bounds))
            out.append(Piece(piece.scope, {k: Front(fl, fc, fr, piece.per[k].pieces) for k, (fl, fc, fr) in zip(keys, fronts)}))
            lat_floor.append(lat[keep].min(initial=np.inf))
            lag_floor.append(value[keep].min(initial=np.inf))
        return out, np.array(lat_floor), np.array(lag_floor)


def fronts_solve(problem: Problem, budget: float | None) -> tuple[int, ...]:
    """The optimal choice: least importance removed within ``budget`` seconds, or with ``budget``
    None the least latency. Raises :class:`Infeasible` when no choice meets the budget and
    :class:`NotDecomposable` when the problem's structure does not suit this method (the MILP then
    solves it)."""
    n = len(problem.cost)
    sizes = {u: len(c) for u, c in enumerate(problem.cost)}
    if budget is None:
        # the least latency is the least importance removed when nothing counts as importance
        problem = type(problem)([np.zeros(len(c)) for c in problem.cost], problem.unary, problem.pairs,
                                problem.constant)
    records = _Records()
    pieces, hubs = pieces_of(problem, records)
    if not pieces:   # nothing to choose: the constant latency meets the budget or nothing does
        if budget is not None and problem.constant > budget * (1 + 1e-12):
            raise Infeasible("the latency no choice changes exceeds the budget")
        return tuple([0] * n)
    order = elimination_order([p.scope for p in pieces], hubs)
    lagrangian = _Lagrangian(pieces, sizes, order)
    fastest = lagrangian.total(lagrangian.minima(0.0, latency_only=True))
    cap = fastest * (1 + 1e-9) if budget is None else budget - problem.constant
    if fastest > cap * (1 + 1e-12):
        raise Infeasible("no choice meets the budget")
    lam, lower = lagrangian.maximise(cap)
    marginals = lagrangian.hub_marginals(lam)
    upper = lower + 1e-3 * abs(lower) + 1e-12
    while True:
        kept, lat_floor, lag_floor = lagrangian.prune(lam, upper, marginals, cap)
        total = _Fronts(records, cap, lam, upper + lam * cap, lat_floor, lag_floor).eliminate(kept, order)
        ok = np.flatnonzero(total.latency <= cap * (1 + 1e-12))
        wider = lower + 2 * (upper - lower) + 1e-9
        if len(ok):
            best = ok[np.argmin(total.cost[ok])]
            # a point costlier than the bound may not be the optimum: some were dropped against it
            if total.cost[best] <= upper + 1e-9 * abs(upper):
                return records.choice(int(total.ref[best]), n)
            wider = min(wider, float(total.cost[best]))   # a plan that costly exists
        upper = wider
