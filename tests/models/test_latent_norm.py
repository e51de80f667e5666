import pytest
import torch

from irepa.errors import IrepaError
from irepa.models.latent_norm import LatentBatchNorm


def test_initialised_from_the_vae_statistics_and_inverts_in_eval():
    mean, std = [0.5, -1.0, 0.0, 2.0], [2.0, 0.5, 1.0, 4.0]
    bn = LatentBatchNorm(4, mean=mean, std=std).eval()
    # REPA-E's init_bn: running_mean = latents_bias, running_var = 1 / latents_scale^2 = std^2
    torch.testing.assert_close(bn.bn.running_var, torch.tensor(std) ** 2)
    assert bn.bn.affine is False and bn.bn.eps == 1e-4 and bn.bn.momentum == 0.1
    z = torch.randn(3, 4, 5, 5) * torch.tensor(std).view(1, 4, 1, 1) + torch.tensor(mean).view(1, 4, 1, 1)
    x = bn(z)
    expected = (z - torch.tensor(mean).view(1, 4, 1, 1)) / (torch.tensor(std).view(1, 4, 1, 1) ** 2 + 1e-4).sqrt()
    torch.testing.assert_close(x, expected)
    # De-normalization uses the running statistics without eps (REPA-E's sampler: z = x / rsqrt(var) + mean).
    torch.testing.assert_close(bn.denormalize(torch.zeros(1, 4, 1, 1)).flatten(), torch.tensor(mean))
    assert bn.normalization() == {"kind": "per-channel", "mean": mean, "std": std}


def test_train_mode_uses_batch_statistics_and_updates_running_ones():
    bn = LatentBatchNorm(2, mean=[0.0, 0.0], std=[1.0, 1.0], momentum=0.5).train()
    z = torch.stack([torch.full((4, 4), 3.0), torch.full((4, 4), -2.0)]).unsqueeze(0).repeat(2, 1, 1, 1)
    z = z + torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    out = bn(z)
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-5  # batch statistics
    batch_mean = z.mean(dim=(0, 2, 3))
    torch.testing.assert_close(bn.bn.running_mean, 0.5 * batch_mean)  # momentum 0.5 from 0
    assert int(bn.bn.num_batches_tracked) == 1
    assert set(bn.state_dict()) == {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}


def test_bad_statistics_and_shapes():
    with pytest.raises(IrepaError, match="3 means and 3 stds for 4 channels"):
        LatentBatchNorm(4, mean=[0.0] * 3, std=[1.0] * 3)
    with pytest.raises(IrepaError, match="positive standard deviations"):
        LatentBatchNorm(2, mean=[0.0, 0.0], std=[1.0, 0.0])
    with pytest.raises(IrepaError, match=r"latents must be \(B, 2, h, w\)"):
        LatentBatchNorm(2)(torch.zeros(1, 3, 2, 2))
    sync = LatentBatchNorm(2, mean=[1.0, 2.0], std=[1.0, 1.0]).convert_sync()
    assert isinstance(sync.bn, torch.nn.SyncBatchNorm) and sync.latent_stats()["mean"] == [1.0, 2.0]


def test_ema_of_the_running_statistics():
    bn = LatentBatchNorm(2, mean=[1.0, 2.0], std=[1.0, 2.0], momentum=1.0, ema_decay=0.75).train()
    assert bn.ema_stats() == {"mean": [1.0, 2.0], "std": [1.0, 2.0]}  # starts as a copy
    z = torch.tensor([[3.0, 6.0], [5.0, 10.0]]).view(2, 2, 1, 1)  # batch means 4 and 8 (momentum 1: replaced)
    bn(z)
    bn.update_ema()
    torch.testing.assert_close(bn.ema_mean, torch.tensor([0.75 * 1 + 0.25 * 4, 0.75 * 2 + 0.25 * 8]))
    torch.testing.assert_close(bn.ema_var, 0.75 * torch.tensor([1.0, 4.0]) + 0.25 * bn.bn.running_var)
    assert {"ema_mean", "ema_var"} <= set(bn.state_dict())
    LatentBatchNorm(2).update_ema()  # a no-op without ema_decay
