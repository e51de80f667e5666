"""Graceful stop on SIGTERM / SIGINT: finish the current step, write a checkpoint, exit.

Cluster schedulers send SIGTERM before preempting a job; Ctrl-C sends SIGINT. :class:`StopSignal` turns the first
such signal into a flag the training loop checks after every step (the trainer all-reduces it, so every process
stops at the same step even if only one received the signal). A second signal of the same kind falls through to
the previous handler (Ctrl-C twice interrupts at once).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["StopSignal"]


class StopSignal:
    """Context manager that records SIGTERM/SIGINT instead of dying.

    Attributes:
        received: The name of the first signal received (``"SIGTERM"`` / ``"SIGINT"``), or ``None``.

    Handlers are only installed from the main thread (Python's rule); elsewhere the context manager does nothing.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.signals = signals
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            # Second signal: restore the previous behaviour and deliver it (e.g. KeyboardInterrupt).
            previous = self._previous.get(signum, signal.SIG_DFL)
            signal.signal(signum, previous)
            if callable(previous):
                previous(signum, frame)
            else:
                signal.raise_signal(signum)
            return
        self.received = signal.Signals(signum).name

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def __bool__(self) -> bool:
        return self.received is not None
