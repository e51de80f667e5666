"""The FID Inception: builds and runs at 256 and 299 px, matches torch-fidelity's port, loads only local files."""

from __future__ import annotations

import pytest
import torch

from irepa.errors import IrepaError, WeightsNotFoundError
from irepa.metrics.generative.inception import (
    INCEPTION_WEIGHTS_FILENAME,
    load_inception,
    locate_inception_weights,
    resize_bilinear_tf1,
)


@pytest.fixture(scope="module")
def inception(inception_weights):
    return load_inception(inception_weights)


@pytest.mark.parametrize("size", [256, 299])
def test_runs_at_256_and_299(inception, size):
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    out = inception(images)
    assert out.pool.shape == (2, 2048) and out.pool.dtype == torch.float32
    assert out.spatial.shape == (2, 2023)
    assert out.logits.shape == (2, 1008)
    assert torch.isfinite(out.pool).all() and out.pool.std() > 1e-3  # random weights keep activations O(1)
    assert not inception.training
    inception.train()
    assert not inception.training  # stays in eval mode


def test_matches_torch_fidelity_port(inception, inception_weights):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    # torch-fidelity unpickles with weights_only=False: fine for the file this test wrote itself.
    theirs = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(inception_weights)
    )
    hooked = {}
    theirs.Mixed_6d.branch1x1.register_forward_hook(lambda _m, _i, out: hooked.setdefault("map", out))
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    pool, logits = theirs(images)
    ours = inception(images)
    torch.testing.assert_close(ours.pool, pool, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.logits, logits, rtol=1e-5, atol=1e-5)
    spatial = hooked["map"][:, :7].permute(0, 2, 3, 1).reshape(2, -1)  # NHWC flattening, as ADM
    torch.testing.assert_close(ours.spatial, spatial, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(32, 32), (256, 256), (48, 64), (299, 299), (400, 300)])
def test_tf1_resize_matches_torch_fidelity(shape):
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    x = torch.randint(0, 256, (1, 3, *shape)).float()
    want = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
    torch.testing.assert_close(resize_bilinear_tf1(x, (299, 299)), want, rtol=0, atol=1e-4)


def test_rejects_non_uint8(inception):
    with pytest.raises(IrepaError, match="uint8"):
        inception(torch.rand(1, 3, 32, 32))


def test_weight_file_errors(tmp_path, inception_weights):
    with pytest.raises(WeightsNotFoundError, match="do not exist"):
        load_inception(tmp_path / "missing.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(IrepaError, match="not an FID Inception-v3 state dict"):
        load_inception(wrong)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(inception_weights.read_bytes()[:1000])
    with pytest.raises(IrepaError, match="cannot read"):
        load_inception(corrupt)


def test_safetensors_weights(tmp_path, inception_weights, inception):
    from safetensors.torch import save_file

    state = torch.load(inception_weights, weights_only=True)
    path = tmp_path / "inception.safetensors"
    save_file(state, str(path))
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(load_inception(path)(images).pool, inception(images).pool)


def test_locate_order_and_message(tmp_path):
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    env_file = tmp_path / "env.pth"
    env_file.write_bytes(b"x")
    with pytest.raises(WeightsNotFoundError) as info:
        locate_inception_weights(None, None, tmp_path / "torch_home")
    message = str(info.value)
    assert "\n" not in message
    assert "IREPA_INCEPTION_WEIGHTS" in message and INCEPTION_WEIGHTS_FILENAME in message and "https://" in message
    assert locate_inception_weights(None, str(env_file), tmp_path / "torch_home") == env_file
    (cache / INCEPTION_WEIGHTS_FILENAME).write_bytes(b"x")
    assert locate_inception_weights(None, None, tmp_path / "torch_home") == cache / INCEPTION_WEIGHTS_FILENAME
    assert locate_inception_weights(env_file, None, None) == env_file
    with pytest.raises(WeightsNotFoundError, match="--inception-weights"):
        locate_inception_weights(tmp_path / "nope.pth", str(env_file), None)
