import pytest
import torch
from torchvision.models.vgg import cfgs, make_layers

from irepa.errors import WeightsNotFoundError
from irepa.models.lpips import LPIPS_CHANNELS, load_lpips


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """Stand-in weights in the two official formats: torchvision's VGG16 state dict and LPIPS v0.1 heads."""
    root = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    # torchvision's own VGG16 trunk ("features.N.*" keys of vgg16-397923af.pth; the classifier is not used).
    torch.save({f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}, root / "vgg16.pth")
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPS_CHANNELS)}
    torch.save(heads, root / "vgg.pth")
    return root / "vgg16.pth", root / "vgg.pth", heads


def manual_lpips(x, y, vgg_state, heads):
    """LPIPS written out from the definition (module docstring), on torchvision's own VGG16 module."""
    features = make_layers(cfgs["D"])
    features.load_state_dict({k.removeprefix("features."): v for k, v in vgg_state.items()})
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    outs = []
    for inp in (x, y):
        h, feats = (inp - shift) / scale, []
        for index, layer in enumerate(features[:30]):
            h = layer(h.clone())
            if index in (3, 8, 15, 22, 29):
                feats.append(h / (h.norm(dim=1, keepdim=True) + 1e-10))
        outs.append(feats)
    total = 0
    for i, (fx, fy) in enumerate(zip(*outs)):
        w = heads[f"lin{i}.model.1.weight"]
        total = total + ((fx - fy) ** 2 * w).sum(dim=1).mean(dim=(1, 2))
    return total


def test_lpips_matches_the_definition_and_the_repae_switch(weight_files):
    vgg_path, heads_path, heads = weight_files
    lpips = load_lpips(vgg=vgg_path, heads=heads_path)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    vgg_state = torch.load(vgg_path, weights_only=True)
    with torch.no_grad():
        d = lpips(x, y)
        torch.testing.assert_close(d, manual_lpips(x, y, vgg_state, heads), atol=1e-5, rtol=1e-4)
        assert torch.all(lpips(x, x) == 0) and torch.all(d > 0)
        quirk = load_lpips(vgg=vgg_path, heads=heads_path, repae_input_quirk=True)
        # REPA-E's LPIPS maps x -> 2x - 1 on inputs that are already in [-1, 1] (prior-implementations §13.13).
        torch.testing.assert_close(quirk(x, y), lpips(2 * x - 1, 2 * y - 1))
    # Frozen, but differentiable with respect to its inputs (the VAE's reconstructions).
    x.requires_grad_(True)
    lpips(x, y).sum().backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is None for p in lpips.parameters())
    lpips.train()
    assert not lpips.training


def test_missing_weights_are_one_line_errors(weight_files, tmp_path):
    vgg_path, heads_path, _ = weight_files
    with pytest.raises(WeightsNotFoundError, match="LPIPS needs local weights, heads not given"):
        load_lpips(vgg=vgg_path, heads=None)
    with pytest.raises(WeightsNotFoundError, match="do not exist"):
        load_lpips(vgg=tmp_path / "nope.pth", heads=heads_path)
    torch.save({"lin0.model.1.weight": torch.ones(1, 64, 1, 1)}, tmp_path / "partial.pth")
    with pytest.raises(WeightsNotFoundError, match=r"no 'lin1\.model\.1\.weight'"):
        load_lpips(vgg=vgg_path, heads=tmp_path / "partial.pth")
    with pytest.raises(WeightsNotFoundError, match=r"VGG16 weights have no 'features\.0\.weight'"):
        load_lpips(vgg=heads_path, heads=heads_path)
