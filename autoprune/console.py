"""What a command shows on stderr while it works: stage lines (:func:`status`), progress displays
(:class:`Progress`) and counted nouns (:func:`plural`).

Library code calls :func:`status` for each slow stage; the lines appear only where a caller shows them
(the command line does, unless ``--quiet``, with :func:`show_status`). :class:`Progress` draws tqdm's bar
on a terminal and, when stderr is a file or a pipe, writes one plain line every few seconds and a final one.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

PLAIN_EVERY_S = 5.0
"""Seconds between two plain progress lines when stderr is not a terminal."""

STATUS_SUFFIX = " ..."
"""How every stage line ends."""

_log = logging.getLogger("autoprune")


def plural(n: int, word: str, many: str | None = None) -> str:
    """``n`` and ``word``, in the plural unless ``n`` is 1: ``plural(1, "epoch")`` is ``1 epoch``."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def status(message: str) -> None:
    """Announce a stage of the work (one line ``message ...`` on stderr where :func:`show_status` is on)."""
    _log.info("%s%s", message, STATUS_SUFFIX)


class _StderrHandler(logging.Handler):
    """Writes each record on its own line to the current ``sys.stderr``, above any progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001  (logging's contract: a handler never raises)
            self.handleError(record)


@contextlib.contextmanager
def show_status(enabled: bool = True) -> Iterator[None]:
    """Print :func:`status` lines on stderr while the block runs (the command line's switch)."""
    if not enabled:
        yield
        return
    handler = _StderrHandler(logging.INFO)
    previous = _log.level
    _log.addHandler(handler)
    _log.setLevel(logging.INFO)
    try:
        yield
    finally:
        _log.removeHandler(handler)
        _log.setLevel(previous)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """A progress display on stderr, used as a context manager: tqdm's bar on a terminal; otherwise (a log
    file, a pipe) a plain line such as ``random: 40/100 evals, best 99.31% at 0.498 FLOPs, 12 s`` every
    :data:`PLAIN_EVERY_S` seconds and one when the work is done.

    Args:
        total: the number of steps (None: not known yet, see :meth:`set_total`).
        desc: what is counted, first on the line (``random``, ``fine-tune``).
        unit: one step (``eval``, ``epoch``).
        enabled: False shows nothing (``--quiet``).
        leave: keep the terminal bar when done.
        initial: steps already done (a resumed job).
    """

    def __init__(self, total: int | None, desc: str, unit: str, enabled: bool = True, leave: bool = True,
                 initial: int = 0) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.postfix = ""
        self.enabled = enabled
        self._started = self._printed = time.monotonic()
        self._printed_n: int | None = None
        self._bar: Any = None
        if enabled and _is_terminal(sys.stderr):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, mininterval=0.5,
                             leave=leave)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.close(done=kind is None)

    def update(self, steps: int = 1) -> None:
        """Count ``steps`` more steps done."""
        self.set(self.n + steps)

    def set(self, n: int) -> None:
        """Set the number of steps done."""
        steps, self.n = n - self.n, n
        if self._bar is not None:
            self._bar.update(steps)
        elif self.enabled and (now := time.monotonic()) - self._printed >= PLAIN_EVERY_S:
            self._plain_line(now)

    def set_total(self, total: int) -> None:
        """Set the number of steps, once known."""
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def set_description(self, desc: str) -> None:
        """Change what is counted (the line's first words)."""
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description(desc)

    def set_postfix(self, text: str) -> None:
        """Show ``text`` after the counts (the best result so far, a loss)."""
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text)

    def close(self, done: bool = True) -> None:
        """End the display: close the bar, or (not a terminal, ``done``) write the final plain line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and done and self._printed_n != self.n and (self.n or self.total is not None):
            self._plain_line(time.monotonic())  # (not to repeat the last line, nor when nothing was counted)
        self.enabled = False

    def line(self, now: float | None = None) -> str:
        """The plain line for the current state (``now``: a reading of ``time.monotonic``)."""
        counted = f"{self.n}/{plural(self.total, self.unit)}" if self.total is not None else plural(self.n, self.unit)
        return ", ".join(part for part in (f"{self.desc}: {counted}", self.postfix,
                                           f"{(time.monotonic() if now is None else now) - self._started:.0f} s") if part)

    def _plain_line(self, now: float) -> None:
        self._printed, self._printed_n = now, self.n
        print(self.line(now), file=sys.stderr, flush=True)
