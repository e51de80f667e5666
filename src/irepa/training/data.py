"""The data adapter of the trainer: stores → DataLoader → the model's clean input ``x0``.

Latent space and pixel space differ only here:

- ``latent``: the latent store's moments (mean ‖ std) give ``z = mean + std · ε`` (ε drawn by the trainer from its
  global-batch generator), normalized with ``data.latent_norm`` (``per-channel`` from the store's statistics, or
  ``sd-scalar`` 0.18215). The image store (joined by key) feeds the teacher.
- ``pixel``: uint8 images become ``x0 = image / 127.5 − 1`` in [−1, 1].

Order and position come from :class:`irepa.data.sampler.ResumableSampler` (one global stream; rank ``r`` takes the
positions ``r, r + W, ...`` of each global batch), advanced once per optimizer step and saved in checkpoints, so a
resumed run reads exactly the batches an uninterrupted one would. Stores are checked against the config
(``data.resolution``, ``data.vae``), and on resume against the fingerprints recorded in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from irepa.errors import IrepaError
from irepa.training.config import DataConfig

__all__ = ["TrainData", "inspect_data"]


def _require_store(path: str | None, what: str, key: str) -> Path:
    if not path:
        raise IrepaError(f"{what} is needed but {key} is not set; pass {key}=PATH (see docs/data.md)")
    store = Path(path)
    if not (store / "manifest.json").is_file():
        hint = "irepa data prepare" if key == "data.images" else "irepa data encode"
        from irepa.data.store import BUILD_NAME

        if (store / BUILD_NAME).is_file():  # a build that was interrupted (killed, full disk): resumable
            done = len(list(store.glob("shard-*.json")))
            raise IrepaError(
                f"{key}={path!r} is an incomplete data store ({done} shard(s) written, no manifest.json): its "
                f"`{hint}` did not finish; re-run that command with the same arguments to complete it"
            )
        raise IrepaError(
            f"{key}={path!r} is not a data store (no manifest.json there); create it with `{hint}` "
            "(docs/data.md) or fix the path"
        )
    return store


def _expected(cfg: DataConfig, kind: str) -> dict[str, Any]:
    expected: dict[str, Any] = {}
    if cfg.resolution is not None:
        expected["resolution"] = cfg.resolution
    if kind == "latents":
        if cfg.vae is not None:
            expected["vae.id"] = cfg.vae
        if cfg.flip:
            expected["flip"] = "also-flipped"
    return expected


def inspect_data(cfg: DataConfig, *, need_images: bool) -> dict[str, Any]:
    """Open the configured stores (manifests only), check them against the config and describe the model input.

    Returns:
        ``{"input_shape": (C, h, w), "image_size": (H, W), "num_classes": int, "count": int, "stores": {...}}``.

    Raises:
        IrepaError: Missing store, not a store, or a manifest that does not match the config (naming each field).
    """
    from irepa.data.store import check_store, open_store

    stores = {}
    if cfg.space == "pixel" or need_images:
        stores["images"] = open_store(_require_store(cfg.images, "an image store", "data.images"), kind="images")
    if cfg.space == "latent":
        stores["latents"] = open_store(_require_store(cfg.latents, "a latent store", "data.latents"), kind="latents")
    for kind, store in stores.items():
        check_store(store, _expected(cfg, kind))
    primary = stores.get("images") or stores["latents"]
    resolution = int(primary.manifest["resolution"])
    if cfg.space == "latent":
        input_shape = tuple(int(v) for v in stores["latents"].manifest["latent_shape"])
    else:
        input_shape = (3, resolution, resolution)
    return {
        "input_shape": input_shape,
        "image_size": (resolution, resolution),
        "num_classes": primary.num_classes,
        "count": primary.count,
        "stores": stores,
    }


def _ignore_stop_signals(worker_id: int) -> None:
    """Make a DataLoader worker ignore SIGINT and SIGTERM.

    A scheduler or Ctrl-C signals the whole process group; the main process must be able to finish its step and
    write a checkpoint with its workers still alive (they exit with it).
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _Batches:
    """The trainer's endless micro-batch iterator: a view of :class:`TrainData`, which owns the loader's iterator.

    It holds no reference to the DataLoader iterator itself, so :meth:`TrainData.close` really releases the workers
    even while this object is still referenced (e.g. by the frames of an exception's traceback).
    """

    def __init__(self, data: TrainData) -> None:
        self._data = data

    def __iter__(self) -> _Batches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return self._data.next_batch()


class TrainData:
    """Dataset, resumable sampler and loader of one training process, plus the ``x0`` conversion.

    Args:
        cfg: The ``data:`` config section.
        global_batch_size: Images per optimizer step over all processes.
        micro_batch_size: Images per process per micro-step (the DataLoader batch size).
        world_size: Number of processes.
        rank: This process's rank.
        seed: Seed of the data order and flips.
        device: Training device (pinned memory on CUDA).
        need_images: The teacher needs the images (alignment on).
    """

    def __init__(
        self,
        cfg: DataConfig,
        *,
        global_batch_size: int,
        micro_batch_size: int,
        world_size: int,
        rank: int,
        seed: int,
        device: torch.device,
        need_images: bool,
    ) -> None:
        from irepa.data.datasets import StoreDataset
        from irepa.data.latents import latent_normalization
        from irepa.data.sampler import ResumableSampler

        self.cfg = cfg
        self.space = cfg.space
        self.device = device
        self.micro_batch_size = micro_batch_size
        info = inspect_data(cfg, need_images=need_images)
        self.stores = info["stores"]
        self.input_shape: tuple[int, int, int] = info["input_shape"]
        self.image_size: tuple[int, int] = info["image_size"]
        self.num_classes: int = info["num_classes"]
        self.dataset = StoreDataset(
            self.stores.get("images"), self.stores.get("latents"), flip="random" if cfg.flip else "none", seed=seed
        )
        self.sampler = ResumableSampler(
            len(self.dataset),
            global_batch_size=global_batch_size,
            world_size=world_size,
            rank=rank,
            seed=seed,
            with_epoch=True,
        )
        self.normalization = (
            latent_normalization(cfg.latent_norm, self.stores["latents"]) if self.space == "latent" else None
        )
        self._batches: Iterator[dict[str, torch.Tensor]] | None = None

    # -- description ---------------------------------------------------------------------------------------------------

    def describe(self) -> str:
        """One line for the start-up summary."""
        parts = [f"{len(self.dataset)} images, {self.num_classes} classes, {self.space} space {self.input_shape}"]
        for kind, store in self.stores.items():
            parts.append(f"{kind} {store.path}")
        if self.normalization is not None:
            parts.append(f"latent norm {self.normalization.kind}")
        parts.append(f"epoch {self.sampler.epoch}, {self.sampler.batches_per_epoch} steps/epoch")
        return "; ".join(parts)

    def space_metadata(self) -> dict[str, Any]:
        """The ``space`` entry of inference snapshots (how to turn model outputs back into images)."""
        meta: dict[str, Any] = {
            "kind": self.space,
            "channels": self.input_shape[0],
            "size": list(self.input_shape[1:]),
            "image_size": list(self.image_size),
        }
        if self.space == "latent":
            vae = self.stores["latents"].manifest.get("vae", {})
            meta["vae"] = vae.get("id")
            meta["vae_revision"] = vae.get("revision")
            meta["normalization"] = self.normalization.to_dict()
        else:
            meta["vae"] = None
            # x = u8 / 127.5 - 1; images are recovered as u8 = round((x + 1) * 127.5), clamped to [0, 255].
            meta["normalization"] = {"kind": "pixel-[-1,1]", "scale": 1 / 127.5, "bias": 127.5}
        return meta

    def fingerprints(self) -> dict[str, str]:
        """Content fingerprints of the stores in use (recorded in checkpoints)."""
        return {kind: store.fingerprint for kind, store in self.stores.items()}

    # -- iteration -----------------------------------------------------------------------------------------------------

    def iterator(self) -> Iterator[dict[str, torch.Tensor]]:
        """An endless iterator of micro-batches from the sampler's current position."""
        from torch.utils.data import DataLoader

        self.close()
        workers = self.cfg.num_workers
        loader = DataLoader(
            self.dataset,
            batch_size=self.micro_batch_size,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None,
            drop_last=False,
            worker_init_fn=_ignore_stop_signals if workers > 0 else None,
        )
        self._batches = iter(loader)
        return _Batches(self)

    def next_batch(self) -> dict[str, torch.Tensor]:
        """The next micro-batch (CPU tensors, pinned on CUDA).

        Raises:
            IrepaError: The data was closed (no :meth:`iterator` open), or a store could not be read (an ``OSError``
                in this process or in a DataLoader worker: a damaged shard, a lost network mount).
        """
        if self._batches is None:
            raise IrepaError("the training data was closed; call TrainData.iterator() again before reading batches")
        try:
            return next(self._batches)
        except OSError as exc:
            # A worker's exception arrives as its whole traceback; the original error is its last line.
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            cause = lines[-1] if lines else type(exc).__name__
            if not cause.startswith(type(exc).__name__):
                cause = f"{type(exc).__name__}: {cause}"
            where = " in a DataLoader worker" if "DataLoader worker" in str(exc) else ""
            stores = ", ".join(str(store.path) for store in self.stores.values())
            raise IrepaError(
                f"reading a training batch failed{where} ({cause}); check the store with `irepa data info "
                f"STORE --verify` (stores: {stores}) and rerun the same command to resume"
            ) from exc

    def close(self) -> None:
        """Shut the worker processes down now and drop the loader (idempotent).

        Called on every exit path of the trainer, the failing ones included. Dropping the last reference is not
        enough there: the traceback of an exception keeps the frames that hold the iterator alive, and the
        interpreter then waits at exit for workers that nobody stops (the run hangs after printing its error).
        """
        batches, self._batches = self._batches, None
        # DataLoader has no public shutdown; its multi-process iterator's own (idempotent) one is what __del__ calls.
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def advance(self, num_samples: int) -> None:
        """Record ``num_samples`` global samples as consumed (once per optimizer step)."""
        self.sampler.advance(num_samples)

    def model_input(self, batch: dict[str, torch.Tensor], eps: torch.Tensor | None) -> torch.Tensor:
        """Clean model input ``x0`` (B, C, h, w) float32 from a micro-batch on the device.

        Args:
            batch: The DataLoader's dict (``moments`` in latent space, ``image`` in pixel space).
            eps: Standard normal (B, C, h, w) for sampling latents from their moments (latent space only).
        """
        if self.space == "latent":
            from irepa.data.latents import sample_latents

            return self.normalization.normalize(sample_latents(batch["moments"], noise=eps))
        return batch["image"].float() / 127.5 - 1.0

    # -- state ---------------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Sampler position and store fingerprints."""
        return {"sampler": self.sampler.state_dict(), "fingerprints": self.fingerprints()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position, refusing stores whose content changed since the checkpoint.

        Raises:
            IrepaError: A store's fingerprint differs, or the data stream settings differ.
        """
        saved = state.get("fingerprints", {})
        for kind, fingerprint in self.fingerprints().items():
            if kind in saved and saved[kind] != fingerprint:
                raise IrepaError(
                    f"the {kind} store {self.stores[kind].path} is not the one this run was trained on (content "
                    "fingerprint differs); point data.images/data.latents at the original store or start a new run"
                )
        self.sampler.load_state_dict(state["sampler"])
