"""Progress on work that takes seconds: a rich bar in a terminal, plain lines elsewhere (a log, a CI job,
a pipe), so a long run is never silent."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator

PLAIN_EVERY_S = 2.0   # outside a terminal, a line at most this often (and at the end)


@contextlib.contextmanager
def progress(label: str, total: int, enabled: bool = True, stream: object = None) -> Iterator[Callable[[int], None]]:
    """A context giving ``advance(n=1)``. In a terminal: a transient rich bar. Elsewhere: a line
    ``label: k/total`` on ``stream`` (stderr) every few seconds and at the end. Nothing when not ``enabled``."""
    out = stream or sys.stderr
    if not enabled:
        yield lambda n=1: None
        return
    if getattr(out, "isatty", lambda: False)():
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task(label, total=total)
            yield lambda n=1: bar.advance(task, n)
        return
    done, last = 0, time.monotonic()

    def advance(n: int = 1) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last >= PLAIN_EVERY_S or done >= total:
            print(f"{label}: {done}/{total}", file=out, flush=True)
            last = now
    yield advance


@contextlib.contextmanager
def status(label: str, stream: object = None, after_s: float = PLAIN_EVERY_S) -> Iterator[None]:
    """Work of unknown length: a spinner with ``label`` in a terminal; elsewhere the line ``label ...``
    on ``stream`` (stderr) once the work has run ``after_s`` seconds, and nothing for quick work."""
    out = stream or sys.stderr
    if getattr(out, "isatty", lambda: False)():
        from rich.console import Console

        with Console(stderr=True).status(label):
            yield
        return
    timer = threading.Timer(after_s, lambda: print(f"{label} ...", file=out, flush=True))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
