"""Feature spaces for Fréchet distances beyond Inception (FD-DINOv2 and friends) and CLIP embeddings for CMMD.

A *feature space* is anything with a ``name`` and ``features(images) -> (B, D)``, where ``images`` are uint8
(B, 3, H, W); the :class:`FeatureSpace` protocol is all the evaluator needs, so a demo can plug in its own small
network. Provided here:

* :class:`InceptionPoolSpace`: the 2048-d pool features of the FID Inception.
* :class:`EncoderSpace`: any encoder of the zoo (``irepa.encoders.load_encoder(...)``), reduced to one vector per
  image by ``pooling="mean"`` (mean of the patch tokens, the default: every encoder of the zoo has patch tokens,
  not all have a CLS token) or ``pooling="cls"`` (the CLS token, as FD-DINOv2 of Stein et al. 2023 uses). The
  features are what the zoo returns, i.e. the representation REPA aligns to (for example no final norm for MAE);
  FD values are therefore comparable between irepa runs, not necessarily with other tools' FD-DINOv2.
* :class:`ClipEmbeddingSpace`: L2-normalized CLIP image embeddings (the projection head output) from a local
  ``transformers`` CLIP folder, the space of CMMD (Jayasumana et al. 2024, ViT-L/14 at 336 px).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from irepa.errors import IrepaError, WeightsNotFoundError, first_line

__all__ = ["ClipEmbeddingSpace", "EncoderSpace", "FeatureSpace", "InceptionPoolSpace", "compute_features"]


@runtime_checkable
class FeatureSpace(Protocol):
    """Maps uint8 images (B, 3, H, W) to float32 features (B, D)."""

    name: str

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Features (B, D), float32, of uint8 images (B, 3, H, W)."""
        ...


class InceptionPoolSpace:
    """The FID Inception's 2048-d ``pool_3`` features."""

    name = "inception-pool"

    def __init__(self, inception: torch.nn.Module) -> None:
        self.inception = inception

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pool features (B, 2048)."""
        return self.inception(images).pool


class EncoderSpace:
    """One vector per image from an encoder with ``encode(images) -> EncoderFeatures(patch_tokens, cls_token, grid)``.

    Args:
        encoder: A zoo encoder (``irepa.encoders.load_encoder``) or any object with that ``encode`` contract.
        pooling: ``"mean"`` (mean over patch tokens) or ``"cls"`` (the CLS token).
        name: Name recorded in results (defaults to the encoder's spec id when it has one).
    """

    def __init__(self, encoder, pooling: str = "mean", name: str | None = None) -> None:
        if pooling not in ("mean", "cls"):
            raise IrepaError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.encoder = encoder
        self.pooling = pooling
        spec = getattr(encoder, "spec", None)
        base = name or getattr(spec, "id", None) or getattr(spec, "name", None) or type(encoder).__name__
        self.name = f"{base}:{pooling}"

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Mean-pooled patch tokens or CLS tokens (B, D), float32."""
        out = self.encoder.encode(images)
        if self.pooling == "cls":
            if out.cls_token is None:
                raise IrepaError(f"encoder {self.name!r} has no CLS token; use pooling 'mean'")
            return out.cls_token.float()
        return out.patch_tokens.float().mean(dim=1)


class ClipEmbeddingSpace:
    """L2-normalized CLIP image embeddings from a local ``transformers`` folder (``CLIPVisionModelWithProjection``).

    Preprocessing as the CMMD reference code: [0, 1] scaling, bicubic resize to the model's image size (336 px
    for CMMD's model; the short side, then a centre crop for non-square images), CLIP mean/std.

    Args:
        model_dir: Folder written by ``save_pretrained`` (``config.json`` + weights), e.g. a local copy of
            ``openai/clip-vit-large-patch14-336`` (CMMD's model).
        device: Where to run the model.

    Raises:
        WeightsNotFoundError: If the folder does not hold a CLIP vision model.
    """

    name = "clip-embedding"
    MEAN = (0.48145466, 0.4578275, 0.40821073)
    STD = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu") -> None:
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise WeightsNotFoundError(
                f"CLIP model folder {str(model_dir)!r} has no config.json; save one on a connected machine with "
                "CLIPVisionModelWithProjection.from_pretrained('openai/clip-vit-large-patch14-336')"
                ".save_pretrained(DIR)"
            )
        from transformers import CLIPVisionModelWithProjection

        try:
            self.model = CLIPVisionModelWithProjection.from_pretrained(str(model_dir), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise WeightsNotFoundError(
                f"cannot load a CLIP vision model from {str(model_dir)!r}: {first_line(exc)}"
            ) from exc
        self.model = self.model.to(device).eval().requires_grad_(False)
        self.size = int(self.model.config.image_size)
        self.name = f"clip-embedding:{model_dir.name}"

    def _preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        h, w = x.shape[-2:]
        scale = self.size / min(h, w)
        new_h, new_w = max(self.size, round(h * scale)), max(self.size, round(w * scale))
        # Plain bicubic (no antialias, no clamp), as the CMMD reference implementations resize.
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False)
        top, left = (new_h - self.size) // 2, (new_w - self.size) // 2
        x = x[..., top : top + self.size, left : left + self.size]
        mean = torch.tensor(self.MEAN, device=x.device)[:, None, None]
        std = torch.tensor(self.STD, device=x.device)[:, None, None]
        return (x - mean) / std

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings (B, projection_dim), float32."""
        device = next(self.model.parameters()).device
        pixels = self._preprocess(images.to(device))
        with torch.autocast(device_type=device.type, enabled=False):
            emb = self.model(pixel_values=pixels).image_embeds.float()
        return F.normalize(emb, dim=-1)


def compute_features(
    space: FeatureSpace, batches: Iterable[torch.Tensor], *, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Features (N, D) float32 (on CPU) of a stream of uint8 image batches (B, 3, H, W)."""
    out = [space.features(batch.to(device)).float().cpu() for batch in batches]
    if not out:
        raise IrepaError("no images to compute features of")
    return torch.cat(out)
