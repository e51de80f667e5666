"""``irepa metrics``: spatial-structure metrics of patch tokens.

``irepa metrics spatial FILE... [--masks FILE] [--grid HxW] [--prefix-tokens N] [--metrics lds,cds,...]
[--near 1] [--far 6] [--dmax 8] [--out DIR]`` reads token tensors ``(B, T, D)`` (or dicts of them) from
``.safetensors``, ``.pt`` or ``.npy`` files, prints one row of metric means per token source and, with ``--out``,
writes ``spatial_metrics.json`` (settings, means, per-image values) and ``spatial_metrics.csv`` (one row per image
and source).

``irepa metrics spatial --encoder NAME [--encoder NAME2 ...] --images DIR [--masks DIR]`` runs zoo encoders on an
image folder first (one token source per encoder) and measures their tokens; SRSS uses the mask PNGs of
``--masks DIR`` (same keys as the images), brought to each token grid by
:func:`irepa.metrics.spatial.masks_to_patches` and filtered by :func:`irepa.metrics.spatial.srss_mask_filter` (the
paper keeps images with ≥ 64 foreground and ≥ 64 background patches of 256).

This module only parses arguments and prints: the measurement is :func:`irepa.analysis.measure.measure_tokens`
(token files) and :func:`irepa.analysis.measure.measure_encoders` (``--encoder``), the one path shared with
``irepa encoders report``, ``irepa analyze cls-mixing`` and the demo. Token and mask files are read by
:func:`load_token_sources` and :func:`load_masks`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from irepa.analysis.measure import REPORT_CSV, REPORT_JSON
from irepa.errors import IrepaError

# ----------------------------------------------------------------------------------------------------------------------
# Parser


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``metrics`` subcommands (``spatial``)."""
    sub = parser.add_subparsers(dest="metrics_command", metavar="SUBCOMMAND", required=True)
    spatial = sub.add_parser(
        "spatial",
        help="LDS, CDS, SRSS, RMSC of patch tokens from feature files",
        description=(
            "Spatial-structure metrics of patch tokens (iREPA paper, Sec. 3): LDS (local vs distant similarity), "
            "CDS (correlation decay slope), SRSS (semantic-region self-similarity, needs masks), RMSC (RMS spatial "
            "contrast), plus lds_paper (LDS with the paper's radii H/2). Prints the mean of each metric per token "
            "source; --out writes per-image values. See docs/metrics.md."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    spatial.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        type=Path,
        help="token files (.safetensors, .pt, .npy, .npz) holding a tensor (B, T, D) or a dict of them; each "
        "3-D float tensor is one token source (or use --encoder with --images)",
    )
    spatial.add_argument(
        "--masks",
        type=Path,
        metavar="FILE",
        help="foreground masks for SRSS: bool/0-1 patch masks (B, T) or (B, h, w) on the token grid, or pixel "
        "masks (B, H, W) that are max-pooled to the grid (a patch is foreground if any pixel is); with --encoder, "
        "a folder of mask images with the same keys as --images (DIR/<class>/<name>.png, > 0 = foreground)",
    )
    spatial.add_argument(
        "--grid", metavar="HxW", help="token grid, e.g. 16x16 or 12x20 (default: square, inferred from T)"
    )
    spatial.add_argument(
        "--prefix-tokens",
        type=int,
        default=0,
        metavar="N",
        help="leading non-grid tokens to drop from every image (CLS, registers)",
    )
    spatial.add_argument(
        "--metrics",
        metavar="LIST",
        help="comma-separated metrics among lds, lds_paper, cds, srss, rmsc "
        "(default: lds,cds,rmsc and srss when --masks is given)",
    )
    spatial.add_argument(
        "--near", type=int, default=1, help="LDS/SRSS local radius: pairs at Manhattan distance 1..near (code: 1)"
    )
    spatial.add_argument(
        "--far", type=int, default=6, help="LDS/SRSS distant radius: pairs at distance >= far (code: 6)"
    )
    spatial.add_argument("--dmax", type=int, default=8, help="CDS: fit the correlogram at distances 1..dmax (code: 8)")
    spatial.add_argument(
        "--min-fg",
        type=int,
        metavar="N",
        help="SRSS filter: keep images with at least N foreground patches (default: a quarter of T, 64 of 256)",
    )
    spatial.add_argument(
        "--min-bg",
        type=int,
        metavar="N",
        help="SRSS filter: keep images with at least N background patches (default: a quarter of T)",
    )
    spatial.add_argument(
        "--no-mask-filter",
        action="store_true",
        help="compute SRSS on every image with a valid anchor instead of the paper's filtered subset",
    )
    spatial.add_argument(
        "--chunk-size", type=int, metavar="N", help="images per similarity-matrix chunk (default: ~128 MiB per chunk)"
    )
    spatial.add_argument("--device", default="cpu", help="torch device for the computation (cpu, cuda, cuda:1, ...)")
    spatial.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help=f"write {REPORT_JSON} (settings, means, per-image values) and {REPORT_CSV} (per-image rows) here",
    )
    _add_encoder_mode_arguments(spatial)
    spatial.set_defaults(handler=_run_spatial)


def _add_encoder_mode_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``--encoder NAME --images DIR`` mode (tokens computed on the fly)."""
    from irepa.cli.encoders import add_encoder_arguments

    add_encoder_arguments(parser, required=False, multiple=True, device=False)
    group = parser.add_argument_group("images (with --encoder)")
    group.add_argument("--images", type=Path, metavar="DIR", help="image folder to encode (recursively)")
    group.add_argument("--batch-size", type=int, default=32, help="images per encoder forward pass")
    group.add_argument(
        "--crop",
        choices=("adm", "resize", "none"),
        default="adm",
        help="how images (and their masks) of another size reach --resolution: ADM centre crop, resize, or refuse",
    )
    group.add_argument(
        "--on-error",
        choices=("skip", "fail"),
        default="skip",
        help="unreadable images: skip and count them, or stop",
    )


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen ``metrics`` subcommand."""
    return int(args.handler(args))


# ----------------------------------------------------------------------------------------------------------------------
# File mode


def load_token_sources(paths: Sequence[Path]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Read token files into ``{name: tokens}``.

    A file holding one tensor is named by its stem; each 3-D floating tensor of a dict file is a source named by
    its key (``stem/key`` when several files are given). Other entries of dict files (labels, CLS tokens) are
    skipped and reported in the returned notes.

    Raises:
        IrepaError: Unreadable or empty files, a single tensor that is not (B, T, D) float, a dict without any
            token tensor, duplicate names.
    """
    from irepa.utils.io import load_tensor_file

    sources: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    for path in paths:
        loaded = load_tensor_file(path)
        if isinstance(loaded, torch.Tensor):
            if loaded.ndim != 3 or not loaded.is_floating_point():
                raise IrepaError(
                    f"{str(path)!r} holds a {loaded.dtype} tensor of shape {tuple(loaded.shape)}; expected float "
                    "tokens (B, T, D)"
                )
            entries = {path.stem: loaded}
        else:
            entries = {}
            for key, value in loaded.items():
                if value.ndim == 3 and value.is_floating_point():
                    entries[key if len(paths) == 1 else f"{path.stem}/{key}"] = value
                else:
                    notes.append(f"{path.name}: skipped {key!r} ({value.dtype}, shape {tuple(value.shape)})")
            if not entries:
                raise IrepaError(f"{str(path)!r} holds no float tensor of shape (B, T, D)")
        for name, tokens in entries.items():
            if name in sources:
                raise IrepaError(f"two token sources are named {name!r}; rename one of the files")
            sources[name] = tokens
    return sources, notes


def load_masks(path: Path) -> torch.Tensor:
    """Read a mask file: one tensor, or a dict with a single tensor (or a ``masks`` entry).

    Raises:
        IrepaError: Unreadable files, or dicts with several candidate tensors.
    """
    from irepa.utils.io import load_tensor_file

    loaded = load_tensor_file(path)
    if isinstance(loaded, torch.Tensor):
        return loaded
    if "masks" in loaded:
        return loaded["masks"]
    if len(loaded) == 1:
        return next(iter(loaded.values()))
    raise IrepaError(
        f"mask file {str(path)!r} holds several tensors ({', '.join(loaded)}); store one or name it 'masks'"
    )


# ----------------------------------------------------------------------------------------------------------------------
# The command


def spatial_options(args: argparse.Namespace, grid: tuple[int, int] | None = None):
    """The :class:`~irepa.analysis.measure.SpatialOptions` of the metric arguments."""
    from irepa.analysis.measure import SpatialOptions

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    if args.metrics is not None and not metrics:
        raise IrepaError("--metrics is empty; list metrics such as lds,cds,srss,rmsc")
    if args.prefix_tokens < 0:
        raise IrepaError(f"--prefix-tokens must be >= 0, got {args.prefix_tokens}")
    return SpatialOptions(
        metrics=tuple(metrics) if metrics else None,
        grid=grid,
        prefix_tokens=args.prefix_tokens,
        near=args.near,
        far=args.far,
        dmax=args.dmax,
        mask_filter=not args.no_mask_filter,
        min_fg=args.min_fg,
        min_bg=args.min_bg,
        chunk_size=args.chunk_size,
    )


def _run_spatial(args: argparse.Namespace) -> int:
    from irepa.align.tokens import parse_grid
    from irepa.analysis.measure import ImageFolder, measure_encoders, measure_tokens, write_report

    grid = parse_grid(args.grid) if args.grid else None
    options = spatial_options(args, grid)
    if args.encoder:
        from irepa.cli.encoders import load_encoder_from_args

        if args.files:
            raise IrepaError("give either token FILEs or --encoder with --images, not both")
        if args.images is None:
            raise IrepaError("--encoder needs --images DIR (the images to encode)")
        if args.prefix_tokens:
            raise IrepaError("--prefix-tokens applies to token files; encoders already drop their prefix tokens")
        names = list(dict.fromkeys(args.encoder))
        if args.weights is not None and len(names) > 1:
            raise IrepaError("--weights applies to one encoder; give a single --encoder with it")
        if args.masks is not None and not args.masks.is_dir():
            raise IrepaError(f"--masks {str(args.masks)!r} must be a folder of mask images when --encoder is used")
        folder = ImageFolder(args.images, args.masks, args.resolution, args.crop, args.on_error)
        encoders = {name: load_encoder_from_args(args, name) for name in names}
        measured = measure_encoders(encoders, folder, options=options, batch_size=args.batch_size, device=args.device)
        report, notes = measured.raw, measured.notes
    else:
        if args.images is not None:
            raise IrepaError("--images needs --encoder NAME (the encoder that computes the tokens)")
        if not args.files:
            raise IrepaError("give token FILEs, or --encoder NAME --images DIR to compute tokens")
        if args.masks is not None and args.masks.is_dir():
            raise IrepaError(f"--masks {str(args.masks)!r} is a folder; mask folders need --encoder and --images")
        sources, notes = load_token_sources(args.files)
        masks = load_masks(args.masks) if args.masks else None
        inputs = {"files": [str(p) for p in args.files], "masks": str(args.masks) if args.masks else None}
        report = measure_tokens(sources, masks, options, device=args.device, inputs=inputs)
    for note in notes:
        print(f"note: {note}")
    print(report.table())
    if report.srss_kept:
        kept = ", ".join(f"{name}: {n}/{report.results[name].num_images}" for name, n in report.srss_kept.items())
        print(f"SRSS mask filter kept {kept} images")
    if args.out is not None:
        written = write_report(report, args.out)
        print("wrote " + ", ".join(str(p) for p in written))
    return 0
