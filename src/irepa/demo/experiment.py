"""The demo end to end: data, training runs through the real trainer, FD evaluations, figures and the report.

Run directory (``runs/demo/<timestamp>/``)::

    demo.json                 the settings (resuming with other settings is refused)
    data/train/               the synthetic image store the runs train on (irepa.data store, with masks)
    reference.npz             evaluator feature statistics of the training images (the FD reference)
    runs/<run>/               one trainer run directory each (config.yaml, checkpoints/, snapshots/, metrics.jsonl)
    evals/<run>/step-NNNNNNN.json   FD of the EMA snapshot of that step (an evaluation that exists is not redone)
    samples/<run>/step-NNNNNNN.png  a class-per-row grid of that evaluation's samples
    figures/*.png             loss and FD curves, sample grids, the teacher's similarity maps
    results.json              every number of the report
    report.md                 the report

Resuming: re-running on the same directory continues where it stopped. Finished runs (their last snapshot exists)
are not retrained, an unfinished run continues from its newest checkpoint through the trainer's own exact resume,
and finished evaluations are read back. Every step is deterministic for a seed on a given machine, so a resumed
demo reports the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from irepa.demo.settings import DemoSettings, RunSpec
from irepa.errors import IrepaError
from irepa.utils.device import resolve_device

__all__ = ["DEMO_FORMAT", "Demo", "DemoInterrupted"]

#: Format tag of ``demo.json``.
DEMO_FORMAT = "irepa-demo/1"


class DemoInterrupted(Exception):
    """Training was stopped by SIGINT/SIGTERM; a checkpoint was written and re-running resumes."""

    def __init__(self, run: str, step: int, run_dir: Path) -> None:
        super().__init__(f"run {run!r} stopped at step {step}")
        self.run, self.step, self.run_dir = run, step, run_dir


class _Phase:
    """A progress bar for one phase of the demo (``[k/N] what``), or plain log lines without a terminal bar."""

    def __init__(self, enabled: bool, label: str, total: int, unit: str, initial: int = 0) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=label, unit=unit, dynamic_ncols=True, leave=True)

    def update_to(self, value: int) -> None:
        if self.bar is not None:
            self.bar.update(value - self.bar.n)

    def postfix(self, **values: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Demo:
    """One demo experiment in ``run_dir`` (created, or resumed if it holds a demo with the same settings).

    Args:
        settings: What to run (:mod:`irepa.demo.settings`).
        run_dir: The run directory.
        device: ``cpu``, ``cuda`` or ``auto``.
        progress: Show progress bars.
        log: Where status lines go.

    Raises:
        IrepaError: ``run_dir`` holds a demo made with other settings, or something that is not a demo.
    """

    def __init__(
        self,
        settings: DemoSettings,
        run_dir: str | Path,
        *,
        device: str = "cpu",
        progress: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.device = device
        self.progress = progress
        self.log = log
        self.timing: dict[str, float] = {}
        self._space: Any = None
        self._reference: Any = None
        self._check_run_dir()

    # ------------------------------------------------------------------------------------------------------------------
    # Entry point

    def run(self) -> Path:
        """Run (or finish) the demo and write the report.

        Returns:
            The path of ``report.md``.

        Raises:
            DemoInterrupted: A training run was stopped by a signal (re-run to resume).
        """
        from irepa.demo.report import RunRecord, build_results, write_report

        start = time.perf_counter()
        s = self.settings
        phases = 3 + 2 * len(s.runs)
        self._phase_index = 0
        self._phases = phases
        with self._timed("data"):
            self._prepare_data()
        with self._timed("reference"):
            self._prepare_reference()
        for spec in s.runs:
            with self._timed(f"train/{spec.name}"):
                self._train(spec)
            with self._timed(f"evaluate/{spec.name}"):
                self._evaluate(spec)
        with self._timed("report"):
            label = self._next_label("report: teacher analysis, figures, report.md")
            phase = _Phase(self.progress, label, 3, "part")
            analysis = self._teacher_analysis()
            phase.update_to(1)
            records = {
                spec.name: RunRecord(
                    metrics=_read_jsonl(self.run_path(spec) / "metrics.jsonl"),
                    evals=self.read_evals(spec),
                    grid=str(self.grid_path(spec, s.steps).relative_to(self.run_dir)),
                )
                for spec in s.runs
            }
            results = build_results(
                s,
                runs=records,
                analysis=analysis,
                real_fd=self.real_fd(),
                run_dir=self.run_dir,
                machine=json.loads((self.run_dir / "demo.json").read_text()).get("machine", {}),
            )
            phase.update_to(2)
            self._write_timing(time.perf_counter() - start)
            results["timing"] = self._read_timing()
            report = write_report(self.run_dir, results)
            phase.update_to(3)
            phase.close()
        return report

    # ------------------------------------------------------------------------------------------------------------------
    # Run directory and bookkeeping

    def _check_run_dir(self) -> None:
        from irepa.utils.io import write_json

        path = self.run_dir / "demo.json"
        wanted = {"format": DEMO_FORMAT, "settings": self.settings.to_dict()}
        if path.is_file():
            try:
                found = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise IrepaError(f"{path} is unreadable ({exc}); use a new output directory") from exc
            if found.get("format") != DEMO_FORMAT:
                raise IrepaError(f"{path} is not an irepa demo ({found.get('format')!r}); use a new output directory")
            diff = _diff(found.get("settings", {}), wanted["settings"])
            if diff:
                shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:5])
                raise IrepaError(
                    f"demo in {self.run_dir} was started with other settings ({shown}); resume it with its original "
                    "options or start a new one"
                )
            self.resumed = True
        else:
            if self.run_dir.exists() and any(self.run_dir.iterdir()):
                raise IrepaError(f"{self.run_dir} exists and is not a demo run directory; choose another --out")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(path, {**wanted, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": _machine()})
            self.resumed = False

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timing[name] = self.timing.get(name, 0.0) + time.perf_counter() - start

    def _next_label(self, what: str) -> str:
        self._phase_index += 1
        return f"[{self._phase_index}/{self._phases}] {what}"

    def _write_timing(self, total: float) -> None:
        """Add this session's phase times to ``timing.json`` (a resumed demo adds its own)."""
        from irepa.utils.io import write_json

        path = self.run_dir / "timing.json"
        old = json.loads(path.read_text()) if path.is_file() else {"sessions": []}
        old["sessions"].append({"seconds": round(total, 2), "phases": {k: round(v, 2) for k, v in self.timing.items()}})
        write_json(path, old)

    def _read_timing(self) -> dict[str, Any]:
        data = json.loads((self.run_dir / "timing.json").read_text())
        phases: dict[str, float] = {}
        for session in data["sessions"]:
            for k, v in session["phases"].items():
                phases[k] = round(phases.get(k, 0.0) + v, 2)
        return {
            "total_seconds": round(sum(s["seconds"] for s in data["sessions"]), 2),
            "sessions": len(data["sessions"]),
            "phases": phases,
        }

    # ------------------------------------------------------------------------------------------------------------------
    # Data and the FD reference

    @property
    def store_dir(self) -> Path:
        """The synthetic image store the runs train on."""
        return self.run_dir / "data" / "train"

    def _prepare_data(self) -> None:
        from irepa.data.prepare import prepare_synthetic_store

        s = self.settings
        label = self._next_label(f"data: {s.train_images} synthetic {s.image_size}px images")
        phase = _Phase(self.progress, label, 1, "store")
        prepare_synthetic_store(
            self.store_dir,
            num_images=s.train_images,
            resolution=s.image_size,
            num_classes=s.num_classes,
            seed=s.data_seed,
            shard_size=min(5000, s.train_images),
        )
        phase.update_to(1)
        phase.close()

    def training_images(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``count`` training images (uint8 (N, 3, H, W)) and labels, read from the store."""
        from irepa.data.store import open_store

        store = open_store(self.store_dir, kind="images")
        images, labels, total = [], [], 0
        for shard in range(len(store.manifest["shards"])):
            images.append(store.read_shard("images", shard))
            labels.append(store.read_shard("labels", shard))
            total += len(labels[-1])
            if total >= count:
                break
        array = np.concatenate(images)[:count]
        return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(
            np.concatenate(labels)[:count]
        )

    def feature_space(self) -> Any:
        """The evaluator's feature space (loaded once)."""
        if self._space is None:
            from irepa.demo.evaluation import feature_space

            self._space = feature_space(self._torch_device())
        return self._space

    def _prepare_reference(self) -> None:
        """Evaluator statistics of the training images, and the FD of as many unseen real images (the floor)."""
        from irepa.data.synthetic import generate
        from irepa.demo.evaluation import reference_statistics, score_samples
        from irepa.metrics.generative import FeatureStatistics
        from irepa.utils.io import atomic_write, write_json

        s = self.settings
        path = self.run_dir / "reference.npz"
        label = self._next_label(f"FD reference: evaluator features of {s.reference_images} training images")
        phase = _Phase(self.progress, label, 2, "part")
        if path.is_file():
            with np.load(path) as z:
                self._reference = FeatureStatistics(z["mu"], z["sigma"], int(z["count"]))
            phase.update_to(2)
            phase.close()
            return
        images, _ = self.training_images(s.reference_images)
        self._reference = reference_statistics(self.feature_space(), images)
        phase.update_to(1)
        # Unseen real images (the generator's images after the training set), as many as an evaluation draws: the
        # FD a perfect model would get at this sample size.
        real = generate(
            s.fd.num_samples, image_size=s.image_size, num_classes=s.num_classes, seed=s.data_seed, start=s.train_images
        )
        floor = score_samples(self.feature_space(), real.images, self._reference)
        write_json(self.run_dir / "reference.json", {"real_fd": floor, "num_real": s.fd.num_samples})
        with atomic_write(path, "wb") as f:
            np.savez(f, mu=self._reference.mu, sigma=self._reference.sigma, count=self._reference.count)
        phase.update_to(2)
        phase.close()

    # ------------------------------------------------------------------------------------------------------------------
    # Training

    def run_path(self, spec: RunSpec) -> Path:
        """The trainer's run directory of ``spec``."""
        return self.run_dir / "runs" / spec.name

    def snapshot_path(self, spec: RunSpec, step: int) -> Path:
        """The EMA snapshot the trainer writes at ``step`` (its ``snapshots/ema-<step>.safetensors``)."""
        from irepa.training.trainer import snapshot_path

        return snapshot_path(self.run_path(spec), step)

    def train_config(self, spec: RunSpec) -> Any:
        """The resolved :class:`irepa.training.TrainConfig` of run ``spec``."""
        from irepa.config import build
        from irepa.training.config import TrainConfig

        s = self.settings
        align: dict[str, Any] = {"encoders": []}
        if spec.aligned:
            align = {
                "encoders": [spec.teacher],
                "depth": s.align_depth,
                "projector": spec.projector,
                "projector_dim": s.projector_dim,
                "kernel_size": 3,
                "target_norm": spec.target_norm,
                "gamma": s.gamma,
                "weight": s.align_weight,
            }
        layer = {
            "name": f"demo-{spec.name}",
            "model": {"name": s.model, "overrides": dict(s.model_overrides)},
            "diffusion": {"path": "linear", "time_sampler": "uniform", "label_dropout": s.label_dropout},
            "align": align,
            # Each image's targets are computed once (a 10,000-image epoch is ~313 steps of the 1,500) and read back
            # afterwards: bit-identical on the CPU, ~20 % of an aligned step saved after the first epoch.
            "teacher": {"offline": True, "cache_targets": spec.aligned},
            "data": {
                "space": "pixel",
                "images": str(self.store_dir),
                "resolution": s.image_size,
                "num_workers": 0,
            },
            "optim": {"lr": s.lr, "global_batch_size": s.batch_size, "grad_clip": 1.0},
            "train": {
                "max_steps": s.steps,
                "precision": "fp32",
                "device": self.device,
                "seed": s.seed,
                "ema_decay": s.ema_decay,
                "log_every_steps": s.log_every,
                "checkpoint_every_steps": s.checkpoint_every,
                "snapshot_every_steps": s.eval_every,
                "keep_last": 2,
            },
            "logging": {"console": False, "progress_bar": False, "jsonl": True, "tensorboard": False},
        }
        return build(TrainConfig, layer)

    def _train(self, spec: RunSpec) -> None:
        from irepa.training import Trainer

        s = self.settings
        label = self._next_label(f"train {spec.name}: {spec.label}")
        if self.snapshot_path(spec, s.steps).is_file():
            phase = _Phase(self.progress, label, s.steps, "step", initial=s.steps)
            phase.close()
            return
        trainer = Trainer(self.train_config(spec), self.run_path(spec), stream=_NullStream())
        phase = _Phase(self.progress, label, s.steps, "step")

        def on_step(t: Any) -> None:
            phase.update_to(t.step)

        # At the logging interval: the trainer restarts its step timer after hooks, so a hook between two log steps
        # would shorten the interval its logged images/s and teacher share are measured over.
        trainer.add_hook("demo-progress", s.log_every, on_step, at_end=False)
        try:
            result = trainer.fit()
        finally:
            phase.close()
        if result.status != "completed":
            raise DemoInterrupted(spec.name, result.step, self.run_dir)

    # ------------------------------------------------------------------------------------------------------------------
    # Evaluation

    def eval_path(self, spec: RunSpec, step: int) -> Path:
        """The FD record of ``spec`` at ``step``."""
        return self.run_dir / "evals" / spec.name / f"step-{step:07d}.json"

    def grid_path(self, spec: RunSpec, step: int) -> Path:
        """The sample grid of ``spec`` at ``step``."""
        return self.run_dir / "samples" / spec.name / f"step-{step:07d}.png"

    def _evaluate(self, spec: RunSpec) -> None:
        from irepa.demo.evaluation import evaluate_snapshot, image_grid
        from irepa.utils.io import atomic_write, write_json

        s = self.settings
        steps = s.eval_steps
        done = [step for step in steps if self.eval_path(spec, step).is_file()]
        label = self._next_label(f"evaluate {spec.name}: FD of {s.fd.num_samples} samples at steps {steps}")
        phase = _Phase(self.progress, label, len(steps), "ckpt", initial=len(done))
        for step in steps:
            if self.eval_path(spec, step).is_file():
                continue
            snapshot = self.snapshot_path(spec, step)
            if not snapshot.is_file():
                raise IrepaError(
                    f"run {spec.name!r} has no EMA snapshot for step {step} ({snapshot}); it did not finish"
                )
            record, images, labels = evaluate_snapshot(
                snapshot,
                s.fd,
                self.feature_space(),
                self._reference,
                num_classes=s.num_classes,
                device=self._torch_device(),
            )
            grid = image_grid(images, labels, s.grid_per_class, s.num_classes)
            from PIL import Image

            path = self.grid_path(spec, step)
            with atomic_write(path, "wb") as f:
                Image.fromarray(grid).save(f, format="PNG")
            write_json(self.eval_path(spec, step), {"run": spec.name, "step": step, **record})
            phase.update_to(steps.index(step) + 1)
            phase.postfix(fd=f"{record['fd']:.2f}")
        phase.close()

    def read_evals(self, spec: RunSpec) -> list[dict[str, Any]]:
        """The FD records of ``spec``, by step."""
        return [json.loads(self.eval_path(spec, step).read_text()) for step in self.settings.eval_steps]

    def real_fd(self) -> float:
        """FD of unseen real images against the reference (the floor at this sample size)."""
        return float(json.loads((self.run_dir / "reference.json").read_text())["real_fd"])

    # ------------------------------------------------------------------------------------------------------------------
    # Teacher analysis (similarity maps, spatial norm)

    def _teacher_analysis(self) -> dict[str, Any]:
        from irepa.demo.analysis import teacher_analysis

        teachers = list(dict.fromkeys(spec.teacher for spec in self.settings.runs if spec.teacher))
        return teacher_analysis(teachers, self.settings, self.run_dir / "figures", device=self._torch_device())

    def _torch_device(self) -> torch.device:
        return resolve_device(self.device)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class _NullStream:
    """Swallows the trainer's console messages (they still go to each run's log.txt); the demo shows its bars."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _diff(old: Any, new: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two JSON-like trees."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for key in sorted(set(old) | set(new)):
            out.update(_diff(old.get(key), new.get(key), f"{prefix}{key}."))
        return out
    if isinstance(old, float) and isinstance(new, float) and math.isclose(old, new):
        return {}
    return {} if old == new else {prefix.rstrip("."): (old, new)}


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
