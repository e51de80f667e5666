"""Samplers on an analytic Gaussian target (exact velocity known), grids, guidance interval, per-sample noise."""

from __future__ import annotations

import math

import pytest
import torch

from irepa.diffusion.paths import get_path
from irepa.diffusion.samplers import (
    SAMPLERS,
    euler_sample,
    generator_seed,
    guidance_active,
    heun_sample,
    sample_generators,
    sde_sample,
    time_grid,
)
from irepa.errors import IrepaError

# Target: x0 ~ N(MEAN, diag(STD^2)) in 3 dimensions.
MEAN = torch.tensor([1.5, -0.5, 0.25], dtype=torch.float64)
STD = torch.tensor([0.5, 1.2, 0.8], dtype=torch.float64)


def gaussian_velocity(path_name: str):
    """Exact velocity E[alpha' x0 + sigma' eps | x_t = x] of the Gaussian target (independent of the label)."""
    path = get_path(path_name)

    def velocity(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64)
        t = t.to(torch.float64)[:, None]
        a, s, da, ds = path.alpha(t), path.sigma(t), path.d_alpha(t), path.d_sigma(t)
        var = a**2 * STD**2 + s**2
        centred = x - a * MEAN
        x0 = MEAN + a * STD**2 * centred / var
        eps = s * centred / var
        return da * x0 + ds * eps

    return path, velocity


def exact_endpoint(noise: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE maps z ~ N(0, I) at t = 1 to MEAN + STD * z at t = 0 (for both paths)."""
    return MEAN + STD * noise.to(torch.float64)


@pytest.mark.parametrize("path_name", ["linear", "cosine"])
def test_euler_first_order_heun_second_order(path_name):
    path, velocity = gaussian_velocity(path_name)
    noise = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.zeros(64, dtype=torch.long)
    exact = exact_endpoint(noise)
    steps = [8, 16, 32, 64]
    errors = {"euler": [], "heun": []}
    for n in steps:
        for name, fn in (("euler", euler_sample), ("heun", heun_sample)):
            out = fn(velocity, path, noise, labels, num_steps=n).samples
            errors[name].append((out - exact).abs().max().item())
    euler_orders = [math.log2(a / b) for a, b in zip(errors["euler"], errors["euler"][1:])]
    heun_orders = [math.log2(a / b) for a, b in zip(errors["heun"], errors["heun"][1:])]
    assert all(0.8 < p < 1.2 for p in euler_orders), (errors, euler_orders)
    assert all(1.7 < p < 2.3 for p in heun_orders), (errors, heun_orders)
    assert errors["heun"][-1] < errors["euler"][-1] / 10


def test_sde_final_moments_match_target():
    path, velocity = gaussian_velocity("linear")
    n = 20_000
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    out = sde_sample(velocity, path, noise, torch.zeros(n, dtype=torch.long), num_steps=250, generator=gen).samples
    # Standard errors: mean STD/sqrt(n) <= 0.0085, std ~ STD/sqrt(2n) <= 0.006; the 0.04 -> 0 mean step adds a small
    # bias on top.
    assert torch.allclose(out.mean(0), MEAN, atol=0.03), out.mean(0)
    assert torch.allclose(out.std(0), STD, rtol=0.03), out.std(0)


def test_sde_is_stochastic_and_ode_is_not():
    path, velocity = gaussian_velocity("linear")
    noise = torch.randn(4, 3, dtype=torch.float64)
    labels = torch.zeros(4, dtype=torch.long)
    a = sde_sample(velocity, path, noise, labels, num_steps=20, generator=torch.Generator().manual_seed(0)).samples
    b = sde_sample(velocity, path, noise, labels, num_steps=20, generator=torch.Generator().manual_seed(1)).samples
    c = sde_sample(velocity, path, noise, labels, num_steps=20, generator=torch.Generator().manual_seed(0)).samples
    assert not torch.equal(a, b)
    assert torch.equal(a, c)


def test_official_grids():
    euler = time_grid("euler", 4)
    assert euler.dtype == torch.float64
    assert torch.equal(euler, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    sde = time_grid("sde", 250)
    assert sde.shape == (251,)
    assert sde[0] == 1.0 and sde[-1] == 0.0
    assert sde[-2].item() == pytest.approx(0.04, abs=1e-15)
    assert torch.equal(sde[:-1], torch.linspace(1.0, 0.04, 250, dtype=torch.float64))
    with pytest.raises(IrepaError):
        time_grid("euler", 0)


@pytest.mark.parametrize(
    ("name", "steps", "expected_nfe"), [("euler", 10, 10), ("heun", 10, 19), ("sde", 10, 10), ("heun", 1, 1)]
)
def test_nfe_counts(name, steps, expected_nfe):
    path, velocity = gaussian_velocity("linear")
    noise = torch.randn(2, 3, dtype=torch.float64)
    res = SAMPLERS.get(name)(velocity, path, noise, torch.zeros(2, dtype=torch.long), num_steps=steps)
    assert res.nfe == expected_nfe == len(res.times)
    assert res.guided_nfe == 0


class Recorder:
    """A velocity function that records, per call, the time and whether the batch was guided (doubled + null)."""

    NULL = 7

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, y):
        batch = x.shape[0]
        guided = bool((y == self.NULL).any())
        if guided:
            assert batch % 2 == 0 and torch.equal(x[: batch // 2], x[batch // 2 :])
            assert (y[batch // 2 :] == self.NULL).all() and (y[: batch // 2] != self.NULL).all()
        assert torch.all(t == t[0])
        self.calls.append((t[0].item(), guided))
        # Conditional velocity 1 + label, unconditional 0: guided output = scale * (1 + label).
        return (y != self.NULL).to(x.dtype)[:, None] * (1.0 + y.to(x.dtype))[:, None] * torch.ones_like(x)


@pytest.mark.parametrize("name", ["euler", "heun", "sde"])
def test_guidance_interval_inclusive(name):
    path = get_path("linear")
    grid = time_grid(name, 10).tolist()
    # Boundaries exactly on grid points (inclusive) and between grid points.
    for low, high in [(grid[7], grid[3]), (0.33, 0.68), (0.0, 1.0), (grid[1], grid[1])]:
        rec = Recorder()
        res = SAMPLERS.get(name)(
            rec,
            path,
            torch.ones(2, 3, dtype=torch.float64),
            torch.tensor([0, 1]),
            num_steps=10,
            cfg_scale=2.0,
            guidance_interval=(low, high),
            null_label=Recorder.NULL,
        )
        assert rec.calls, name
        for t, guided in rec.calls:
            assert guided == (low <= t <= high), (name, low, high, t, guided)
        assert res.guided_nfe == sum(g for _, g in rec.calls)
        assert any(g for _, g in rec.calls)


def test_guidance_off_for_scale_at_most_one():
    rec = Recorder()
    euler_sample(
        rec, get_path("linear"), torch.ones(2, 3, dtype=torch.float64), torch.tensor([0, 1]), num_steps=5, cfg_scale=1.0
    )
    assert not any(g for _, g in rec.calls)
    assert not guidance_active(0.5, 1.0, (0.0, 1.0))
    assert guidance_active(0.5, 1.5, (0.5, 0.5))


def test_cfg_combination():
    # One Euler step from t=1 to 0: x1 = x0 - v, with v = u + s (c - u) = s (1 + label).
    res = euler_sample(
        Recorder(),
        get_path("linear"),
        torch.zeros(2, 3, dtype=torch.float64),
        torch.tensor([0, 2]),
        num_steps=1,
        cfg_scale=3.0,
        null_label=Recorder.NULL,
    )
    assert torch.allclose(res.samples[:, 0], torch.tensor([-3.0, -9.0], dtype=torch.float64))


def test_heun_guidance_time_compat_switch():
    grid = time_grid("heun", 10).tolist()
    interval = (grid[3], 1.0)  # corrector of step 3 evaluates at grid[4] < low: off unless the quirk tests t_cur
    calls = {}
    for mode in ("next", "current"):
        rec = Recorder()
        heun_sample(
            rec,
            get_path("linear"),
            torch.ones(2, 3, dtype=torch.float64),
            torch.tensor([0, 1]),
            num_steps=10,
            cfg_scale=2.0,
            guidance_interval=interval,
            null_label=Recorder.NULL,
            heun_guidance_time=mode,
        )
        calls[mode] = rec.calls
    # Call order: predictor(t0), corrector(t1), predictor(t1), corrector(t2), ... ; index 7 = corrector at grid[4].
    assert calls["next"][7] == (grid[4], False)
    assert calls["current"][7] == (grid[4], True)
    assert all(g == (t >= interval[0]) for t, g in calls["next"])


def test_batch_size_invariance_with_per_sample_generators():
    path, velocity = gaussian_velocity("linear")
    n, seed = 8, 3
    indices = list(range(100, 100 + n))

    def run(batch_size):
        outs = []
        for start in range(0, n, batch_size):
            idx = indices[start : start + batch_size]
            gens = sample_generators(idx, seed)
            noise = torch.stack([torch.randn(3, generator=g) for g in gens])
            labels = torch.arange(len(idx))
            res = sde_sample(velocity, path, noise, labels, num_steps=12, generator=gens)
            outs.append(res.samples)
        return torch.cat(outs)

    one = run(1)
    eight = run(8)
    three = run(3)
    assert torch.equal(one, eight)
    assert torch.equal(one, three)


def test_batch_size_invariance_with_a_network_and_cfg():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.SiLU(), torch.nn.Linear(16, 3))
    emb = torch.nn.Embedding(11, 4)

    def velocity(x, t, y):
        return net(torch.cat([x, t[:, None]], dim=1)) + emb(y)[:, :3]

    path = get_path("linear")
    labels = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])

    def run(batch_size):
        outs = []
        for start in range(0, 8, batch_size):
            gens = sample_generators(range(start, min(start + batch_size, 8)), 0)
            noise = torch.stack([torch.randn(3, generator=g) for g in gens])
            outs.append(
                sde_sample(
                    velocity,
                    path,
                    noise,
                    labels[start : start + batch_size],
                    num_steps=8,
                    cfg_scale=1.5,
                    guidance_interval=(0.0, 0.7),
                    null_label=10,
                    generator=gens,
                ).samples
            )
        return torch.cat(outs)

    # A network's matmul may round differently for other batch sizes: equal up to float32 rounding.
    assert torch.allclose(run(1), run(8), atol=1e-5, rtol=0)


def test_generator_seed_formula():
    seeds0 = {generator_seed(0, i) for i in range(10_000)}
    seeds1 = {generator_seed(1, i) for i in range(10_000)}
    assert len(seeds0) == len(seeds1) == 10_000
    assert not seeds0 & seeds1
    assert generator_seed(0, 5) == 5
    assert generator_seed(2, 0) == (2 * 0x9E3779B9) % 2**32
    with pytest.raises(IrepaError):
        generator_seed(-1, 0)
    with pytest.raises(IrepaError):
        generator_seed(0, 2**32)
    a = torch.randn(3, generator=sample_generators([5], 0)[0])
    b = torch.randn(3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_bad_inputs():
    path, velocity = gaussian_velocity("linear")
    noise = torch.randn(2, 3)
    with pytest.raises(IrepaError, match="null"):
        euler_sample(velocity, path, noise, torch.zeros(2, dtype=torch.long), num_steps=2, cfg_scale=2.0)
    with pytest.raises(IrepaError, match="empty"):
        euler_sample(velocity, path, noise, torch.zeros(2, dtype=torch.long), num_steps=2, guidance_interval=(0.8, 0.2))
    with pytest.raises(IrepaError, match="labels"):
        euler_sample(velocity, path, noise, torch.zeros(3, dtype=torch.long), num_steps=2)
    with pytest.raises(IrepaError, match="generators"):
        sde_sample(
            velocity, path, noise, torch.zeros(2, dtype=torch.long), num_steps=3, generator=sample_generators([0], 0)
        )
    with pytest.raises(IrepaError, match="heun_guidance_time"):
        heun_sample(velocity, path, noise, torch.zeros(2, dtype=torch.long), num_steps=2, heun_guidance_time="x")


def test_sample_labels_schemes():
    from irepa.diffusion.samplers import sample_labels

    balanced = sample_labels(1000, 10, "balanced", seed=0)
    assert torch.equal(torch.bincount(balanced, minlength=10), torch.full((10,), 100))
    assert not torch.equal(balanced, torch.arange(1000) % 10)  # shuffled, so every batch mixes classes
    uneven = torch.bincount(sample_labels(1003, 10, "balanced", seed=0), minlength=10)
    assert uneven.max() - uneven.min() == 1
    random = sample_labels(1000, 10, "random", seed=0)
    assert random.min() >= 0 and random.max() < 10
    assert torch.equal(random, sample_labels(1000, 10, "random", seed=0))
    assert not torch.equal(random, sample_labels(1000, 10, "random", seed=1))
    with pytest.raises(IrepaError, match="scheme"):
        sample_labels(10, 10, "uniform", seed=0)
