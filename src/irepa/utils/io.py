"""File I/O helpers: atomic writes, tensor files (.safetensors / .pt / .npy / .npz), hashing.

Everything irepa writes (checkpoints, features, reports, sample files) goes through :func:`atomic_write` so that an
interrupted or failed write never leaves a half-written file under the final name: data is written to a temporary
file in the same directory, flushed and fsynced, then renamed over the target with :func:`os.replace`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from irepa.errors import IrepaError


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` and rename it to ``path`` only if the block succeeds.

    Example:
        >>> with atomic_write("out.json", "w") as f:  # doctest: +SKIP
        ...     f.write("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 files; give the result the usual permissions (0666 minus the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, data: Any) -> None:
    """Atomically write ``data`` as indented JSON (NaN written as ``NaN``, as Python's json does)."""
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


def write_text(path: str | Path, text: str) -> None:
    """Atomically write a text file."""
    with atomic_write(path, "w") as f:
        f.write(text)


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str] | None = None):
    """Atomically save a flat ``name -> tensor`` dict as safetensors (tensors made contiguous, moved to CPU).

    The same tensors and metadata always give the same bytes (see :func:`_canonical_safetensors`), so a checksum
    identifies the content.
    """
    from safetensors.torch import save

    payload = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    blob = save(payload, metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    with atomic_write(path, "wb") as f:
        f.write(_canonical_safetensors(blob))


def _canonical_safetensors(blob: bytes) -> bytes:
    """``blob`` with its ``__metadata__`` entries sorted by key, the tensor data untouched.

    The safetensors library writes the metadata from a Rust ``HashMap`` whose iteration order is randomized per
    process, so the same call gave different bytes (and SHA-256) from run to run. The file format is an 8-byte
    little-endian header length, a JSON header padded with spaces to a multiple of 8 bytes, then the tensor data,
    whose offsets are relative to the end of the header: rewriting the header leaves the data valid.
    """
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    metadata = header.pop("__metadata__", None)
    ordered = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    ordered.update(header)  # tensor entries keep the library's (deterministic) order
    return safetensors_header(ordered) + blob[8 + size :]


def safetensors_header(header: Mapping[str, Any]) -> bytes:
    """The bytes that open a safetensors file for ``header`` (``__metadata__`` and the tensor entries, in order).

    An 8-byte little-endian length, then the compact JSON header padded with spaces to a multiple of 8 bytes (the
    format's alignment of the data that follows).
    """
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """Return the ``__metadata__`` header of a safetensors file (empty dict if none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_tensor_file(path: str | Path) -> torch.Tensor | dict[str, torch.Tensor]:
    """Load tensors from ``.safetensors``, ``.pt``/``.pth`` (``weights_only=True``), ``.npy`` or ``.npz``.

    Returns:
        A single tensor (``.npy``, or a ``.pt`` holding one tensor) or a ``name -> tensor`` dict.

    Raises:
        IrepaError: Missing, empty, unreadable or unsupported files, and files that hold no tensors.
    """
    path = Path(path)
    if path.is_dir():
        raise IrepaError(
            f"features file {str(path)!r} is a folder, not a token file (.safetensors, .pt, .npy or .npz); for a "
            "folder of images, extract tokens with an encoder (e.g. `irepa metrics spatial --encoder NAME --images "
            "DIR` or `irepa features extract`)"
        )
    if not path.is_file():
        raise IrepaError(f"features file {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise IrepaError(f"features file {str(path)!r} is empty")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            out: Any = load_file(str(path))
        elif suffix in (".pt", ".pth", ".bin"):
            # weights_only=True: never unpickle arbitrary objects from a user-supplied file.
            out = torch.load(path, map_location="cpu", weights_only=True)
        elif suffix == ".npy":
            out = torch.from_numpy(np.load(path, allow_pickle=False))
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                out = {k: torch.from_numpy(z[k]) for k in z.files}
        else:
            raise IrepaError(
                f"features file {str(path)!r} has unsupported extension {suffix!r}; use .safetensors, .pt, .npy or .npz"
            )
    except IrepaError:
        raise
    except Exception as exc:  # corrupt files raise many different exception types
        raise IrepaError(f"cannot read features file {str(path)!r}: {describe_load_error(exc)}") from exc
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        tensors = {str(k): v for k, v in out.items() if isinstance(v, torch.Tensor)}
        if not tensors:
            raise IrepaError(f"features file {str(path)!r} holds no tensors")
        return tensors
    raise IrepaError(
        f"features file {str(path)!r} holds a {type(out).__name__}, expected a tensor or a dict of tensors"
    )


#: torch's wordings of a refused pickle global: "Unsupported global: GLOBAL mod.name" (an importable class outside
#: the allow-list) and "unsupported GLOBAL mod.name whose module mod is blocked" (torch >= 2.6 for e.g. os.system).
#: timm's own check says "Unsupported globals: mod.name".
_REFUSED_GLOBAL = re.compile(r"unsupported globals?:?\s+(?:GLOBAL\s+)?([\w.]+)", re.IGNORECASE)


def refused_global(exc: BaseException) -> str | None:
    """The dotted name of the pickled global ``torch.load(weights_only=True)`` refused in ``exc``, if that is why."""
    match = _REFUSED_GLOBAL.search(str(exc))
    return match.group(1).rstrip(".") if match else None


def describe_load_error(exc: BaseException) -> str:
    """One line saying why ``torch.load(weights_only=True)`` / safetensors could not read a file.

    torch's refusal messages start with "Re-running ... with weights_only=False will likely succeed": advice irepa
    never follows (it would run code from the file), so a refused global is named instead, and for other pickle
    failures the line after torch's preamble is used.
    """
    name = refused_global(exc)
    if name is not None:
        return f"it pickles the Python object {name!r}, which irepa refuses to unpickle (only tensors are read)"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        detail = [
            line for line in lines[1:] if "weights_only" not in line and not line.startswith(("Check ", "Please"))
        ]
        return f"not a plain tensor file ({detail[0][:200] if detail else 'unsupported pickle contents'})"
    return lines[0][:300] if lines else type(exc).__name__


def human_bytes(size: float) -> str:
    """``size`` bytes in decimal units: ``512 B``, ``1.5 MB``, ``12.0 GB``."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1000
    return f"{size:.1f} TB"


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
