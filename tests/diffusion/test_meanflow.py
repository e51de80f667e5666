import math

import pytest
import torch
from torch import nn

from irepa.diffusion.meanflow import (
    MeanFlowGuidance,
    adaptive_weight,
    average_velocity_jvp,
    guided_velocity,
    meanflow_loss,
    meanflow_sample,
    meanflow_time_grid,
    sample_interval_times,
)
from irepa.diffusion.paths import LinearPath
from irepa.diffusion.time_sampling import get_time_sampler
from irepa.errors import IrepaError
from irepa.models import build_model
from irepa.models.layers import math_attention


def tiny(**overrides) -> nn.Module:
    """A 2-block SiT with the interval embedder and random (not zero-initialized) weights."""
    kwargs = dict(input_size=8, in_channels=3, hidden_size=32, depth=2, num_heads=2, num_classes=4)
    model = build_model("SiT-S/2", time_interval=True, **{**kwargs, **overrides})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def inputs(batch: int = 4, dtype=torch.float32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, 3, 8, 8, generator=g, dtype=dtype)
    noise = torch.randn(batch, 3, 8, 8, generator=g, dtype=dtype)
    y = torch.randint(0, 4, (batch,), generator=g)
    r, t = sample_interval_times(batch, generator=g, equal_share=0.0)
    return x0, noise, y, r.to(dtype), t.to(dtype)


class CountingModel(nn.Module):
    """Counts forward calls of the wrapped model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# (r, t)


def test_interval_times_are_min_and_max_of_two_logit_normal_draws():
    r, t = sample_interval_times(64, generator=torch.Generator().manual_seed(3), equal_share=0.0)
    g = torch.Generator().manual_seed(3)
    a = torch.sigmoid(torch.randn(64, generator=g) * 1.0 - 0.4)
    b = torch.sigmoid(torch.randn(64, generator=g) * 1.0 - 0.4)
    assert torch.equal(t, torch.maximum(a, b)) and torch.equal(r, torch.minimum(a, b))
    assert t.dtype == torch.float32 and bool((r < t).all())


@pytest.mark.parametrize(("batch", "share"), [(256, 0.75), (10, 0.75), (8, 0.0), (8, 1.0)])
def test_interval_times_give_exactly_the_share_of_equal_pairs(batch, share):
    r, t = sample_interval_times(batch, generator=torch.Generator().manual_seed(0), equal_share=share)
    assert int((r == t).sum()) == int(batch * share)
    assert bool((r <= t).all()) and bool(((t > 0) & (t < 1)).all())
    # The equal pairs are not simply the first ones (a process's slice of the global batch gets its share).
    if 0 < share < 1 and batch > 100:
        assert not bool((r == t)[: int(batch * share)].all())


def test_interval_times_take_any_time_sampler_and_validate():
    uniform = get_time_sampler("uniform")
    r, t = sample_interval_times(16, time_sampler=uniform, generator=torch.Generator().manual_seed(5), equal_share=0)
    g = torch.Generator().manual_seed(5)
    a, b = uniform(16, generator=g), uniform(16, generator=g)
    assert torch.equal(t, torch.maximum(a, b)) and torch.equal(r, torch.minimum(a, b))
    with pytest.raises(IrepaError, match="equal_share"):
        sample_interval_times(4, equal_share=1.5)


# ----------------------------------------------------------------------------------------------------------------------
# Target


def test_jvp_target_equals_central_finite_differences_float64():
    model = tiny().double()
    x0, noise, y, r, t = inputs(3, torch.float64)
    result = meanflow_loss(model, x0, y, r=r, t=t, noise=noise)
    assert result.u.dtype == torch.float64

    def u(z, t_):
        return model(z, t_, y, h=t_ - r).out

    z_t = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
    v = noise - x0
    eps = 1e-6
    with math_attention():
        du_dt = (u(z_t + eps * v, t + eps) - u(z_t - eps * v, t - eps)) / (2 * eps)
    expected = v - (t - r)[:, None, None, None] * du_dt
    torch.testing.assert_close(result.target, expected, atol=1e-7, rtol=1e-6)
    assert float((result.target - v).abs().max()) > 1e-3  # the derivative term matters here


def test_one_forward_primal_reused_as_prediction_and_hidden_tokens_from_the_same_call():
    model = tiny()
    counting = CountingModel(model)
    x0, noise, y, r, t = inputs()
    result = meanflow_loss(counting, x0, y, r=r, t=t, noise=noise, return_hidden=1)
    assert counting.calls == 1  # the JVP's primal is the prediction: no second forward
    z_t = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
    with math_attention():
        reference = model(z_t, t, y, h=t - r, return_hidden=1)
    assert torch.equal(result.u, reference.out) and torch.equal(result.hidden, reference.hidden)
    # Both outputs carry gradients to the parameters; the target carries none.
    assert result.u.requires_grad and result.hidden.requires_grad and not result.target.requires_grad
    result.hidden.square().mean().backward()
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.blocks[1].attn.qkv.weight.grad is None  # block 2 comes after the tapped tokens


def test_jvp_returns_detached_derivative_and_no_hidden_by_default():
    model = tiny()
    x0, noise, y, r, t = inputs()
    with math_attention():
        u, du_dt, hidden = average_velocity_jvp(model, x0, r, t, noise, y)
    assert hidden is None and u.requires_grad and not du_dt.requires_grad


def test_with_r_equal_t_the_loss_is_flow_matching():
    model = tiny()
    x0, noise, y, _, t = inputs()
    result = meanflow_loss(model, x0, y, r=t, t=t, noise=noise, adaptive_p=0.0)
    path = LinearPath()
    sample = path.sample(x0, noise, t)
    assert torch.equal(result.target, sample.velocity)  # u_tgt = v exactly: (t - r) du/dt = 0
    with math_attention():
        prediction = model(sample.x_t, t, y, h=torch.zeros_like(t)).out
    assert torch.equal(result.u, prediction)
    flow_matching = (prediction - sample.velocity).square().flatten(1).sum(1)
    torch.testing.assert_close(result.per_sample, flow_matching, rtol=0, atol=0)
    # Same gradients as the flow-matching loss.
    result.loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with math_attention():
        fm = (model(sample.x_t, t, y, h=torch.zeros_like(t)).out - sample.velocity).square().flatten(1).sum(1).mean()
    fm.backward()
    for a, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad)


def test_adaptive_weight_is_loss_over_stopgrad_loss_plus_c_to_the_p():
    loss = torch.tensor([0.0, 0.005, 1.0, 250.0], requires_grad=True)
    for c, p in [(0.01, 1.0), (0.01, 0.5), (1e-3, 2.0)]:
        weighted = adaptive_weight(loss, c, p)
        torch.testing.assert_close(weighted, loss.detach() / (loss.detach() + c) ** p)
        (grad,) = torch.autograd.grad(weighted.sum(), loss)
        torch.testing.assert_close(grad, 1.0 / (loss.detach() + c) ** p)  # the denominator is stop-gradient
    torch.testing.assert_close(adaptive_weight(loss, 0.01, 0.0), loss)
    with pytest.raises(IrepaError, match="c > 0"):
        adaptive_weight(loss, 0.0, 1.0)


def test_meanflow_loss_uses_the_official_defaults_and_sums_over_pixels():
    model = tiny()
    x0, noise, y, r, t = inputs()
    result = meanflow_loss(model, x0, y, r=r, t=t, noise=noise)
    error = (result.u - result.target).square().flatten(1).sum(1)
    torch.testing.assert_close(result.error, error.detach())
    torch.testing.assert_close(result.per_sample, error / (error.detach() + 0.01))
    torch.testing.assert_close(result.loss, result.per_sample.mean())


def test_meanflow_loss_runs_in_float32_under_bf16_autocast():
    model = tiny()
    x0, noise, y, r, t = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = meanflow_loss(model, x0, y, r=r, t=t, noise=noise, return_hidden=1)
    assert result.u.dtype == torch.float32 and result.hidden.dtype == torch.float32
    torch.testing.assert_close(result.loss, meanflow_loss(model, x0, y, r=r, t=t, noise=noise).loss)


def test_meanflow_loss_validates():
    model = tiny()
    x0, noise, y, r, t = inputs()
    with pytest.raises(IrepaError, match="r <= t"):
        meanflow_loss(model, x0, y, r=t, t=r, noise=noise)
    with pytest.raises(IrepaError, match="null_label"):
        meanflow_loss(model, x0, y, r=r, t=t, noise=noise, drop=torch.ones(4, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------------------------------
# Guidance


def test_guided_velocity_formula_interval_and_dropped_samples():
    model = tiny()
    x0, noise, y, _, _ = inputs(4)
    t = torch.tensor([0.2, 0.5, 0.9, 0.5])
    drop = torch.tensor([False, False, False, True])
    guidance = MeanFlowGuidance(omega=0.6, kappa=0.3, t_start=0.0, t_end=0.8)
    sample = LinearPath().sample(x0, noise, t)
    counting = CountingModel(model)
    v_g = guided_velocity(counting, sample.x_t, t, sample.velocity, y, drop=drop, null_label=4, guidance=guidance)
    assert counting.calls == 2 and not v_g.requires_grad
    zero = torch.zeros(4)
    u_cond = model(sample.x_t, t, y, h=zero).out
    u_uncond = model(sample.x_t, t, torch.full_like(y, 4), h=zero).out
    expected = 0.6 * sample.velocity + 0.3 * u_cond + 0.1 * u_uncond
    torch.testing.assert_close(v_g[:2], expected[:2])
    assert torch.equal(v_g[2], sample.velocity[2])  # t = 0.9 outside [0, 0.8]
    assert torch.equal(v_g[3], sample.velocity[3])  # label dropped: plain v
    # kappa = 0: CFG on the unconditional branch only (one extra forward).
    counting.calls = 0
    guided_velocity(
        counting, sample.x_t, t, sample.velocity, y, drop=drop, null_label=4, guidance=MeanFlowGuidance(omega=2.0)
    )
    assert counting.calls == 1


def test_guidance_effective_scale_and_validation():
    assert MeanFlowGuidance(omega=1.0, kappa=0.5).effective_scale == 2.0
    assert math.isclose(MeanFlowGuidance(omega=0.2, kappa=0.92).effective_scale, 2.5)
    assert not MeanFlowGuidance().enabled
    with pytest.raises(IrepaError, match="kappa"):
        MeanFlowGuidance(kappa=1.0)
    with pytest.raises(IrepaError, match="interval"):
        MeanFlowGuidance(t_start=0.9, t_end=0.1)


def test_dropped_labels_see_the_null_class_and_regress_plain_velocity():
    model = tiny()
    x0, noise, y, r, t = inputs()
    drop = torch.tensor([True, False, True, False])
    guidance = MeanFlowGuidance(omega=1.0, kappa=0.5)
    result = meanflow_loss(model, x0, y, r=r, t=t, noise=noise, drop=drop, null_label=4, guidance=guidance)
    assert result.y.tolist() == [4, int(y[1]), 4, int(y[3])]
    v = noise - x0
    assert torch.equal(result.guided[drop], v[drop]) and not torch.equal(result.guided[~drop], v[~drop])


# ----------------------------------------------------------------------------------------------------------------------
# Sampling


def test_time_grid_default_uniform_and_explicit():
    assert meanflow_time_grid() == [1.0, 0.0]
    assert meanflow_time_grid(2) == [1.0, 0.5, 0.0]
    assert meanflow_time_grid(grid=[1.0, 0.6, 0.0]) == [1.0, 0.6, 0.0]
    for bad in ([1.0], [0.9, 0.0], [1.0, 0.5, 0.6, 0.0], [1.0, 0.1]):
        with pytest.raises(IrepaError, match="time grid"):
            meanflow_time_grid(grid=bad)


def test_one_and_two_step_sampling_follow_the_update_rule():
    calls = []

    def u_fn(z, r, t, y):
        calls.append((float(r[0]), float(t[0])))
        return z * t[:, None] + r[:, None] + y[:, None].float()

    noise, labels = torch.randn(3, 5, dtype=torch.float64), torch.tensor([0, 1, 2])
    one = meanflow_sample(u_fn, noise, labels)
    assert one.samples.dtype == torch.float64
    assert calls == [(0.0, 1.0)] and one.nfe == 1 and one.times == [1.0]
    ones = torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close(one.samples, noise - u_fn(noise, 0 * ones, ones, labels))
    calls.clear()
    two = meanflow_sample(u_fn, noise, labels, grid=[1.0, 0.6, 0.0])
    assert calls == [(0.6, 1.0), (0.0, 0.6)] and two.nfe == 2
    z = noise - 0.4 * u_fn(noise, 0.6 * ones, ones, labels)
    z = z - 0.6 * u_fn(z, 0 * ones, 0.6 * ones, labels)
    torch.testing.assert_close(two.samples, z)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_exact_average_velocity_lands_on_the_data_in_any_number_of_steps(steps):
    """For data concentrated at x*, trajectories are straight: u(z, r, t) = (z - x*) / t for every r."""
    target = torch.tensor([[1.5, -2.0, 0.25]])

    def u_fn(z, r, t, y):
        return (z - target) / t[:, None]

    result = meanflow_sample(u_fn, torch.randn(6, 3), torch.zeros(6, dtype=torch.long), num_steps=steps)
    torch.testing.assert_close(result.samples, target.expand(6, 3))


def test_meanflow_sampler_is_registered_and_refuses_sampling_time_guidance():
    from irepa.diffusion.samplers import SAMPLERS

    def u_fn(z, r, t, y):
        return z

    noise = torch.randn(2, 3)
    result = SAMPLERS.get("meanflow")(u_fn, LinearPath(), noise, torch.zeros(2, dtype=torch.long), num_steps=2)
    torch.testing.assert_close(result.samples, noise * 0.25)  # two halvings: z - 0.5 z, twice
    with pytest.raises(IrepaError, match="guidance built in at training time"):
        SAMPLERS.get("meanflow")(u_fn, LinearPath(), noise, torch.zeros(2, dtype=torch.long), num_steps=1, cfg_scale=2)


def test_meanflow_snapshot_samples_in_one_and_two_steps_through_the_generation_path(tmp_path):
    from irepa.diffusion.generate import SamplingSettings, SnapshotSampler
    from irepa.models.io import save_inference

    model = tiny().eval()
    meta = {
        "space": {"kind": "pixel", "channels": 3, "size": [8, 8], "image_size": [8, 8]},
        "diffusion": {"path": "linear", "objective": "meanflow", "prediction": "average_velocity",
                      "sampler": "meanflow", "steps": 1},
        "step": 1,
        "ema": True,
    }  # fmt: skip
    path = tmp_path / "mf.safetensors"
    save_inference(path, model, model_name="SiT-S/2", model_kwargs=model.config, metadata=meta)
    sampler, _ = SnapshotSampler.load(path)
    assert sampler.default_sampler == "meanflow" and sampler.default_steps == 1
    labels = torch.tensor([0, 3])
    one = sampler.generate([0, 1], labels, SamplingSettings(sampler="meanflow", steps=1))
    two = sampler.generate([0, 1], labels, SamplingSettings(sampler="meanflow", steps=2))
    assert one.images.shape == (2, 3, 8, 8) and one.images.dtype == torch.uint8 and one.finite.all()
    assert not torch.equal(one.images, two.images)
    # One step is x = z_1 - u(z_1, r=0, t=1) with the per-sample noise of the generation path.
    from irepa.diffusion.generate import quantize
    from irepa.diffusion.samplers import draw_noise, sample_generators

    z = draw_noise((2, 3, 8, 8), sample_generators([0, 1], 0), device="cpu")
    with torch.no_grad():
        expected = z - model(z, torch.ones(2), labels, h=torch.ones(2)).out
    assert torch.equal(one.images, quantize(expected))
    with pytest.raises(IrepaError, match="sample it with --sampler meanflow"):
        sampler.generate([0], labels[:1], SamplingSettings(sampler="euler", steps=2))
