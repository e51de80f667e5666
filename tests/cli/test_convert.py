import argparse
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from irepa.models.io import load_inference
from irepa.models.official import load_official_checkpoint
from irepa.utils.io import read_safetensors_metadata


def _layout():
    path = Path(__file__).resolve().parents[1] / "models" / "official_layout.py"
    spec = importlib.util.spec_from_file_location("official_layout_for_cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


L = _layout()
QK = dict(depth=2, width=64, patch=2, in_channels=4, num_classes=10, grid=(4, 4), qk_norm=True, heads=4)


def write_checkpoint(path, *, projectors=None, **args):
    state = L.random_state(L.official_sit_shapes(**QK), seed=0)
    ns = argparse.Namespace(**{"model": "SiT-S/2", "enc_type": "dinov2-vit-b", "encoder_depth": 1, "proj_coeff": 0.5,
                               "resolution": 64, "path_type": "linear", **args})  # fmt: skip
    projectors = L.mlp_projector(0, 64, 32, 24, irepa=False) if projectors is None else projectors
    torch.save(L.training_dict(state, {**state, **projectors}, ns, steps=50000), path)
    return state


def test_convert_repa_checkpoint(tmp_path, run_cli):
    ckpt = tmp_path / "0050000.pt"
    write_checkpoint(ckpt)
    out = tmp_path / "converted"
    result = run_cli("convert", ckpt, "--out", out)
    assert result.code == 0, result
    # depth 2 / width 64 is no registered size: labelled from the shapes, and args.model (SiT-S/2) is called out.
    assert "custom SiT config: depth 2, width 64, 4 heads, patch 2, input 8x8x4, 10 classes + null, qk_norm on" in (
        result.out
    )
    assert "warning: the checkpoint's args name the model SiT-S/2" in result.out
    assert "1 x mlp (64->32->24), repa key layout" in result.out
    assert "sd-scalar 0.18215" in result.out

    model, meta = load_inference(out / "model.safetensors")
    official = load_official_checkpoint(ckpt)
    for key, value in official.state_dict.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert meta["ema"] is True and meta["step"] == 50000 and meta["diffusion"] == {"path": "linear"}
    assert meta["space"]["normalization"] == {"kind": "sd-scalar", "scale": 0.18215, "bias": 0.0}
    assert meta["source"]["origin"] == "repa" and len(meta["source"]["sha256"]) == 64
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["name"] == "SiT-S/2" and config["model"]["kwargs"]["depth"] == 2
    assert config["model"]["architecture"] == "custom SiT config (depth 2, width 64, 4 heads, patch 2)"
    assert config["align"] == {"encoders": ["dinov2-vit-b"], "depth": 1, "projector": "mlp", "projector_dim": 32,
                               "weight": 0.5}  # fmt: skip
    assert config["official_args"]["encoder_depth"] == 1
    assert meta["config"] == config

    header = read_safetensors_metadata(out / "projectors.safetensors")
    assert header["format"] == "irepa-projectors/1"
    assert json.loads(header["projector"]) == {"kind": "mlp", "in_dim": 64, "out_dims": [24], "hidden_dim": 32,
                                               "kernel_size": None}  # fmt: skip
    from safetensors.torch import load_file

    assert sorted(load_file(out / "projectors.safetensors")) == sorted(
        f"projectors.0.net.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")
    )


def test_convert_irepa_conv_checkpoint_needs_and_uses_latent_stats(tmp_path, run_cli):
    ckpt = tmp_path / "irepa.pt"
    write_checkpoint(ckpt, projectors=L.conv_projector(0, 64, 24, 1), spnorm_method="zscore", zscore_alpha=0.6)
    out = tmp_path / "out"
    result = run_cli("convert", ckpt, "--out", out)
    assert result.code == 2 and "--latent-stats" in result.err
    assert not out.exists()  # nothing half-written
    stats = tmp_path / "stats.pt"
    torch.save({"latents_scale": torch.full((1, 4, 1, 1), 2.0), "latents_bias": torch.zeros(1, 4, 1, 1)}, stats)
    result = run_cli("convert", ckpt, "--out", out, "--latent-stats", stats, "--dtype", "bfloat16")
    assert result.code == 0, result
    assert "1 x conv (64->24, kernel 1x1), irepa key layout" in result.out
    assert "target_norm=spatial" in result.out and "kernel_size=1" in result.out
    model, meta = load_inference(out / "model.safetensors")
    assert model.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert meta["space"]["normalization"] == {"kind": "per-channel", "mean": [0.0] * 4, "std": [0.5] * 4}


def test_convert_refuses_wrong_architecture_existing_output_and_truncated_files(tmp_path, run_cli):
    ckpt = tmp_path / "c.pt"
    write_checkpoint(ckpt)
    out = tmp_path / "out"
    wrong = run_cli("convert", ckpt, "--out", out, "--model", "SiT-B/2")
    assert wrong.code == 2 and "does not match SiT-B/2" in wrong.err and "blocks.2." in wrong.err
    assert not out.exists()
    assert run_cli("convert", ckpt, "--out", out).code == 0
    again = run_cli("convert", ckpt, "--out", out)
    assert again.code == 2 and "--overwrite" in again.err
    assert run_cli("convert", ckpt, "--out", out, "--overwrite").code == 0
    truncated = tmp_path / "t.pt"
    truncated.write_bytes(ckpt.read_bytes()[:1000])
    bad = run_cli("convert", truncated, "--out", tmp_path / "out2")
    assert bad.code == 2 and "truncated or corrupt" in bad.err and len(bad.err.strip().splitlines()) == 1
    assert not (tmp_path / "out2").exists()


def test_convert_labels_the_architecture_from_the_weights_not_the_args(tmp_path, run_cli):
    """A depth-2, width-64 state dict whose args say SiT-XL/2 is a custom config, with one warning naming both."""
    ckpt = tmp_path / "tiny.pt"
    write_checkpoint(ckpt, model="SiT-XL/2")
    result = run_cli("convert", ckpt, "--out", tmp_path / "out")
    assert result.code == 0, result
    model_lines = [line for line in result.out.splitlines() if line.startswith("model ")]
    assert model_lines == [
        "model     custom SiT config: depth 2, width 64, 4 heads, patch 2, input 8x8x4, 10 classes + null, qk_norm on "
        f"({model_lines[0].rsplit('(', 1)[1]}"
    ]
    assert "SiT-XL/2" not in model_lines[0]
    warnings = [line for line in result.out.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: the checkpoint's args name the model SiT-XL/2 (depth 28, width 1152, 16 heads) but its weights are "
        "custom SiT config (depth 2, width 64, 4 heads, patch 2); converting what the weights are"
    ]
    config = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert config["model"]["architecture"] == "custom SiT config (depth 2, width 64, 4 heads, patch 2)"
    assert "XL" not in config["model"]["name"]
    model, _ = load_inference(tmp_path / "out" / "model.safetensors")
    assert len(model.blocks) == 2 and model.blocks[0].attn.qkv.weight.shape[1] == 64


def test_architecture_label_matches_registered_sizes():
    from irepa.models.base import MODELS
    from irepa.models.official import architecture_label

    for name in ("SiT-XL/2", "SiT-B/4", "JiT-B/16", "JiT-H/32"):
        kwargs = {"mlp_ratio": 4.0, **MODELS.get(name).defaults}
        assert architecture_label(kwargs) == name
    xl = {"mlp_ratio": 4.0, **MODELS.get("SiT-XL/2").defaults}
    assert architecture_label({**xl, "depth": 2}) == "custom SiT config (depth 2, width 1152, 16 heads, patch 2)"
    assert architecture_label({**xl, "mlp_ratio": 2.0}).endswith("patch 2, mlp ratio 2)")
    jit = {"mlp_ratio": 4.0, **MODELS.get("JiT-B/16").defaults, "in_context_start": 1}
    assert architecture_label(jit) == "custom JiT config (depth 12, width 768, 12 heads, patch 16, bottleneck 128)"


@pytest.mark.parametrize("flag", ["--which", "--vae", "--latent-stats", "--path", "--dtype", "--overwrite", "--model"])
def test_help_documents_every_option(run_cli, flag):
    result = run_cli("convert", "--help")
    assert result.code == 0 and flag in result.out


def test_convert_in_a_real_process(tmp_path, run_cli_subprocess):
    ckpt = tmp_path / "last.pt"
    write_checkpoint(ckpt)
    result = run_cli_subprocess("convert", ckpt, "--out", tmp_path / "snap")
    assert result.code == 0, result
    assert (tmp_path / "snap" / "model.safetensors").is_file()
    missing = run_cli_subprocess("convert", tmp_path / "nope.pt", "--out", tmp_path / "x")
    assert missing.code == 2 and "does not exist" in missing.err


def test_convert_jit_checkpoint_writes_an_x_prediction_snapshot(tmp_path, run_cli, monkeypatch):
    from irepa.models.jit import JIT_SIZES

    tiny = {"depth": 3, "hidden_size": 32, "num_heads": 4, "bottleneck_dim": 16, "in_context_start": 1}
    monkeypatch.setitem(JIT_SIZES, "tiny", tiny)  # a standard size, so the in-context start block is known
    shapes = L.official_jit_shapes(depth=3, width=32, heads=4, patch=8, bottleneck=16, grid=4, num_classes=10,
                                   in_context_len=4)  # fmt: skip
    ema1, ema2 = L.random_jit_state(shapes, seed=0), L.random_jit_state(shapes, seed=1)
    ns = argparse.Namespace(img_size=32, class_num=10, noise_scale=2.0, t_eps=0.05, sampling_method="heun",
                            num_sampling_steps=50, cfg=2.9, interval_min=0.1, interval_max=1.0,
                            enable_repa=False)  # fmt: skip
    ckpt = tmp_path / "checkpoint-last.pth"
    torch.save(L.jit_training_dict(ema2, ema1, ema2, ns), ckpt)
    out = tmp_path / "converted"
    res = run_cli("convert", ckpt, "--out", out)
    assert res.code == 0, res
    assert "x-prediction on the linear path, noise scale 2" in res.out
    model, meta = load_inference(out / "model.safetensors")
    assert meta["space"] == {"kind": "pixel", "channels": 3, "size": [32, 32], "image_size": [32, 32]}
    assert meta["diffusion"] == {"path": "linear", "prediction": "x", "t_eps": 0.05, "noise_scale": 2.0,
                                 "sampler": {"method": "heun", "num_steps": 50, "cfg_scale": 2.9,
                                             "guidance_interval": [0.0, 0.9]}}  # fmt: skip
    assert meta["ema"] is True and meta["source"]["weights"] == "ema"
    for key, value in ema1.items():  # model_ema1: the EMA JiT samples with
        assert torch.equal(model.state_dict()[key], value), key


def test_convert_repae_training_dict_writes_its_tuned_vae(tmp_path, run_cli):
    spec = importlib.util.spec_from_file_location(
        "ldm_vae_layout_for_cli", Path(__file__).resolve().parents[1] / "models" / "ldm_vae_layout.py"
    )
    ldm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ldm)
    vae = ldm.randomize(ldm.LdmVAE(ch=32, ch_mult=(1, 2), num_res_blocks=1, z=4)).eval()
    state = L.random_state(L.official_sit_shapes(**QK), seed=0)
    bn = {"bn.running_mean": torch.tensor([0.1, 0.2, 0.3, 0.4]), "bn.running_var": torch.tensor([1.0, 4.0, 9.0, 16.0]),
          "bn.num_batches_tracked": torch.tensor(7)}  # fmt: skip
    ns = argparse.Namespace(model="SiT-S/2", enc_type="dinov2-vit-b", encoder_depth=1, proj_coeff=0.5,
                            vae_align_proj_coeff=1.5, bn_momentum=0.1, resolution=16, path_type="linear")  # fmt: skip
    ckpt = {**L.training_dict(state, {**state, **bn}, ns, steps=10), "vae": vae.state_dict()}
    torch.save(ckpt, tmp_path / "repae.pt")
    result = run_cli("convert", tmp_path / "repae.pt", "--out", tmp_path / "out")
    assert result.code == 0, result
    _, meta = load_inference(tmp_path / "out" / "model.safetensors")
    assert meta["space"]["vae"] == str((tmp_path / "out" / "vae").resolve())
    assert meta["space"]["normalization"]["std"] == [1.0, 2.0, 3.0, 4.0]
    from irepa.data.vae import load_vae

    loaded = load_vae(meta["space"]["vae"])
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encode(x).latent_dist.mean, vae.encode(x)[0], atol=1e-5, rtol=1e-4)
    assert loaded.latent_stats == {"mean": meta["space"]["normalization"]["mean"], "std": [1.0, 2.0, 3.0, 4.0]}
