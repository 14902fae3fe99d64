"""Progress (costplan/progress.py): plain lines where no terminal shows a bar, nothing for quick work."""

from __future__ import annotations

import io

import costplan.progress as progress_module
from costplan.progress import progress, status


def test_outside_a_terminal_progress_is_plain_lines_ending_at_the_total() -> None:
    out = io.StringIO()      # not a terminal
    with progress("probing", 3, stream=out) as advance:
        for _ in range(3):
            advance()
    assert out.getvalue().splitlines()[-1] == "probing: 3/3"
    quiet = io.StringIO()
    with progress("probing", 3, enabled=False, stream=quiet) as advance:
        advance()
    assert quiet.getvalue() == ""


class _Timer:
    """Stands in for threading.Timer: fires only when the test says so."""

    made: list = []

    def __init__(self, delay: float, fn) -> None:  # noqa: ANN001
        self.fn, self.cancelled, self.daemon = fn, False, False
        _Timer.made.append(self)

    def start(self) -> None: ...

    def cancel(self) -> None:
        self.cancelled = True


def test_status_says_what_runs_once_it_runs_long_and_nothing_for_quick_work(monkeypatch) -> None:
    monkeypatch.setattr(progress_module.threading, "Timer", _Timer)
    out = io.StringIO()
    with status("tracing resnet50", stream=out):
        _Timer.made[-1].fn()          # the work outlasted the delay
    assert out.getvalue() == "tracing resnet50 ...\n" and _Timer.made[-1].cancelled
    quick = io.StringIO()
    with status("tracing resnet18", stream=quick):
        pass                          # done before the delay: the timer is cancelled unfired
    assert quick.getvalue() == "" and _Timer.made[-1].cancelled
