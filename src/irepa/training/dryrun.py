"""``irepa train --dry-run``: what a run would do, without touching a device or reading data.

The report is the resolved config as YAML followed by a summary in YAML comments (so the output can be saved and
reused as a config file): the batch split, the model and projector sizes (built on the ``meta`` device), the data
stores (manifests only), where each teacher encoder's weights would be found without the network (file lookups
only, nothing read or downloaded), and whether the run directory would be resumed or started fresh.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from irepa.config import dump_yaml, read_yaml
from irepa.errors import IrepaError
from irepa.training.checkpoint import CheckpointManager
from irepa.training.config import TrainConfig, check_resume_compatible, check_run_dir
from irepa.training.distributed import per_device_batch_size
from irepa.training.teacher import teacher_locations

if TYPE_CHECKING:
    from irepa.encoders import WeightLocations

__all__ = ["dry_run_report"]


def _millions(module: torch.nn.Module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f}M"


def dry_run_report(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    world_size: int = 1,
    weight_locations: WeightLocations | None = None,
) -> str:
    """The dry-run report for ``config`` run in ``run_dir`` on ``world_size`` processes.

    Args:
        config: The resolved training config.
        run_dir: The run directory (read only: checkpoints and config of a run to resume).
        world_size: Processes the global batch is split over.
        weight_locations: Where the teacher's encoder weights are looked for, as the trainer gets them (resolved
            at the CLI boundary; ``teacher.cache_dir``/``teacher.offline`` override it). ``None`` = only
            ``teacher.cache_dir``.

    Raises:
        ConfigError: The global batch does not divide across the processes, or the run directory is a file or
            holds a run with an incompatible config.
    """
    from irepa.models import build_model

    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    cfg = config
    per_device = per_device_batch_size(cfg.optim.global_batch_size, world_size, cfg.optim.grad_accumulation)
    notes = [
        f"run {cfg.name or '(unnamed)'} -> {run_dir}",
        f"batch: global {cfg.optim.global_batch_size} = {world_size} process(es) x {cfg.optim.grad_accumulation} "
        f"accumulation x {per_device} per device",
    ]

    from irepa.training.data import inspect_data

    model_kwargs: dict = {"null_class": True, "qk_norm": cfg.model.qk_norm}
    try:
        info = inspect_data(cfg.data, need_images=bool(cfg.align.encoders))
        shape = info["input_shape"]
        model_kwargs.update(input_size=shape[1], in_channels=shape[0], num_classes=info["num_classes"])
        notes.append(f"data: {info['count']} images, {info['num_classes']} classes, {cfg.data.space} input {shape}")
    except IrepaError as exc:
        notes.append(f"data: NOT READY: {exc}")
        notes.append(
            "model sizes below assume the model's defaults (SiT: 32x32x4 latents, JiT: its registered image size; "
            "1000 classes)"
        )
    model_kwargs.update(cfg.model.overrides)
    with torch.device("meta"):
        model = build_model(cfg.model.name, **model_kwargs)
        notes.append(f"model: {cfg.model.name} {_millions(model)} params, token grid {tuple(model.grid)}")
        if cfg.align.encoders:
            from irepa.align import RepresentationAligner
            from irepa.encoders import ENCODERS

            overrides = cfg.teacher.arch_overrides
            dims = {
                name: int(overrides.get(name, {}).get("embed_dim", ENCODERS.get(name).embed_dim))
                for name in cfg.align.encoders
            }
            aligner = RepresentationAligner.from_config(cfg.align, model.hidden_size, dims)
            notes.append(
                f"align: {', '.join(cfg.align.encoders)} at block {cfg.align.depth}/{model.depth}, "
                f"{cfg.align.projector} projector {_millions(aligner)} params, target norm {cfg.align.target_norm}, "
                f"weight {cfg.align.weight}"
            )
        else:
            notes.append("align: off (no encoders)")
    teacher_notes, teacher_missing = _teacher_notes(cfg, weight_locations)
    notes += teacher_notes

    steps = CheckpointManager(run_dir / "checkpoints").steps()
    if (run_dir / "config.yaml").exists():
        changed = check_resume_compatible(read_yaml(run_dir / "config.yaml"), cfg, where=f"run directory {run_dir}")
        for key, (old, new) in changed.items():
            notes.append(f"config change on resume: {key}: {old!r} -> {new!r}")
    if steps:
        notes.append(f"would resume from {run_dir / 'checkpoints' / f'step-{steps[-1]:07d}'} (newest of {len(steps)})")
    else:
        notes.append("would start from scratch")
    if teacher_missing:
        offline = teacher_locations(weight_locations, offline=cfg.teacher.offline).offline
        notes.append(
            f"would fail at start: no weights for {', '.join(teacher_missing)} (offline)"
            if offline
            else f"would download the weights of {', '.join(teacher_missing)} at start (fails without network)"
        )
    notes.append(
        f"would train to step {cfg.train.max_steps} ({cfg.train.max_steps * cfg.optim.global_batch_size} images)"
    )
    return dump_yaml(cfg) + "".join(f"# {line}\n" for line in notes)


def _teacher_notes(cfg: TrainConfig, locations: WeightLocations | None) -> tuple[list[str], list[str]]:
    """One line per alignment encoder saying where its weights would be found, and the encoders without any.

    Uses the zoo's own offline lookup (:func:`irepa.encoders.locate_weights`) with the locations the trainer's
    teacher gets, so a ``found at`` here is what the run loads; no weights are read, verified or downloaded.
    """
    if not cfg.align.encoders:
        return [], []
    if not cfg.teacher.pretrained:
        return ["teacher: random encoders (teacher.pretrained=false), no weights needed"], []
    from irepa.encoders import ENCODERS, locate_weights
    from irepa.errors import WeightsNotFoundError

    # The trainer's teacher looks exactly there (Teacher.load uses the same function).
    locations = teacher_locations(locations, cache_dir=cfg.teacher.cache_dir, offline=cfg.teacher.offline)
    notes, missing = [], []
    for name in cfg.align.encoders:
        spec = ENCODERS.get(name)
        if spec.weights is None:
            notes.append(f"teacher {name}: weight-free, nothing to find")
            continue
        try:
            found = locate_weights(
                spec,
                weights=cfg.teacher.weights.get(name),
                locations=locations,
                weights_hint=f"teacher.weights: {{{name}: PATH}}",
            )
        except WeightsNotFoundError as exc:
            missing.append(name)
            # The cache the run looks in is set where the trainer's is: $IREPA_CACHE or teacher.cache_dir.
            notes.append(f"teacher {name}: NOT FOUND offline: {exc}; training looks in $IREPA_CACHE (or "
                         "teacher.cache_dir), $HF_HUB_CACHE and $TORCH_HOME/hub")  # fmt: skip
        except IrepaError as exc:  # an explicit teacher.weights path that does not exist or holds no weights file
            missing.append(name)
            notes.append(f"teacher {name}: NOT FOUND: {exc}; fix teacher.weights")
        else:
            notes.append(f"teacher {name}: found at {found.path} ({found.origin})")
    return notes, missing
