"""Measure encoders end to end: images (+ masks, labels) → patch tokens → spatial metrics → one typed report.

Every caller that measures an encoder goes through this module: ``irepa metrics spatial`` (token files, or
``--encoder`` with ``--images``), ``irepa encoders report``, ``irepa analyze cls-mixing``, and the demo's teacher
analysis and teacher cards. Two entry points:

* :func:`measure_tokens` — token tensors ``{name: (B, T, D)}`` (+ masks) → :class:`SpatialReport`. SRSS masks go
  through the paper's pipeline: pixel masks are max-pooled to each source's grid
  (:func:`irepa.metrics.spatial.masks_to_patches`) and images failing :func:`~irepa.metrics.spatial.srss_mask_filter`
  (≥ a quarter foreground and a quarter background patches) get SRSS = NaN.
* :func:`measure_encoders` — loaded encoders and images (a uint8 tensor or an :class:`ImageFolder`, with optional
  masks and labels) → :class:`EncoderReport`: the spatial metrics of the raw tokens and of any token variants
  (e.g. spatially normalized at several γ), and optionally the linear probe (:mod:`irepa.metrics.probe`).

Nothing here reads argv or the environment; image and mask folders are read only when given as an
:class:`ImageFolder`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from irepa.errors import IrepaError
from irepa.utils.device import resolve_device

__all__ = [
    "REPORT_CSV",
    "REPORT_JSON",
    "EncoderReport",
    "ImageFolder",
    "ProbeOptions",
    "SpatialOptions",
    "SpatialReport",
    "TokenVariant",
    "measure_encoders",
    "measure_tokens",
    "read_mask",
    "write_report",
]

REPORT_JSON = "spatial_metrics.json"
REPORT_CSV = "spatial_metrics.csv"

#: A token transform measured beside the raw tokens: ``fn(patch tokens (B, T, D), CLS tokens (B, D) or None) →
#: (B, T, D)`` (e.g. spatial normalization, CLS mixing).
TokenVariant = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------------------
# Options and the token-level report


@dataclasses.dataclass(frozen=True)
class SpatialOptions:
    """How the spatial metrics are computed (defaults: the released code's radii and the paper's SRSS filter).

    Attributes:
        metrics: Metric names (``lds``, ``lds_paper``, ``cds``, ``srss``, ``rmsc``); None = ``lds, cds, rmsc`` plus
            ``srss`` when masks are given.
        grid: Token grid ``(H, W)`` (None: square, or the encoder's grid).
        prefix_tokens: Leading non-grid tokens to drop (token files only; encoders drop their own).
        near: LDS/SRSS local radius (pairs at ``1 ≤ d ≤ near``).
        far: LDS/SRSS distant radius (``d ≥ far``).
        dmax: CDS correlogram length.
        mask_filter: Apply the paper's SRSS image filter; images failing it get SRSS = NaN.
        min_fg: Filter threshold on foreground patches (None: ``ceil(T/4)``, 64 of 256).
        min_bg: Filter threshold on background patches (None: ``ceil(T/4)``).
        chunk_size: Images per similarity-matrix chunk (None: about 128 MiB per chunk).
    """

    metrics: tuple[str, ...] | None = None
    grid: tuple[int, int] | None = None
    prefix_tokens: int = 0
    near: int = 1
    far: int = 6
    dmax: int = 8
    mask_filter: bool = True
    min_fg: int | None = None
    min_bg: int | None = None
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        if self.metrics is not None and not self.metrics:
            raise IrepaError("the metric list is empty; list metrics such as lds,cds,srss,rmsc")
        if self.prefix_tokens < 0:
            raise IrepaError(f"prefix tokens must be >= 0, got {self.prefix_tokens}")

    def settings(self, with_masks: bool) -> dict[str, Any]:
        """The JSON record of these options (the mask filter only when masks were given)."""
        out: dict[str, Any] = {"near": self.near, "far": self.far, "dmax": self.dmax}
        out["prefix_tokens"] = self.prefix_tokens
        if with_masks:
            out["mask_filter"] = (
                {
                    "min_fg": self.min_fg if self.min_fg is not None else "ceil(T/4)",
                    "min_bg": self.min_bg if self.min_bg is not None else "ceil(T/4)",
                }
                if self.mask_filter
                else None
            )
        return out


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

    def means(self, source: str) -> dict[str, float]:
        """Metric name → mean over images of one source (NaN where no image has a value)."""
        return dict(self.results[source].means)

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


def measure_tokens(
    sources: Mapping[str, torch.Tensor],
    masks: torch.Tensor | None = None,
    options: SpatialOptions | None = None,
    *,
    device: str | torch.device = "cpu",
    inputs: Mapping[str, Any] | None = None,
) -> SpatialReport:
    """Compute the spatial metrics of every token source.

    Args:
        sources: Name → tokens ``(B, P + T, D)``.
        masks: Foreground masks shared by all sources (same images, same order): patch masks ``(B, T)`` or
            ``(B, h, w)`` on a source's grid, or pixel masks ``(B, H, W)`` max-pooled to each source's grid.
        options: Metric settings (default :class:`SpatialOptions`).
        device: Where to compute.
        inputs: Provenance recorded in the JSON (file paths, encoder ids, ...).

    Raises:
        IrepaError: Any invalid input (see :func:`irepa.metrics.spatial.compute`).
    """
    from irepa.align.tokens import drop_prefix, resolve_grid
    from irepa.metrics import spatial

    options = options or SpatialOptions()
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
        num_tokens = drop_prefix(tokens, options.prefix_tokens, what=f"tokens {name!r}").shape[1]
        hw = resolve_grid(num_tokens, options.grid, what=f"tokens {name!r}")
        patch = _patch_masks(masks, hw, name)
        if options.mask_filter:
            keep = spatial.srss_mask_filter(patch, min_fg=options.min_fg, min_bg=options.min_bg)
            patch = patch & keep[:, None]  # an all-background mask makes SRSS NaN: the image is excluded
            kept[name] = int(keep.sum())
        source_masks[name] = patch.to(device)
    results = spatial.compute(
        prepared,
        masks=source_masks or None,
        metrics=list(options.metrics) if options.metrics is not None else None,
        grid=options.grid,
        near=options.near,
        far=options.far,
        dmax=options.dmax,
        prefix_tokens=options.prefix_tokens,
        chunk_size=options.chunk_size,
    )
    names = list(next(iter(results.values())).values)
    return SpatialReport(results, names, options.settings(masks is not None), dict(inputs or {}), kept)


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
# Images → encoders → report


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """An image folder to measure (read in batches, never all at once).

    Attributes:
        images: Folder of images (recursively; keys are paths relative to it without the extension).
        masks: Folder of mask images with the same keys (``> 0`` = foreground), or None.
        resolution: Side in pixels every image (and mask) is brought to.
        crop: ``adm`` (centre crop), ``resize`` (bicubic) or ``none`` (refuse other sizes).
        on_error: ``skip`` unreadable images (counted) or ``fail``.
        labels: Class labels for the probe: True derives them from the first key component (``ROOT/CLASS/IMAGE``);
            a mapping gives each image key's class (names or integers; names are numbered in sorted order).
    """

    images: Path
    masks: Path | None = None
    resolution: int = 256
    crop: str = "adm"
    on_error: str = "skip"
    labels: bool | Mapping[str, Any] = False


@dataclasses.dataclass(frozen=True)
class ProbeOptions:
    """The linear probe of :func:`measure_encoders` (the paper's global-information measure).

    Attributes:
        protocol: Probe protocol (:class:`irepa.metrics.probe.ProbeProtocol`).
        features: Per-image vector: ``mean`` (mean-pooled patch tokens, the paper's), ``cls`` or ``mean+cls``.
        train: Indices of the probe-training images; with ``val``, an explicit split. None: a stratified split.
        val: Indices of the probe-validation images.
        val_fraction: Share of every class held out for validation when no explicit split is given.
        split_seed: Seed of that stratified split.
    """

    protocol: Any = None
    features: str = "mean"
    train: tuple[int, ...] | None = None
    val: tuple[int, ...] | None = None
    val_fraction: float = 0.25
    split_seed: int = 1

    def __post_init__(self) -> None:
        if self.features not in ("mean", "cls", "mean+cls"):
            raise IrepaError(f"probe features must be mean, cls or mean+cls, got {self.features!r}")
        if (self.train is None) != (self.val is None):
            raise IrepaError("give both probe train and val indices, or neither (stratified split)")
        if not 0 < self.val_fraction < 1:
            raise IrepaError(f"probe val fraction must be in (0, 1), got {self.val_fraction}")


@dataclasses.dataclass
class EncoderReport:
    """What :func:`measure_encoders` measured.

    Attributes:
        spatial: Token variant (``raw`` first, then the requested variants) → :class:`SpatialReport` over the
            encoders (one source per encoder).
        probes: Token variant → encoder → :class:`~irepa.metrics.probe.ProbeResult` (when a probe was requested:
            ``raw`` only, or every variant with ``probe_variants``).
        encoders: Encoder → ``VisionEncoder.describe()``.
        inputs: Provenance (images, masks, resolution, counts, encoders).
        notes: Remarks for the user (read statistics, random weights).
        keys: Image keys in measurement order.
        tokens: Encoder → float32 patch tokens ``(N, T, D)`` (only with ``keep_tokens``).
        cls_tokens: Encoder → CLS tokens ``(N, D)`` or None (only with ``keep_tokens``).
        masks: Pixel masks ``(N, H, W)`` of the measured images, or None (only with ``keep_tokens``).
        labels: Labels ``(N,)`` or None (only with ``keep_tokens``).
        images: The uint8 images ``(N, 3, H, W)`` (only with ``keep_tokens``).
    """

    spatial: dict[str, SpatialReport]
    probes: dict[str, dict[str, Any]]
    encoders: dict[str, dict[str, Any]]
    inputs: dict[str, Any]
    notes: list[str]
    keys: list[str]
    tokens: dict[str, torch.Tensor] | None = None
    cls_tokens: dict[str, torch.Tensor | None] | None = None
    masks: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    images: torch.Tensor | None = None

    @property
    def raw(self) -> SpatialReport:
        """The spatial metrics of the raw tokens."""
        return self.spatial["raw"]

    def to_json(self) -> dict[str, Any]:
        """JSON-safe summary: inputs, per variant the metric means and counts, probe results, notes."""
        return {
            "inputs": self.inputs,
            "notes": list(self.notes),
            "variants": {
                variant: {
                    "metrics": report.metrics,
                    "settings": report.settings,
                    "sources": {
                        name: {
                            **result.to_dict(per_image=False),
                            **({"srss_kept": report.srss_kept[name]} if name in report.srss_kept else {}),
                        }
                        for name, result in report.results.items()
                    },
                }
                for variant, report in self.spatial.items()
            },
            "probes": {
                variant: {name: probe.to_dict() for name, probe in results.items()}
                for variant, results in self.probes.items()
            },
        }


def measure_encoders(
    encoders: Mapping[str, Any],
    images: torch.Tensor | ImageFolder,
    *,
    masks: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    options: SpatialOptions | None = None,
    variants: Mapping[str, TokenVariant] | None = None,
    probe: ProbeOptions | None = None,
    probe_variants: bool = False,
    metric_indices: Sequence[int] | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    keep_tokens: bool = False,
) -> EncoderReport:
    """Encode images with every encoder and measure the tokens (and, optionally, probe them).

    Args:
        encoders: Name → loaded :class:`~irepa.encoders.VisionEncoder` (all for the same image resolution).
        images: uint8 ``(N, 3, H, W)`` images, or an :class:`ImageFolder` (read in batches).
        masks: Pixel masks ``(N, H, W)`` for SRSS (tensor images only; folders carry their own).
        labels: Class labels ``(N,)`` for the probe (tensor images only; folders derive them from class folders).
        options: Spatial-metric settings (``options.grid`` defaults to each encoder's grid).
        variants: Extra token variants to measure beside ``raw``: name → ``fn(tokens (B, T, D), cls (B, D) | None)
            -> (B, T, D)``.
        probe: Train the linear probe on the tokens (needs labels).
        probe_variants: Probe every variant's tokens too (default: the raw tokens only).
        metric_indices: Measure the spatial metrics on these images only (default: all).
        batch_size: Images per encoder forward pass.
        device: Where the metrics are computed (the encoders stay on their own device).
        keep_tokens: Keep the tokens, CLS tokens, images, masks and labels in the report (for figures).

    Returns:
        An :class:`EncoderReport`.

    Raises:
        IrepaError: No encoder, mismatched masks or labels, unreadable images (``on_error="fail"``), no usable
            image, a missing mask, a probe without labels, bad metric settings.
    """
    options = options or SpatialOptions()
    if not encoders:
        raise IrepaError("no encoder to measure")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise IrepaError(f"batch size must be >= 1, got {batch_size}")
    if "raw" in (variants or {}):
        raise IrepaError("'raw' is the name of the untransformed tokens; give the variant another name")
    grids = {name: tuple(encoder.grid) for name, encoder in encoders.items()}
    tokens: dict[str, list[torch.Tensor]] = {name: [] for name in encoders}
    cls_parts: dict[str, list[torch.Tensor | None]] = {name: [] for name in encoders}
    keys: list[str] = []
    notes: list[str] = []
    inputs: dict[str, Any] = {}
    kept_images: list[torch.Tensor] = []
    for batch, batch_keys in _image_batches(images, batch_size, notes, inputs):
        if keep_tokens:
            kept_images.append(batch)
        for name, encoder in encoders.items():
            out = encoder.encode(batch)
            tokens[name].append(out.patch_tokens.cpu())
            cls_parts[name].append(out.cls_token.cpu() if out.cls_token is not None else None)
        keys.extend(batch_keys)
    if isinstance(images, ImageFolder):
        masks = (
            torch.stack([read_mask(images.masks, key, images.resolution, images.crop) for key in keys])
            if images.masks is not None
            else None
        )
        if isinstance(images.labels, Mapping):
            missing = [key for key in keys if key not in images.labels]
            if missing:
                raise IrepaError(f"no label for image {missing[0]!r} ({len(missing)} of {len(keys)} images unlabelled)")
            names = sorted({str(images.labels[key]) for key in keys})
            numbered = all(name.isdigit() for name in names)
            index = {name: int(name) if numbered else i for i, name in enumerate(names)}
            labels = torch.tensor([index[str(images.labels[key])] for key in keys])
            inputs["classes"] = names
        elif images.labels:
            from irepa.utils.images import class_label_map

            classes = class_label_map(keys)
            labels = torch.tensor([classes[key.split("/", 1)[0]] for key in keys])
            inputs["classes"] = list(classes)
    else:
        count = len(keys)
        for what, tensor in (("masks", masks), ("labels", labels)):
            if tensor is not None and tensor.shape[0] != count:
                raise IrepaError(f"{what} hold {tensor.shape[0]} entries but there are {count} images")
    all_tokens = {name: torch.cat(parts) for name, parts in tokens.items()}
    all_cls = {name: None if parts[0] is None else torch.cat(parts) for name, parts in cls_parts.items()}
    notes += [
        f"{name} has random weights (random init): its metrics are meaningless"
        for name, encoder in encoders.items()
        if encoder.spec.weights is not None and not encoder.weights_info.get("pretrained", False)
    ]
    inputs["num_images"] = len(keys)
    inputs["encoders"] = {name: encoder.describe() for name, encoder in encoders.items()}

    subset = None if metric_indices is None else torch.as_tensor(list(metric_indices), dtype=torch.long)
    if subset is not None:
        inputs["metric_images"] = int(subset.numel())
    if probe is not None and labels is None:
        raise IrepaError("the linear probe needs class labels (a ROOT/CLASS/IMAGE folder, or labels=...)")
    spatial_reports: dict[str, SpatialReport] = {}
    probes: dict[str, dict[str, Any]] = {}
    for variant, transform in {"raw": None, **dict(variants or {})}.items():
        results, kept = {}, {}
        report = None
        for name, encoder_tokens in all_tokens.items():
            if transform is not None:
                encoder_tokens = transform(encoder_tokens, all_cls[name])
            chosen = encoder_tokens if subset is None else encoder_tokens[subset]
            chosen_masks = None if masks is None else (masks if subset is None else masks[subset])
            source_options = dataclasses.replace(options, grid=options.grid or grids[name])
            report = measure_tokens({name: chosen}, chosen_masks, source_options, device=device, inputs=inputs)
            results.update(report.results)
            kept.update(report.srss_kept)
            if probe is not None and (variant == "raw" or probe_variants):
                assert labels is not None
                result = _probe(encoder_tokens, all_cls[name], labels, probe, name, device)
                probes.setdefault(variant, {})[name] = result
        assert report is not None
        spatial_reports[variant] = SpatialReport(results, report.metrics, report.settings, inputs, kept)
    return EncoderReport(
        spatial=spatial_reports,
        probes=probes,
        encoders=inputs["encoders"],
        inputs=inputs,
        notes=notes,
        keys=keys,
        tokens=all_tokens if keep_tokens else None,
        cls_tokens=all_cls if keep_tokens else None,
        masks=masks if keep_tokens else None,
        labels=labels if keep_tokens else None,
        images=torch.cat(kept_images) if keep_tokens else None,
    )


def _image_batches(
    images: torch.Tensor | ImageFolder, batch_size: int, notes: list[str], inputs: dict[str, Any]
) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Batches of uint8 images with their keys; records read statistics and provenance."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[0] == 0:
            raise IrepaError(f"images must be a non-empty (N, 3, H, W) tensor, got {tuple(images.shape)}")
        inputs.update({"images": "tensor", "resolution": int(images.shape[-1])})
        width = len(str(images.shape[0] - 1))
        for start in range(0, images.shape[0], batch_size):
            stop = min(images.shape[0], start + batch_size)
            yield images[start:stop], [f"{i:0{width}d}" for i in range(start, stop)]
        return
    from irepa.utils.images import ReadStats, iter_image_batches, list_images

    if images.masks is not None and not Path(images.masks).is_dir():
        raise IrepaError(f"mask folder {str(images.masks)!r} does not exist or is not a folder")
    files = list_images(images.images)
    stats = ReadStats()
    count = 0
    for batch, keys in iter_image_batches(
        files,
        batch_size,
        root=images.images,
        size=images.resolution,
        crop=images.crop,
        on_error=images.on_error,
        stats=stats,
    ):
        count += len(keys)
        yield batch, keys
    if not count:
        raise IrepaError(f"no usable images in {str(images.images)!r} ({stats.skipped} of {len(files)} unreadable)")
    notes.append(f"images: {stats.summary()}")
    inputs.update(
        {
            "images": str(images.images),
            "masks": str(images.masks) if images.masks is not None else None,
            "resolution": images.resolution,
            "crop": images.crop,
            "skipped": stats.skipped_files,
        }
    )


def _probe(
    patch_tokens: torch.Tensor,
    cls_tokens: torch.Tensor | None,
    labels: torch.Tensor,
    options: ProbeOptions,
    name: str,
    device: str | torch.device,
) -> Any:
    from irepa.metrics.probe import ProbeProtocol, linear_probe, stratified_split

    parts = []
    if options.features in ("mean", "mean+cls"):
        parts.append(patch_tokens.mean(1))
    if options.features in ("cls", "mean+cls"):
        if cls_tokens is None:
            raise IrepaError(f"encoder {name!r} has no CLS token; probe the mean-pooled patch tokens instead")
        parts.append(cls_tokens)
    features = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    labels = labels.long()
    if options.train is not None:
        train = torch.as_tensor(options.train, dtype=torch.long)
        val = torch.as_tensor(options.val, dtype=torch.long)
    else:
        train, val = stratified_split(labels, options.val_fraction, seed=options.split_seed)
        if val.numel() == 0:
            raise IrepaError("too few images per class for a probe validation split (need >= 2 per class)")
    protocol = options.protocol or ProbeProtocol()
    return linear_probe(features[train], labels[train], features[val], labels[val], protocol, device=device)


def read_mask(root: Path, key: str, size: int, crop: str) -> torch.Tensor:
    """The mask of image ``key`` as (size, size) bool, cropped or resized exactly like its image.

    Masks are binarized at > 0 first (0/1 and 0/255 masks both work). When the mask must be resized, the binary
    mask goes through the image's own crop/resize (bicubic) and is thresholded at one half.

    Raises:
        IrepaError: No mask file for the key, an unreadable mask, a mask of another size with ``crop="none"``.
    """
    import numpy as np
    from PIL import Image

    from irepa.utils.images import IMAGE_EXTENSIONS, center_crop_adm

    root = Path(root)
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
