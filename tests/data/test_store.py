import hashlib
import json
import os
import pickle

import numpy as np
import pytest

from irepa.data.store import (
    MAX_OPEN_MAPS,
    Store,
    StoreBuild,
    check_store,
    fingerprint,
    load_manifest,
    open_store,
    shard_name,
    write_shard,
)
from irepa.errors import IrepaError

SETTINGS = {"kind": "images", "source": {"type": "test"}, "resolution": 4, "shard_size": 3}
HEADER = {
    "kind": "images",
    "resolution": 4,
    "crop": "adm",
    "fields": {"images": {"dtype": "uint8", "shape": [4, 4, 3]}, "labels": {"dtype": "int64", "shape": []}},
    "num_classes": 2,
    "class_names": ["a", "b"],
}


def _build(path, counts=(3, 3, 2), settings=SETTINGS):
    build = StoreBuild(path, settings, command="test build")
    names, start = [], 0
    for i, n in enumerate(counts):
        name = shard_name(i)
        images = np.arange(start, start + n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
        keys = [f"k/{j:03d}" for j in range(start, start + n)]
        write_shard(path, name, {"images": images, "labels": np.arange(start, start + n) % 2}, keys, {"skipped": []})
        names.append(name)
        start += n
    return build, names


def test_write_finalize_open_read(tmp_path):
    store_dir = tmp_path / "s"
    build, names = _build(store_dir)
    assert (store_dir / "build.json").is_file() and not (store_dir / "manifest.json").exists()
    manifest = build.finalize(HEADER, names)
    assert not (store_dir / "build.json").exists()
    assert manifest["format"] == "irepa-store/1" and manifest["count"] == 8
    # Recorded hashes are plain file hashes: `sha256sum shard-00000.images.npy` matches.
    shard0 = manifest["shards"][0]["files"]["images"]
    assert hashlib.sha256((store_dir / shard0["file"]).read_bytes()).hexdigest() == shard0["sha256"]
    assert shard0["shape"] == [3, 4, 4, 3] and shard0["dtype"] == "uint8"
    store = open_store(store_dir, kind="images")
    assert len(store) == 8 and store.num_classes == 2 and store.class_names == ["a", "b"]
    assert store.keys() == [f"k/{j:03d}" for j in range(8)]
    for index in range(8):
        assert store.read("images", index).shape == (4, 4, 3)
        assert int(store.read("images", index)[0, 0, 0]) == index
        assert int(store.read("labels", index)) == index % 2
    assert store.locate(6) == (2, 0)
    with pytest.raises(IndexError):
        store.read("images", 8)
    assert store.verify() == []
    assert fingerprint(store.manifest) == store.fingerprint


def test_fingerprint_ignores_creation_and_path_but_not_content(tmp_path):
    m1 = _build(tmp_path / "a")[0].finalize({**HEADER, "source_path": "/x"}, [shard_name(i) for i in range(3)])
    m2 = _build(tmp_path / "b")[0].finalize({**HEADER, "source_path": "/y"}, [shard_name(i) for i in range(3)])
    assert m1["fingerprint"] == m2["fingerprint"]
    m3 = _build(tmp_path / "c", counts=(3, 3, 3))[0].finalize(HEADER, [shard_name(i) for i in range(3)])
    assert m3["fingerprint"] != m1["fingerprint"]


def test_completed_detects_partial_and_corrupt_shards(tmp_path):
    build, names = _build(tmp_path / "s")
    assert build.completed(names[0]) is not None
    # Crash before the record was written: the shard does not count.
    (tmp_path / "s" / f"{names[1]}.json").unlink()
    assert build.completed(names[1]) is None
    # Same size, different bytes: only the hash check notices.
    path = tmp_path / "s" / f"{names[2]}.images.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert build.completed(names[2], verify="size") is not None
    assert build.completed(names[2], verify="hash") is None
    # Truncated file.
    path.write_bytes(bytes(data[:-5]))
    assert build.completed(names[2], verify="size") is None
    with pytest.raises(IrepaError, match=r"missing shards shard-00001, shard-00002"):
        build.finalize(HEADER, names)


def test_stale_temporaries_are_removed_on_rewrite(tmp_path):
    _, names = _build(tmp_path / "s")
    stale = tmp_path / "s" / f".{names[0]}.images.npy.abc.tmp"
    stale.write_bytes(b"half")
    other = tmp_path / "s" / f".{names[1]}.images.npy.abc.tmp"
    other.write_bytes(b"half")
    write_shard(tmp_path / "s", names[0], {"labels": np.zeros(1, np.int64)}, ["x"])
    assert not stale.exists() and other.exists()  # only the rewritten shard's leftovers


def test_settings_mismatch_and_foreign_directories(tmp_path):
    _build(tmp_path / "s")
    with pytest.raises(IrepaError, match=r"partial store built with other settings \(resolution was 4, now 8\)"):
        StoreBuild(tmp_path / "s", {**SETTINGS, "resolution": 8}, command="irepa data prepare")
    build, names = _build(tmp_path / "t")
    build.finalize(HEADER, names)
    with pytest.raises(IrepaError, match="complete store built with other settings"):
        StoreBuild(tmp_path / "t", {**SETTINGS, "shard_size": 5}, command="irepa data prepare")
    assert StoreBuild(tmp_path / "t", SETTINGS, command="x").complete
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(IrepaError, match="non-empty directory that is not an irepa store"):
        StoreBuild(tmp_path / "junk", SETTINGS, command="x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(IrepaError, match="is a file"):
        StoreBuild(tmp_path / "file", SETTINGS, command="x")


def test_complete_store_with_a_deleted_shard_is_reopened(tmp_path):
    build, names = _build(tmp_path / "s")
    build.finalize(HEADER, names)
    (tmp_path / "s" / f"{names[1]}.images.npy").unlink()
    again = StoreBuild(tmp_path / "s", SETTINGS, command="x")
    assert not again.complete and again.reopened
    assert not (tmp_path / "s" / "manifest.json").exists() and (tmp_path / "s" / "build.json").exists()
    assert again.completed(names[0]) is not None and again.completed(names[1]) is None


def test_load_manifest_errors(tmp_path):
    with pytest.raises(IrepaError, match=r"latents store .* does not exist; create it with `irepa data encode"):
        load_manifest(tmp_path / "nope", kind="latents")
    _build(tmp_path / "partial")
    with pytest.raises(IrepaError, match=r"is incomplete \(3 shards written, no manifest.json\); re-run"):
        open_store(tmp_path / "partial")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IrepaError, match="not an irepa data store"):
        open_store(tmp_path / "empty")
    build, names = _build(tmp_path / "s")
    build.finalize(HEADER, names)
    with pytest.raises(IrepaError, match="is a images store, expected a latents store"):
        open_store(tmp_path / "s", kind="latents")
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    (tmp_path / "s" / "manifest.json").write_text(json.dumps({**manifest, "format": "irepa-store/9"}))
    with pytest.raises(IrepaError, match="has format 'irepa-store/9'"):
        open_store(tmp_path / "s")
    (tmp_path / "s" / "manifest.json").write_text("{not json")
    with pytest.raises(IrepaError, match="cannot read manifest"):
        open_store(tmp_path / "s")


def test_open_detects_missing_truncated_and_tampered_files(tmp_path):
    build, names = _build(tmp_path / "s")
    build.finalize(HEADER, names)
    images = tmp_path / "s" / "shard-00001.images.npy"
    data = images.read_bytes()
    images.write_bytes(data[:-3])
    with pytest.raises(IrepaError, match=r"has \d+ bytes, the manifest says \d+ \(truncated or replaced\)"):
        open_store(tmp_path / "s")
    images.unlink()
    with pytest.raises(IrepaError, match=r"missing shard file shard-00001\.images\.npy"):
        open_store(tmp_path / "s")
    images.write_bytes(data)
    record = tmp_path / "s" / "shard-00000.json"
    record.write_text(record.read_text().replace("k/000", "k/999"))
    with pytest.raises(IrepaError, match="does not match the manifest's hash"):
        open_store(tmp_path / "s").keys()
    store = open_store(tmp_path / "s")
    assert any("shard-00000" in p for p in store.verify())


def test_maps_are_per_process_and_bounded(tmp_path):
    build, names = _build(tmp_path / "s")
    build.finalize(HEADER, names)
    store = open_store(tmp_path / "s")
    store.read("images", 0)
    assert len(store._maps) == 1
    clone = pickle.loads(pickle.dumps(store))
    assert isinstance(clone, Store) and len(clone._maps) == 0 and clone.read("images", 7)[0, 0, 0] == 7
    store._pid = os.getpid() + 1  # as seen from a forked worker: the parent's maps are dropped, not reused
    store.read("images", 3)
    assert list(store._maps) == [(1, "images")]
    assert MAX_OPEN_MAPS >= 8


def test_check_store_lists_every_mismatch_with_fixes():
    manifest = {
        "kind": "latents",
        "resolution": 512,
        "vae": {"id": "stabilityai/sd-vae-ft-ema"},
        "flip": "none",
        "latent_shape": [4, 64, 64],
        "dtype": "float16",
    }
    check_store(manifest, {"resolution": 512, "latent_shape": (4, 64, 64), "vae.id": "stabilityai/sd-vae-ft-ema"})
    check_store({**manifest, "vae": {"id": "stabilityai/sd-vae-ft-mse"}}, {"vae.id": "sd-vae-ft-mse"})  # alias
    expected = {"resolution": 256, "vae.id": "stabilityai/sd-vae-ft-mse", "flip": "also-flipped", "crop": "adm"}
    with pytest.raises(IrepaError) as info:
        check_store(manifest, expected)
    message = str(info.value)
    assert "\n" not in message
    assert "resolution expected 256, found 512" in message
    assert 'vae.id expected "stabilityai/sd-vae-ft-mse", found "stabilityai/sd-vae-ft-ema"' in message
    assert 'flip expected "also-flipped", found "none"' in message
    assert 'crop expected "adm", found (absent)' in message
    assert "irepa data encode --vae stabilityai/sd-vae-ft-mse" in message and "--flip" in message
    with pytest.raises(IrepaError, match=r"re-run `irepa data prepare --resolution 256`"):
        check_store({"kind": "images", "resolution": 512}, {"resolution": 256})
