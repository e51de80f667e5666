import json

import numpy as np
import pytest
from PIL import Image

from irepa.data.prepare import prepare_folder_store, prepare_synthetic_store
from irepa.data.store import open_store
from irepa.errors import IrepaError
from irepa.utils.images import center_crop_adm


def make_folder(root, per_class=4, classes=("cat", "dog"), seed=0):
    """Small RGB images of varied sizes in ROOT/CLASS/IMAGE layout."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = 20 + 7 * i, 48 - 3 * i
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / c / f"img{i}.png")
    return root


def test_folder_store_content_keys_labels(tmp_path):
    root = make_folder(tmp_path / "imgs")
    report = prepare_folder_store(root, tmp_path / "store", resolution=16, shard_size=3, workers=1)
    assert report.finalized and report.count == 8 and report.shards_written == 3 and report.shards_reused == 0
    store = open_store(tmp_path / "store", kind="images")
    assert store.keys() == [f"{c}/img{i}" for c in ("cat", "dog") for i in range(4)]
    assert store.class_names == ["cat", "dog"] and store.num_classes == 2
    manifest = store.manifest
    assert manifest["resolution"] == 16 and manifest["crop"] == "adm" and manifest["labels"] == "folders"
    assert manifest["source_path"] == str(root.resolve()) and manifest["source"]["num_files"] == 8
    for index, key in enumerate(store.keys()):
        with Image.open(root / f"{key}.png") as im:
            reference = np.asarray(center_crop_adm(im.convert("RGB"), 16))
        np.testing.assert_array_equal(store.read("images", index), reference)
        assert int(store.read("labels", index)) == (0 if key.startswith("cat") else 1)


def test_bad_inputs_skip_or_fail_and_conversions(tmp_path):
    root = make_folder(tmp_path / "imgs", per_class=2)
    Image.fromarray(np.full((20, 20), 7, np.uint8), mode="L").save(root / "cat" / "gray.png")
    Image.fromarray(np.full((20, 20, 4), 9, np.uint8), mode="RGBA").save(root / "dog" / "rgba.png")
    Image.fromarray(np.zeros((20, 20), np.uint16)).save(root / "dog" / "deep.png")
    (root / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    report = prepare_folder_store(root, tmp_path / "store", resolution=8, shard_size=4, workers=1)
    assert report.skipped == 2 and report.converted == 2 and report.count == 6
    store = open_store(tmp_path / "store")
    assert sorted(store.manifest["skipped"]["keys"]) == ["dog/broken", "dog/deep"]
    keys = store.keys()
    assert "dog/gray" not in keys and "cat/gray" in keys
    gray = store.read("images", keys.index("cat/gray"))
    assert gray.shape == (8, 8, 3) and (gray == 7).all()
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "store").glob("shard-*.json"))]
    reasons = {s["key"]: s["reason"] for r in records for s in r["skipped"]}
    assert "16-bit" in reasons["dog/deep"] and "cannot read image 'dog/broken'" in reasons["dog/broken"]
    assert str(root) not in json.dumps(records)  # shard records do not depend on where the folder lives
    bad = tmp_path / "bad"
    (bad / "c").mkdir(parents=True)
    (bad / "c" / "x.png").write_bytes(b"junk")
    with pytest.raises(IrepaError, match=r"no image of .* could be read \(all 1 skipped\)"):
        prepare_folder_store(bad, tmp_path / "empty-store", resolution=8, workers=1)
    assert not (tmp_path / "empty-store" / "manifest.json").exists()
    with pytest.raises(IrepaError, match=r"cannot read image .*broken.jpg.*\(pass --on-error skip"):
        prepare_folder_store(root, tmp_path / "strict", resolution=8, workers=1, on_error="fail")


def test_flat_folder_is_unlabelled_and_layout_errors(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(np.full((10, 12, 3), i, np.uint8)).save(flat / f"{i}.png")
    prepare_folder_store(flat, tmp_path / "s", resolution=8, workers=1)
    store = open_store(tmp_path / "s")
    assert store.class_names is None and store.num_classes == 1 and store.manifest["labels"] == "none"
    assert [int(store.read("labels", i)) for i in range(3)] == [0, 0, 0]
    (flat / "sub").mkdir()
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(flat / "sub" / "x.png")
    with pytest.raises(IrepaError, match="not inside a class subfolder"):
        prepare_folder_store(flat, tmp_path / "mixed", resolution=8, workers=1)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(flat / "sub" / "x.jpg")
    with pytest.raises(IrepaError, match="share a key"):
        prepare_folder_store(flat, tmp_path / "dup", resolution=8, workers=1)
    with pytest.raises(IrepaError, match="does not exist"):
        prepare_folder_store(tmp_path / "nope", tmp_path / "x", resolution=8)
    with pytest.raises(IrepaError, match="resolution 4 is too small"):
        prepare_folder_store(flat, tmp_path / "x", resolution=4)


def test_resume_after_crash_rewrites_only_broken_shards(tmp_path):
    root = make_folder(tmp_path / "imgs", per_class=5)
    clean = prepare_folder_store(root, tmp_path / "clean", resolution=8, shard_size=3, workers=1)
    assert clean.shards_total == 4
    fingerprint = open_store(tmp_path / "clean").fingerprint

    out = tmp_path / "crashed"
    prepare_folder_store(root, out, resolution=8, shard_size=3, workers=1)
    # Simulate a crash: no manifest yet, one shard never finished (record missing, a temp file left behind),
    # another one truncated mid-write.
    (out / "manifest.json").unlink()
    (out / "build.json").write_text(json.dumps(open_store(tmp_path / "clean").manifest["build"]))
    (out / "shard-00001.json").unlink()
    (out / ".shard-00001.images.npy.x1.tmp").write_bytes(b"partial")
    truncated = out / "shard-00002.images.npy"
    truncated.write_bytes(truncated.read_bytes()[:100])
    report = prepare_folder_store(root, out, resolution=8, shard_size=3, workers=1)
    assert (report.shards_written, report.shards_reused) == (2, 2)
    assert not list(out.glob(".*.tmp"))
    assert open_store(out).fingerprint == fingerprint
    again = prepare_folder_store(root, out, resolution=8, shard_size=3, workers=1)
    assert again.already_complete and "nothing to do" in again.summary()
    with pytest.raises(IrepaError, match="resolution was 8, now 16"):
        prepare_folder_store(root, out, resolution=16, shard_size=3, workers=1)


def test_synthetic_store_matches_the_generator_and_written_folders(tmp_path):
    from irepa.data import synthetic

    report = prepare_synthetic_store(tmp_path / "s", num_images=30, resolution=32, num_classes=10, seed=3, shard_size=8)
    assert report.finalized and report.count == 30 and report.shards_written == 4
    store = open_store(tmp_path / "s")
    assert store.fields["masks"] == {"dtype": "bool", "shape": [32, 32]} and store.manifest["crop"] == "none"
    assert store.num_classes == 10 and store.class_names[3].startswith("03_")
    batch = synthetic.generate(30, image_size=32, num_classes=10, seed=3)
    for i in range(30):
        np.testing.assert_array_equal(store.read("images", i), batch.images[i].permute(1, 2, 0).numpy())
        np.testing.assert_array_equal(store.read("masks", i), batch.masks[i].numpy())
        assert int(store.read("labels", i)) == int(batch.labels[i])
    # Same keys and class names as a written synthetic folder prepared into a store.
    keys = synthetic.write_folder(tmp_path / "folder", 30, image_size=32, num_classes=10, seed=3)
    assert store.keys() == keys
    prepare_folder_store(tmp_path / "folder" / "images", tmp_path / "fs", resolution=32, workers=1)
    folder_store = open_store(tmp_path / "fs")
    assert folder_store.class_names == store.class_names and sorted(folder_store.keys()) == sorted(keys)
    # Resume: a lost shard is regenerated identically (image i depends only on (seed, i)).
    fingerprint = store.fingerprint
    (tmp_path / "s" / "shard-00002.images.npy").unlink()
    again = prepare_synthetic_store(tmp_path / "s", num_images=30, resolution=32, num_classes=10, seed=3, shard_size=8)
    assert (again.shards_written, again.shards_reused) == (1, 3)
    assert open_store(tmp_path / "s").fingerprint == fingerprint
    with pytest.raises(IrepaError, match="seed"):
        prepare_synthetic_store(tmp_path / "s", num_images=30, resolution=32, num_classes=10, seed=4, shard_size=8)
