import numpy as np
from PIL import Image

from irepa.encoders.features import read_features


def image_folder(root, classes=2, per_class=4, size=48, seed=0):
    """Class-labelled random images (ROOT/CLASS/IMAGE.png), a few of them not RGB."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            image = Image.fromarray(pixels).convert("L") if i == 0 else Image.fromarray(pixels)
            image.save(root / f"class{c}" / f"{i}.png")
    return root


def test_extract_with_a_small_random_encoder(run_cli, tmp_path):
    images = image_folder(tmp_path / "images")
    (images / "class0" / "corrupt.png").write_bytes(b"not a png")
    out = tmp_path / "feats.safetensors"
    res = run_cli(
        "features", "extract", "--encoder", "mocov3-vit-s", "--random-init", "--resolution", "32",
        "--images", images, "--out", out, "--batch-size", "3", "--no-progress", "--device", "cpu",
    )  # fmt: skip
    assert res.code == 0, res
    assert "random weights" in res.out and "8 images, 1 unreadable skipped, 2 converted to RGB" in res.out
    features = read_features(out)
    assert features.tensor("patch_tokens").shape == (8, 4, 384)
    assert features.tensor("cls_token").shape == (8, 384)
    assert features.classes == ["class0", "class1"] and features.tensor("labels").tolist() == [0] * 4 + [1] * 4
    info = features.metadata["encoder_info"]
    assert info["encoder"] == "mocov3-vit-s" and info["weights"]["origin"] == "random-init"
    assert info["preprocessing"]["variant"] == "official" and features.metadata["grid"] == [2, 2]
    # Refuses to overwrite without --force.
    res = run_cli("features", "extract", "--encoder", "hog", "--images", images, "--out", out, "--resolution", "32")
    assert res.code == 2 and "--force" in res.err


def test_strict_rgb_refusals_are_reported_apart_from_unreadable_files(run_cli, tmp_path):
    images = image_folder(tmp_path / "images")  # 2 of the 8 images are grayscale
    (images / "class0" / "corrupt.png").write_bytes(b"not a png")
    out = tmp_path / "feats.safetensors"
    common = ["features", "extract", "--encoder", "hog", "--resolution", "48", "--no-progress", "--images"]
    res = run_cli(*common, images, "--out", out, "--strict-rgb")
    assert res.code == 0, res
    assert "6 images, 1 unreadable skipped, 2 non-RGB refused (--strict-rgb) ->" in res.out, res.out
    assert "warning: 2 non-RGB images refused (--strict-rgb)" in res.out and "drop --strict-rgb" in res.out
    features = read_features(out)
    assert features.num_images == 6
    assert features.metadata["skipped"] == 1 and features.metadata["refused_non_rgb"] == 2
    assert features.metadata["converted"] == 0
    # --on-error fail stops at the first refusal with its own message, not as an unreadable file.
    res = run_cli(*common, images, "--out", tmp_path / "f.safetensors", "--strict-rgb", "--on-error", "fail")
    assert res.code == 2 and "class0/0.png' is L, not RGB" in res.err and "cannot read" not in res.err, res
    # Only refused images: the error counts them as refusals.
    only_gray = image_folder(tmp_path / "gray", classes=1, per_class=1)
    res = run_cli(*common, only_gray, "--out", tmp_path / "g.safetensors", "--strict-rgb")
    assert res.code == 2 and "0 unreadable, 1 non-RGB refused" in res.err and "not RGB" in res.err, res


def test_extract_bad_input_exits_2_and_writes_nothing(run_cli, tmp_path):
    images = image_folder(tmp_path / "images", classes=1, per_class=2)
    out = tmp_path / "f.safetensors"
    common = ["features", "extract", "--images", images, "--out", out, "--no-progress"]
    cases = [
        (["--encoder", "dinov2-vit-bb"], "did you mean 'dinov2-vit-b'"),
        (["--encoder", "hog", "--resolution", "250"], "multiples of 16"),
        (["--encoder", "hog", "--crop", "none", "--resolution", "32"], "expected 32x32"),
        (["--encoder", "hog", "--on-error", "fail", "--strict-rgb", "--resolution", "48"], "not RGB"),
        (["--encoder", "dino-vit-b", "--offline", "--cache-dir", tmp_path / "c"], "irepa encoders download dino-vit-b"),
        (["--encoder", "hog", "--batch-size", "0"], "--batch-size"),
    ]
    for extra, message in cases:
        res = run_cli(*common, *extra)
        assert res.code == 2, (extra, res)
        assert message in res.err, (extra, res.err)
        assert len(res.err.strip().splitlines()) == 1
        assert not out.exists()
    res = run_cli("features", "extract", "--encoder", "hog", "--images", tmp_path / "nowhere", "--out", out)
    assert res.code == 2 and "does not exist" in res.err


def test_extract_subprocess_end_to_end(run_cli_subprocess, tmp_path):
    images = image_folder(tmp_path / "images", classes=1, per_class=2)
    out = tmp_path / "pixels.safetensors"
    res = run_cli_subprocess(
        "features", "extract", "--encoder", "pixels", "--images", images, "--out", out, "--resolution", "32"
    )
    assert res.code == 0, res
    assert read_features(out).tensor("patch_tokens").shape == (2, 4, 768)
    res = run_cli_subprocess("features", "extract", "--encoder", "pixel", "--images", images, "--out", out, "--force")
    assert res.code == 2 and "did you mean 'pixels'" in res.err and "Traceback" not in res.err


def test_corrupt_or_pickled_weights_are_one_line_errors(run_cli, tmp_path):
    """timm-loaded encoders (SAM 2) and remapped ones (MoCo v3) alike: no traceback for a bad --weights file."""
    import os

    import torch

    class Payload:  # what a malicious checkpoint pickles; weights_only=True refuses it without running it
        def __reduce__(self):
            return (os.system, ("echo this must never run",))

    images = image_folder(tmp_path / "images", classes=1, per_class=2)
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"a": 1}' + b"x" * 8)
    torch.save({"model": {"w": torch.zeros(2)}, "payload": Payload()}, tmp_path / "payload.pth")
    cases = [
        ("sam2-vit-s", "corrupt.safetensors", "invalid JSON in header"),
        ("sam2-vit-s", "payload.pth", "it pickles the Python object 'posix.system', which irepa refuses"),
        ("mocov3-vit-s", "payload.pth", "it pickles the Python object 'posix.system', which irepa refuses"),
    ]
    for encoder, weights, message in cases:
        res = run_cli("features", "extract", "--encoder", encoder, "--weights", tmp_path / weights, "--images", images,
                      "--out", tmp_path / "f.safetensors", "--resolution", "32", "--device", "cpu")  # fmt: skip
        assert res.code == 2 and message in res.err, (encoder, weights, res)
        assert len(res.err.strip().splitlines()) == 1 and "will likely succeed" not in res.err


def test_no_progress_bar_frames_in_a_non_terminal_log(run_cli_subprocess, tmp_path):
    images = image_folder(tmp_path / "images", classes=1, per_class=2)
    res = run_cli_subprocess("features", "extract", "--encoder", "hog", "--resolution", "48", "--images", images,
                             "--out", tmp_path / "f.safetensors", timeout=600)  # fmt: skip
    assert res.code == 0, res
    assert "\r" not in res.err and "img/s" not in res.err and "features hog" not in res.err, res.err
