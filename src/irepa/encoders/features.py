"""Feature files: extract encoder tokens from an image folder into one safetensors file, and read them back.

File layout (``format = irepa.features/1``)::

    patch_tokens   (N, T, D)  float32 or float16   patch tokens, row-major over the (h, w) grid
    mean_token     (N, D)     float32              mean-pooled patch tokens (the probe input, always float32)
    cls_token      (N, D)     float32              only for encoders with a CLS token
    labels         (N,)       int64                only when images sit in class subfolders
    __metadata__              JSON strings: encoder (id), encoder_info (preprocessing, grid, weights source,
                              Hub revision, checksum, ...), grid, resolution, keys, classes, counts, irepa version

Extraction streams: batches are appended to temporary files next to the output and assembled into the safetensors
file at the end (written atomically), so memory stays at one batch whatever the number of images (ImageNet-val's
50k images × 256 tokens × 768 channels is 39 GB in float32).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from irepa.encoders.base import VisionEncoder
from irepa.errors import IrepaError, first_line
from irepa.utils.io import atomic_write, safetensors_header

__all__ = [
    "FEATURES_FORMAT",
    "ExtractionResult",
    "FeatureFile",
    "SafetensorsStreamWriter",
    "extract_features",
    "read_features",
]

FEATURES_FORMAT = "irepa.features/1"

_ST_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


class SafetensorsStreamWriter:
    """Write a safetensors file whose tensors grow along dim 0, one chunk at a time.

    Chunks go to one temporary file per tensor (in a folder next to ``path``); :meth:`finish` writes the header and
    concatenates the data into ``path`` atomically. :meth:`abort` (or an exception inside a ``with`` block) removes
    everything, so no partial file ever appears under the final name.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        self._files: dict[str, Any] = {}
        self._meta: dict[str, tuple[torch.dtype, tuple[int, ...], int]] = {}  # dtype, row shape, rows

    def append(self, name: str, chunk: torch.Tensor) -> None:
        """Append rows ``chunk`` (n, ...) to tensor ``name`` (same dtype and row shape on every call)."""
        chunk = chunk.detach().to("cpu").contiguous()
        if chunk.dtype not in _ST_DTYPES:
            raise TypeError(f"unsupported dtype {chunk.dtype} for {name!r}")
        row_shape = tuple(chunk.shape[1:])
        if name in self._meta:
            dtype, shape, rows = self._meta[name]
            if dtype != chunk.dtype or shape != row_shape:
                raise ValueError(f"{name!r}: chunk {chunk.dtype} {row_shape} does not match {dtype} {shape}")
        else:
            self._files[name] = open(self._dir / f"{len(self._files)}.bin", "wb")  # noqa: SIM115 (closed in finish)
            rows = 0
        self._meta[name] = (chunk.dtype, row_shape, rows + chunk.shape[0])
        raw = chunk.view(torch.int16) if chunk.dtype == torch.bfloat16 else chunk  # numpy has no bfloat16
        self._files[name].write(raw.numpy().tobytes())

    def rows(self, name: str) -> int:
        """Rows written so far to ``name`` (0 if none)."""
        return self._meta[name][2] if name in self._meta else 0

    def finish(self, metadata: dict[str, str]) -> None:
        """Write the final file (header + data) atomically and remove the temporary folder."""
        try:
            for f in self._files.values():
                f.close()
            header: dict[str, Any] = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}}
            offset = 0
            for name, (dtype, shape, rows) in self._meta.items():
                size = (self._dir / f"{list(self._files).index(name)}.bin").stat().st_size
                header[name] = {
                    "dtype": _ST_DTYPES[dtype],
                    "shape": [rows, *shape],
                    "data_offsets": [offset, offset + size],
                }
                offset += size
            with atomic_write(self.path, "wb") as out:
                out.write(safetensors_header(header))
                for index in range(len(self._files)):
                    with open(self._dir / f"{index}.bin", "rb") as src:
                        shutil.copyfileobj(src, out, length=16 << 20)
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop everything written so far."""
        for f in self._files.values():
            with contextlib.suppress(OSError):
                f.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> SafetensorsStreamWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


@dataclasses.dataclass
class ExtractionResult:
    """Summary of one extraction run.

    Attributes:
        path: The written file.
        num_images: Images encoded.
        skipped: Unreadable images skipped.
        converted: Images converted to RGB (grayscale, RGBA, palette).
        seconds: Wall-clock time of reading + encoding + writing.
        refused_non_rgb: Readable non-RGB images refused in strict mode (not counted in ``skipped``).
    """

    path: Path
    num_images: int
    skipped: int
    converted: int
    seconds: float
    refused_non_rgb: int = 0

    @property
    def images_per_second(self) -> float:
        """Throughput of the whole run."""
        return self.num_images / self.seconds if self.seconds > 0 else math.inf


def extract_features(
    encoder: VisionEncoder,
    files: Sequence[Path],
    out: str | Path,
    *,
    root: str | Path,
    batch_size: int = 32,
    crop: Literal["adm", "resize", "none"] = "adm",
    on_error: Literal["skip", "fail"] = "skip",
    strict_mode: bool = False,
    labels: Literal["auto", "none", "require"] = "auto",
    save_dtype: torch.dtype = torch.float32,
    progress: bool = True,
    extra_metadata: dict[str, Any] | None = None,
) -> ExtractionResult:
    """Encode images and write a feature file (see the module docstring for the layout).

    Args:
        encoder: A loaded encoder; images are read at its resolution.
        files: Image files (e.g. from :func:`irepa.utils.images.list_images`).
        out: Output ``.safetensors`` path.
        root: Folder the image keys are relative to.
        batch_size: Images per forward pass.
        crop: How images of another size reach the encoder's resolution (``irepa.utils.images.load_image``).
        on_error: ``skip`` unreadable images and strict-mode refusals (each counted apart) or ``fail`` on the first
            one.
        strict_mode: Refuse non-RGB images instead of converting them.
        labels: ``auto`` stores class labels when every image sits in a class subfolder; ``require`` insists;
            ``none`` never stores them.
        save_dtype: dtype of ``patch_tokens`` (``float16`` halves the file; the rest stays float32).
        progress: Show a progress bar (stderr).
        extra_metadata: More metadata entries (strings or JSON-serialisable values).

    Raises:
        IrepaError: Bad options, unreadable or (strict mode) non-RGB images with ``on_error="fail"``, no usable
            image, or missing class folders with ``labels="require"``.
    """
    from tqdm import tqdm

    from irepa import __version__
    from irepa.utils.images import ReadStats, class_label_map, image_key, iter_image_batches

    if batch_size < 1:
        raise IrepaError(f"batch size must be >= 1, got {batch_size}")
    if save_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise IrepaError(f"features can be saved as float32, float16 or bfloat16, not {save_dtype}")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise IrepaError(f"output {str(out)!r} must end in .safetensors")
    if encoder.resolution[0] != encoder.resolution[1]:
        raise IrepaError("feature extraction from image folders needs a square resolution")
    keys_all = [image_key(f, root) for f in files]
    class_map: dict[str, int] | None = None
    if labels != "none":
        try:
            class_map = class_label_map(keys_all)
        except IrepaError:
            if labels == "require":
                raise
    stats = ReadStats()
    keys: list[str] = []
    start = time.perf_counter()
    batches = iter_image_batches(
        files,
        batch_size,
        root=root,
        size=encoder.resolution[0],
        crop=crop,
        on_error=on_error,
        strict_mode=strict_mode,
        stats=stats,
    )
    bar = tqdm(total=len(files), unit="img", desc=f"features {encoder.spec.id}", disable=not progress, leave=False)
    with SafetensorsStreamWriter(out) as writer:
        for images, batch_keys in batches:
            feats = encoder.encode(images)
            writer.append("patch_tokens", feats.patch_tokens.to(save_dtype))
            writer.append("mean_token", feats.mean_token())
            if feats.cls_token is not None:
                writer.append("cls_token", feats.cls_token)
            if class_map is not None:
                writer.append("labels", torch.tensor([class_map[k.split("/", 1)[0]] for k in batch_keys]))
            keys.extend(batch_keys)
            bar.update(len(batch_keys))
            bar.set_postfix(skipped=stats.skipped, refused=stats.refused_non_rgb)
        bar.close()
        if not keys:
            raise IrepaError(
                f"no usable images among {len(files)} files ({stats.skipped} unreadable, {stats.refused_non_rgb} "
                "non-RGB refused in strict mode); first problem: "
                f"{_first_problem(stats.skipped_files + stats.refused_files, encoder.resolution[0], crop, strict_mode)}"
            )
        info = encoder.describe()
        metadata: dict[str, Any] = {
            "format": FEATURES_FORMAT,
            "encoder": encoder.spec.id,
            "encoder_info": info,
            "grid": list(encoder.grid),
            "resolution": encoder.resolution[0],
            "embed_dim": encoder.embed_dim,
            "num_images": len(keys),
            "skipped": stats.skipped,
            "refused_non_rgb": stats.refused_non_rgb,
            "converted": stats.converted,
            "crop": crop,
            "patch_tokens_dtype": str(save_dtype).removeprefix("torch."),
            "keys": keys,
            "classes": sorted(class_map, key=class_map.__getitem__) if class_map is not None else None,
            "irepa_version": __version__,
            **(extra_metadata or {}),
        }
        writer.finish({k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    seconds = time.perf_counter() - start
    return ExtractionResult(out, len(keys), stats.skipped, stats.converted, seconds, stats.refused_non_rgb)


def _first_problem(skipped: list[str], size: int, crop: str, strict_mode: bool) -> str:
    """Why the first skipped image was refused (re-read once, only when nothing was usable)."""
    from irepa.utils.images import load_image

    try:
        load_image(skipped[0], size=size, crop=crop, strict_mode=strict_mode)  # type: ignore[arg-type]
    except IrepaError as exc:
        return str(exc)
    return f"{skipped[0]!r} could not be read"


# ----------------------------------------------------------------------------------------------------------------------
# Reading


@dataclasses.dataclass
class FeatureFile:
    """A feature file opened for reading.

    Attributes:
        path: The file.
        metadata: Decoded metadata (JSON values parsed).
        num_images: Rows N.
        grid: Token grid ``(h, w)`` (None if unknown).
        classes: Class names in label order (None without labels).
        keys: Image keys in row order (None if absent).
    """

    path: Path
    metadata: dict[str, Any]
    num_images: int
    grid: tuple[int, int] | None
    classes: list[str] | None
    keys: list[str] | None

    def has(self, name: str) -> bool:
        """Whether tensor ``name`` is stored."""
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            return name in f.keys()  # noqa: SIM118 (safe_open has no __contains__)

    def tensor(self, name: str) -> torch.Tensor:
        """Load one stored tensor.

        Raises:
            IrepaError: If the file has no such tensor.
        """
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            if name not in f.keys():  # noqa: SIM118
                raise IrepaError(f"features file {str(self.path)!r} has no {name!r} tensor (has {', '.join(f.keys())})")
            return f.get_tensor(name)

    def pooled(self, kind: Literal["mean", "cls", "mean+cls"] = "mean", chunk: int = 1024) -> torch.Tensor:
        """Per-image vectors (N, D') for probing: mean-pooled patch tokens, the CLS token, or both concatenated.

        Files without ``mean_token`` (tokens written by other tools) are pooled from ``patch_tokens`` in chunks.
        """
        parts = []
        if kind in ("mean", "mean+cls"):
            parts.append(self.tensor("mean_token").float() if self.has("mean_token") else self._pool(chunk))
        if kind in ("cls", "mean+cls"):
            if not self.has("cls_token"):
                raise IrepaError(f"features file {str(self.path)!r} has no CLS token (the encoder has none)")
            parts.append(self.tensor("cls_token").float())
        if not parts:
            raise IrepaError(f"unknown pooling {kind!r}; use mean, cls or mean+cls")
        return torch.cat(parts, dim=1)

    def _pool(self, chunk: int) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            tokens = f.get_slice("patch_tokens")
            n = tokens.get_shape()[0]
            return torch.cat([tokens[i : i + chunk].float().mean(dim=1) for i in range(0, n, chunk)])


def read_features(path: str | Path) -> FeatureFile:
    """Open a feature file written by :func:`extract_features` (or any safetensors file with ``patch_tokens``).

    Raises:
        IrepaError: Missing, unreadable or non-feature files.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise IrepaError(f"features file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
            raw = dict(f.metadata() or {})
            shapes = {n: f.get_slice(n).get_shape() for n in names}
    except Exception as exc:  # safetensors raises several types for corrupt headers
        raise IrepaError(f"cannot read features file {str(path)!r}: {first_line(exc)}") from exc
    if "patch_tokens" not in names and "mean_token" not in names:
        raise IrepaError(f"{str(path)!r} is not a features file: it has no patch_tokens or mean_token tensor")
    metadata: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            metadata[key] = json.loads(value)
        except ValueError:
            metadata[key] = value
    first = "mean_token" if "mean_token" in names else "patch_tokens"
    grid = metadata.get("grid")
    return FeatureFile(
        path=path,
        metadata=metadata,
        num_images=int(shapes[first][0]),
        grid=tuple(grid) if isinstance(grid, list) else None,  # type: ignore[arg-type]
        classes=metadata.get("classes"),
        keys=metadata.get("keys"),
    )
