"""The FID Inception-v3 network (TensorFlow 2015 graph, as ported for PyTorch FID tools) with the ADM feature taps.

The network is the 2015 Inception-v3 of TTUR-FID / the ADM evaluator (``classify_image_graph_def.pb``) in the
PyTorch layout shared by torch-fidelity (``weights-inception-2015-12-05-6726825d.pth``) and pytorch-fid
(``pt_inception-2015-12-05-6726825d.pth``): torchvision's module names, 1008 output classes, and the TF graph's
differences from torchvision (average pools that ignore padding, a max pool in the last block). One forward gives
the three ADM taps:

==================  =============================  =====================================================
ADM tensor          irepa (``InceptionFeatures``)   used by
==================  =============================  =====================================================
``pool_3:0``        ``pool`` (B, 2048)              FID, precision/recall
``mixed_6/conv:0``  ``spatial`` (B, 2023)           sFID: first 7 of 192 channels of the 17×17 map, NHWC
``softmax`` input   ``logits`` (B, 1008)            Inception Score: ``pool · Wᵀ`` without the bias
==================  =============================  =====================================================

``mixed_6/conv`` is mapped to ``Mixed_6d.branch1x1`` (after batch norm and ReLU) by the TF graph's block order
(the 17×17 blocks mixed_4..mixed_7 are Mixed_6b..Mixed_6e). ADM flattens the (17, 17, 7) map in NHWC order and its
reference batches store ``mu_s``/``sigma_s`` in that order, so the map is permuted to NHWC before flattening.

Input: uint8 images (B, 3, H, W) of any size. As the TF graph does, they are resized to 299×299 with TF1's bilinear
resize (``align_corners=False`` and no half-pixel centres: :func:`resize_bilinear_tf1`), then mapped to [-1, 1]
by ``(x - 128) / 128``. Everything runs in float32 with autocast disabled.

**Parity.** The architecture and key layout are checked in the tests against torch-fidelity's
``FeatureExtractorInceptionV3`` (same random weights → same pool features and logits). Parity of the features
with the TF evaluator itself is *not* verified here (no TensorFlow and no real weights on the build machines);
docs/evaluation.md lists the known drift sources.

Weights are only ever read from a local file (:func:`load_inception`); :func:`locate_inception_weights` resolves
the usual places and fails with one line naming them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from irepa.errors import IrepaError, WeightsNotFoundError
from irepa.utils.io import describe_load_error

__all__ = [
    "INCEPTION_URL",
    "INCEPTION_WEIGHTS_FILENAME",
    "FIDInceptionV3",
    "InceptionFeatures",
    "load_inception",
    "locate_inception_weights",
    "random_inception_state_dict",
    "resize_bilinear_tf1",
]

#: File name of torch-fidelity's converted weights (also what torch.hub caches under $TORCH_HOME/hub/checkpoints).
INCEPTION_WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
#: pytorch-fid's file of the same network (same keys).
PYTORCH_FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
#: Where to get the weights on a connected machine (torch-fidelity's release asset).
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
INPUT_SIZE = 299
POOL_DIM = 2048
SPATIAL_DIM = 17 * 17 * 7
NUM_LOGITS = 1008


@dataclasses.dataclass
class InceptionFeatures:
    """The ADM taps of one batch (all float32).

    Attributes:
        pool: ``pool_3`` features (B, 2048).
        spatial: First 7 channels of ``mixed_6/conv`` (17×17), flattened in NHWC order (B, 2023).
        logits: Unbiased logits ``pool · Wᵀ`` (B, 1008); softmax of these is ADM's IS input.
    """

    pool: torch.Tensor
    spatial: torch.Tensor
    logits: torch.Tensor


# ----------------------------------------------------------------------------------------------------------------------
# TF1 bilinear resize


def _tf1_source_coords(in_size: int, out_size: int, device: torch.device):
    # TF1 ResizeBilinear without align_corners/half-pixel centres: src = dst * (in / out), computed in float32.
    scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32)
    src = torch.arange(out_size, dtype=torch.float32, device=device) * scale.to(device)
    lo = src.floor().long().clamp_(max=in_size - 1)
    hi = (lo + 1).clamp_(max=in_size - 1)
    return lo, hi, src - lo.to(torch.float32)


def resize_bilinear_tf1(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize as TensorFlow 1.x's ``tf.image.resize_bilinear`` (``align_corners=False``).

    Differs from ``F.interpolate(mode="bilinear")``: source coordinates are ``dst · in/out`` (no half-pixel
    offset), so the image is shifted by up to half an input pixel. This is what the FID graph does internally.

    Args:
        images: Float images (B, C, H, W).
        size: Output ``(height, width)``.

    Returns:
        Float32 images (B, C, height, width).
    """
    x = images.to(torch.float32)
    (h, w), (oh, ow) = x.shape[-2:], size
    if (h, w) == (oh, ow):
        return x
    y0, y1, fy = _tf1_source_coords(h, oh, x.device)
    x0, x1, fx = _tf1_source_coords(w, ow, x.device)
    top_rows, bottom_rows = x[:, :, y0, :], x[:, :, y1, :]
    top = top_rows[..., x0] + (top_rows[..., x1] - top_rows[..., x0]) * fx
    bottom = bottom_rows[..., x0] + (bottom_rows[..., x1] - bottom_rows[..., x0]) * fx
    return top + (bottom - top) * fy[:, None]


# ----------------------------------------------------------------------------------------------------------------------
# Network


class _ConvBN(nn.Module):
    """Conv (no bias) → BatchNorm (eps 1e-3, as the TF graph) → ReLU. Keys ``conv.weight``, ``bn.*``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int | tuple[int, int], stride: int = 1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x: torch.Tensor) -> torch.Tensor:
    # TF's 3×3 average pool divides by the number of valid (unpadded) pixels.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _Block(nn.Module):
    """An Inception block: the outputs of its ``branches(x)`` (defined by each block) concatenated along channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.branches(x), dim=1)


class _BlockA(_Block):
    """35×35 block (Mixed_5b..5d): 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avgpool→1×1."""

    def __init__(self, in_ch: int, pool_ch: int) -> None:
        super().__init__()
        self.branch1x1 = _ConvBN(in_ch, 64, 1)
        self.branch5x5_1 = _ConvBN(in_ch, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(in_ch, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(in_ch, pool_ch, 1)

    def branches(self, x):
        return [
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool_tf(x)),
        ]


class _BlockB(_Block):
    """35→17 reduction (Mixed_6a): 3×3/2 | 1×1→3×3→3×3/2 | maxpool/2."""

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.branch3x3 = _ConvBN(in_ch, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(in_ch, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def branches(self, x):
        return [
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ]


class _BlockC(_Block):
    """17×17 block (Mixed_6b..6e) with factorized 7×7 convolutions; ``branch1x1`` of Mixed_6d is TF mixed_6/conv."""

    def __init__(self, in_ch: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = _ConvBN(in_ch, 192, 1)
        self.branch7x7_1 = _ConvBN(in_ch, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _ConvBN(in_ch, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _ConvBN(in_ch, 192, 1)

    def branches(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        return [self.branch1x1(x), b7, d, self.branch_pool(_avg_pool_tf(x))]


class _BlockD(_Block):
    """17→8 reduction (Mixed_7a): 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | maxpool/2."""

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.branch3x3_1 = _ConvBN(in_ch, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(in_ch, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def branches(self, x):
        b = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b = layer(b)
        return [self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, 3, stride=2)]


class _BlockE(_Block):
    """8×8 block (Mixed_7b with an average pool, Mixed_7c with a max pool, as in the TF graph)."""

    def __init__(self, in_ch: int, pool: str) -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = _ConvBN(in_ch, 320, 1)
        self.branch3x3_1 = _ConvBN(in_ch, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(in_ch, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(in_ch, 192, 1)

    def branches(self, x):
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = _avg_pool_tf(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return [
            self.branch1x1(x),
            torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], dim=1),
            torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], dim=1),
            self.branch_pool(pooled),
        ]


class FIDInceptionV3(nn.Module):
    """Inception-v3 of the FID/ADM protocol; :meth:`forward` returns :class:`InceptionFeatures`.

    Build it with :func:`load_inception` (real weights from a file) or load
    :func:`random_inception_state_dict` for tests. Always in eval mode with frozen parameters.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _BlockA(192, 32)
        self.Mixed_5c = _BlockA(256, 64)
        self.Mixed_5d = _BlockA(288, 64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b = _BlockC(768, 128)
        self.Mixed_6c = _BlockC(768, 160)
        self.Mixed_6d = _BlockC(768, 160)
        self.Mixed_6e = _BlockC(768, 192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b = _BlockE(1280, pool="avg")
        self.Mixed_7c = _BlockE(2048, pool="max")
        self.fc = nn.Linear(POOL_DIM, NUM_LOGITS)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FIDInceptionV3:
        """Stays in eval mode: batch-norm statistics are part of the protocol (train mode changes FID)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> InceptionFeatures:
        """Run the network on uint8 images (B, 3, H, W) of any size.

        Raises:
            IrepaError: If the images are not uint8 with 3 channels.
        """
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise IrepaError(
                f"Inception input must be uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        with torch.autocast(device_type=images.device.type, enabled=False):
            x = resize_bilinear_tf1(images.float(), (INPUT_SIZE, INPUT_SIZE))
            x = (x - 128.0) / 128.0
            x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
            x = F.max_pool2d(x, 3, stride=2)
            x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
            x = F.max_pool2d(x, 3, stride=2)
            x = self.Mixed_6a(self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x))))
            x = self.Mixed_6c(self.Mixed_6b(x))
            branches = self.Mixed_6d.branches(x)  # (B, 192, 17, 17) first: TF mixed_6/conv
            spatial = branches[0][:, :7].permute(0, 2, 3, 1).reshape(x.shape[0], SPATIAL_DIM)
            x = self.Mixed_6e(torch.cat(branches, dim=1))
            x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
            pool = x.mean(dim=(2, 3))
            logits = pool @ self.fc.weight.T
        return InceptionFeatures(pool=pool, spatial=spatial.contiguous(), logits=logits)


# ----------------------------------------------------------------------------------------------------------------------
# Weights


def random_inception_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in the FID-Inception layout whose activations stay O(1) (for tests and demos).

    Convolutions get He-normal weights (fan-in, ReLU gain) and batch norm the identity transform plus a small
    random bias, so features neither vanish nor explode through the 90-odd layers. Metric values computed with it
    are meaningless: it only exercises the real code paths.
    """
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in FIDInceptionV3().state_dict().items():
        if name.endswith("conv.weight"):
            fan_in = tensor[0].numel()
            value = torch.randn(tensor.shape, generator=gen) * (2.0 / fan_in) ** 0.5
        elif name.endswith("bn.weight") or name.endswith("running_var"):
            value = torch.ones(tensor.shape)
        elif name.endswith("bn.bias"):
            value = 0.1 * torch.randn(tensor.shape, generator=gen)
        elif name == "fc.weight":
            value = torch.randn(tensor.shape, generator=gen) * POOL_DIM**-0.5
        elif tensor.is_floating_point():  # running_mean, fc.bias
            value = torch.zeros(tensor.shape)
        else:  # num_batches_tracked
            value = tensor.clone()
        state[name] = value.to(tensor.dtype)
    return state


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            # weights_only=True: the official .pth files are plain state dicts; never unpickle arbitrary objects.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files raise many exception types
        raise IrepaError(f"cannot read Inception weights {str(path)!r}: {describe_load_error(exc)}") from exc
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise IrepaError(f"Inception weights {str(path)!r} hold a {type(state).__name__}, expected a state dict")
    return state


def load_inception(path: str | Path, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` from a local weights file (``.pth``/``.pt`` state dict or ``.safetensors``).

    Never downloads. Accepts torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` and pytorch-fid's
    ``pt_inception-2015-12-05-6726825d.pth`` (the same torchvision module names; the key check below reports any
    difference).

    Raises:
        IrepaError: Missing or unreadable file, or a state dict of another network (names the mismatched keys).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"Inception weights {str(path)!r} do not exist; download {INCEPTION_URL} on a connected machine"
        )
    state = {k: v for k, v in _read_state_dict(path).items() if not k.endswith("num_batches_tracked")}
    model = FIDInceptionV3()
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
        raise IrepaError(
            f"{str(path)!r} is not an FID Inception-v3 state dict: {'; '.join(parts)}; "
            f"use {INCEPTION_WEIGHTS_FILENAME} ({INCEPTION_URL})"
        )
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=False)
    return model.to(device)


def locate_inception_weights(
    explicit: str | Path | None = None,
    env_value: str | None = None,
    torch_home: str | Path | None = None,
    *,
    env_name: str = "IREPA_INCEPTION_WEIGHTS",
) -> Path:
    """Find the Inception weights file among the usual places (the caller reads the environment).

    Order: ``explicit`` (``--inception-weights``), ``env_value`` (the value of ``$IREPA_INCEPTION_WEIGHTS``), then
    ``torch_home/hub/checkpoints/`` with torch-fidelity's and pytorch-fid's file names.

    Raises:
        WeightsNotFoundError: One line naming every place looked at and where to get the file.
    """
    if explicit is not None:
        path = Path(explicit)
        if path.is_file():
            return path
        raise WeightsNotFoundError(
            f"Inception weights {str(path)!r} (--inception-weights) do not exist; "
            f"download {INCEPTION_URL} on a connected machine and copy it there"
        )
    looked = ["--inception-weights (not given)"]
    if env_value:
        if Path(env_value).is_file():
            return Path(env_value)
        looked.append(f"${env_name}={env_value} (no such file)")
    else:
        looked.append(f"${env_name} (unset)")
    if torch_home is not None:
        for name in (INCEPTION_WEIGHTS_FILENAME, PYTORCH_FID_WEIGHTS_FILENAME):
            candidate = Path(torch_home) / "hub" / "checkpoints" / name
            if candidate.is_file():
                return candidate
        looked.append(str(Path(torch_home) / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILENAME))
    raise WeightsNotFoundError(
        f"Inception weights not found (looked at: {'; '.join(looked)}); irepa never downloads them: fetch "
        f"{INCEPTION_URL} on a connected machine and pass --inception-weights PATH or set ${env_name}"
    )
