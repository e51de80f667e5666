"""A seeded synthetic dataset: class-labelled RGB images of shapes on textured backgrounds, with foreground masks.

Used by the tests, the SRSS pipeline and the offline demo (teachers are trained on it). Each image shows one
object whose **shape is the class** (circle, square, triangle, cross, ring, star, diamond, hexagon, crescent,
L-shape, T-shape, heart); its colour, size, position, aspect and a small rotation (±15°, so that a square never
turns into a diamond) vary within a class. Backgrounds are textures (stripes at a random angle and frequency,
rotated checkerboards, smooth noise, gradients, dot lattices) in colours whose brightness is kept well apart from
the object's, plus a little pixel noise. The mask is exactly the object's pixels.

Determinism: image ``i`` depends only on ``(seed, i)`` (and the image size and number of classes): its parameters
come from ``numpy.random.default_rng([seed, i])`` and it is rendered on its own, so any chunk (``start`` offset),
order or process split gives bit-identical images. Labels are ``i % num_classes``, so every run of consecutive
indices is class-balanced.

Object sizes are chosen so that, on the 16×16 patch grid of a 32 px or 64 px image, most images pass the paper's
SRSS filter (≥ 25 % foreground and ≥ 25 % background patches); ``tests/data/test_synthetic.py`` checks the rate.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from irepa.errors import IrepaError

__all__ = ["SHAPES", "SyntheticBatch", "class_names", "generate", "write_folder"]

# ----------------------------------------------------------------------------------------------------------------------
# Shapes: indicator functions of the object in its own frame (u right, v down), sized to about the unit disk.

ShapeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _regular_polygon(u: np.ndarray, v: np.ndarray, sides: int, apothem: float, start: float) -> np.ndarray:
    inside = np.ones(u.shape, dtype=bool)
    for k in range(sides):
        angle = start + 2 * math.pi * k / sides
        inside &= u * math.cos(angle) + v * math.sin(angle) <= apothem
    return inside


def _circle(u, v):
    return u * u + v * v <= 0.9**2


def _square(u, v):
    return np.maximum(np.abs(u), np.abs(v)) <= 0.78


def _triangle(u, v):
    # Edge normals at 90° (bottom edge), 210° and 330°: a triangle with its apex up.
    return _regular_polygon(u, v + 0.2, 3, 0.67, math.pi / 2)


def _cross(u, v):
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.36) & (av <= 0.92)) | ((av <= 0.36) & (au <= 0.92))


def _ring(u, v):
    r2 = u * u + v * v
    return (r2 <= 0.95**2) & (r2 >= 0.5**2)


def _star(u, v):
    # A five-pointed star: the inner pentagon plus five spikes, each spike a triangle (tip, two inner vertices).
    outer, inner = 1.15, 0.55
    tips = [(-math.pi / 2 + 2 * math.pi * k / 5) for k in range(5)]
    valleys = [t + math.pi / 5 for t in tips]
    inside = _regular_polygon(u, v, 5, inner * math.cos(math.pi / 5), math.pi / 2 + math.pi / 5)
    for k, tip in enumerate(tips):
        a = (outer * math.cos(tip), outer * math.sin(tip))
        b = (inner * math.cos(valleys[k]), inner * math.sin(valleys[k]))
        c = (inner * math.cos(valleys[k - 1]), inner * math.sin(valleys[k - 1]))
        inside |= _in_triangle(u, v, a, b, c)
    return inside


def _in_triangle(u, v, a, b, c):
    def side(p, q):
        return (q[0] - p[0]) * (v - p[1]) - (q[1] - p[1]) * (u - p[0])

    d1, d2, d3 = side(a, b), side(b, c), side(c, a)
    negative = (d1 < 0) | (d2 < 0) | (d3 < 0)
    positive = (d1 > 0) | (d2 > 0) | (d3 > 0)
    return ~(negative & positive)


def _diamond(u, v):
    return np.abs(u) / 0.95 + np.abs(v) / 1.2 <= 1.0


def _hexagon(u, v):
    return _regular_polygon(u, v, 6, 0.82, 0.0)


def _crescent(u, v):
    return (u * u + v * v <= 1.0) & ((u - 0.55) ** 2 + v * v > 0.65**2)


def _l_shape(u, v):
    return ((u >= -0.85) & (u <= -0.15) & (np.abs(v) <= 0.95)) | ((np.abs(u) <= 0.85) & (v >= 0.25) & (v <= 0.95))


def _t_shape(u, v):
    return ((np.abs(u) <= 0.95) & (v >= -0.95) & (v <= -0.25)) | ((np.abs(u) <= 0.35) & (np.abs(v) <= 0.95))


def _heart(u, v):
    x, y = u * 1.15, -v * 1.15 + 0.15  # the classic implicit heart, point down
    return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0


#: Shape of each class, in label order.
SHAPES: dict[str, ShapeFn] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "ring": _ring,
    "star": _star,
    "diamond": _diamond,
    "hexagon": _hexagon,
    "crescent": _crescent,
    "l_shape": _l_shape,
    "t_shape": _t_shape,
    "heart": _heart,
}

_NUM_TEXTURES = 5


def class_names(num_classes: int) -> list[str]:
    """Names of the first ``num_classes`` classes (label order), e.g. ``["circle", "square", ...]``.

    Raises:
        IrepaError: Fewer than 1 or more than ``len(SHAPES)`` (12) classes.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= len(SHAPES):
        raise IrepaError(f"num_classes must be between 1 and {len(SHAPES)}, got {num_classes!r}")
    return list(SHAPES)[:num_classes]


# ----------------------------------------------------------------------------------------------------------------------
# Rendering one image


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1]: x (columns) and y (rows, downwards), each (size, size) float32."""
    axis = ((np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0).astype(np.float32)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    return x, y


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float32)


def _texture(kind: int, x: np.ndarray, y: np.ndarray, u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A background pattern in [0, 1], (size, size). ``u`` holds 4 uniform numbers for the parameters."""
    angle = u[0] * math.pi
    along = x * math.cos(angle) + y * math.sin(angle)
    across = -x * math.sin(angle) + y * math.cos(angle)
    if kind == 0:  # stripes, 1.5-5 cycles across the image
        freq = 1.5 + 3.5 * u[1]
        return 0.5 + 0.5 * np.sin(math.pi * freq * along + 2 * math.pi * u[2])
    if kind == 1:  # rotated checkerboard
        freq = 1.5 + 2.5 * u[1]
        return ((np.floor(freq * along + u[2]) + np.floor(freq * across + u[3])) % 2).astype(np.float32)
    if kind == 2:  # smooth noise: a 5x5 random lattice, bilinearly interpolated
        lattice = rng.random((5, 5), dtype=np.float32)
        gx, gy = (x + 1.0) * 2.0, (y + 1.0) * 2.0  # lattice coordinates in [0, 4]
        x0, y0 = np.clip(np.floor(gx), 0, 3).astype(np.int64), np.clip(np.floor(gy), 0, 3).astype(np.int64)
        fx, fy = gx - x0, gy - y0
        top = lattice[y0, x0] * (1 - fx) + lattice[y0, x0 + 1] * fx
        bottom = lattice[y0 + 1, x0] * (1 - fx) + lattice[y0 + 1, x0 + 1] * fx
        return top * (1 - fy) + bottom * fy
    if kind == 3:  # linear gradient
        return np.clip(0.5 + 0.5 * along * (0.6 + 0.4 * u[1]), 0.0, 1.0)
    # dot lattice
    freq = 2.0 + 3.0 * u[1]
    radius = 0.15 + 0.15 * u[2]
    fa, fb = freq * along + u[3], freq * across
    da, db = fa - np.floor(fa) - 0.5, fb - np.floor(fb) - 0.5
    return (da * da + db * db <= radius * radius).astype(np.float32)


def _render(index: int, seed: int, size: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index``: uint8 (3, size, size) and bool mask (size, size), from ``(seed, index)`` only."""
    rng = np.random.default_rng([seed, index])
    p = rng.random(20)
    label = index % num_classes
    x, y = _pixel_grid(size)

    # Object: scale (about the radius, in half-images), aspect, rotation (±15°) and a centre keeping it in view.
    scale = 0.55 + 0.35 * p[0]
    aspect = 0.85 + 0.3 * p[1]
    theta = (p[2] - 0.5) * (math.pi / 6)
    reach = max(0.0, 1.0 - 0.8 * scale)
    cx, cy = (2 * p[3] - 1) * reach, (2 * p[4] - 1) * reach
    dx, dy = x - cx, y - cy
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    u = (cos_t * dx + sin_t * dy) / (scale * aspect)
    v = (-sin_t * dx + cos_t * dy) / (scale / aspect)
    mask = SHAPES[class_names(num_classes)[label]](u, v)

    # Colours: object and background brightness on opposite sides of mid-grey, so the object always stands out.
    bright_object = p[5] < 0.5
    v_obj = 0.75 + 0.25 * p[6] if bright_object else 0.05 + 0.25 * p[6]
    v_bg = 0.1 + 0.3 * p[7] if bright_object else 0.6 + 0.3 * p[7]
    obj = _hsv_to_rgb(p[8], 0.4 + 0.6 * p[9], v_obj)
    bg_a = _hsv_to_rgb(p[10], 0.2 + 0.6 * p[11], v_bg)
    bg_b = _hsv_to_rgb(
        (p[10] + 0.15 + 0.7 * p[12]) % 1.0, 0.2 + 0.6 * p[11], min(1.0, max(0.0, v_bg + 0.3 * p[13] - 0.15))
    )

    pattern = _texture(int(p[14] * _NUM_TEXTURES), x, y, p[15:19], rng)
    background = bg_a[:, None, None] * (1.0 - pattern) + bg_b[:, None, None] * pattern
    shading = 0.9 + 0.1 * np.clip(v, -1.0, 1.0)  # a gentle vertical shading of the object
    foreground = obj[:, None, None] * shading
    image = np.where(mask, foreground, background)
    image = image + (0.04 * p[19]) * rng.standard_normal(image.shape, dtype=np.float32)
    pixels = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    return pixels, mask


# ----------------------------------------------------------------------------------------------------------------------
# Public API


@dataclasses.dataclass(frozen=True)
class SyntheticBatch:
    """A slice of the synthetic dataset.

    Attributes:
        images: uint8 ``(N, 3, H, W)`` in [0, 255].
        masks: bool ``(N, H, W)``, True on the object.
        labels: int64 ``(N,)`` class labels (``index % num_classes``).
        indices: int64 ``(N,)`` dataset indices ``start .. start + N - 1``.
    """

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise IrepaError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def generate(
    num_images: int, *, image_size: int = 32, num_classes: int = 10, seed: int = 0, start: int = 0
) -> SyntheticBatch:
    """Images ``start .. start + num_images - 1`` of the synthetic dataset ``(seed, image_size, num_classes)``.

    Args:
        num_images: How many images.
        image_size: Side length in pixels (≥ 16).
        num_classes: Number of shape classes, 1–12.
        seed: Dataset seed (≥ 0); different seeds give different datasets.
        start: Index of the first image, so that a dataset can be generated in chunks or in parallel.

    Returns:
        A :class:`SyntheticBatch`.

    Raises:
        IrepaError: Negative counts or seeds, images smaller than 16 px, an unsupported number of classes.
    """
    num_images = _check_int("num_images", num_images, 0)
    image_size = _check_int("image_size", image_size, 16)
    seed = _check_int("seed", seed, 0)
    start = _check_int("start", start, 0)
    class_names(num_classes)
    images = np.empty((num_images, 3, image_size, image_size), dtype=np.uint8)
    masks = np.empty((num_images, image_size, image_size), dtype=bool)
    for k in range(num_images):
        images[k], masks[k] = _render(start + k, seed, image_size, num_classes)
    indices = torch.arange(start, start + num_images, dtype=torch.int64)
    return SyntheticBatch(
        images=torch.from_numpy(images),
        masks=torch.from_numpy(masks),
        labels=indices % num_classes,
        indices=indices,
    )


def write_folder(
    root: str | Path,
    num_images: int,
    *,
    image_size: int = 32,
    num_classes: int = 10,
    seed: int = 0,
    start: int = 0,
    batch_size: int = 256,
) -> list[str]:
    """Write images and masks as PNG folders with matching keys.

    Layout: ``root/images/<class>/<index>.png`` (RGB) and ``root/masks/<class>/<index>.png`` (8-bit, 255 = object),
    where ``<class>`` is ``"{label:02d}_{name}"`` (e.g. ``03_cross``) so that sorting the class folders (as
    :func:`irepa.utils.images.class_label_map` does) gives back the labels, and ``<index>`` is the zero-padded
    dataset index. The key of an image (``03_cross/000013``) is the same in both folders.

    Returns:
        The keys written, in index order.
    """
    from PIL import Image

    root = Path(root)
    names = class_names(num_classes)
    keys: list[str] = []
    for offset in range(0, _check_int("num_images", num_images, 0), max(1, batch_size)):
        count = min(batch_size, num_images - offset)
        batch = generate(count, image_size=image_size, num_classes=num_classes, seed=seed, start=start + offset)
        for image, mask, label, index in zip(batch.images, batch.masks, batch.labels, batch.indices):
            key = f"{int(label):02d}_{names[int(label)]}/{int(index):06d}"
            for sub, array in (
                ("images", image.permute(1, 2, 0).numpy()),
                ("masks", mask.numpy().astype(np.uint8) * 255),
            ):
                path = root / sub / f"{key}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                buffer = io.BytesIO()
                Image.fromarray(array).save(buffer, format="PNG")
                path.write_bytes(buffer.getvalue())
            keys.append(key)
    return keys
