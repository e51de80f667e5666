import pytest
import torch

from irepa.errors import IrepaError
from irepa.models.discriminator import (
    PatchDiscriminator,
    generator_hinge_loss,
    hinge_d_loss,
    load_discriminator_state,
)

# Taming's NLayerDiscriminator(3, 64, 3): the documented key list and shapes (conv biases only outside BatchNorm).
OFFICIAL_KEYS = {
    "main.0.weight": (64, 3, 4, 4), "main.0.bias": (64,),
    "main.2.weight": (128, 64, 4, 4),
    "main.3.weight": (128,), "main.3.bias": (128,), "main.3.running_mean": (128,), "main.3.running_var": (128,),
    "main.3.num_batches_tracked": (),
    "main.5.weight": (256, 128, 4, 4),
    "main.6.weight": (256,), "main.6.bias": (256,), "main.6.running_mean": (256,), "main.6.running_var": (256,),
    "main.6.num_batches_tracked": (),
    "main.8.weight": (512, 256, 4, 4),
    "main.9.weight": (512,), "main.9.bias": (512,), "main.9.running_mean": (512,), "main.9.running_var": (512,),
    "main.9.num_batches_tracked": (),
    "main.11.weight": (1, 512, 4, 4), "main.11.bias": (1,),
}  # fmt: skip


def test_official_layout_size_and_patch_map():
    torch.manual_seed(0)
    disc = PatchDiscriminator()
    assert {k: tuple(v.shape) for k, v in disc.state_dict().items()} == OFFICIAL_KEYS
    assert sum(p.numel() for p in disc.parameters()) == 2_765_633  # taming's 3-layer PatchGAN
    assert disc(torch.zeros(2, 3, 256, 256)).shape == (2, 1, 30, 30)  # the 70x70-receptive-field 30x30 map
    convs = torch.cat([disc.main[i].weight.flatten() for i in (0, 2, 5, 8, 11)])
    assert abs(convs.std().item() - 0.02) < 0.002 and abs(convs.mean().item()) < 0.001  # N(0, 0.02)
    bn = torch.cat([disc.main[i].weight for i in (3, 6, 9)])
    assert abs(bn.mean().item() - 1.0) < 0.01 and 0.01 < bn.std().item() < 0.03  # N(1, 0.02)
    assert all(disc.main[i].bias.abs().sum() == 0 for i in (3, 6, 9))


def test_hinge_losses():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 3.0])
    # relu(1 - real) = [0, .5, 2] → mean 5/6; relu(1 + fake) = [0, 1, 4] → mean 5/3
    torch.testing.assert_close(hinge_d_loss(real, fake), torch.tensor(0.5 * (5 / 6 + 5 / 3)))
    torch.testing.assert_close(generator_hinge_loss(fake), torch.tensor(-1 / 3))


def test_initial_weights_load_from_official_files(tmp_path):
    source = PatchDiscriminator()
    path = tmp_path / "sdvae-f8d4-discriminator-ckpt.pt"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, path)
    target = PatchDiscriminator()
    target.load_state_dict(load_discriminator_state(path), strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(target.eval()(x), source.eval()(x))
    bad = tmp_path / "bad.pt"
    torch.save({"main.0.weight": [1, 2]}, bad)
    with pytest.raises(IrepaError, match="not a state dict of tensors"):
        load_discriminator_state(bad)
