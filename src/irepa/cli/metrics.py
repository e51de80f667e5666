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

The work is split so that other input modes reuse it: :func:`spatial_report` takes ``{name: tokens}`` and optional
masks and returns a :class:`SpatialReport` (table, JSON, CSV); :func:`write_report` writes it. File loading lives in
:func:`load_token_sources` and :func:`load_masks`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from irepa.errors import IrepaError
from irepa.utils.device import resolve_device

REPORT_JSON = "spatial_metrics.json"
REPORT_CSV = "spatial_metrics.csv"


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
# The report (reused by every input mode)


@dataclasses.dataclass
class SpatialReport:
    """Spatial metrics of several token sources, ready to print or write.

    Attributes:
        results: Source name → :class:`~irepa.metrics.spatial.SpatialMetricsResult`.
        metrics: Metric names, in column order.
        settings: Options shared by all sources (radii, prefix tokens, mask filter).
        inputs: Where the tokens and masks came from (paths, encoder ids, ...), recorded in the JSON.
        srss_kept: Source name → number of images kept by the SRSS mask filter (when masks were given).
    """

    results: dict[str, Any]
    metrics: list[str]
    settings: dict[str, Any]
    inputs: dict[str, Any]
    srss_kept: dict[str, int]

    def table(self) -> str:
        """A fixed-width table: one row per source with the number of images, the grid and each metric's mean."""
        header = ["source", "images", "grid", *self.metrics]
        rows = []
        for name, result in self.results.items():
            row = [name, str(result.num_images), f"{result.grid[0]}x{result.grid[1]}"]
            for metric in self.metrics:
                mean = result.means[metric]
                cell = "nan" if math.isnan(mean) else f"{mean:.4f}"
                if result.counts[metric] != result.num_images:
                    cell += f" (n={result.counts[metric]})"
                row.append(cell)
            rows.append(row)
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = [
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in [header, *rows]
        ]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict: inputs, settings, and per source the means, counts and per-image values."""
        return {
            "inputs": self.inputs,
            "metrics": self.metrics,
            "settings": self.settings,
            "sources": {
                name: {**result.to_dict(), **({"srss_kept": self.srss_kept[name]} if name in self.srss_kept else {})}
                for name, result in self.results.items()
            },
        }

    def to_csv(self) -> str:
        """CSV text: ``source,index,<metric>...`` with one row per image and source (``nan`` where undefined)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["source", "index", *self.metrics])
        for name, result in self.results.items():
            columns = [result.values[m].tolist() for m in self.metrics]
            for index in range(result.num_images):
                writer.writerow([name, index, *(_csv_float(col[index]) for col in columns)])
        return buffer.getvalue()


def _csv_float(value: float) -> str:
    return "nan" if math.isnan(value) else repr(float(value))


def spatial_report(
    sources: Mapping[str, torch.Tensor],
    masks: torch.Tensor | None = None,
    *,
    metrics: Sequence[str] | None = None,
    grid: Sequence[int] | None = None,
    prefix_tokens: int = 0,
    near: int = 1,
    far: int = 6,
    dmax: int = 8,
    mask_filter: bool = True,
    min_fg: int | None = None,
    min_bg: int | None = None,
    chunk_size: int | None = None,
    device: str | torch.device = "cpu",
    inputs: Mapping[str, Any] | None = None,
) -> SpatialReport:
    """Compute the spatial metrics of every token source.

    Args:
        sources: Name → tokens ``(B, P + T, D)``.
        masks: Foreground masks shared by all sources (same images, same order): patch masks ``(B, T)`` or
            ``(B, h, w)`` on a source's grid, or pixel masks ``(B, H, W)`` max-pooled to each source's grid.
        metrics: Metric names; None = ``lds, cds, rmsc`` plus ``srss`` with masks.
        grid: Token grid ``(H, W)`` (default: square).
        prefix_tokens: Leading non-grid tokens to drop.
        near: LDS/SRSS local radius.
        far: LDS/SRSS distant radius.
        dmax: CDS correlogram length.
        mask_filter: Apply the paper's SRSS image filter (``srss_mask_filter``): images failing it get SRSS = NaN.
        min_fg: Filter threshold on foreground patches (default ``ceil(T/4)``).
        min_bg: Filter threshold on background patches (default ``ceil(T/4)``).
        chunk_size: Images per chunk.
        device: Where to compute.
        inputs: Provenance recorded in the JSON (file paths, encoder ids, ...).

    Raises:
        IrepaError: Any invalid input (see :func:`irepa.metrics.spatial.compute`).
    """
    from irepa.align.tokens import drop_prefix, resolve_grid
    from irepa.metrics import spatial

    if not sources:
        raise IrepaError("no token sources to measure")
    device = resolve_device(device)
    prepared: dict[str, torch.Tensor] = {}
    source_masks: dict[str, torch.Tensor] = {}
    kept: dict[str, int] = {}
    for name, tokens in sources.items():
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3:
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise IrepaError(f"token source {name!r} must be (B, T, D), got {shape}")
        prepared[name] = tokens.to(device)
        if masks is None:
            continue
        if masks.shape[0] != tokens.shape[0]:
            raise IrepaError(f"masks hold {masks.shape[0]} images but token source {name!r} holds {tokens.shape[0]}")
        num_tokens = drop_prefix(tokens, prefix_tokens, what=f"tokens {name!r}").shape[1]
        hw = resolve_grid(num_tokens, grid, what=f"tokens {name!r}")
        patch = _patch_masks(masks, hw, name)
        if mask_filter:
            keep = spatial.srss_mask_filter(patch, min_fg=min_fg, min_bg=min_bg)
            patch = patch & keep[:, None]  # an all-background mask makes SRSS NaN: the image is excluded
            kept[name] = int(keep.sum())
        source_masks[name] = patch.to(device)
    results = spatial.compute(
        prepared,
        masks=source_masks or None,
        metrics=metrics,
        grid=grid,
        near=near,
        far=far,
        dmax=dmax,
        prefix_tokens=prefix_tokens,
        chunk_size=chunk_size,
    )
    names = list(next(iter(results.values())).values)
    settings: dict[str, Any] = {"near": near, "far": far, "dmax": dmax, "prefix_tokens": prefix_tokens}
    if masks is not None:
        settings["mask_filter"] = (
            {
                "min_fg": min_fg if min_fg is not None else "ceil(T/4)",
                "min_bg": min_bg if min_bg is not None else "ceil(T/4)",
            }
            if mask_filter
            else None
        )
    return SpatialReport(results, names, settings, dict(inputs or {}), kept)


def _patch_masks(masks: torch.Tensor, grid: tuple[int, int], name: str) -> torch.Tensor:
    """Masks as (B, T) bool on ``grid``: patch masks pass through, larger pixel masks are max-pooled."""
    from irepa.metrics.spatial import masks_to_patches

    height, width = grid
    if masks.ndim == 2:
        if masks.shape[1] != height * width:
            raise IrepaError(
                f"masks {tuple(masks.shape)} have {masks.shape[1]} patches but token source {name!r} has a "
                f"{height}x{width} grid"
            )
        values = masks
    elif masks.ndim == 3:
        values = masks.reshape(masks.shape[0], -1) if tuple(masks.shape[1:]) == (height, width) else None
    else:
        raise IrepaError(f"masks must be (B, T), (B, h, w) or pixel masks (B, H, W), got {tuple(masks.shape)}")
    if values is None:  # pixel masks
        if masks.is_floating_point() and not torch.isfinite(masks).all():
            raise IrepaError("masks contain NaN or Inf")
        return masks_to_patches(masks, grid)
    if values.dtype != torch.bool:
        if values.is_complex() or not bool(((values == 0) | (values == 1)).all()):
            raise IrepaError("patch masks must be boolean or 0/1 (True/1 = foreground)")
        values = values != 0
    return values


def write_report(report: SpatialReport, out_dir: str | Path) -> list[Path]:
    """Write ``spatial_metrics.json`` and ``spatial_metrics.csv`` into ``out_dir`` (atomically, each)."""
    from irepa.utils.io import write_json, write_text

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise IrepaError(f"--out {str(out_dir)!r} exists and is not a directory")
    payload, table = report.to_json(), report.to_csv()  # everything is rendered before anything is written
    json_path, csv_path = out_dir / REPORT_JSON, out_dir / REPORT_CSV
    write_json(json_path, payload)
    write_text(csv_path, table)
    return [json_path, csv_path]


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
# Encoder mode


def encoder_token_sources(
    args: argparse.Namespace,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, dict[str, Any], list[str]]:
    """Encode ``args.images`` with every ``--encoder`` and read the matching masks.

    Returns:
        ``(sources, pixel masks (B, R, R) bool or None, inputs (provenance for the JSON), notes)``; the sources
        are named by encoder id and hold float32 tokens ``(B, T, D)`` in image-key order.

    Raises:
        IrepaError: Unknown encoders, missing weights, unreadable images (with ``--on-error fail``), no usable
            image, a missing or unreadable mask, ``--weights`` with several encoders.
    """
    from irepa.cli.encoders import load_encoder_from_args
    from irepa.utils.images import ReadStats, iter_image_batches, list_images

    names = list(dict.fromkeys(args.encoder))
    if args.weights is not None and len(names) > 1:
        raise IrepaError("--weights applies to one encoder; give a single --encoder with it")
    if args.batch_size < 1:
        raise IrepaError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.masks is not None and not args.masks.is_dir():
        raise IrepaError(f"--masks {str(args.masks)!r} must be a folder of mask images when --encoder is used")
    files = list_images(args.images)
    encoders = {name: load_encoder_from_args(args, name) for name in names}
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    stats = ReadStats()
    keys: list[str] = []
    resolution = args.resolution
    for images, batch_keys in iter_image_batches(
        files, args.batch_size, root=args.images, size=resolution, crop=args.crop, on_error=args.on_error, stats=stats
    ):
        for name, encoder in encoders.items():
            chunks[name].append(encoder.encode(images).patch_tokens.cpu())
        keys.extend(batch_keys)
    if not keys:
        raise IrepaError(f"no usable images in {str(args.images)!r} ({stats.skipped} of {len(files)} unreadable)")
    sources = {name: torch.cat(parts) for name, parts in chunks.items()}
    masks = None
    if args.masks is not None:
        masks = torch.stack([_mask_for(args.masks, key, resolution, args.crop) for key in keys])
    notes = [f"images: {stats.summary()}"]
    notes += [
        f"{name} has random weights (--random-init): its metrics are meaningless"
        for name, encoder in encoders.items()
        if encoder.spec.weights is not None and not encoder.weights_info.get("pretrained", False)
    ]
    inputs: dict[str, Any] = {
        "images": str(args.images),
        "masks": str(args.masks) if args.masks is not None else None,
        "resolution": resolution,
        "crop": args.crop,
        "num_images": len(keys),
        "skipped": stats.skipped_files,
        "encoders": {name: encoder.describe() for name, encoder in encoders.items()},
    }
    return sources, masks, inputs, notes


def _mask_for(root: Path, key: str, size: int, crop: str) -> torch.Tensor:
    """The mask of image ``key`` as (size, size) bool, cropped or resized exactly like its image.

    Masks are binarized at > 0 first (0/1 and 0/255 masks both work). When the mask must be resized, the binary
    mask goes through the image's own crop/resize (bicubic) and is thresholded at one half.
    """
    import numpy as np
    from PIL import Image

    from irepa.utils.images import IMAGE_EXTENSIONS, center_crop_adm

    candidates = [root / f"{key}{ext}" for ext in IMAGE_EXTENSIONS]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise IrepaError(f"no mask for image {key!r} in {str(root)!r} (expected {key}.png or another image type)")
    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("L") if im.mode not in ("L", "1", "I", "I;16", "F") else im)
    except Exception as exc:
        raise IrepaError(f"cannot read mask {str(path)!r}: {exc}") from exc
    binary = array > 0
    if binary.shape == (size, size):
        return torch.from_numpy(binary.copy())
    if crop == "none":
        raise IrepaError(f"mask {str(path)!r} is {binary.shape[1]}x{binary.shape[0]}, expected {size}x{size}")
    image = Image.fromarray(binary.astype(np.uint8) * 255)
    image = center_crop_adm(image, size) if crop == "adm" else image.resize((size, size), resample=Image.BICUBIC)
    return torch.from_numpy(np.asarray(image) > 127)


def _run_spatial(args: argparse.Namespace) -> int:
    from irepa.align.tokens import parse_grid

    grid = parse_grid(args.grid) if args.grid else None
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    if args.metrics is not None and not metrics:
        raise IrepaError("--metrics is empty; list metrics such as lds,cds,srss,rmsc")
    if args.prefix_tokens < 0:
        raise IrepaError(f"--prefix-tokens must be >= 0, got {args.prefix_tokens}")
    if args.encoder:
        if args.files:
            raise IrepaError("give either token FILEs or --encoder with --images, not both")
        if args.images is None:
            raise IrepaError("--encoder needs --images DIR (the images to encode)")
        if args.prefix_tokens:
            raise IrepaError("--prefix-tokens applies to token files; encoders already drop their prefix tokens")
        sources, masks, inputs, notes = encoder_token_sources(args)
        grid = grid or next(iter(inputs["encoders"].values()))["grid"]
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
    report = spatial_report(
        sources,
        masks,
        metrics=metrics,
        grid=grid,
        prefix_tokens=args.prefix_tokens,
        near=args.near,
        far=args.far,
        dmax=args.dmax,
        mask_filter=not args.no_mask_filter,
        min_fg=args.min_fg,
        min_bg=args.min_bg,
        chunk_size=args.chunk_size,
        device=args.device,
        inputs=inputs,
    )
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
