"""What the demo runs: the three (or, with ``--study``, four) training runs and their shared settings.

Every number of a demo is in :class:`DemoSettings`, written to ``demo.json`` in the run directory; resuming a run
directory with different settings is refused. The presets:

* :func:`full_settings` — ``irepa demo`` / ``make demo``: a tiny SiT trained three times on the synthetic dataset
  (no alignment, REPA, iREPA) with the same seed, data order and step budget; FD at several checkpoints.
* :func:`quick_settings` — ``irepa demo --quick``: the same pipeline at toy size (CI; every artifact, seconds).
* :func:`study_settings` — ``irepa demo --study``: REPA with three teachers of similar size (default, global-only,
  dense-only) plus the unaligned baseline, for the paper's central question.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from irepa.demo.evaluation import SampleSettings
from irepa.errors import IrepaError

__all__ = ["DemoSettings", "RunSpec", "full_settings", "quick_settings", "settings_for", "study_settings"]

Mode = Literal["full", "quick", "study"]

#: Zoo ids of the shipped demo teachers (see :mod:`irepa.demo.teachers`).
DEFAULT_TEACHER = "irepa-demo-vit"
GLOBAL_TEACHER = "irepa-demo-vit-global"
DENSE_TEACHER = "irepa-demo-vit-dense"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run of the demo.

    Attributes:
        name: Run name (folder under ``runs/``).
        label: Human label for tables and plots.
        teacher: Zoo id of the teacher, or ``None`` for no alignment.
        projector: Projector kind (``mlp`` for REPA, ``conv`` for iREPA).
        target_norm: Target normalization (``none`` for REPA, ``spatial`` for iREPA).
    """

    name: str
    label: str
    teacher: str | None = None
    projector: str = "mlp"
    target_norm: str = "none"

    @property
    def aligned(self) -> bool:
        """Whether the run aligns to a teacher."""
        return self.teacher is not None


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """Every setting of a demo run (defaults are those of ``irepa demo``; see the presets).

    Attributes:
        mode: ``full``, ``quick`` or ``study``.
        seed: Seed of the model initialization, the data order, the per-step noise and the FD samples; the same for
            every run, so runs differ only by their alignment.
        steps: Optimizer steps per run.
        eval_every: Steps between EMA snapshots; FD is evaluated at each one (and at the end).
        batch_size: Images per step.
        lr: AdamW learning rate (constant).
        ema_decay: EMA decay per step (snapshots hold the EMA weights).
        log_every: Steps between logged loss values (the loss curves).
        checkpoint_every: Steps between full training checkpoints (resume points).
        train_images: Synthetic training images (the dataset and the FD reference).
        data_seed: Seed of the synthetic dataset.
        num_classes: Synthetic classes.
        image_size: Image side in pixels.
        model: Registry name of the diffusion model.
        model_overrides: Architecture overrides of ``model`` (the tiny SiT).
        align_depth: 1-based block whose tokens are aligned.
        align_weight: Alignment loss weight λ (the same for REPA and iREPA, so only the projector and the target
            normalization differ between them).
        projector_dim: Hidden width of REPA's MLP projector.
        gamma: γ of iREPA's spatial normalization.
        label_dropout: Label dropout (null class) during training.
        fd: How FD samples are drawn.
        reference_images: Training images whose evaluator features are the FD reference.
        grid_per_class: Samples per class in the sample grids.
        runs: The runs, in order.
    """

    mode: Mode = "full"
    seed: int = 0
    steps: int = 1500
    eval_every: int = 500
    batch_size: int = 32
    lr: float = 1e-3
    ema_decay: float = 0.995
    log_every: int = 10
    checkpoint_every: int = 250
    train_images: int = 10000
    data_seed: int = 0
    num_classes: int = 10
    image_size: int = 32
    model: str = "SiT-S/4"
    model_overrides: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"depth": 4, "hidden_size": 96, "num_heads": 3}
    )
    align_depth: int = 2
    align_weight: float = 0.5
    projector_dim: int = 128
    gamma: float = 0.6
    label_dropout: float = 0.1
    fd: SampleSettings = dataclasses.field(default_factory=lambda: SampleSettings(num_samples=750, steps=10))
    reference_images: int = 5000
    grid_per_class: int = 8
    runs: tuple[RunSpec, ...] = ()

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise IrepaError(
                f"demo steps, batch size and eval interval must be >= 1 (got {self.steps}, "
                f"{self.batch_size}, {self.eval_every})"
            )
        if self.seed < 0:
            raise IrepaError(f"--seed must be >= 0, got {self.seed}")
        if self.reference_images > self.train_images:
            raise IrepaError("the FD reference cannot use more images than the training set")
        if self.fd.num_samples < self.num_classes:
            raise IrepaError(f"FD needs at least one sample per class ({self.num_classes}), got {self.fd.num_samples}")
        names = [r.name for r in self.runs]
        if not names or len(set(names)) != len(names):
            raise IrepaError(f"demo runs must be non-empty with unique names, got {names}")

    @property
    def eval_steps(self) -> list[int]:
        """Steps at which FD is evaluated: every ``eval_every`` steps and the last step."""
        steps = list(range(self.eval_every, self.steps + 1, self.eval_every))
        return steps if steps and steps[-1] == self.steps else [*steps, self.steps]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (what ``demo.json`` stores)."""
        out = dataclasses.asdict(self)
        out["runs"] = [dataclasses.asdict(r) for r in self.runs]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DemoSettings:
        """Inverse of :meth:`to_dict` (reads ``demo.json`` when resuming).

        Raises:
            IrepaError: Unknown or missing keys (a ``demo.json`` from another irepa version).
        """
        try:
            fields = dict(data)
            # demo.json files written before the quantize setting existed were sampled with rounding.
            fields["fd"] = SampleSettings(**{"quantize": "round", **fields["fd"]})
            fields["runs"] = tuple(RunSpec(**r) for r in fields["runs"])
            return cls(**fields)
        except (KeyError, TypeError) as exc:
            raise IrepaError(f"demo settings are not readable by this irepa version ({exc}); start a new demo") from exc


def _demo_runs() -> tuple[RunSpec, ...]:
    return (
        RunSpec("none", "no alignment"),
        RunSpec("repa", "REPA (MLP projector)", DEFAULT_TEACHER, "mlp", "none"),
        RunSpec("irepa", "iREPA (conv projector + spatial norm)", DEFAULT_TEACHER, "conv", "spatial"),
    )


def full_settings(seed: int = 0, steps: int | None = None) -> DemoSettings:
    """``irepa demo``: see the class defaults; ``steps`` rescales the evaluation interval (three evaluations)."""
    base = DemoSettings(mode="full", seed=seed, runs=_demo_runs())
    return _with_steps(base, steps)


def quick_settings(seed: int = 0, steps: int | None = None) -> DemoSettings:
    """``irepa demo --quick``: every artifact of the full demo in seconds (numbers meaningless at this size)."""
    base = DemoSettings(
        mode="quick",
        seed=seed,
        steps=8,
        eval_every=4,
        batch_size=16,
        log_every=2,
        checkpoint_every=4,
        train_images=256,
        model_overrides={"depth": 2, "hidden_size": 32, "num_heads": 2},
        align_depth=1,
        projector_dim=64,
        fd=SampleSettings(num_samples=200, steps=4, batch_size=200),
        reference_images=256,
        grid_per_class=4,
        runs=_demo_runs(),
    )
    return _with_steps(base, steps)


def study_settings(seed: int = 0, steps: int | None = None) -> DemoSettings:
    """``irepa demo --study``: REPA with the default, global-only and dense-only teachers, plus no alignment."""
    runs = (
        RunSpec("none", "no alignment"),
        RunSpec("repa-default", "REPA, default teacher (class + segmentation)", DEFAULT_TEACHER),
        RunSpec("repa-global", "REPA, global teacher (class only)", GLOBAL_TEACHER),
        RunSpec("repa-dense", "REPA, dense teacher (foreground only)", DENSE_TEACHER),
    )
    return _with_steps(DemoSettings(mode="study", seed=seed, runs=runs), steps)


def _with_steps(settings: DemoSettings, steps: int | None) -> DemoSettings:
    if steps is None or steps == settings.steps:
        return settings
    if steps < 1:
        raise IrepaError(f"--steps must be >= 1, got {steps}")
    evals = max(1, settings.steps // settings.eval_every)
    every = max(1, -(-steps // evals))  # ceil: at most as many evaluations as the preset
    return dataclasses.replace(
        settings, steps=steps, eval_every=every, checkpoint_every=min(settings.checkpoint_every, every)
    )


def settings_for(mode: Mode, seed: int = 0, steps: int | None = None) -> DemoSettings:
    """The preset of ``mode``."""
    presets = {"full": full_settings, "quick": quick_settings, "study": study_settings}
    return presets[mode](seed=seed, steps=steps)
