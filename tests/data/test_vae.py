import pytest
import torch

from irepa.data.vae import (
    SD_VAE_CONFIG,
    TINY_VAE_CONFIG,
    VAES,
    canonical_vae_id,
    load_vae,
    save_random_vae,
    to_uint8,
)
from irepa.errors import IrepaError, WeightsNotFoundError


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    return save_random_vae(tmp_path_factory.mktemp("vae") / "tiny", seed=0)


def test_tiny_random_vae_round_trip_through_the_real_loader(vae_dir):
    assert (vae_dir / "config.json").is_file() and (vae_dir / "diffusion_pytorch_model.safetensors").is_file()
    vae = load_vae("stabilityai/sd-vae-ft-mse", weights=vae_dir)
    assert vae.name == "stabilityai/sd-vae-ft-mse" and vae.weights == str(vae_dir.resolve())
    assert vae.latent_channels == 4 and vae.downsample == 8 and vae.scaling_factor == pytest.approx(0.18215)
    assert sum(p.numel() for p in vae.parameters()) == 1_028_935
    assert not any(p.requires_grad for p in vae.parameters()) and not vae.model.training
    again = load_vae(str(vae_dir))  # a folder as the name: its path is the id
    assert again.name == str(vae_dir.resolve())
    for (k, a), (_, b) in zip(vae.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), k
    # save_random_vae is seeded: same seed, same weights.
    other = load_vae(str(save_random_vae(vae_dir.parent / "again", seed=0)))
    assert other.encoder_sha256() == vae.encoder_sha256()


def test_encode_moments_and_decode(vae_dir):
    vae = load_vae(str(vae_dir))
    images = torch.randint(0, 256, (2, 3, 32, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = vae.encode_moments(images)
    assert mean.shape == std.shape == (2, 4, 4, 6) and mean.dtype == std.dtype == torch.float32
    assert (std > 0).all()
    # Reference: diffusers' posterior on x/127.5 - 1.
    posterior = vae.model.encode(images.float() / 127.5 - 1).latent_dist
    torch.testing.assert_close(mean, posterior.mean)
    torch.testing.assert_close(std, posterior.std)
    decoded = vae.decode(mean)
    assert decoded.shape == (2, 3, 32, 48) and decoded.dtype == torch.uint8
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert vae.encode_moments(images)[0].dtype == torch.float32
    assert vae.latent_shape(256) == (4, 32, 32)
    with pytest.raises(IrepaError, match="not divisible by the VAE's downsampling 8"):
        vae.latent_shape(100)
    with pytest.raises(IrepaError, match="must be uint8"):
        vae.encode_moments(images.float())
    with pytest.raises(IrepaError, match="not divisible"):
        vae.encode_moments(images[:, :, :30])
    with pytest.raises(IrepaError, match=r"latents must be \(B, 4, h, w\)"):
        vae.decode(torch.zeros(1, 3, 4, 4))


def test_to_uint8_range_and_quantization():
    x = torch.tensor([-2.0, -1.0, 0.0, 0.002, 1.0, 3.0])
    # (x + 1) * 127.5 = [-127.5, 0, 127.5, 127.755, 255, 510] -> clamp -> round (half to even) / truncate
    assert to_uint8(x).tolist() == [0, 0, 128, 128, 255, 255]
    assert to_uint8(x, "truncate").tolist() == [0, 0, 127, 127, 255, 255]
    assert to_uint8(x.half()).dtype == torch.uint8
    with pytest.raises(IrepaError, match="quantize 'floor'"):
        to_uint8(x, "floor")


def test_encoder_hash_ignores_decoder(vae_dir):
    vae = load_vae(str(vae_dir))
    before = vae.encoder_sha256()
    with torch.no_grad():
        vae.model.decoder.conv_in.weight.add_(1.0)  # like ft-ema vs ft-mse: only the decoder differs
    assert vae.encoder_sha256() == before
    with torch.no_grad():
        vae.model.encoder.conv_in.weight.add_(1.0)
    assert vae.encoder_sha256() != before


def test_missing_weights_messages(tmp_path):
    with pytest.raises(WeightsNotFoundError) as info:
        load_vae("stabilityai/sd-vae-ft-mse", offline=True, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "'stabilityai/sd-vae-ft-mse'" in message and "downloads are off (offline)" in message
    assert "huggingface-cli download stabilityai/sd-vae-ft-mse" in message and "--vae-weights" in message
    assert str(tmp_path / "cache") in message and "\n" not in message
    with pytest.raises(WeightsNotFoundError, match=r"has no config\.json"):
        load_vae("stabilityai/sd-vae-ft-mse", weights=tmp_path)
    with pytest.raises(WeightsNotFoundError, match=r"has no config\.json"):
        load_vae(str(tmp_path / "does-not-exist"))
    with pytest.raises(IrepaError, match="dtype 'float8'"):
        load_vae(str(tmp_path), dtype="float8")


def test_registry_and_configs():
    assert canonical_vae_id("sd-vae-ft-ema") == "stabilityai/sd-vae-ft-ema"
    assert canonical_vae_id("someone/other-vae") == "someone/other-vae"
    assert VAES.get("sd-vae-ft-mse").encoder == VAES.get("sd-vae-ft-ema").encoder
    assert TINY_VAE_CONFIG["latent_channels"] == SD_VAE_CONFIG["latent_channels"] == 4


def test_sd_vae_architecture_shapes_on_meta():
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        model = AutoencoderKL(**SD_VAE_CONFIG)
    assert sum(p.numel() for p in model.parameters()) == 83_653_863
