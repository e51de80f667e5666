import argparse

import pytest
import torch
from official_layout import (
    ReferenceJiT,
    ReferenceJiTBlock,
    conv_projector,
    jit_training_dict,
    mlp_projector,
    official_jit_shapes,
    random_jit_state,
)

from irepa.errors import IrepaError
from irepa.models import MODELS, JiT, ModelOutput, build_model, count_parameters
from irepa.models.official import load_official_checkpoint, official_space

# Trainable parameters without pos_embed and projectors, measured from the official JiT code (issue 9).
OFFICIAL_COUNTS = {
    "JiT-B/16": 131_123_712,
    "JiT-B/32": 133_190_400,
    "JiT-L/16": 458_877_664,
    "JiT-L/32": 461_534_176,
    "JiT-H/16": 952_514_368,
    "JiT-H/32": 956_055_616,
}
# A tiny JiT: 3 blocks, in-context tokens from block 1, 4x4 grid of 8-px patches, head width 8.
TINY = dict(depth=3, width=32, heads=4, patch=8, bottleneck=16, grid=4, num_classes=10, in_context_len=4)
TINY_KWARGS = dict(input_size=32, hidden_size=32, depth=3, num_heads=4, bottleneck_dim=16, in_context_len=4,
                   in_context_start=1, num_classes=10, patch_size=8)  # fmt: skip


def reference(state, in_context_start=1, **cfg):
    cfg = {**TINY, **cfg}
    ref = ReferenceJiT(size=cfg["grid"] * cfg["patch"], patch=cfg["patch"], width=cfg["width"], depth=cfg["depth"],
                       heads=cfg["heads"], bottleneck=cfg["bottleneck"], num_classes=cfg["num_classes"],
                       in_context_len=cfg["in_context_len"], in_context_start=in_context_start)  # fmt: skip
    ref.load_state_dict(state, strict=True)
    return ref


@pytest.mark.parametrize("name", list(OFFICIAL_COUNTS))
def test_parameter_counts_match_the_official_code(name):
    with torch.device("meta"):
        model = build_model(name)
    assert count_parameters(model, trainable_only=True) == OFFICIAL_COUNTS[name]
    assert "pos_embed" in model.state_dict() and "pos_embed" not in dict(model.named_parameters())
    patch = int(name.rsplit("/", 1)[1])
    assert model.grid == (16, 16) and model.input_size == ((256, 256) if patch == 16 else (512, 512))


def test_registry_names_and_defaults():
    assert MODELS.list("JiT-*") == ["JiT-B/16", "JiT-B/32", "JiT-L/16", "JiT-L/32", "JiT-H/16", "JiT-H/32"]
    starts = {name: MODELS.get(name).defaults["in_context_start"] for name in MODELS.list("JiT-*")}
    assert starts == {"JiT-B/16": 4, "JiT-B/32": 4, "JiT-L/16": 8, "JiT-L/32": 8, "JiT-H/16": 10, "JiT-H/32": 10}
    with pytest.raises(IrepaError, match="unknown JiT-B/16 argument"):
        build_model("JiT-B/16", time_interval=True)
    with pytest.raises(IrepaError, match=r"in_context_start=4 must name one of the blocks 0\.\.1"):
        build_model("JiT-B/16", depth=2)
    with pytest.raises(IrepaError, match="head width divisible by 4"):
        build_model("JiT-B/16", hidden_size=36, num_heads=6)


def test_state_dict_has_the_official_key_layout():
    with torch.device("meta"):
        model = build_model("JiT-H/16", depth=4, in_context_start=2)
    expected = official_jit_shapes(depth=4, width=1280, heads=16, patch=16, bottleneck=256, grid=16,
                                   num_classes=1000, in_context_len=32)  # fmt: skip
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == dict(expected)


def test_one_block_agrees_with_an_independent_reimplementation():
    torch.manual_seed(0)
    width, heads, grid, prefix = 32, 4, 4, 3
    block = build_model("JiT-B/16", **{**TINY_KWARGS, "in_context_len": prefix}).blocks[1]
    state = random_jit_state(official_jit_shapes(**{**TINY, "in_context_len": prefix}), seed=3)
    block_state = {k.removeprefix("blocks.1."): v for k, v in state.items() if k.startswith("blocks.1.")}
    block.load_state_dict(block_state, strict=True)
    ref = ReferenceJiTBlock(width, heads)
    ref.load_state_dict(block_state, strict=True)
    x, c = torch.randn(2, prefix + grid * grid, width), torch.randn(2, width)
    from irepa.models.layers import rope_2d

    ours = block(x, c, rope_2d(width // heads, (grid, grid), num_prefix=prefix))
    torch.testing.assert_close(ours, ref(x, c, grid, prefix), atol=1e-5, rtol=1e-5)


def test_architecture_that_shapes_cannot_tell_needs_a_name(tmp_path):
    state = random_jit_state(official_jit_shapes(**TINY))
    args = argparse.Namespace(model="JiT-B/16", class_num=10)
    path = tmp_path / "checkpoint-last.pth"
    torch.save(jit_training_dict(state, state, state, args), path)
    # args.model names JiT-B/16: its architecture wins, and the tiny weights fail the strict check, keys named.
    with pytest.raises(IrepaError, match=r"does not match JiT-B/16 \(depth 12, .*missing keys blocks\.3\."):
        load_official_checkpoint(path)
    args.model = "JiT-tiny"  # not registered, no standard size: nothing tells the in-context start block
    torch.save(jit_training_dict(state, state, state, args), path)
    with pytest.raises(IrepaError, match=r"in-context start block .*--model JiT-B/16"):
        load_official_checkpoint(path)
    with pytest.raises(IrepaError, match="SiT-B/2 is not a JiT architecture"):
        load_official_checkpoint(path, model_name="SiT-B/2")
    with pytest.raises(IrepaError, match="'ema2' exists only in JiT"):
        torch.save({"ema": state, "model": state}, path)
        load_official_checkpoint(path, which="ema2")


def test_official_jit_checkpoint_reproduces_the_reference_forward(tmp_path, tiny_size):
    ema1, ema2, raw = (random_jit_state(official_jit_shapes(**TINY), seed=s) for s in (0, 1, 2))
    args = argparse.Namespace(img_size=32, class_num=10, attn_dropout=0.0, proj_dropout=0.1, enable_repa=False)
    path = tmp_path / "checkpoint-last.pth"
    torch.save(jit_training_dict(raw, ema1, ema2, args), path)
    ckpt = _load_tiny(path)
    assert (ckpt.origin, ckpt.container, ckpt.which, ckpt.steps) == ("jit", "training-dict", "ema", None)
    assert ckpt.model_kwargs == {**TINY_KWARGS, "in_channels": 3, "mlp_ratio": 4.0, "null_class": True,
                                 "qk_norm": True, "attn_drop": 0.0, "proj_drop": 0.1}  # fmt: skip
    assert ckpt.align_settings() == {}  # enable_repa false: enc_type is a dead default
    assert official_space(ckpt) == {"kind": "pixel", "channels": 3, "size": [32, 32], "image_size": [32, 32]}

    model = ckpt.build_model()
    x, t_jit, y = torch.randn(2, 3, 32, 32), torch.tensor([0.3, 0.8]), torch.tensor([3, 10])
    expected, expected_hidden = reference(ema1)(x, t_jit, y, hidden_at=2)
    out = model(x, 1 - t_jit, y, return_hidden=2)  # irepa speaks SiT time: t_SiT = 1 - t_JiT
    assert isinstance(out, ModelOutput)
    torch.testing.assert_close(out.out, expected, atol=1e-5, rtol=1e-5)
    assert out.hidden.shape == (2, 16, 32)  # grid tokens only: the 4 in-context tokens are removed
    torch.testing.assert_close(out.hidden, expected_hidden, atol=1e-5, rtol=1e-5)
    hidden_before = model(x, 1 - t_jit, y, return_hidden=1).hidden  # before the in-context block: grid tokens
    assert hidden_before.shape == (2, 16, 32)

    ema2_model = _load_tiny(path, which="ema2").build_model()
    torch.testing.assert_close(ema2_model(x, 1 - t_jit, y).out, reference(ema2)(x, t_jit, y)[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(_load_tiny(path, which="model").state_dict["blocks.0.attn.qkv.weight"],
                       raw["blocks.0.attn.qkv.weight"])  # fmt: skip


@pytest.fixture
def tiny_size(monkeypatch):
    """Register the tiny configuration as a standard size, so the loader can tell its in-context start block."""
    from irepa.models.jit import JIT_SIZES

    size = {"depth": 3, "hidden_size": 32, "num_heads": 4, "bottleneck_dim": 16, "in_context_start": 1}
    monkeypatch.setitem(JIT_SIZES, "tiny", size)


def _load_tiny(path, which="auto"):
    return load_official_checkpoint(path, which=which)


@pytest.mark.parametrize("layout", ["repa", "irepa-mlp", "irepa-conv"])
def test_irepa_jit_projectors_map_onto_the_aligner(tmp_path, layout, tiny_size):
    state = random_jit_state(official_jit_shapes(**TINY))
    if layout == "irepa-conv":
        projectors = conv_projector(0, 32, 24, 3)
    else:
        projectors = mlp_projector(0, 32, 16, 24, irepa=layout == "irepa-mlp")
    args = argparse.Namespace(class_num=10, enable_repa=True, enc_type="dinov2-vit-b", encoder_depth=2,
                              proj_coeff="0.5", spnorm_method="zscore", zscore_alpha=0.8)  # fmt: skip
    path = tmp_path / "irepa-jit.pth"
    torch.save(jit_training_dict(state, {**state, **projectors}, state, args), path)
    ckpt = _load_tiny(path)
    assert ckpt.origin == "irepa-jit"
    info = ckpt.projector_info
    assert info.in_dim == 32 and info.out_dims == [24]
    assert info.layout == ("repa" if layout == "repa" else "irepa")
    assert set(ckpt.projectors) == {k.replace("projection_layer.", "").replace("projectors.0.", "projectors.0.net.")
                                    for k in projectors}  # fmt: skip
    settings = ckpt.align_settings()
    assert settings["encoders"] == ["dinov2-vit-b"] and settings["depth"] == 2 and settings["gamma"] == 0.8
    assert settings["projector"] == ("conv" if layout == "irepa-conv" else "mlp")
    torch.testing.assert_close(
        ckpt.build_model()(torch.zeros(1, 3, 32, 32), 0.5, torch.tensor([1])).out,
        reference(state)(torch.zeros(1, 3, 32, 32), torch.tensor([0.5]), torch.tensor([1]))[0],
        atol=1e-5,
        rtol=1e-5,
    )


def test_forward_on_meta_and_sit_time_convention():
    with torch.device("meta"):
        model = build_model("JiT-B/32", depth=2, in_context_start=1)
        out = model(torch.empty(2, 3, 512, 512), torch.empty(2), torch.zeros(2, dtype=torch.long), return_hidden=2)
    assert out.out.shape == (2, 3, 512, 512) and out.hidden.shape == (2, 256, 768)  # 16x16 grid at 512 px
    model = JiT(**TINY_KWARGS)
    assert model.null_label == model.num_classes == 10 and model.has_null_class
    with pytest.raises(IrepaError, match="JiT input has shape"):
        model(torch.zeros(1, 3, 16, 16), 0.5, torch.tensor([0]))
    with pytest.raises(IrepaError, match="outside the model's blocks"):
        model(torch.zeros(1, 3, 32, 32), 0.5, torch.tensor([0]), return_hidden=4)
    # The time embedder sees JiT time 1 - t: SiT t = 0.25 embeds like JiT t = 0.75.
    t = torch.tensor([0.25])
    expected = model.t_embedder(torch.tensor([0.75])) + model.y_embedder(torch.tensor([2]))
    torch.testing.assert_close(model.embed_condition(t, torch.tensor([2]))[0], expected)


def test_initialization_and_training_step_on_cpu():
    torch.manual_seed(0)
    model = JiT(**TINY_KWARGS, attn_drop=0.1, proj_drop=0.1)
    for block in model.blocks:
        assert not block.adaLN_modulation[1].weight.any()
    assert not model.final_layer.linear.weight.any()
    assert 0.015 < model.in_context_posemb.std() < 0.025
    assert torch.equal(model.blocks[0].norm1.weight, torch.ones(32))
    # Dropout only in the middle half of the blocks (depth // 4 <= i < 3 * (depth // 4)), as upstream.
    deep = JiT(**{**TINY_KWARGS, "depth": 8}, attn_drop=0.1, proj_drop=0.2)
    drops = [block.attn.attn_drop for block in deep.blocks]
    assert drops == [0.0, 0.0, 0.1, 0.1, 0.1, 0.1, 0.0, 0.0]
    x = torch.randn(2, 3, 32, 32)
    loss = (model(x, torch.rand(2), torch.tensor([1, 10])).out - x).pow(2).mean()  # zero-init output: x̂ = 0
    loss.backward()
    assert model.final_layer.linear.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["SiT-S/2", "SiT-XL/2", "JiT-B/16", "JiT-H/32"])
def test_registry_arguments_check_without_building(name):
    """``factory.arguments`` (config validation) gives the built model's config and refuses what it refuses."""
    factory = MODELS.get(name)
    with torch.device("meta"):
        model = factory(depth=12)
    expected = {k: tuple(v) if isinstance(v, list) else v for k, v in model.config.items()}
    assert {k: v for k, v in factory.arguments(depth=12).items() if k in expected} == expected
    for bad in ({"depth": 0}, {"hidden_size": 100}, {"dpeth": 2}):
        with pytest.raises(IrepaError):
            factory.arguments(**bad)
        with pytest.raises(IrepaError), torch.device("meta"):
            factory(**bad)
