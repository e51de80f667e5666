import pytest
import torch
from torch import nn

from irepa.align import PROJECTORS, Projector
from irepa.errors import IrepaError, UnknownNameError


def test_registry_lists_the_three_kinds():
    assert PROJECTORS.list() == ["mlp", "linear", "conv"]


def test_mlp_state_dict_layout_and_init():
    proj = Projector("mlp", 12, 8, hidden_dim=16)
    keys = list(proj.state_dict())
    assert keys == [f"net.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")]
    assert isinstance(proj.net, nn.Sequential)
    assert [type(m) for m in proj.net] == [nn.Linear, nn.SiLU, nn.Linear, nn.SiLU, nn.Linear]
    for i in (0, 2, 4):
        assert torch.count_nonzero(proj.net[i].bias) == 0  # REPA: zero bias
        fan_in, fan_out = proj.net[i].in_features, proj.net[i].out_features
        bound = (6 / (fan_in + fan_out)) ** 0.5  # xavier-uniform bound
        assert proj.net[i].weight.abs().max() <= bound


def test_linear_and_conv_layouts():
    assert set(Projector("linear", 12, 8).state_dict()) == {"net.weight", "net.bias"}
    conv = Projector("conv", 12, 8, kernel_size=5)
    assert conv.state_dict()["net.weight"].shape == (8, 12, 5, 5)
    # PyTorch default conv init: the bias is not zeroed (official iREPA never re-initializes it).
    assert torch.count_nonzero(conv.net.bias) > 0


@pytest.mark.parametrize("kind", ["mlp", "linear", "conv"])
@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (1, 7)])
def test_output_shape_on_square_and_rectangular_grids(kind, grid):
    proj = Projector(kind, 6, 10, hidden_dim=8)
    x = torch.randn(2, grid[0] * grid[1], 6)
    assert proj(x, grid).shape == (2, grid[0] * grid[1], 10)


def test_kernel_one_conv_equals_linear():
    torch.manual_seed(0)
    lin = Projector("linear", 6, 4)
    conv = Projector("conv", 6, 4, kernel_size=1)
    with torch.no_grad():
        conv.net.weight.copy_(lin.net.weight[:, :, None, None])
        conv.net.bias.copy_(lin.net.bias)
    x = torch.randn(3, 15, 6)
    torch.testing.assert_close(conv(x, (3, 5)), lin(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_conv_output_depends_only_on_kxk_neighbourhood(kernel_size):
    torch.manual_seed(0)
    height, width = 6, 7
    proj = Projector("conv", 3, 2, kernel_size=kernel_size)
    x = torch.randn(1, height * width, 3, requires_grad=True)
    row, col = 2, 4
    out = proj(x, (height, width))
    out[0, row * width + col].sum().backward()
    touched = x.grad[0].abs().sum(-1).reshape(height, width) > 0
    r = kernel_size // 2
    expected = torch.zeros(height, width, dtype=torch.bool)
    expected[max(0, row - r) : row + r + 1, max(0, col - r) : col + r + 1] = True
    assert torch.equal(touched, expected)


def test_conv_matches_manual_conv_on_row_major_grid():
    # Token t sits at (t // W, t % W): compare with F.conv2d on the explicit map.
    torch.manual_seed(0)
    proj = Projector("conv", 3, 2)
    x = torch.randn(2, 3 * 5, 3)
    fmap = x.reshape(2, 3, 5, 3).permute(0, 3, 1, 2)
    ref = torch.nn.functional.conv2d(fmap, proj.net.weight, proj.net.bias, padding=1)
    torch.testing.assert_close(proj(x, (3, 5)), ref.permute(0, 2, 3, 1).reshape(2, 15, 2))


def test_conv_infers_square_grid_and_rejects_non_square_without_grid():
    proj = Projector("conv", 4, 4)
    assert proj(torch.randn(1, 16, 4)).shape == (1, 16, 4)
    with pytest.raises(IrepaError, match="not a square grid"):
        proj(torch.randn(1, 15, 4))
    with pytest.raises(IrepaError, match="has 16 cells but"):
        proj(torch.randn(1, 15, 4), (4, 4))


def test_mlp_needs_no_grid_but_checks_a_given_one():
    proj = Projector("mlp", 4, 4, hidden_dim=8)
    assert proj(torch.randn(1, 15, 4)).shape == (1, 15, 4)
    with pytest.raises(IrepaError, match="cells"):
        proj(torch.randn(1, 15, 4), (4, 4))


def test_bad_construction_and_inputs():
    with pytest.raises(UnknownNameError, match="did you mean 'conv'"):
        Projector("cnv", 4, 4)
    with pytest.raises(IrepaError, match="odd"):
        Projector("conv", 4, 4, kernel_size=2)
    with pytest.raises(IrepaError, match="in_dim"):
        Projector("mlp", 0, 4)
    with pytest.raises(IrepaError, match=r"expects tokens \(B, T, 4\)"):
        Projector("linear", 4, 4)(torch.randn(2, 9, 5))
