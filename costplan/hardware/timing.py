"""Timing that holds on a busy machine, and a measure of how busy it was.

Probes (callables that run one thing once and return its seconds) are timed round-robin: each round
times a block of every probe in turn, so a busy spell lands on one block of many probes rather than on
every block of one. A probe's time is its lowest block mean (the quiet spells' time) and its *noise*
how far its second-lowest block lies above that: when two quiet blocks agree, the lowest is no fluke.
Load that lasts the whole calibration slows every block alike, which noise cannot see; so other
processes' CPU use over the same wall time is read from ``/proc/stat`` (all cores' busy time less this
process's own).
"""

from __future__ import annotations

import gc
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

Probe = Callable[[], float]   # runs once, returns the seconds to count


@dataclass(frozen=True)
class Timing:
    """A probe's seconds per call (the lowest block mean) and its noise (second-lowest block / lowest - 1)."""

    seconds: float
    noise: float
    blocks: tuple[float, ...]


def robust(blocks: Sequence[float]) -> Timing:
    """The statistic of a probe's block means: the lowest, and how far the next-lowest lies above it."""
    ordered = sorted(blocks)
    low = ordered[0]
    second = ordered[1] if len(ordered) > 1 else low
    return Timing(low, second / low - 1.0 if low > 0 else 0.0, tuple(blocks))


def timed(fn: Callable[[], object]) -> Probe:
    """A probe of ``fn``'s wall time."""
    def probe() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    return probe


MIXED_GROUP = 16     # probes whose calls are interleaved with one another's (round_robin's ``mixed``)


def round_robin(probes: Mapping[str, Probe], rounds: int, block_s: float,
                on_round: Callable[[int], None] | None = None, shuffle: int | None = None,
                mixed: Collection[str] = (), group: int = MIXED_GROUP) -> dict[str, Timing]:
    """Time every probe in ``rounds`` rounds, a block of repeats (about ``block_s`` seconds, at least
    one call) per probe per round, probes in turn: in the order given, or with ``shuffle`` (a seed) in
    a new order each round, so that a spell of the machine running faster or slower lands on probes
    of every kind rather than on the run of probes of one kind that were next in line. Each block
    follows an untimed call, as ``costplan measure`` times a model after one: a layer in a network
    that runs again and again finds its kernel set up and its inputs in cache, and a probe's first
    call after hundreds of others did not (calibrations' LSTM, GRU and RNN fits priced their own
    shapes, timed alone, 10-88% slow in five calibrations, and within 3% in two with it).

    The probes named in ``mixed`` (layers that run kernels of their own: convolutions, GEMMs, recurrent
    layers) are not timed in blocks of their own calls: each round deals them into groups of ``group``
    probes of about one duration, and a group's members (after an untimed call of each) are called in
    turn, each as often, a probe's block its calls' mean. A layer in a network runs after other
    layers, not after itself: the 26 layers of a small 1-D ResNet, each timed in a block of its own
    calls, summed to 12-16% under the network's time (8 runs), and interleaved with one another to
    within 5% of it (convolutions 1.16x, a ReLU 2x their block times; in groups of 4 or 8
    convolutions took only 1.03-1.05x). Interleaved with every other probe, the
    dispatch of a tiny op took 17-27 us against 3.3 in a block, and three held-out networks read 10-28%
    slow: elementwise ops, norms and the per-op overhead share their code with every op and stay warm
    in a network, so they stay in blocks."""
    gc.collect()
    gc.freeze()     # the probes' own objects out of the collector's way (see _round_robin)
    try:
        return _round_robin(probes, rounds, block_s, on_round, shuffle, mixed, group)
    finally:
        gc.unfreeze()


def block_calls(seconds: float, block_s: float) -> int:
    """Calls of ``seconds`` each in a block of about ``block_s`` seconds: one at least, 200 at most."""
    return max(1, min(200, math.ceil(block_s / max(seconds, 1e-9))))


def _round_robin(probes: Mapping[str, Probe], rounds: int, block_s: float,
                 on_round: Callable[[int], None] | None, shuffle: int | None,
                 mixed: Collection[str], group: int) -> dict[str, Timing]:
    # Hundreds of probes keep a few hundred thousand Python objects alive (modules, tensors, closures),
    # and every full collection the probes' own allocations trigger walks them all: a transformer
    # encoder, whose Python between kernels allocates freely, timed 40% slower among them than in a
    # process of its own. Frozen, they are left out of collections, as a user's process has none of them.
    reps, once = {}, {}
    for name, probe in probes.items():
        probe()                                   # warm caches and lazy initialisation
        once[name] = max(probe(), 1e-7)
        reps[name] = block_calls(once[name], block_s)
    blocks: dict[str, list[float]] = {name: [] for name in probes}
    names, mixed = list(probes), frozenset(mixed)
    rng = random.Random(shuffle)
    for r in range(rounds):
        order = rng.sample(names, len(names)) if shuffle is not None else names
        # probes of about one duration together, so that each can be called as often as the others:
        # a probe called 200 times among fifteen called 5 times would mostly follow itself
        alike = sorted((n for n in order if n in mixed), key=lambda n: once[n] * rng.uniform(0.7, 1.4))
        groups = [alike[i:i + group] for i in range(0, len(alike), max(1, group))]
        if len(groups) > 1 and len(groups[-1]) < group // 2:   # too few to keep one another cold
            last = groups.pop()
            groups[-1] += last
        # a group runs where its first member falls in the order, so a spell lands on it as on the blocks
        first = {n: i for i, n in enumerate(order)}
        starts = {min(g, key=first.__getitem__): g for g in groups}
        for name in order:
            if name in starts:
                for member, seconds in _in_turn(probes, starts[name], reps, rng).items():
                    blocks[member].append(seconds)
            elif name not in mixed:
                probe = probes[name]
                probe()     # untimed: a layer in a network runs warm
                blocks[name].append(sum(probe() for _ in range(reps[name])) / reps[name])
        if on_round is not None:
            on_round(r)
    return {name: robust(b) for name, b in blocks.items()}


def _in_turn(probes: Mapping[str, Probe], members: Sequence[str], reps: Mapping[str, int],
             rng: random.Random) -> dict[str, float]:
    """Mean seconds per call of each of ``members``: after an untimed call of each, each called in
    turn, in an order drawn anew, as often as the group's median probe would be in a block of its own."""
    for name in members:
        probes[name]()
    calls = max(1, round(statistics.median(reps[name] for name in members)))
    order = rng.sample(list(members), len(members))
    total = dict.fromkeys(members, 0.0)
    for _ in range(calls):
        for name in order:
            total[name] += probes[name]()
    return {name: total[name] / calls for name in members}


def speed_by_round(timings: Mapping[str, Timing], rounds: int) -> tuple[float, ...]:
    """The machine's speed in each of the first ``rounds`` rounds: the median over probes of the
    probe's lowest block over its block in that round (1.0: every probe at its quickest). Noise
    scatters single blocks, which the median over probes sees through; a machine that changes speed
    for a while (a VM whose host got busy, a CPU changing its clock) moves every probe of its rounds."""
    out = []
    for r in range(rounds):
        ratios = [t.seconds / t.blocks[r] for t in timings.values() if len(t.blocks) > r and t.blocks[r] > 0]
        out.append(statistics.median(ratios) if ratios else 1.0)
    return tuple(out)


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse (``mallopt``: no mmap'd blocks, trim only past
    2 GiB) for the rest of the process; False where that is not glibc.

    With glibc's defaults, blocks over its mmap threshold (up to 32 MiB) are mapped afresh and the heap
    is trimmed as it shrinks, so a network whose activations reach tens of MB faults its pages in again
    on every call, by an amount that depends on the process's history: mobilenet_v2 at batch 8 took
    78,668 page faults and 2.0x the time per call here (333 ms against 166 ms). Timings that should
    measure kernels, not that history, are taken with freed memory kept."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4     # glibc's malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2 ** 31 - 1))


def minor_faults() -> int | None:
    """Page faults this process has taken without I/O so far (None where unknown)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _busy_jiffies() -> int | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)    # idle + iowait
    return sum(fields[:8]) - idle


class LoadMeter:
    """Average number of cores other processes kept busy between :meth:`start` and :meth:`stop`
    (None where ``/proc/stat`` is not available)."""

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def start(self) -> None:
        self.busy0, self.own0, self.wall0 = _busy_jiffies(), _own_seconds(), time.perf_counter()

    def stop(self) -> float | None:
        busy1 = _busy_jiffies()
        if busy1 is None or self.busy0 is None:
            return None
        wall = time.perf_counter() - self.wall0
        others = (busy1 - self.busy0) / self.tick - (_own_seconds() - self.own0)
        return max(0.0, others / wall) if wall > 0 else 0.0


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system
