import pytest
import torch
from torch import nn

from irepa.align import RepresentationAligner, WeightSchedule
from irepa.errors import IrepaError

DIM, TOKENS, BATCH, DEPTH, LAYERS = 16, 16, 3, 2, 4


def _encoder(batch_first: bool) -> nn.TransformerEncoder:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(DIM, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=batch_first)
    return nn.TransformerEncoder(layer, num_layers=LAYERS, enable_nested_tensor=False)


def _grads(model):
    return [
        None if p.grad is None or p.grad.abs().sum() == 0 else p.grad.clone()
        for layer in model.layers
        for p in layer.parameters()
    ]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("layer", [DEPTH, f"layers.{DEPTH - 1}"])
def test_hook_on_transformer_encoder(batch_first, layer):
    model = _encoder(batch_first)
    aligner = RepresentationAligner(DIM, {"enc": 8}, projector="mlp", projector_dim=32)
    aligner.attach(model, layer, layout="BTD" if batch_first else "TBD")
    x = torch.randn(BATCH, TOKENS, DIM)
    model_in = x if batch_first else x.transpose(0, 1)
    model(model_in)

    # Captured tokens = a manual forward through the first DEPTH layers.
    manual = model_in
    for block in model.layers[:DEPTH]:
        manual = block(manual)
    manual = manual if batch_first else manual.transpose(0, 1)
    captured, _ = aligner._captured
    torch.testing.assert_close(captured, manual)

    terms = aligner.compute({"enc": torch.randn(BATCH, TOKENS, 8)})
    terms["align"].backward()
    per_layer = len(list(model.layers[0].parameters()))
    grads = _grads(model)
    early, late = grads[: DEPTH * per_layer], grads[DEPTH * per_layer :]
    assert all(g is not None for g in early)  # REPA trains every block up to the aligned one ...
    assert all(g is None for g in late)  # ... and none after it
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in aligner.parameters())


def test_hook_drops_prefix_tokens_and_uses_the_grid():
    model = _encoder(True)
    aligner = RepresentationAligner(DIM, {"enc": 8}, projector="conv")
    aligner.attach(model, 1, layout="BTD", prefix_tokens=1, grid=(3, 5))
    x = torch.randn(2, 16, DIM)  # 1 CLS token + a 3x5 grid
    model(x)
    tokens, grid = aligner._captured
    assert tokens.shape == (2, 15, DIM) and grid == (3, 5)
    torch.testing.assert_close(tokens, model.layers[0](x)[:, 1:])
    terms = aligner.compute({"enc": torch.randn(2, 15, 8)})
    assert torch.isfinite(terms["align"])


class TinyUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.mid = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.SiLU())
        self.up = nn.ConvTranspose2d(8, 3, 4, stride=2, padding=1)

    def forward(self, x):
        return self.up(self.mid(self.down(x)))


def test_hook_on_unet_feature_map():
    torch.manual_seed(0)
    unet = TinyUNet()
    aligner = RepresentationAligner(8, {"enc": 6}, projector="conv", target_norm="spatial")
    aligner.attach(unet, "mid", layout="BCHW")
    x = torch.randn(2, 3, 8, 12)
    unet(x)
    tokens, grid = aligner._captured
    fmap = unet.mid(unet.down(x))
    assert grid == (4, 6)
    torch.testing.assert_close(tokens, fmap.flatten(2).transpose(1, 2))
    aligner.compute({"enc": torch.randn(2, 24, 6)})["align"].backward()
    assert unet.down.weight.grad is not None and unet.up.weight.grad is None


def test_bhwc_layout_and_tuple_output_with_select():
    class Stage(nn.Module):
        def forward(self, x):
            return x.permute(0, 2, 3, 1), "aux"

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stage = Stage()

        def forward(self, x):
            return self.stage(x)[0]

    net = Net()
    aligner = RepresentationAligner(4, {"enc": 4}, projector="linear").attach(net, "stage", layout="BHWC", select=0)
    x = torch.randn(2, 4, 3, 5, requires_grad=True)
    net(x)
    tokens, grid = aligner._captured
    assert grid == (3, 5) and tokens.shape == (2, 15, 4)
    aligner.detach()
    aligner.attach(net, "stage", layout="BHWC")
    with pytest.raises(IrepaError, match="returns a tuple of 2; pass select=INDEX"):
        net(x)


def test_capture_policy_paused_and_detach():
    model = _encoder(True)
    aligner = RepresentationAligner(DIM, {"enc": 8}).attach(model, 1)
    targets = {"enc": torch.randn(2, TOKENS, 8)}
    x = torch.randn(2, TOKENS, DIM)
    with torch.no_grad():
        model(x)  # evaluation forward: not captured
    with pytest.raises(IrepaError, match=r"no tokens were captured at 'layers\.0'"):
        aligner.compute(targets)
    with aligner.paused():
        model(x)
    with pytest.raises(IrepaError, match="no tokens were captured"):
        aligner.compute(targets)
    model(x)
    aligner.compute(targets)
    with pytest.raises(IrepaError, match="no tokens were captured"):  # consumed: never reused
        aligner.compute(targets)
    aligner.detach()
    model(x)
    with pytest.raises(IrepaError, match="attach"):
        aligner.compute(targets)
    aligner.attach(model, 1, capture="always")
    with torch.no_grad():
        model(x)
    assert aligner.compute(targets)["align"].isfinite()


def test_layer_resolution_errors():
    model = _encoder(True)
    aligner = RepresentationAligner(DIM, {"enc": 8})
    with pytest.raises(IrepaError, match=r"outside 1\.\.4"):
        aligner.attach(model, 5)
    with pytest.raises(IrepaError, match=r"did you mean 'layers\.1'"):
        aligner.attach(model, "layer.1")
    aligner.attach(model, 2, blocks="layers")
    with pytest.raises(IrepaError, match=r"already attached to 'layers\.1'"):
        aligner.attach(model, 1)
    aligner.detach()

    class TwoLists(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.ModuleList([nn.Identity(), nn.Identity()])
            self.b = nn.ModuleList([nn.Identity(), nn.Identity()])

    with pytest.raises(IrepaError, match="several block lists"):
        aligner.attach(TwoLists(), 1)
    with pytest.raises(IrepaError, match="layout"):
        aligner.attach(model, 1, layout="NLC")
    with pytest.raises(IrepaError, match="prefix_tokens applies"):
        aligner.attach(model, 1, layout="BCHW", prefix_tokens=1)


def test_wrong_layout_is_reported_at_forward():
    model = _encoder(True)
    RepresentationAligner(DIM, {"enc": 8}).attach(model, 1, layout="BCHW")
    with pytest.raises(IrepaError, match=r"not BCHW"):
        model(torch.randn(2, TOKENS, DIM))


def test_direct_mode_terms_and_schedule():
    torch.manual_seed(0)
    schedule = WeightSchedule(weight=0.5, warmup_steps=4, stop_after=10)
    aligner = RepresentationAligner(DIM, {"a": 8, "b": 12}, projector="linear", schedule=schedule)
    source = torch.randn(2, TOKENS, DIM, requires_grad=True)
    targets = {"a": torch.randn(2, TOKENS, 8), "b": torch.randn(2, TOKENS, 12)}
    terms = aligner.compute(targets, source=source, step=1)
    assert set(terms) == {"align", "align_loss", "align_cos", "align_weight", "align_cos/a", "align_cos/b"}
    assert terms["align_weight"].item() == 0.25
    torch.testing.assert_close(terms["align"], 0.25 * terms["align_loss"])
    losses = [
        1 - torch.nn.functional.cosine_similarity(p(source), targets[n], dim=-1).mean()
        for n, p in zip("ab", aligner.projectors)
    ]
    torch.testing.assert_close(terms["align_loss"], torch.stack(losses).mean())
    torch.testing.assert_close(terms["align_cos"], (terms["align_cos/a"] + terms["align_cos/b"]) / 2)
    assert not terms["align_cos"].requires_grad
    assert aligner.compute(targets, source=source, step=10)["align"].item() == 0.0
    assert not aligner.active(10) and aligner.active(9)
    # forward() is compute()
    torch.testing.assert_close(aligner(targets, source, step=1)["align"], terms["align"])


def test_targets_are_detached_and_losses_float32_under_bf16_autocast():
    aligner = RepresentationAligner(DIM, {"enc": 8}, projector="conv", target_norm="spatial")
    source = torch.randn(2, TOKENS, DIM, requires_grad=True)
    target = torch.randn(2, TOKENS, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = aligner.compute({"enc": target}, source=source)
    assert terms["align"].dtype == torch.float32 and torch.isfinite(terms["align"])
    terms["align"].backward()
    assert target.grad is None and source.grad is not None


def test_shape_errors_name_both_shapes():
    aligner = RepresentationAligner(DIM, {"enc": 8}, projector="conv")
    source = torch.randn(2, TOKENS, DIM)
    with pytest.raises(IrepaError, match=r"target 'enc' has shape \(2, 64, 8\) but the diffusion tokens \(2, 16, 16\)"):
        aligner.compute({"enc": torch.randn(2, 64, 8)}, source=source)
    with pytest.raises(IrepaError, match=r"\(3, 16, 8\)"):
        aligner.compute({"enc": torch.randn(3, TOKENS, 8)}, source=source)
    with pytest.raises(IrepaError, match=r"missing \['enc'\], unexpected \['dino'\]"):
        aligner.compute({"dino": torch.randn(2, TOKENS, 8)}, source=source)
    with pytest.raises(IrepaError, match=r"diffusion tokens must be \(B, T, 16\)"):
        aligner.compute({"enc": torch.randn(2, TOKENS, 8)}, source=torch.randn(2, TOKENS, 4))
    with pytest.raises(IrepaError, match="cells"):
        aligner.compute({"enc": torch.randn(2, TOKENS, 8)}, source=source, grid=(3, 5))
    with pytest.raises(IrepaError, match="not a square grid"):
        aligner.compute({"enc": torch.randn(2, 15, 8)}, source=torch.randn(2, 15, DIM))


@pytest.mark.gpu
def test_cuda_bf16_autocast_hooks():
    model = _encoder(True).cuda()
    aligner = RepresentationAligner(DIM, {"enc": 8}, projector="conv", target_norm="spatial").cuda()
    aligner.attach(model, 2)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        model(torch.randn(2, TOKENS, DIM, device="cuda"))
        terms = aligner.compute({"enc": torch.randn(2, TOKENS, 8, device="cuda").bfloat16()})
    assert terms["align"].dtype == torch.float32 and torch.isfinite(terms["align"])
    terms["align"].backward()
    assert model.layers[0].linear1.weight.grad is not None and model.layers[3].linear1.weight.grad is None
