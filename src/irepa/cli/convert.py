"""``irepa convert``: official REPA / iREPA / REPA-E / JiT checkpoints → irepa inference snapshot + config.

Writes ``OUT/model.safetensors`` (an inference snapshot, see :mod:`irepa.models.io`), ``OUT/config.yaml`` (what was
detected: model, diffusion path, latent space, alignment recipe, source file and the run's original args) and, when
the checkpoint holds projectors, ``OUT/projectors.safetensors`` (aligner layout ``projectors.K.net.*``). JiT
snapshots are pixel space with ``diffusion: {path: linear, prediction: x, t_eps, noise_scale, sampler}`` from the
run's args.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

_OUTPUTS = ("model.safetensors", "config.yaml", "projectors.safetensors", "vae")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``irepa convert`` arguments."""
    parser.description = (
        "Convert an official REPA / iREPA / REPA-E SiT or JiT / iREPA-JiT checkpoint (.pt/.pth, read with "
        "weights_only=True) into an irepa inference snapshot (model.safetensors + config.yaml, and "
        "projectors.safetensors when present)."
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="official checkpoint: a training dict or a bare state dict")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    parser.add_argument(
        "--model",
        metavar="NAME",
        help="architecture name, e.g. SiT-XL/2 (default: detected from the weights' shapes; the checkpoint's args "
        "only fill in what no shape shows, and a warning names them when they disagree; a wrong --model fails "
        "with the mismatched keys listed)",
    )
    parser.add_argument(
        "--which",
        choices=("auto", "ema", "ema2", "model"),
        default="auto",
        help="weights to take from a training dict: the EMA (what official evaluation uses; default via auto), "
        "JiT's second EMA (model_ema2, decay 0.9996) or the raw model",
    )
    parser.add_argument(
        "--vae",
        metavar="ID_OR_DIR",
        help="VAE to decode with (default: stabilityai/sd-vae-ft-mse for REPA/iREPA; for a REPA-E training dict its "
        "own end-to-end tuned VAE, converted to DIR/vae)",
    )
    parser.add_argument(
        "--latent-stats",
        metavar="FILE",
        help="per-channel latent statistics (.pt with latents_scale, latents_bias), e.g. "
        "sdvae-ft-mse-f8d4-latents-stats.pt; required for iREPA-ldm checkpoints, overrides REPA-E's bn statistics",
    )
    parser.add_argument(
        "--path",
        choices=("linear", "cosine"),
        help="interpolation path the model was trained on (default: the checkpoint's args.path_type, else linear)",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="dtype of the written weights (default float32; bfloat16 halves the file)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files in DIR")


def run(args: argparse.Namespace) -> int:
    """Convert, write the outputs, print what was detected."""
    import torch
    import yaml

    from irepa.diffusion.paths import PATHS
    from irepa.errors import IrepaError
    from irepa.models.io import save_inference
    from irepa.models.official import (
        load_latent_stats,
        load_official_checkpoint,
        official_space,
        registered_architecture,
    )
    from irepa.models.sit import count_parameters
    from irepa.utils.io import save_safetensors, sha256_file, write_text

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise IrepaError(f"--out {str(out)!r} exists and is not a directory")
    existing = [name for name in _OUTPUTS if (out / name).exists()]
    if existing and not args.overwrite:
        raise IrepaError(f"{str(out)!r} already holds {', '.join(existing)}; pass --overwrite to replace them")

    ckpt = load_official_checkpoint(args.checkpoint, which=args.which, model_name=args.model)
    stats = load_latent_stats(args.latent_stats) if args.latent_stats else None
    vae = args.vae
    vae_model = None
    if vae is None and ckpt.origin == "repa-e" and ckpt.container == "training-dict":
        from irepa.models.vae import read_official_vae

        try:  # the training dict's `vae` entry: REPA-E's tuned VAE (LDM key layout)
            vae_model = read_official_vae(args.checkpoint)
        except IrepaError:
            vae_model = None  # no usable `vae` entry: official_space asks for --vae
        if vae_model is not None:
            vae = str((out / "vae").resolve())
    space = official_space(ckpt, vae=vae, latent_normalization=stats)
    official_args = ckpt.args or {}
    jit = ckpt.origin in ("jit", "irepa-jit")
    path_name = args.path or official_args.get("path_type") or "linear"
    if path_name not in PATHS or (jit and path_name != "linear"):
        raise IrepaError(f"the checkpoint's path {path_name!r} is not one of {PATHS.list()} (JiT: linear); pass --path")
    diffusion = _jit_diffusion(official_args, space["size"][0]) if jit else {"path": path_name}
    dtype = getattr(torch, args.dtype)

    source = {
        "file": Path(args.checkpoint).name,
        "sha256": sha256_file(args.checkpoint),
        "origin": ckpt.origin,
        "container": ckpt.container,
        "weights": ckpt.which,
        "steps": ckpt.steps,
    }
    config = {
        "model": {"architecture": ckpt.architecture, "name": ckpt.model_name, "kwargs": ckpt.model_kwargs},
        "diffusion": diffusion,
        "space": space,
    }
    align = ckpt.align_settings()
    if align:
        config["align"] = align
    config["source"] = source
    if ckpt.args is not None:
        config["official_args"] = ckpt.args
    config_text = (
        "# written by irepa convert; model.architecture is what the weights' shapes are, model.name the registered\n"
        "# factory that rebuilds them with model.kwargs; align and official_args are what the official run used\n"
    )
    config_text += yaml.safe_dump(config, sort_keys=False, width=120)

    model = ckpt.build_model()
    save_inference(
        out / "model.safetensors",
        model,
        model_name=ckpt.model_name,
        model_kwargs=ckpt.model_kwargs,
        metadata={
            "diffusion": diffusion,
            "space": space,
            "step": ckpt.steps,
            "ema": ckpt.which == "ema",
            "config": config_text,
            "source": source,
        },
        dtype=dtype,
    )
    write_text(out / "config.yaml", config_text)
    written = ["model.safetensors", "config.yaml"]
    if vae_model is not None:
        from irepa.models.vae import save_vae_folder

        norm = space["normalization"]
        save_vae_folder(vae_model.model, out / "vae", latent_stats={"mean": norm["mean"], "std": norm["std"]},
                        source={"checkpoint": source["file"], "sha256": source["sha256"]})  # fmt: skip
        written.append("vae/")
    info = ckpt.projector_info
    if info is not None:
        header = {
            "format": "irepa-projectors/1",
            "projector": json.dumps(
                {
                    "kind": info.kind,
                    "in_dim": info.in_dim,
                    "out_dims": info.out_dims,
                    "hidden_dim": info.hidden_dim,
                    "kernel_size": info.kernel_size,
                }
            ),
            "align": json.dumps(align),
            "source": json.dumps(source),
        }
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in ckpt.projectors.items()}
        save_safetensors(tensors, out / "projectors.safetensors", metadata=header)
        written.append("projectors.safetensors")
    elif (out / "projectors.safetensors").exists():
        (out / "projectors.safetensors").unlink()  # --overwrite of a directory from another checkpoint

    kw = ckpt.model_kwargs
    classes = f"{kw['num_classes']} classes" + (" + null" if kw["null_class"] else "")
    steps = f", step {ckpt.steps}" if ckpt.steps is not None else ""
    print(f"read      {args.checkpoint} ({ckpt.origin}, {ckpt.container}, {ckpt.which} weights{steps})")
    for warning in ckpt.warnings:
        print(f"warning: {warning}")
    # The label comes from the weights' shapes, never from the factory name or the checkpoint's args.
    label = registered_architecture(kw) or f"custom {'JiT' if jit else 'SiT'} config"
    print(
        f"model     {label}: depth {kw['depth']}, width {kw['hidden_size']}, {kw['num_heads']} heads, "
        f"patch {kw['patch_size']}, input {kw['input_size']}x{kw['input_size']}x{kw['in_channels']}, {classes}, "
        f"qk_norm {'on' if kw['qk_norm'] else 'off'} ({count_parameters(model) / 1e6:.1f}M parameters)"
    )
    if info is not None:
        shape = {"mlp": f"{info.in_dim}->{info.hidden_dim}->{{}}", "linear": f"{info.in_dim}->{{}}"}.get(
            info.kind, f"{info.in_dim}->{{}}, kernel {info.kernel_size}x{info.kernel_size}"
        )
        dims = ", ".join(shape.format(d) for d in info.out_dims)
        print(f"projector {len(info.out_dims)} x {info.kind} ({dims}), {info.layout} key layout")
    if jit:
        print(f"space     pixel; x-prediction on the linear path, noise scale {diffusion['noise_scale']:g}")
    else:
        norm = space["normalization"]
        norm_text = f"sd-scalar {norm['scale']}" if norm["kind"] == "sd-scalar" else f"{norm['kind']} statistics"
        print(f"space     latent, VAE {space['vae']}, {norm_text}; path {path_name}")
    if align:
        print(f"align     {', '.join(f'{k}={v}' for k, v in align.items())}")
    print(f"wrote     {', '.join(str(out / name) for name in written)}")
    return 0


def _jit_diffusion(args: dict, image_side: int) -> dict:
    """A JiT checkpoint's ``diffusion`` metadata: x-prediction on the linear path, from its args (JiT's defaults).

    JiT's guidance interval ``[interval_min, interval_max]`` is over its reversed time ``t_JiT = 1 − t``; in SiT
    time it is ``[1 − interval_max, 1 − interval_min]``.
    """
    from irepa.diffusion.losses import jit_noise_scale

    low, high = float(args.get("interval_min", 0.0)), float(args.get("interval_max", 1.0))  # JiT CLI defaults
    noise_scale = args.get("noise_scale")
    return {
        "path": "linear",
        "prediction": "x",
        "t_eps": float(args.get("t_eps", 0.05)),
        "noise_scale": float(noise_scale) if noise_scale is not None else jit_noise_scale(image_side),
        "sampler": {
            "method": str(args.get("sampling_method", "heun")),
            "num_steps": int(args.get("num_sampling_steps", 50)),
            "cfg_scale": float(args.get("cfg", 1.0)),
            "guidance_interval": [round(1.0 - high, 12), round(1.0 - low, 12)],
        },
    }
