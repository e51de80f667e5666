import argparse

import pytest
import torch
from ldm_vae_layout import LdmVAE, randomize

from irepa.errors import IrepaError
from irepa.models.vae import (
    VAE_ARCHITECTURES,
    build_vae,
    ldm_vae_to_diffusers,
    read_official_vae,
    read_vae_folder_stats,
    save_vae_folder,
)

# A tiny f16d32-like VAE: two levels, attention blocks at the lowest level (as in REPA-E's f16d32), mid attention.
TINY_ATTN = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, z=8, attn_levels=(1,))


class Untrusted:
    pass


def ldm_reference(seed=0, **cfg):
    return randomize(LdmVAE(**{**TINY_ATTN, **cfg}), seed=seed).eval()


def check_same_outputs(model, ref):
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        posterior = model.encode(x).latent_dist
        mean, logvar = ref.encode(x)
        torch.testing.assert_close(posterior.mean, mean, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(posterior.logvar, logvar, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model.decode(mean).sample, ref.decode(mean), atol=1e-5, rtol=1e-4)


def test_architectures_have_the_documented_sizes():
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        sd = AutoencoderKL(**VAE_ARCHITECTURES.get("sdvae"))
        f16 = AutoencoderKL(**VAE_ARCHITECTURES.get("vavae"))
    assert round(sum(p.numel() for p in sd.parameters()) / 1e6, 1) == 83.7  # environment.md §4
    assert f16.config.latent_channels == 32 and 2 ** (len(f16.config.block_out_channels) - 1) == 16
    vae = build_vae("tiny", seed=3)
    again = build_vae("tiny", seed=3)
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize("cfg", [TINY_ATTN, dict(TINY_ATTN, attn_levels=(), num_res_blocks=2, z=4)])
def test_ldm_layout_maps_onto_diffusers_with_identical_outputs(cfg):
    from diffusers import AutoencoderKL

    ref = ldm_reference(**cfg)
    config, state = ldm_vae_to_diffusers(ref.state_dict())
    assert config["latent_channels"] == cfg["z"] and config["layers_per_block"] == cfg["num_res_blocks"]
    expected_down = "AttnDownEncoderBlock2D" if cfg["attn_levels"] else "DownEncoderBlock2D"
    assert config["down_block_types"][-1] == expected_down
    model = AutoencoderKL(**config)
    model.load_state_dict(state, strict=True)
    check_same_outputs(model.eval(), ref)


def test_ldm_conversion_names_mismatched_keys():
    state = ldm_reference().state_dict()
    del state["decoder.up.0.block.1.conv2.weight"]
    with pytest.raises(IrepaError, match=r"missing keys decoder\.up_blocks\.1\.resnets\.1\.conv2\.weight"):
        ldm_vae_to_diffusers(state)
    with pytest.raises(IrepaError, match="not a VAE state dict in the latent-diffusion layout"):
        ldm_vae_to_diffusers({"blocks.0.weight": torch.zeros(1)})


def test_repae_vae_folder_loads_with_stats_and_discriminator(tmp_path):
    from irepa.models.discriminator import PatchDiscriminator

    ref = ldm_reference()
    folder = tmp_path / "e2e-tiny"
    folder.mkdir()
    torch.save(ref.state_dict(), folder / "e2e-tiny.pt")  # save_vae_weights.py's three files
    scale = torch.linspace(0.5, 2.0, 8).view(1, 8, 1, 1)
    bias = torch.linspace(-0.3, 0.4, 8).view(1, 8, 1, 1)
    torch.save({"latents_scale": scale, "latents_bias": bias}, folder / "e2e-tiny-latents-stats.pt")
    disc = PatchDiscriminator()
    torch.save(disc.state_dict(), folder / "e2e-tiny-discriminator-ckpt.pt")
    official = read_official_vae(folder)
    check_same_outputs(official.model, ref)
    torch.testing.assert_close(
        torch.tensor(official.latent_stats["std"], dtype=torch.float64), 1 / scale.flatten().double()
    )
    torch.testing.assert_close(
        torch.tensor(official.latent_stats["mean"], dtype=torch.float64), bias.flatten().double()
    )
    PatchDiscriminator().load_state_dict(official.discriminator, strict=True)

    # The generic loader takes the same folder (e.g. `irepa data encode --vae e2e-sdvae/`).
    from irepa.data.vae import load_vae

    vae = load_vae(str(folder))
    assert vae.latent_channels == 8 and vae.downsample == 2


def test_repae_training_dict_gives_vae_stats_from_ema_bn(tmp_path):
    ref = ldm_reference()
    var = torch.linspace(0.25, 4.0, 8)
    ckpt = {
        "model": {}, "ema": {"bn.running_mean": torch.arange(8.0), "bn.running_var": var,
                              "bn.num_batches_tracked": torch.tensor(3)},
        "vae": {f"module.{k}": v for k, v in ref.state_dict().items()},  # DDP prefix stripped
        "args": argparse.Namespace(vae="f16d32", bn_momentum=0.1), "steps": 3,
    }  # fmt: skip
    path = tmp_path / "0000003.pt"
    torch.save(ckpt, path)
    official = read_official_vae(path)
    check_same_outputs(official.model, ref)
    torch.testing.assert_close(torch.tensor(official.latent_stats["std"], dtype=torch.float64), var.double().sqrt())
    assert official.discriminator is None and official.source["latent_stats"].endswith("ema/bn")


def test_official_vae_errors(tmp_path):
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(IrepaError, match=r"must hold exactly one NAME\.pt"):
        read_official_vae(empty)

    hostile = tmp_path / "hostile.pt"
    torch.save({"vae": ldm_reference().state_dict(), "args": Untrusted()}, hostile)
    with pytest.raises(IrepaError, match="not on irepa's allow-list"):
        read_official_vae(hostile)
    bad_stats = tmp_path / "bad"
    bad_stats.mkdir()
    torch.save(ldm_reference().state_dict(), bad_stats / "v.pt")
    torch.save({"latents_scale": torch.ones(3), "latents_bias": torch.zeros(3)}, bad_stats / "v-latents-stats.pt")
    with pytest.raises(IrepaError, match="3 channels but the VAE has 8"):
        read_official_vae(bad_stats)


def test_save_vae_folder_round_trip(tmp_path):
    from irepa.data.vae import load_vae

    model = build_vae("tiny", seed=0)
    out = save_vae_folder(model, tmp_path / "vae", latent_stats={"mean": [0.1] * 4, "std": [2.0] * 4},
                          source={"run": "r", "step": 5})  # fmt: skip
    assert read_vae_folder_stats(out) == {"mean": [0.1] * 4, "std": [2.0] * 4}
    loaded = load_vae(str(out))
    for a, b in zip(model.state_dict().values(), loaded.model.state_dict().values()):
        assert torch.equal(a, b)
    assert read_vae_folder_stats(tmp_path) is None
    with pytest.raises(IrepaError, match="latent statistics have 3 means"):
        save_vae_folder(model, tmp_path / "v2", latent_stats={"mean": [0.0] * 3, "std": [1.0] * 3})


@pytest.mark.parametrize("arch", ["tiny", "f16d32"])
def test_diffusers_config_is_read_back_from_a_state_dict(arch):
    from diffusers import AutoencoderKL

    from irepa.models.vae import diffusers_vae_config

    with torch.device("meta"):
        model = AutoencoderKL(**VAE_ARCHITECTURES.get(arch))
    config = diffusers_vae_config(model.state_dict())
    for key, value in VAE_ARCHITECTURES.get(arch).items():
        if key != "sample_size":
            assert tuple(config[key]) == tuple(value) if isinstance(value, tuple) else config[key] == value, key
    with pytest.raises(IrepaError, match="not a diffusers AutoencoderKL state dict"):
        diffusers_vae_config({"x": torch.zeros(1)})
