import math

import pytest
import torch

from irepa.align import ALIGN_LOSSES, TARGET_NORMS, cosine_alignment_loss, spatial_norm, unit_tokens
from irepa.errors import IrepaError


def _tokens(batch=3, tokens=20, dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Non-zero per-channel means and scales so gamma matters.
    return torch.randn(batch, tokens, dim, generator=g) * 3.0 + torch.arange(dim) * 2.0


def test_gamma_one_gives_zero_mean_unit_std():
    y = spatial_norm(_tokens(), gamma=1.0)
    torch.testing.assert_close(y.mean(1), torch.zeros(3, 5), atol=1e-5, rtol=0)
    # std (unbiased) + eps in the denominator: std of the output is 1 up to eps / std.
    torch.testing.assert_close(y.std(1), torch.ones(3, 5), atol=1e-5, rtol=0)


@pytest.mark.parametrize("gamma", [0.0, 0.6, 0.8])
def test_partial_gamma_keeps_a_fraction_of_the_mean(gamma):
    x = _tokens().double()
    y = spatial_norm(x, gamma=gamma, eps=1e-6)
    mu, sigma = x.mean(1), x.std(1)
    torch.testing.assert_close(y.mean(1), (1 - gamma) * mu / (sigma + 1e-6))
    torch.testing.assert_close(y.std(1), sigma / (sigma + 1e-6))


def test_official_vs_paper_variant():
    x = _tokens().double()
    paper = spatial_norm(x, gamma=0.7, eps=1e-6, variant="paper")
    mu, var = x.mean(1, keepdim=True), x.var(1, keepdim=True, unbiased=False)
    torch.testing.assert_close(paper, (x - 0.7 * mu) / torch.sqrt(var + 1e-6))
    official = spatial_norm(x, gamma=0.7)
    ratio = (official / paper).mean()
    # Unbiased vs biased std: ratio sqrt((T-1)/T) for T = 20.
    assert ratio.item() == pytest.approx(math.sqrt(19 / 20), rel=1e-4)


def test_spatial_norm_float32_under_bf16_autocast():
    x = _tokens().bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = spatial_norm(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, spatial_norm(x.float()))


def test_spatial_norm_errors():
    with pytest.raises(IrepaError, match=r"\(B, T, D\)"):
        spatial_norm(torch.randn(4, 5))
    with pytest.raises(IrepaError, match="at least 2 tokens"):
        spatial_norm(torch.randn(2, 1, 5))
    with pytest.raises(IrepaError, match="variant"):
        spatial_norm(torch.randn(2, 4, 5), variant="instance")


def test_target_norm_registry():
    x = _tokens()
    assert TARGET_NORMS.list() == ["none", "spatial", "layernorm"]
    torch.testing.assert_close(TARGET_NORMS.get("none")(x, gamma=0.6, eps=1e-6), x)
    torch.testing.assert_close(TARGET_NORMS.get("zscore")(x, gamma=0.6, eps=1e-6), spatial_norm(x, gamma=0.6))
    ln = TARGET_NORMS.get("layernorm")(x, gamma=0.6, eps=1e-6)
    torch.testing.assert_close(ln.mean(-1), torch.zeros(3, 20), atol=1e-5, rtol=0)


def test_cosine_loss_is_zero_at_the_optimum_and_bounded():
    target = torch.randn(2, 9, 7)
    out = cosine_alignment_loss(target * (torch.rand(2, 9, 1) * 5 + 0.1), target)  # pred ∝ target, positive scale
    assert out.loss.item() == pytest.approx(0.0, abs=1e-6)
    assert out.cos.item() == pytest.approx(1.0, abs=1e-6)
    assert cosine_alignment_loss(-target, target).loss.item() == pytest.approx(2.0, abs=1e-6)
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        loss = cosine_alignment_loss(torch.randn(2, 9, 7, generator=g), target).loss.item()
        assert 0.0 <= loss <= 2.0


def test_cosine_loss_matches_definition_and_detaches_target():
    pred = torch.randn(3, 8, 6, requires_grad=True)
    target = torch.randn(3, 8, 6, requires_grad=True)
    out = ALIGN_LOSSES.get("cosine")(pred, target)
    ref = 1 - torch.nn.functional.cosine_similarity(pred.double(), target.double(), dim=-1).mean()
    assert out.loss.item() == pytest.approx(ref.item(), abs=1e-6)
    assert not out.cos.requires_grad
    out.loss.backward()
    assert pred.grad is not None and target.grad is None


def test_cosine_loss_finite_under_bf16_autocast_with_large_inputs():
    # sihyun-yu/REPA#46: F.normalize in fp16 overflows for large activations; here everything runs in float32.
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 16, 32, generator=g) * 1e4
    pred = (target + torch.randn(2, 16, 32, generator=g) * 1e3).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cosine_alignment_loss(pred.bfloat16(), target.bfloat16())
        huge = cosine_alignment_loss(pred.detach().bfloat16() * 1e30, target.bfloat16() * 1e30)
    ref = 1 - torch.nn.functional.cosine_similarity(pred.double(), target.double(), dim=-1).mean()
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert out.loss.item() == pytest.approx(ref.item(), abs=2e-3)  # bf16 rounding of the inputs only
    assert torch.isfinite(huge.loss) and huge.loss.item() == pytest.approx(ref.item(), abs=2e-3)
    out.loss.backward()
    assert torch.isfinite(pred.grad).all()


def test_unit_tokens_zero_vectors_stay_zero():
    x = torch.zeros(1, 2, 3)
    x[0, 1] = torch.tensor([3.0, 4.0, 0.0])
    y = unit_tokens(x)
    assert torch.equal(y[0, 0], torch.zeros(3))
    torch.testing.assert_close(y[0, 1], torch.tensor([0.6, 0.8, 0.0]))


def test_loss_shape_mismatch():
    with pytest.raises(IrepaError, match="same shape"):
        cosine_alignment_loss(torch.randn(2, 4, 3), torch.randn(2, 5, 3))
