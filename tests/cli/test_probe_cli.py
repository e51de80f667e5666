import json

import numpy as np
from PIL import Image


def coloured_folder(root, classes=3, per_class=12, size=32, seed=0):
    """Images whose class is their dominant colour: trivially separable from mean-pooled pixel tokens."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3))
            pixels[..., c] += 180
            Image.fromarray(pixels.astype(np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root


def extract(run_cli, images, out):
    res = run_cli(
        "features", "extract", "--encoder", "pixels", "--images", images, "--out", out, "--resolution", "32",
        "--no-progress",
    )  # fmt: skip
    assert res.code == 0, res


def test_probe_on_extracted_features(run_cli, tmp_path):
    extract(run_cli, coloured_folder(tmp_path / "train"), tmp_path / "train.safetensors")
    extract(run_cli, coloured_folder(tmp_path / "val", per_class=4, seed=1), tmp_path / "val.safetensors")
    out = tmp_path / "probe.json"
    res = run_cli(
        "probe", "--train", tmp_path / "train.safetensors", "--val", tmp_path / "val.safetensors",
        "--epochs", "10", "--lr", "1e-2", "--wd", "0", "--out", out,
    )  # fmt: skip
    assert res.code == 0, res
    assert "pixels (mean): top-1 100.00%" in res.out
    report = json.loads(out.read_text())
    assert report["top1"] == 1.0 and report["num_val"] == 12 and report["classes"] == 3
    assert report["protocol"]["epochs"] == 10 and report["protocol"]["learning_rates"] == [0.01]


def test_probe_with_a_validation_fraction(run_cli, tmp_path):
    extract(run_cli, coloured_folder(tmp_path / "train"), tmp_path / "train.safetensors")
    res = run_cli("probe", "--train", tmp_path / "train.safetensors", "--val-fraction", "0.25", "--epochs", "5")
    assert res.code == 0, res
    assert json.loads(res.out.splitlines()[-1])["top1"] == 1.0


def test_probe_errors(run_cli, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), i * 50, np.uint8)).save(flat / f"{i}.png")
    extract(run_cli, flat, tmp_path / "nolabels.safetensors")
    res = run_cli("probe", "--train", tmp_path / "nolabels.safetensors")
    assert res.code == 2 and "has no labels" in res.err
    res = run_cli("probe", "--train", tmp_path / "missing.safetensors")
    assert res.code == 2 and "does not exist" in res.err
    res = run_cli("probe", "--train", tmp_path / "nolabels.safetensors", "--features", "cls")
    assert res.code == 2 and "no CLS token" in res.err
    extract(run_cli, coloured_folder(tmp_path / "a", classes=2), tmp_path / "a.safetensors")
    extract(run_cli, coloured_folder(tmp_path / "b", classes=3), tmp_path / "b.safetensors")
    res = run_cli("probe", "--train", tmp_path / "a.safetensors", "--val", tmp_path / "b.safetensors")
    assert res.code == 2 and "validation classes missing from the training split: c2" in res.err
