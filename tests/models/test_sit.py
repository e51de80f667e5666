import math

import pytest
import torch
from official_layout import ReferenceSiT, official_sit_shapes
from torch import nn

from irepa.errors import IrepaError, UnknownNameError
from irepa.models import MODELS, ModelOutput, SiT, build_model, count_parameters
from irepa.models.layers import math_attention

# Published sizes (DiT/SiT/REPA; prior-implementations §1.2): excluding the fixed pos_embed and projectors.
PUBLISHED_MILLIONS = {"SiT-S/2": 32.9, "SiT-B/2": 130.3, "SiT-L/2": 457.8, "SiT-XL/2": 674.8}


def tiny(**overrides) -> SiT:
    kwargs = dict(input_size=8, hidden_size=32, depth=3, num_heads=2, num_classes=10)
    return build_model("SiT-S/2", **{**kwargs, **overrides})


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Replace the zero-initialized weights so every path of the forward matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("name", list(PUBLISHED_MILLIONS))
def test_parameter_counts_match_published(name):
    with torch.device("meta"):
        model = build_model(name)
    assert round(count_parameters(model) / 1e6, 1) == PUBLISHED_MILLIONS[name]
    assert "pos_embed" in model.state_dict()  # in the official state dict ...
    assert "pos_embed" not in dict(model.named_parameters())  # ... but never trained or counted


def test_registry_lists_every_size_and_patch():
    expected = [f"SiT-{s}/{p}" for s in ("S", "B", "L", "XL") for p in (1, 2, 4, 8)]
    assert MODELS.list("SiT-*") == expected
    with pytest.raises(UnknownNameError, match="did you mean"):
        build_model("SiT-XXL/2")
    with pytest.raises(IrepaError, match="unknown SiT-B/2 argument"):
        build_model("SiT-B/2", hidden=3)


@pytest.mark.parametrize("name", MODELS.list("SiT-*"))
def test_forward_shapes_on_meta(name):
    with torch.device("meta"):
        model = build_model(name)
        x = torch.empty(2, 4, 32, 32)
        out = model(x, torch.empty(2), torch.zeros(2, dtype=torch.long), return_hidden=4)
    patch = int(name.rsplit("/", 1)[1])
    assert isinstance(out, ModelOutput)
    assert out.out.shape == x.shape
    assert out.hidden.shape == (2, (32 // patch) ** 2, model.hidden_size)
    assert model.grid == (32 // patch, 32 // patch)
    assert model.null_label == model.num_classes == 1000


@pytest.mark.parametrize("qk_norm", [False, True])
def test_state_dict_has_the_official_key_layout(qk_norm):
    with torch.device("meta"):
        model = build_model("SiT-B/4", qk_norm=qk_norm)
    expected = official_sit_shapes(
        depth=12, width=768, patch=4, in_channels=4, num_classes=1000, grid=(8, 8), qk_norm=qk_norm, heads=12
    )
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == dict(expected)


def test_initialization_follows_the_official_recipe():
    torch.manual_seed(0)
    model = build_model("SiT-S/2", depth=2, input_size=16)
    for block in model.blocks:
        assert not block.adaLN_modulation[1].weight.any() and not block.adaLN_modulation[1].bias.any()
    final = model.final_layer
    assert not final.linear.weight.any() and not final.adaLN_modulation[1].weight.any()
    qkv = model.blocks[0].attn.qkv.weight
    bound = math.sqrt(6 / (qkv.shape[0] + qkv.shape[1]))
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.9 * bound
    assert not model.blocks[0].attn.qkv.bias.any()
    patch = model.x_embedder.proj.weight  # xavier as a (D, C·p·p) linear
    assert patch.abs().max() <= math.sqrt(6 / (patch.shape[0] + patch[0].numel()))
    assert abs(model.y_embedder.embedding_table.weight.std().item() - 0.02) < 0.002
    assert abs(model.t_embedder.mlp[0].weight.std().item() - 0.02) < 0.002
    out = model(torch.randn(2, 4, 16, 16), torch.rand(2), torch.tensor([0, 1000])).out
    assert not out.any()  # adaLN-Zero: the untrained model predicts zero velocity


@pytest.mark.parametrize("qk_norm", [False, True])
def test_outputs_match_an_independent_official_layout_reference(qk_norm):
    model = randomize(tiny(qk_norm=qk_norm, hidden_size=64, num_heads=4))
    reference = ReferenceSiT(
        size=8, patch=2, in_channels=4, width=64, depth=3, heads=4, num_classes=10, qk_norm=qk_norm
    )
    reference.load_state_dict(model.state_dict(), strict=True)
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([0.0, 0.5, 1.0]), torch.tensor([1, 9, 10])
    ours = model(x, t, y, return_hidden=2)
    ref_out, ref_hidden = reference(x, t, y, hidden_at=2)
    torch.testing.assert_close(ours.out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.hidden, ref_hidden, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("depth_n", [1, 2, 3])
def test_hidden_tokens_equal_a_manual_forward_through_the_first_blocks(depth_n):
    model = randomize(tiny())
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([3, 10])
    out = model(x, t, y, return_hidden=depth_n)
    tokens = model.x_embedder(x) + model.pos_embed
    c = model.t_embedder(t) + model.y_embedder(y)
    for block in model.blocks[:depth_n]:
        tokens = block(tokens, c)
    torch.testing.assert_close(out.hidden, tokens)
    torch.testing.assert_close(out.out, model(x, t, y).out)  # the forward still runs to the end
    assert model(x, t, y).hidden is None


def test_rectangular_latents_and_scalar_time():
    model = randomize(tiny(input_size=(8, 12)))
    assert model.grid == (4, 6) and model.pos_embed.shape == (1, 24, 32)
    x = torch.randn(2, 4, 8, 12)
    out = model(x, 0.5, torch.tensor([0, 1]), return_hidden=1)
    assert out.out.shape == x.shape and out.hidden.shape == (2, 24, 32)
    torch.testing.assert_close(out.out, model(x, torch.full((2,), 0.5), torch.tensor([0, 1])).out)
    assert model.config["input_size"] == [8, 12]


def test_bad_inputs_are_clear_errors():
    model = tiny()
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(IrepaError, match=r"takes \(B, 4, 8, 8\)"):
        model(torch.randn(2, 4, 16, 16), t, y)
    with pytest.raises(IrepaError, match=r"outside the model's blocks 1\.\.3"):
        model(x, t, y, return_hidden=4)
    with pytest.raises(IrepaError, match="expected \\(2,\\)"):
        model(x, torch.rand(3), y)
    with pytest.raises(IrepaError, match="not divisible by patch size"):
        tiny(input_size=9)
    with pytest.raises(IrepaError, match="divisible by num_heads"):
        tiny(num_heads=5)


def test_null_class_row_and_unconditional_model():
    assert tiny().y_embedder.embedding_table.num_embeddings == 11
    assert tiny(null_class=False).y_embedder.embedding_table.num_embeddings == 10
    uncond = tiny(num_classes=0)
    assert uncond.null_label == 0 and uncond.y_embedder.embedding_table.num_embeddings == 1
    with pytest.raises(IrepaError, match="needs null_class=True"):
        tiny(num_classes=0, null_class=False)


def test_time_interval_embedder_is_off_by_default_and_conditions_the_output():
    assert not any(k.startswith("h_embedder") for k in tiny().state_dict())
    model = randomize(tiny(time_interval=True))
    assert "h_embedder.mlp.0.weight" in model.state_dict()
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([1, 2])
    with pytest.raises(IrepaError, match="pass the interval"):
        model(x, t, y)
    with pytest.raises(IrepaError, match="no interval embedder"):
        tiny()(x, t, y, h=t)
    a, b = model(x, t, y, h=torch.zeros(2)).out, model(x, t, y, h=t).out
    assert not torch.allclose(a, b)


def test_meanflow_jvp_through_the_model_matches_finite_differences():
    """du/dt total derivative along (z' = v, t' = 1, h' = 1), as MeanFlow computes it (math SDPA, float64)."""
    model = randomize(tiny(time_interval=True)).double()
    z, v = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.randn(2, 4, 8, 8, dtype=torch.float64)
    t, h, y = (
        torch.tensor([0.7, 0.4], dtype=torch.float64),
        torch.tensor([0.3, 0.1], dtype=torch.float64),
        torch.tensor([1, 2]),
    )

    def u(z_, t_, h_):
        return model(z_, t_, y, h=h_).out

    ones = torch.ones_like(t)
    with math_attention():
        primal, tangent = torch.func.jvp(u, (z, t, h), (v, ones, ones))
    eps = 1e-6
    finite = (u(z + eps * v, t + eps, h + eps) - u(z - eps * v, t - eps, h - eps)) / (2 * eps)
    torch.testing.assert_close(primal, u(z, t, h))
    torch.testing.assert_close(tangent, finite, atol=1e-6, rtol=1e-5)


def test_bf16_autocast_forward_and_backward():
    model = randomize(tiny())
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([1, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, y, return_hidden=2)
    (out.out.float().square().mean() + out.hidden.float().mean()).backward()
    assert model.x_embedder.proj.weight.grad is not None
    assert model.pos_embed.grad is None and not model.pos_embed.requires_grad


@pytest.mark.gpu
def test_cuda_fused_attention_matches_cpu_and_jvp_runs_on_math_backend():
    model = randomize(tiny(time_interval=True))
    x, t, h, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.rand(2), torch.tensor([1, 2])
    expected = model(x, t, y, h=h).out
    cuda = model.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = cuda(x.cuda(), t.cuda(), y.cuda(), h=h.cuda()).out.float().cpu()
    torch.testing.assert_close(got, expected, atol=5e-2, rtol=5e-2)
    with math_attention():
        _, tangent = torch.func.jvp(
            lambda z: cuda(z, t.cuda(), y.cuda(), h=h.cuda()).out, (x.cuda(),), (torch.ones_like(x).cuda(),)
        )
    assert torch.isfinite(tangent).all()
