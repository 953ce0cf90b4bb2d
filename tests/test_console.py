"""What commands show on stderr: counted nouns, stage lines, and progress on a terminal or a log file."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from autoprune import console
from autoprune.console import Progress, plural, show_status, status


def test_plural() -> None:
    assert [plural(n, "epoch") for n in (0, 1, 2)] == ["0 epochs", "1 epoch", "2 epochs"]
    assert plural(1, "worker process", "worker processes") == "1 worker process"
    assert plural(3, "worker process", "worker processes") == "3 worker processes"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_status_lines_only_where_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    status("before")  # a library call with no display: nothing
    with show_status():
        status("loading env x")
    with show_status(enabled=False):  # --quiet
        status("hidden")
    status("after")
    assert sys.stderr.getvalue() == "loading env x ...\n"
    assert not logging.getLogger("autoprune").handlers


def test_progress_plain_lines_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    clock = iter(range(0, 1000, 2))  # each reading of the clock is 2 s later
    monkeypatch.setattr(console.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(console, "PLAIN_EVERY_S", 5.0)
    with Progress(4, "random", "eval") as bar:
        for _ in range(4):
            bar.set_postfix("best 99.00% at 0.500 FLOPs")
            bar.update()
    assert sys.stderr.getvalue().splitlines() == [
        "random: 3/4 evals, best 99.00% at 0.500 FLOPs, 6 s",  # the first line once 5 s have passed
        "random: 4/4 evals, best 99.00% at 0.500 FLOPs, 10 s",  # and the final one
    ]


def test_progress_final_line_not_repeated_and_nothing_when_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(console, "PLAIN_EVERY_S", 0.0)
    with Progress(1, "fine-tune", "epoch") as bar:
        bar.update()
    with Progress(None, "sensitivity", "eval"):  # read from a cache: nothing was counted
        pass
    with Progress(3, "random", "eval", enabled=False) as bar:
        bar.update(3)
    assert [line.rsplit(",", 1)[0] for line in sys.stderr.getvalue().splitlines()] == ["fine-tune: 1/1 epoch"]


def test_progress_on_a_terminal_is_the_tqdm_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", _Terminal())
    with Progress(2, "random", "eval") as bar:
        bar.set_postfix("best 99.00% at 0.500 FLOPs")
        bar.update(2)
    text = sys.stderr.getvalue()
    assert "\r" in text and "random: 100%" in text and "2/2" in text and "best 99.00% at 0.500 FLOPs" in text
