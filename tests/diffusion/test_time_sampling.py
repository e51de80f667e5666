import math

import pytest
import torch

from irepa.diffusion.paths import get_path
from irepa.diffusion.time_sampling import TIME_SAMPLERS, get_time_sampler, sample_lognormal, sample_uniform
from irepa.errors import IrepaError, UnknownNameError

N = 200_000


def test_registry_names():
    assert TIME_SAMPLERS.list() == ["uniform", "lognormal"]
    with pytest.raises(UnknownNameError, match="did you mean 'lognormal'"):
        get_time_sampler("lognormall")


def test_uniform_moments_and_range():
    t = sample_uniform(N, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32 and t.shape == (N,)
    assert t.min() >= 0 and t.max() < 1
    # U[0,1): mean 1/2, variance 1/12; standard errors ~6.5e-4 and ~2e-4.
    assert abs(t.mean().item() - 0.5) < 4e-3
    assert abs(t.var().item() - 1 / 12) < 1.5e-3


@pytest.mark.parametrize(("mean", "std"), [(0.0, 1.0), (-0.4, 1.0), (0.5, 0.5)])
def test_lognormal_linear_is_logit_normal(mean, std):
    t = sample_lognormal(N, generator=torch.Generator().manual_seed(1), path="linear", mean=mean, std=std).double()
    sigma = t / (1 - t)  # invert t = sigma / (1 + sigma)
    log_sigma = sigma.log()
    assert abs(log_sigma.mean().item() - mean) < 0.02 and abs(log_sigma.std().item() - std) < 0.02


def test_lognormal_cosine_maps_through_atan():
    t = sample_lognormal(N, generator=torch.Generator().manual_seed(2), path=get_path("cosine")).double()
    log_sigma = torch.tan(t * math.pi / 2).log()  # invert t = (2 / pi) atan(sigma)
    assert abs(log_sigma.mean().item()) < 0.02 and abs(log_sigma.std().item() - 1) < 0.02
    assert t.min() > 0 and t.max() < 1
    # The median of sigma is exp(0) = 1: t = 1/2 on both paths.
    assert abs(t.median().item() - 0.5) < 0.01


def test_generator_reproducibility_and_bound_params():
    sampler = get_time_sampler("lognormal", path="cosine", mean=0.2)
    a = sampler(16, generator=torch.Generator().manual_seed(3), device="cpu")
    b = sampler(16, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(
        a, sample_lognormal(16, generator=torch.Generator().manual_seed(3), path="cosine", mean=0.2)
    )
    assert get_time_sampler("uniform")(5).shape == (5,)


def test_bad_parameters_are_clear_errors():
    with pytest.raises(IrepaError, match=r"takes no parameter\(s\) mean \(valid: none\)"):
        get_time_sampler("uniform", mean=1.0)
    with pytest.raises(IrepaError, match="std > 0"):
        sample_lognormal(4, std=0.0)
    with pytest.raises(IrepaError, match="linear and cosine"):
        sample_lognormal(4, path="edm")
