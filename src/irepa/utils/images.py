"""Reading image folders: listing, decoding to uint8 RGB with explicit checks, the ADM centre crop.

Used by every tool that reads images (``irepa data prepare``, ``features extract``, ``metrics spatial --encoder``,
``eval ref``). Images are identified by a *key*: the path relative to the folder root without extension, in POSIX
form (``n01440764/n01440764_10026``). Keys, not sort positions, pair images with labels, latents and masks.

Input policy (one rule for all tools):
- 8-bit grayscale (``L``), palette (``P``), ``RGBA``/``LA`` (alpha dropped) and ``CMYK`` are converted to RGB; the
  conversion is counted and reported, or refused with ``strict_mode=True`` (:class:`NonRGBImageError`, counted
  apart from unreadable files: the file is fine, the user asked not to convert it).
- 16-bit and float images (``I;16``, ``I``, ``F``) are refused: silently truncating them to 8 bits changes the data.
- Unreadable files and strict-mode refusals are skipped and counted, each in its own counter (``on_error="skip"``),
  or the first one stops the run (``on_error="fail"``).
- Size: ``size=None`` keeps the image as it is; otherwise ``crop`` decides: ``"adm"`` is ADM's centre crop (the
  protocol of REPA/iREPA/ADM data preparation), ``"resize"`` a plain bicubic resize, ``"none"`` refuses images of
  another size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from irepa.errors import IrepaError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm")

#: PIL modes converted to RGB without loss of bit depth.
_CONVERTIBLE_MODES = ("L", "P", "RGBA", "LA", "CMYK", "RGBa", "PA", "YCbCr", "1")
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")

Crop = Literal["adm", "resize", "none"]
OnError = Literal["skip", "fail"]


class NonRGBImageError(IrepaError):
    """A readable image refused because it is not RGB and strict mode forbids converting it."""


def list_images(root: str | Path, recursive: bool = True) -> list[Path]:
    """All image files under ``root`` (by extension), sorted by key.

    Raises:
        IrepaError: If ``root`` is not a directory or holds no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise IrepaError(f"image folder {str(root)!r} does not exist or is not a directory")
    pattern = "**/*" if recursive else "*"
    files = sorted(
        (p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: image_key(p, root),
    )
    if not files:
        raise IrepaError(f"image folder {str(root)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def image_key(path: str | Path, root: str | Path) -> str:
    """The key of ``path`` inside ``root``: relative POSIX path without extension."""
    return Path(path).relative_to(root).with_suffix("").as_posix()


def center_crop_adm(image: Image.Image, size: int) -> Image.Image:
    """ADM's centre crop (guided-diffusion ``center_crop_arr``), the standard ImageNet-256/512 preprocessing.

    While the short side is at least twice ``size``, halve the image with a BOX filter; then resize with BICUBIC
    so that the short side equals ``size`` (rounded), and take the centre ``size`` × ``size`` crop.
    """
    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top = (arr.shape[0] - size) // 2
    left = (arr.shape[1] - size) // 2
    return Image.fromarray(arr[top : top + size, left : left + size])


@dataclasses.dataclass
class ReadStats:
    """Counts of what happened while reading a folder (reported by the CLI tools)."""

    read: int = 0
    converted: int = 0
    skipped: int = 0
    skipped_files: list[str] = dataclasses.field(default_factory=list)
    refused_non_rgb: int = 0
    refused_files: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """One line: ``1000 images read, 3 converted to RGB, 1 unreadable skipped, 2 non-RGB refused``."""
        parts = [f"{self.read} images read"]
        if self.converted:
            parts.append(f"{self.converted} converted to RGB")
        if self.skipped:
            parts.append(f"{self.skipped} unreadable skipped")
        if self.refused_non_rgb:
            parts.append(f"{self.refused_non_rgb} non-RGB refused (strict mode)")
        return ", ".join(parts)


def load_image(
    path: str | Path,
    *,
    size: int | None = None,
    crop: Crop = "adm",
    strict_mode: bool = False,
    stats: ReadStats | None = None,
) -> np.ndarray:
    """Decode one image file to a uint8 RGB array of shape (H, W, 3).

    Args:
        path: Image file.
        size: Output side length, or None to keep the image's own size.
        crop: How to reach ``size``: ``"adm"`` centre crop, ``"resize"`` (bicubic, aspect not kept), ``"none"``
            (refuse other sizes).
        strict_mode: Refuse non-RGB images instead of converting them.
        stats: Optional counter updated with conversions.

    Raises:
        NonRGBImageError: A convertible non-RGB image (grayscale, RGBA, palette, ...) in strict mode.
        IrepaError: Unreadable file, 16-bit/float image, a mode that has no RGB conversion, wrong size with
            ``crop="none"``.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            image = im
    except Exception as exc:
        raise IrepaError(f"cannot read image {str(path)!r}: {exc}") from exc
    if image.mode in _HIGH_DEPTH_MODES:
        raise IrepaError(
            f"image {str(path)!r} has {image.mode} pixels (16-bit or float); convert it to 8-bit RGB first"
        )
    if image.mode != "RGB":
        if image.mode not in _CONVERTIBLE_MODES:
            raise IrepaError(
                f"image {str(path)!r} is {image.mode}, which irepa cannot convert; convert it to RGB first"
            )
        if strict_mode:
            raise NonRGBImageError(
                f"image {str(path)!r} is {image.mode}, not RGB; convert it to RGB (or drop strict mode to convert it "
                "while reading)"
            )
        image = image.convert("RGB")
        if stats is not None:
            stats.converted += 1
    if size is not None and image.size != (size, size):
        if crop == "adm":
            image = center_crop_adm(image, size)
        elif crop == "resize":
            image = image.resize((size, size), resample=Image.BICUBIC)
        else:
            raise IrepaError(
                f"image {str(path)!r} is {image.size[0]}x{image.size[1]}, expected {size}x{size}; "
                "pass a crop policy ('adm' or 'resize') or prepare the images first"
            )
    return np.asarray(image, dtype=np.uint8).copy()


def iter_image_batches(
    files: Sequence[Path],
    batch_size: int,
    *,
    root: str | Path | None = None,
    size: int | None = None,
    crop: Crop = "adm",
    on_error: OnError = "skip",
    strict_mode: bool = False,
    stats: ReadStats | None = None,
) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Yield ``(images uint8 (B, 3, H, W), keys)`` batches, applying the read policy.

    Images within one batch must share a size: pass ``size`` for folders of mixed sizes.

    With ``on_error="skip"``, unreadable files are counted in ``stats.skipped`` and strict-mode refusals in
    ``stats.refused_non_rgb``; with ``"fail"`` either stops the run.

    Raises:
        IrepaError: On a bad file with ``on_error="fail"`` (:class:`NonRGBImageError` for a strict-mode refusal),
            or on mixed sizes without ``size``.
    """
    stats = stats if stats is not None else ReadStats()
    root = Path(root) if root is not None else None
    batch: list[np.ndarray] = []
    keys: list[str] = []
    for path in files:
        try:
            arr = load_image(path, size=size, crop=crop, strict_mode=strict_mode, stats=stats)
        except NonRGBImageError:
            if on_error == "fail":
                raise
            stats.refused_non_rgb += 1
            stats.refused_files.append(str(path))
            continue
        except IrepaError:
            if on_error == "fail":
                raise
            stats.skipped += 1
            stats.skipped_files.append(str(path))
            continue
        if batch and arr.shape != batch[0].shape:
            raise IrepaError(
                f"image {str(path)!r} is {arr.shape[1]}x{arr.shape[0]} but earlier images are "
                f"{batch[0].shape[1]}x{batch[0].shape[0]}; pass a size to resize or crop them"
            )
        stats.read += 1
        batch.append(arr)
        keys.append(image_key(path, root) if root is not None else path.stem)
        if len(batch) == batch_size:
            yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous(), keys
            batch, keys = [], []
    if batch:
        yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous(), keys


def class_label_map(keys: Sequence[str]) -> dict[str, int]:
    """Map class folder names (the first key component) to contiguous labels, sorted by name.

    Raises:
        IrepaError: If some image is not inside a class subfolder.
    """
    classes = set()
    for key in keys:
        if "/" not in key:
            raise IrepaError(f"image {key!r} is not inside a class subfolder; labels need ROOT/CLASS/IMAGE layout")
        classes.add(key.split("/", 1)[0])
    return {name: i for i, name in enumerate(sorted(classes))}
