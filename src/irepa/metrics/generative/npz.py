"""ADM-format ``.npz`` files: streaming reads and writes of large uint8 image arrays, and their checks.

The ADM evaluator reads images from the key ``arr_0`` of an ``.npz`` (a zip of ``.npy`` members): uint8, NHWC,
shape (N, H, W, 3). A 50K × 256² sample file is 9.8 GB, so nothing here loads a whole image array: readers stream
rows from the zip member (stored or deflated), writers stream ``.npy`` files into the zip. Extra keys (``labels``,
statistics) are ignored by ADM's tools.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from irepa.errors import IrepaError
from irepa.utils.io import atomic_write

__all__ = [
    "IndexedImageWriter",
    "NpzArrayReader",
    "check_image_array",
    "count_non_finite",
    "npz_keys",
    "read_npz_array",
    "remove_quietly",
    "write_npz",
]

_COPY_CHUNK = 64 << 20


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise IrepaError(f"npz file {str(path)!r} does not exist (or is not a file)")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise IrepaError(f"{str(path)!r} is not a readable .npz (zip) file: {exc}") from exc


def npz_keys(path: str | Path) -> list[str]:
    """The array names stored in an ``.npz`` (member names without ``.npy``)."""
    with _open_zip(Path(path)) as zf:
        return [n[: -len(".npy")] for n in zf.namelist() if n.endswith(".npy")]


class NpzArrayReader:
    """Streams one array of an ``.npz`` row by row (along its first axis) without loading it.

    Example:
        >>> with NpzArrayReader("samples.npz") as r:  # doctest: +SKIP
        ...     for batch in r.iter_batches(64):
        ...         ...

    Attributes:
        shape: The array's shape.
        dtype: The array's numpy dtype.

    Raises:
        IrepaError: Missing file, missing key (lists the keys present), pickled object arrays, Fortran order.
    """

    def __init__(self, path: str | Path, key: str = "arr_0") -> None:
        self.path = Path(path)
        self.key = key
        self._zip = _open_zip(self.path)
        member = f"{key}.npy"
        if member not in self._zip.namelist():
            keys = [n[:-4] for n in self._zip.namelist() if n.endswith(".npy")]
            self._zip.close()
            raise IrepaError(
                f"{str(self.path)!r} has no array {key!r} (keys: {', '.join(keys) or 'none'}); "
                f"ADM-format files store images under 'arr_0' (np.savez(path, images))"
            )
        self._member = member
        with self._zip.open(member) as f:
            self.shape, self.fortran_order, self.dtype = self._read_header(f)
        if self.dtype.hasobject:
            self._zip.close()
            raise IrepaError(f"{str(self.path)!r} array {key!r} holds Python objects; irepa never unpickles data")
        if self.fortran_order and len(self.shape) > 1:
            self._zip.close()
            raise IrepaError(f"{str(self.path)!r} array {key!r} is in Fortran order; save it C-contiguous")

    @staticmethod
    def _read_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        return np.lib.format.read_array_header_2_0(f)

    def __len__(self) -> int:
        return int(self.shape[0]) if self.shape else 1

    def iter_batches(self, batch_size: int, limit: int | None = None) -> Iterator[np.ndarray]:
        """Yield consecutive row batches (at most ``batch_size`` rows each) of the first ``limit`` rows."""
        total = len(self) if limit is None else min(limit, len(self))
        row_shape = tuple(self.shape[1:])
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
        with self._zip.open(self._member) as f:
            self._read_header(f)
            done = 0
            while done < total:
                n = min(batch_size, total - done)
                buf = bytearray(n * row_bytes)  # writable, so torch.from_numpy can wrap the batch without a copy
                view, filled = memoryview(buf), 0
                while filled < len(buf):
                    got = f.readinto(view[filled:])
                    if not got:
                        raise IrepaError(
                            f"{str(self.path)!r} array {self.key!r} is truncated: expected {total} rows, "
                            f"found {done + filled // max(row_bytes, 1)}"
                        )
                    filled += got
                yield np.frombuffer(buf, dtype=self.dtype).reshape(n, *row_shape)
                done += n

    def read(self, limit: int | None = None) -> np.ndarray:
        """Read the first ``limit`` rows (all by default) into memory."""
        batches = list(self.iter_batches(1 << 16, limit))
        if not self.shape:  # a 0-d array (e.g. a string) streams as one row
            return batches[0].reshape(())
        if not batches:
            return np.empty((0, *self.shape[1:]), dtype=self.dtype)
        return np.concatenate(batches) if len(batches) > 1 else batches[0].copy()

    def close(self) -> None:
        """Close the underlying zip file."""
        self._zip.close()

    def __enter__(self) -> NpzArrayReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_npz_array(path: str | Path, key: str) -> np.ndarray:
    """Read one (small) array of an ``.npz`` into memory, without unpickling."""
    with NpzArrayReader(path, key) as reader:
        return reader.read()


def check_image_array(shape: tuple[int, ...], dtype: np.dtype, what: str) -> tuple[int, int]:
    """Check that an array is ADM images: uint8, (N, H, W, 3). Returns ``(H, W)``.

    Raises:
        IrepaError: Wrong dtype (float arrays are named as such: decode to uint8 first), wrong rank, NCHW layout,
            not 3 channels.
    """
    if len(shape) != 4:
        raise IrepaError(f"{what} has shape {tuple(shape)}; expected uint8 images (N, H, W, 3) in NHWC layout")
    if shape[-1] != 3:
        if shape[1] == 3:
            raise IrepaError(
                f"{what} has shape {tuple(shape)}, which looks NCHW; transpose to NHWC (N, H, W, 3) "
                "(e.g. images.transpose(0, 2, 3, 1))"
            )
        raise IrepaError(f"{what} has shape {tuple(shape)}; expected 3 (RGB) channels last: (N, H, W, 3)")
    if dtype != np.uint8:
        raise IrepaError(
            f"{what} has dtype {dtype}; expected uint8 in [0, 255] (convert with "
            "((x + 1) * 127.5).round().clip(0, 255).astype(np.uint8) for images in [-1, 1])"
        )
    return int(shape[1]), int(shape[2])


def count_non_finite(reader: NpzArrayReader, limit: int | None = None, batch_size: int = 256) -> int:
    """Number of NaN/inf values in the first ``limit`` rows of a float array (0 for integer arrays)."""
    if not np.issubdtype(reader.dtype, np.floating):
        return 0
    return int(sum(int((~np.isfinite(b)).sum()) for b in reader.iter_batches(batch_size, limit)))


def write_npz(path: str | Path, arrays: Mapping[str, np.ndarray | Path]) -> None:
    """Atomically write an uncompressed ``.npz`` (what ``np.savez`` writes), streaming large members.

    Args:
        path: Output file.
        arrays: ``name -> array`` (written with ``np.lib.format.write_array``) or ``name -> Path`` of an existing
            ``.npy`` file (e.g. a memory-mapped image array), copied into the zip in chunks, so a 10 GB array
            never sits in memory.
    """
    with atomic_write(path, "wb") as raw, zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, value in arrays.items():
            # force_zip64: members over 4 GB (a 50K × 256² image array is 9.8 GB).
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                if isinstance(value, Path):
                    with open(value, "rb") as src:
                        shutil.copyfileobj(src, member, _COPY_CHUNK)
                else:
                    np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)


def remove_quietly(*paths: Path) -> None:
    """Delete files if they exist (cleanup of temporary working files)."""
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


class IndexedImageWriter:
    """Collects uint8 images (N, H, W, 3) written by sample index, from one or many processes, into an ADM ``.npz``.

    The rows live in a memory-mapped ``images.npy`` inside a work folder, with a status byte per row (0 pending,
    1 done, 2 non-finite) in ``status.npy`` and the writer's ``fingerprint`` (what is being generated) in
    ``fingerprint.json``. Processes write disjoint rows, so any number of ranks can share the folder (it must be
    on a filesystem they all see: one node, or a cluster filesystem). Rows are flushed before their status, so
    after a crash :meth:`pending` lists exactly what is left and re-running resumes. :meth:`finalize` streams the
    rows into the ``.npz`` (never holding the array in memory) and deletes the work folder.

    Use :meth:`create` on one process (it reopens a folder with the same fingerprint: resume), then :meth:`open`
    on the others.
    """

    PENDING, DONE, NON_FINITE = 0, 1, 2

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = Path(work_dir)
        try:
            self.fingerprint = json.loads((self.work_dir / "fingerprint.json").read_text())
            self.images = np.load(self.work_dir / "images.npy", mmap_mode="r+")
            self.status = np.load(self.work_dir / "status.npy", mmap_mode="r+")
        except (OSError, ValueError) as exc:
            raise IrepaError(
                f"work folder {str(self.work_dir)!r} is incomplete or corrupt ({exc}); delete it and start again"
            ) from exc

    @classmethod
    def create(cls, work_dir: str | Path, num: int, image_shape: tuple[int, int, int], fingerprint: dict):
        """Create the work folder, or reopen it if it holds the same ``fingerprint`` (resume).

        Raises:
            IrepaError: If the folder exists with a different fingerprint (another recipe).
        """
        work_dir = Path(work_dir)
        meta = work_dir / "fingerprint.json"
        fingerprint = json.loads(json.dumps(fingerprint))  # normalize (tuples -> lists) for comparison
        if meta.is_file():
            try:
                existing = json.loads(meta.read_text())
            except (OSError, ValueError):
                existing = None
            if existing != fingerprint:
                differing = sorted(
                    k for k in set(fingerprint) | set(existing or {}) if (existing or {}).get(k) != fingerprint.get(k)
                )
                raise IrepaError(
                    f"work folder {str(work_dir)!r} holds an unfinished run of another recipe (differs in: "
                    f"{', '.join(differing) or 'everything'}); finish it with the same command or delete the folder"
                )
            return cls(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(work_dir / "images.npy", mode="w+", dtype=np.uint8, shape=(num, *image_shape)).flush()
        np.lib.format.open_memmap(work_dir / "status.npy", mode="w+", dtype=np.uint8, shape=(num,)).flush()
        with atomic_write(meta, "w") as f:  # written last: its presence marks a complete folder
            json.dump(fingerprint, f, indent=2)
        return cls(work_dir)

    @classmethod
    def open(cls, work_dir: str | Path) -> IndexedImageWriter:
        """Open a folder made by :meth:`create` (on another process)."""
        return cls(Path(work_dir))

    def __len__(self) -> int:
        return int(self.status.shape[0])

    def pending(self, indices: np.ndarray | None = None) -> np.ndarray:
        """Indices (among ``indices``, default all) not yet written."""
        indices = np.arange(len(self)) if indices is None else np.asarray(indices)
        return indices[self.status[indices] == self.PENDING]

    def write(self, indices: np.ndarray, images: np.ndarray, finite: np.ndarray | None = None) -> None:
        """Store ``images`` (B, H, W, 3) uint8 at rows ``indices``; rows with ``finite == False`` are marked bad."""
        indices = np.asarray(indices)
        if images.shape[1:] != self.images.shape[1:] or images.dtype != np.uint8:
            raise IrepaError(
                f"images of shape {images.shape[1:]} {images.dtype} do not fit rows of {self.images.shape[1:]} uint8"
            )
        self.images[indices] = images
        self.images.flush()
        ok = np.ones(len(indices), dtype=bool) if finite is None else np.asarray(finite, dtype=bool)
        self.status[indices] = np.where(ok, self.DONE, self.NON_FINITE)
        self.status.flush()

    def non_finite(self) -> np.ndarray:
        """Indices whose samples had non-finite values."""
        return np.flatnonzero(self.status == self.NON_FINITE)

    def finalize(self, out: str | Path, extra: Mapping[str, np.ndarray] | None = None) -> None:
        """Write ``out`` (``arr_0`` = the images, plus ``extra`` arrays) and delete the work folder.

        Raises:
            IrepaError: If rows are still pending or some were non-finite (naming how many and which).
        """
        bad = self.non_finite()
        if bad.size:
            shown = ", ".join(str(i) for i in bad[:10]) + (", ..." if bad.size > 10 else "")
            raise IrepaError(
                f"{bad.size} of {len(self)} samples have non-finite values (indices {shown}); nothing was written. "
                "Check the model weights and sampling precision (try --dtype float32); delete "
                f"{str(self.work_dir)!r} to start over"
            )
        left = self.pending()
        if left.size:
            raise IrepaError(f"{left.size} samples are not generated yet; re-run the same command to finish")
        self.images.flush()
        images_path = self.work_dir / "images.npy"
        del self.images, self.status
        write_npz(out, {"arr_0": images_path, **dict(extra or {})})
        shutil.rmtree(self.work_dir)
