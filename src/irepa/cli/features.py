"""``irepa features extract``: encoder patch tokens of an image folder, into one safetensors file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from irepa.cli.encoders import add_encoder_arguments, load_encoder_from_args
from irepa.errors import IrepaError


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``extract`` subcommand."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser(
        "extract",
        help="encode every image of a folder and save tokens + metadata (safetensors)",
        description="Encode the images under --images (recursively) with a zoo encoder and write patch_tokens "
        "(N,T,D), mean_token (N,D), cls_token (N,D) when the encoder has one, and labels (N,) when images sit in "
        "class subfolders, with metadata (encoder id, weights revision and checksum, preprocessing, grid, keys).",
    )
    add_encoder_arguments(p)
    p.add_argument("--images", type=Path, required=True, help="image folder (ROOT/CLASS/IMAGE for labels)")
    p.add_argument("--out", type=Path, required=True, help="output .safetensors file (written atomically)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument(
        "--crop",
        choices=("adm", "resize", "none"),
        default="adm",
        help="how images of another size reach --resolution: ADM centre crop (default), plain resize, or refuse",
    )
    p.add_argument(
        "--on-error",
        choices=("skip", "fail"),
        default="skip",
        help="unreadable images and --strict-rgb refusals: skip and count them (default) or stop at the first",
    )
    p.add_argument(
        "--strict-rgb", action="store_true", help="refuse grayscale/RGBA/palette images instead of converting"
    )
    p.add_argument(
        "--labels",
        choices=("auto", "none", "require"),
        default="auto",
        help="store class labels from ROOT/CLASS/ subfolders: when present (auto), never, or insist",
    )
    p.add_argument(
        "--save-dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
        help="dtype of the stored patch tokens (float16 halves the file)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar (shown only on a terminal)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")


def run(args: argparse.Namespace) -> int:
    """Extract features; prints a one-line summary."""
    import torch

    from irepa.encoders.features import extract_features
    from irepa.utils.images import list_images

    if args.out.suffix != ".safetensors":
        raise IrepaError(f"--out {str(args.out)!r} must end in .safetensors")
    if args.out.exists() and not args.force:
        raise IrepaError(f"output {str(args.out)!r} exists; pass --force to overwrite it")
    if args.batch_size < 1:
        raise IrepaError(f"--batch-size must be >= 1, got {args.batch_size}")
    files = list_images(args.images)
    encoder = load_encoder_from_args(args)
    if not encoder.weights_info.get("pretrained", False) and encoder.spec.weights is not None:
        print(f"warning: {encoder.spec.id} has random weights (--random-init): the features are meaningless")
    result = extract_features(
        encoder,
        files,
        args.out,
        root=args.images,
        batch_size=args.batch_size,
        crop=args.crop,
        on_error=args.on_error,
        strict_mode=args.strict_rgb,
        labels=args.labels,
        save_dtype=getattr(torch, args.save_dtype),
        progress=not args.no_progress and sys.stderr.isatty(),  # no bar frames in logs and pipes
        extra_metadata={"images_root": str(args.images)},
    )
    skipped = f", {result.skipped} unreadable skipped" if result.skipped else ""
    converted = f", {result.converted} converted to RGB" if result.converted else ""
    refused = f", {result.refused_non_rgb} non-RGB refused (--strict-rgb)" if result.refused_non_rgb else ""
    print(
        f"{result.num_images} images{skipped}{converted}{refused} -> {result.path} "
        f"(grid {encoder.grid[0]}x{encoder.grid[1]}, dim {encoder.embed_dim}, "
        f"{result.images_per_second:.1f} images/s)"
    )
    if result.refused_non_rgb:
        # Not an error (the files are fine), but rows are missing from the output: say how to get them back.
        print(
            f"warning: {result.refused_non_rgb} non-RGB images refused (--strict-rgb) are not in the output; "
            "convert them to RGB, or drop --strict-rgb to convert them while reading (--on-error fail lists the first)"
        )
    return 0
