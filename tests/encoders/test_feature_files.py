"""Feature files: the streaming safetensors writer and extraction from an image folder."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from irepa.encoders import load_encoder
from irepa.encoders.features import SafetensorsStreamWriter, extract_features, read_features
from irepa.errors import IrepaError
from irepa.utils.images import list_images


def write_image_folder(root, classes=2, per_class=3, size=48, seed=0):
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


def test_stream_writer_roundtrip_is_a_valid_safetensors_file(tmp_path):
    path = tmp_path / "out.safetensors"
    chunks = [torch.randn(3, 4, 5), torch.randn(2, 4, 5)]
    with SafetensorsStreamWriter(path) as writer:
        for chunk in chunks:
            writer.append("a", chunk)
            writer.append("b", chunk[:, 0].to(torch.bfloat16))
            writer.append("labels", torch.arange(len(chunk)))
        assert writer.rows("a") == 5
        writer.finish({"hello": "world"})
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"hello": "world"}
        assert torch.equal(f.get_tensor("a"), torch.cat(chunks))
        assert torch.equal(f.get_tensor("b"), torch.cat(chunks)[:, 0].to(torch.bfloat16))
        assert torch.equal(f.get_tensor("labels"), torch.tensor([0, 1, 2, 0, 1]))
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]  # temporary folder removed


def test_stream_writer_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "out.safetensors"
    with pytest.raises(RuntimeError), SafetensorsStreamWriter(path) as writer:
        writer.append("a", torch.ones(2, 3))
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with SafetensorsStreamWriter(path) as writer, pytest.raises(ValueError, match="does not match"):
        writer.append("a", torch.ones(2, 3))
        writer.append("a", torch.ones(2, 4))


def test_extract_features_matches_direct_encoding(tmp_path):
    root = write_image_folder(tmp_path / "images")
    (root / "class1" / "broken.png").write_bytes(b"not an image")
    files = list_images(root)
    encoder = load_encoder("pixels", resolution=32)
    out = tmp_path / "feats.safetensors"
    result = extract_features(encoder, files, out, root=root, batch_size=4, crop="resize", progress=False)
    assert (result.num_images, result.skipped) == (6, 1)
    features = read_features(out)
    assert features.num_images == 6 and features.grid == (2, 2)
    assert features.classes == ["class0", "class1"]
    assert features.keys == [f"class{c}/{i}" for c in range(2) for i in range(3)]
    assert torch.equal(features.tensor("labels"), torch.tensor([0, 0, 0, 1, 1, 1]))
    info = features.metadata["encoder_info"]
    assert info["encoder"] == "pixels" and info["grid"] == [2, 2] and features.metadata["skipped"] == 1
    # Same tokens as encoding the (resized) images directly.
    from irepa.utils.images import load_image

    direct = torch.stack(
        [
            torch.from_numpy(load_image(f, size=32, crop="resize")).permute(2, 0, 1)
            for f in files
            if "broken" not in f.name
        ]
    )
    expected = encoder.encode(direct).patch_tokens
    assert torch.equal(features.tensor("patch_tokens"), expected)
    torch.testing.assert_close(features.pooled("mean"), expected.mean(1))
    assert not features.has("cls_token")
    with pytest.raises(IrepaError, match="no CLS token"):
        features.pooled("cls")


def test_extract_features_cls_float16_and_failure_modes(tmp_path):
    root = write_image_folder(tmp_path / "images", classes=1, per_class=2, size=32)
    encoder = load_encoder("mocov3-vit-s", resolution=32, pretrained=False, arch_overrides={"depth": 1})
    out = tmp_path / "f.safetensors"
    extract_features(encoder, list_images(root), out, root=root, save_dtype=torch.float16, progress=False)
    features = read_features(out)
    assert features.tensor("patch_tokens").dtype == torch.float16
    assert features.tensor("cls_token").shape == (2, 384)
    assert json.loads(json.dumps(features.metadata))["patch_tokens_dtype"] == "float16"
    (root / "class0" / "bad.png").write_bytes(b"junk")
    with pytest.raises(IrepaError, match="cannot read image"):
        extract_features(
            encoder, list_images(root), tmp_path / "g.safetensors", root=root, on_error="fail", progress=False
        )
    assert not (tmp_path / "g.safetensors").exists()
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(flat / "a.png")
    with pytest.raises(IrepaError, match="class subfolder"):
        extract_features(encoder, list_images(flat), tmp_path / "h.safetensors", root=flat, labels="require")
    extract_features(encoder, list_images(flat), tmp_path / "h.safetensors", root=flat, progress=False)
    assert read_features(tmp_path / "h.safetensors").classes is None


def test_read_features_errors(tmp_path):
    with pytest.raises(IrepaError, match="does not exist"):
        read_features(tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(IrepaError, match="cannot read features file"):
        read_features(bad)
    from safetensors.torch import save_file

    save_file({"x": torch.ones(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(IrepaError, match="not a features file"):
        read_features(tmp_path / "other.safetensors")
