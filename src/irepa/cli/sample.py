r"""``irepa sample``: generate samples from an inference snapshot into an ADM-format ``.npz`` with a recipe card.

::

    irepa sample --snapshot model.safetensors --num-samples 50000 --out samples.npz \\
        [--sampler sde --steps 250 --cfg-scale 1.0 --guidance-low 0 --guidance-high 1] \\
        [--labels random|balanced --seed 0 --batch-size 64 --quantize truncate|round] [--vae ID --vae-weights DIR]
        [--dtype bfloat16 --compile reduce-overhead]
    torchrun --nproc_per_node 8 -m irepa sample ...        # or: accelerate launch -m irepa sample ...

The samples come from the library's generation loop (:mod:`irepa.diffusion.generate`): sample ``i`` gets its own
generator (initial noise first, then the SDE's per-step noise) and label ``labels[i]`` of the run-wide label plan, so
the result is identical for any batch size and any number of processes; the snapshot's prediction type is converted
to the sampler's velocity there. This command parses and checks the arguments, splits the indices over the
processes (rank ``r`` of ``W`` takes ``r, r + W, r + 2W, ...``) and keeps the output resumable.

Decoded uint8 images go straight into a memory-mapped work folder (``OUT.work/``) and are assembled into
``OUT`` (``arr_0`` NHWC uint8 + ``labels``) at the end: no PNG round trip, never two copies in memory. Interrupted?
Re-run the same command: finished samples are kept. ``OUT.recipe.json`` records everything that defines the
samples.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from irepa.errors import IrepaError

if TYPE_CHECKING:
    from irepa.diffusion.generate import SamplingSettings, SnapshotSampler
    from irepa.metrics.generative.npz import IndexedImageWriter

#: Format tag of the recipe card written beside the samples.
RECIPE_FORMAT = "irepa-recipe/1"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``irepa sample``."""
    from irepa.diffusion.generate import COMPILE_MODES

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "Reproduce a paper row (SDE, 250 steps, 50K samples, random labels), e.g.:\n"
        "  torchrun --nproc_per_node 8 -m irepa sample --snapshot sit-xl2-irepa.safetensors --num-samples 50000 \\\n"
        "      --out samples.npz --sampler sde --steps 250 --cfg-scale 1.0\n"
        "then: irepa eval samples.npz --ref VIRTUAL_imagenet256_labeled.npz. See docs/evaluation.md."
    )
    parser.add_argument(
        "--snapshot", type=Path, required=True, metavar="FILE", help="inference snapshot (.safetensors)"
    )
    parser.add_argument("--num-samples", type=int, required=True, metavar="N", help="number of samples (papers: 50000)")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="output .npz (ADM format)")
    parser.add_argument(
        "--sampler",
        choices=("euler", "heun", "sde", "meanflow"),
        default=None,
        help="sampler (default: the snapshot's, i.e. meanflow for MeanFlow models, else sde as the papers)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="sampling steps (default: the snapshot's, i.e. 1 for MeanFlow, else 250); heun: NFE = 2N-1",
    )
    parser.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (1: no CFG)")
    parser.add_argument(
        "--guidance-low", type=float, default=0.0, help="guidance interval start in SiT time (t=0 data; default 0)"
    )
    parser.add_argument(
        "--guidance-high",
        type=float,
        default=1.0,
        help="guidance interval end in SiT time (t=1 noise; default 1); guided iff low <= t <= high",
    )
    parser.add_argument(
        "--heun-guidance-time",
        choices=("next", "current"),
        default="next",
        help="heun: time the corrector's guidance test uses; 'current' reproduces the official REPA sampler",
    )
    parser.add_argument(
        "--labels",
        choices=("random", "balanced"),
        default="random",
        help="class labels: uniform random (REPA/ADM papers, default) or exactly balanced (JiT)",
    )
    parser.add_argument("--seed", type=int, default=0, help="global seed (default: 0)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per forward pass per process")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="model forward precision via autocast (default float32; reduced precision changes FID)",
    )
    parser.add_argument(
        "--quantize",
        choices=("truncate", "round"),
        default="truncate",
        help="uint8 quantization: truncate (ADM and the official generate.py; default) or round (nearest level)",
    )
    parser.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default="none",
        help="torch.compile the model: reduce-overhead uses CUDA graphs (fastest for small batches on a GPU); "
        "samples may differ from eager ones at float round-off (default: none)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK if available)")
    parser.add_argument("--vae", default=None, help="VAE id for latent snapshots (default: the snapshot's VAE)")
    parser.add_argument("--vae-weights", type=Path, metavar="DIR", help="local VAE folder (config.json + weights)")
    parser.add_argument("--offline", action="store_true", help="never download the VAE")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# ----------------------------------------------------------------------------------------------------------------------
# Recipe


@dataclasses.dataclass(frozen=True)
class SampleRecipe:
    """Everything that defines a set of samples (the fingerprint of a run; the recipe card adds provenance)."""

    snapshot_sha256: str
    num_samples: int
    sampler: str
    steps: int
    cfg_scale: float
    guidance_interval: tuple[float, float]
    heun_guidance_time: str
    labels: str
    seed: int
    dtype: str
    vae: str | None
    quantize: str = "truncate"
    compile: str = "none"

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise IrepaError(f"--num-samples must be >= 1, got {self.num_samples}")
        if self.steps < 1:
            raise IrepaError(f"--steps must be >= 1, got {self.steps}")
        if not (math.isfinite(self.cfg_scale) and self.cfg_scale >= 0):
            raise IrepaError(f"--cfg-scale must be a finite number >= 0, got {self.cfg_scale}")
        low, high = self.guidance_interval
        if not 0.0 <= low <= high <= 1.0:
            raise IrepaError(f"guidance interval [{low}, {high}] must satisfy 0 <= low <= high <= 1 (SiT time)")
        if self.seed < 0:
            raise IrepaError(f"--seed must be >= 0, got {self.seed}")

    @property
    def settings(self) -> SamplingSettings:
        """The library's sampling settings of this recipe."""
        from irepa.diffusion.generate import SamplingSettings

        return SamplingSettings(
            sampler=self.sampler,
            steps=self.steps,
            cfg_scale=self.cfg_scale,
            guidance_interval=self.guidance_interval,
            heun_guidance_time=self.heun_guidance_time,
            seed=self.seed,
            dtype=self.dtype,
            quantize=self.quantize,
            compile=self.compile,
        )


# ----------------------------------------------------------------------------------------------------------------------
# Generation


def generate_shard(
    sampler: SnapshotSampler,
    settings: SamplingSettings,
    labels: torch.Tensor,
    writer: IndexedImageWriter,
    *,
    num_samples: int,
    rank: int,
    world_size: int,
    batch_size: int,
    progress: bool = False,
) -> int:
    """Generate the pending samples of rank ``rank`` (indices ``rank, rank + W, ...``) into ``writer``.

    Returns:
        The number of samples this call generated.
    """
    todo = writer.pending(np.arange(rank, num_samples, world_size))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"sampling (rank {rank})", unit="img")
    for start in range(0, len(todo), batch_size):
        indices = todo[start : start + batch_size]
        out = sampler.generate(indices.tolist(), labels[torch.from_numpy(indices)], settings)
        writer.write(indices, out.images.permute(0, 2, 3, 1).numpy(), out.finite.numpy())
        if bar is not None:
            bar.update(len(indices))
    if bar is not None:
        bar.close()
    return len(todo)


def _work_dir(out: Path) -> Path:
    return out.with_name(out.name + ".work")


def _launcher_world_size() -> int | None:
    value = os.environ.get("WORLD_SIZE")
    try:
        return int(value) if value else None
    except ValueError as exc:
        raise IrepaError(f"environment variable WORLD_SIZE={value!r} is not an integer") from exc


def check_arguments(args: argparse.Namespace) -> None:
    """Reject bad numeric arguments with a one-line error naming the flag, before anything is loaded or written.

    A run that failed here leaves no ``OUT.work/`` behind, so the corrected command starts cleanly.
    """
    for flag, value in (("--cfg-scale", args.cfg_scale), ("--guidance-low", args.guidance_low),
                        ("--guidance-high", args.guidance_high)):  # fmt: skip
        if not math.isfinite(value):
            raise IrepaError(f"{flag} must be a finite number, got {value}")
    if args.cfg_scale < 0:
        raise IrepaError(f"--cfg-scale must be >= 0 (1: no guidance), got {args.cfg_scale}")
    if not 0.0 <= args.guidance_low <= args.guidance_high <= 1.0:
        raise IrepaError(
            f"guidance interval --guidance-low {args.guidance_low} --guidance-high {args.guidance_high} must satisfy "
            "0 <= low <= high <= 1 (SiT time)"
        )
    if args.num_samples < 1:
        raise IrepaError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.steps is not None and args.steps < 1:
        raise IrepaError(f"--steps must be >= 1, got {args.steps}")
    if args.seed < 0:
        raise IrepaError(f"--seed must be >= 0, got {args.seed}")
    if args.batch_size < 1:
        raise IrepaError(f"--batch-size must be >= 1, got {args.batch_size}")


def run(args: argparse.Namespace) -> int:
    """Generate the samples, assemble the ``.npz`` and write the recipe card."""
    from irepa import __version__
    from irepa.diffusion.generate import SnapshotSampler, check_sampler
    from irepa.diffusion.samplers import SDE_LAST_TIME, SEED_FORMULA, generator_seed, sample_labels
    from irepa.metrics.generative.evaluator import label_balance, recipe_card_path
    from irepa.metrics.generative.npz import IndexedImageWriter
    from irepa.training.distributed import ProcessGroup
    from irepa.utils.device import resolve_device
    from irepa.utils.io import sha256_file, write_json

    check_arguments(args)
    if not args.out.name.endswith(".npz"):
        raise IrepaError(f"--out {str(args.out)!r} must end in .npz (the ADM sample format)")
    if args.out.exists() and not args.overwrite:
        raise IrepaError(f"{str(args.out)!r} exists; pass --overwrite to replace it")
    device = str(resolve_device(args.device, local_rank=None))  # checks --device (CUDA asked for but absent, ...)
    group = ProcessGroup.start(
        "cpu" if torch.device(device).type == "cpu" else "auto", expected_world_size=_launcher_world_size()
    )
    if args.device is None and group.device.type == "cuda":
        device = str(group.device)  # one GPU per launched process: cuda:LOCAL_RANK
    started = time.time()
    vae_id: list[str] = []

    def decoder(space):
        try:
            from irepa.data.vae import snapshot_decoder

            decode, name = snapshot_decoder(
                space, vae=args.vae, weights=args.vae_weights, offline=args.offline, device=device
            )
        except ImportError as exc:
            raise IrepaError(
                "this snapshot samples in VAE latent space, but this installation lacks the VAE libraries; install "
                "the [vae] extra"
            ) from exc
        vae_id.append(name)
        return decode

    sampler, meta = SnapshotSampler.load(args.snapshot, device=device, decoder=decoder)
    snapshot_sha = sha256_file(args.snapshot)
    diffusion = meta["diffusion"]
    # A MeanFlow snapshot records its sampler ("meanflow") and default steps; other snapshots: SDE, 250 steps.
    sampler_name = args.sampler or str(diffusion.get("sampler", "sde"))
    check_sampler(sampler.prediction, sampler_name)
    recipe = SampleRecipe(
        snapshot_sha256=snapshot_sha,
        num_samples=args.num_samples,
        sampler=sampler_name,
        steps=args.steps if args.steps is not None else int(diffusion.get("steps", 250)),
        cfg_scale=args.cfg_scale,
        guidance_interval=(args.guidance_low, args.guidance_high),
        heun_guidance_time=args.heun_guidance_time,
        labels=args.labels,
        seed=args.seed,
        dtype=args.dtype,
        vae=args.vae,
        quantize=args.quantize,
        compile=args.compile,
    )
    settings = recipe.settings
    num_classes, null_label = sampler.num_classes, sampler.null_label
    if recipe.cfg_scale > 1 and null_label is None:
        raise IrepaError("--cfg-scale > 1 needs a model with a null class (trained with label dropout)")
    labels = (
        sample_labels(recipe.num_samples, num_classes, recipe.labels, recipe.seed)
        if num_classes > 0
        else torch.zeros(recipe.num_samples, dtype=torch.long)  # unconditional: every label is the null label 0
    )
    space = meta["space"]
    probe = sampler.decode(torch.zeros(1, *sampler.shape, device=device)) if sampler.decode else None
    height, width, channels = (
        (int(probe.shape[2]), int(probe.shape[3]), int(probe.shape[1]))
        if probe is not None
        else (sampler.shape[1], sampler.shape[2], sampler.shape[0])
    )
    image_shape = (height, width, channels)
    if channels != 3:
        raise IrepaError(f"decoded images have {channels} channels; the ADM format needs RGB")

    work = _work_dir(args.out)
    fingerprint = dataclasses.asdict(recipe)
    error: IrepaError | None = None
    if group.rank == 0:
        try:
            IndexedImageWriter.create(work, recipe.num_samples, image_shape, fingerprint)
        except IrepaError as exc:
            error = exc
    if not group.all_ok(error is None):
        raise error or IrepaError("rank 0 could not prepare the work folder (see its error)")
    writer = IndexedImageWriter.open(work)
    generated = generate_shard(
        sampler,
        settings,
        labels,
        writer,
        num_samples=recipe.num_samples,
        batch_size=args.batch_size,
        rank=group.rank,
        world_size=group.world_size,
        progress=not args.no_progress and group.rank == 0 and sys.stderr.isatty(),
    )
    group.barrier()
    if group.rank != 0:
        return 0
    writer.finalize(args.out, {"labels": labels.numpy()})
    card = {
        "format": RECIPE_FORMAT,
        "irepa_version": __version__,
        "samples": str(args.out),
        "num_samples": recipe.num_samples,
        "image_size": list(image_shape[:2]),
        "snapshot": {
            "path": str(args.snapshot),
            "sha256": snapshot_sha,
            "model": meta["model"],
            "ema": meta.get("ema"),
            "step": meta.get("step"),
            "diffusion": meta["diffusion"],
            "prediction": sampler.prediction,
            "space": space,
        },
        "vae": None if space["kind"] == "pixel" else {"id": vae_id[0], "weights": str(args.vae_weights or "")},
        "sampler": {
            "name": recipe.sampler,
            "steps": recipe.steps,
            "nfe_per_sample": settings.nfe_per_sample,
            "cfg_scale": recipe.cfg_scale,
            "guidance_interval": list(recipe.guidance_interval),
            "null_label": null_label,
            "heun_guidance_time": recipe.heun_guidance_time if recipe.sampler == "heun" else None,
            "sde_last_time": SDE_LAST_TIME if recipe.sampler == "sde" else None,
            "dtype": recipe.dtype,
            "quantize": recipe.quantize,
            "compile": recipe.compile,
        },
        "seeds": {
            "seed": recipe.seed,
            "per_sample": SEED_FORMULA,
            "first_sample_generator_seed": generator_seed(recipe.seed, 0),
        },
        "labels": {"scheme": recipe.labels, "num_classes": num_classes, **label_balance(labels.numpy())},
        "run": {
            "world_size": group.world_size,
            "batch_size_per_process": args.batch_size,
            "device": device,
            "generated_now": generated,
            "seconds": round(time.time() - started, 1),
        },
    }
    write_json(recipe_card_path(args.out), card)
    print(
        f"wrote {args.out}: {recipe.num_samples} samples {image_shape[0]}x{image_shape[1]} "
        f"({recipe.sampler}, {recipe.steps} steps, cfg {recipe.cfg_scale}, {recipe.quantize}); recipe card "
        f"{recipe_card_path(args.out)}"
    )
    return 0
