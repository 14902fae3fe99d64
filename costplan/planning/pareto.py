"""An exact dynamic programme over Pareto fronts for the planner's problem, when its structure allows.

A network's units form few kinds of neighbourhoods: a residual stage's channel group (a hub) touches
every block in the stage; a block's inner groups touch each other and one or two hubs. So:

1. Units touching more than two others are hubs. Every other connected set of units is a block; its
   options are enumerated for each choice of the hubs it touches (at most two), keeping only the
   Pareto-optimal ones (less latency or less importance removed). Nothing better is lost: a block
   meets the rest of the problem only through its hubs and the two sums.
2. Hubs are eliminated one at a time, leaf first (as on a chain of stages): a hub's front for each
   choice of its neighbour is the Pareto set over the hub's own choices.
3. What is left are independent fronts, summed and searched for the least importance removed
   within the budget.

Points are dropped only when they cannot be part of a better plan: when their latency plus the least
latency of everything else exceeds the budget, or when their Lagrangian bound (importance + lambda x
latency, plus the same minimised over everything else, less lambda x budget) exceeds an upper bound on
the optimum. The multiplier comes from the same elimination on scalars (the Lagrangian dual); the upper
bound starts just above the dual bound and is widened until a plan is found, so the answer is the
optimum of the discrete problem, as the MILP's is. :func:`fronts_solve` returns None when the problem
does not decompose this way (a cycle of hubs, a block too large to enumerate); the MILP takes over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np

from costplan.planning.problem import Infeasible, NotDecomposable

if TYPE_CHECKING:
    from costplan.planning.problem import Problem

MAX_BLOCK = 1_000_000   # option combinations x hub choices enumerated at once for one block
Key = tuple[int, ...]
_EMPTY = np.zeros(0)
_EMPTY_REF = np.zeros(0, dtype=int)


@dataclass(frozen=True)
class Front:
    """Points sorted by latency: latency (s), importance removed, and a record id each; ``pieces``
    are the problem's pieces summed into it (for bounds on everything else)."""

    latency: np.ndarray
    cost: np.ndarray
    ref: np.ndarray
    pieces: frozenset[int]


@dataclass(frozen=True)
class Piece:
    """A term of the objective over the hubs in ``scope``: one front of options per choice of them."""

    scope: Key
    per: dict[Key, Front]


class _Records:
    """Where each point came from: a leaf (unit, option) list, or the two points it sums."""

    def __init__(self) -> None:
        self.left: list[int] = []
        self.right: list[int] = []
        self.leaf: list[tuple[tuple[int, int], ...]] = []

    def leaves(self, assignments: Sequence[tuple[tuple[int, int], ...]]) -> np.ndarray:
        start = len(self.leaf)
        self.leaf.extend(assignments)
        self.left.extend([-1] * len(assignments))
        self.right.extend([-1] * len(assignments))
        return np.arange(start, start + len(assignments))

    def sums(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        start = len(self.leaf)
        self.left.extend(left.tolist())
        self.right.extend(right.tolist())
        self.leaf.extend([()] * len(left))
        return np.arange(start, start + len(left))

    def choice(self, ref: int, n_units: int) -> tuple[int, ...]:
        choice = [0] * n_units
        stack = [ref]
        while stack:
            r = stack.pop()
            for unit, option in self.leaf[r]:
                choice[unit] = option
            if self.left[r] >= 0:
                stack += [self.left[r], self.right[r]]
        return tuple(choice)


def pareto(latency: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both latency and cost, by rising latency."""
    order, keep = _pareto_rows(latency[None, :], cost[None, :])
    return order[0][keep[0]]


def _pareto_rows(latency: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pareto` for each row: the latency order and which of its points to keep."""
    # ties in latency may keep a dominated point: harmless, and a plain sort is much faster
    order = np.argsort(latency, axis=1)
    c = np.take_along_axis(cost, order, axis=1)
    keep = np.ones(c.shape, dtype=bool)
    keep[:, 1:] = c[:, 1:] < np.minimum.accumulate(c, axis=1)[:, :-1] - 1e-12 * (1 + np.abs(c[:, 1:]))
    return order, keep


# ---- the problem as pieces over hubs ----------------------------------------------------------

def _neighbours(problem: Problem) -> list[set[int]]:
    nb: list[set[int]] = [set() for _ in problem.cost]
    for q in problem.pairs:
        nb[q.a].add(q.b)
        nb[q.b].add(q.a)
    return nb


def _components(nb: list[set[int]], hubs: set[int]) -> list[list[int]]:
    """Connected sets of the units that are not hubs."""
    graph = nx.Graph()
    graph.add_nodes_from(u for u in range(len(nb)) if u not in hubs)
    graph.add_edges_from((u, v) for u in graph for v in nb[u] if v not in hubs)
    return [sorted(c) for c in nx.connected_components(graph)]


def _block_tables(problem: Problem, comp: list[int], sep: list[int], chosen: dict[int, np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Latency and cost over the axes sep + comp, with the block's pair terms: the ``chosen`` options
    of each hub in sep, every option of each unit in comp."""
    axes = sep + comp
    pos = {a: i for i, a in enumerate(axes)}

    def options(a: int) -> np.ndarray:
        return chosen[a] if a in chosen else np.arange(len(problem.cost[a]))

    sizes = [len(options(a)) for a in axes]

    def along(i: int, v: np.ndarray) -> np.ndarray:
        shape = [1] * len(axes)
        shape[i] = len(v)
        return np.asarray(v, dtype=float).reshape(shape)

    lat, cost = np.zeros(sizes), np.zeros(sizes)
    for c in comp:
        lat = lat + along(pos[c], problem.unary[c])
        cost = cost + along(pos[c], problem.cost[c])
    members = set(comp)
    for q in problem.pairs:
        if q.a in members or q.b in members:
            full = q.table[q.class_of_a][np.ix_(options(q.a), options(q.b))]   # (options of a, options of b)
            ia, ib = pos[q.a], pos[q.b]
            shape = [1] * len(axes)
            shape[ia], shape[ib] = full.shape
            lat = lat + (full if ia < ib else full.T).reshape(shape)
    return lat, cost


def _classes(problem: Problem, hub: int, block: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """Options of ``hub`` that give the block the same latency: one representative of each class,
    and each option's class."""
    rows = []
    for q in problem.pairs:
        if q.a == hub and q.b in block:
            rows.append(q.table[q.class_of_a])
        elif q.b == hub and q.a in block:
            rows.append(q.table[q.class_of_a].T)
    signature = np.concatenate(rows, axis=1)
    _, reps, inverse = np.unique(signature, axis=0, return_index=True, return_inverse=True)
    return reps, inverse.ravel()


def pieces_of(problem: Problem, records: _Records) -> tuple[list[Piece], set[int]]:
    """The problem as pieces over hubs; raises NotDecomposable when a block is too large or touches
    three hubs."""
    nb = _neighbours(problem)
    hubs = {u for u in range(len(problem.cost)) if len(nb[u]) > 2}
    pieces: list[Piece] = []

    def points(scope: Key, lat: np.ndarray, cost: np.ndarray, assignments: list, keys: list[Key]) -> Piece:
        """A piece of one point per hub choice."""
        refs, i = records.leaves(assignments), len(pieces)
        return Piece(scope, {key: Front(lat[j:j + 1], cost[j:j + 1], refs[j:j + 1], frozenset([i]))
                             for j, key in enumerate(keys)})

    for h in sorted(hubs):
        n = len(problem.cost[h])
        pieces.append(points((h,), np.asarray(problem.unary[h], float), np.asarray(problem.cost[h], float),
                             [((h, k),) for k in range(n)], [(k,) for k in range(n)]))
    for comp in _components(nb, hubs):
        sep = sorted({w for v in comp for w in nb[v] if w in hubs})
        sizes = [len(problem.cost[a]) for a in sep + comp]
        if len(sep) > 2:
            raise NotDecomposable("a block touches three hubs")
        if np.prod(sizes[1:] if sep else sizes, dtype=float) > MAX_BLOCK:
            raise NotDecomposable("a block too large to enumerate")
        combos = np.stack(np.unravel_index(np.arange(int(np.prod(sizes[len(sep):]))), sizes[len(sep):]), 1)
        assignments = [tuple(zip(comp, c)) for c in combos.tolist()]
        i = len(pieces)
        # hub options the block cannot tell apart (all element-wise options keep every channel)
        # share one front
        classes = [_classes(problem, h, set(comp)) for h in sep]
        by_class: dict[Key, Front] = {}
        for first in range(len(classes[0][0])) if sep else [None]:   # a slice at a time keeps memory small
            chosen = {h: reps for h, (reps, _) in zip(sep, classes)}
            if sep:
                chosen[sep[0]] = classes[0][0][first:first + 1]
            lat, cost = _block_tables(problem, comp, sep, chosen)
            lat, cost = lat.reshape(-1, len(combos)), cost.reshape(-1, len(combos))
            order, keep = _pareto_rows(lat, cost)
            for r, rest in enumerate(np.ndindex(*[len(reps) for reps, _ in classes[1:]])):
                k = order[r][keep[r]]
                by_class[(first, *rest) if sep else ()] = Front(lat[r, k], cost[r, k], records.leaves(
                    [assignments[j] for j in k]), frozenset([i]))
        per = {key: by_class[tuple(int(inv[k]) for (_, inv), k in zip(classes, key))]
               for key in np.ndindex(*sizes[:len(sep)])}
        pieces.append(Piece(tuple(sep), per))
    for q in problem.pairs:   # hub-hub terms
        if q.a in hubs and q.b in hubs:
            full = q.table[q.class_of_a]
            keys = list(np.ndindex(*full.shape))
            pieces.append(points((q.a, q.b), full.ravel(), np.zeros(full.size), [()] * full.size, keys))
    return pieces, hubs


# ---- elimination, shared by the scalar (Lagrangian) and the front passes ----------------------

def elimination_order(scopes: Sequence[Key], hubs: set[int]) -> list[tuple[int, tuple[int, int] | None]]:
    """Hubs in the order to eliminate them (a leaf of the hub graph first), each with the one hub
    pair it still shares a term with (or None); raises NotDecomposable when the hubs form a cycle."""
    edges = {(min(s), max(s)) for s in scopes if len(s) == 2}
    remaining, order = set(hubs), []
    while remaining:
        touching = {h: [e for e in edges if h in e] for h in remaining}
        h = min(sorted(remaining), key=lambda x: len(touching[x]))
        if len(touching[h]) > 1:
            raise NotDecomposable("its hubs form a cycle")
        remaining.discard(h)
        edge = touching[h][0] if touching[h] else None
        edges.discard(edge)
        order.append((h, edge))
    return order


def eliminate_scalars(scopes: Sequence[Key], values: Sequence[np.ndarray], sizes: dict[int, int],
                      order: list[tuple[int, tuple[int, int] | None]]) -> float:
    """The least total of the pieces' values (each an array shaped by its scope: one value per choice
    of its hubs), eliminating hubs in ``order``."""
    unary = {h: np.zeros(n) for h, n in sizes.items()}
    binary: dict[tuple[int, int], np.ndarray] = {}
    free = 0.0
    for scope, v in zip(scopes, values):
        if len(scope) == 0:
            free += float(v)
        elif len(scope) == 1:
            unary[scope[0]] = unary[scope[0]] + v
        else:
            a, b = scope
            key, v = ((a, b), v) if a < b else ((b, a), v.T)
            binary[key] = binary[key] + v if key in binary else v
    for h, edge in order:
        mine = unary.pop(h)
        if edge is None:
            free += float(mine.min())
            continue
        table = binary.pop(edge)
        table, g = (table, edge[1]) if edge[0] == h else (table.T, edge[0])
        unary[g] = unary[g] + (mine[:, None] + table).min(axis=0)
    return free


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
