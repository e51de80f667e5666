"""Feature spaces: the protocol, zoo-encoder pooling, CLIP embeddings from a local folder, FD and CMMD on them."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from irepa.errors import IrepaError, WeightsNotFoundError
from irepa.metrics.generative.feature_spaces import (
    ClipEmbeddingSpace,
    EncoderSpace,
    FeatureSpace,
    InceptionPoolSpace,
    compute_features,
)
from irepa.metrics.generative.scores import cmmd
from irepa.metrics.generative.stats import FeatureStatistics, frechet_distance


@dataclasses.dataclass
class FakeFeatures:
    patch_tokens: torch.Tensor
    cls_token: torch.Tensor | None
    grid: tuple[int, int]


class FakeEncoder:
    """Follows the zoo's contract: encode(uint8 (B,3,H,W)) -> EncoderFeatures(patch_tokens, cls_token, grid)."""

    def __init__(self, with_cls=True):
        self.with_cls = with_cls

    def encode(self, images):
        x = images.float() / 255
        tokens = torch.nn.functional.avg_pool2d(x, 4).flatten(2).transpose(1, 2)  # (B, T, 3)
        cls = x.mean(dim=(2, 3)) * 2 if self.with_cls else None
        return FakeFeatures(tokens, cls, (x.shape[2] // 4, x.shape[3] // 4))


def test_encoder_space_pooling():
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    mean_space = EncoderSpace(FakeEncoder(), "mean", name="fake")
    assert isinstance(mean_space, FeatureSpace)
    torch.testing.assert_close(mean_space.features(images), images.float().mean(dim=(2, 3)) / 255)
    cls_space = EncoderSpace(FakeEncoder(), "cls", name="fake")
    torch.testing.assert_close(cls_space.features(images), images.float().mean(dim=(2, 3)) / 255 * 2)
    assert cls_space.name == "fake:cls"
    with pytest.raises(IrepaError, match="no CLS"):
        EncoderSpace(FakeEncoder(with_cls=False), "cls").features(images)
    with pytest.raises(IrepaError, match="pooling"):
        EncoderSpace(FakeEncoder(), "max")


def test_fd_in_an_encoder_space():
    space = EncoderSpace(FakeEncoder(), "mean")
    gen = torch.Generator().manual_seed(0)
    a = [torch.randint(0, 200, (8, 3, 16, 16), dtype=torch.uint8, generator=gen) for _ in range(3)]
    b = [(x.int() + 50).clamp(0, 255).to(torch.uint8) for x in a]
    fa, fb = compute_features(space, a), compute_features(space, b)
    assert fa.shape == (24, 3)
    sa, sb = FeatureStatistics.from_features(fa), FeatureStatistics.from_features(fb)
    assert abs(frechet_distance(sa, sa)) < 1e-9
    assert frechet_distance(sa, sb) > 0.01


def test_inception_pool_space(inception_weights):
    from irepa.metrics.generative.inception import load_inception

    space = InceptionPoolSpace(load_inception(inception_weights))
    assert space.features(torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)).shape == (1, 2048)


def test_clip_embedding_space_and_cmmd(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "clip")
    space = ClipEmbeddingSpace(tmp_path / "clip")
    images = torch.randint(0, 256, (4, 3, 48, 64), dtype=torch.uint8)
    emb = space.features(images)
    assert emb.shape == (4, 16)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    other = space.features(255 - images)
    assert cmmd(emb, emb) == pytest.approx(0.0, abs=1e-9)
    assert cmmd(emb, other) > 0
    with pytest.raises(WeightsNotFoundError, match=r"config\.json"):
        ClipEmbeddingSpace(tmp_path / "missing")
