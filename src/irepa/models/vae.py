"""Trainable VAEs for end-to-end recipes (REPA-E) through diffusers ``AutoencoderKL``, and the official VAE files.

Architectures (:data:`VAE_ARCHITECTURES`, diffusers ``AutoencoderKL`` keyword arguments):

- ``f8d4`` (aliases ``sd-vae``, ``sdvae``): the SD-VAE, 8× downsampling, 4 latent channels, 83.7M parameters
  (REPA-E's ``sdvae`` starts from SD ``ft-mse``).
- ``f16d32`` (aliases ``invae``, ``vavae``): REPA-E's IN-VAE / VA-VAE family, 16× downsampling, 32 latent channels,
  channel multipliers (1, 1, 2, 2, 4) on 128 and attention blocks at the lowest level (the latent-diffusion
  encoder/decoder built for 256 px puts them where the feature map is 16×16).
- ``tiny``: the 1.0M-parameter f8d4-shaped test VAE (:data:`irepa.data.vae.TINY_VAE_CONFIG`).

Official REPA-E VAE files are state dicts in the latent-diffusion (LDM) key layout (``encoder.down.0.block.0.*``,
``quant_conv``, ...), not diffusers'. :func:`ldm_vae_to_diffusers` maps them key by key (the architecture is read
from the tensor shapes), and :func:`read_official_vae` reads what REPA-E publishes (prior-implementations §7):

- a VAE folder as written by ``save_vae_weights.py`` or as released (``e2e-sdvae/``, ``sdvae/``):
  ``NAME.pt`` (the VAE), ``NAME-latents-stats.pt`` (``latents_scale`` = 1/std, ``latents_bias`` = mean) and
  ``NAME-discriminator-ckpt.pt`` (the PatchGAN, :mod:`irepa.models.discriminator`), any of the last two optional;
- a single ``.pt`` VAE state dict;
- a REPA-E training dict (``vae``, ``discriminator``, and the latent statistics from ``ema['bn.running_*']``).

Every file goes through the allow-listed reader of :mod:`irepa.models.official` (``weights_only=True``).
``irepa export-vae`` writes a tuned VAE as a diffusers folder (:func:`save_vae_folder`), which every irepa command
that takes ``--vae DIR`` loads (:func:`irepa.data.vae.load_vae`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from irepa.errors import IrepaError
from irepa.registry import Registry
from irepa.utils.state_dict import state_dict_mismatch

__all__ = [
    "VAE_ARCHITECTURES",
    "VAE_STATS_FILE",
    "OfficialVAE",
    "build_vae",
    "diffusers_vae_config",
    "ldm_vae_to_diffusers",
    "read_official_vae",
    "read_vae_folder_stats",
    "save_vae_folder",
]

#: File ``save_vae_folder`` writes beside the diffusers weights: the latent normalization the VAE was tuned with.
VAE_STATS_FILE = "irepa_latent_stats.json"

VAE_ARCHITECTURES: Registry[dict[str, Any]] = Registry("VAE architecture")
VAE_ARCHITECTURES.register(
    "f8d4",
    {
        "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "latent_channels": 4,
        "sample_size": 256,
    },
    aliases=("sd-vae", "sdvae"),
)
VAE_ARCHITECTURES.register(
    "f16d32",
    {
        "block_out_channels": (128, 128, 256, 256, 512),
        "down_block_types": ("DownEncoderBlock2D",) * 4 + ("AttnDownEncoderBlock2D",),
        "up_block_types": ("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 4,  # lowest resolution first
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "latent_channels": 32,
        "sample_size": 256,
    },
    aliases=("invae", "vavae"),
)
VAE_ARCHITECTURES.register(
    "tiny",
    {
        "block_out_channels": (32, 32, 64, 64),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 1,
        "norm_num_groups": 32,
        "latent_channels": 4,
    },
)


def build_vae(arch: str | Mapping[str, Any], *, seed: int | None = None) -> nn.Module:
    """A randomly initialised ``diffusers.AutoencoderKL`` (train mode).

    Args:
        arch: A registered architecture name (``"f8d4"``, ``"f16d32"``, ``"tiny"``) or AutoencoderKL kwargs.
        seed: Seed of the initialisation (the global RNG is left untouched); None draws from the global RNG.
    """
    from diffusers import AutoencoderKL

    config = dict(VAE_ARCHITECTURES.get(arch)) if isinstance(arch, str) else dict(arch)
    if seed is None:
        return AutoencoderKL(**config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(**config)


# ----------------------------------------------------------------------------------------------------------------------
# LDM (latent-diffusion / REPA-E) key layout → diffusers

_ATTN_NAMES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _indices(state: Mapping[str, Any], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.match(pattern, k))})


def _ldm_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The diffusers AutoencoderKL kwargs of an LDM-layout VAE state dict, read from tensor shapes."""
    levels = _indices(state, r"encoder\.down\.(\d+)\.")
    if not levels or levels != list(range(len(levels))) or "encoder.conv_in.weight" not in state:
        first = ", ".join(sorted(state)[:4]) or "none"
        raise IrepaError(f"not a VAE state dict in the latent-diffusion layout (encoder.down.N.*); first keys: {first}")
    blocks = _indices(state, r"encoder\.down\.0\.block\.(\d+)\.")
    widths = [int(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) for i in levels]
    attn = [any(k.startswith(f"encoder.down.{i}.attn.") for k in state) for i in levels]
    if "post_quant_conv.weight" in state:
        latent = int(state["post_quant_conv.weight"].shape[0])
    else:
        latent = int(state["decoder.conv_in.weight"].shape[1])
    return {
        "in_channels": int(state["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(state["decoder.conv_out.weight"].shape[0]),
        "block_out_channels": tuple(widths),
        "down_block_types": tuple("AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attn),
        "up_block_types": tuple("AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attn)),
        "layers_per_block": len(blocks),
        "norm_num_groups": 32,  # the LDM Normalize() is GroupNorm(32, eps 1e-6); shapes cannot tell the groups
        "latent_channels": latent,
        "use_quant_conv": "quant_conv.weight" in state,
        "use_post_quant_conv": "post_quant_conv.weight" in state,
        "mid_block_add_attention": "encoder.mid.attn_1.q.weight" in state,
    }


def _rename_ldm_key(key: str, num_levels: int) -> str:
    """One LDM VAE key → its diffusers name (``nin_shortcut`` → ``conv_shortcut``, attention convs → linears)."""
    for side in ("encoder", "decoder"):
        if not key.startswith(side + "."):
            continue
        rest = key[len(side) + 1 :]
        if rest.startswith("norm_out."):
            return f"{side}.conv_norm_out.{rest[len('norm_out.') :]}"
        m = re.match(r"(down|up)\.(\d+)\.(block|attn|downsample|upsample)\.(.+)$", rest)
        if m:
            kind, level, part, tail = m.group(1), int(m.group(2)), m.group(3), m.group(4)
            # The LDM decoder indexes levels from the highest resolution, diffusers from the lowest.
            index = level if kind == "down" else num_levels - 1 - level
            prefix = f"{side}.{kind}_blocks.{index}"
            if part == "block":
                j, name = tail.split(".", 1)
                return f"{prefix}.resnets.{j}.{name.replace('nin_shortcut', 'conv_shortcut')}"
            if part == "attn":
                j, module, param = tail.split(".")
                return f"{prefix}.attentions.{j}.{_ATTN_NAMES[module]}.{param}"
            sampler = "downsamplers" if part == "downsample" else "upsamplers"
            return f"{prefix}.{sampler}.0.{tail}"
        m = re.match(r"mid\.(block_1|block_2|attn_1)\.(.+)$", rest)
        if m:
            if m.group(1) == "attn_1":
                module, param = m.group(2).split(".")
                return f"{side}.mid_block.attentions.0.{_ATTN_NAMES[module]}.{param}"
            index = 0 if m.group(1) == "block_1" else 1
            return f"{side}.mid_block.resnets.{index}.{m.group(2).replace('nin_shortcut', 'conv_shortcut')}"
    return key  # conv_in / conv_out of both sides, quant_conv, post_quant_conv keep their names


def ldm_vae_to_diffusers(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Map a VAE state dict in the latent-diffusion layout (REPA-E's ``models/autoencoder.py``) onto diffusers.

    Args:
        state: ``encoder.*``, ``decoder.*``, ``quant_conv.*``, ``post_quant_conv.*`` (a ``vae.`` / ``module.`` /
            ``_orig_mod.`` prefix is stripped).

    Returns:
        ``(config, state_dict)``: ``AutoencoderKL(**config)`` has exactly the keys and shapes of ``state_dict``.

    Raises:
        IrepaError: Not an LDM-layout VAE, or keys that do not fit the architecture read from the shapes.
    """
    from diffusers import AutoencoderKL

    state = _strip(state, ("vae.", "module.", "_orig_mod."))
    config = _ldm_config(state)
    levels = len(config["block_out_channels"])
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = _rename_ldm_key(key, levels)
        if ".attentions." in new and new.endswith(".weight") and value.ndim == 4:
            value = value[:, :, 0, 0]  # LDM attention uses 1x1 convs, diffusers linears
        out[new] = value
    with torch.device("meta"):
        expected = AutoencoderKL(**config).state_dict()
    problem = state_dict_mismatch(expected, out)
    if problem:
        raise IrepaError(
            f"the VAE state dict does not map onto a diffusers AutoencoderKL {_summary(config)}: {problem}"
        )
    return config, out


def _strip(state: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    state = dict(state)
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _summary(config: Mapping[str, Any]) -> str:
    return f"(widths {list(config['block_out_channels'])}, {config['latent_channels']} latent channels)"


def diffusers_vae_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """AutoencoderKL kwargs of a diffusers-layout VAE state dict, read from its shapes (e.g. a checkpoint's ``vae``).

    GroupNorm groups cannot be read from shapes; 32 is assumed (every architecture of :data:`VAE_ARCHITECTURES`).

    Raises:
        IrepaError: Not a diffusers AutoencoderKL state dict.
    """
    levels = _indices(state, r"encoder\.down_blocks\.(\d+)\.")
    if not levels or levels != list(range(len(levels))) or "encoder.conv_in.weight" not in state:
        first = ", ".join(sorted(state)[:4]) or "none"
        raise IrepaError(f"not a diffusers AutoencoderKL state dict (encoder.down_blocks.N.*); first keys: {first}")
    widths = [int(state[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in levels]
    attn = [any(k.startswith(f"encoder.down_blocks.{i}.attentions.") for k in state) for i in levels]
    if "post_quant_conv.weight" in state:
        latent = int(state["post_quant_conv.weight"].shape[0])
    else:
        latent = int(state["decoder.conv_in.weight"].shape[1])
    return {
        "in_channels": int(state["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(state["decoder.conv_out.weight"].shape[0]),
        "block_out_channels": tuple(widths),
        "down_block_types": tuple("AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attn),
        "up_block_types": tuple("AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attn)),
        "layers_per_block": len(_indices(state, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")),
        "norm_num_groups": 32,
        "latent_channels": latent,
        "use_quant_conv": "quant_conv.weight" in state,
        "use_post_quant_conv": "post_quant_conv.weight" in state,
        "mid_block_add_attention": "encoder.mid_block.attentions.0.to_q.weight" in state,
    }


# ----------------------------------------------------------------------------------------------------------------------
# Official files


@dataclasses.dataclass
class OfficialVAE:
    """A REPA-E VAE read from its official files.

    Attributes:
        model: The ``diffusers.AutoencoderKL`` with the weights (eval mode, float32, CPU).
        config: Its AutoencoderKL kwargs.
        latent_stats: ``{"mean": [...], "std": [...]}`` per channel (REPA-E's ``latents_bias``, 1/``latents_scale``),
            or None when no statistics file was found.
        discriminator: The PatchGAN state dict (official ``main.N.*`` layout), or None.
        source: The files read.
    """

    model: nn.Module
    config: dict[str, Any]
    latent_stats: dict[str, list[float]] | None
    discriminator: dict[str, torch.Tensor] | None
    source: dict[str, str]


def _stats_from_scale_bias(scale: torch.Tensor, bias: torch.Tensor, where: str) -> dict[str, list[float]]:
    scale = torch.as_tensor(scale).double().flatten()
    bias = torch.as_tensor(bias).double().flatten()
    if scale.shape != bias.shape or bool((scale <= 0).any()) or not bool(torch.isfinite(scale).all()):
        raise IrepaError(f"latent statistics in {where} have mismatched or non-positive scales")
    return {"mean": bias.tolist(), "std": (1.0 / scale).tolist()}


def _as_tensor_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise IrepaError(f"{where} is not a state dict of tensors")
    return dict(obj)


def read_official_vae(path: str | Path) -> OfficialVAE:
    """Read a REPA-E VAE: a VAE folder, a ``.pt`` VAE state dict, or a REPA-E training dict (see the module doc).

    Raises:
        IrepaError: Missing or unreadable files, a pickled object outside the allow-list, or weights that are not
            an LDM-layout VAE.
    """
    from diffusers import AutoencoderKL

    from irepa.models.io import load_state_dict_checked
    from irepa.models.official import read_checkpoint_file

    path = Path(path)
    source: dict[str, str] = {}
    stats: dict[str, list[float]] | None = None
    disc: dict[str, torch.Tensor] | None = None
    if path.is_dir():
        candidates = sorted(
            p for p in path.glob("*.pt") if not p.name.endswith(("-latents-stats.pt", "-discriminator-ckpt.pt"))
        )
        if len(candidates) != 1:
            found = ", ".join(p.name for p in path.iterdir()) or "nothing"
            raise IrepaError(
                f"VAE folder {str(path)!r} must hold exactly one NAME.pt beside NAME-latents-stats.pt and "
                f"NAME-discriminator-ckpt.pt (REPA-E's layout); found {found}"
            )
        weights = candidates[0]
        state = _as_tensor_dict(read_checkpoint_file(weights), f"VAE file {str(weights)!r}")
        source["vae"] = str(weights)
        stats_file = weights.with_name(weights.stem + "-latents-stats.pt")
        if stats_file.is_file():
            obj = read_checkpoint_file(stats_file)
            if not isinstance(obj, Mapping) or not {"latents_scale", "latents_bias"} <= set(obj):
                raise IrepaError(f"latent statistics file {str(stats_file)!r} needs latents_scale and latents_bias")
            stats = _stats_from_scale_bias(obj["latents_scale"], obj["latents_bias"], repr(str(stats_file)))
            source["latent_stats"] = str(stats_file)
        disc_file = weights.with_name(weights.stem + "-discriminator-ckpt.pt")
        if disc_file.is_file():
            disc = _as_tensor_dict(read_checkpoint_file(disc_file), f"discriminator file {str(disc_file)!r}")
            source["discriminator"] = str(disc_file)
    else:
        obj = read_checkpoint_file(path)
        source["vae"] = str(path)
        if isinstance(obj, Mapping) and "vae" in obj:  # a REPA-E training dict
            state = _as_tensor_dict(obj["vae"], f"entry 'vae' of {str(path)!r}")
            ema = obj.get("ema")
            if isinstance(ema, Mapping) and "bn.running_mean" in ema and "bn.running_var" in ema:
                # REPA-E's save_vae_weights.py: bias = running_mean, scale = rsqrt(running_var) (no eps).
                var = ema["bn.running_var"].double()
                stats = _stats_from_scale_bias(var.rsqrt(), ema["bn.running_mean"], f"'ema' of {str(path)!r}")
                source["latent_stats"] = f"{path}:ema/bn"
            if isinstance(obj.get("discriminator"), Mapping):
                disc = _as_tensor_dict(obj["discriminator"], f"entry 'discriminator' of {str(path)!r}")
                source["discriminator"] = f"{path}:discriminator"
        else:
            state = _as_tensor_dict(obj, f"VAE file {str(path)!r}")
    config, converted = ldm_vae_to_diffusers(state)
    if stats is not None and len(stats["mean"]) != config["latent_channels"]:
        raise IrepaError(
            f"latent statistics have {len(stats['mean'])} channels but the VAE has {config['latent_channels']}"
        )
    with torch.device("meta"):
        model = AutoencoderKL(**config)
    load_state_dict_checked(model, {k: v.float() for k, v in converted.items()}, what=f"VAE {source['vae']!r}")
    return OfficialVAE(model.eval(), config, stats, disc, source)


# ----------------------------------------------------------------------------------------------------------------------
# Export


def save_vae_folder(
    model: nn.Module,
    out_dir: str | Path,
    *,
    latent_stats: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Write a VAE as a diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``).

    Args:
        model: A ``diffusers.AutoencoderKL`` (unwrapped).
        out_dir: The folder (created).
        latent_stats: ``{"mean": [...], "std": [...]}`` per channel, the normalization the diffusion model was
            trained with (REPA-E: its BatchNorm's running statistics); written to :data:`VAE_STATS_FILE`.
        source: Provenance recorded in the same file (run directory, step, ...).

    Returns:
        ``out_dir``, loadable with :func:`irepa.data.vae.load_vae` (and ``irepa data encode --vae DIR``).
    """
    from irepa.utils.io import write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    if latent_stats is not None:
        mean, std = list(latent_stats["mean"]), list(latent_stats["std"])
        if len(mean) != len(std) or len(mean) != int(model.config.latent_channels):
            raise IrepaError(
                f"latent statistics have {len(mean)} means and {len(std)} stds for "
                f"{model.config.latent_channels} latent channels"
            )
        write_json(out_dir / VAE_STATS_FILE, {"mean": mean, "std": std, "source": dict(source or {})})
    return out_dir


def read_vae_folder_stats(folder: str | Path) -> dict[str, list[float]] | None:
    """The latent statistics :func:`save_vae_folder` recorded beside a VAE, or None if the folder has none."""
    path = Path(folder) / VAE_STATS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return {"mean": [float(v) for v in data["mean"]], "std": [float(v) for v in data["std"]]}
    except (ValueError, KeyError, TypeError) as exc:
        raise IrepaError(f"latent statistics file {str(path)!r} is corrupt: {exc}") from exc
