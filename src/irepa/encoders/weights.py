"""Finding, downloading, verifying and reading encoder weights, offline first.

Lookup order (the first hit wins)::

    1. weights=PATH           an explicit file, or a folder holding it
    2. irepa cache            <cache_dir>/encoders/<id>/            (filled by `irepa encoders download`)
    3. Hugging Face cache     hf_cache_dir (HF_HUB_CACHE)            (filled by timm / transformers / hf download)
    4. torch hub checkpoints  <torch_hub_dir>/checkpoints/<official file name>
    5. download               from the Hub (into the HF cache) or the official URL (into the irepa cache),
                              unless offline=True

When nothing is found, :class:`~irepa.errors.WeightsNotFoundError` says (in one line) which encoder, what was looked
for and where, and how to fix it. A download starts with one quick request to its server
(:func:`irepa.utils.network.probe_server`: no retries, 5 s): without a network it fails in seconds, instead of after
huggingface_hub's retries (about 25 s when names do not resolve, minutes when packets are dropped). Gated
repositories (DINOv3) get their own message. Files with a known checksum are verified; package assets always are.

This module never reads environment variables or default paths: the CLI passes every location explicitly
(``irepa.cli.encoders.weight_locations``). Only :mod:`huggingface_hub` itself reads its own settings (token,
endpoint, ``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.resources
import json
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from irepa.encoders.spec import EncoderSpec
from irepa.errors import IrepaError, WeightsNotFoundError, first_line
from irepa.utils.io import atomic_write, describe_load_error, sha256_file, write_json
from irepa.utils.network import NoNetworkError, probe_server

__all__ = [
    "NoNetworkError",
    "ResolvedWeights",
    "WeightLocations",
    "cache_folder",
    "download_weights",
    "find_local_weights",
    "locate_weights",
    "read_state_dict",
    "resolve_weights",
    "verify_checksum",
]

#: File suffixes recognised as weight files inside a folder.
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".tar", ".ckpt")


@dataclasses.dataclass(frozen=True)
class WeightLocations:
    """Where to look for (and put) weights. ``None`` skips that location.

    Attributes:
        cache_dir: irepa's cache root; weights live in ``<cache_dir>/encoders/<encoder id>/``.
        hf_cache_dir: The Hugging Face hub cache (``HF_HUB_CACHE``); ``None`` = huggingface_hub's own default.
        torch_hub_dir: The torch hub directory (``$TORCH_HOME/hub``); official files in its ``checkpoints/``.
        offline: Never touch the network.
    """

    cache_dir: Path | None = None
    hf_cache_dir: Path | None = None
    torch_hub_dir: Path | None = None
    offline: bool = False


@dataclasses.dataclass(frozen=True)
class ResolvedWeights:
    """Weights found for an encoder.

    Attributes:
        path: A file, or a Transformers model folder.
        origin: ``explicit``, ``irepa-cache``, ``hf-cache``, ``torch-hub``, ``download`` or ``package``.
        revision: The Hub commit the file belongs to, when known.
        sha256: The file's verified SHA-256 when it was computed (known checksum or package asset).
    """

    path: Path
    origin: str
    revision: str | None = None
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description (stored in feature-file metadata)."""
        return {"path": str(self.path), "origin": self.origin, "revision": self.revision, "sha256": self.sha256}


# ----------------------------------------------------------------------------------------------------------------------
# Checksums


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, so big files hash once


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = sha256_file(path)
    return _VERIFIED[key]


def verify_checksum(path: str | Path, expected: str, what: str) -> str:
    """Check that the SHA-256 of ``path`` equals ``expected`` (full hex or a prefix of ≥ 8 hex digits).

    Returns:
        The full hex digest.

    Raises:
        IrepaError: On a mismatch (names the file, both digests and the fix).
    """
    expected = expected.lower()
    if len(expected) < 8:
        raise ValueError(f"checksum {expected!r} is too short (need at least 8 hex digits)")
    digest = _file_sha256(Path(path))
    if not digest.startswith(expected):
        raise IrepaError(
            f"checksum mismatch for {what} file {str(path)!r}: sha256 {digest[: len(expected)]} but expected "
            f"{expected}; the file is corrupt or not the expected checkpoint, delete it and download it again"
        )
    return digest


# ----------------------------------------------------------------------------------------------------------------------
# Local lookup


def cache_folder(spec: EncoderSpec, cache_dir: str | Path) -> Path:
    """The irepa cache folder of one encoder: ``<cache_dir>/encoders/<id>``."""
    return Path(cache_dir) / "encoders" / spec.id


def _candidate_names(spec: EncoderSpec) -> list[str]:
    source = spec.weights
    assert source is not None
    names = []
    if source.filename:
        names += [source.filename, Path(source.filename).name]  # hub downloads keep the repo's subfolders
    if source.asset:
        names.append(Path(source.asset).name)
    names.extend(source.alt_filenames)
    return list(dict.fromkeys(names))


def _known_checksum(spec: EncoderSpec, path: Path) -> str | None:
    """The checksum irepa knows for a file of this name, if any."""
    source = spec.weights
    assert source is not None
    name = path.name
    if source.sha256 and name in {Path(source.filename or "").name, Path(source.asset or "").name}:
        return source.sha256
    for alt, digest in zip(source.alt_filenames, source.alt_sha256):
        if name == alt and digest:
            return digest
    return None


def _is_model_folder(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.safetensors"))


def _pick_in_folder(spec: EncoderSpec, folder: Path, *, required: bool) -> Path | None:
    """The weights of ``spec`` inside ``folder`` (a model folder itself for Transformers entries)."""
    assert spec.weights is not None
    if spec.weights.is_folder:
        if _is_model_folder(folder):
            return folder
        if required:
            raise IrepaError(
                f"weights folder {str(folder)!r} for encoder {spec.id!r} holds no *.safetensors files; pass a "
                "Transformers model folder (config.json + model.safetensors) or a .safetensors file"
            )
        return None
    for name in _candidate_names(spec):
        if (folder / name).is_file():
            return folder / name
    if required:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
        if len(files) == 1:
            return files[0]
        listing = ", ".join(p.name for p in files[:5]) or "no weight files"
        raise IrepaError(
            f"weights folder {str(folder)!r} for encoder {spec.id!r} has {listing}; expected one of "
            f"{', '.join(_candidate_names(spec))}, or pass the file itself with --weights"
        )
    return None


def _hub_revision_of(path: Path) -> str | None:
    """The commit hash of a file inside a Hugging Face cache snapshot (``.../snapshots/<commit>/...``).

    The path is read as given: snapshot files are symlinks into ``blobs/``, so resolving them would lose the commit.
    """
    parts = path.absolute().parts
    for i, part in enumerate(parts[:-1]):
        if part == "snapshots":
            return parts[i + 1]
    return None


def _package_asset_path(asset: str) -> Path:
    path = Path(asset)
    if path.is_absolute():
        return path
    return Path(str(importlib.resources.files("irepa") / "assets" / asset))


def find_local_weights(
    spec: EncoderSpec, locations: WeightLocations, *, revision: str | None = None
) -> tuple[ResolvedWeights | None, list[str]]:
    """Look for ``spec``'s weights in the local caches (steps 2–4 of the lookup order).

    Returns:
        ``(found or None, human descriptions of the places looked at)``.
    """
    source = spec.weights
    if source is None:
        raise ValueError(f"encoder {spec.id!r} has no weights")
    looked: list[str] = []
    if locations.cache_dir is not None:
        folder = cache_folder(spec, locations.cache_dir)
        looked.append(f"irepa cache {folder}")
        if folder.is_dir():
            hit = _pick_in_folder(spec, folder, required=False)
            if hit is not None:
                return ResolvedWeights(hit, "irepa-cache", revision=_recorded_revision(folder)), looked
    if source.repo_id is not None:
        hf_where = str(locations.hf_cache_dir) if locations.hf_cache_dir else "default location"
        looked.append(f"Hugging Face cache ({hf_where})")
        hit_path = _hf_cache_lookup(spec, locations.hf_cache_dir, revision or source.revision)
        if hit_path is not None:
            return ResolvedWeights(hit_path, "hf-cache", revision=_hub_revision_of(hit_path)), looked
    if locations.torch_hub_dir is not None and not source.is_folder:
        folder = Path(locations.torch_hub_dir) / "checkpoints"
        names = list(source.alt_filenames) + ([Path(source.filename).name] if source.url and source.filename else [])
        if names:
            looked.append(f"torch hub {folder} ({', '.join(dict.fromkeys(names))})")
            for name in dict.fromkeys(names):
                if (folder / name).is_file():
                    return ResolvedWeights(folder / name, "torch-hub"), looked
    return None, looked


def _recorded_revision(folder: Path) -> str | None:
    record = folder / "SOURCE.json"
    if record.is_file():
        with contextlib.suppress(OSError, ValueError):
            return json.loads(record.read_text()).get("revision")
    return None


def _hf_cache_lookup(spec: EncoderSpec, hf_cache_dir: Path | None, revision: str) -> Path | None:
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    source = spec.weights
    assert source is not None and source.repo_id is not None
    cache = str(hf_cache_dir) if hf_cache_dir is not None else None
    if source.filename is not None:
        hit = try_to_load_from_cache(source.repo_id, source.filename, cache_dir=cache, revision=revision)
        return Path(hit) if isinstance(hit, str) else None
    try:
        folder = Path(snapshot_download(source.repo_id, revision=revision, cache_dir=cache, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError and friends: simply not cached
        return None
    return folder if _is_model_folder(folder) else None


# ----------------------------------------------------------------------------------------------------------------------
# Resolution


def resolve_weights(
    spec: EncoderSpec,
    *,
    weights: str | Path | None = None,
    locations: WeightLocations | None = None,
    revision: str | None = None,
) -> ResolvedWeights:
    """Find (or download) the weights of ``spec`` following the lookup order of this module.

    Args:
        spec: The encoder.
        weights: An explicit file or folder; skips every other location.
        locations: Cache locations and the offline switch.
        revision: Hub revision overriding the spec's.

    Raises:
        WeightsNotFoundError: Nothing found (offline, or the download failed).
        IrepaError: An explicit path that does not exist or holds no usable file; a checksum mismatch; a gated
            repository without access.
    """
    locations = locations or WeightLocations()
    found, looked = _find_without_network(spec, weights, locations, revision)
    if found is not None:
        return dataclasses.replace(found, sha256=_verify_if_known(spec, found.path))
    if locations.offline:
        raise WeightsNotFoundError(_missing_message(spec, looked, "offline mode is on"))
    try:
        return download_weights(spec, locations=locations, revision=revision, into_hf_cache=True)
    except NoNetworkError as exc:  # the fix below says how to get the weights here; add how to skip the attempt
        reason = f"{exc.reason}; --offline (or IREPA_OFFLINE=1) skips the download attempt"
        raise WeightsNotFoundError(_missing_message(spec, looked, reason)) from exc
    except WeightsNotFoundError as exc:
        raise WeightsNotFoundError(_missing_message(spec, looked, str(exc))) from exc


def locate_weights(
    spec: EncoderSpec,
    *,
    weights: str | Path | None = None,
    locations: WeightLocations | None = None,
    revision: str | None = None,
    weights_hint: str = "--weights PATH",
) -> ResolvedWeights:
    """Where :func:`resolve_weights` would find ``spec``'s weights without the network, without reading them.

    The same lookup (explicit path, package asset, irepa cache, Hugging Face cache, torch hub) minus the download
    and the checksum (which reads the whole file): a cheap preflight check, e.g. for ``irepa train --dry-run``.

    Args:
        spec: The encoder.
        weights: An explicit file or folder; skips every other location.
        locations: Cache locations.
        revision: Hub revision overriding the spec's.
        weights_hint: How the caller's user names an explicit weights file, for the fix in the error message
            (``teacher.weights`` in a training config).

    Raises:
        WeightsNotFoundError: Nothing found locally; the one-line message names the encoder, the places looked at
            and the fix, as an offline :func:`resolve_weights` does.
        IrepaError: An explicit path that does not exist or holds no usable file; an encoder without weights.
    """
    found, looked = _find_without_network(spec, weights, locations or WeightLocations(), revision)
    if found is None:
        raise WeightsNotFoundError(_missing_message(spec, looked, "they are not in the local caches", weights_hint))
    return found


def _find_without_network(
    spec: EncoderSpec, weights: str | Path | None, locations: WeightLocations, revision: str | None
) -> tuple[ResolvedWeights | None, list[str]]:
    """Steps 1–4 of the lookup order (no download, no checksum): ``(found or None, places looked at)``."""
    source = spec.weights
    if source is None:
        raise IrepaError(f"encoder {spec.id!r} has no weights to load")
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.exists():
            raise IrepaError(f"weights path {str(path)!r} for encoder {spec.id!r} does not exist")
        if path.is_dir():
            path = _pick_in_folder(spec, path, required=True)  # type: ignore[assignment]
        return ResolvedWeights(path, "explicit"), []
    if source.asset is not None:
        path = _package_asset_path(source.asset)
        if not path.is_file():
            raise WeightsNotFoundError(
                f"package asset {source.asset!r} of encoder {spec.id!r} is missing ({path}); reinstall irepa or "
                "pass --weights PATH"
            )
        return ResolvedWeights(path, "package"), []
    return find_local_weights(spec, locations, revision=revision)


def _verify_if_known(spec: EncoderSpec, path: Path) -> str | None:
    if path.is_dir():
        return None
    expected = _known_checksum(spec, path)
    return verify_checksum(path, expected, f"encoder {spec.id!r}") if expected else None


def _fix_hint(spec: EncoderSpec, weights_hint: str = "--weights PATH") -> str:
    source = spec.weights
    assert source is not None
    hint = f"run `irepa encoders download {spec.id}` on a connected machine (and copy its cache folder here)"
    if source.repo_id is None and source.url is None:
        hint = "reinstall irepa"
    hint += f", or pass {weights_hint}"
    if source.url is not None:
        hint += f" (official file: {source.url})"
    elif source.homepage:
        hint += f" (official weights: {source.homepage})"
    return hint


def _gated_hint(spec: EncoderSpec) -> str:
    source = spec.weights
    assert source is not None and source.repo_id is not None
    return (
        f"the weights of {spec.id!r} are gated on the Hugging Face Hub: accept the licence at "
        f"https://huggingface.co/{source.repo_id}, log in (`hf auth login` or HF_TOKEN), then run "
        f"`irepa encoders download {spec.id}`"
    )


def _missing_message(spec: EncoderSpec, looked: list[str], reason: str, weights_hint: str = "--weights PATH") -> str:
    source = spec.weights
    assert source is not None
    where = "; ".join(looked) if looked else "no cache locations given"
    message = (
        f"no weights for encoder {spec.id!r} ({source.describe()}): looked in {where}; {reason}. "
        f"Fix: {_fix_hint(spec, weights_hint)}"
    )
    if spec.gated:
        message += f". Note: {_gated_hint(spec)}"
    return message


# ----------------------------------------------------------------------------------------------------------------------
# Download


def _probe_server(spec: EncoderSpec) -> None:
    """:func:`irepa.utils.network.probe_server` for the server of ``spec``'s download (its URL, or the Hub).

    Raises:
        NoNetworkError: No answer within 5 s; the message says how to get the weights offline.
    """
    source = spec.weights
    assert source is not None
    fix = (
        f"to work offline, run `irepa encoders download {spec.id}` on a connected machine, copy its cache folder here "
        "(IREPA_CACHE) and pass --offline"
    )
    probe_server(source.url, fix=fix)


def download_weights(
    spec: EncoderSpec,
    *,
    locations: WeightLocations,
    revision: str | None = None,
    into_hf_cache: bool = False,
) -> ResolvedWeights:
    """Download ``spec``'s weights.

    Hub files go into the irepa cache folder ``<cache_dir>/encoders/<id>/`` (plain files, portable to an offline
    machine) unless ``into_hf_cache`` (or no ``cache_dir``) puts them in the Hugging Face cache. URL files always go
    into the irepa cache folder. A ``SOURCE.json`` next to irepa-cache files records repository, revision, commit
    and checksum.

    Raises:
        NoNetworkError: The server does not answer the probe (a :class:`WeightsNotFoundError`).
        WeightsNotFoundError: Offline, or the Hub has no such file/revision.
        IrepaError: Gated repository without access; checksum mismatch; nowhere to put a URL download.
    """
    source = spec.weights
    if source is None or source.asset is not None:
        raise IrepaError(f"encoder {spec.id!r} has no downloadable weights")
    if locations.offline:
        raise WeightsNotFoundError(f"cannot download weights of {spec.id!r}: offline mode is on")
    revision = revision or source.revision
    local_dir = None if (into_hf_cache or locations.cache_dir is None) else cache_folder(spec, locations.cache_dir)
    if source.url is not None:
        if locations.cache_dir is None:
            raise IrepaError(
                f"cannot download {source.url}: no irepa cache folder given (pass cache_dir=..., or --cache-dir)"
            )
        folder = cache_folder(spec, locations.cache_dir)
        assert source.filename is not None
        path = folder / source.filename
        _probe_server(spec)
        _download_url(source.url, path)
        digest = verify_checksum(path, source.sha256, f"encoder {spec.id!r}") if source.sha256 else sha256_file(path)
        write_json(folder / "SOURCE.json", {"encoder": spec.id, "url": source.url, "sha256": digest})
        return ResolvedWeights(path, "download", sha256=digest)
    _probe_server(spec)
    path = _hub_download(spec, revision, locations.hf_cache_dir, local_dir)
    commit = _hub_revision_of(path)
    digest = None
    if not path.is_dir():
        expected = _known_checksum(spec, path)
        digest = verify_checksum(path, expected, f"encoder {spec.id!r}") if expected else None
    if local_dir is not None:
        commit = commit or _hub_commit(source.repo_id, revision)  # type: ignore[arg-type]
        write_json(
            local_dir / "SOURCE.json",
            {
                "encoder": spec.id,
                "repo_id": source.repo_id,
                "filename": source.filename,
                "revision": commit or revision,
                "requested_revision": revision,
                "sha256": digest or (sha256_file(path) if path.is_file() else None),
            },
        )
    return ResolvedWeights(path, "download", revision=commit or revision, sha256=digest)


def _hub_commit(repo_id: str, revision: str) -> str | None:
    with contextlib.suppress(Exception):
        from huggingface_hub import HfApi

        return HfApi().model_info(repo_id, revision=revision).sha
    return None


def _hub_download(spec: EncoderSpec, revision: str, hf_cache_dir: Path | None, local_dir: Path | None) -> Path:
    from huggingface_hub import errors, hf_hub_download, snapshot_download

    source = spec.weights
    assert source is not None and source.repo_id is not None
    cache = str(hf_cache_dir) if hf_cache_dir is not None else None
    try:
        if source.filename is not None:
            return Path(
                hf_hub_download(
                    source.repo_id, source.filename, revision=revision, cache_dir=cache, local_dir=local_dir
                )
            )
        folder = snapshot_download(
            source.repo_id,
            revision=revision,
            cache_dir=cache,
            local_dir=local_dir,
            allow_patterns=["config.json", "*.safetensors", "*.safetensors.index.json"],
        )
        return Path(folder)
    except errors.GatedRepoError as exc:
        raise IrepaError(_gated_hint(spec)) from exc
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.RemoteEntryNotFoundError) as exc:
        raise WeightsNotFoundError(
            f"the Hub has no {source.filename or 'model folder'} in {source.repo_id}@{revision} ({type(exc).__name__})"
        ) from exc
    except (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError) as exc:
        raise WeightsNotFoundError(f"download impossible ({first_line(exc)})") from exc
    except (errors.HfHubHTTPError, OSError) as exc:
        raise WeightsNotFoundError(f"download failed ({first_line(exc)})") from exc


def _download_url(url: str, path: Path) -> None:
    """Stream ``url`` into ``path`` atomically (a partial download never appears under the final name)."""
    import urllib.error
    import urllib.request

    from tqdm import tqdm

    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with (
                atomic_write(path, "wb") as f,
                tqdm(total=total, unit="B", unit_scale=True, desc=path.name, leave=False) as bar,
            ):
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as exc:
        raise WeightsNotFoundError(f"download of {url} failed ({first_line(exc)})") from exc


# ----------------------------------------------------------------------------------------------------------------------
# Reading


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint without unpickling arbitrary objects.

    Args:
        path: ``.safetensors``; ``.pth``/``.pt``/``.bin``/``.tar``/``.ckpt`` (``torch.load(weights_only=True)``); or a
            folder of ``*.safetensors`` shards (``model.safetensors.index.json`` respected).

    Returns:
        The loaded object (a flat tensor dict for safetensors; possibly nested for torch files).

    Raises:
        IrepaError: Unreadable or unsafe files.
    """
    path = Path(path)
    try:
        if path.is_dir():
            return _read_folder(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except IrepaError:
        raise
    except Exception as exc:  # pickle errors, truncated files, header errors
        raise IrepaError(
            f"cannot read weights {str(path)!r} safely: {describe_load_error(exc)}; if it pickles Python objects, "
            "re-save its tensors with torch.save(state_dict) or as .safetensors"
        ) from exc
    if not isinstance(obj, Mapping):
        raise IrepaError(f"weights {str(path)!r} hold a {type(obj).__name__}, not a state dict")
    return dict(obj)


def _read_folder(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        shards = [folder / f for f in files]
    else:
        shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise IrepaError(f"weights folder {str(folder)!r} holds no *.safetensors files")
    out: dict[str, Any] = {}
    for shard in shards:
        out.update(load_file(str(shard)))
    return out


@contextlib.contextmanager
def temporary_safetensors(state_dict: Mapping[str, torch.Tensor]) -> Iterator[Path]:
    """Write ``state_dict`` to a temporary ``.safetensors`` file (deleted afterwards) and yield its path.

    Used to hand remapped checkpoints to timm's own loader (which applies the architecture's checkpoint filter)
    without pickling.
    """
    from safetensors.torch import save_file

    folder = Path(tempfile.mkdtemp(prefix="irepa-weights-"))
    try:
        path = folder / "remapped.safetensors"
        seen: set[int] = set()
        tensors = {}
        for key, value in state_dict.items():
            # safetensors refuses tensors that share storage; clone those (rare: tied weights).
            ptr = value.untyped_storage().data_ptr()
            tensors[key] = value.contiguous() if ptr not in seen else value.clone().contiguous()
            seen.add(ptr)
        save_file(tensors, str(path))
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def folder_size_bytes(path: Path) -> int:
    """Size of a file, or the total size of the files in a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def is_cached(spec: EncoderSpec, locations: WeightLocations) -> bool:
    """Whether weights for ``spec`` are found locally (never downloads)."""
    if spec.weights is None:
        return True
    if spec.weights.asset is not None:
        return _package_asset_path(spec.weights.asset).is_file()
    found, _ = find_local_weights(spec, dataclasses.replace(locations, offline=True))
    return found is not None
