"""Packaged encoders: irepa's own tiny ViTs whose weights ship inside the package.

A packaged encoder is a timm ``VisionTransformer`` built from keyword arguments, with weights in a safetensors file
under ``src/irepa/assets/`` (resolved through :mod:`importlib.resources`, so it works from wheels and zip installs)
and a SHA-256 checked at every load. One call registers it::

    register_packaged_vit(
        "irepa-tiny-vit",
        asset="tiny_vit.safetensors", sha256="<64 hex digits>",
        img_size=64, patch_size=8, embed_dim=192, depth=6, num_heads=3,
        pixels_per_token=8,                      # one target token per 8 image pixels
    )

``load_encoder("irepa-tiny-vit", resolution=64)`` then yields an 8×8 grid. ``asset`` may also be an absolute path
(for encoders a user trains and registers in their own code).

**Cards.** A packaged encoder can also be described by a JSON card next to its weights: ``{"format":
"irepa-packaged-encoder/1", "encoder": {<the keyword arguments of register_packaged_vit, id included>}, ...}``;
other top-level keys (training recipe, metrics, provenance) are for humans and ignored here.
:func:`register_packaged_card` registers one card; every card shipped in ``irepa/assets/`` is registered when
:mod:`irepa.encoders` is imported (:func:`register_package_assets`), so shipped encoders are ordinary zoo entries.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from irepa.encoders.spec import ENCODERS, IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, Preprocessing, WeightSource
from irepa.errors import IrepaError

__all__ = [
    "CARD_FORMAT",
    "read_packaged_card",
    "register_package_assets",
    "register_packaged_card",
    "register_packaged_vit",
    "vit_param_count",
]

#: Format tag of packaged-encoder cards.
CARD_FORMAT = "irepa-packaged-encoder/1"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def register_packaged_vit(
    id: str,
    *,
    asset: str | Path,
    sha256: str,
    img_size: int,
    patch_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    mlp_ratio: float = 4.0,
    class_token: bool = True,
    reg_tokens: int = 0,
    global_pool: str = "token",
    pixels_per_token: int = 16,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    interpolation: str = "bicubic",
    family: str = "irepa",
    license: str = "apache-2.0",
    notes: str = "",
    extra_kwargs: Mapping[str, Any] | None = None,
) -> EncoderSpec:
    """Register a packaged tiny ViT in :data:`~irepa.encoders.ENCODERS` and return its spec.

    Args:
        id: Registry id.
        asset: File name under ``irepa/assets/``, or an absolute path.
        sha256: Full SHA-256 (64 hex digits) of the asset; verified at every load.
        img_size: Input size the weights were trained at (position embeddings are resampled for other sizes).
        patch_size: ViT patch size (encoder-input pixels per token).
        embed_dim: Token channels D.
        depth: Number of transformer blocks.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden size / D.
        class_token: Whether the ViT has a CLS token.
        reg_tokens: Number of register tokens.
        global_pool: timm pooling of the classifier head (``token``, ``avg``, ``""``); unused by ``encode``.
        pixels_per_token: Image pixels per target token (the diffusion model's patch grid).
        mean: Normalization mean the model was trained with.
        std: Normalization std the model was trained with.
        interpolation: Resize mode when the image size differs from ``grid × patch_size``.
        family: Family shown in listings.
        license: Licence of the weights.
        notes: Provenance (how and on what the model was trained).
        extra_kwargs: More ``VisionTransformer`` kwargs (e.g. ``qkv_bias``, ``no_embed_class``).

    Raises:
        ValueError: Invalid checksum or an id that is already registered.
    """
    sha256 = sha256.lower()
    if not _SHA256.match(sha256):
        raise ValueError(f"sha256 of packaged encoder {id!r} must be 64 hex digits, got {sha256!r}")
    arch_kwargs = {
        "patch_size": patch_size,
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads,
        "mlp_ratio": mlp_ratio,
        "class_token": class_token,
        "reg_tokens": reg_tokens,
        "global_pool": global_pool,
        **(extra_kwargs or {}),
    }
    spec = EncoderSpec(
        id=id,
        family=family,
        backend="packaged",
        arch="vit",
        arch_kwargs=arch_kwargs,
        patch_size=patch_size,
        embed_dim=embed_dim,
        num_prefix_tokens=int(class_token) + reg_tokens,
        has_cls=class_token,
        params_m=round(
            vit_param_count(img_size, patch_size, embed_dim, depth, mlp_ratio, class_token, reg_tokens) / 1e6, 3
        ),
        preprocessing={"native": Preprocessing(mean=mean, std=std, interpolation=interpolation, note="training stats")},  # type: ignore[arg-type]
        weights=WeightSource(asset=str(asset), sha256=sha256),
        license=license,
        notes=notes or "irepa packaged tiny ViT",
        pixels_per_token=pixels_per_token,
        native_resolution=img_size,
    )
    ENCODERS.register(id, spec)
    return spec


def vit_param_count(
    img_size: int, patch_size: int, dim: int, depth: int, mlp_ratio: float, class_token: bool, reg_tokens: int
) -> int:
    """Parameters of a timm ViT (qkv bias, no head) at ``img_size`` — a closed form, no model needed."""
    hidden = int(dim * mlp_ratio)
    block = 2 * 2 * dim + (3 * dim * dim + 3 * dim) + (dim * dim + dim) + (dim * hidden + hidden) + (hidden * dim + dim)
    tokens = (img_size // patch_size) ** 2 + int(class_token) + reg_tokens
    embed = 3 * patch_size * patch_size * dim + dim + tokens * dim + (int(class_token) + reg_tokens) * dim
    return depth * block + embed + 2 * dim


# ----------------------------------------------------------------------------------------------------------------------
# Cards


def read_packaged_card(path: str | Path) -> dict[str, Any]:
    """Read and check a packaged-encoder card (JSON).

    Returns:
        The whole card; ``card["encoder"]`` holds the :func:`register_packaged_vit` arguments.

    Raises:
        IrepaError: Missing or unreadable file, invalid JSON, wrong format tag, or no ``encoder`` section.
    """
    path = Path(path)
    try:
        card = json.loads(path.read_text())
    except OSError as exc:
        raise IrepaError(f"cannot read packaged-encoder card {str(path)!r}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise IrepaError(f"packaged-encoder card {str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        found = card.get("format") if isinstance(card, dict) else type(card).__name__
        raise IrepaError(f"{str(path)!r} is not a packaged-encoder card (format {found!r}, expected {CARD_FORMAT!r})")
    encoder = card.get("encoder")
    if not isinstance(encoder, dict) or not isinstance(encoder.get("id"), str) or "asset" not in encoder:
        raise IrepaError(f"packaged-encoder card {str(path)!r} has no valid 'encoder' section (id, asset, ...)")
    return card


def register_packaged_card(path: str | Path, *, id: str | None = None, asset: str | Path | None = None) -> EncoderSpec:
    """Register the packaged ViT described by the card at ``path``.

    Args:
        path: The card (JSON).
        id: Register under this id instead of the card's (e.g. to load a freshly trained copy of a shipped
            encoder next to the shipped one).
        asset: Weights file overriding the card's ``asset`` (e.g. an absolute path to a file outside the package).

    Raises:
        IrepaError: An invalid card, or arguments :func:`register_packaged_vit` rejects (unknown keys, bad checksum,
            an id that is already registered).
    """
    fields = dict(read_packaged_card(path)["encoder"])
    if id is not None:
        fields["id"] = id
    if asset is not None:
        fields["asset"] = str(asset)
    for key in ("mean", "std"):
        if key in fields:
            fields[key] = tuple(float(v) for v in fields[key])
    try:
        return register_packaged_vit(**fields)
    except (TypeError, ValueError) as exc:
        raise IrepaError(f"packaged-encoder card {str(path)!r}: {exc}") from exc


def register_package_assets() -> list[EncoderSpec]:
    """Register every card shipped in ``irepa/assets/`` (``*.json``, sorted by name); called once by the zoo."""
    folder = importlib.resources.files("irepa") / "assets"
    if not folder.is_dir():
        return []
    cards = sorted((entry for entry in folder.iterdir() if entry.name.endswith(".json")), key=lambda e: e.name)
    return [register_packaged_card(Path(str(card))) for card in cards]
