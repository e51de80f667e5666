"""Sharded data stores: a directory with ``manifest.json`` and ``.npy`` shards, written resumably and atomically.

Layout of a store (``irepa-store/1``)::

    STORE/manifest.json               what, how, how many, hashes (written last: its presence means "complete")
    STORE/shard-00000.images.npy      uint8 (N, H, W, 3)       image stores
    STORE/shard-00000.masks.npy       bool  (N, H, W)          image stores with masks (synthetic data)
    STORE/shard-00000.labels.npy      int64 (N,)               every store
    STORE/shard-00000.moments.npy     float32|float16 (N, 2C, h, w), mean ‖ std      latent stores
    STORE/shard-00000.moments_flip.npy                         latent stores encoded with --flip
    STORE/shard-00000.json            the shard's keys, counts and file hashes (written after its .npy files)

Plain ``.npy`` files are read with ``np.load(mmap_mode="r")``: random access costs one page-in, no decoding, and
each DataLoader worker maps the files itself, lazily, after it has started (a :class:`Store` never carries open
maps across ``fork`` or pickling), keeping at most a bounded number of maps open.

Writing is resumable: a builder records its settings in ``build.json``; each shard's ``.npy`` files are written
atomically and its ``shard-NNNNN.json`` last, so a shard is complete exactly when that file exists and the recorded
sizes and SHA-256 hashes match. Re-running the same command skips complete shards, redoes the others, and finally
writes ``manifest.json`` (replacing ``build.json``). Re-running with different settings is refused.

Records are identified by *keys* (see :mod:`irepa.utils.images`); stores are joined by key, never by position.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from irepa import __version__
from irepa.errors import IrepaError
from irepa.utils.io import atomic_write, sha256_file, write_json

__all__ = [
    "BUILD_NAME",
    "MANIFEST_NAME",
    "STORE_FORMAT",
    "BuildReport",
    "Store",
    "StoreBuild",
    "check_store",
    "load_manifest",
    "open_store",
    "shard_name",
    "write_shard",
]

STORE_FORMAT = "irepa-store/1"
MANIFEST_NAME = "manifest.json"
BUILD_NAME = "build.json"
SHARD_FORMAT = "irepa-shard/1"
#: Open memory maps kept per process (LRU); each holds a file descriptor.
MAX_OPEN_MAPS = 64


def shard_name(index: int) -> str:
    """``shard-00042``: the file-name stem of shard ``index``."""
    return f"shard-{index:05d}"


def _canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise IrepaError(f"cannot read {what} {str(path)!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise IrepaError(f"{what} {str(path)!r} is not a JSON object")
    return data


def creation_info() -> dict[str, Any]:
    """Who wrote a store, when, with which library versions (informational; excluded from fingerprints)."""
    import PIL
    import torch

    return {
        "irepa": __version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "pillow": PIL.__version__,
    }


# ----------------------------------------------------------------------------------------------------------------------
# Writing


class _HashingWriter:
    """File-like wrapper that hashes and counts every byte written through it."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.digest = hashlib.sha256()
        self.nbytes = 0

    def write(self, data: bytes | memoryview) -> int:
        self.digest.update(data)
        self.nbytes += len(data)
        return self._f.write(data)


def _save_npy(path: Path, array: np.ndarray) -> dict[str, Any]:
    """Atomically write ``array`` as ``.npy``; returns its file record (name, sha256, bytes, dtype, shape)."""
    with atomic_write(path, "wb") as f:
        writer = _HashingWriter(f)
        np.save(writer, np.ascontiguousarray(array), allow_pickle=False)
    return {
        "file": path.name,
        "sha256": writer.digest.hexdigest(),
        "bytes": writer.nbytes,
        "dtype": str(array.dtype),
        "shape": list(array.shape),
    }


def write_shard(
    store_dir: str | Path,
    name: str,
    arrays: Mapping[str, np.ndarray],
    keys: Sequence[str],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write one shard: every array atomically, then ``<name>.json`` (the completion marker).

    Args:
        store_dir: The store directory.
        name: Shard stem (:func:`shard_name`).
        arrays: ``field -> array`` with a common first dimension N (``images``, ``labels``, ``moments``, ...).
        keys: The N record keys, in array order.
        extra: More JSON-safe entries for the shard record (skipped files, statistics, ...).

    Returns:
        The shard record as written to ``<name>.json``.
    """
    store_dir = Path(store_dir)
    count = len(keys)
    for field, array in arrays.items():
        if array.shape[0] != count:
            raise ValueError(f"shard {name}: field {field!r} has {array.shape[0]} rows for {count} keys")
    _remove_stale_temporaries(store_dir, name)
    files = {field: _save_npy(store_dir / f"{name}.{field}.npy", array) for field, array in arrays.items()}
    record = {"format": SHARD_FORMAT, "name": name, "count": count, "files": files, "keys": list(keys)}
    record.update(extra or {})
    with atomic_write(store_dir / f"{name}.json", "w") as f:
        json.dump(record, f, separators=(",", ":"))
    return record


def _remove_stale_temporaries(store_dir: Path, name: str) -> None:
    """Delete temporary files an interrupted write of shard ``name`` left behind (only this shard's)."""
    for tmp in store_dir.glob(f".{name}.*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def _shard_problem(store_dir: Path, record: Mapping[str, Any], verify: str) -> str | None:
    """Why the files of a shard record are not intact (None when they are)."""
    for field, info in record.get("files", {}).items():
        path = store_dir / info["file"]
        if not path.is_file():
            return f"{field} file {info['file']} is missing"
        if path.stat().st_size != info["bytes"]:
            return f"{field} file {info['file']} has {path.stat().st_size} bytes, expected {info['bytes']}"
        if verify == "hash" and sha256_file(path) != info["sha256"]:
            return f"{field} file {info['file']} does not match its recorded SHA-256"
    return None


def _describe_value(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


class StoreBuild:
    """Resumable construction of a store: settings check, completed-shard discovery, final manifest.

    Args:
        store_dir: The store directory (created if missing).
        settings: Everything that determines the store's content (kind, source identity, resolution, shard
            partition, VAE, ...). A re-run must pass equal settings; they are kept in the manifest as ``build``.
        command: The command that builds it, for messages (``"irepa data prepare"``).

    Raises:
        IrepaError: If ``store_dir`` is a file, a non-empty directory that is not a store, or a store (complete or
            not) built with different settings.
    """

    def __init__(self, store_dir: str | Path, settings: Mapping[str, Any], *, command: str) -> None:
        self.dir = Path(store_dir)
        self.settings = json.loads(_canonical_json(dict(settings)))  # JSON-normalized (tuples -> lists)
        self.command = command
        if self.dir.exists() and not self.dir.is_dir():
            raise IrepaError(f"output {str(self.dir)!r} is a file, not a store directory; choose another --out")
        manifest_path, build_path = self.dir / MANIFEST_NAME, self.dir / BUILD_NAME
        reopened = False
        if manifest_path.is_file():
            manifest = _read_json(manifest_path, "manifest")
            self._compare(manifest.get("build", {}), "is a complete store")
            # A complete store whose shard files were deleted (e.g. after a failed `irepa data info --verify`) is
            # reopened, so that re-running the command rewrites exactly those shards.
            if any(self.completed(s["name"], verify="size") is None for s in manifest.get("shards", [])):
                manifest_path.unlink(missing_ok=True)  # another rank may have reopened it already
                reopened = True
        elif build_path.is_file():
            self._compare(_read_json(build_path, "build file"), "is a partial store")
        elif self.dir.is_dir() and any(p for p in self.dir.iterdir() if not p.name.startswith(".")):
            raise IrepaError(
                f"output {str(self.dir)!r} is a non-empty directory that is not an irepa store; choose an empty or "
                "new --out directory"
            )
        self.complete = manifest_path.is_file()
        self.reopened = reopened
        if not self.complete:
            # Every rank of a multi-process build writes the same content; os.replace keeps that race harmless.
            write_json(build_path, self.settings)

    def _compare(self, previous: Mapping[str, Any], state: str) -> None:
        diffs = []
        for key in sorted(set(previous) | set(self.settings)):
            old, new = previous.get(key, "(absent)"), self.settings.get(key, "(absent)")
            if old != new:
                diffs.append(f"{key} was {_describe_value(old)}, now {_describe_value(new)}")
        if diffs:
            raise IrepaError(
                f"{str(self.dir)!r} {state} built with other settings ({'; '.join(diffs)}); re-run "
                f"{self.command} with the original settings to finish it, or choose another --out"
            )

    def completed(self, name: str, *, verify: str = "hash") -> dict[str, Any] | None:
        """The record of shard ``name`` if it is complete and intact, else None (its files will be rewritten).

        Args:
            name: Shard stem.
            verify: ``"hash"`` re-hashes the shard's files, ``"size"`` only checks their sizes.
        """
        path = self.dir / f"{name}.json"
        if not path.is_file():
            return None
        try:
            record = _read_json(path, "shard record")
        except IrepaError:
            return None
        if record.get("format") != SHARD_FORMAT or record.get("name") != name:
            return None
        if _shard_problem(self.dir, record, verify) is not None:
            return None
        return record

    def require(self, names: Sequence[str]) -> None:
        """Raise if a shard of ``names`` is missing or has a truncated file (naming the first ones and the fix)."""
        missing = [n for n in names if self.completed(n, verify="size") is None]
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise IrepaError(f"store {str(self.dir)!r} is missing shards {shown}; re-run {self.command} to write them")

    def finalize(self, header: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
        """Write ``manifest.json`` from ``header`` and the records of shards ``names`` (in store order).

        Raises:
            IrepaError: If a shard record is missing (naming the first ones and the fix).
        """
        self.require(names)
        shards, count = [], 0
        for name in names:
            path = self.dir / f"{name}.json"
            record = _read_json(path, "shard record")
            shards.append(
                {
                    "name": name,
                    "count": record["count"],
                    "record": {"file": path.name, "sha256": sha256_file(path)},
                    "files": {field: dict(info) for field, info in record["files"].items()},
                }
            )
            count += record["count"]
        manifest = {"format": STORE_FORMAT, **dict(header), "count": count, "build": self.settings}
        manifest["shards"] = shards
        manifest["fingerprint"] = fingerprint(manifest)
        manifest["created"] = creation_info()
        write_json(self.dir / MANIFEST_NAME, manifest)
        with contextlib.suppress(OSError):
            (self.dir / BUILD_NAME).unlink()
        self.complete = True
        return manifest


@dataclasses.dataclass
class BuildReport:
    """What a store build did (returned by ``prepare_*`` and ``encode_latent_store``, printed by the CLI)."""

    store: Path
    shards_total: int = 0
    shards_written: int = 0
    shards_reused: int = 0
    records_written: int = 0
    skipped: int = 0
    converted: int = 0
    seconds: float = 0.0
    already_complete: bool = False
    finalized: bool = False
    count: int = 0

    def summary(self) -> str:
        """One line, e.g. ``store out/: 1000 records in 2 shards (1 written, 1 reused), 3 skipped; 4.1 s``."""
        if self.already_complete:
            return f"store {str(self.store)!r} is already complete ({self.count} records); nothing to do"
        parts = [
            f"{self.shards_written} shards written ({self.records_written} records)",
            f"{self.shards_reused} reused",
        ]
        if self.converted:
            parts.append(f"{self.converted} images converted to RGB")
        if self.skipped:
            parts.append(f"{self.skipped} unreadable skipped")
        state = f"complete, {self.count} records" if self.finalized else "this rank's shards done"
        return f"store {str(self.store)!r} ({state}): " + ", ".join(parts) + f"; {self.seconds:.1f} s"


def fingerprint(manifest: Mapping[str, Any]) -> str:
    """SHA-256 of a store's *content*: its header fields and shard hashes, not its creation time or path.

    Two stores with equal fingerprints hold the same bytes under the same keys (the keys live in the shard
    records, whose hashes are included).
    """
    skip = {"fingerprint", "created", "source_path"}
    content = {k: v for k, v in manifest.items() if k not in skip}
    return hashlib.sha256(_canonical_json(content)).hexdigest()


# ----------------------------------------------------------------------------------------------------------------------
# Reading


def _make_hint(kind: str | None) -> str:
    if kind == "latents":
        return "create it with `irepa data encode --store IMAGES --out LATENTS`"
    return "create it with `irepa data prepare --images DIR --resolution 256 --out STORE`"


def load_manifest(path: str | Path, *, kind: str | None = None) -> dict[str, Any]:
    """Read and validate ``STORE/manifest.json``.

    Args:
        path: The store directory (or its ``manifest.json``).
        kind: Expected kind (``"images"`` or ``"latents"``), or None for any.

    Raises:
        IrepaError: Missing store, an unfinished store, an unknown format, or a store of another kind; each names
            the fix.
    """
    path = Path(path)
    store_dir = path.parent if path.name == MANIFEST_NAME else path
    what = f"{kind} store" if kind else "data store"
    if not store_dir.is_dir():
        raise IrepaError(f"{what} {str(store_dir)!r} does not exist; {_make_hint(kind)}")
    manifest_path = store_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        if (store_dir / BUILD_NAME).is_file():
            done = len(list(store_dir.glob("shard-*.json")))
            raise IrepaError(
                f"{what} {str(store_dir)!r} is incomplete ({done} shards written, no manifest.json); re-run the "
                "command that created it to finish it"
            )
        raise IrepaError(f"{str(store_dir)!r} is not an irepa data store (no manifest.json); {_make_hint(kind)}")
    manifest = _read_json(manifest_path, "manifest")
    if manifest.get("format") != STORE_FORMAT:
        raise IrepaError(
            f"manifest {str(manifest_path)!r} has format {manifest.get('format')!r}, expected {STORE_FORMAT!r}; "
            "it was written by another tool or another irepa version"
        )
    for field in ("kind", "count", "shards", "fields"):
        if field not in manifest:
            raise IrepaError(f"manifest {str(manifest_path)!r} has no {field!r} entry; re-create the store")
    if kind is not None and manifest["kind"] != kind:
        raise IrepaError(
            f"{str(store_dir)!r} is a {manifest['kind']} store, expected a {kind} store; {_make_hint(kind)}"
        )
    return manifest


def open_store(path: str | Path, *, kind: str | None = None) -> Store:
    """Open a store for reading (see :class:`Store`)."""
    return Store(path, kind=kind)


class Store:
    """Read access to a complete store: manifest, keys, and records by global index.

    Opening reads only ``manifest.json`` and stats the shard files (a truncated or missing shard is an error
    here, not in a DataLoader worker hours later). Arrays are memory-mapped lazily, per process, at first use.

    Args:
        path: The store directory.
        kind: Expected kind, or None.

    Attributes:
        path: The store directory.
        manifest: The parsed manifest.
        kind: ``"images"`` or ``"latents"``.
        count: Number of records.
    """

    def __init__(self, path: str | Path, *, kind: str | None = None) -> None:
        self.path = Path(path)
        if self.path.name == MANIFEST_NAME:
            self.path = self.path.parent
        self.manifest = load_manifest(self.path, kind=kind)
        self.kind: str = self.manifest["kind"]
        self.count: int = int(self.manifest["count"])
        counts = np.array([s["count"] for s in self.manifest["shards"]], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        if int(self._starts[-1]) != self.count:
            raise IrepaError(
                f"manifest of {str(self.path)!r} says {self.count} records but its shards hold {int(self._starts[-1])}"
            )
        for shard in self.manifest["shards"]:
            for info in shard["files"].values():
                file = self.path / info["file"]
                if not file.is_file():
                    raise IrepaError(
                        f"store {str(self.path)!r} is missing shard file {info['file']}; restore it or re-create the "
                        "store"
                    )
                if file.stat().st_size != info["bytes"]:
                    raise IrepaError(
                        f"shard file {str(file)!r} has {file.stat().st_size} bytes, the manifest says {info['bytes']} "
                        "(truncated or replaced); re-create the store"
                    )
        self._maps: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
        self._pid = os.getpid()

    # -- description ---------------------------------------------------------------------------------------------------

    @property
    def fields(self) -> dict[str, dict[str, Any]]:
        """``field -> {"dtype", "shape"}`` with the per-record shape (e.g. ``images: uint8 [256, 256, 3]``)."""
        return self.manifest["fields"]

    def has_field(self, field: str) -> bool:
        """Whether records have ``field`` (``images``, ``masks``, ``labels``, ``moments``, ``moments_flip``)."""
        return field in self.fields

    @property
    def class_names(self) -> list[str] | None:
        """Class names indexed by label, or None for an unlabelled store (every label is 0)."""
        return self.manifest.get("class_names")

    @property
    def num_classes(self) -> int:
        """Number of classes (1 for an unlabelled store)."""
        return int(self.manifest.get("num_classes", 1))

    @property
    def fingerprint(self) -> str:
        """The content fingerprint (see :func:`fingerprint`)."""
        return self.manifest["fingerprint"]

    @property
    def manifest_sha256(self) -> str:
        """SHA-256 of the ``manifest.json`` file."""
        return sha256_file(self.path / MANIFEST_NAME)

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, kind={self.kind!r}, count={self.count})"

    # -- keys ----------------------------------------------------------------------------------------------------------

    def shard_records(self) -> Iterable[dict[str, Any]]:
        """The shard records (``shard-NNNNN.json``) in store order, each checked against its manifest hash."""
        for shard in self.manifest["shards"]:
            path = self.path / shard["record"]["file"]
            data = path.read_bytes() if path.is_file() else b""
            if hashlib.sha256(data).hexdigest() != shard["record"]["sha256"]:
                raise IrepaError(
                    f"shard record {str(path)!r} is missing or does not match the manifest's hash; re-create the store"
                )
            yield json.loads(data)

    def keys(self) -> list[str]:
        """All record keys in store order (read from the shard records; not cached, to keep workers small)."""
        out: list[str] = []
        for record in self.shard_records():
            out.extend(record["keys"])
        if len(out) != self.count:
            raise IrepaError(f"store {str(self.path)!r} lists {len(out)} keys for {self.count} records")
        return out

    # -- records -------------------------------------------------------------------------------------------------------

    def locate(self, index: int) -> tuple[int, int]:
        """``(shard, offset)`` of global record ``index``."""
        if not 0 <= index < self.count:
            raise IndexError(f"record {index} out of range for a store of {self.count}")
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        return shard, index - int(self._starts[shard])

    def _array(self, shard: int, field: str) -> np.ndarray:
        if self._pid != os.getpid():  # forked into a DataLoader worker: never reuse the parent's maps
            self._maps, self._pid = OrderedDict(), os.getpid()
        key = (shard, field)
        array = self._maps.get(key)
        if array is not None:
            self._maps.move_to_end(key)
            return array
        try:
            info = self.manifest["shards"][shard]["files"][field]
        except KeyError:
            raise IrepaError(f"store {str(self.path)!r} has no {field!r} field") from None
        file = self.path / info["file"]
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise IrepaError(f"cannot read shard file {str(file)!r}: {exc}; re-create the store") from exc
        if list(array.shape) != info["shape"] or str(array.dtype) != info["dtype"]:
            raise IrepaError(
                f"shard file {str(file)!r} holds {array.dtype} {list(array.shape)}, the manifest says "
                f"{info['dtype']} {info['shape']}; re-create the store"
            )
        self._maps[key] = array
        while len(self._maps) > MAX_OPEN_MAPS:
            self._maps.popitem(last=False)
        return array

    def read(self, field: str, index: int, *, copy: bool = True) -> np.ndarray:
        """``field`` of record ``index`` (e.g. ``images``: uint8 (H, W, 3)).

        Args:
            field: Field name.
            index: Global record index.
            copy: Return a copy (default); ``False`` returns a read-only view into the memory map, valid until the
                map is evicted (copy it before reading many other shards).
        """
        shard, offset = self.locate(index)
        row = self._array(shard, field)[offset]
        return np.array(row) if copy else row

    def read_shard(self, field: str, shard: int) -> np.ndarray:
        """The memory-mapped ``field`` array of a whole shard (read-only)."""
        return self._array(shard, field)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_maps"] = OrderedDict()  # memory maps never travel to another process
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    # -- integrity -----------------------------------------------------------------------------------------------------

    def verify(self, *, progress: bool = False) -> list[str]:
        """Re-hash every shard file and record; returns the problems found (empty when intact)."""
        from tqdm import tqdm

        problems = []
        for shard in tqdm(self.manifest["shards"], desc="verify", unit="shard", disable=not progress):
            problem = _shard_problem(self.path, shard, "hash")
            if problem is None and sha256_file(self.path / shard["record"]["file"]) != shard["record"]["sha256"]:
                problem = f"record {shard['record']['file']} does not match its recorded SHA-256"
            if problem is not None:
                problems.append(f"{shard['name']}: {problem}")
        if not problems and fingerprint(self.manifest) != self.manifest.get("fingerprint"):
            problems.append("manifest: the fingerprint does not match its content (edited by hand?)")
        return problems

    def check(self, expected: Mapping[str, Any]) -> None:
        """:func:`check_store` on this store."""
        check_store(self, expected)


# ----------------------------------------------------------------------------------------------------------------------
# Compatibility checks

#: How to fix a mismatch of each checkable manifest field.
_FIXES = {
    "images": {
        "resolution": "re-run `irepa data prepare --resolution {expected}` into a new --out",
        "crop": "re-run `irepa data prepare` with the expected crop into a new --out",
        "num_classes": "prepare a store from a folder with {expected} class subfolders",
    },
    "latents": {
        "resolution": "prepare images at --resolution {expected}, then re-run `irepa data encode` into a new --out",
        "crop": "prepare images with the expected crop, then re-run `irepa data encode` into a new --out",
        "vae.id": "re-run `irepa data encode --vae {expected}` into a new --out",
        "vae.revision": "re-run `irepa data encode --vae-revision {expected}` into a new --out",
        "flip": "re-run `irepa data encode --flip` into a new --out (or train without flips)",
        "dtype": "re-run `irepa data encode --dtype {expected}` into a new --out",
        "encoder_dtype": "re-run `irepa data encode --encoder-dtype {expected}` into a new --out",
        "latent_shape": "encode images of the matching resolution with a VAE of the matching downsampling",
        "moments": "re-run `irepa data encode` (irepa stores mean ‖ std moments)",
        "num_classes": "encode an image store with {expected} classes",
    },
}


def _lookup(manifest: Mapping[str, Any], dotted: str) -> Any:
    node: Any = manifest
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _ABSENT
        node = node[part]
    return node


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


_ABSENT = _Absent()


def _normalize(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalize(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def check_store(store: Store | Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Refuse a store whose manifest does not match what a training config expects.

    Args:
        store: A :class:`Store` or a parsed manifest.
        expected: ``dotted manifest field -> expected value``, e.g. ``{"kind": "latents", "resolution": 256,
            "vae.id": "stabilityai/sd-vae-ft-mse", "flip": "also-flipped", "latent_shape": [4, 32, 32]}``.
            VAE ids are compared by canonical name (``sd-vae-ft-mse`` equals ``stabilityai/sd-vae-ft-mse``).

    Raises:
        IrepaError: One line listing every mismatched field (expected vs found) and how to fix each.
    """
    manifest = store.manifest if isinstance(store, Store) else store
    where = f"{store.kind} store {str(store.path)!r}" if isinstance(store, Store) else f"{manifest.get('kind')} store"
    problems, fixes = [], []
    for field, want in expected.items():
        found = _lookup(manifest, field)
        if field == "vae.id" and isinstance(found, str) and isinstance(want, str):
            from irepa.data.vae import canonical_vae_id

            same = canonical_vae_id(found) == canonical_vae_id(want)
        else:
            same = _normalize(found) == _normalize(want)
        if not same:
            problems.append(f"{field} expected {_describe_value(want)}, found {_describe_value(found)}")
            fix = _FIXES.get(str(manifest.get("kind")), {}).get(field)
            if fix and (text := fix.format(expected=want)) not in fixes:
                fixes.append(text)
    if problems:
        fix_text = "; ".join(fixes) if fixes else "create a store with the expected settings or change the config"
        raise IrepaError(f"{where} does not match the config: {'; '.join(problems)}. Fix: {fix_text}")
