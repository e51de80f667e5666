"""Every zoo entry is constructed without weights and checked for grid, embed dim, prefix tokens and params.

Entries are built on the ``meta`` device (shapes only, no memory, no init cost), which covers the billion-parameter
ones; a forward pass on meta tensors runs the real model code, so grid matching is checked end to end at 256 and
512 px. Numerical behaviour is tested on small CPU models in test_encoder.py.
"""

import pytest
import torch

from irepa.encoders import ENCODERS, load_encoder
from irepa.encoders.zoo import PARAMS_M
from irepa.errors import IrepaError, UnknownNameError

# The 27 encoders of the paper's correlation study (paper notes §7.1, [R] ENCODER_NAMES).
STUDY = [
    "dinov2-vit-b",
    "dinov2-vit-l",
    "dinov2-vit-g",
    "dinov3-vit-b16",
    "dinov3-vit-l16",
    "dinov3-vit-h16plus",
    "dinov3-vit-7b16",
    "webssl-vit-dino300m_full2b_224",
    "webssl-vit-dino1b_full2b_224",
    "webssl-vit-dino2b_full2b_224",
    "webssl-vit-dino3b_full2b_224",
    "pe-vit-b",
    "pe-vit-l",
    "pe-vit-g",
    "langpe-vit-l",
    "langpe-vit-g",
    "spatialpe-vit-b",
    "spatialpe-vit-l",
    "spatialpe-vit-g",
    "cradio-vit-b",
    "cradio-vit-l",
    "dino-vit-b",
    "clip-vit-L",
    "mocov3-vit-b",
    "mocov3-vit-l",
    "jepa-vit-h",
    "mae-vit-l",
]


def test_study_ids_are_exactly_the_papers():
    assert len(STUDY) == 27
    assert [name for name, spec in ENCODERS.items() if spec.study] == STUDY


def test_extra_entries():
    names = set(ENCODERS.list())
    assert {"siglip-vit-b", "siglip-vit-l", "siglip-vit-so400m"} <= names
    assert {"siglip2-vit-b", "siglip2-vit-l", "siglip2-vit-so400m", "siglip2-vit-g"} <= names
    assert {"sam2-vit-s", "sam2-vit-b", "sam2-vit-l", "hog", "pixels", "mocov3-vit-s"} <= names
    assert set(PARAMS_M) == names


def test_unknown_id_suggests_close_ids():
    with pytest.raises(UnknownNameError, match="did you mean 'dinov2-vit-b'"):
        load_encoder("dinov2-vit-bb", pretrained=False, device="meta")


@pytest.mark.parametrize("name", ENCODERS.list())
def test_entry_builds_with_grid_and_dim_at_256_and_512(name):
    spec = ENCODERS.get(name)
    for resolution in (256, 512):
        encoder = load_encoder(name, resolution=resolution, pretrained=False, device="meta")
        grid = resolution // 16
        assert encoder.grid == (grid, grid)
        assert encoder.embed_dim == spec.embed_dim
        assert encoder.input_size == (grid * spec.patch_size, grid * spec.patch_size)
        images = torch.empty(2, 3, resolution, resolution, dtype=torch.uint8, device="meta")
        features = encoder.encode(images)
        assert features.patch_tokens.shape == (2, grid * grid, spec.embed_dim)
        assert features.patch_tokens.dtype == torch.float32
        assert features.grid == (grid, grid)
        assert (features.cls_token is not None) == spec.has_cls
        if spec.has_cls:
            assert features.cls_token.shape == (2, spec.embed_dim)
        backbone = encoder.backbone
        if hasattr(backbone, "num_prefix_tokens"):
            assert backbone.num_prefix_tokens == spec.num_prefix_tokens
        if resolution == 256:
            params = sum(p.numel() for p in backbone.parameters()) / 1e6
            assert params == pytest.approx(spec.params_m, abs=0.006)
        assert not encoder.training
        assert not any(p.requires_grad for p in encoder.parameters())


@pytest.mark.parametrize("name", ENCODERS.list())
def test_spec_metadata(name):
    spec = ENCODERS.get(name)
    for pre in spec.preprocessing.values():
        assert len(pre.mean) == len(pre.std) == 3 and min(pre.std) > 0
    assert spec.license and spec.family
    if spec.backend == "classic":
        assert spec.weights is None
        return
    source = spec.weights
    assert source is not None and source.homepage.startswith("https://")
    assert source.gated == name.startswith("dinov3-")
    if source.repo_id and source.repo_id.startswith("timm/"):
        import timm

        # The Hub repository is the one timm itself would download for this architecture.
        assert timm.models.get_pretrained_cfg(spec.arch).hf_hub_id == source.repo_id
        assert source.repo_id == f"timm/{spec.arch}"


def test_summary_is_json_safe():
    import json

    for _, spec in ENCODERS.items():
        json.dumps(spec.summary())


def test_input_sizes_follow_the_official_preprocessing():
    # patch 14 -> 224 px at 256 px images (REPA/iREPA), SAM2's stride-32 stage -> 2x resolution.
    assert ENCODERS.get("dinov2-vit-b").input_size(256) == (224, 224)
    assert ENCODERS.get("dinov2-vit-b").input_size(512) == (448, 448)
    assert ENCODERS.get("pe-vit-l").input_size(256) == (224, 224)
    assert ENCODERS.get("mae-vit-l").input_size(256) == (256, 256)
    assert ENCODERS.get("sam2-vit-s").input_size(256) == (512, 512)
    assert ENCODERS.get("dinov2-vit-b").grid((256, 512)) == (16, 32)


@pytest.mark.parametrize("resolution", [250, 0, (256, 100)])
def test_resolution_the_grid_cannot_tile(resolution):
    with pytest.raises(IrepaError):
        load_encoder("dinov2-vit-b", resolution=resolution, pretrained=False, device="meta")


def test_siglip_offers_native_and_irepa_normalization():
    spec = ENCODERS.get("siglip2-vit-b")
    assert spec.default_preprocessing == "native"
    assert spec.preprocessing["native"].mean == (0.5, 0.5, 0.5)
    assert spec.preprocessing["irepa"].mean == (0.485, 0.456, 0.406)
    with pytest.raises(IrepaError, match="no preprocessing variant 'imagenet'"):
        spec.get_preprocessing("imagenet")


def test_docs_table_lists_every_encoder():
    from pathlib import Path

    from irepa.metrics.probe import ProbeProtocol

    docs = (Path(__file__).resolve().parents[2] / "docs" / "encoders.md").read_text()
    for name, spec in ENCODERS.items():
        assert f"| `{name}`" in docs, name
        assert spec.arch in docs, name
    protocol = ProbeProtocol()
    assert f"{protocol.epochs} epochs" in docs and "lr ∈ {3e-4, 1e-3, 3e-3, 1e-2}" in docs
    assert protocol.learning_rates == (3e-4, 1e-3, 3e-3, 1e-2) and protocol.weight_decays == (0.0, 1e-3)
