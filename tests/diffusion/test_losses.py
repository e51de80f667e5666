import pytest
import torch

from irepa.diffusion.losses import DenoisingResult, denoising_loss, drop_labels, label_drop_mask, velocity_loss
from irepa.diffusion.paths import get_path
from irepa.diffusion.time_sampling import get_time_sampler
from irepa.errors import IrepaError
from irepa.models import ModelOutput, build_model


def test_velocity_loss_is_per_sample_mean_over_c_h_w():
    pred, target = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    expected = torch.stack([((pred[i] - target[i]) ** 2).mean() for i in range(3)])
    torch.testing.assert_close(velocity_loss(pred, target), expected)
    with pytest.raises(IrepaError, match="prediction shape"):
        velocity_loss(pred, target[:2])


def test_velocity_loss_is_float32_under_bf16_autocast():
    pred, target = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = velocity_loss(pred.bfloat16(), target)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, velocity_loss(pred.bfloat16().float(), target))


@pytest.mark.parametrize("prob", [0.1, 0.5])
def test_label_dropout_rate_is_the_configured_rate(prob):
    y = torch.randint(0, 1000, (200_000,))
    drop = label_drop_mask(len(y), prob, generator=torch.Generator().manual_seed(0))
    dropped = drop_labels(y, drop, null_label=1000)
    rate = (dropped == 1000).float().mean().item()
    assert abs(rate - prob) < 0.005  # binomial standard error <= 1.2e-3
    kept = dropped != 1000
    assert torch.equal(dropped[kept], y[kept])


def test_label_drop_mask_edge_cases():
    g = torch.Generator().manual_seed(0)
    assert not label_drop_mask(8, 0.0, generator=g).any()
    assert label_drop_mask(8, 1.0, generator=g).all()
    # The stream advances by `batch` numbers whatever the rate (the next draws do not depend on it).
    a, b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    label_drop_mask(5, 0.0, generator=a), label_drop_mask(5, 0.7, generator=b)
    assert torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))
    with pytest.raises(IrepaError, match=r"in \[0, 1\]"):
        label_drop_mask(8, 1.5)


class Oracle(torch.nn.Module):
    """Predicts the exact linear-path velocity (x_t - x0) / t from a known x0; records the labels it sees."""

    def __init__(self, x0):
        super().__init__()
        self.x0, self.seen = x0, None

    def forward(self, x_t, t, y, *, return_hidden=None):
        self.seen = y
        tt = t.view(-1, 1, 1, 1)
        return ModelOutput((x_t - self.x0) / tt, None)


def test_denoising_loss_is_zero_at_the_optimum_and_reports_terms():
    x0 = torch.randn(4, 2, 4, 4)
    t = torch.tensor([0.2, 0.4, 0.6, 0.8])
    result = denoising_loss(Oracle(x0), get_path("linear"), x0, torch.arange(4), t=t, noise=torch.randn_like(x0))
    assert isinstance(result, DenoisingResult)
    assert result.per_sample.shape == (4,) and result.per_sample.dtype == torch.float32
    assert result.denoise.item() < 1e-10
    torch.testing.assert_close(result.denoise, result.per_sample.mean())
    with pytest.raises(IrepaError, match="must match data"):
        denoising_loss(Oracle(x0), get_path("linear"), x0, torch.arange(4), t=t[:2], noise=torch.randn_like(x0))


def test_denoising_loss_on_a_sit_is_reproducible_and_returns_hidden():
    torch.manual_seed(0)
    model = build_model("SiT-S/2", input_size=8, hidden_size=32, depth=2, num_heads=2, num_classes=10)
    with torch.no_grad():
        model.final_layer.linear.weight.normal_()
    x0, y = torch.randn(3, 4, 8, 8), torch.tensor([0, 5, 9])
    g = torch.Generator().manual_seed(7)
    t, noise = get_time_sampler("lognormal")(3, generator=g), torch.randn(x0.shape, generator=g)
    a = denoising_loss(model, get_path("linear"), x0, y, t=t, noise=noise, return_hidden=1)
    b = denoising_loss(model, get_path("linear"), x0, y, t=t.clone(), noise=noise.clone(), return_hidden=1)
    assert torch.equal(a.per_sample, b.per_sample)
    assert a.hidden.shape == (3, 16, 32)
    expected_x_t = (1 - a.t.view(-1, 1, 1, 1)) * x0 + a.t.view(-1, 1, 1, 1) * (a.target + x0)
    torch.testing.assert_close(a.x_t, expected_x_t)  # linear path: target = eps - x0
    a.denoise.backward()
    assert model.blocks[0].attn.qkv.weight.grad is not None
