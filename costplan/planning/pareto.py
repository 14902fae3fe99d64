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
optimum of the discrete problem, as the MILP's is. :func:`costplan.planning.fronts.fronts_solve` returns None when the problem
does not decompose this way (a cycle of hubs, a block too large to enumerate); the MILP takes over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np

from costplan.planning.problem import NotDecomposable

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
