"""A resumable, deterministic distributed sampler: the data order is a pure function of (seed, position).

The sampler defines one infinite *global stream* of dataset indices, cut into epochs::

    epoch e          = a seeded permutation of range(num_samples), truncated to `samples_per_epoch`
    samples_per_epoch = num_samples rounded down to a multiple of global_batch_size   (drop_last=True, default)
                      = num_samples                                                  (drop_last=False)
    global batch k   = stream positions [k·G, (k+1)·G)        (G = global_batch_size)

With ``drop_last=True`` a global batch never straddles two epochs, so it never repeats an image. Rank ``r`` of
``W`` takes the stream positions ``p`` with ``p % W == r`` (strided, like ``torch.utils.data.DistributedSampler``);
since ``G % W == 0``, global batch ``k`` is the same *set* of samples for any world size: rank ``r`` holds its
positions ``k·G + r, k·G + r + W, ...`` (G / W of them, its per-device batch, or A micro-batches of G / (W·A) with
gradient accumulation). So a run may resume on a different number of devices and still see the same global
batches.

Exact resume: the sampler's state is the number of global samples consumed (``consumed``, a multiple of the world
size; normally the trainer's ``nimg``). The trainer calls :meth:`ResumableSampler.advance` once per optimizer step,
saves :meth:`~ResumableSampler.state_dict` in its checkpoint and restores it with
:meth:`~ResumableSampler.load_state_dict` before creating the DataLoader iterator; the first batch after resume is
then exactly the batch an uninterrupted run would have drawn next. (The sampler cannot count consumption itself:
DataLoader workers prefetch indices ahead of training.)

The permutation does not use torch's or numpy's random streams, whose algorithms may change between versions: the
order of epoch ``e`` is ``argsort(counter_hash((PERMUTATION, seed, e), arange(n)))`` with a SplitMix64-style
integer hash (:func:`counter_hash`), so a data order is reproducible with any library version, on any platform.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from irepa.errors import IrepaError

__all__ = ["FLIP_DOMAIN", "PERMUTATION_DOMAIN", "ResumableSampler", "counter_hash"]

SAMPLER_FORMAT = "irepa-sampler/1"
#: Domain-separation words of :func:`counter_hash`, so the flip coin is independent of the data order.
PERMUTATION_DOMAIN = 1
FLIP_DOMAIN = 2

_U64_MASK = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer: a bijective avalanche mix of uint64 values (wrap-around arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def counter_hash(key: Sequence[int], counters: np.ndarray | Sequence[int]) -> np.ndarray:
    """Deterministic 64-bit hashes of ``(key, counter)`` for an array of counters.

    A counter-based pseudo-random function: the value for counter ``i`` depends only on ``key`` and ``i``, so any
    element can be recomputed on its own (a DataLoader worker deciding a flip, a resumed run rebuilding an epoch).

    Args:
        key: Non-negative integers below 2**64 (e.g. ``(domain, seed, epoch)``).
        counters: Non-negative integers, any shape.

    Returns:
        uint64 array with the shape of ``counters``.
    """
    with np.errstate(over="ignore"):
        state = np.zeros(1, dtype=np.uint64)
        for word in key:
            if not 0 <= int(word) <= _U64_MASK:
                raise IrepaError(f"hash key word {word} is out of range; seeds must be integers in [0, 2**64)")
            state = _mix64(state ^ _mix64(np.array([int(word)], dtype=np.uint64) + _GOLDEN))
        values = np.asarray(counters, dtype=np.uint64)
        return _mix64(state ^ _mix64(values + _GOLDEN)).reshape(values.shape)


class ResumableSampler(Sampler[int]):
    """Infinite, seeded, distributed sampler with exact resume (see the module docstring for the stream layout).

    Iterating yields this rank's dataset indices (``int``) from the current position on, forever; with
    ``with_epoch=True`` it yields ``(epoch, index)`` pairs instead, which :class:`irepa.data.datasets.StoreDataset`
    uses to pick a flip from (seed, epoch, index) even in persistent DataLoader workers.

    Args:
        num_samples: Dataset size.
        global_batch_size: Samples per optimizer step over all ranks (and accumulation micro-steps).
        world_size: Number of ranks; must divide ``global_batch_size``.
        rank: This process's rank in ``[0, world_size)``.
        seed: Non-negative seed of the permutations.
        shuffle: Permute each epoch (``False``: every epoch is ``0, 1, ..., n-1``).
        drop_last: Drop the last partial global batch of each epoch (so no global batch spans two epochs).
        with_epoch: Yield ``(epoch, index)`` pairs instead of indices.

    Example:
        >>> s = ResumableSampler(10, global_batch_size=4, world_size=2, rank=1, seed=0)
        >>> it = iter(s); first = [next(it) for _ in range(4)]
        >>> s.advance(4); state = s.state_dict()
        >>> t = ResumableSampler(10, global_batch_size=4, world_size=2, rank=1, seed=0)
        >>> t.load_state_dict(state); next(iter(t)) == first[2]
        True
    """

    def __init__(
        self,
        num_samples: int,
        *,
        global_batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        with_epoch: bool = False,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise IrepaError(f"sampler rank {rank} is not in [0, world_size={world_size})")
        if global_batch_size < 1 or global_batch_size % world_size:
            raise IrepaError(
                f"global batch size {global_batch_size} is not divisible by the world size {world_size}; "
                "pick a global batch size that is a multiple of the number of processes"
            )
        if num_samples < 1:
            raise IrepaError("the dataset is empty; the sampler needs at least one sample")
        if drop_last and num_samples < global_batch_size:
            raise IrepaError(
                f"the dataset has {num_samples} samples, fewer than one global batch of {global_batch_size}; "
                "use a smaller batch or more data"
            )
        if not 0 <= seed <= _U64_MASK:
            raise IrepaError(f"sampler seed {seed} must be an integer in [0, 2**64)")
        self.num_samples = int(num_samples)
        self.global_batch_size = int(global_batch_size)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.with_epoch = bool(with_epoch)
        self.consumed = 0
        self._cache: tuple[int, np.ndarray] | None = None

    # ------------------------------------------------------------------------------------------------------------------
    # Stream geometry

    @property
    def samples_per_epoch(self) -> int:
        """Stream positions per epoch (``num_samples``, rounded down to whole global batches with ``drop_last``)."""
        if self.drop_last:
            return self.num_samples - self.num_samples % self.global_batch_size
        return self.num_samples

    @property
    def batches_per_epoch(self) -> int:
        """Whole global batches per epoch."""
        return self.samples_per_epoch // self.global_batch_size

    @property
    def epoch(self) -> int:
        """The epoch of the next sample to be drawn."""
        return self.consumed // self.samples_per_epoch

    def permutation(self, epoch: int) -> np.ndarray:
        """Dataset indices of ``epoch`` in stream order, shape ``(samples_per_epoch,)`` int64."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        n = self.num_samples
        if self.shuffle:
            order = np.argsort(counter_hash((PERMUTATION_DOMAIN, self.seed, epoch), np.arange(n)), kind="stable")
        else:
            order = np.arange(n)
        order = order[: self.samples_per_epoch].astype(np.int64)
        self._cache = (epoch, order)
        return order

    def global_batch(self, step: int) -> np.ndarray:
        """Dataset indices of global batch ``step`` (all ranks), in stream order; for inspection and tests."""
        start = step * self.global_batch_size
        out = np.empty(self.global_batch_size, dtype=np.int64)
        for j in range(self.global_batch_size):
            epoch, offset = divmod(start + j, self.samples_per_epoch)
            out[j] = self.permutation(epoch)[offset]
        return out

    # ------------------------------------------------------------------------------------------------------------------
    # Iteration and state

    def __iter__(self) -> Iterator[Any]:
        position = self.consumed + self.rank
        length = self.samples_per_epoch
        while True:
            epoch, offset = divmod(position, length)
            chunk = self.permutation(epoch)[offset :: self.world_size]
            for index in chunk.tolist():
                yield (epoch, index) if self.with_epoch else index
            position += len(chunk) * self.world_size

    def advance(self, num_samples: int | None = None) -> None:
        """Record that ``num_samples`` global samples were consumed (default: one global batch)."""
        n = self.global_batch_size if num_samples is None else int(num_samples)
        if n < 0 or n % self.world_size:
            raise IrepaError(
                f"cannot advance the sampler by {n} samples: not a multiple of world size {self.world_size}"
            )
        self.consumed += n

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state: the position and the settings that define the stream (not the rank or world size)."""
        return {
            "format": SAMPLER_FORMAT,
            "consumed": self.consumed,
            "num_samples": self.num_samples,
            "global_batch_size": self.global_batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the position; refuse a state whose stream differs (seed, dataset size, batch size, ...).

        The world size may differ from the run that saved the state: the global batches are the same.

        Raises:
            IrepaError: Naming each differing setting and the fix.
        """
        if state.get("format") != SAMPLER_FORMAT:
            raise IrepaError(f"sampler state has format {state.get('format')!r}, expected {SAMPLER_FORMAT!r}")
        diffs = [
            f"{name} saved {state.get(name)!r}, now {getattr(self, name)!r}"
            for name in ("num_samples", "global_batch_size", "seed", "shuffle", "drop_last")
            if state.get(name) != getattr(self, name)
        ]
        if diffs:
            raise IrepaError(
                "cannot resume the data order: " + "; ".join(diffs) + " (resume with the same data, seed and global "
                "batch size, or start a new run)"
            )
        consumed = int(state["consumed"])
        if consumed < 0 or consumed % self.world_size:
            raise IrepaError(
                f"sampler state consumed={consumed} is not a multiple of the world size {self.world_size}; "
                "resume on a number of processes that divides the global batch size"
            )
        self.consumed = consumed
