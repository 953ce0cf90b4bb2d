"""Stopping a search on SIGINT or SIGTERM without losing work.

While :func:`graceful_stop` is active, the first SIGINT (Ctrl-C) or SIGTERM (a scheduler's stop) asks the
search to stop: the running candidate is finished and recorded, then :class:`StopRequested` is raised
from the Evaluator (the stop is its last observer), and the run writes its outputs from what it
recorded. A second signal stops at once (:class:`KeyboardInterrupt`); the candidate that was running is
then not recorded (an Optuna trial is marked failed) and a rerun evaluates it again.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from autoprune.console import status

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(KeyboardInterrupt):
    """A search stopped by a signal once its running candidate was recorded (the message says what was kept)."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message or f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's status for a process ended by the signal: 128 + its number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


class GracefulStop:
    """The stop asked for by a signal (``signum``), and the Evaluator observer acting on it.

    :func:`graceful_stop` catches the signals; append the object it yields to the Evaluator's observers after
    the records.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: the first signal asks for a stop, a second one stops at once."""
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        status(f"{signal.Signals(signum).name}: stopping once the running candidate is recorded "
               f"(send it again to stop at once)")

    def __call__(self, candidate: object) -> None:
        """The Evaluator observer: raise :class:`StopRequested` once a stop was asked for."""
        if self.signum is not None:
            raise StopRequested(self.signum)


@contextlib.contextmanager
def graceful_stop() -> Iterator[GracefulStop]:
    """Catch SIGINT and SIGTERM while the block runs (in the main thread only; elsewhere nothing changes)."""
    stop = GracefulStop()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, stop.handle) for s in SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
