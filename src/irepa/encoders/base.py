"""The frozen encoder module and its output type.

:class:`VisionEncoder` is the one interface every zoo entry implements. It owns the preprocessing derived from the
spec (resize to the encoder input size, normalization), input validation, optional CLS mixing, and the freezing
guarantees; backends only implement :meth:`VisionEncoder._forward_backbone`.

Freezing: the module is put in eval mode with every parameter's ``requires_grad`` off; ``train(True)`` keeps it in
eval mode and ``requires_grad_(True)`` is refused, and :meth:`VisionEncoder.encode` checks both before every call
(teachers left in train mode silently changed REPA's targets, sihyun-yu/REPA#45).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from irepa.encoders.spec import EncoderSpec, Preprocessing, normalize_resolution
from irepa.errors import IrepaError

__all__ = ["CLS_MIXING_MODES", "ClsMixing", "EncoderFeatures", "VisionEncoder", "mix_cls"]

ClsMixing = Literal["none", "additive", "convex"]
#: ``additive``: the paper's p_i + α·c (§2, global-information experiment); ``convex``: the official code's
#: (1 − α)·p_i + α·c (``DINOv2MixedEncoder``, default α = 0.1).
CLS_MIXING_MODES: tuple[str, ...] = ("none", "additive", "convex")


def mix_cls(tokens: torch.Tensor, cls: torch.Tensor, mode: ClsMixing, alpha: float) -> torch.Tensor:
    """Mix the CLS token into every patch token (the paper's global-information experiment, §2).

    Args:
        tokens: Patch tokens (B, T, D).
        cls: CLS tokens (B, D).
        mode: ``additive`` (paper: ``p_i + α·c``), ``convex`` (official code: ``(1 − α)·p_i + α·c``) or ``none``.
        alpha: Mixing weight α.

    Returns:
        Mixed tokens (B, T, D).
    """
    if mode == "none":
        return tokens
    if mode == "additive":
        return tokens + alpha * cls[:, None, :]
    if mode == "convex":
        return (1.0 - alpha) * tokens + alpha * cls[:, None, :]
    raise IrepaError(f"unknown CLS mixing {mode!r}; choose one of {', '.join(CLS_MIXING_MODES)}")


# Float images may deviate from [0, 1] by rounding only; anything else is a convention mistake ([-1, 1] inputs).
_RANGE_TOLERANCE = 1e-3


@dataclasses.dataclass
class EncoderFeatures:
    """What an encoder returns for a batch of images.

    Attributes:
        patch_tokens: Float32 patch tokens (B, T, D), ``T = h * w`` in row-major grid order, prefix tokens removed.
        cls_token: Float32 CLS token (B, D), or ``None`` when the encoder has none.
        grid: Token grid ``(h, w)``; matches the diffusion model's grid at the same image resolution.
    """

    patch_tokens: torch.Tensor
    cls_token: torch.Tensor | None
    grid: tuple[int, int]

    def as_grid(self) -> torch.Tensor:
        """Patch tokens as a feature map (B, D, h, w)."""
        b, _, d = self.patch_tokens.shape
        h, w = self.grid
        return self.patch_tokens.transpose(1, 2).reshape(b, d, h, w)

    def mean_token(self) -> torch.Tensor:
        """Mean-pooled patch tokens (B, D), the paper's probe input."""
        return self.patch_tokens.mean(dim=1)


class VisionEncoder(nn.Module):
    """A frozen pretrained (or baseline) encoder that maps images to grid-matched patch tokens.

    Build instances with :func:`irepa.encoders.load_encoder`; subclasses implement :meth:`_forward_backbone`.

    Args:
        spec: The zoo entry.
        backbone: The network (timm / Transformers model, or a classic feature module). Stored as ``.backbone``.
        resolution: Image size in pixels (int for square, or ``(height, width)``) that ``encode`` accepts.
        preprocessing: Name of the spec's preprocessing variant (default: the spec's first).
        cls_mixing: ``none``, ``additive`` (paper) or ``convex`` (official code); see :data:`CLS_MIXING_MODES`.
        cls_alpha: Mixing weight α ≥ 0 (``convex`` needs α ≤ 1).
        weights_info: Where the weights came from (recorded in feature metadata).

    Attributes:
        spec: The zoo entry.
        resolution: ``(H, W)`` of the images ``encode`` accepts.
        grid: Token grid ``(h, w)``.
        input_size: Encoder input ``(H_in, W_in)`` after resizing.
        embed_dim: Token channels D.
    """

    def __init__(
        self,
        spec: EncoderSpec,
        backbone: nn.Module,
        *,
        resolution: int | tuple[int, int],
        embed_dim: int,
        preprocessing: str | None = None,
        cls_mixing: ClsMixing = "none",
        cls_alpha: float = 0.0,
        weights_info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if cls_mixing not in CLS_MIXING_MODES:
            raise IrepaError(f"unknown CLS mixing {cls_mixing!r}; choose one of {', '.join(CLS_MIXING_MODES)}")
        if cls_mixing != "none":
            if not spec.has_cls:
                raise IrepaError(
                    f"encoder {spec.id!r} has no CLS token, so CLS mixing is impossible; use cls_mixing=none"
                )
            if not math.isfinite(cls_alpha) or cls_alpha < 0 or (cls_mixing == "convex" and cls_alpha > 1):
                raise IrepaError(f"CLS mixing weight alpha={cls_alpha} must be >= 0 (and <= 1 for convex mixing)")
        self.spec = spec
        self.backbone = backbone
        self.resolution = normalize_resolution(resolution)
        self.grid = spec.grid(self.resolution)
        self.input_size = spec.input_size(self.resolution)
        self.embed_dim = int(embed_dim)
        self.preprocessing_name = preprocessing or spec.default_preprocessing
        self.preprocessing: Preprocessing = spec.get_preprocessing(self.preprocessing_name)
        self.cls_mixing: ClsMixing = cls_mixing
        self.cls_alpha = float(cls_alpha)
        self.weights_info = dict(weights_info or {"origin": "none"})
        mean = torch.tensor(self.preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1)
        # Non-persistent: preprocessing constants are part of the spec, not of any checkpoint.
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        self.freeze()

    # ------------------------------------------------------------------------------------------------------------
    # Freezing

    def freeze(self) -> VisionEncoder:
        """Put every submodule in eval mode and turn off gradients of every parameter."""
        super().train(False)
        for param in self.parameters():
            param.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> VisionEncoder:
        """Keep eval mode whatever ``mode`` is: encoders are frozen teachers (a parent ``.train()`` is safe)."""
        return super().train(False)

    def requires_grad_(self, requires_grad: bool = True) -> VisionEncoder:
        """Only ``requires_grad_(False)`` is allowed.

        Raises:
            RuntimeError: When asked to enable gradients.
        """
        if requires_grad:
            raise RuntimeError(f"encoder {self.spec.id!r} is frozen; its parameters cannot require gradients")
        return super().requires_grad_(False)

    def _check_frozen(self) -> None:
        if any(m.training for m in self.modules()):
            raise RuntimeError(f"encoder {self.spec.id!r} has a submodule in train mode; call .freeze()")
        if any(p.requires_grad for p in self.parameters()):
            raise RuntimeError(f"encoder {self.spec.id!r} has parameters that require grad; call .freeze()")

    # ------------------------------------------------------------------------------------------------------------
    # Preprocessing

    @property
    def device(self) -> torch.device:
        """Device of the encoder's tensors."""
        return self.pixel_mean.device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the backbone (float32 for weight-free encoders)."""
        for param in self.backbone.parameters():
            return param.dtype
        return torch.float32

    def check_images(self, images: torch.Tensor) -> None:
        """Validate a batch of images (shape, channels, dtype, size, value range).

        Raises:
            IrepaError: With the fix, for anything but uint8 or [0, 1] float RGB images of the configured size.
        """
        if not isinstance(images, torch.Tensor):
            raise IrepaError(f"images must be a torch.Tensor (B, 3, H, W), got {type(images).__name__}")
        if images.ndim != 4:
            raise IrepaError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        channels = images.shape[1]
        if channels != 3:
            kind = {1: "grayscale", 2: "grayscale + alpha", 4: "RGBA"}.get(channels, f"{channels}-channel")
            raise IrepaError(
                f"images are {kind} ({channels} channels in dim 1); encoders take RGB (B, 3, H, W): convert them "
                "(irepa.utils.images.load_image converts grayscale/RGBA to RGB)"
            )
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise IrepaError(
                f"images have dtype {images.dtype}; pass uint8 in [0, 255] or float in [0, 1] "
                "(16-bit images must be converted to 8 bits first)"
            )
        if tuple(images.shape[-2:]) != self.resolution:
            h, w = images.shape[-2:]
            raise IrepaError(
                f"images are {h}x{w} px but encoder {self.spec.id!r} was loaded for {self.resolution[0]}x"
                f"{self.resolution[1]} px; resize or crop them, or load the encoder with resolution={h}"
            )
        if images.is_floating_point() and images.device.type != "meta" and images.numel():
            low, high = torch.aminmax(images.detach())
            low_v, high_v = float(low), float(high)
            if not (math.isfinite(low_v) and math.isfinite(high_v)):
                raise IrepaError("images contain NaN or inf values")
            if low_v < -_RANGE_TOLERANCE or high_v > 1 + _RANGE_TOLERANCE:
                raise IrepaError(
                    f"float images must lie in [0, 1], got values in [{low_v:.3g}, {high_v:.3g}]; pass uint8 images, "
                    "or map [-1, 1] images with x * 0.5 + 0.5"
                )

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images → normalized float32 encoder input (B, 3, H_in, W_in) on the encoder's device."""
        self.check_images(images)
        x = images.to(self.device, non_blocking=True)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if tuple(x.shape[-2:]) != self.input_size:
            # Resize and normalization commute (interpolation weights sum to 1, no clamping), so the order of the
            # official code (normalize-then-resize for DINOv2, resize-then-normalize for CLIP) does not matter.
            mode = self.preprocessing.interpolation
            kwargs: dict[str, Any] = {"size": self.input_size, "mode": mode}
            if mode in ("bilinear", "bicubic"):
                kwargs.update(align_corners=False, antialias=self.preprocessing.antialias)
            x = F.interpolate(x, **kwargs)
        return (x - self.pixel_mean) / self.pixel_std

    # ------------------------------------------------------------------------------------------------------------
    # Forward

    def _forward_backbone(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the backbone on preprocessed input (B, 3, H_in, W_in) in the backbone's dtype.

        Returns:
            ``(patch tokens (B, T, D), CLS token (B, D) or None)`` with prefix tokens removed.
        """
        raise NotImplementedError  # pragma: no cover - abstract

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> EncoderFeatures:
        """Encode a batch of images.

        Args:
            images: uint8 (B, 3, H, W) in [0, 255], or float in [0, 1], at the configured resolution (any device).

        Returns:
            :class:`EncoderFeatures` with float32 tokens on the encoder's device.
        """
        self._check_frozen()
        # Preprocessing in float32 whatever autocast the caller runs under (meta tensors know no autocast).
        no_autocast = self.device.type in ("cpu", "cuda")
        with torch.autocast(device_type=self.device.type, enabled=False) if no_autocast else contextlib.nullcontext():
            x = self.preprocess(images)
        tokens, cls = self._forward_backbone(x.to(self.dtype))
        tokens = tokens.float()
        cls = cls.float() if cls is not None else None
        b = x.shape[0]
        expected = (b, self.grid[0] * self.grid[1], self.embed_dim)
        if tuple(tokens.shape) != expected:  # a backend bug, never user error
            raise RuntimeError(f"encoder {self.spec.id!r} produced tokens {tuple(tokens.shape)}, expected {expected}")
        if self.cls_mixing != "none":
            assert cls is not None
            tokens = mix_cls(tokens, cls, self.cls_mixing, self.cls_alpha)
        return EncoderFeatures(patch_tokens=tokens, cls_token=cls, grid=self.grid)

    def forward(self, images: torch.Tensor) -> EncoderFeatures:
        """Same as :meth:`encode`."""
        return self.encode(images)

    # ------------------------------------------------------------------------------------------------------------
    # Description

    def describe(self) -> dict[str, Any]:
        """JSON-safe record of how features are produced (stored with extracted features)."""
        return {
            "encoder": self.spec.id,
            "family": self.spec.family,
            "backend": self.spec.backend,
            "arch": self.spec.arch,
            "resolution": list(self.resolution),
            "grid": list(self.grid),
            "input_size": list(self.input_size),
            "embed_dim": self.embed_dim,
            "prefix_tokens_dropped": self.spec.num_prefix_tokens,
            "final_norm": self.spec.final_norm,
            "preprocessing": {"variant": self.preprocessing_name, **self.preprocessing.to_dict()},
            "cls_mixing": self.cls_mixing,
            "cls_alpha": self.cls_alpha,
            "weights": self.weights_info,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def extra_repr(self) -> str:  # noqa: D102 (nn.Module hook)
        return (
            f"id={self.spec.id!r}, resolution={self.resolution}, grid={self.grid}, input_size={self.input_size}, "
            f"embed_dim={self.embed_dim}, preprocessing={self.preprocessing_name!r}"
        )
