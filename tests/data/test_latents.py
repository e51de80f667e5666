import pytest
import torch

from irepa.data.latents import (
    SD_SCALE,
    LatentNormalization,
    latent_normalization,
    sample_latents,
    split_moments,
)
from irepa.errors import IrepaError, UnknownNameError

STATS = {"mean": [0.5, -1.0, 2.0, 0.0], "std": [2.0, 4.0, 0.5, 1.0]}


def _latents(seed=0):
    return torch.randn(3, 4, 5, 6, generator=torch.Generator().manual_seed(seed)) * 5 + 1


def test_sd_scalar_matches_repa_and_inverts():
    norm = latent_normalization("sd-scalar")
    z = _latents()
    x = norm.normalize(z)
    torch.testing.assert_close(x, z * SD_SCALE)  # REPA: z * 0.18215 + 0
    torch.testing.assert_close(norm.denormalize(x), z)
    assert norm.num_channels is None and SD_SCALE == 0.18215


def test_per_channel_matches_repa_e_convention_and_inverts():
    norm = latent_normalization("per-channel", STATS)
    z = _latents()
    x = norm.normalize(z)
    mean = torch.tensor(STATS["mean"]).view(1, 4, 1, 1)
    std = torch.tensor(STATS["std"]).view(1, 4, 1, 1)
    torch.testing.assert_close(x, (z - mean) / std)  # REPA-E / iREPA: (z - bias) * scale, scale = 1/std
    torch.testing.assert_close(norm.denormalize(x), z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm.normalize(z[0]), x[0])  # (C, h, w) works too
    # A store (or its manifest) works as the statistics source.
    assert latent_normalization("per-channel", {"latent_stats": STATS}) == norm
    with pytest.raises(IrepaError, match="per-channel latent normalization has 4 channels, the latents have 3"):
        norm.normalize(z[:, :3])


def test_outputs_float32_under_autocast():
    norm = latent_normalization("per-channel", STATS)
    z = _latents().bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm.normalize(z).dtype == torch.float32
        assert norm.denormalize(z).dtype == torch.float32


def test_dict_round_trip_and_stats_file(tmp_path):
    norm = latent_normalization("per-channel", STATS)
    assert LatentNormalization.from_dict(norm.to_dict()) == norm
    # The snapshot metadata format of irepa.models.io: sd-scalar scale/bias, per-channel mean/std.
    assert latent_normalization("sd-scalar").to_dict() == {"kind": "sd-scalar", "scale": 0.18215, "bias": 0.0}
    assert LatentNormalization.from_dict({"kind": "per-channel", **STATS}) == norm
    assert norm.to_dict()["std"] == STATS["std"] and norm.to_dict()["mean"] == STATS["mean"]
    with pytest.raises(IrepaError, match="sd-scalar latent normalization has bias 0"):
        LatentNormalization.from_dict({"kind": "sd-scalar", "scale": 0.2, "bias": 0.1})
    path = tmp_path / "sdvae-ft-mse-f8d4-latents-stats.pt"
    scale = 1 / torch.tensor(STATS["std"], dtype=torch.float64)
    torch.save(
        {"latents_scale": scale.view(1, 4, 1, 1), "latents_bias": torch.tensor(STATS["mean"]).view(1, 4, 1, 1)}, path
    )
    loaded = LatentNormalization.from_stats_file(path)
    assert loaded.kind == "per-channel"
    torch.testing.assert_close(loaded.normalize(_latents()), norm.normalize(_latents()))
    torch.save({"other": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(IrepaError, match="needs tensors 'latents_scale' and 'latents_bias'"):
        LatentNormalization.from_stats_file(tmp_path / "bad.pt")


def test_bad_normalizations():
    with pytest.raises(UnknownNameError, match="did you mean 'per-channel'"):
        latent_normalization("per_channel")
    with pytest.raises(IrepaError, match="needs channel statistics"):
        latent_normalization("per-channel")
    with pytest.raises(IrepaError, match="non-positive channel std"):
        latent_normalization("per-channel", {"mean": [0.0], "std": [0.0]})
    with pytest.raises(IrepaError, match="equal-length"):
        latent_normalization("per-channel", {"mean": [0.0, 1.0], "std": [1.0]})
    with pytest.raises(IrepaError, match="finite positive scales"):
        LatentNormalization("x", (float("nan"),), (0.0,))
    with pytest.raises(IrepaError, match="is malformed"):
        LatentNormalization.from_dict({"kind": "per-channel", "mean": [0.0]})
    with pytest.raises(IrepaError, match="kind 'z' is not one of"):
        LatentNormalization.from_dict({"kind": "z"})


def test_sample_latents():
    mean = torch.randn(2, 4, 3, 3)
    std = torch.rand(2, 4, 3, 3) + 0.1
    moments = torch.cat([mean, std], dim=1).half()
    a = sample_latents(moments, torch.Generator().manual_seed(1))
    b = sample_latents(moments, torch.Generator().manual_seed(1))
    assert a.dtype == torch.float32 and a.shape == (2, 4, 3, 3) and torch.equal(a, b)
    noise = torch.randn(2, 4, 3, 3)
    m, s = split_moments(moments.float())
    torch.testing.assert_close(sample_latents(moments, noise=noise), m + s * noise)
    # Many draws: the sample mean and std match the moments.
    big = torch.cat([torch.full((1, 1, 100, 100), 3.0), torch.full((1, 1, 100, 100), 0.5)], dim=1)
    z = sample_latents(big, torch.Generator().manual_seed(0))
    assert abs(z.mean().item() - 3.0) < 0.02 and abs(z.std().item() - 0.5) < 0.02
    with pytest.raises(IrepaError, match=r"\(B, 2C, h, w\)"):
        sample_latents(torch.zeros(1, 3, 2, 2))
    with pytest.raises(IrepaError, match="noise has shape"):
        sample_latents(moments, noise=torch.zeros(1, 4, 3, 3))


def test_vae_stats_normalization_uses_the_statistics_recorded_with_the_vae():
    from irepa.data.latents import latent_normalization
    from irepa.errors import IrepaError

    manifest = {"latent_stats": {"mean": [9.0, 9.0], "std": [9.0, 9.0]},
                "vae": {"id": "/vaes/e2e", "latent_stats": {"mean": [0.5, -1.0], "std": [2.0, 4.0]}}}  # fmt: skip
    norm = latent_normalization("vae-stats", manifest)
    assert norm.kind == "per-channel" and norm.bias == (0.5, -1.0) and norm.scale == (0.5, 0.25)
    with pytest.raises(IrepaError, match="vae-stats needs a latent store encoded with a VAE"):
        latent_normalization("vae-stats", {"vae": {"id": "stabilityai/sd-vae-ft-mse"}})
