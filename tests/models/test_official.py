import argparse
import collections

import pytest
import torch
from official_layout import (
    ReferenceSiT,
    conv_projector,
    mlp_projector,
    official_sit_shapes,
    random_state,
    training_dict,
)
from torch import nn

from irepa.errors import IrepaError
from irepa.models.official import (
    load_latent_stats,
    load_official_checkpoint,
    official_space,
)

# Two tiny configurations. "S-width": SiT-S width (heads from the standard table), one block.
# "QK": width 64 with QK-norm (heads from the QK-norm width: 64 / 16 = 4), two blocks.
S_WIDTH = dict(depth=1, width=384, patch=2, in_channels=4, num_classes=10, grid=(4, 4))
QK = dict(depth=2, width=64, patch=2, in_channels=4, num_classes=10, grid=(4, 4), qk_norm=True, heads=4)


def sit_state(cfg, seed=0):
    return random_state(official_sit_shapes(**cfg), seed=seed)


def repa_args(**extra):
    base = dict(model="SiT-S/2", enc_type="dinov2-vit-b", encoder_depth=1, proj_coeff=0.5, path_type="linear",
                resolution=64, num_classes=10, cfg_prob=0.1)  # fmt: skip
    return argparse.Namespace(**{**base, **extra})


def reference_outputs(cfg, state, x, t, y):
    heads = cfg.get("heads") or 6
    ref = ReferenceSiT(size=cfg["grid"][0] * cfg["patch"], patch=cfg["patch"], in_channels=cfg["in_channels"],
                       width=cfg["width"], depth=cfg["depth"], heads=heads, num_classes=cfg["num_classes"],
                       qk_norm=cfg.get("qk_norm", False))  # fmt: skip
    ref.load_state_dict(state, strict=True)
    return ref(x, t, y)[0]


def check_reproduces(ckpt, cfg, state):
    model = ckpt.build_model()
    x = torch.randn(2, cfg["in_channels"], cfg["grid"][0] * cfg["patch"], cfg["grid"][1] * cfg["patch"])
    t, y = torch.tensor([0.2, 0.9]), torch.tensor([3, cfg["num_classes"]])
    torch.testing.assert_close(model(x, t, y).out, reference_outputs(cfg, state, x, t, y), atol=1e-5, rtol=1e-5)


class DocumentedAligner(nn.Module):
    """The aligner's documented projector layout: ``projectors.K.net`` = Sequential (mlp) or one layer."""

    def __init__(self, kind, in_dim, out_dims, hidden=32, kernel=3):
        super().__init__()
        self.projectors = nn.ModuleList()
        for out in out_dims:
            holder = nn.Module()
            if kind == "mlp":
                holder.net = nn.Sequential(
                    nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out)
                )
            elif kind == "conv":
                holder.net = nn.Conv2d(in_dim, out, kernel, padding=kernel // 2)
            else:
                holder.net = nn.Linear(in_dim, out)
            self.projectors.append(holder)


def test_repa_training_dict_loads_ema_and_reproduces_outputs(tmp_path):
    ema, raw = sit_state(S_WIDTH, seed=0), sit_state(S_WIDTH, seed=1)
    projector = mlp_projector(0, 384, 32, 24, irepa=False)
    path = tmp_path / "0400000.pt"
    torch.save(training_dict({**raw, **projector}, {**ema, **projector}, repa_args(), steps=400000), path)

    ckpt = load_official_checkpoint(path)
    assert (ckpt.origin, ckpt.container, ckpt.which, ckpt.steps) == ("repa", "training-dict", "ema", 400000)
    assert ckpt.model_name == "SiT-S/2"
    assert ckpt.model_kwargs == dict(input_size=8, patch_size=2, in_channels=4, hidden_size=384, depth=1,
                                     num_heads=6, mlp_ratio=4.0, num_classes=10, null_class=True, qk_norm=False,
                                     time_interval=False)  # fmt: skip
    check_reproduces(ckpt, S_WIDTH, ema)
    info = ckpt.projector_info
    assert (info.kind, info.layout, info.in_dim, info.out_dims, info.hidden_dim) == ("mlp", "repa", 384, [24], 32)
    aligner = DocumentedAligner("mlp", 384, [24])
    aligner.load_state_dict(ckpt.projectors, strict=True)
    torch.testing.assert_close(aligner.projectors[0].net[2].weight, projector["projectors.0.2.weight"])
    assert ckpt.align_settings() == {"encoders": ["dinov2-vit-b"], "depth": 1, "projector": "mlp",
                                     "projector_dim": 32, "weight": 0.5}  # fmt: skip
    assert ckpt.args["model"] == "SiT-S/2"

    model_ckpt = load_official_checkpoint(path, which="model")
    assert model_ckpt.which == "model"
    assert torch.equal(model_ckpt.state_dict["blocks.0.attn.qkv.weight"], raw["blocks.0.attn.qkv.weight"])


def test_bare_state_dict_like_repas_released_last_pt(tmp_path):
    state = {**sit_state(QK), **mlp_projector(0, 64, 32, 24, irepa=False)}
    path = tmp_path / "last.pt"
    torch.save(state, path)
    ckpt = load_official_checkpoint(path)
    assert (ckpt.container, ckpt.which, ckpt.args, ckpt.steps, ckpt.origin) == ("state-dict", "ema", None, None, "repa")
    assert ckpt.model_kwargs["num_heads"] == 4 and ckpt.model_kwargs["qk_norm"] is True
    check_reproduces(ckpt, QK, sit_state(QK))
    with pytest.raises(IrepaError, match="bare state dict"):
        load_official_checkpoint(path, which="model")


@pytest.mark.parametrize("kind", ["mlp", "conv1", "conv3", "linear"])
def test_irepa_projector_layouts_map_onto_the_aligner(tmp_path, kind):
    state = sit_state(QK)
    if kind == "mlp":
        projectors = {**mlp_projector(0, 64, 32, 24, irepa=True), **mlp_projector(1, 64, 32, 16, irepa=True, seed=5)}
    elif kind == "linear":
        w = conv_projector(0, 64, 24, 1)
        projectors = {k: v[..., 0, 0] if v.ndim == 4 else v for k, v in w.items()}
    else:
        projectors = conv_projector(0, 64, 24, int(kind[-1]))
    args = repa_args(projection_layer_type=kind.rstrip("13"), spnorm_method="zscore", zscore_alpha=0.6,
                     proj_coeff="1.0", proj_kwargs_kernel_size=1)  # fmt: skip
    path = tmp_path / "irepa.pt"
    torch.save(training_dict(state, {**state, **projectors}, args), path)

    ckpt = load_official_checkpoint(path)
    assert ckpt.origin == "irepa"
    info = ckpt.projector_info
    expected_kind = kind.rstrip("13")
    assert (info.kind, info.layout, info.in_dim) == (expected_kind, "irepa", 64)
    assert info.kernel_size == (int(kind[-1]) if kind.startswith("conv") else None)
    assert info.out_dims == ([24, 16] if kind == "mlp" else [24])
    aligner = DocumentedAligner(expected_kind, 64, info.out_dims, kernel=info.kernel_size or 1)
    aligner.load_state_dict(ckpt.projectors, strict=True)
    settings = ckpt.align_settings()
    assert settings["target_norm"] == "spatial" and settings["gamma"] == 0.6 and settings["weight"] == 1.0
    assert settings.get("kernel_size") == info.kernel_size  # from the weights, not the args' kernel size 1
    check_reproduces(ckpt, QK, state)


def test_repa_e_bn_buffers_give_the_latent_normalization(tmp_path):
    cfg = dict(S_WIDTH, in_channels=8, patch=1)
    state = sit_state(cfg)
    bn = {
        "bn.running_mean": torch.linspace(-1, 1, 8),
        "bn.running_var": torch.linspace(1, 4, 8),
        "bn.num_batches_tracked": torch.tensor(10),
    }
    path = tmp_path / "repae.pt"
    ckpt_dict = training_dict(state, {**state, **bn, **mlp_projector(0, 384, 32, 24, irepa=False)}, repa_args())
    ckpt_dict["vae"] = {"encoder.conv_in.weight": torch.zeros(1)}  # REPA-E also stores its VAE and discriminator
    torch.save(ckpt_dict, path)
    ckpt = load_official_checkpoint(path)
    assert ckpt.origin == "repa-e" and ckpt.model_kwargs["patch_size"] == 1
    norm = ckpt.latent_normalization
    assert norm["kind"] == "per-channel"
    torch.testing.assert_close(torch.tensor(norm["mean"], dtype=torch.float64), torch.linspace(-1, 1, 8).double())
    torch.testing.assert_close(torch.tensor(norm["std"], dtype=torch.float64), torch.linspace(1, 4, 8).double().sqrt())
    check_reproduces(ckpt, cfg, state)
    with pytest.raises(IrepaError, match="REPA-E checkpoints carry their own"):
        official_space(ckpt)
    space = official_space(ckpt, vae="/vaes/e2e-sdvae")
    assert space["normalization"] == norm and space["size"] == [4, 4] and space["image_size"] == [64, 64]


def test_wrapper_prefixes_and_legacy_decoder_blocks(tmp_path):
    state = sit_state(QK)
    legacy = {}
    for key, value in state.items():  # block 1 stored as decoder_blocks.0 (REPA --legacy layout)
        legacy[key.replace("blocks.1.", "decoder_blocks.0.")] = value
    wrapped = {f"module._orig_mod.{k}": v for k, v in legacy.items()}
    path = tmp_path / "legacy.pt"
    torch.save(training_dict(wrapped, wrapped, repa_args()), path)
    ckpt = load_official_checkpoint(path)
    assert ckpt.model_kwargs["depth"] == 2
    check_reproduces(ckpt, QK, state)


def test_checkpoint_of_another_architecture_names_the_mismatched_keys(tmp_path):
    path = tmp_path / "s.pt"
    torch.save(training_dict(sit_state(S_WIDTH), sit_state(S_WIDTH), repa_args()), path)
    with pytest.raises(IrepaError, match=r"does not match SiT-B/2 .*missing keys blocks\.1\..*shape mismatches .*"
                                         r"x_embedder\.proj\.weight \(384, 4, 2, 2\) vs \(768, 4, 2, 2\)"):  # fmt: skip
        load_official_checkpoint(path, model_name="SiT-B/2")
    torch.save(sit_state(dict(QK, qk_norm=False, heads=None)), path)  # heads unknowable, but the name decides
    with pytest.raises(IrepaError, match=r"does not match SiT-B/2 .*missing keys blocks\.2\."):
        load_official_checkpoint(path, model_name="SiT-B/2")
    extra = {**sit_state(QK), "blocks.0.attn.rope.freqs": torch.zeros(4)}
    torch.save(extra, path)
    with pytest.raises(IrepaError, match=r"unexpected keys blocks\.0\.attn\.rope\.freqs"):
        load_official_checkpoint(path)


def test_non_sit_and_undeterminable_checkpoints(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, path)
    with pytest.raises(IrepaError, match=r"not a SiT state dict.*conv1\.weight"):
        load_official_checkpoint(path)
    no_heads = dict(QK, qk_norm=False, heads=None)
    torch.save(sit_state(no_heads), path)
    with pytest.raises(IrepaError, match=r"number of attention heads.*--model"):
        load_official_checkpoint(path)
    torch.save({"optimizer": {"state": {}}}, path)
    with pytest.raises(IrepaError, match="neither a SiT state dict nor a training dict"):
        load_official_checkpoint(path)
    torch.save(training_dict(sit_state(QK), sit_state(QK), repa_args()) | {"ema": None}, path)
    with pytest.raises(IrepaError, match="'ema' is not a state dict"):
        load_official_checkpoint(path)


class Untrusted:
    pass


def test_unreadable_files_are_clear_errors(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(training_dict(sit_state(QK), sit_state(QK), repa_args()), good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(IrepaError, match="truncated or corrupt"):
        load_official_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 4)
    with pytest.raises(IrepaError, match="corrupt"):
        load_official_checkpoint(garbage)
    empty = tmp_path / "empty.pt"
    empty.touch()
    with pytest.raises(IrepaError, match="is empty"):
        load_official_checkpoint(empty)
    with pytest.raises(IrepaError, match="does not exist"):
        load_official_checkpoint(tmp_path / "missing.pt")
    hostile = tmp_path / "hostile.pt"
    torch.save({"ema": sit_state(QK), "args": Untrusted()}, hostile)
    with pytest.raises(IrepaError, match=r"pickles '.*Untrusted', which is not on irepa's allow-list"):
        load_official_checkpoint(hostile)
    legacy_format = tmp_path / "legacy_format.pt"  # pre-zip torch.save format (no mmap) still loads
    torch.save(sit_state(QK), legacy_format, _use_new_zipfile_serialization=False)
    assert load_official_checkpoint(legacy_format).model_kwargs["depth"] == 2


def test_official_space_per_origin(tmp_path):
    path = tmp_path / "repa.pt"
    torch.save(training_dict(sit_state(QK), sit_state(QK), repa_args()), path)
    repa = load_official_checkpoint(path)
    assert official_space(repa) == {
        "kind": "latent",
        "vae": "stabilityai/sd-vae-ft-mse",
        "normalization": {"kind": "sd-scalar", "scale": 0.18215, "bias": 0.0},
        "channels": 4,
        "size": [8, 8],
        "image_size": [64, 64],
    }
    torch.save(training_dict(sit_state(QK), sit_state(QK), repa_args(spnorm_method="zscore")), path)
    irepa = load_official_checkpoint(path)
    with pytest.raises(IrepaError, match="--latent-stats"):
        official_space(irepa)
    stats = tmp_path / "sdvae-ft-mse-f8d4-latents-stats.pt"
    torch.save(
        collections.OrderedDict(
            latents_scale=torch.tensor([2.0, 4.0, 5.0, 8.0]).view(1, 4, 1, 1),
            latents_bias=torch.tensor([0.1, -0.2, 0.3, 0.0]).view(1, 4, 1, 1),
        ),
        stats,
    )
    norm = load_latent_stats(stats)
    assert norm == {"kind": "per-channel", "mean": pytest.approx([0.1, -0.2, 0.3, 0.0]),
                    "std": [0.5, 0.25, 0.2, 0.125]}  # fmt: skip
    assert official_space(irepa, latent_normalization=norm)["normalization"] == norm
    torch.save({"latents_scale": torch.ones(3)}, stats)
    with pytest.raises(IrepaError, match="latents_scale and latents_bias"):
        load_latent_stats(stats)
