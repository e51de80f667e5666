"""``teacher.cache_targets``: each sample's targets computed once, bit-identical training, bounded memory."""

from __future__ import annotations

import pytest
import torch

from irepa.errors import IrepaError
from irepa.training import alignment
from irepa.training.alignment import TargetCache
from irepa.training.config import resolve_config
from irepa.training.teacher import Teacher
from irepa.training.trainer import Trainer


def test_cache_returns_stored_rows_in_batch_order_and_only_complete_batches():
    cache = TargetCache(10, {"a": (4, 3), "b": (4, 2)}, flips=False)
    index = torch.tensor([7, 2, 5])
    targets = {"a": torch.randn(3, 4, 3), "b": torch.randn(3, 4, 2)}
    assert cache.get(index, None, torch.device("cpu")) is None
    cache.put(index, None, targets)
    assert len(cache) == 3 and cache.capacity_bytes == TargetCache.nbytes(10, {"a": (4, 3), "b": (4, 2)}, flips=False)
    got = cache.get(torch.tensor([5, 7]), None, torch.device("cpu"))
    assert torch.equal(got["a"], targets["a"][[2, 0]]) and torch.equal(got["b"], targets["b"][[2, 0]])
    assert cache.get(torch.tensor([5, 3]), None, torch.device("cpu")) is None  # 3 was never stored


def test_flipped_and_unflipped_samples_have_their_own_slots():
    cache = TargetCache(4, {"a": (2, 2)}, flips=True)
    plain, flipped = torch.zeros(1, 2, 2), torch.ones(1, 2, 2)
    cache.put(torch.tensor([1]), torch.tensor([False]), {"a": plain})
    assert cache.get(torch.tensor([1]), torch.tensor([True]), torch.device("cpu")) is None
    cache.put(torch.tensor([1]), torch.tensor([True]), {"a": flipped})
    assert torch.equal(cache.get(torch.tensor([1]), torch.tensor([True]), torch.device("cpu"))["a"], flipped)
    assert torch.equal(cache.get(torch.tensor([1]), torch.tensor([False]), torch.device("cpu"))["a"], plain)
    assert TargetCache.nbytes(4, {"a": (2, 2)}, flips=True) == 2 * TargetCache.nbytes(4, {"a": (2, 2)}, flips=False)


def _overrides(pixel_store, pixel_overrides, *extra):
    # The demo's packaged ViT (a real timm network, offline) on the 32 px store: 8x8 tokens, like the SiT-S/4.
    # 64 images, batch 8: one epoch is 8 steps.
    return pixel_overrides(
        pixel_store,
        "align.encoders=[irepa-demo-vit]",
        "teacher.resolution=null",
        "teacher.offline=true",
        "train.checkpoint_every_steps=0",
        *extra,
    )


def final_state(run_dir, step):
    """Every tensor of the checkpoint at ``step``: weights, EMA, aligner and AdamW moments."""
    from safetensors.torch import load_file

    folder = run_dir / "checkpoints" / f"step-{step:07d}"
    out = {f"{f.stem}/{k}": v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}
    optim = torch.load(folder / "optimizer.main.pt", weights_only=True)
    for index, state in optim["state"].items():
        out.update({f"optim/{index}/{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)})
    return out


def assert_identical(a, b):
    assert a.keys() == b.keys() and len(a) > 10
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _count_teacher_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    forward = Teacher.forward

    def counted(self, images, autocast=None):
        calls.append(len(images))
        return forward(self, images, autocast)

    monkeypatch.setattr(Teacher, "forward", counted)
    return calls


@pytest.mark.parametrize("flip", [False, True])
def test_cached_run_is_bit_identical_and_skips_the_teacher_after_an_epoch(
    tmp_path, pixel_store, pixel_overrides, monkeypatch, flip
):
    overrides = _overrides(pixel_store, pixel_overrides, "train.max_steps=20", f"data.flip={str(flip).lower()}")
    calls = _count_teacher_calls(monkeypatch)
    Trainer(resolve_config(overrides=overrides), tmp_path / "plain").fit()
    plain_calls, calls[:] = len(calls), []
    trainer = Trainer(resolve_config(overrides=[*overrides, "teacher.cache_targets=true"]), tmp_path / "cached")
    trainer.fit()
    assert plain_calls == 20
    if flip:  # a sample's other flip is first drawn in a later epoch: the teacher still runs then, less and less
        assert 8 <= len(calls) < 20 and len(trainer.alignment.cache) > 64
    else:
        assert len(calls) == 8 and len(trainer.alignment.cache) == 64  # the first epoch only
    assert_identical(final_state(tmp_path / "plain", 20), final_state(tmp_path / "cached", 20))


def test_resume_refills_the_cache_and_stays_exact(tmp_path, pixel_store, pixel_overrides):
    overrides = _overrides(pixel_store, pixel_overrides, "teacher.cache_targets=true")
    Trainer(resolve_config(overrides=[*overrides, "train.max_steps=12"]), tmp_path / "split").fit()
    trainer = Trainer(resolve_config(overrides=[*overrides, "train.max_steps=20"]), tmp_path / "split")
    trainer.fit()  # resumes at step 12 with an empty cache
    Trainer(resolve_config(overrides=[*overrides[:-1], "train.max_steps=20"]), tmp_path / "whole").fit()
    assert_identical(final_state(tmp_path / "whole", 20), final_state(tmp_path / "split", 20))
    assert "targets cached in host memory (up to 1.6 MB per process)" in (tmp_path / "split" / "log.txt").read_text()


def test_a_cache_larger_than_half_the_memory_is_refused(tmp_path, pixel_store, pixel_overrides, monkeypatch):
    monkeypatch.setattr(alignment, "_physical_memory", lambda: 2**20)  # 1 MiB of "RAM"; the cache needs 1.5 MiB
    overrides = _overrides(pixel_store, pixel_overrides, "teacher.cache_targets=true")
    with pytest.raises(
        IrepaError,
        match=r"keep 1.6 MB of targets per process \(64 samples\), more than half of this machine's 1.0 MB .*=false",
    ):
        Trainer(resolve_config(overrides=overrides), tmp_path)
