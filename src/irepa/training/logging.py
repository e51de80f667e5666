"""The logging facade: one ``log(metrics, step)`` call fans out to the console, JSONL, TensorBoard and W&B.

Rank-0 gating lives here and nowhere else: a :class:`TrainLogger` built with ``enabled=False`` (every process but
the main one) does nothing. Metrics are accumulated on the device by :class:`MetricAccumulator` and turned into
Python floats only at log intervals (one host sync per interval, averaged across processes).

Files in the run directory:

- ``log.txt``: every console message (start-up summary, warnings, metric lines), appended across resumes.
- ``metrics.jsonl``: one JSON object per log interval: ``{"step": ..., "nimg": ..., "time": ..., <metrics>}``.
  On resume from step S, lines with ``step > S`` (written after the checkpoint the run resumes from) are dropped,
  so the file always describes one consistent trajectory.
- ``tensorboard/``: TensorBoard event files (``tensorboard --logdir RUN_DIR/tensorboard``); resumed runs purge
  events after the resume step.
- W&B (optional, ``logging.wandb=true``): the run id is kept in ``wandb_id.txt`` so a resumed run continues the
  same W&B run.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch

from irepa.errors import IrepaError
from irepa.utils.io import atomic_write

if TYPE_CHECKING:
    from irepa.training.config import LoggingConfig

__all__ = ["MetricAccumulator", "TrainLogger", "format_metrics"]


# ----------------------------------------------------------------------------------------------------------------------
# Accumulation on the device


class MetricAccumulator:
    """Running means of scalar metrics kept as device tensors (no host sync until :meth:`compute`).

    Example:
        >>> acc = MetricAccumulator()
        >>> acc.add({"loss": torch.tensor(1.0)}); acc.add({"loss": torch.tensor(3.0)})
        >>> acc.compute()
        {'loss': 2.0}
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int | torch.Tensor] = {}

    def add(self, metrics: Mapping[str, torch.Tensor | float], *, keep: torch.Tensor | None = None) -> None:
        """Add one observation per metric (scalar tensors are detached and kept in float32 on their device).

        Args:
            metrics: Name → scalar.
            keep: 0-d bool tensor: ``False`` leaves the means unchanged without a host sync (skipped steps); the
                counts are then kept on the device too.
        """
        for name, value in metrics.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
            count: int | torch.Tensor = 1
            if keep is not None:
                value = torch.where(keep, value, torch.zeros_like(value))
                count = keep.float()
            if name in self._sums:
                self._sums[name] = self._sums[name] + value
                self._counts[name] = self._counts[name] + count
            else:
                self._sums[name] = value.clone()
                self._counts[name] = count

    def __len__(self) -> int:
        return len(self._sums)

    def compute(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
        """Return the means since the last call and reset.

        Args:
            reduce: Reduces the stacked vector of means across processes (e.g. ``accelerator.reduce(x, "mean")``);
                every process must call :meth:`compute` with the same metric names when it is given.
        """
        names = sorted(self._sums)
        if not names:
            return {}
        device = self._sums[names[0]].device
        means = torch.stack([(self._sums[n] / self._counts[n]).to(device) for n in names])
        if reduce is not None:
            means = reduce(means)
        values = means.tolist()  # the one host sync per log interval
        self._sums.clear()
        self._counts.clear()
        return dict(zip(names, values))


# ----------------------------------------------------------------------------------------------------------------------
# Formatting


def _fmt(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e9):
        return str(int(value))
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3e}"
    return f"{value:.4g}"


def format_metrics(metrics: Mapping[str, float], step: int, total_steps: int | None = None) -> str:
    """One console line: ``step 120/400000  loss 0.5123  align_cos 0.4021 ...`` (metrics in the given order)."""
    head = f"step {step}" + (f"/{total_steps}" if total_steps else "")
    return "  ".join([head, *(f"{k} {_fmt(v)}" for k, v in metrics.items())])


# ----------------------------------------------------------------------------------------------------------------------
# Sinks


class _ConsoleSink:
    """Metric lines on the console (through tqdm when a progress bar is shown) plus ``log.txt``."""

    def __init__(self, run_dir: Path, *, progress_bar: bool, total_steps: int, start_step: int, stream: IO[str]):
        self.stream = stream
        self.total_steps = total_steps
        self.log_file = open(run_dir / "log.txt", "a", buffering=1)  # noqa: SIM115 - kept open for the run
        self.bar = None
        if progress_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=stream, leave=True
            )

    def message(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.log_file.write(f"[{stamp}] {text}\n")
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def write(self, metrics: Mapping[str, float], step: int) -> None:
        self.message(format_metrics(metrics, step, self.total_steps))
        if self.bar is not None:
            keys = ("loss", "align_cos", "img_per_s")
            self.bar.set_postfix({k: _fmt(metrics[k]) for k in keys if k in metrics}, refresh=False)

    def progress(self, step: int) -> None:
        if self.bar is not None and step > self.bar.n:
            self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.log_file.close()


class _JsonlSink:
    def __init__(self, path: Path, start_step: int | None):
        self.path = path
        if start_step is not None and path.exists():
            _truncate_jsonl(path, start_step)
        self.file = open(path, "a", buffering=1)  # noqa: SIM115 - kept open for the run

    def write(self, metrics: Mapping[str, float], step: int) -> None:
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        self.file.write(json.dumps(record, allow_nan=True) + "\n")

    def close(self) -> None:
        self.file.close()


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep only the lines of ``path`` with ``step <= last_step`` (and drop an incomplete last line)."""
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if isinstance(record, dict) and record.get("step", 0) <= last_step:
            kept.append(line)
    with atomic_write(path, "w") as f:
        f.write("".join(line + "\n" for line in kept))


class _TensorBoardSink:
    def __init__(self, log_dir: Path, start_step: int | None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise IrepaError(
                "logging.tensorboard=true but the tensorboard package is not installed; "
                "pip install tensorboard, or set logging.tensorboard=false"
            ) from exc
        # purge_step drops events written after the checkpoint we resume from (they belong to the lost segment).
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=None if start_step is None else start_step + 1)

    def write(self, metrics: Mapping[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _WandbSink:
    def __init__(self, run_dir: Path, cfg: LoggingConfig, run_name: str, run_config: Mapping[str, Any] | None):
        try:
            import wandb
        except ImportError as exc:
            raise IrepaError(
                "logging.wandb=true but the wandb package is not installed; pip install wandb (or irepa[wandb]), "
                "or set logging.wandb=false"
            ) from exc
        id_file = run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else wandb.util.generate_id()
        if not id_file.exists():
            with atomic_write(id_file, "w") as f:
                f.write(run_id + "\n")
        self.run = wandb.init(
            project=cfg.wandb_project,
            entity=cfg.wandb_entity,
            name=run_name or None,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            config=dict(run_config or {}),
        )

    def write(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


# ----------------------------------------------------------------------------------------------------------------------
# Facade


class TrainLogger:
    """Rank-0 gated logging facade over the configured sinks.

    Args:
        run_dir: The run directory (files are written there).
        cfg: Which sinks are on (``logging:`` section of the training config).
        enabled: ``True`` on the main process only; a disabled logger ignores every call.
        total_steps: Shown in console lines and the progress bar.
        start_step: The step training starts from (0, or the resumed checkpoint's step).
        resumed: Whether the run resumes from a checkpoint (older log records after ``start_step`` are dropped).
        run_name: Name shown by W&B.
        run_config: The resolved config (a plain dict) recorded by W&B.
        stream: Console stream (default: ``sys.stderr``, so stdout stays clean for scripts).
    """

    def __init__(
        self,
        run_dir: str | Path,
        cfg: LoggingConfig,
        *,
        enabled: bool = True,
        total_steps: int = 0,
        start_step: int = 0,
        resumed: bool = False,
        run_name: str = "",
        run_config: Mapping[str, Any] | None = None,
        stream: IO[str] | None = None,
    ) -> None:
        self.enabled = enabled
        self._console: _ConsoleSink | None = None
        self._sinks: list[Any] = []
        if not enabled:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        stream = stream if stream is not None else sys.stderr
        show_bar = cfg.progress_bar is True or (cfg.progress_bar == "auto" and _isatty(stream))
        resume_step = start_step if resumed else None
        self._console = _ConsoleSink(
            run_dir,
            progress_bar=show_bar and cfg.console,
            total_steps=total_steps,
            start_step=start_step,
            stream=stream,
        )
        if cfg.console:
            self._sinks.append(self._console)
        if cfg.jsonl:
            self._sinks.append(_JsonlSink(run_dir / "metrics.jsonl", resume_step))
        if cfg.tensorboard:
            self._sinks.append(_TensorBoardSink(run_dir / "tensorboard", resume_step))
        if cfg.wandb:
            self._sinks.append(_WandbSink(run_dir, cfg, run_name, run_config))
        self._console_on = cfg.console

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Write one record of scalar metrics at ``step`` to every sink."""
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        for sink in self._sinks:
            sink.write(clean, step)

    def info(self, message: str) -> None:
        """A console message (also appended to ``log.txt``)."""
        if self.enabled and self._console is not None:
            if self._console_on:
                self._console.message(message)
            else:
                self._console.log_file.write(message + "\n")

    def warning(self, message: str) -> None:
        """A console warning (prefixed ``warning:``)."""
        self.info(f"warning: {message}")

    def progress(self, step: int) -> None:
        """Advance the progress bar to ``step`` (cheap; call every step)."""
        if self.enabled and self._console is not None:
            self._console.progress(step)

    def close(self) -> None:
        """Flush and close every sink (idempotent)."""
        if not self.enabled:
            return
        sinks = list(self._sinks)
        if self._console is not None and self._console not in sinks:
            sinks.append(self._console)
        for sink in sinks:
            sink.close()
        self._sinks = []
        self._console = None
        self.enabled = False

    def __enter__(self) -> TrainLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
