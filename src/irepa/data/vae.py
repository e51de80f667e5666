"""SD-VAE through diffusers ``AutoencoderKL``: offline-first loading, posterior moments, decoding to uint8.

Weights come from the Hugging Face hub (or its cache) or from a local ``save_pretrained`` folder.

Conventions (REPA / iREPA / ADM):
- Encoder input: uint8 pixels scaled to [−1, 1] (``x / 127.5 − 1``).
- Moments: the posterior ``mean`` and ``std`` (``exp(logvar / 2)``, logvar clamped to [−30, 20] by diffusers), each
  ``(B, C, H/8, W/8)``; stores keep them concatenated along channels (mean ‖ std, REPA's layout).
- Decoder output ``x`` in [−1, 1] → uint8 ``(x + 1) / 2 · 255``, clamped (:func:`irepa.diffusion.generate.quantize`).
  :meth:`VAE.decode` rounds to the nearest integer by default (reconstructions); ``quantize="truncate"`` reproduces
  REPA/ADM sampling scripts exactly, which cast with ``.to(uint8)`` (on average half a grey level darker), and is
  what sample generation uses by default.

``stabilityai/sd-vae-ft-mse`` and ``stabilityai/sd-vae-ft-ema`` share the original KL-f8 encoder (only the decoders
were fine-tuned), so latents encoded with either are identical; decoding differs. REPA trains on ft-mse latents
but its ``generate.py`` decodes with ft-ema by default. irepa records the VAE id in latent stores and snapshots and
never switches silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from pathlib import Path
from typing import Any, Literal

import torch

from irepa.errors import IrepaError, WeightsNotFoundError, first_line
from irepa.models.vae import VAE_ARCHITECTURES
from irepa.registry import Registry
from irepa.utils.network import probe_server

__all__ = [
    "TINY_VAE_CONFIG",
    "VAE",
    "VAES",
    "VAESpec",
    "canonical_vae_id",
    "load_vae",
    "save_random_vae",
    "snapshot_decoder",
]


@dataclasses.dataclass(frozen=True)
class VAESpec:
    """A known VAE: hub id and the facts irepa records about it."""

    id: str
    description: str
    latent_channels: int = 4
    downsample: int = 8
    scaling_factor: float = 0.18215
    encoder: str = "sd-kl-f8"  # VAEs with the same encoder produce identical latents


VAES: Registry[VAESpec] = Registry("VAE")
VAES.register(
    "stabilityai/sd-vae-ft-mse",
    VAESpec("stabilityai/sd-vae-ft-mse", "SD KL-f8 VAE, decoder fine-tuned with MSE (REPA/iREPA training latents)"),
    aliases=("sd-vae-ft-mse",),
)
VAES.register(
    "stabilityai/sd-vae-ft-ema",
    VAESpec("stabilityai/sd-vae-ft-ema", "SD KL-f8 VAE, decoder fine-tuned with EMA (REPA generate.py default)"),
    aliases=("sd-vae-ft-ema",),
)

#: A 1.0M-parameter AutoencoderKL with the SD-VAE's structure (f8, 4 latent channels), for tests and demos.
TINY_VAE_CONFIG: dict[str, Any] = dict(VAE_ARCHITECTURES.get("tiny"))
#: The SD-VAE architecture (83.7M parameters), e.g. for shape checks or benchmarks with random weights.
SD_VAE_CONFIG: dict[str, Any] = dict(VAE_ARCHITECTURES.get("f8d4"))


def canonical_vae_id(name: str) -> str:
    """``sd-vae-ft-mse`` → ``stabilityai/sd-vae-ft-mse``; other names (hub ids, folders) unchanged."""
    return VAES.canonical(name) if name in VAES else name


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"float16"`` → ``torch.float16`` (also accepts a ``torch.dtype``)."""
    if isinstance(name, torch.dtype):
        return name
    if name not in _DTYPES:
        raise IrepaError(f"dtype {name!r} is not one of {', '.join(_DTYPES)}")
    return _DTYPES[name]


def to_uint8(images: torch.Tensor, quantize: Literal["round", "truncate"] = "round") -> torch.Tensor:
    """Map decoder output in [−1, 1] to uint8 [0, 255] (:func:`irepa.diffusion.generate.quantize`)."""
    from irepa.diffusion.generate import quantize as quantize_images

    return quantize_images(images, quantize)


class VAE(torch.nn.Module):
    """A frozen ``diffusers.AutoencoderKL`` with irepa's pixel conventions.

    Args:
        model: The diffusers autoencoder.
        name: The VAE id recorded in stores and snapshots (canonical hub id, or the folder it came from).
        revision: Hub revision it was loaded at, if any.
        weights: Local folder the weights came from, if any.
        latent_stats: ``{"mean": [...], "std": [...]}`` per channel that came with the VAE (a folder written by
            ``irepa export-vae``, or REPA-E's ``NAME-latents-stats.pt``): the normalization its diffusion model was
            trained with. Recorded in latent stores (``data.latent_norm: vae-stats`` uses it).
    """

    def __init__(
        self,
        model: Any,
        *,
        name: str,
        revision: str | None = None,
        weights: str | None = None,
        latent_stats: dict[str, list[float]] | None = None,
    ) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.revision = revision
        self.weights = weights
        self.latent_stats = latent_stats

    @property
    def latent_channels(self) -> int:
        """Channels C of the latent."""
        return int(self.model.config.latent_channels)

    @property
    def downsample(self) -> int:
        """Spatial downsampling factor (8 for SD-VAE)."""
        return 2 ** (len(self.model.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        """The config's scalar latent scale (0.18215 for SD-VAE)."""
        return float(self.model.config.scaling_factor)

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the weights."""
        return next(self.model.parameters()).dtype

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        """``(C, h, w)`` of the latent of a ``resolution`` × ``resolution`` image."""
        if resolution % self.downsample:
            raise IrepaError(f"resolution {resolution} is not divisible by the VAE's downsampling {self.downsample}")
        side = resolution // self.downsample
        return self.latent_channels, side, side

    def encoder_sha256(self) -> str:
        """SHA-256 of the encoder-side weights (``encoder.*``, ``quant_conv.*``): equal hashes give equal latents."""
        digest = hashlib.sha256()
        for key, value in sorted(self.model.state_dict().items()):
            if key.startswith(("encoder.", "quant_conv.")):
                digest.update(key.encode())
                digest.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()

    @torch.no_grad()
    def encode_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior moments of uint8 images.

        Args:
            images: uint8 ``(B, 3, H, W)``, H and W divisible by :attr:`downsample`.

        Returns:
            ``(mean, std)``, each float32 ``(B, C, H/8, W/8)`` on the VAE's device.
        """
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise IrepaError(f"VAE input must be uint8 (B, 3, H, W) images, got {images.dtype} {tuple(images.shape)}")
        if images.shape[2] % self.downsample or images.shape[3] % self.downsample:
            raise IrepaError(
                f"image size {images.shape[2]}x{images.shape[3]} is not divisible by the VAE's downsampling "
                f"{self.downsample}"
            )
        x = images.to(self.device).to(self.dtype) / 127.5 - 1
        with torch.autocast(device_type=self.device.type, enabled=False):
            posterior = self.model.encode(x).latent_dist
        return posterior.mean.float(), posterior.std.float()

    @torch.no_grad()
    def decode_float(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode raw (denormalized) latents ``(B, C, h, w)`` to float32 images ``(B, 3, h·8, w·8)``, about [−1, 1]."""
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise IrepaError(f"latents must be (B, {self.latent_channels}, h, w), got {tuple(latents.shape)}")
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self.model.decode(latents.to(self.device, self.dtype)).sample.float()

    def decode(self, latents: torch.Tensor, *, quantize: Literal["round", "truncate"] = "round") -> torch.Tensor:
        """Decode raw (denormalized) latents to uint8 images.

        Args:
            latents: ``(B, C, h, w)`` in the VAE's own latent space (undo the training normalization first, with
                :meth:`irepa.data.latents.LatentNormalization.denormalize`).
            quantize: ``"round"`` (default) or ``"truncate"`` (REPA/ADM sampling scripts).

        Returns:
            uint8 ``(B, 3, h·8, w·8)`` on the VAE's device.
        """
        return to_uint8(self.decode_float(latents), quantize)  # decode_float runs without autograd


def snapshot_decoder(
    space: dict[str, Any],
    *,
    vae: str | None = None,
    weights: str | Path | None = None,
    offline: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[Any, str]:
    """The latent decoder of a latent-space snapshot, for :mod:`irepa.diffusion.generate`.

    Args:
        space: The snapshot's ``space`` entry (``vae`` id and latent ``normalization``).
        vae: VAE id to decode with (default: the snapshot's).
        weights: Local VAE folder.
        offline: Never download.
        device: Where the VAE runs.

    Returns:
        ``(decode, vae_name)``: ``decode(z (B, C, h, w)) -> images (B, 3, H, W)`` float in [−1, 1] (the training
        normalization undone first) and the VAE's recorded id.
    """
    from irepa.data.latents import LatentNormalization

    model = load_vae(vae or space.get("vae"), weights=weights, offline=offline, device=device)
    norm = LatentNormalization.from_dict(space["normalization"])

    def decode(z: torch.Tensor) -> torch.Tensor:
        return model.decode_float(norm.denormalize(z))

    return decode, model.name


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or name.count("/") > 1


def load_vae(
    name_or_dir: str,
    *,
    weights: str | Path | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    offline: bool = False,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
) -> VAE:
    """Load an AutoencoderKL from the Hugging Face hub (or its cache) or a local folder.

    Args:
        name_or_dir: Hub id (``stabilityai/sd-vae-ft-mse``, or the alias ``sd-vae-ft-mse``) or a folder with
            ``config.json`` + ``diffusion_pytorch_model.safetensors`` (as written by ``save_pretrained`` and
            ``irepa export-vae``), or a REPA-E VAE folder (``NAME.pt`` in the latent-diffusion layout, e.g. the
            released ``e2e-sdvae/``; read by :func:`irepa.models.vae.read_official_vae`).
        weights: A local folder to load the weights from while recording ``name_or_dir`` as the VAE's id.
        revision: Hub revision (branch, tag or commit).
        cache_dir: Hugging Face cache folder (default: the library's).
        offline: Never download; only the cache or local folders.
        device: Target device.
        dtype: Compute dtype (``float32``, ``float16`` or ``bfloat16``).

    A hub id is looked up in the cache first; only when it is not there is the Hub asked, after one quick
    connectivity check (:func:`irepa.utils.network.probe_server`), so that a machine without network fails in
    seconds.

    Raises:
        WeightsNotFoundError: The weights are not available locally and downloading is off or failed; the message
            names what was looked for and how to get it (a :class:`~irepa.utils.network.NoNetworkError` when the Hub
            does not answer).
    """
    from diffusers import AutoencoderKL

    torch_dtype = parse_dtype(dtype)
    name = canonical_vae_id(name_or_dir)
    local = Path(weights).expanduser() if weights is not None else None
    if local is None and _looks_like_path(name_or_dir):
        local = Path(name_or_dir).expanduser()
        name = str(local.resolve())
    if local is not None:
        if local.is_dir() and not (local / "config.json").is_file() and any(local.glob("*.pt")):
            # REPA-E's own layout (NAME.pt in the latent-diffusion key layout, + latent stats, + discriminator).
            from irepa.models.vae import read_official_vae

            official = read_official_vae(local)
            model = official.model.to(device=device, dtype=torch_dtype)
            return VAE(
                model, name=name, revision=revision, weights=str(local.resolve()), latent_stats=official.latent_stats
            )
        if not (local / "config.json").is_file():
            raise WeightsNotFoundError(
                f"VAE folder {str(local)!r} has no config.json; pass a folder written by save_pretrained "
                "(config.json + diffusion_pytorch_model.safetensors), e.g. from "
                "`huggingface-cli download stabilityai/sd-vae-ft-mse --local-dir DIR`"
            )
        try:
            model = AutoencoderKL.from_pretrained(str(local), torch_dtype=torch_dtype, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise WeightsNotFoundError(f"cannot load the VAE from {str(local)!r}: {first_line(exc)}") from exc
        from irepa.models.vae import read_vae_folder_stats

        return VAE(
            model.to(device),
            name=name,
            revision=revision,
            weights=str(local.resolve()),
            latent_stats=read_vae_folder_stats(local),
        )
    where = f"cache {str(cache_dir)!r}" if cache_dir is not None else "the Hugging Face cache"
    fix = (
        f"on a connected machine run `huggingface-cli download {name}` and copy the Hugging Face cache here (or "
        "encode once without --offline), or pass --vae-weights DIR with config.json + "
        "diffusion_pytorch_model.safetensors"
    )

    def from_hub(local_files_only: bool) -> Any:
        with warnings.catch_warnings():
            # diffusers passes a deprecated argument to huggingface_hub; the warning is noise for irepa's users.
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            return AutoencoderKL.from_pretrained(
                name,
                revision=revision,
                cache_dir=str(cache_dir) if cache_dir is not None else None,
                local_files_only=local_files_only,
                torch_dtype=torch_dtype,
            )

    # The cache first, as for encoder weights: a cached VAE loads without asking the Hub (which, unreachable, costs
    # huggingface_hub's retries before it falls back to the cache).
    try:
        model = from_hub(local_files_only=True)
    except (OSError, ValueError) as exc:
        if offline:
            raise WeightsNotFoundError(
                f"VAE {name!r} (revision {revision or 'main'}) is not in {where} and downloads are off (offline); {fix}"
            ) from exc
        probe_server(None, fix=f"VAE {name!r} is not in {where}; {fix}, and pass --offline")
        try:
            model = from_hub(local_files_only=False)
        except (OSError, ValueError) as exc:
            raise WeightsNotFoundError(
                f"VAE {name!r} (revision {revision or 'main'}) is not in {where} and downloading failed "
                f"({first_line(exc, max_chars=160)}); {fix}"
            ) from exc
    return VAE(model.to(device), name=name, revision=revision)


def save_random_vae(out_dir: str | Path, *, config: dict[str, Any] | None = None, seed: int = 0) -> Path:
    """Save a randomly initialised AutoencoderKL with ``save_pretrained`` (tests, offline demos, benchmarks).

    Args:
        out_dir: Folder to write (``config.json`` + ``diffusion_pytorch_model.safetensors``).
        config: AutoencoderKL keyword arguments (default :data:`TINY_VAE_CONFIG`, 1.0M parameters).
        seed: Seed of the random initialisation.

    Returns:
        ``out_dir``, loadable with :func:`load_vae`.
    """
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoencoderKL(**(config or TINY_VAE_CONFIG))
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir))
    return out_dir
