import errno
import json

import pytest
import torch

from irepa.errors import IrepaError
from irepa.training.checkpoint import CheckpointError, CheckpointManager, check_state_dict


def _state(seed: int):
    g = torch.Generator().manual_seed(seed)
    return {
        "tensors": {"model": {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)}},
        "objects": {"trainer": {"step": seed, "rng": torch.get_rng_state(), "nested": [1, 2.5, "x", None]}},
        "texts": {"config.yaml": f"seed: {seed}\n"},
    }


def _save(mgr, step):
    return mgr.save(step, **_state(step), meta={"nimg": step * 8})


def test_round_trip_and_layout(tmp_path):
    mgr = CheckpointManager(tmp_path / "ckpt", keep_last=3)
    path = _save(mgr, 5)
    assert path.name == "step-0000005"
    assert sorted(p.name for p in path.iterdir()) == [
        "config.yaml",
        "manifest.json",
        "model.safetensors",
        "trainer.pt",
    ]
    loaded = mgr.load_latest()
    ref = _state(5)
    assert loaded.step == 5 and loaded.meta == {"nimg": 40} and loaded.skipped == []
    assert torch.equal(loaded.tensors["model"]["w"], ref["tensors"]["model"]["w"])
    assert loaded.objects["trainer"]["nested"] == [1, 2.5, "x", None]
    assert torch.equal(loaded.objects["trainer"]["rng"], ref["objects"]["trainer"]["rng"])
    assert loaded.texts["config.yaml"] == "seed: 5\n"


def test_keep_last_prunes_oldest(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for step in (1, 2, 3, 4):
        _save(mgr, step)
    assert mgr.steps() == [3, 4]
    assert mgr.load_latest().step == 4


def test_empty_directory_gives_none(tmp_path):
    assert CheckpointManager(tmp_path / "missing").load_latest() is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "drop_manifest", "drop_file"])
def test_corrupt_latest_falls_back(tmp_path, damage):
    mgr = CheckpointManager(tmp_path, keep_last=3)
    _save(mgr, 1)
    newest = _save(mgr, 2)
    target = newest / "model.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-7])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "drop_manifest":
        (newest / "manifest.json").unlink()
    else:
        target.unlink()
    warnings = []
    loaded = mgr.load_latest(warn=warnings.append)
    assert loaded.step == 1 and loaded.skipped == [2]
    assert len(warnings) == 1 and "step-0000002" in warnings[0] and "falling back to step-0000001" in warnings[0]
    assert torch.equal(loaded.tensors["model"]["w"], _state(1)["tensors"]["model"]["w"])
    moved = mgr.quarantine(2)
    assert moved.name == "corrupt-step-0000002" and mgr.steps() == [1]


def test_all_corrupt_is_an_error(tmp_path):
    mgr = CheckpointManager(tmp_path)
    path = _save(mgr, 3)
    (path / "trainer.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no readable checkpoint") as info:
        mgr.load_latest()
    assert "\n" not in str(info.value) and isinstance(info.value, IrepaError)


def test_unsafe_pickle_is_refused_even_with_valid_hashes(tmp_path):
    mgr = CheckpointManager(tmp_path)
    path = _save(mgr, 1)

    import argparse  # any global outside torch's weights_only allow-list must not be unpickled

    torch.save({"args": argparse.Namespace(lr=1.0)}, path / "trainer.pt")
    manifest = json.loads((path / "manifest.json").read_text())
    from irepa.utils.io import sha256_file

    manifest["files"]["trainer.pt"] = {
        "bytes": (path / "trainer.pt").stat().st_size,
        "sha256": sha256_file(path / "trainer.pt"),
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"cannot read trainer\.pt"):
        mgr.load(1)


def test_out_of_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path, keep_last=1)
    _save(mgr, 1)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # partially written, then the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device") as info:
        _save(mgr, 2)
    assert "step-0000001 is intact" in str(info.value)
    monkeypatch.undo()
    assert mgr.steps() == [1]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert mgr.load_latest().step == 1


def test_stale_temporaries_are_ignored_and_removed(tmp_path):
    mgr = CheckpointManager(tmp_path)
    _save(mgr, 1)
    (tmp_path / ".tmp-step-0000002-1-2").mkdir()
    assert mgr.steps() == [1]
    assert [p.name for p in mgr.remove_stale_temporaries()] == [".tmp-step-0000002-1-2"]


def test_check_state_dict_names_mismatches():
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    state = module.state_dict()
    check_state_dict(module, state, "model")
    bad = dict(state)
    bad["0.weight"] = torch.zeros(5, 3)
    bad.pop("1.bias")
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        check_state_dict(module, bad, "model from step-0000001")
    msg = str(info.value)
    assert "missing keys 1.bias" in msg and "unexpected keys extra.weight" in msg
    assert "0.weight (5, 3) vs (4, 3)" in msg and "\n" not in msg


def _fill(fs, leave_bytes):
    """Fill file system ``fs`` until about ``leave_bytes`` remain."""
    import shutil

    free = shutil.disk_usage(fs).free
    (fs / "filler").write_bytes(b"\0" * max(free - leave_bytes, 0))


@pytest.mark.parametrize("part", ["tensors", "objects"])
def test_real_full_disk_is_a_checkpoint_error_and_keeps_the_previous_one(small_filesystem, part):
    """On a real full tmpfs, safetensors (SafetensorError) and torch.save (RuntimeError) failures: CheckpointError."""
    fs = small_filesystem(1024)
    mgr = CheckpointManager(fs / "checkpoints", keep_last=1)
    _save(mgr, 1)
    _fill(fs, 64 * 1024)
    big = {"w": torch.zeros(64 * 1024)}  # 256 KiB: does not fit in the 64 KiB left
    state = _state(2)
    if part == "tensors":
        state["tensors"] = {"model": big}
    else:
        state["objects"] = {"trainer": {"big": big["w"]}}
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*step-0000002 .*MiB free") as info:
        mgr.save(2, **state)
    assert "step-0000001 is intact" in str(info.value)
    assert mgr.steps() == [1] and not [p for p in mgr.directory.iterdir() if p.name.startswith(".tmp-")]
    assert mgr.load_latest().step == 1


def test_checkpoint_files_have_the_usual_permissions(tmp_path):
    import os
    import stat

    path = _save(CheckpointManager(tmp_path), 1)
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()}
    assert set(modes.values()) == {0o666 & ~umask}, modes
