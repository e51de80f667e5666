"""Encoder specifications: one frozen :class:`EncoderSpec` per zoo entry, and the ``ENCODERS`` registry.

A spec is pure data. Everything an encoder needs at run time is derived from it:

- **Grid.** One target token per ``pixels_per_token`` image pixels (16 by default: the SiT token grid of an f8 VAE
  with patch 2, and of JiT/16), so a 256 px image gives a 16×16 grid and a 512 px image a 32×32 grid.
- **Encoder input size.** ``grid × patch_size``: the image is resized so that the encoder itself produces exactly
  that grid (224 px for patch-14 models at 256 px, 512 px for SAM2's stride-32 Hiera stage). Position embeddings
  are resampled to the grid by the backend at load time. Tokens are never cropped or pooled to fit.
- **Preprocessing.** ``[0, 1]`` pixels → resize (``interpolation``, ``antialias``) → ``(x - mean) / std``. Entries
  whose official preprocessing is questionable carry several named variants (e.g. SigLIP: ``native`` vs the
  ImageNet statistics of the iREPA code, ``irepa``); the first variant is the default.

Names are looked up in the registry, never parsed: ``ENCODERS.get("dinov2-vit-b")``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from irepa.errors import IrepaError
from irepa.registry import Registry

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "ENCODERS",
    "HALF",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backend",
    "EncoderSpec",
    "Preprocessing",
    "WeightSource",
    "normalize_resolution",
]

Backend = Literal["timm", "transformers", "classic", "packaged"]
Interpolation = Literal["bicubic", "bilinear", "nearest", "area"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How ``[0, 1]`` RGB pixels become encoder input.

    Attributes:
        mean: Per-channel mean subtracted after resizing (RGB order).
        std: Per-channel standard deviation divided by after subtracting the mean.
        interpolation: ``torch.nn.functional.interpolate`` mode used when the encoder input size differs from the
            image size.
        antialias: Antialiasing when downsampling (the REPA/iREPA code resizes with ``F.interpolate`` without it).
        note: Where the setting comes from (shown by ``irepa encoders info``).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Interpolation = "bicubic"
    antialias: bool = False
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description (stored in feature-file metadata)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """Where pretrained weights come from and how to recognise them.

    Exactly one of ``repo_id`` (Hugging Face Hub), ``url`` (a direct download) or ``asset`` (a file shipped inside
    the irepa package) is set.

    Attributes:
        repo_id: Hub repository (``timm/vit_base_patch14_dinov2.lvd142m``).
        filename: File inside the repository, or ``None`` for a Transformers model folder (``config.json`` plus
            ``*.safetensors``, possibly sharded).
        revision: Hub revision (branch, tag or commit). The commit actually used is recorded with the features.
        url: Direct download URL (official files that are not on the Hub).
        asset: Package asset name (``irepa/assets/<asset>``) or an absolute path (for user-registered encoders).
        sha256: Known SHA-256 of the file: full hex, or a prefix of at least 8 hex digits (the torch.hub file-name
            convention, e.g. DINOv3's ``...-73cec8be.pth``).
        alt_filenames: Official file names also looked for in local caches (``$TORCH_HOME/hub/checkpoints``), so
            weights fetched earlier by torch.hub or by hand are found offline.
        alt_sha256: Known checksum prefixes of the ``alt_filenames`` (same order; empty string when unknown).
        gated: The Hub repository requires accepting a licence before download.
        homepage: Where a human gets the weights (shown in error messages).
    """

    repo_id: str | None = None
    filename: str | None = None
    revision: str = "main"
    url: str | None = None
    asset: str | None = None
    sha256: str | None = None
    alt_filenames: tuple[str, ...] = ()
    alt_sha256: tuple[str, ...] = ()
    gated: bool = False
    homepage: str = ""

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.repo_id, self.url, self.asset)) != 1:
            raise ValueError("WeightSource needs exactly one of repo_id, url or asset")
        if self.url is not None and self.filename is None:
            object.__setattr__(self, "filename", self.url.rsplit("/", 1)[-1])
        if self.alt_sha256 and len(self.alt_sha256) != len(self.alt_filenames):
            raise ValueError("alt_sha256 must match alt_filenames one to one")

    @property
    def is_folder(self) -> bool:
        """True for Transformers model folders (no single file)."""
        return self.repo_id is not None and self.filename is None

    def describe(self) -> str:
        """Short human description: ``hf:timm/x (model.safetensors)``, ``url:...``, ``asset:...``."""
        if self.repo_id is not None:
            what = self.filename or "config.json + *.safetensors"
            rev = "" if self.revision == "main" else f"@{self.revision}"
            return f"hf:{self.repo_id}{rev} ({what})"
        if self.url is not None:
            return f"url:{self.url}"
        return f"asset:{self.asset}"


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """Everything irepa knows about one zoo entry.

    Attributes:
        id: Registry id (the study's names, e.g. ``dinov2-vit-b``).
        family: Model family shown in listings (``DINOv2``).
        backend: ``timm``, ``transformers``, ``classic`` (HOG, pixels) or ``packaged`` (irepa's own tiny ViTs).
        arch: Backend architecture: timm model name, Transformers class name, classic kind or ``vit``.
        arch_kwargs: Keyword arguments of the architecture (timm ``create_model`` kwargs, Transformers config
            fields, classic options).
        patch_size: Encoder-input pixels per output token (the ViT patch size; 32 for Hiera's last stage).
        embed_dim: Channels D of the patch tokens.
        num_prefix_tokens: CLS/register tokens the backbone emits before the patch tokens (dropped).
        has_cls: Whether a CLS token is returned (for probing and CLS mixing).
        params_m: Parameters of the module as built, in millions (measured on the ``meta`` device).
        preprocessing: Named preprocessing variants; the first one is the default.
        final_norm: Apply the backbone's final norm to the tokens. ``False`` follows official code that reads the
            tokens before it (MAE, PE, CLIP's ``ln_post``).
        weights: Weight source, or ``None`` for weight-free encoders (HOG, pixels).
        license: Licence of the weights.
        study: One of the 27 encoders of the paper's correlation study.
        notes: Provenance and caveats.
        pixels_per_token: Image pixels per target token (16: SiT / JiT grids).
        native_resolution: Encoder input size the weights were trained at (informational).
        remap: Name of a state-dict remapping applied before loading (see ``irepa.encoders.remap``).
        accepts_img_size: The timm architecture takes an ``img_size`` argument (HieraDet does not).
    """

    id: str
    family: str
    backend: Backend
    arch: str
    patch_size: int
    embed_dim: int
    num_prefix_tokens: int
    has_cls: bool
    params_m: float
    preprocessing: Mapping[str, Preprocessing] = dataclasses.field(hash=False)
    weights: WeightSource | None
    license: str
    arch_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    final_norm: bool = True
    study: bool = False
    notes: str = ""
    pixels_per_token: int = 16
    native_resolution: int | None = None
    remap: str | None = None
    accepts_img_size: bool = True

    def __post_init__(self) -> None:
        if not self.preprocessing:
            raise ValueError(f"encoder spec {self.id!r} needs at least one preprocessing variant")
        if self.patch_size <= 0 or self.pixels_per_token <= 0 or self.embed_dim <= 0:
            raise ValueError(f"encoder spec {self.id!r}: patch_size, pixels_per_token and embed_dim must be > 0")

    # ------------------------------------------------------------------------------------------------------------
    # Derived quantities

    @property
    def gated(self) -> bool:
        """The weights need a licence to be accepted on the Hub before download."""
        return bool(self.weights and self.weights.gated)

    @property
    def default_preprocessing(self) -> str:
        """Name of the default preprocessing variant."""
        return next(iter(self.preprocessing))

    def get_preprocessing(self, variant: str | None = None) -> Preprocessing:
        """The preprocessing variant ``variant`` (default: the first one).

        Raises:
            IrepaError: For a variant this encoder does not define.
        """
        name = variant or self.default_preprocessing
        if name not in self.preprocessing:
            raise IrepaError(
                f"encoder {self.id!r} has no preprocessing variant {name!r}; choose one of "
                f"{', '.join(self.preprocessing)}"
            )
        return self.preprocessing[name]

    def grid(self, resolution: int | tuple[int, int]) -> tuple[int, int]:
        """Token grid ``(h, w)`` for images of ``resolution`` pixels (int = square).

        Raises:
            IrepaError: If the resolution is not a positive multiple of ``pixels_per_token``.
        """
        height, width = normalize_resolution(resolution)
        step = self.pixels_per_token
        if height % step or width % step:
            raise IrepaError(
                f"resolution {height}x{width} px cannot be tiled by {self.id!r}: the token grid has one token per "
                f"{step} px, so both sides must be multiples of {step} (e.g. 256 or 512)"
            )
        return height // step, width // step

    def input_size(self, resolution: int | tuple[int, int]) -> tuple[int, int]:
        """Encoder input size ``(H, W)`` in pixels that yields :meth:`grid` at ``resolution``."""
        gh, gw = self.grid(resolution)
        return gh * self.patch_size, gw * self.patch_size

    def summary(self) -> dict[str, Any]:
        """A JSON-safe description (for ``irepa encoders list --format json`` and feature metadata)."""
        out: dict[str, Any] = {
            "id": self.id,
            "family": self.family,
            "backend": self.backend,
            "arch": self.arch,
            "params_m": self.params_m,
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
            "num_prefix_tokens": self.num_prefix_tokens,
            "has_cls": self.has_cls,
            "grid_256": list(self.grid(256)),
            "grid_512": list(self.grid(512)),
            "input_256": list(self.input_size(256)),
            "input_512": list(self.input_size(512)),
            "final_norm": self.final_norm,
            "preprocessing": {k: v.to_dict() for k, v in self.preprocessing.items()},
            "weights": self.weights.describe() if self.weights else "none (no weights)",
            "gated": self.gated,
            "license": self.license,
            "study": self.study,
            "remap": self.remap,
            "notes": self.notes,
        }
        return out


def normalize_resolution(resolution: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``256`` → ``(256, 256)``; ``(h, w)`` stays; anything non-positive is an error."""
    if isinstance(resolution, int):
        pair = (resolution, resolution)
    else:
        pair = tuple(int(r) for r in resolution)
        if len(pair) != 2:
            raise IrepaError(f"resolution must be an int or (height, width), got {resolution!r}")
    if min(pair) <= 0:
        raise IrepaError(f"resolution must be positive, got {resolution!r}")
    return pair  # type: ignore[return-value]


#: The encoder zoo. Entries are added by ``irepa.encoders.zoo`` (imported by the package) and by
#: :func:`irepa.encoders.register_packaged_vit`.
ENCODERS: Registry[EncoderSpec] = Registry("encoder")
