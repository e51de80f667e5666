import pytest
import torch

from irepa.diffusion.losses import DenoisingResult, denoising_loss, drop_labels, velocity_loss
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
def test_drop_labels_rate_is_the_configured_rate(prob):
    y = torch.randint(0, 1000, (200_000,))
    dropped = drop_labels(y, prob, null_label=1000, generator=torch.Generator().manual_seed(0))
    rate = (dropped == 1000).float().mean().item()
    assert abs(rate - prob) < 0.005  # binomial standard error <= 1.2e-3
    kept = dropped != 1000
    assert torch.equal(dropped[kept], y[kept])


def test_drop_labels_edge_cases():
    y = torch.arange(8)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert drop_labels(y, 0.0, 10, g) is y
    assert torch.equal(g.get_state(), state)  # no random number drawn at rate 0
    assert torch.equal(drop_labels(y, 1.0, 10, g), torch.full((8,), 10))
    with pytest.raises(IrepaError, match=r"in \[0, 1\]"):
        drop_labels(y, 1.5, 10)


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
    sampler = get_time_sampler("uniform")
    t = torch.tensor([0.2, 0.4, 0.6, 0.8])
    result = denoising_loss(Oracle(x0), get_path("linear"), x0, torch.arange(4), time_sampler=sampler, t=t)
    assert isinstance(result, DenoisingResult)
    assert result.per_sample.shape == (4,) and result.per_sample.dtype == torch.float32
    assert result.denoise.item() < 1e-10
    torch.testing.assert_close(result.denoise, result.per_sample.mean())


def test_label_dropout_in_the_step_follows_the_config():
    x0 = torch.randn(4000, 1, 1, 1)
    oracle = Oracle(x0)
    y = torch.randint(0, 10, (4000,))
    path, sampler = get_path("linear"), get_time_sampler("uniform")
    g = torch.Generator().manual_seed(0)
    denoising_loss(oracle, path, x0, y, time_sampler=sampler, generator=g, label_dropout=0.25, null_label=10)
    assert abs((oracle.seen == 10).float().mean().item() - 0.25) < 0.03
    denoising_loss(oracle, path, x0, y, time_sampler=sampler, generator=g, label_dropout=0.0)
    assert torch.equal(oracle.seen, y)
    with pytest.raises(IrepaError, match="needs the model's null_label"):
        denoising_loss(oracle, path, x0, y, time_sampler=sampler, label_dropout=0.1)


def test_denoising_loss_on_a_sit_is_reproducible_and_returns_hidden():
    torch.manual_seed(0)
    model = build_model("SiT-S/2", input_size=8, hidden_size=32, depth=2, num_heads=2, num_classes=10)
    with torch.no_grad():
        model.final_layer.linear.weight.normal_()
    x0, y = torch.randn(3, 4, 8, 8), torch.tensor([0, 5, 9])
    kwargs = dict(time_sampler=get_time_sampler("lognormal"), label_dropout=0.1, null_label=model.null_label,
                  return_hidden=1)  # fmt: skip
    a = denoising_loss(model, get_path("linear"), x0, y, generator=torch.Generator().manual_seed(7), **kwargs)
    b = denoising_loss(model, get_path("linear"), x0, y, generator=torch.Generator().manual_seed(7), **kwargs)
    assert torch.equal(a.per_sample, b.per_sample) and torch.equal(a.t, b.t)
    assert a.hidden.shape == (3, 16, 32)
    expected_x_t = (1 - a.t.view(-1, 1, 1, 1)) * x0 + a.t.view(-1, 1, 1, 1) * (a.target + x0)
    torch.testing.assert_close(a.x_t, expected_x_t)  # linear path: target = eps - x0
    a.denoise.backward()
    assert model.blocks[0].attn.qkv.weight.grad is not None
