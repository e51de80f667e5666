"""The training dataset: an image store and/or a latent store, joined by key, with a deterministic flip policy.

Three modes, one class:
- images only: pixel-space training (and the teacher's input);
- images + latents: latent-space training with REPA/iREPA (images for the teacher, moments for the model);
- latents only: latent-space training without alignment (labels come from the latent store).

Each item is a dict of tensors (default ``collate`` stacks them)::

    image    uint8 (3, H, W)       when an image store is given
    mask     bool  (H, W)          with masks=True (stores that have masks, e.g. synthetic data)
    moments  float32 (2C, h, w)    mean ‖ std, when a latent store is given (draw z with irepa.data.latents)
    label    int64 ()              class label (0 for unlabelled stores)
    index    int64 ()              position in the dataset (the image store's order when there is one)
    flipped  bool ()               whether this item was horizontally flipped

Flip policy: ``flip="none"`` (REPA/iREPA/REPA-E: latents are pre-encoded once, never flipped) or ``"random"``: item
``i`` of epoch ``e`` is flipped iff ``counter_hash((FLIP_DOMAIN, seed, e), i)`` is odd, a fair coin that any worker
recomputes without shared state. With a latent store the flipped image comes with the *flipped latents*
(``moments_flip``, stored by ``irepa data encode --flip``), never a flipped latent tensor (the VAE is not
flip-equivariant). The epoch comes from ``(epoch, index)`` items (``ResumableSampler(with_epoch=True)``, correct
even in persistent DataLoader workers) or from :meth:`StoreDataset.set_epoch` for plain integer indices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from irepa.data.sampler import FLIP_DOMAIN, counter_hash
from irepa.data.store import Store, open_store
from irepa.errors import IrepaError

__all__ = ["FLIP_POLICIES", "StoreDataset"]

FLIP_POLICIES = ("none", "random")


def _examples(keys: list[str], limit: int = 3) -> str:
    return ", ".join(repr(k) for k in keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


class StoreDataset(Dataset):
    """Map-style dataset over stores (see the module docstring).

    Args:
        images: Image store (path or :class:`~irepa.data.store.Store`), or None for latents-only training.
        latents: Latent store, or None for pixel-space training.
        flip: ``"none"`` or ``"random"``.
        seed: Seed of the flip coin.
        masks: Also return the image store's foreground masks.

    Raises:
        IrepaError: No store given; a key present in one store and missing from the other (naming it); a latent
            store encoded from another image store; ``flip="random"`` with latents encoded without ``--flip``;
            ``masks=True`` with a store that has none.
    """

    def __init__(
        self,
        images: str | Path | Store | None = None,
        latents: str | Path | Store | None = None,
        *,
        flip: str = "none",
        seed: int = 0,
        masks: bool = False,
    ) -> None:
        if images is None and latents is None:
            raise IrepaError("a training dataset needs an image store, a latent store, or both")
        if flip not in FLIP_POLICIES:
            raise IrepaError(f"flip policy {flip!r} is not one of {', '.join(FLIP_POLICIES)}")
        self.image_store = _open(images, "images")
        self.latent_store = _open(latents, "latents")
        self.flip = flip
        self.seed = int(seed)
        self.masks = bool(masks)
        self.epoch = 0
        if self.latent_store is not None and flip == "random" and not self.latent_store.has_field("moments_flip"):
            raise IrepaError(
                f"latent store {str(self.latent_store.path)!r} was encoded without flipped latents (flip "
                f"{self.latent_store.manifest.get('flip')!r}); re-run `irepa data encode --flip`, or train with "
                "flip none"
            )
        if masks and (self.image_store is None or not self.image_store.has_field("masks")):
            where = f"image store {str(self.image_store.path)!r}" if self.image_store else "a latents-only dataset"
            raise IrepaError(f"masks were requested but {where} has none (only synthetic stores carry masks)")
        self._latent_index: np.ndarray | None = None
        if self.image_store is not None and self.latent_store is not None:
            self._latent_index = _join(self.image_store, self.latent_store)
        primary = self.image_store if self.image_store is not None else self.latent_store
        assert primary is not None
        self._length = primary.count

    # -- description ---------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._length

    @property
    def primary(self) -> Store:
        """The store whose order defines the dataset's indices (the image store when there is one)."""
        store = self.image_store if self.image_store is not None else self.latent_store
        assert store is not None
        return store

    @property
    def num_classes(self) -> int:
        """Number of classes (1 for unlabelled data)."""
        return self.primary.num_classes

    @property
    def class_names(self) -> list[str] | None:
        """Class names by label, or None."""
        return self.primary.class_names

    @property
    def resolution(self) -> int:
        """Image side length in pixels."""
        return int(self.primary.manifest["resolution"])

    @property
    def latent_shape(self) -> tuple[int, int, int] | None:
        """``(C, h, w)`` of the latents, or None without a latent store."""
        if self.latent_store is None:
            return None
        return tuple(self.latent_store.manifest["latent_shape"])  # type: ignore[return-value]

    # -- flips ---------------------------------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer indices (``(epoch, index)`` items carry their own)."""
        self.epoch = int(epoch)

    def flips(self, epoch: int, indices: np.ndarray | list[int]) -> np.ndarray:
        """Whether items ``indices`` of ``epoch`` are flipped, bool array (all False with ``flip="none"``)."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.flip == "none":
            return np.zeros(indices.shape, dtype=bool)
        return (counter_hash((FLIP_DOMAIN, self.seed, epoch), indices) & np.uint64(1)).astype(bool)

    # -- items ---------------------------------------------------------------------------------------------------------

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        if isinstance(item, (tuple, list)):
            epoch, index = int(item[0]), int(item[1])
        else:
            epoch, index = self.epoch, int(item)
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} out of range for a dataset of {self._length}")
        flipped = bool(self.flips(epoch, [index])[0])
        out: dict[str, torch.Tensor] = {}
        if self.image_store is not None:
            image = self.image_store.read("images", index, copy=False)  # (H, W, 3) view of the map
            if flipped:
                image = image[:, ::-1]
            # One copy: flip and HWC -> CHW together (numpy's strided copy is ~3x faster than torch's here).
            out["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
            if self.masks:
                mask = self.image_store.read("masks", index, copy=False)
                out["mask"] = torch.from_numpy(np.ascontiguousarray(mask[:, ::-1] if flipped else mask))
            label = self.image_store.read("labels", index)
        if self.latent_store is not None:
            latent_index = index if self._latent_index is None else int(self._latent_index[index])
            field = "moments_flip" if flipped else "moments"
            moments = self.latent_store.read(field, latent_index, copy=False)
            out["moments"] = torch.from_numpy(np.array(moments, dtype=np.float32))
            if self.image_store is None:
                label = self.latent_store.read("labels", latent_index)
        out["label"] = torch.tensor(int(label), dtype=torch.int64)
        out["index"] = torch.tensor(index, dtype=torch.int64)
        out["flipped"] = torch.tensor(flipped)
        return out


def _open(store: str | Path | Store | None, kind: str) -> Store | None:
    if store is None or isinstance(store, Store):
        if isinstance(store, Store) and store.kind != kind:
            raise IrepaError(f"{str(store.path)!r} is a {store.kind} store, expected a {kind} store")
        return store
    return open_store(store, kind=kind)


def _join(images: Store, latents: Store) -> np.ndarray:
    """For each image record, the index of the latent record with the same key (refusing any mismatch)."""
    image_keys = images.keys()
    latent_position = {key: i for i, key in enumerate(latents.keys())}
    index = np.empty(len(image_keys), dtype=np.int64)
    missing = []
    for i, key in enumerate(image_keys):
        j = latent_position.pop(key, None)
        if j is None:
            missing.append(key)
        else:
            index[i] = j
    fix = f"re-run `irepa data encode --store {images.path} --out NEW_LATENTS` and train on NEW_LATENTS"
    if missing:
        raise IrepaError(
            f"latent store {str(latents.path)!r} has no latents for {len(missing)} of the {len(image_keys)} images of "
            f"image store {str(images.path)!r} ({_examples(missing)}); {fix}"
        )
    if latent_position:
        extra = sorted(latent_position)
        raise IrepaError(
            f"latent store {str(latents.path)!r} has {len(extra)} keys that image store {str(images.path)!r} lacks "
            f"({_examples(extra)}), so it was encoded from another image store; {fix}"
        )
    source = latents.manifest.get("source", {}).get("fingerprint")
    if source != images.fingerprint:
        raise IrepaError(
            f"latent store {str(latents.path)!r} was encoded from another version of image store "
            f"{str(images.path)!r} (fingerprint {str(source)[:12]} vs {images.fingerprint[:12]}); {fix}"
        )
    return index
