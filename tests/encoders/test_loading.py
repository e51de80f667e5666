"""Weights saved from random models load back through the real loading path and give identical outputs.

One entry per backend: timm (MoCo v3 ViT-S from a checkpoint in the official MoCo v3 layout, remapped; SAM 2 Hiera
from a plain timm-format file), Transformers (a Web-SSL folder written by ``save_pretrained``) and packaged (an
asset created in a temporary folder). Wrong-architecture files must fail with missing/unexpected keys named.
"""

import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from irepa.encoders import ENCODERS, load_encoder, register_packaged_vit
from irepa.encoders.packaged import vit_param_count
from irepa.encoders.remap import mocov3_to_timm
from irepa.errors import IrepaError


def images(b=2, size=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, size, size), generator=g, dtype=torch.uint8)


def official_mocov3_checkpoint(state_dict):
    """A MoCo v3 training checkpoint: DDP prefixes, base + momentum encoders, predictor, projector head."""
    base = {f"module.base_encoder.{k}": v for k, v in state_dict.items()}
    momentum = {f"module.momentum_encoder.{k}": v + 1 for k, v in state_dict.items()}
    heads = {
        "module.base_encoder.head.0.weight": torch.randn(16, 384),
        "module.base_encoder.head.1.running_mean": torch.zeros(16),
        "module.predictor.0.weight": torch.randn(8, 8),
    }
    return {"epoch": 300, "arch": "vit_small", "state_dict": {**base, **momentum, **heads}, "optimizer": {}}


def test_mocov3_remap_of_the_official_layout():
    sd = {
        "cls_token": torch.zeros(1, 1, 4),
        "pos_embed": torch.zeros(1, 5, 4),
        "blocks.0.attn.qkv.weight": torch.ones(12, 4),
        "blocks.13.norm13.weight": torch.ones(4),  # the naming bug of some checkpoints
        "blocks.14.mlp.fc14.bias": torch.ones(4),
        "norm.weight": torch.ones(4),
    }
    out = mocov3_to_timm(official_mocov3_checkpoint(sd))
    assert set(out) == {
        "cls_token",
        "pos_embed",
        "blocks.0.attn.qkv.weight",
        "blocks.13.norm1.weight",
        "blocks.14.mlp.fc2.bias",
        "norm.weight",
    }
    assert torch.equal(out["blocks.0.attn.qkv.weight"], torch.ones(12, 4))  # base encoder, not the momentum one
    # Idempotent: REPA's "fixed" state dicts and timm layouts pass through.
    assert set(mocov3_to_timm(out)) == set(out)
    assert set(mocov3_to_timm({f"module.{k}": v for k, v in out.items()})) == set(out)
    with pytest.raises(IrepaError, match="no tensors"):
        mocov3_to_timm({"state_dict": {"module.base_encoder.head.0.weight": torch.ones(1)}})


def test_timm_mocov3_official_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    random_model = load_encoder("mocov3-vit-s", pretrained=False)
    path = tmp_path / "vit-s-300ep.pth.tar"
    torch.save(official_mocov3_checkpoint(random_model.backbone.state_dict()), path)
    loaded = load_encoder("mocov3-vit-s", weights=path)
    x = images()
    assert torch.equal(loaded.encode(x).patch_tokens, random_model.encode(x).patch_tokens)
    assert loaded.weights_info["origin"] == "explicit" and loaded.weights_info["pretrained"] is True
    # The same file at another resolution: the position embedding is resampled by timm's checkpoint filter.
    small = load_encoder("mocov3-vit-s", weights=path, resolution=64)
    assert small.backbone.pos_embed.shape == (1, 1 + 16, 384)
    assert small.encode(images(1, 64)).patch_tokens.shape == (1, 16, 384)


def test_timm_plain_file_roundtrip_from_the_irepa_cache(tmp_path):
    torch.manual_seed(0)
    random_model = load_encoder("sam2-vit-s", pretrained=False, resolution=64)
    folder = tmp_path / "encoders" / "sam2-vit-s"
    folder.mkdir(parents=True)
    save_file(random_model.backbone.state_dict(), str(folder / "model.safetensors"))
    loaded = load_encoder("sam2-vit-s", resolution=64, cache_dir=tmp_path, hf_cache_dir=tmp_path / "hf", offline=True)
    assert loaded.weights_info["origin"] == "irepa-cache"
    x = images(1, 64)
    assert torch.equal(loaded.encode(x).patch_tokens, random_model.encode(x).patch_tokens)


def test_timm_wrong_architecture_names_the_keys(tmp_path):
    torch.manual_seed(0)
    sd = load_encoder("mocov3-vit-s", pretrained=False).backbone.state_dict()
    del sd["blocks.0.norm1.weight"]
    sd["decoder.weight"] = torch.ones(3)
    path = tmp_path / "wrong.safetensors"
    save_file(sd, str(path))
    with pytest.raises(IrepaError) as info:
        load_encoder("mocov3-vit-s", weights=path)
    message = str(info.value)
    assert "do not fit encoder 'mocov3-vit-s'" in message and "\n" not in message
    assert "1 missing keys (blocks.0.norm1.weight)" in message
    assert "1 unexpected keys (decoder.weight)" in message


def test_timm_shape_mismatch_is_reported(tmp_path):
    torch.manual_seed(0)
    sd = load_encoder("mocov3-vit-s", pretrained=False).backbone.state_dict()
    sd["blocks.0.mlp.fc1.bias"] = torch.zeros(7)
    path = tmp_path / "wrong.safetensors"
    save_file(sd, str(path))
    with pytest.raises(IrepaError, match=r"1 shape mismatches \(blocks\.0\.mlp\.fc1\.bias: checkpoint \(7\)"):
        load_encoder("mocov3-vit-s", weights=path)


@pytest.fixture(scope="module")
def tiny_webssl(tmp_path_factory):
    """A one-layer Web-SSL-shaped Dinov2Model saved with save_pretrained (config.json + model.safetensors)."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=1024,
        num_hidden_layers=1,
        num_attention_heads=16,
        mlp_ratio=4,
        use_swiglu_ffn=True,
        layerscale_value=1e-5,
        patch_size=14,
        image_size=224,
    )
    model = Dinov2Model(config).eval()
    folder = tmp_path_factory.mktemp("webssl")
    model.save_pretrained(folder)
    return model, folder


def test_transformers_folder_roundtrip(tiny_webssl):
    model, folder = tiny_webssl
    encoder = load_encoder("webssl-vit-dino300m_full2b_224", weights=folder)
    x = images()
    features = encoder.encode(x)
    with torch.no_grad():
        reference = model(pixel_values=encoder.preprocess(x)).last_hidden_state
    assert torch.equal(features.patch_tokens, reference[:, 1:])
    assert torch.equal(features.cls_token, reference[:, 0])


def test_transformers_wrong_architecture(tiny_webssl, tmp_path):
    _, folder = tiny_webssl
    # A folder whose config.json asks for two blocks but whose weights hold one: block 1 is missing.
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    config = json.loads((folder / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    (wrong / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(IrepaError, match=r"do not fit encoder .*missing keys \(encoder\.layer\.1\."):
        load_encoder("webssl-vit-dino300m_full2b_224", weights=wrong)
    # A folder whose config contradicts the spec.
    with pytest.raises(IrepaError, match="hidden_size=1024 but encoder 'webssl-vit-dino1b_full2b_224' expects 1536"):
        load_encoder("webssl-vit-dino1b_full2b_224", weights=folder)


def test_packaged_vit_asset_roundtrip_and_checksum(tmp_path):
    arch = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    teacher = VisionTransformer(num_classes=0, **arch).eval()
    asset = tmp_path / "tiny_teacher.safetensors"
    save_file(teacher.state_dict(), str(asset))
    digest = hashlib.sha256(asset.read_bytes()).hexdigest()
    spec = register_packaged_vit("test-packaged-vit", asset=asset, sha256=digest, pixels_per_token=8, **arch)
    try:
        assert spec.params_m == pytest.approx(sum(p.numel() for p in teacher.parameters()) / 1e6, abs=1e-3)
        assert vit_param_count(32, 8, 32, 2, 4.0, True, 0) == sum(p.numel() for p in teacher.parameters())
        encoder = load_encoder("test-packaged-vit", resolution=32)
        assert encoder.grid == (4, 4) and encoder.weights_info["sha256"] == digest
        x = images(2, 32)
        with torch.no_grad():
            reference = teacher.forward_features(encoder.preprocess(x))
        assert torch.equal(encoder.encode(x).patch_tokens, reference[:, 1:])
        # Other resolutions resample the position embedding.
        assert load_encoder("test-packaged-vit", resolution=64).encode(images(1, 64)).patch_tokens.shape == (1, 64, 32)
    finally:
        ENCODERS._items.pop("test-packaged-vit")
    register_packaged_vit("test-packaged-bad", asset=asset, sha256="f" * 64, pixels_per_token=8, **arch)
    try:
        with pytest.raises(IrepaError, match="checksum mismatch"):
            load_encoder("test-packaged-bad", resolution=32)
    finally:
        ENCODERS._items.pop("test-packaged-bad")
    with pytest.raises(ValueError, match="64 hex digits"):
        register_packaged_vit("test-packaged-short", asset=asset, sha256="abc", **arch)


def test_packaged_asset_resolves_inside_the_package():
    from irepa.encoders.weights import _package_asset_path

    path = _package_asset_path("teacher.safetensors")
    assert path.parts[-3:] == ("irepa", "assets", "teacher.safetensors")


def test_every_backend_named_by_a_spec_is_registered():
    from typing import get_args

    from irepa.encoders.load import BACKENDS
    from irepa.encoders.spec import Backend

    assert sorted(BACKENDS.list()) == sorted(get_args(Backend))
    assert {spec.backend for _, spec in ENCODERS.items()} <= set(BACKENDS.list())
