"""Options shared by the commands that measure one encoder on an image folder.

``irepa encoders report`` and ``irepa analyze cls-mixing`` take the same images, masks, labels, metric radii and
probe settings; ``read_relation`` reads the ``--relation`` file of the report card.

Kept apart from both command modules so that neither imports the other.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from irepa.errors import IrepaError


def add_measure_arguments(parser: argparse.ArgumentParser) -> None:
    """Image, mask, label, metric and probe options of the commands that measure one encoder on a folder."""
    group = parser.add_argument_group("images and measurement")
    group.add_argument("--images", type=Path, required=True, metavar="DIR", help="image folder (recursively)")
    group.add_argument(
        "--masks", type=Path, metavar="DIR", help="mask images with the same keys (> 0 = foreground), for SRSS"
    )
    group.add_argument(
        "--labels",
        nargs="?",
        const="folders",
        metavar="FILE",
        help="train the linear probe: labels from the class subfolders (DIR/CLASS/IMAGE; give --labels alone) or "
        "from a CSV with key,label columns",
    )
    group.add_argument("--crop", choices=("adm", "resize", "none"), default="adm", help="how images reach --resolution")
    group.add_argument("--on-error", choices=("skip", "fail"), default="skip", help="unreadable images")
    group.add_argument("--batch-size", type=int, default=32, help="images per encoder forward pass")
    group.add_argument("--near", type=int, default=1, help="LDS/SRSS local radius (code: 1)")
    group.add_argument("--far", type=int, default=6, help="LDS/SRSS distant radius (code: 6)")
    group.add_argument("--dmax", type=int, default=8, help="CDS correlogram length (code: 8)")
    group.add_argument("--probe-epochs", type=int, default=50, help="linear-probe epochs per run")
    group.add_argument(
        "--probe-val-fraction", type=float, default=0.25, help="share of each class held out to score the probe"
    )


def measure_inputs(args: argparse.Namespace):
    """``(ImageFolder, SpatialOptions, ProbeOptions | None)`` from :func:`add_measure_arguments` options."""
    from irepa.analysis.measure import ImageFolder, ProbeOptions, SpatialOptions
    from irepa.metrics.probe import ProbeProtocol

    if args.masks is not None and not args.masks.is_dir():
        raise IrepaError(f"--masks {str(args.masks)!r} must be a folder of mask images")
    labels: bool | dict[str, str] = False
    if args.labels == "folders":
        labels = True
    elif args.labels is not None:
        labels = _read_labels(Path(args.labels))
    folder = ImageFolder(args.images, args.masks, args.resolution, args.crop, args.on_error, labels)
    metrics = ("lds", "cds", "srss", "rmsc") if args.masks is not None else ("lds", "cds", "rmsc")
    options = SpatialOptions(metrics=metrics, near=args.near, far=args.far, dmax=args.dmax)
    probe = None
    if labels:
        protocol = ProbeProtocol(epochs=args.probe_epochs)
        probe = ProbeOptions(protocol=protocol, val_fraction=args.probe_val_fraction)
    return folder, options, probe


def _read_labels(path: Path) -> dict[str, str]:
    import csv

    try:
        rows = list(csv.DictReader(path.read_text().splitlines()))
    except OSError as exc:
        raise IrepaError(f"cannot read --labels {str(path)!r}: {exc}") from None
    if not rows or not {"key", "label"} <= set(rows[0]):
        raise IrepaError(f"--labels {str(path)!r} must be a CSV with 'key' and 'label' columns")
    return {row["key"]: row["label"] for row in rows}


def read_relation(path: Path) -> dict:
    """The LDS points of a ``correlations.json`` written by ``irepa analyze correlate``."""
    import json

    try:
        data = json.loads(path.read_text())
        lds = data["measures"]["lds"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise IrepaError(f"--relation {str(path)!r} is not a correlations.json with an 'lds' measure") from None
    return {
        "x": lds["x"],
        "y": lds["y"],
        "names": lds["encoders"],
        "measure": "lds",
        "source": f"your study ({path})",
        "published_r": lds["pearson"]["r"],
        "published_n": lds["n"],
    }
