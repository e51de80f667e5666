import math

import pytest
import torch

from irepa.diffusion.paths import PATHS, expand_t, get_path


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_endpoints_follow_sit_time(name):
    path = get_path(name)
    x0, eps = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    at0 = path.sample(x0, eps, torch.zeros(3))
    at1 = path.sample(x0, eps, torch.ones(3))
    torch.testing.assert_close(at0.x_t, x0, atol=1e-6, rtol=0)  # t = 0 is data
    torch.testing.assert_close(at1.x_t, eps, atol=1e-6, rtol=0)  # t = 1 is noise


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_velocity_is_time_derivative(name):
    path = get_path(name)
    x0, eps = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    t = torch.rand(5, dtype=torch.float64) * 0.9 + 0.05
    h = 1e-6
    finite_diff = (path.sample(x0, eps, t + h).x_t - path.sample(x0, eps, t - h).x_t) / (2 * h)
    torch.testing.assert_close(path.sample(x0, eps, t).velocity, finite_diff, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_velocity_roundtrip_to_x0_eps_and_score(name):
    path = get_path(name)
    x0, eps = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    t = torch.tensor([0.1, 0.3, 0.7, 0.95], dtype=torch.float64)
    s = path.sample(x0, eps, t)
    rx0, reps = path.velocity_to_x0_eps(s.velocity, s.x_t, t)
    torch.testing.assert_close(rx0, x0)
    torch.testing.assert_close(reps, eps)
    score = path.velocity_to_score(s.velocity, s.x_t, t)
    torch.testing.assert_close(score, -eps / path.sigma(expand_t(t, eps)))


def test_linear_velocity_and_cosine_coefficients():
    x0, eps = torch.randn(2, 3), torch.randn(2, 3)
    s = get_path("linear").sample(x0, eps, torch.tensor([0.25, 0.5]))
    torch.testing.assert_close(s.velocity, eps - x0)
    cos = get_path("cosine")
    t = torch.tensor(0.5)
    assert math.isclose(float(cos.alpha(t) ** 2 + cos.sigma(t) ** 2), 1.0, rel_tol=1e-6)
    assert PATHS.list() == ["linear", "cosine"]
