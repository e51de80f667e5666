"""Export the VAE of an end-to-end run (``repa-e``) as a diffusers folder: ``irepa export-vae RUN_DIR --out DIR``.

The newest readable checkpoint (or the one of ``step``) of the run holds the VAE (``vae.safetensors``, diffusers
key layout) and the latent BatchNorm (``latent_bn.safetensors``). The folder written by
:func:`irepa.models.vae.save_vae_folder` holds ``config.json`` + ``diffusion_pytorch_model.safetensors`` and
``irepa_latent_stats.json``: the BatchNorm statistics the SiT was trained with (the EMA-averaged ones when the run
kept them, as REPA-E's ``save_vae_weights.py`` takes them from the EMA model). ``irepa data encode --vae DIR`` then
encodes a store with the tuned VAE and records those statistics, and stage-2 training on it with
``data.latent_norm: vae-stats`` normalizes with them, frozen (REPA-E's ``train_ldm_only.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from irepa.errors import IrepaError

__all__ = ["export_vae"]


def export_vae(run_dir: str | Path, out_dir: str | Path, *, step: int | None = None) -> dict[str, Any]:
    """Write the run's VAE (and its latent statistics) as a diffusers folder.

    Args:
        run_dir: A run directory of the ``repa-e`` objective.
        out_dir: The folder to write (created).
        step: The checkpoint to export (default: the newest readable one).

    Returns:
        ``{"out": Path, "step": int, "latent_stats": {...} | None, "checkpoint": Path}``.

    Raises:
        IrepaError: No checkpoint, or a checkpoint without a VAE (not an end-to-end run).
    """
    from diffusers import AutoencoderKL

    from irepa.models.io import load_state_dict_checked
    from irepa.models.vae import diffusers_vae_config, save_vae_folder
    from irepa.training.checkpoint import CheckpointManager

    run_dir = Path(run_dir)
    manager = CheckpointManager(run_dir / "checkpoints")
    if not manager.steps():
        raise IrepaError(f"run directory {str(run_dir)!r} has no checkpoints (expected {run_dir / 'checkpoints'})")
    loaded = manager.load(step) if step is not None else manager.load_latest()
    if loaded is None:
        raise IrepaError(f"no readable checkpoint in {str(run_dir / 'checkpoints')!r}")
    if "vae" not in loaded.tensors:
        raise IrepaError(
            f"checkpoint {loaded.path} holds no VAE ({', '.join(sorted(loaded.tensors))}): only end-to-end runs "
            "(objective repa-e) train one"
        )
    state = loaded.tensors["vae"]
    config = diffusers_vae_config(state)
    with torch.device("meta"):
        model = AutoencoderKL(**config)
    load_state_dict_checked(model, state, what=f"the VAE of checkpoint {loaded.path}")
    stats = None
    bn = loaded.tensors.get("latent_bn")
    if bn is not None:
        mean, var = (
            (bn["ema_mean"], bn["ema_var"]) if "ema_mean" in bn else (bn["bn.running_mean"], bn["bn.running_var"])
        )
        stats = {"mean": mean.double().tolist(), "std": var.double().sqrt().tolist()}
    out = save_vae_folder(
        model, out_dir, latent_stats=stats, source={"run_dir": str(run_dir.resolve()), "step": loaded.step}
    )
    return {"out": out, "step": loaded.step, "latent_stats": stats, "checkpoint": loaded.path}
