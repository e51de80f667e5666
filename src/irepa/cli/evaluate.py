"""``irepa eval``: the ADM evaluation protocol, reference statistics, and Fréchet distances in other feature spaces.

Three forms::

    irepa eval SAMPLES.npz --ref REF.npz [--inception-weights PATH] [--num-samples N] [--out RESULT.json]
    irepa eval ref (--images DIR | --npz FILE) --out REF.npz [--resolution 256] [--keep-images 10000]
    irepa eval fd SAMPLES.npz --ref REF.npz|DIR --feature-space encoder:NAME|clip:DIR|inception

The Inception weights are looked up (never downloaded) at ``--inception-weights``, then ``$IREPA_INCEPTION_WEIGHTS``,
then torch's hub cache (``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from irepa.errors import IrepaError

USAGE = """irepa eval SAMPLES.npz --ref REF.npz [options]
       irepa eval ref (--images DIR | --npz FILE) --out REF.npz [options]
       irepa eval fd SAMPLES.npz --ref REF.npz|DIR --feature-space SPACE [options]"""

EPILOG = r"""examples:
  irepa eval samples.npz --ref VIRTUAL_imagenet256_labeled.npz \
      --inception-weights weights-inception-2015-12-05-6726825d.pth
  irepa eval ref --images imagenet/train --resolution 256 --out imagenet256_ref.npz
  irepa eval fd samples.npz --ref VIRTUAL_imagenet256_labeled.npz --feature-space encoder:dinov2-vit-b --pooling cls
  irepa eval fd samples.npz --ref ref_images/ --resolution 256 --feature-space clip:clip-vit-large-patch14-336

Results are printed in ADM's order (Inception Score, FID, sFID, Precision, Recall) and written as JSON together
with the samples' recipe card (SAMPLES.recipe.json), the reference's SHA-256, the Inception weights' SHA-256 and
the evaluator version and settings. See docs/evaluation.md."""

ENV_WEIGHTS = "IREPA_INCEPTION_WEIGHTS"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``irepa eval`` (all three forms)."""
    parser.usage = USAGE
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "target",
        metavar="SAMPLES.npz | ref | fd",
        help="the samples file to evaluate (ADM format: uint8 NHWC images under arr_0), or 'ref' / 'fd'",
    )
    parser.add_argument("samples", nargs="?", metavar="SAMPLES.npz", help="(fd only) the samples file")

    common = parser.add_argument_group("common options")
    common.add_argument(
        "--inception-weights",
        type=Path,
        metavar="PATH",
        help=f"FID Inception weights file (default: ${ENV_WEIGHTS}, then the torch hub cache); never downloaded",
    )
    common.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64, as ADM)")
    common.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    common.add_argument("--out", type=Path, metavar="FILE", help="output file (eval: result JSON; ref: REF.npz)")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")

    adm = parser.add_argument_group("ADM evaluation (irepa eval SAMPLES.npz --ref REF.npz)")
    adm.add_argument(
        "--ref",
        type=Path,
        metavar="REF",
        help="reference batch .npz (mu, sigma, mu_s, sigma_s and/or arr_0), e.g. VIRTUAL_imagenet256_labeled.npz; "
        "for fd also an image folder",
    )
    adm.add_argument(
        "--num-samples",
        type=int,
        metavar="N",
        help="evaluate the first N samples; an error if the file holds fewer (default: all; papers use 50000)",
    )
    adm.add_argument(
        "--allow-size-mismatch",
        action="store_true",
        help="evaluate although the samples and the reference images differ in size (results not comparable)",
    )
    adm.add_argument(
        "--pr-distance-dtype",
        choices=("float32", "float16", "float64"),
        default="float32",
        help="precision of the precision/recall distances; float16 approximates ADM's TensorFlow code",
    )

    ref = parser.add_argument_group("reference building (irepa eval ref)")
    source = ref.add_mutually_exclusive_group()
    source.add_argument("--images", type=Path, metavar="DIR", help="image folder (searched recursively)")
    source.add_argument("--npz", type=Path, metavar="FILE", help="an .npz with images under arr_0")
    ref.add_argument(
        "--resolution",
        type=int,
        metavar="PX",
        help="ADM centre crop of folder images to PX×PX (ref, and fd folder references); default: keep sizes",
    )
    ref.add_argument("--num-images", type=int, metavar="N", help="use only the first N images (default: all)")
    ref.add_argument(
        "--keep-images",
        type=int,
        default=10_000,
        metavar="N",
        help="store a random subset of N images as arr_0 for precision/recall (default: 10000 as ADM; 0: none)",
    )
    ref.add_argument("--seed", type=int, default=0, help="seed of the stored random subset (default: 0)")
    ref.add_argument(
        "--no-store-features",
        action="store_true",
        help="do not cache the stored images' Inception pool features in the reference file",
    )

    fd = parser.add_argument_group("other feature spaces (irepa eval fd)")
    fd.add_argument(
        "--feature-space",
        metavar="SPACE",
        help="encoder:NAME (an encoder of the zoo, e.g. encoder:dinov2-vit-b), clip:DIR (CLIP embeddings from a "
        "local transformers folder; also computes CMMD) or inception (pool features)",
    )
    fd.add_argument(
        "--pooling",
        choices=("mean", "cls"),
        default="mean",
        help="encoder spaces: mean of the patch tokens (default) or the CLS token",
    )
    fd.add_argument("--encoder-weights", type=Path, metavar="PATH", help="encoder spaces: local weights file")
    fd.add_argument(
        "--random-init",
        action="store_true",
        help="encoder spaces: random weights (smoke tests only: the distances are meaningless)",
    )
    from irepa.cli.encoders import add_location_arguments

    add_location_arguments(fd)  # --cache-dir, --hf-cache-dir, --offline: where zoo encoder weights are looked for


# ----------------------------------------------------------------------------------------------------------------------


def _inception(args: argparse.Namespace, device: str):
    """Resolve and load the Inception weights; returns ``(model, sha256, path)``."""
    from irepa.cli.encoders import default_torch_hub_dir
    from irepa.metrics.generative.inception import load_inception, locate_inception_weights
    from irepa.utils.io import sha256_file

    torch_home = default_torch_hub_dir().parent  # $TORCH_HOME (or ~/.cache/torch)
    path = locate_inception_weights(args.inception_weights, os.environ.get(ENV_WEIGHTS), torch_home)
    return load_inception(path, device), sha256_file(path), path


def _progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def _format(value) -> str:
    return "not computed" if value is None else repr(float(value))


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise IrepaError(f"{name} must be >= 1, got {value}")


def _reject(args: argparse.Namespace, mode: str, names: tuple[str, ...]) -> None:
    defaults = {"keep_images": 10_000, "seed": 0, "pooling": "mean", "pr_distance_dtype": "float32"}
    for name in names:
        value = getattr(args, name)
        if value not in (None, False, defaults.get(name)):
            raise IrepaError(f"--{name.replace('_', '-')} does not apply to 'irepa eval {mode}'; see irepa eval --help")


def run_adm(args: argparse.Namespace) -> int:
    """``irepa eval SAMPLES.npz --ref REF.npz``."""
    from irepa.metrics.generative.evaluator import (
        EvalSettings,
        evaluate_adm,
        open_samples,
        read_reference,
        recipe_card_path,
    )
    from irepa.utils.device import resolve_device
    from irepa.utils.io import write_json

    samples = Path(args.target)
    if args.samples is not None:
        raise IrepaError(f"unexpected second file {args.samples!r}; usage: irepa eval SAMPLES.npz --ref REF.npz")
    if args.ref is None:
        raise IrepaError("the ADM evaluation needs --ref REF.npz (e.g. ADM's VIRTUAL_imagenet256_labeled.npz)")
    _reject(
        args,
        "SAMPLES.npz",
        ("images", "npz", "resolution", "num_images", "keep_images", "feature_space", "random_init"),
    )
    _check_positive("--batch-size", args.batch_size)
    if not samples.exists():
        raise IrepaError(f"samples file {str(samples)!r} does not exist")
    settings = EvalSettings(
        batch_size=args.batch_size,
        pr_distance_dtype=args.pr_distance_dtype,
        allow_size_mismatch=args.allow_size_mismatch,
    )
    # Check both files before loading the network: bad input fails in a second, not after minutes.
    reference = read_reference(args.ref)
    open_samples(samples, args.num_samples).source.close()
    device = resolve_device(args.device)
    inception, weights_sha, weights_path = _inception(args, device)
    result = evaluate_adm(
        samples,
        reference,
        inception,
        detector_id=weights_sha,
        num_samples=args.num_samples,
        settings=settings,
        device=device,
        progress=_progress(args),
        log=lambda msg: print(msg, file=sys.stderr),
    )
    result["evaluator"]["weights_path"] = str(weights_path)
    card_path = recipe_card_path(samples)
    result["recipe"] = None
    if card_path.is_file():
        import json

        try:
            result["recipe"] = json.loads(card_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise IrepaError(f"recipe card {str(card_path)!r} is not valid JSON: {exc}") from exc
    metrics = result["metrics"]
    for label, key in (
        ("Inception Score", "inception_score"),
        ("FID", "fid"),
        ("sFID", "sfid"),
        ("Precision", "precision"),
        ("Recall", "recall"),
    ):
        print(f"{label}: {_format(metrics[key])}")
    for note in result["notes"]:
        print(f"note: {note}", file=sys.stderr)
    out = args.out or samples.with_name(samples.name.removesuffix(".npz") + ".eval.json")
    write_json(out, result)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def run_ref(args: argparse.Namespace) -> int:
    """``irepa eval ref``: reference statistics (+ a stored image subset) from a folder or an npz."""
    from irepa.metrics.generative.evaluator import ImageSource, build_reference
    from irepa.utils.device import resolve_device

    if args.samples is not None:
        raise IrepaError(f"unexpected argument {args.samples!r}; usage: irepa eval ref --images DIR --out REF.npz")
    _reject(args, "ref", ("ref", "num_samples", "feature_space", "allow_size_mismatch"))
    if args.images is None and args.npz is None:
        raise IrepaError("irepa eval ref needs the reference images: pass --images DIR or --npz FILE")
    if args.out is None:
        raise IrepaError("irepa eval ref needs --out REF.npz")
    _check_positive("--batch-size", args.batch_size)
    _check_positive("--num-images", args.num_images)
    if args.keep_images < 0:
        raise IrepaError(f"--keep-images must be >= 0, got {args.keep_images}")
    if args.npz is not None and args.resolution is not None:
        raise IrepaError("--resolution applies to image folders; an npz's images are used as they are")
    source = ImageSource(args.images or args.npz, resolution=args.resolution, limit=args.num_images)
    device = resolve_device(args.device)
    try:
        inception, weights_sha, _ = _inception(args, device)
        summary = build_reference(
            source,
            args.out,
            inception,
            detector_id=weights_sha,
            keep_images=args.keep_images,
            store_features=not args.no_store_features,
            seed=args.seed,
            batch_size=args.batch_size,
            device=device,
            progress=_progress(args),
        )
    finally:
        source.close()
    h, w = summary["image_size"]
    print(
        f"wrote {summary['out']}: statistics of {summary['num_images']} images ({h}x{w}), "
        f"{summary['stored_images']} stored as arr_0"
    )
    return 0


def _feature_space(args: argparse.Namespace, device: str, resolution: int):
    spec = args.feature_space
    if not spec:
        raise IrepaError("irepa eval fd needs --feature-space (encoder:NAME, clip:DIR or inception)")
    kind, _, value = spec.partition(":")
    if kind == "inception" and not value:
        from irepa.metrics.generative.feature_spaces import InceptionPoolSpace

        return InceptionPoolSpace(_inception(args, device)[0])
    if kind == "clip" and value:
        from irepa.metrics.generative.feature_spaces import ClipEmbeddingSpace

        return ClipEmbeddingSpace(value, device=device)
    if kind == "encoder" and value:
        from irepa.cli.encoders import weight_locations
        from irepa.encoders import load_encoder
        from irepa.metrics.generative.feature_spaces import EncoderSpace

        encoder = load_encoder(
            value,
            resolution=resolution,
            weights=args.encoder_weights,
            pretrained=not args.random_init,
            device=device,
            **weight_locations(args),
        )
        if args.random_init:
            print(f"warning: {value} has random weights (--random-init): the distances are meaningless")
        return EncoderSpace(encoder, args.pooling, name=value)
    raise IrepaError(f"unknown feature space {spec!r}; use encoder:NAME, clip:DIR or inception")


def run_fd(args: argparse.Namespace) -> int:
    """``irepa eval fd``: Fréchet distance (and CMMD for CLIP) in another feature space."""
    from irepa.metrics.generative.evaluator import EVALUATOR_VERSION, ImageSource, open_samples
    from irepa.metrics.generative.feature_spaces import ClipEmbeddingSpace, compute_features
    from irepa.metrics.generative.scores import cmmd
    from irepa.metrics.generative.stats import FeatureStatistics, frechet_distance
    from irepa.utils.device import resolve_device
    from irepa.utils.io import sha256_file, write_json

    if args.samples is None:
        raise IrepaError("usage: irepa eval fd SAMPLES.npz --ref REF.npz|DIR --feature-space SPACE")
    if args.ref is None:
        raise IrepaError("irepa eval fd needs --ref: an .npz with images under arr_0, or an image folder")
    _reject(args, "fd", ("images", "npz", "keep_images", "num_images"))
    _check_positive("--batch-size", args.batch_size)
    samples = Path(args.samples)
    device = resolve_device(args.device)
    sample_file = open_samples(samples, args.num_samples)
    try:
        space = _feature_space(args, device, resolution=sample_file.image_size[0])
    except BaseException:
        sample_file.source.close()
        raise
    ref_source = ImageSource(args.ref, resolution=args.resolution)
    try:
        if ref_source.image_size != sample_file.image_size and not args.allow_size_mismatch:
            raise IrepaError(
                f"samples are {sample_file.image_size} but the reference images are {ref_source.image_size}; use "
                "--resolution (folders) or pass --allow-size-mismatch"
            )
        sample_feats = compute_features(space, sample_file.source.batches(args.batch_size), device=device)
        ref_feats = compute_features(space, ref_source.batches(args.batch_size), device=device)
    finally:
        sample_file.source.close()
        ref_source.close()
    fd = frechet_distance(FeatureStatistics.from_features(sample_feats), FeatureStatistics.from_features(ref_feats))
    result = {
        "metrics": {"fd": fd, "cmmd": cmmd(ref_feats, sample_feats) if isinstance(space, ClipEmbeddingSpace) else None},
        "feature_space": {"name": space.name, "spec": args.feature_space, "dim": int(sample_feats.shape[1])},
        "samples": {"path": str(samples), "num_samples": int(sample_feats.shape[0])},
        "reference": {
            "path": str(args.ref),
            "sha256": sha256_file(args.ref) if args.ref.is_file() else None,
            "num_images": int(ref_feats.shape[0]),
        },
        "evaluator": {"version": EVALUATOR_VERSION, "batch_size": args.batch_size},
    }
    print(f"FD ({space.name}): {fd!r}")
    if result["metrics"]["cmmd"] is not None:
        print(f"CMMD: {result['metrics']['cmmd']!r}")
    out = args.out or samples.with_name(samples.name.removesuffix(".npz") + ".fd.json")
    write_json(out, result)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch on the first positional argument: ``ref``, ``fd`` or a samples file."""
    if args.target == "ref":
        return run_ref(args)
    if args.target == "fd":
        return run_fd(args)
    return run_adm(args)
