"""Step timing without per-step host syncs: throughput and the share of step time spent in named sections.

On CUDA, sections are timed with CUDA events, read only when :meth:`StepTimer.summary` is called (at log
intervals); on the CPU, with ``time.perf_counter``. The step time is wall-clock time between summaries, so the
shares (``teacher_share``: the frozen encoder's forward; ``data_share``: waiting for the next batch) are fractions
of what a step really costs, data loading and synchronization included.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch

__all__ = ["StepTimer"]


class StepTimer:
    """Accumulates section times between summaries.

    Args:
        device: The training device; CUDA devices use events (asynchronous), others wall-clock time.
        host_sections: Sections always timed on the host (e.g. ``"data"``: waiting for the loader is host time).

    Example:
        >>> timer = StepTimer(torch.device("cpu"))
        >>> with timer.section("teacher"):
        ...     pass
        >>> sorted(timer.summary(steps=1, samples=8))
        ['data_share', 'img_per_s', 'step_ms', 'teacher_share']
    """

    def __init__(self, device: torch.device, host_sections: tuple[str, ...] = ("data",)) -> None:
        self.cuda = device.type == "cuda"
        self.host_sections = host_sections
        self._events: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = {}
        self._host: dict[str, float] = {}
        self._start = time.perf_counter()

    def reset(self) -> None:
        """Start a new interval (e.g. after checkpointing or compilation, which should not count)."""
        if self.cuda:
            torch.cuda.synchronize()
        self._events.clear()
        self._host.clear()
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Time the enclosed block under ``name``."""
        if self.cuda and name not in self.host_sections:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events.setdefault(name, []).append((start, end))
        else:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self._host[name] = self._host.get(name, 0.0) + time.perf_counter() - t0

    def summary(self, *, steps: int, samples: int, sections: tuple[str, ...] = ("teacher", "data")) -> dict[str, float]:
        """Throughput and section shares since the last summary, then start a new interval.

        Args:
            steps: Optimizer steps in the interval.
            samples: Images processed in the interval (all processes).
            sections: Sections reported as ``<name>_share`` (0 when never entered).

        Returns:
            ``img_per_s`` (images/s over all processes), ``step_ms`` (wall-clock ms per step) and one
            ``<name>_share`` (fraction of wall-clock time) per section.
        """
        if self.cuda:
            torch.cuda.synchronize()
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        totals = dict(self._host)
        for name, pairs in self._events.items():
            totals[name] = totals.get(name, 0.0) + sum(s.elapsed_time(e) for s, e in pairs) / 1000.0
        out = {"img_per_s": samples / elapsed, "step_ms": 1000.0 * elapsed / max(steps, 1)}
        for name in sections:
            out[f"{name}_share"] = totals.get(name, 0.0) / elapsed
        self._events.clear()
        self._host.clear()
        self._start = time.perf_counter()
        return out
