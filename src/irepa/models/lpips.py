"""LPIPS (Zhang et al. 2018, "vgg" v0.1) on torchvision's VGG16, with weights from local files only.

The perceptual distance REPA-E's VAE loss uses (taming-transformers' ``LPIPS``)::

    x ← (x − shift) / scale                     shift (−.030, −.088, −.188), scale (.458, .448, .450); x in [−1, 1]
    f_l = VGG16 features after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (torchvision ``features[:30]``)
    f̂_l = f_l / (‖f_l‖₂ over channels + 1e-10)
    d(x, y) = Σ_l mean_{h,w} ( w_l · (f̂_l(x) − f̂_l(y))² )       w_l: 1×1 conv without bias ("linear heads")

Weights (offline-first; nothing is downloaded):

- ``vgg``: torchvision's ImageNet VGG16 state dict (``vgg16-397923af.pth``; the ``features.N.*`` keys are used);
- ``heads``: the five LPIPS v0.1 "vgg" linear heads, keys ``lin{0..4}.model.1.weight`` of shape ``(1, C_l, 1, 1)``
  (``vgg.pth`` of the ``lpips`` package, ``lpips/weights/v0.1/vgg.pth``, or taming-transformers' ``vgg.pth``).

:func:`load_lpips` reads both (``.pth``/``.pt`` with ``weights_only=True``, or ``.safetensors``) and fails with one
line naming what is missing. A single file holding both key sets may be passed as both arguments.

**REPA-E compatibility switch** (prior-implementations §13.13): REPA-E's LPIPS maps its inputs ``x → 2x − 1``,
assuming [0, 1], while its training script feeds [−1, 1] images, so the official loss compares images in
[−3, 1]. The released E2E-VAEs were tuned that way. ``repae_input_quirk=True`` reproduces it; the default feeds
the [−1, 1] images as LPIPS expects.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from irepa.errors import IrepaError, WeightsNotFoundError

__all__ = ["LPIPS", "LPIPS_CHANNELS", "load_lpips", "lpips_state_from_parts"]

#: Channels of the five VGG16 feature maps LPIPS compares.
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
_SLICE_ENDS = (4, 9, 16, 23, 30)  # torchvision vgg16().features indices after relu1_2 … relu5_3


def _vgg16_features() -> nn.Sequential:
    """The trunk ``torchvision.models.vgg16().features[:30]`` (same indices and key names), without the classifier."""
    layers: list[nn.Module] = []
    channels = 3
    for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if width == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(width), kernel_size=3, padding=1), nn.ReLU()]
            channels = int(width)
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """LPIPS distance with a VGG16 trunk (frozen, eval mode; gradients flow to the inputs only).

    Args:
        repae_input_quirk: Reproduce REPA-E's ``x → 2x − 1`` on [−1, 1] inputs (see the module docstring).

    Weights are random until :meth:`load_state_dict` (or :func:`load_lpips`); state-dict keys: ``features.N.*``
    (torchvision's VGG16 names, N < 30) and ``heads.L.weight`` (L = 0..4).
    """

    def __init__(self, *, repae_input_quirk: bool = False) -> None:
        super().__init__()
        self.repae_input_quirk = repae_input_quirk
        self.features = _vgg16_features()
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in LPIPS_CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> LPIPS:
        """LPIPS stays in eval mode (no dropout in the heads, as REPA-E's loss uses it)."""
        return super().train(False)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs, start = [], 0
        for end in _SLICE_ENDS:
            for index in range(start, end):
                x = self.features[index](x)
            outs.append(x)
            start = end
        return outs

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-image LPIPS distance.

        Args:
            images: ``(B, 3, H, W)`` in [−1, 1].
            targets: ``(B, 3, H, W)`` in [−1, 1].

        Returns:
            float32 ``(B,)``.
        """
        if images.shape != targets.shape or images.ndim != 4 or images.shape[1] != 3:
            raise IrepaError(f"LPIPS compares (B, 3, H, W) pairs, got {tuple(images.shape)} and {tuple(targets.shape)}")
        x, y = images.float(), targets.float()
        if self.repae_input_quirk:
            x, y = 2 * x - 1, 2 * y - 1
        both = (torch.cat([x, y]) - self.shift) / self.scale
        total = torch.zeros(images.shape[0], device=images.device)
        for head, feats in zip(self.heads, self._features(both)):
            feats = feats / (feats.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            fx, fy = feats.chunk(2)
            total = total + head((fx - fy).pow(2)).mean(dim=(1, 2, 3))
        return total


def lpips_state_from_parts(
    vgg: Mapping[str, torch.Tensor], heads: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Combine a torchvision VGG16 state dict and LPIPS v0.1 heads into :class:`LPIPS` keys.

    Raises:
        WeightsNotFoundError: A VGG feature layer or a head is missing (the message names it).
    """
    state: dict[str, torch.Tensor] = {}
    with torch.device("meta"):
        expected = LPIPS().state_dict()
    for key in expected:
        if key.startswith("features."):
            if key not in vgg:
                raise WeightsNotFoundError(
                    f"LPIPS: the VGG16 weights have no {key!r}; pass torchvision's ImageNet VGG16 state dict "
                    "(vgg16-397923af.pth)"
                )
            state[key] = vgg[key]
        else:
            index = int(key.split(".")[1])
            for name in (f"lin{index}.model.1.weight", f"lin{index}.weight", key):
                if name in heads:
                    state[key] = heads[name]
                    break
            else:
                raise WeightsNotFoundError(
                    f"LPIPS: the head weights have no 'lin{index}.model.1.weight'; pass the LPIPS v0.1 vgg heads "
                    "(vgg.pth of the lpips package, lpips/weights/v0.1/vgg.pth)"
                )
    return state


def _read(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    from irepa.utils.io import load_tensor_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"LPIPS {what} weights {str(path)!r} do not exist; see docs/recipes.md (REPA-E) for the two files LPIPS "
            "needs and where to get them"
        )
    data = load_tensor_file(path)
    if not isinstance(data, dict):
        raise IrepaError(f"LPIPS {what} weights {str(path)!r} hold a single tensor, expected a state dict")
    return data


def load_lpips(*, vgg: str | Path | None, heads: str | Path | None, repae_input_quirk: bool = False) -> LPIPS:
    """Build :class:`LPIPS` from local files (never downloads).

    Args:
        vgg: torchvision's VGG16 ImageNet state dict (``.pth``/``.pt``/``.safetensors``).
        heads: The LPIPS v0.1 "vgg" linear heads (``vgg.pth``), or one file holding both.
        repae_input_quirk: See :class:`LPIPS`.

    Raises:
        WeightsNotFoundError: A file is not given or does not exist, or lacks a layer (one line naming it).
    """
    if vgg is None or heads is None:
        missing = " and ".join(n for n, v in (("vgg", vgg), ("heads", heads)) if v is None)
        raise WeightsNotFoundError(
            f"LPIPS needs local weights, {missing} not given: torchvision's VGG16 ImageNet state dict "
            "(vgg16-397923af.pth) and the LPIPS v0.1 vgg heads (lpips/weights/v0.1/vgg.pth)"
        )
    state = lpips_state_from_parts(_read(vgg, "VGG16"), _read(heads, "head"))
    model = LPIPS(repae_input_quirk=repae_input_quirk)
    model.load_state_dict(state, strict=True)
    return model.requires_grad_(False).eval()
