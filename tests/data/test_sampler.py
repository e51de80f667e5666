import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

from irepa.data.sampler import ResumableSampler, counter_hash
from irepa.errors import IrepaError


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def _splitmix_reference(key, counter):
    """Pure-Python SplitMix64 mix, an independent re-implementation of counter_hash with Python ints."""
    mask = (1 << 64) - 1

    def mix(x):
        x ^= x >> 30
        x = (x * 0xBF58476D1CE4E5B9) & mask
        x ^= x >> 27
        x = (x * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    state = 0
    for word in key:
        state = mix(state ^ mix((word + 0x9E3779B97F4A7C15) & mask))
    return mix(state ^ mix((counter + 0x9E3779B97F4A7C15) & mask))


def test_counter_hash_matches_python_reference_and_is_pinned():
    counters = np.arange(5)
    got = counter_hash((1, 7, 3), counters)
    assert got.dtype == np.uint64
    assert [int(v) for v in got] == [_splitmix_reference((1, 7, 3), i) for i in range(5)]
    # Pinned: the data order of seed 0, epoch 0 must never change between irepa or library versions.
    sampler = ResumableSampler(10, global_batch_size=2, seed=0)
    assert (
        sampler.permutation(0).tolist()
        == np.argsort([_splitmix_reference((1, 0, 0), i) for i in range(10)], kind="stable").tolist()
    )
    with pytest.raises(IrepaError, match="out of range"):
        counter_hash((-1,), [0])


def test_permutation_per_epoch_and_seed():
    s = ResumableSampler(100, global_batch_size=10, seed=3)
    p0, p1 = s.permutation(0), s.permutation(1)
    assert sorted(p0.tolist()) == list(range(100)) and sorted(p1.tolist()) == list(range(100))
    assert p0.tolist() != p1.tolist()
    assert ResumableSampler(100, global_batch_size=10, seed=4).permutation(0).tolist() != p0.tolist()
    assert ResumableSampler(100, global_batch_size=10, shuffle=False).permutation(5).tolist() == list(range(100))


def test_drop_last_epoch_length_and_no_duplicates_within_a_global_batch():
    s = ResumableSampler(10, global_batch_size=4, seed=0)
    assert s.samples_per_epoch == 8 and s.batches_per_epoch == 2
    stream = _take(s, 24)  # three epochs
    for k in range(6):
        batch = stream[4 * k : 4 * k + 4]
        assert len(set(batch)) == 4
    assert stream[:8] == s.permutation(0).tolist() and stream[8:16] == s.permutation(1).tolist()
    keep = ResumableSampler(10, global_batch_size=4, seed=0, drop_last=False)
    assert keep.samples_per_epoch == 10
    assert _take(keep, 20) == keep.permutation(0).tolist() + keep.permutation(1).tolist()


@pytest.mark.parametrize("world", [1, 2, 4])
def test_rank_split_gives_the_same_global_batches_for_any_world_size(world):
    n, global_batch, steps = 23, 8, 7
    reference = ResumableSampler(n, global_batch_size=global_batch, seed=5)
    per_rank = [
        _take(
            ResumableSampler(n, global_batch_size=global_batch, world_size=world, rank=r, seed=5),
            steps * global_batch // world,
        )
        for r in range(world)
    ]
    local = global_batch // world
    for k in range(steps):
        union = sorted(i for r in range(world) for i in per_rank[r][k * local : (k + 1) * local])
        assert union == sorted(reference.global_batch(k).tolist())
    # Strided assignment: rank r holds positions k*G + r, k*G + r + W, ...
    stream = _take(reference, steps * global_batch)
    for r in range(world):
        assert per_rank[r] == stream[r::world]


@pytest.mark.parametrize(("world_before", "world_after"), [(1, 1), (2, 2), (2, 4), (4, 1)])
def test_resume_equals_uninterrupted(world_before, world_after):
    n, global_batch, total_steps, stop = 37, 8, 12, 5  # crosses epoch boundaries (4 batches per epoch)

    def run(world, start_state, steps):
        samplers = [
            ResumableSampler(n, global_batch_size=global_batch, world_size=world, rank=r, seed=11) for r in range(world)
        ]
        if start_state is not None:
            for s in samplers:
                s.load_state_dict(start_state)
        iters = [iter(s) for s in samplers]
        batches = []
        for _ in range(steps):
            batch = sorted(i for it in iters for i in itertools.islice(it, global_batch // world))
            batches.append(batch)
            for s in samplers:
                s.advance()
        return batches, samplers[0].state_dict()

    uninterrupted, _ = run(1, None, total_steps)
    first, state = run(world_before, None, stop)
    assert state["consumed"] == stop * global_batch
    second, _ = run(world_after, state, total_steps - stop)
    assert first + second == uninterrupted


def test_state_validation():
    s = ResumableSampler(20, global_batch_size=4, seed=1)
    s.advance(8)
    state = s.state_dict()
    for change, message in [({"seed": 2}, "seed saved 1, now 2"), ({"global_batch_size": 2}, "global_batch_size")]:
        kwargs = {"global_batch_size": 4, "seed": 1, **change}
        with pytest.raises(IrepaError, match=message):
            ResumableSampler(20, **kwargs).load_state_dict(state)
    with pytest.raises(IrepaError, match="num_samples saved 20, now 21"):
        ResumableSampler(21, global_batch_size=4, seed=1).load_state_dict(state)
    odd = dict(state, consumed=6)
    with pytest.raises(IrepaError, match="not a multiple of the world size"):
        ResumableSampler(20, global_batch_size=4, world_size=4, rank=0, seed=1).load_state_dict(odd)
    with pytest.raises(IrepaError, match="format"):
        s.load_state_dict({"consumed": 0})
    t = ResumableSampler(20, global_batch_size=4, seed=1)
    t.load_state_dict(state)
    assert t.consumed == 8 and t.epoch == 0
    t.advance(12)
    assert t.epoch == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 10, "global_batch_size": 6, "world_size": 4}, "not divisible by the world size 4"),
        ({"num_samples": 3, "global_batch_size": 4}, "fewer than one global batch"),
        ({"num_samples": 10, "global_batch_size": 4, "world_size": 2, "rank": 2}, "rank 2 is not in"),
        ({"num_samples": 0, "global_batch_size": 4, "drop_last": False}, "empty"),
        ({"num_samples": 10, "global_batch_size": 4, "seed": -1}, "seed -1"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(IrepaError, match=message):
        ResumableSampler(**kwargs)


class _Echo(Dataset):
    def __len__(self):
        return 30

    def __getitem__(self, item):
        epoch, index = item
        return torch.tensor([epoch, index])


def test_dataloader_with_epoch_pairs_and_workers():
    def batches(workers):
        sampler = ResumableSampler(30, global_batch_size=8, seed=2, with_epoch=True)
        loader = DataLoader(_Echo(), batch_size=8, sampler=sampler, num_workers=workers)
        return [b.tolist() for b in itertools.islice(iter(loader), 5)]

    plain = batches(0)
    assert plain == batches(2)
    assert [row[0] for row in plain[3]] == [1] * 8  # the 4th global batch is the first of epoch 1 (3 per epoch)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 60),
    local=st.integers(1, 4),
    world=st.sampled_from([1, 2, 3]),
    seed=st.integers(0, 2**64 - 1),
    drop_last=st.booleans(),
)
def test_property_every_epoch_is_a_permutation_prefix(n, local, world, seed, drop_last):
    global_batch = local * world
    if drop_last and n < global_batch:
        return
    s = ResumableSampler(n, global_batch_size=global_batch, world_size=1, seed=seed, drop_last=drop_last)
    stream = _take(s, 2 * s.samples_per_epoch)
    length = s.samples_per_epoch
    assert len(set(stream[:length])) == length and len(set(stream[length:])) == length
    ranks = [
        _take(
            ResumableSampler(
                n, global_batch_size=global_batch, world_size=world, rank=r, seed=seed, drop_last=drop_last
            ),
            len(stream) // world,
        )
        for r in range(world)
    ]
    merged = [ranks[p % world][p // world] for p in range(len(ranks[0]) * world)]
    assert merged == stream[: len(merged)]
