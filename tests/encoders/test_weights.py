"""Weight lookup order, offline messages, gated repositories, checksums and URL downloads (no network)."""

import argparse
import hashlib
import json

import pytest
import torch

from irepa.encoders import ENCODERS, WeightLocations, load_encoder, resolve_weights, verify_checksum
from irepa.encoders import weights as weights_module
from irepa.encoders.spec import EncoderSpec, Preprocessing, WeightSource
from irepa.encoders.weights import cache_folder, download_weights, read_state_dict
from irepa.errors import IrepaError, WeightsNotFoundError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hf_cache(root, repo_id, filename, payload=b"weights"):
    """Lay out a Hugging Face hub cache entry the way huggingface_hub does: refs/main names the commit, and
    snapshots/<commit>/<file> is a symlink into blobs/."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    blob = repo / "blobs" / hashlib.sha256(payload).hexdigest()
    blob.parent.mkdir(parents=True)
    blob.write_bytes(payload)
    path = repo / "snapshots" / COMMIT / filename
    path.parent.mkdir(parents=True)
    path.symlink_to(blob)
    return path


def test_offline_missing_weights_message_names_everything(tmp_path):
    spec = ENCODERS.get("dinov2-vit-b")
    locations = WeightLocations(
        cache_dir=tmp_path / "irepa", hf_cache_dir=tmp_path / "hf", torch_hub_dir=tmp_path / "torch", offline=True
    )
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights(spec, locations=locations)
    message = str(info.value)
    assert "\n" not in message
    assert "'dinov2-vit-b'" in message
    assert "timm/vit_base_patch14_dinov2.lvd142m" in message and "model.safetensors" in message
    assert str(tmp_path / "irepa" / "encoders" / "dinov2-vit-b") in message
    assert str(tmp_path / "hf") in message and "dinov2_vitb14_pretrain.pth" in message
    assert "offline" in message
    assert "irepa encoders download dinov2-vit-b" in message and "--weights PATH" in message
    assert "gated" not in message


def test_offline_message_for_gated_weights(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="gated on the Hugging Face Hub: accept the licence") as info:
        load_encoder("dinov3-vit-b16", cache_dir=tmp_path, hf_cache_dir=tmp_path / "hf", offline=True)
    assert "https://huggingface.co/timm/vit_base_patch16_dinov3.lvd1689m" in str(info.value)


def test_gated_repository_error_on_download(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import errors

    class FakeResponse:
        status_code = 403
        headers = {}  # noqa: RUF012
        request = None

    def refuse(*args, **kwargs):
        raise errors.GatedRepoError("Access to model is restricted", response=FakeResponse())

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(weights_module, "_probe_server", lambda spec: None)  # the Hub is faked: no probe
    spec = ENCODERS.get("dinov3-vit-b16")
    with pytest.raises(IrepaError, match="gated") as info:
        download_weights(spec, locations=WeightLocations(cache_dir=tmp_path))
    assert "hf auth login" in str(info.value) and "irepa encoders download dinov3-vit-b16" in str(info.value)


def test_download_failure_becomes_missing_weights_message(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import errors

    def offline(*args, **kwargs):
        raise errors.LocalEntryNotFoundError("Cannot reach the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.setattr(weights_module, "_probe_server", lambda spec: None)
    with pytest.raises(WeightsNotFoundError, match="download impossible") as info:
        resolve_weights(ENCODERS.get("dino-vit-b"), locations=WeightLocations(cache_dir=tmp_path))
    assert "irepa encoders download dino-vit-b" in str(info.value)


def test_lookup_order_explicit_then_irepa_then_hf_then_torch_hub(tmp_path):
    spec = ENCODERS.get("dinov2-vit-b")
    locations = WeightLocations(
        cache_dir=tmp_path / "irepa", hf_cache_dir=tmp_path / "hf", torch_hub_dir=tmp_path / "torch", offline=True
    )
    official = tmp_path / "torch" / "checkpoints" / "dinov2_vitb14_pretrain.pth"
    official.parent.mkdir(parents=True)
    official.write_bytes(b"x")
    assert resolve_weights(spec, locations=locations).origin == "torch-hub"

    hf_file = fake_hf_cache(tmp_path / "hf", "timm/vit_base_patch14_dinov2.lvd142m", "model.safetensors")
    found = resolve_weights(spec, locations=locations)
    assert (found.origin, found.path, found.revision) == ("hf-cache", hf_file, COMMIT)

    own = cache_folder(spec, tmp_path / "irepa") / "model.safetensors"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"x")
    assert resolve_weights(spec, locations=locations).origin == "irepa-cache"

    explicit = tmp_path / "mine.safetensors"
    explicit.write_bytes(b"x")
    found = resolve_weights(spec, weights=explicit, locations=locations)
    assert (found.origin, found.path) == ("explicit", explicit)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "dinov2_vitb14_pretrain.pth").write_bytes(b"x")
    assert resolve_weights(spec, weights=folder, locations=locations).path.name == "dinov2_vitb14_pretrain.pth"


def test_explicit_path_errors(tmp_path):
    spec = ENCODERS.get("dinov2-vit-b")
    with pytest.raises(IrepaError, match="does not exist"):
        resolve_weights(spec, weights=tmp_path / "nope.pth")
    (tmp_path / "a.pth").write_bytes(b"x")
    (tmp_path / "b.pth").write_bytes(b"x")
    with pytest.raises(IrepaError, match=r"has a\.pth, b\.pth; expected one of"):
        resolve_weights(spec, weights=tmp_path)


def test_known_checksum_is_verified(tmp_path):
    spec = ENCODERS.get("dinov3-vit-b16")  # official file names carry a sha256 prefix (torch.hub convention)
    official = tmp_path / "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth"
    official.write_bytes(b"definitely not DINOv3")
    with pytest.raises(IrepaError, match=r"checksum mismatch.*expected 73cec8be"):
        resolve_weights(spec, weights=official)
    data = b"some bytes"
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    assert verify_checksum(path, digest[:8], "test") == digest
    assert verify_checksum(path, digest.upper(), "test") == digest


def url_spec(url, sha256=None):
    return EncoderSpec(
        id="test-url-encoder",
        family="test",
        backend="timm",
        arch="vit_small_patch16_224",
        patch_size=16,
        embed_dim=384,
        num_prefix_tokens=1,
        has_cls=True,
        params_m=0.0,
        preprocessing={"official": Preprocessing((0.5,) * 3, (0.5,) * 3)},
        weights=WeightSource(url=url, sha256=sha256, homepage="https://example.org"),
        license="test",
    )


def test_url_download_into_the_irepa_cache(tmp_path):
    source = tmp_path / "served" / "vit-x.pth.tar"
    source.parent.mkdir()
    torch.save({"state_dict": {"w": torch.ones(2)}}, source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    spec = url_spec(source.as_uri(), sha256=digest)
    locations = WeightLocations(cache_dir=tmp_path / "cache")
    found = resolve_weights(spec, locations=locations)
    assert found.origin == "download" and found.sha256 == digest
    assert found.path == tmp_path / "cache" / "encoders" / "test-url-encoder" / "vit-x.pth.tar"
    assert json.loads((found.path.parent / "SOURCE.json").read_text())["sha256"] == digest
    assert torch.equal(read_state_dict(found.path)["state_dict"]["w"], torch.ones(2))
    # Second time: found in the cache, offline.
    again = resolve_weights(spec, locations=WeightLocations(cache_dir=tmp_path / "cache", offline=True))
    assert again.origin == "irepa-cache"


def test_url_download_with_wrong_checksum(tmp_path):
    source = tmp_path / "x.pth"
    source.write_bytes(b"abc")
    spec = url_spec(source.as_uri(), sha256="0" * 64)
    with pytest.raises(IrepaError, match="checksum mismatch"):
        download_weights(spec, locations=WeightLocations(cache_dir=tmp_path / "cache"))


def test_unsafe_or_corrupt_files_are_refused(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00\x01 not a checkpoint")
    with pytest.raises(IrepaError, match="cannot read weights"):
        read_state_dict(garbage)

    pickled = tmp_path / "pickled.pth"  # a checkpoint that pickles a Python object (like MAE's saved args)
    torch.save({"model": {"w": torch.ones(1)}, "args": argparse.Namespace(lr=1.0)}, pickled)
    with pytest.raises(IrepaError, match="re-save its tensors"):
        read_state_dict(pickled)
