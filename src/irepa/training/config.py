"""``TrainConfig``: the typed, validated configuration of a training run.

A resolved config is built by :func:`resolve_config` from layers (later wins)::

    dataclass defaults  <  preset (--preset NAME, or a ``preset:`` key in the config file)
                        <  config file (--config FILE)  <  command-line ``key=value`` overrides

Unknown keys and wrong types are errors naming the dotted key (:mod:`irepa.config`); cross-field rules are checked
in :meth:`TrainConfig.__post_init__`. The resolved config is written to the run directory (``config.yaml``) and into
every checkpoint; resuming with a config that differs in anything but the :data:`RESUMABLE_KEYS` is refused.

Units: every ``*_steps`` field counts optimizer steps (one step = one global batch of ``optim.global_batch_size``
images, after ``optim.grad_accumulation`` micro-steps).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from irepa.align import AlignConfig
from irepa.config import build, read_yaml, to_dict
from irepa.errors import ConfigError

__all__ = [
    "RESUMABLE_KEYS",
    "DataConfig",
    "DiffusionConfig",
    "LoggingConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "TeacherConfig",
    "TrainConfig",
    "TrainLoopConfig",
    "check_resume_compatible",
    "check_run_dir",
    "config_diff",
    "resolve_config",
]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The diffusion transformer (``model:`` section)."""

    name: str = "SiT-XL/2"
    """Registry name of the model (``irepa.models.MODELS``): SiT-{S,B,L,XL}/{1,2,4}."""
    qk_norm: bool = False
    """LayerNorm on queries and keys (off in the official SiT/REPA/iREPA recipes)."""
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Extra constructor arguments for ``build_model`` (e.g. ``depth``/``hidden_size`` of tiny test models).
    ``input_size``, ``in_channels`` and ``num_classes`` are derived from the data and need not be set."""


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """The denoising objective (``diffusion:`` section). SiT time: t = 0 data, t = 1 noise."""

    path: str = "linear"
    """Interpolation path (``irepa.diffusion.paths``): ``linear`` (SiT/REPA default) or ``cosine``."""
    time_sampler: str = "uniform"
    """Training-time distribution (``irepa.diffusion.time_sampling``): ``uniform`` (all reported REPA/iREPA runs)
    or ``lognormal``."""
    time_sampler_kwargs: dict[str, float] = dataclasses.field(default_factory=dict)
    """Parameters of the time sampler (e.g. ``{mean: 0.0, std: 1.0}`` for ``lognormal``)."""
    label_dropout: float = 0.1
    """Probability of replacing the class label by the null class (classifier-free guidance). 0.1 in
    SiT/REPA/iREPA; unlike the official code, this value really controls the rate (prior-implementations §13 item
    7)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_dropout < 1.0:
            raise ConfigError(f"diffusion.label_dropout must be in [0, 1), got {self.label_dropout}")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """The training objective (``objective:`` section): ``name`` plus that objective's own settings, flat.

    ``name`` selects a registered objective (``irepa.training.objectives.OBJECTIVES``: ``denoising`` is SiT/REPA/
    iREPA); every other key is a field of that objective's ``Settings`` dataclass (unknown keys are errors).
    In YAML: ``objective: {name: denoising}``; on the command line ``objective.name=...``, ``objective.<key>=...``.
    Configs written before objectives existed have no ``objective`` key and mean ``denoising``.
    """

    name: str = "denoising"
    """Registry name of the objective (docs/recipes.md)."""
    settings: Any = None
    """The objective's typed settings (built from the section's other keys; ``None`` = its defaults)."""

    def __post_init__(self) -> None:
        cls = _objective_class(self.name)
        if self.settings is None:
            object.__setattr__(self, "settings", cls.Settings())
        elif not isinstance(self.settings, cls.Settings):
            raise ConfigError(
                f"objective {self.name!r} takes settings of type {cls.Settings.__name__}, got "
                f"{type(self.settings).__name__}"
            )

    @classmethod
    def from_config_dict(cls, data: Mapping[str, Any], *, prefix: str = "objective.") -> ObjectiveConfig:
        """Build from ``{name: ..., **settings}`` (checks keys and types against the objective's ``Settings``)."""
        from irepa.config import from_dict

        name = data.get("name", "denoising")
        if not isinstance(name, str):
            raise ConfigError(f"config key {prefix}name expects str, got {name!r} ({type(name).__name__})")
        settings_cls = _objective_class(name, prefix).Settings
        settings = from_dict(settings_cls, {k: v for k, v in data.items() if k != "name"}, prefix=prefix)
        return cls(name=name, settings=settings)

    def to_config_dict(self) -> dict[str, Any]:
        """``{name: ..., **settings}``."""
        return {"name": self.name, **to_dict(self.settings)}


def _objective_class(name: str, prefix: str = "objective.") -> Any:
    from irepa.errors import IrepaError
    from irepa.training.objectives import OBJECTIVES

    try:
        return OBJECTIVES.get(name)
    except IrepaError as exc:
        raise ConfigError(f"{prefix}name: {exc}") from None


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """How the frozen vision encoders named in ``align.encoders`` are loaded (``teacher:`` section)."""

    resolution: int | None = None
    """Image resolution the encoders are set up for; ``null`` = the image store's (256 or 512 for ImageNet). Images
    of another size are resized to it (bicubic) before the encoders, which give one token per 16 px: e.g. 128 for
    an 8×8 target grid on 32 px images."""
    weights: dict[str, str] = dataclasses.field(default_factory=dict)
    """Explicit weights file or folder per encoder id (``{dinov2-vit-b: /ckpt/dinov2_vitb14.safetensors}``)."""
    cache_dir: str | None = None
    """irepa cache root (``<cache_dir>/encoders/<id>/``); ``null`` = the one every command uses: ``$IREPA_CACHE``,
    else ``~/.cache/irepa`` (where ``irepa encoders download`` puts weights), plus the Hugging Face and torch hub
    caches."""
    offline: bool = False
    """Never download: missing weights are an error naming what was looked for (also ``HF_HUB_OFFLINE=1`` or
    ``IREPA_OFFLINE=1``)."""
    pretrained: bool = True
    """``false`` builds randomly initialized encoders: only for tests and smoke runs (targets are meaningless)."""
    arch_overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Per encoder id, architecture kwargs for tiny random encoders (``{dinov2-vit-b: {depth: 1}}``); only with
    ``pretrained: false``."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """Autocast of the frozen encoders' forward, independent of ``train.precision``: ``auto`` = bf16 on CUDA (the
    targets of a cosine loss from a frozen network: bf16 changes the tokens by ~0.3 % relative, cosine to fp32
    ≥ 0.99999, and halves the teacher's time on tensor cores), fp32 on the CPU (bf16 autocast there is 3.6x slower
    without bf16 instructions; docs/benchmarks.md). The tokens are float32 either way."""
    cache_targets: bool = False
    """Keep every sample's target tokens in host memory the first time it is drawn and read them back afterwards,
    so that after the first epoch the encoders do not run. For data sets whose targets fit in RAM
    (samples × flips × tokens × width × 4 bytes per training process: each process keeps the samples it draws,
    which after a few epochs are all of them; printed at start, refused above half the machine's memory), e.g.
    32 px experiments and the demo. Targets are those of the stored image and its flip; on the CPU a cached run is
    bit-identical to an uncached one (tested); on CUDA the teacher's kernels may differ in the last bits between
    full and partial batches, so bit-identity is not promised there, and the targets cross the PCIe bus (to the host
    in the first epoch, a synchronizing copy; back every later step): meant for small data sets whose teacher
    dominates the step, not for ImageNet."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The training data (``data:`` section): stores written by ``irepa data prepare`` / ``irepa data encode``."""

    space: Literal["latent", "pixel"] = "latent"
    """``latent``: the model denoises VAE latents sampled from the latent store's moments (SiT/REPA/iREPA);
    ``pixel``: it denoises images scaled to [-1, 1] (tiny demos, JiT-style recipes)."""
    images: str | None = None
    """Image store (uint8 images + labels); needed by the teacher and in pixel space."""
    latents: str | None = None
    """Latent store (VAE posterior moments, joined with the images by key); needed in latent space."""
    resolution: int | None = None
    """Expected image resolution of the stores (checked against their manifests); ``null`` = any."""
    vae: str | None = None
    """Expected VAE of the latent store (e.g. ``stabilityai/sd-vae-ft-mse``; checked); ``null`` = any."""
    latent_norm: Literal["per-channel", "sd-scalar", "vae-stats"] = "per-channel"
    """``per-channel``: (z − mean_c) / std_c with the latent store's statistics (iREPA-ldm, REPA-E);
    ``sd-scalar``: z · 0.18215 (original REPA); ``vae-stats``: per-channel with the statistics the store's VAE came
    with (REPA-E stage 2: the BatchNorm statistics of the end-to-end run, frozen; ``irepa export-vae``)."""
    flip: bool = False
    """Horizontal flips: pixel space flips images at random; latent space uses the flipped latents stored by
    ``irepa data encode --flip`` (image and latent flipped together). Off in the SiT/REPA/iREPA recipes."""
    num_workers: int = 4
    """DataLoader worker processes per training process."""

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW and the batch (``optim:`` section). Defaults: the SiT/REPA/iREPA recipe."""

    lr: float = 1e-4
    """Learning rate (constant after warmup)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's moment decay rates (β1, β2)."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay (0 in SiT/REPA/iREPA)."""
    eps: float = 1e-8
    """AdamW's denominator stabilizer."""
    warmup_steps: int = 0
    """Linear learning-rate warmup from 0 over this many steps (0 in SiT/REPA/iREPA)."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value (``null`` = no clipping; the norm is logged either way)."""
    global_batch_size: int = 256
    """Images per optimizer step over all processes; the per-device batch is derived (and printed at start)."""
    grad_accumulation: int = 1
    """Micro-steps per optimizer step (per-device batch = global / (processes × accumulation))."""
    fused: bool = False
    """PyTorch's fused AdamW kernel instead of its default implementation (multi-tensor on CUDA, for-loop on the
    CPU; the official recipes' choice). The update is 3-4x faster on the CPU (docs/benchmarks.md) but rounds
    differently in the last bits, so runs are not bit-identical to the default; may change on resume."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas must be in [0, 1), got {list(self.betas)}")
        if self.weight_decay < 0 or self.eps <= 0 or self.warmup_steps < 0:
            raise ConfigError("optim.weight_decay and optim.warmup_steps must be >= 0 and optim.eps > 0")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"optim.grad_clip must be > 0 or null, got {self.grad_clip}")
        if self.global_batch_size < 1 or self.grad_accumulation < 1:
            raise ConfigError("optim.global_batch_size and optim.grad_accumulation must be >= 1")
        if self.global_batch_size % self.grad_accumulation:
            raise ConfigError(
                f"optim.global_batch_size={self.global_batch_size} is not divisible by "
                f"optim.grad_accumulation={self.grad_accumulation}"
            )


@dataclasses.dataclass(frozen=True)
class TrainLoopConfig:
    """The loop, precision, EMA, intervals and fault handling (``train:`` section)."""

    max_steps: int = 400_000
    """Optimizer steps to train for (may be raised when resuming)."""
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Autocast dtype of the model and teacher forwards. Weights, optimizer, EMA and the alignment and loss maths
    stay float32. fp16 adds a dynamic loss scaler (the official iREPA default); bf16 is the paper's setting."""
    compile: bool = False
    """``torch.compile`` the step: for ``denoising`` (SiT/REPA/iREPA) and ``jit`` model + loss + aligner as one
    graph (the teacher and the step's alignment weight outside it), for other objectives what they compile
    (MeanFlow's JVP step, REPA-E's SiT). Faster on GPUs; on a CPU the first step compiles for tens of seconds
    (docs/benchmarks.md)."""
    tf32: bool = True
    """Allow TF32 matmuls/convolutions on Ampere+ GPUs (official recipes: on)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto`` = CUDA when available."""
    seed: int = 0
    """Seeds model initialization (identical on every process) and the per-step randomness."""
    ema_decay: float = 0.9999
    """EMA decay per optimizer step (0.9999 in every recipe); the EMA starts as a copy of the model."""
    log_every_steps: int = 100
    """Metrics are averaged over this many steps and written to the console, JSONL and TensorBoard."""
    checkpoint_every_steps: int = 10_000
    """Full training state (resume point); 0 = only at the end and on SIGTERM/SIGINT."""
    snapshot_every_steps: int = 50_000
    """EMA inference snapshot (``snapshots/``, for ``irepa sample``); 0 = only at the end."""
    keep_last: int = 2
    """Full checkpoints kept (older ones are deleted after a successful save; snapshots are all kept)."""
    nonfinite_patience: int = 20
    """Steps with non-finite gradients are skipped and counted; this many in a row stop the run."""
    preview_every_steps: int = 0
    """A grid of EMA samples, ``previews/step-<step>.png``, every this many steps (0 = off): Euler, 50 steps, CFG 4.0
    (the official in-training previews), the same noise and labels each time. Latent runs decode with the latent
    store's VAE (from the local cache, or downloaded)."""
    preview_samples: int = 16
    """Samples per preview grid (class-balanced labels)."""

    def __post_init__(self) -> None:
        if self.max_steps < 0:
            raise ConfigError(f"train.max_steps must be >= 0, got {self.max_steps}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ConfigError(f"train.ema_decay must be in [0, 1], got {self.ema_decay}")
        if self.log_every_steps < 1:
            raise ConfigError(f"train.log_every_steps must be >= 1, got {self.log_every_steps}")
        if self.checkpoint_every_steps < 0 or self.snapshot_every_steps < 0:
            raise ConfigError("train.checkpoint_every_steps and train.snapshot_every_steps must be >= 0 (0 = at end)")
        if self.keep_last < 1:
            raise ConfigError(f"train.keep_last must be >= 1, got {self.keep_last}")
        if self.nonfinite_patience < 1:
            raise ConfigError(f"train.nonfinite_patience must be >= 1, got {self.nonfinite_patience}")
        if self.preview_every_steps < 0 or self.preview_samples < 1:
            raise ConfigError("train.preview_every_steps must be >= 0 (0 = off) and train.preview_samples >= 1")


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """Where metrics go (``logging:`` section); files live in the run directory."""

    console: bool = True
    """Metric lines on stderr (and always in ``log.txt``)."""
    progress_bar: bool | Literal["auto"] = "auto"
    """tqdm progress bar: ``true``, ``false``, or ``auto`` (only on an interactive terminal)."""
    jsonl: bool = True
    """``metrics.jsonl``: one JSON record per log interval."""
    tensorboard: bool = True
    """TensorBoard events in ``tensorboard/``."""
    wandb: bool = False
    """Weights & Biases (needs the ``wandb`` package)."""
    wandb_project: str = "irepa"
    """W&B project of the run (with ``wandb: true``)."""
    wandb_entity: str | None = None
    """W&B entity (user or team); ``null`` = W&B's default."""


#: A run name is one path component inside ``runs/`` (like checkpoint part names): no separators, no ``..``.
_RUN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A complete, resolved training run configuration."""

    name: str = ""
    """Run name (the preset's name by default; shown in logs and W&B); the default run directory is
    ``runs/<name>``, so it is one plain folder name (letters, digits, ``_``, ``-``, ``.``)."""
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    objective: ObjectiveConfig = dataclasses.field(default_factory=ObjectiveConfig)
    diffusion: DiffusionConfig = dataclasses.field(default_factory=DiffusionConfig)
    align: AlignConfig = dataclasses.field(default_factory=AlignConfig)
    teacher: TeacherConfig = dataclasses.field(default_factory=TeacherConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainLoopConfig = dataclasses.field(default_factory=TrainLoopConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        if self.name and not _RUN_NAME.match(self.name):
            raise ConfigError(
                f"name {self.name!r} is not a plain folder name (letters, digits, '_', '-', '.', not starting with "
                "'.'): it names the default run directory runs/NAME; use e.g. name=my-run (or pass --run-dir DIR)"
            )
        if self.data.space == "latent" and not self.data.latents:
            raise ConfigError("data.space=latent needs a latent store: set data.latents=PATH (see docs/data.md)")
        if self.data.space == "pixel" and not self.data.images:
            raise ConfigError("data.space=pixel needs an image store: set data.images=PATH (see docs/data.md)")
        if self.align.encoders and not self.data.images:
            raise ConfigError(
                f"align.encoders={list(self.align.encoders)} needs the images for the teacher: set data.images=PATH "
                "(the image store the latents were encoded from), or align.encoders=[] to train without alignment"
            )
        depth = _model_depth(self.model)
        if self.align.encoders and self.align.depth > depth:
            raise ConfigError(
                f"align.depth={self.align.depth} is deeper than {self.model.name} ({depth} blocks); "
                f"use align.depth between 1 and {depth}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-safe)."""
        return to_dict(self)


def _model_depth(model: ModelConfig) -> int:
    """Number of blocks of the configured model, from the registry's argument check (no model is built).

    Raises:
        ConfigError: An unknown model name (with close matches) or ``model.overrides`` the model does not accept.
    """
    from irepa.errors import IrepaError
    from irepa.models import MODELS

    try:
        factory = MODELS.get(model.name)
    except IrepaError as exc:
        raise ConfigError(f"model.name: {exc}") from exc
    try:
        return int(factory.arguments(**model.overrides)["depth"])
    except IrepaError as exc:
        raise ConfigError(f"model.overrides: {exc}") from exc


# ----------------------------------------------------------------------------------------------------------------------
# Resolution, comparison

#: Keys that may change between the run directory's config and the config of a resumed run (dotted prefixes).
#: Everything else (model, objective, alignment, optimizer, batch, seed, precision, data normalization) must match,
#: or resuming would silently continue a different experiment.
RESUMABLE_KEYS: tuple[str, ...] = (
    "name",
    "train.max_steps",
    "train.log_every_steps",
    "train.checkpoint_every_steps",
    "train.snapshot_every_steps",
    "train.keep_last",
    "train.nonfinite_patience",
    "train.preview_every_steps",
    "train.preview_samples",
    "train.compile",
    "train.device",
    "optim.fused",
    "data.images",
    "data.latents",
    "data.num_workers",
    "teacher.weights",
    "teacher.cache_dir",
    "teacher.offline",
    "teacher.cache_targets",
    "logging",
)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and not dotted.endswith(("overrides", "kwargs", "weights")):
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two config dicts: ``{key: (old, new)}``."""
    a, b = _flatten(old), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def is_resumable_key(key: str) -> bool:
    """Whether dotted config ``key`` may change when resuming (see :data:`RESUMABLE_KEYS`)."""
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS)


def check_run_dir(run_dir: str | Path) -> None:
    """Refuse a run directory path that exists but is not a folder (or lies below a file).

    Raises:
        ConfigError: Naming the path and the fix.
    """
    path = Path(run_dir)
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"run directory {str(path)!r}: {str(parent)!r} is a file, not a folder; pass --run-dir with a "
                    "new or existing run folder"
                )
            return


def _with_defaults(old: Mapping[str, Any]) -> dict[str, Any]:
    """``old`` with its ``objective`` section completed by today's defaults of the objective it names.

    A run directory written before the section (or one of its settings) existed then compares equal to a config
    that sets them to their defaults, so it still resumes: no ``objective`` key means ``denoising``, and a missing
    setting means its default (e.g. ``prediction: v``).
    """
    from irepa.config import merge

    section = dict(old.get("objective") or {"name": "denoising"})
    try:
        defaults = ObjectiveConfig.from_config_dict({"name": section.get("name", "denoising")}).to_config_dict()
    except ConfigError:
        return dict(old)  # an objective this version does not know: compared as it is
    return {**old, "objective": merge(to_dict(defaults), section)}


def check_resume_compatible(old: Mapping[str, Any], new: TrainConfig, *, where: str) -> dict[str, tuple[Any, Any]]:
    """Compare the config a run was trained with (``old``, a plain dict) with ``new``.

    Returns:
        The differing resumable keys (``{key: (old, new)}``), e.g. a raised ``train.max_steps``.

    Raises:
        ConfigError: Naming every differing non-resumable key with both values (up to 8).
    """
    diff = config_diff(_with_defaults(old), to_dict(new))
    blocking = {k: v for k, v in diff.items() if not is_resumable_key(k)}
    if blocking:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(blocking.items())[:8])
        more = f" (+{len(blocking) - 8} more)" if len(blocking) > 8 else ""
        raise ConfigError(
            f"{where} was trained with a different config: {shown}{more}; resume with the original settings "
            "or use a new run directory"
        )
    return diff


def resolve_config(
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
) -> TrainConfig:
    """Build a :class:`TrainConfig` from a preset, a config file and ``key=value`` overrides (later wins).

    A config file may name its base preset with a top-level ``preset: NAME`` key (instead of ``--preset``); giving
    two different presets is an error. The run name defaults to the preset name, else the config file's stem.

    Raises:
        ConfigError: Unknown preset, unreadable file, unknown key, wrong type, or an invalid combination.
    """
    from irepa.config import parse_overrides
    from irepa.training.presets import load_preset

    file_layer: dict[str, Any] = dict(read_yaml(config_file)) if config_file else {}
    file_preset = file_layer.pop("preset", None)
    if file_preset is not None and not isinstance(file_preset, str):
        raise ConfigError(f"config file {str(config_file)!r}: 'preset' must be a preset name, got {file_preset!r}")
    if preset and file_preset and preset != file_preset:
        raise ConfigError(
            f"--preset {preset} conflicts with 'preset: {file_preset}' in {str(config_file)!r}; give only one"
        )
    base_name = preset or file_preset
    base = load_preset(base_name) if base_name else {}
    cli = parse_overrides(list(overrides)) if not isinstance(overrides, Mapping) else dict(overrides)
    name_layer = {"name": base_name or (Path(config_file).stem if config_file else "")}
    return build(TrainConfig, name_layer, base, file_layer, cli)
