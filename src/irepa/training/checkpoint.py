"""Full-state training checkpoints: atomic directory writes, keep-last-k, verified loading with fallback.

Layout of a run's ``checkpoints/`` folder::

    checkpoints/
      step-0050000/
        model.safetensors        tensors, one file per named tensor group (model, ema.model, aligner, ...)
        ema.model.safetensors
        optimizer.main.pt        plain-data objects (optimizer state, trainer state, RNG states, sampler position),
        trainer.pt               written with torch.save and read back with ``torch.load(weights_only=True)``
        config.yaml              the resolved training config
        manifest.json            written last: format, step, and every file's size and sha256
      step-0100000/
      ...

**Atomicity.** A checkpoint is written into a hidden temporary folder (``.tmp-step-...``) in the same directory,
every file is fsynced, and the folder is renamed to ``step-NNNNNNN`` only when complete. A crash, a kill or a full
disk during the write leaves the previous checkpoints untouched (the temporary folder is removed, or ignored and
cleaned up by the next run). Only after a successful rename are checkpoints beyond the last ``keep_last`` deleted.

**Verified loading.** :meth:`CheckpointManager.load_latest` checks the newest checkpoint's manifest, file sizes and
sha256 hashes before reading anything; a truncated or corrupt checkpoint is reported (one line naming the file and
the reason) and the previous one is tried. Nothing is unpickled: tensors come from safetensors and the other
objects through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from irepa.errors import IrepaError, first_line
from irepa.utils.io import sha256_file
from irepa.utils.state_dict import state_dict_mismatch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "CheckpointManager",
    "LoadedCheckpoint",
    "check_state_dict",
]

CHECKPOINT_FORMAT = "irepa-checkpoint/1"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class CheckpointError(IrepaError):
    """A checkpoint could not be written, or no readable checkpoint was found."""


@dataclasses.dataclass
class LoadedCheckpoint:
    """The content of one verified checkpoint.

    Attributes:
        step: Optimizer steps completed when it was written.
        path: The checkpoint folder.
        tensors: Tensor groups by name (``"model"``, ``"ema.model"``, ...), each a flat ``name -> tensor`` dict.
        objects: Plain-data objects by name (``"optimizer.main"``, ``"trainer"``, ...).
        texts: Text files by name (``"config.yaml"``).
        meta: The manifest's extra metadata (e.g. ``nimg``).
        skipped: Steps of newer checkpoints that failed verification and were passed over.
    """

    step: int
    path: Path
    tensors: dict[str, dict[str, torch.Tensor]]
    objects: dict[str, Any]
    texts: dict[str, str]
    meta: dict[str, Any]
    skipped: list[int] = dataclasses.field(default_factory=list)


def _fsync_dir(path: Path) -> None:
    # Persist the rename itself (directory entry); not supported on every platform/filesystem.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _usual_permissions(path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def is_write_failure(exc: BaseException) -> bool:
    """Whether ``exc`` raised by a writer means the file system refused the data (full disk, quota, I/O error).

    Each writer words it differently: ``OSError`` (ENOSPC, EDQUOT, EIO), safetensors' ``SafetensorError`` ("No space
    left on device"), and ``torch.save``'s ``RuntimeError`` from its zip writer ("unexpected pos ...", "file write
    failed").
    """
    if isinstance(exc, OSError):
        return True
    if type(exc).__name__ == "SafetensorError":
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc)
        keys = ("unexpected pos", "write failed", "No space left", "PytorchStreamWriter", "iostream error")
        return any(k in text for k in keys)
    return False


def describe_write_failure(exc: BaseException, directory: Path) -> str:
    """One line for a failed write, with the free space left where it was written."""
    text = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(directory).free
        text += f"; {free / 2**20:.1f} MiB free on that file system"
    return text


def _check_name(name: str) -> None:
    if not _NAME.match(name) or name in ("manifest", "manifest.json"):
        raise ValueError(f"invalid checkpoint part name {name!r}")


class CheckpointManager:
    """Writes, lists, prunes and loads the checkpoints of one run.

    Only one process (rank 0) should call :meth:`save`; every process may call :meth:`load_latest`.

    Args:
        directory: The run's ``checkpoints/`` folder (created on first save).
        keep_last: How many of the newest checkpoints to keep (older ones are deleted after a successful save).
    """

    def __init__(self, directory: str | Path, keep_last: int = 3) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last

    # ------------------------------------------------------------------------------------------------------------------
    # Listing

    def steps(self) -> list[int]:
        """Steps of the complete checkpoint folders present (ascending); temporary folders are ignored."""
        if not self.directory.is_dir():
            return []
        found = []
        for child in self.directory.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and child.is_dir():
                found.append(int(match.group(1)))
        return sorted(found)

    def path(self, step: int) -> Path:
        """Folder of the checkpoint at ``step``."""
        return self.directory / f"step-{step:07d}"

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete ``.tmp-*`` folders left by an interrupted save (call on rank 0 before training starts)."""
        removed = []
        if self.directory.is_dir():
            for child in self.directory.iterdir():
                if child.name.startswith(".tmp-") and child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                    removed.append(child)
        return removed

    # ------------------------------------------------------------------------------------------------------------------
    # Saving

    def save(
        self,
        step: int,
        *,
        tensors: Mapping[str, Mapping[str, torch.Tensor]],
        objects: Mapping[str, Any] | None = None,
        texts: Mapping[str, str] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write the checkpoint for ``step`` atomically, then prune old ones.

        Args:
            step: Optimizer steps completed.
            tensors: Tensor groups, each written as ``<name>.safetensors``.
            objects: Plain-data objects (dicts, lists, numbers, strings, tensors), each written as ``<name>.pt``.
            texts: Text files written as is under their name (e.g. ``"config.yaml"``).
            meta: Extra JSON-safe metadata stored in the manifest.

        Returns:
            The checkpoint folder.

        Raises:
            CheckpointError: If writing fails (e.g. the disk is full). The previous checkpoints are left intact.
        """
        from safetensors.torch import save_file

        final = self.path(step)
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".tmp-{final.name}-{os.getpid()}-{time.monotonic_ns()}"
        tmp.mkdir()
        try:
            files: list[Path] = []
            for name, group in tensors.items():
                _check_name(name)
                payload = {k: v.detach().to("cpu").contiguous() for k, v in group.items()}
                target = tmp / f"{name}.safetensors"
                save_file(payload, str(target))
                _usual_permissions(target)  # safetensors creates 0600 files; everything else irepa writes is 0644
                files.append(target)
            for name, obj in (objects or {}).items():
                _check_name(name)
                target = tmp / f"{name}.pt"
                torch.save(obj, target)
                files.append(target)
            for name, text in (texts or {}).items():
                _check_name(name)
                target = tmp / name
                target.write_text(text)
                files.append(target)
            for file in files:
                _fsync_file(file)
            manifest = {
                "format": CHECKPOINT_FORMAT,
                "step": step,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "meta": dict(meta or {}),
                "files": {f.name: {"bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in files},
            }
            manifest_path = tmp / "manifest.json"
            manifest_path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
            _fsync_file(manifest_path)
            if final.exists():  # a checkpoint of the same step from an earlier attempt: replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(self.directory)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if is_write_failure(exc):
                previous = [s for s in self.steps() if s != step]
                kept = f"the previous checkpoint {self.path(previous[-1]).name} is intact" if previous else "none kept"
                raise CheckpointError(
                    f"could not write checkpoint {final} ({describe_write_failure(exc, self.directory)}); {kept}; "
                    "free disk space or fix the folder, then rerun the same command to resume"
                ) from exc
            raise
        self.prune()
        return final

    def quarantine(self, step: int) -> Path:
        """Rename a checkpoint that failed verification to ``corrupt-step-NNNNNNN``; returns the new path.

        The folder is kept for inspection but no longer listed, pruned or loaded.
        """
        target = self.directory / f"corrupt-{self.path(step).name}"
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        os.rename(self.path(step), target)
        return target

    def prune(self) -> list[int]:
        """Delete all but the newest ``keep_last`` checkpoints; returns the deleted steps."""
        steps = self.steps()
        doomed = steps[: max(0, len(steps) - self.keep_last)]
        for step in doomed:
            shutil.rmtree(self.path(step), ignore_errors=True)
        return doomed

    # ------------------------------------------------------------------------------------------------------------------
    # Loading

    def verify(self, step: int) -> dict[str, Any]:
        """Check the manifest, file sizes and hashes of the checkpoint at ``step``; returns the manifest.

        Raises:
            CheckpointError: Naming the first problem found (missing/unreadable manifest, missing, truncated or
                corrupt file).
        """
        folder = self.path(step)
        manifest_path = folder / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text())
        except FileNotFoundError as exc:
            raise CheckpointError(f"{folder.name}: manifest.json is missing (incomplete write)") from exc
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{folder.name}: manifest.json is unreadable ({exc})") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{folder.name}: manifest.json is not an {CHECKPOINT_FORMAT} manifest")
        if manifest.get("step") != step:
            raise CheckpointError(f"{folder.name}: manifest says step {manifest.get('step')}, folder says {step}")
        for name, info in manifest.get("files", {}).items():
            file = folder / name
            if not file.is_file():
                raise CheckpointError(f"{folder.name}: {name} is missing")
            size = file.stat().st_size
            if size != info["bytes"]:
                raise CheckpointError(
                    f"{folder.name}: {name} is truncated or altered ({size} bytes, expected {info['bytes']})"
                )
            if sha256_file(file) != info["sha256"]:
                raise CheckpointError(f"{folder.name}: {name} is corrupt (sha256 mismatch)")
        return manifest

    def load(self, step: int) -> LoadedCheckpoint:
        """Verify and read the checkpoint at ``step``.

        Raises:
            CheckpointError: If it fails verification or cannot be parsed.
        """
        from safetensors.torch import load_file

        manifest = self.verify(step)
        folder = self.path(step)
        tensors: dict[str, dict[str, torch.Tensor]] = {}
        objects: dict[str, Any] = {}
        texts: dict[str, str] = {}
        for name in manifest["files"]:
            file = folder / name
            try:
                if name.endswith(".safetensors"):
                    tensors[name.removesuffix(".safetensors")] = load_file(str(file))
                elif name.endswith(".pt"):
                    objects[name.removesuffix(".pt")] = torch.load(file, map_location="cpu", weights_only=True)
                else:
                    texts[name] = file.read_text()
            except Exception as exc:  # a parse failure of a hash-verified file: a foreign or unsafe file
                raise CheckpointError(f"{folder.name}: cannot read {name}: {first_line(exc)}") from exc
        return LoadedCheckpoint(step, folder, tensors, objects, texts, dict(manifest.get("meta", {})))

    def load_latest(self, *, warn: Callable[[str], None] | None = None) -> LoadedCheckpoint | None:
        """Load the newest readable checkpoint, falling back to older ones when the newest is corrupt.

        Args:
            warn: Called with one line for each checkpoint that was skipped (e.g. the logger's ``warning``).

        Returns:
            The loaded checkpoint, or ``None`` if the folder holds no checkpoint at all.

        Raises:
            CheckpointError: If checkpoints exist but none of them is readable (training does not silently start
                over).
        """
        steps = self.steps()
        problems = []
        for index, step in enumerate(reversed(steps)):
            try:
                loaded = self.load(step)
                loaded.skipped = steps[len(steps) - index :]
                return loaded
            except CheckpointError as exc:
                problems.append(str(exc))
                older = steps[len(steps) - index - 2] if index + 1 < len(steps) else None
                if warn is not None:
                    nxt = f"falling back to {self.path(older).name}" if older is not None else "no older checkpoint"
                    warn(f"checkpoint {exc}; {nxt}")
        if problems:
            raise CheckpointError(
                f"no readable checkpoint in {self.directory} ({'; '.join(problems)}); "
                "move the folder away to start over"
            )
        return None


def check_state_dict(
    module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str, *, max_names: int = 6
) -> None:
    """Raise a one-line :class:`CheckpointError` if ``state`` does not fit ``module`` (keys or shapes).

    Args:
        module: The module the state will be loaded into.
        state: The state dict to check.
        what: What is being loaded, for the message (e.g. ``"model from checkpoints/step-0000100"``).
        max_names: How many offending keys to name per category.
    """
    problem = state_dict_mismatch(module.state_dict(), state, limit=max_names)
    if problem:
        raise CheckpointError(
            f"{what} does not match the configured architecture ({problem}); "
            "use the config the checkpoint was trained with, or a new run directory"
        )
