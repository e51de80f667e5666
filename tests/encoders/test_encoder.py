"""VisionEncoder behaviour on small random CPU models: preprocessing, token extraction, freezing, validation."""

import json

import pytest
import torch
import torch.nn.functional as F

from irepa.encoders import ENCODERS, load_encoder
from irepa.encoders.spec import IMAGENET_MEAN, IMAGENET_STD
from irepa.errors import IrepaError

TINY_VIT = {"depth": 1, "embed_dim": 64, "num_heads": 2}


def images(b=2, size=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, size, size), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module")
def dinov2():
    torch.manual_seed(0)
    return load_encoder("dinov2-vit-b", pretrained=False, arch_overrides=TINY_VIT)


def test_preprocessing_matches_the_official_recipe(dinov2):
    x = images()
    # REPA/iREPA DINOv2: /255, bicubic resize to 224 (no antialias), ImageNet mean/std.
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    reference = (F.interpolate(x.float() / 255, size=(224, 224), mode="bicubic", align_corners=False) - mean) / std
    torch.testing.assert_close(dinov2.preprocess(x), reference, rtol=0, atol=1e-5)
    assert dinov2.input_size == (224, 224) and dinov2.grid == (16, 16)


def test_tokens_are_the_backbone_patch_tokens(dinov2):
    x = images()
    features = dinov2.encode(x)
    with torch.no_grad():
        out = dinov2.backbone.forward_features(dinov2.preprocess(x))  # (B, 1 + 256, D) after the final norm
    torch.testing.assert_close(features.patch_tokens, out[:, 1:], rtol=0, atol=0)
    torch.testing.assert_close(features.cls_token, out[:, 0], rtol=0, atol=0)
    assert features.as_grid().shape == (2, 64, 16, 16)
    torch.testing.assert_close(features.as_grid()[:, :, 0, 1], features.patch_tokens[:, 1])  # row-major grid
    torch.testing.assert_close(features.mean_token(), features.patch_tokens.mean(1))


def test_uint8_and_float_inputs_agree(dinov2):
    x = images()
    a = dinov2.encode(x).patch_tokens
    b = dinov2.encode(x.float() / 255).patch_tokens
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_no_final_norm_reads_the_last_block_before_the_norm():
    torch.manual_seed(0)
    encoder = load_encoder("mae-vit-l", pretrained=False, arch_overrides=TINY_VIT)
    assert encoder.spec.final_norm is False
    model = encoder.backbone
    x = images()
    with torch.no_grad():
        h = model.norm_pre(model._pos_embed(model.patch_embed(encoder.preprocess(x))))
        h = model.blocks(h)
    features = encoder.encode(x)
    torch.testing.assert_close(features.patch_tokens, h[:, 1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(features.cls_token, h[:, 0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(features.patch_tokens, model.norm(h)[:, 1:], atol=1e-3)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("dinov3-vit-b16", TINY_VIT),  # Eva + RoPE, 5 prefix tokens
        ("pe-vit-g", {"depth": 1, "embed_dim": 64, "num_heads": 2}),  # no CLS, no final norm
        ("cradio-vit-b", TINY_VIT),  # 8 prefix tokens
        ("siglip2-vit-b", TINY_VIT),  # no prefix tokens
        ("sam2-vit-s", {"stages": (1, 1, 1, 1), "embed_dim": 16, "num_heads": 1}),  # HieraDet, stride 32
        ("webssl-vit-dino300m_full2b_224", {"num_hidden_layers": 1, "hidden_size": 64, "num_attention_heads": 2}),
    ],
)
def test_small_models_of_each_code_path_run_at_256_and_512(name, overrides):
    for resolution in (256, 512):
        torch.manual_seed(0)
        encoder = load_encoder(name, resolution=resolution, pretrained=False, arch_overrides=overrides)
        features = encoder.encode(images(1, resolution))
        grid = resolution // 16
        assert features.patch_tokens.shape == (1, grid * grid, encoder.embed_dim)
        assert torch.isfinite(features.patch_tokens).all()
        assert (features.cls_token is not None) == encoder.spec.has_cls


def test_rectangular_resolution():
    encoder = load_encoder("dinov2-vit-b", resolution=(256, 512), pretrained=False, arch_overrides=TINY_VIT)
    x = torch.randint(0, 256, (1, 3, 256, 512), dtype=torch.uint8)
    features = encoder.encode(x)
    assert features.grid == (16, 32) and features.patch_tokens.shape == (1, 512, 64)
    assert encoder.input_size == (224, 448)


def test_encoder_stays_frozen(dinov2):
    assert not dinov2.training
    dinov2.train()
    assert not dinov2.training and not any(m.training for m in dinov2.modules())
    parent = torch.nn.Sequential(dinov2)
    parent.train()
    assert not dinov2.training
    with pytest.raises(RuntimeError, match="frozen"):
        dinov2.requires_grad_(True)
    assert all(not p.requires_grad for p in dinov2.parameters())


def test_encode_refuses_an_unfrozen_encoder():
    encoder = load_encoder("dinov2-vit-b", pretrained=False, arch_overrides=TINY_VIT)
    encoder.backbone.blocks[0].train()  # someone bypassing the guard
    with pytest.raises(RuntimeError, match="train mode"):
        encoder.encode(images())
    encoder.freeze()
    next(encoder.backbone.parameters()).requires_grad = True
    with pytest.raises(RuntimeError, match="require grad"):
        encoder.encode(images())
    encoder.freeze()
    encoder.encode(images())


def test_encode_runs_without_grad(dinov2):
    x = images()
    with torch.enable_grad():
        features = dinov2.encode(x)
    assert not features.patch_tokens.requires_grad


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.zeros(2, 1, 256, 256, dtype=torch.uint8), "grayscale"),
        (torch.zeros(2, 4, 256, 256, dtype=torch.uint8), "RGBA"),
        (torch.zeros(2, 3, 256, 256, dtype=torch.int16), "16-bit"),
        (torch.zeros(2, 3, 250, 250, dtype=torch.uint8), "250x250"),
        (torch.zeros(3, 256, 256, dtype=torch.uint8), r"\(B, 3, H, W\)"),
        (torch.full((1, 3, 256, 256), -1.0), r"\[0, 1\]"),
        (torch.full((1, 3, 256, 256), float("nan")), "NaN"),
    ],
)
def test_bad_images_are_refused_with_the_fix(dinov2, bad, message):
    with pytest.raises(IrepaError, match=message):
        dinov2.encode(bad)


def test_cls_mixing_additive_and_convex():
    torch.manual_seed(0)
    plain = load_encoder("dinov2-vit-b", pretrained=False, arch_overrides=TINY_VIT)
    state = plain.backbone.state_dict()
    x = images()
    base = plain.encode(x)
    for mode, alpha in (("additive", 0.3), ("convex", 0.1)):
        mixed = load_encoder(
            "dinov2-vit-b", pretrained=False, arch_overrides=TINY_VIT, cls_mixing=mode, cls_alpha=alpha
        )
        mixed.backbone.load_state_dict(state)
        out = mixed.encode(x)
        p, c = base.patch_tokens, base.cls_token[:, None]
        expected = p + alpha * c if mode == "additive" else (1 - alpha) * p + alpha * c
        torch.testing.assert_close(out.patch_tokens, expected)
        assert json.loads(json.dumps(mixed.describe()))["cls_mixing"] == mode
    with pytest.raises(IrepaError, match="no CLS token"):
        load_encoder("siglip2-vit-b", pretrained=False, device="meta", cls_mixing="additive", cls_alpha=0.1)
    with pytest.raises(IrepaError, match="<= 1"):
        load_encoder("dinov2-vit-b", pretrained=False, device="meta", cls_mixing="convex", cls_alpha=1.5)


def test_siglip_preprocessing_variants():
    native = load_encoder("siglip-vit-b", pretrained=False, device="meta")
    compat = load_encoder("siglip-vit-b", pretrained=False, device="meta", preprocessing="irepa")
    assert native.preprocessing.mean == (0.5, 0.5, 0.5)
    assert compat.preprocessing.mean == IMAGENET_MEAN
    assert compat.describe()["preprocessing"]["variant"] == "irepa"


def test_bfloat16_backbone_returns_float32(dinov2):
    torch.manual_seed(0)
    bf16 = load_encoder("dinov2-vit-b", pretrained=False, arch_overrides=TINY_VIT, dtype=torch.bfloat16)
    bf16.backbone.load_state_dict(dinov2.backbone.state_dict())
    x = images()
    out = bf16.encode(x)
    assert out.patch_tokens.dtype == torch.float32
    assert bf16.pixel_mean.dtype == torch.float32
    ref = dinov2.encode(x).patch_tokens
    assert (out.patch_tokens - ref).abs().max() < 0.1 * ref.abs().max()


def test_option_errors():
    with pytest.raises(IrepaError, match="pretrained=False"):
        load_encoder("dinov2-vit-b", arch_overrides={"depth": 1})
    with pytest.raises(IrepaError, match="meta"):
        load_encoder("dinov2-vit-b", device="meta")
    with pytest.raises(IrepaError, match="without pretrained weights"):
        load_encoder("hog", weights="/nonexistent")
    with pytest.raises(IrepaError, match="floating"):
        load_encoder("hog", dtype=torch.int8)


def test_describe_is_complete_json(dinov2):
    info = json.loads(json.dumps(dinov2.describe()))
    assert info["encoder"] == "dinov2-vit-b"
    assert info["grid"] == [16, 16] and info["input_size"] == [224, 224]
    assert info["preprocessing"]["mean"] == list(IMAGENET_MEAN)
    assert info["weights"]["origin"] == "random-init"
    assert ENCODERS.get("dinov2-vit-b").summary()["grid_512"] == [32, 32]


@pytest.mark.gpu
def test_cuda_matches_cpu_and_bf16_returns_float32():
    torch.manual_seed(0)
    cpu = load_encoder("dinov2-vit-b", pretrained=False, arch_overrides=TINY_VIT)
    gpu = load_encoder("dinov2-vit-b", pretrained=False, arch_overrides=TINY_VIT, device="cuda")
    gpu.backbone.load_state_dict(cpu.backbone.state_dict())
    x = images()
    ref = cpu.encode(x).patch_tokens
    out = gpu.encode(x)  # uint8 images on the CPU are moved to the encoder's device
    assert out.patch_tokens.device.type == "cuda"
    torch.testing.assert_close(out.patch_tokens.cpu(), ref, rtol=1e-2, atol=1e-2)  # TF32 convolutions
    half = load_encoder("dinov2-vit-b", pretrained=False, arch_overrides=TINY_VIT, device="cuda", dtype=torch.bfloat16)
    half.backbone.load_state_dict(cpu.backbone.state_dict())
    with torch.autocast("cuda", dtype=torch.bfloat16):
        tokens = half.encode(x.cuda()).patch_tokens
    assert tokens.dtype == torch.float32
    assert (tokens.cpu() - ref).abs().max() < 0.1 * ref.abs().max()
