"""`irepa metrics spatial --encoder NAME --images DIR [--masks DIR]` on the synthetic dataset."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from irepa.data.synthetic import write_folder
from irepa.encoders.features import read_features


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    keys = write_folder(root, 8, image_size=128, num_classes=4, seed=0)
    return root, keys


def test_encoder_mode_end_to_end_with_masks(run_cli, synthetic, tmp_path):
    root, _keys = synthetic
    res = run_cli(
        "metrics", "spatial", "--encoder", "mocov3-vit-s", "--encoder", "hog", "--random-init",
        "--images", root / "images", "--masks", root / "masks", "--resolution", "128", "--batch-size", "3",
        "--out", tmp_path / "out",
    )  # fmt: skip
    assert res.code == 0, res
    assert "mocov3-vit-s has random weights" in res.out
    report = json.loads((tmp_path / "out" / "spatial_metrics.json").read_text())
    assert set(report["sources"]) == {"mocov3-vit-s", "hog"}
    assert report["metrics"] == ["lds", "cds", "srss", "rmsc"]
    source = report["sources"]["mocov3-vit-s"]
    assert source["num_images"] == 8 and source["grid"] == [8, 8]
    assert report["inputs"]["encoders"]["mocov3-vit-s"]["grid"] == [8, 8]
    assert report["inputs"]["num_images"] == 8
    assert source["srss_kept"] == int(source["counts"]["srss"])


def test_encoder_mode_equals_file_mode(run_cli, synthetic, tmp_path):
    """Tokens from `features extract` + masks from the PNGs give the same report as the encoder mode."""
    root, keys = synthetic
    feats = tmp_path / "hog.safetensors"
    res = run_cli("features", "extract", "--encoder", "hog", "--images", root / "images", "--out", feats,
                  "--resolution", "128", "--no-progress")  # fmt: skip
    assert res.code == 0, res
    order = read_features(feats).keys  # rows follow the sorted image keys
    assert sorted(order) == sorted(keys)
    pixel_masks = torch.stack(
        [torch.from_numpy(np.asarray(Image.open(root / "masks" / f"{k}.png")) > 0) for k in order]
    )
    torch.save(pixel_masks, tmp_path / "masks.pt")
    res = run_cli("metrics", "spatial", feats, "--masks", tmp_path / "masks.pt", "--out", tmp_path / "files")
    assert res.code == 0, res
    res = run_cli("metrics", "spatial", "--encoder", "hog", "--images", root / "images", "--masks", root / "masks",
                  "--resolution", "128", "--out", tmp_path / "enc")  # fmt: skip
    assert res.code == 0, res
    by_file = json.loads((tmp_path / "files" / "spatial_metrics.json").read_text())["sources"]["patch_tokens"]
    by_encoder = json.loads((tmp_path / "enc" / "spatial_metrics.json").read_text())["sources"]["hog"]
    assert by_file["per_image"] == by_encoder["per_image"]


def test_srss_mask_filter_drops_images(run_cli, synthetic, tmp_path):
    root, keys = synthetic
    masks = tmp_path / "masks"
    for i, key in enumerate(keys):
        mask = np.asarray(Image.open(root / "masks" / f"{key}.png"))
        if i == 0:
            mask = np.zeros_like(mask)  # no foreground: fails the >= 25 % foreground filter
        elif i == 1:
            mask = np.ones_like(mask)  # 0/1 mask, all foreground: fails the background side
        (masks / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(masks / f"{key}.png")
    res = run_cli("metrics", "spatial", "--encoder", "pixels", "--images", root / "images", "--masks", masks,
                  "--resolution", "128", "--out", tmp_path / "out")  # fmt: skip
    assert res.code == 0, res
    source = json.loads((tmp_path / "out" / "spatial_metrics.json").read_text())["sources"]["pixels"]
    rows = sorted(keys)  # report rows follow the sorted image keys
    srss = source["per_image"]["srss"]
    assert srss[rows.index(keys[0])] is None and srss[rows.index(keys[1])] is None
    assert source["srss_kept"] <= 6 and "SRSS mask filter kept pixels" in res.out


def test_masks_of_another_size_follow_the_image_crop(run_cli, synthetic, tmp_path):
    root, _keys = synthetic
    res = run_cli("metrics", "spatial", "--encoder", "pixels", "--images", root / "images", "--masks", root / "masks",
                  "--resolution", "64", "--metrics", "srss,lds", "--near", "1", "--far", "3")  # fmt: skip
    assert res.code == 0, res
    assert "pixels" in res.out and "4x4" in res.out


def test_encoder_mode_errors(run_cli, synthetic, tmp_path):
    root, _keys = synthetic
    images, masks = root / "images", root / "masks"
    partial = tmp_path / "partial"
    partial.mkdir()
    cases = [
        (["--encoder", "hog"], "needs --images"),
        (["tokens.pt", "--encoder", "hog", "--images", images], "not both"),
        (["--images", images], "needs --encoder"),
        ([], "give token FILEs"),
        (["--encoder", "hog", "--images", images, "--masks", partial, "--resolution", "128"], "no mask for image"),
        (["--encoder", "hog", "--encoder", "pixels", "--weights", tmp_path, "--images", images], "single --encoder"),
        (["--encoder", "hog", "--images", images, "--prefix-tokens", "1"], "--prefix-tokens"),
        (["--encoder", "hog", "--images", images, "--resolution", "100"], "multiples of 16"),
        (["--encoder", "dinov2-vit-bb", "--images", images], "did you mean 'dinov2-vit-b'"),
        (["tokens.pt", "--masks", masks], "mask folders need --encoder"),
    ]
    for extra, message in cases:
        res = run_cli("metrics", "spatial", *extra, "--out", tmp_path / "out")
        assert res.code == 2, (extra, res)
        assert message in res.err, (extra, res.err)
        assert not (tmp_path / "out").exists()
