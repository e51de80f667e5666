"""``irepa encoders list | info | download``: browse the encoder zoo and fetch weights for offline use.

This module also holds the encoder options shared by every command that loads an encoder (``features extract``,
``metrics spatial --encoder``), and the single place where environment variables become weight locations:

==================  ==========================================================================
``IREPA_CACHE``     irepa's cache root (default ``$XDG_CACHE_HOME/irepa`` or ``~/.cache/irepa``)
``HF_HUB_CACHE``    Hugging Face hub cache (else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``)
``TORCH_HOME``      torch hub root; official files in ``$TORCH_HOME/hub/checkpoints``
``HF_HUB_OFFLINE``  ``1`` = offline (like ``--offline``); ``IREPA_OFFLINE=1`` does the same
==================  ==========================================================================
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from irepa.errors import IrepaError

if TYPE_CHECKING:
    from irepa.encoders import WeightLocations

_TRUE = {"1", "true", "yes", "on"}


# ----------------------------------------------------------------------------------------------------------------------
# Shared encoder options


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def default_cache_dir() -> Path:
    """The irepa cache root from ``IREPA_CACHE`` (or the XDG cache folder)."""
    return Path(os.environ["IREPA_CACHE"]) if os.environ.get("IREPA_CACHE") else _cache_home() / "irepa"


def default_hf_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub resolves it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return _cache_home() / "huggingface" / "hub"


def default_torch_hub_dir() -> Path:
    """The torch hub directory (``$TORCH_HOME/hub``)."""
    torch_home = Path(os.environ["TORCH_HOME"]) if os.environ.get("TORCH_HOME") else _cache_home() / "torch"
    return torch_home / "hub"


def env_offline() -> bool:
    """Offline mode requested through the environment."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "IREPA_OFFLINE"))


def add_location_arguments(parser: argparse.ArgumentParser) -> None:
    """``--cache-dir``, ``--hf-cache-dir``, ``--offline``."""
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="irepa cache root; weights live in CACHE/encoders/ID/ (default: $IREPA_CACHE or ~/.cache/irepa)",
    )
    parser.add_argument(
        "--hf-cache-dir",
        type=Path,
        default=None,
        help="Hugging Face hub cache to search (default: $HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub)",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="never download; fail with instructions when weights are missing (also: HF_HUB_OFFLINE=1)",
    )


def environment_locations(
    *, cache_dir: Path | None = None, hf_cache_dir: Path | None = None, offline: bool = False
) -> WeightLocations:
    """The weight locations of this process: explicit values, else the environment variables of the module docstring.

    Every command that loads an encoder (``train``'s teacher included) resolves its locations here, so weights that
    ``irepa encoders download`` put in the cache are found by all of them.
    """
    from irepa.encoders import WeightLocations

    return WeightLocations(
        cache_dir=cache_dir or default_cache_dir(),
        hf_cache_dir=hf_cache_dir or default_hf_cache_dir(),
        torch_hub_dir=default_torch_hub_dir(),
        offline=bool(offline) or env_offline(),
    )


def weight_locations(args: argparse.Namespace) -> dict[str, Any]:
    """Map CLI arguments and environment variables to ``load_encoder`` location keyword arguments."""
    loc = environment_locations(cache_dir=args.cache_dir, hf_cache_dir=args.hf_cache_dir, offline=args.offline)
    return dataclasses.asdict(loc)


def add_encoder_arguments(
    parser: argparse.ArgumentParser,
    *,
    required: bool = True,
    multiple: bool = False,
    device: bool = True,
    name_option: bool = True,
    cls_mixing: bool = True,
) -> None:
    """Options of every command that loads zoo encoders.

    Args:
        parser: The command's parser.
        required: ``--encoder`` must be given.
        multiple: ``--encoder`` may be repeated (one token source per encoder).
        device: Add ``--device`` (commands that already have one share it).
        name_option: Add ``--encoder`` (commands taking the name as a positional argument do not).
        cls_mixing: Add ``--cls-mixing``/``--cls-alpha`` (the CLS-mixing sweep sets them itself).
    """
    group = parser.add_argument_group("encoder")
    if name_option:
        group.add_argument(
            "--encoder",
            required=required,
            metavar="NAME",
            action="append" if multiple else "store",
            help="zoo id (see 'irepa encoders list'), e.g. dinov2-vit-b"
            + ("; repeat to compare encoders" if multiple else ""),
        )
    group.add_argument(
        "--resolution",
        type=int,
        default=256,
        help="image size in px the encoder sees (token grid = resolution/16; default 256)",
    )
    group.add_argument("--weights", type=Path, default=None, help="explicit weights file or folder (skips the caches)")
    group.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) overriding the spec's")
    group.add_argument(
        "--random-init",
        action="store_true",
        help="random weights instead of pretrained ones (smoke tests only: the features are meaningless)",
    )
    group.add_argument(
        "--preprocessing",
        default=None,
        metavar="VARIANT",
        help="preprocessing variant of the encoder (e.g. 'irepa' for SigLIP's iREPA-compatible ImageNet stats)",
    )
    if cls_mixing:
        group.add_argument(
            "--cls-mixing",
            choices=("none", "additive", "convex"),
            default="none",
            help="mix the CLS token into patch tokens: additive p+a*c (paper) or convex (1-a)*p+a*c (official code)",
        )
        group.add_argument("--cls-alpha", type=float, default=0.0, help="CLS mixing weight a (default 0)")
    if device:
        group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    group.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="encoder compute dtype (tokens are returned in float32)",
    )
    add_location_arguments(parser)


def load_encoder_from_args(args: argparse.Namespace, name: str | None = None):
    """Build the encoder described by :func:`add_encoder_arguments` options (``name`` overrides ``--encoder``)."""
    import torch

    from irepa.encoders import load_encoder
    from irepa.utils.device import resolve_device

    return load_encoder(
        name or args.encoder,
        resolution=args.resolution,
        weights=args.weights,
        revision=args.revision,
        pretrained=not args.random_init,
        device=resolve_device(args.device),
        dtype=getattr(torch, args.dtype),
        preprocessing=args.preprocessing,
        cls_mixing=getattr(args, "cls_mixing", "none"),
        cls_alpha=getattr(args, "cls_alpha", 0.0),
        **weight_locations(args),
    )


# ----------------------------------------------------------------------------------------------------------------------
# Subcommands


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``list``, ``info`` and ``download`` subcommands."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = sub.add_parser("list", help="list the zoo: id, family, params, patch, grids at 256/512 px, dim, weights")
    p.add_argument("--study", action="store_true", help="only the 27 encoders of the paper's correlation study")
    p.add_argument("--family", default=None, help="only this family (e.g. DINOv2, SigLIP)")
    p.add_argument("--format", choices=("table", "json", "markdown"), default="table", help="output format")
    p.add_argument("--cached", action="store_true", help="add a column saying whether weights are available locally")
    add_location_arguments(p)

    p = sub.add_parser(
        "info", help="everything about one encoder: preprocessing, weight source, where it is looked for"
    )
    p.add_argument("name", help="zoo id")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_location_arguments(p)

    p = sub.add_parser(
        "download",
        help="download weights into the irepa cache (copy that folder to offline machines)",
        description="Download encoder weights on a connected machine into CACHE/encoders/ID/ (plain files plus a "
        "SOURCE.json with repository, commit and sha256). Copy the cache folder to an offline machine and set "
        "IREPA_CACHE (or pass --cache-dir) there.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="zoo ids to download")
    p.add_argument("--study", action="store_true", help="download all 27 study encoders")
    p.add_argument("--revision", default=None, help="Hub revision overriding the spec's")
    add_location_arguments(p)

    from irepa.cli.measure_args import add_measure_arguments

    p = sub.add_parser(
        "report",
        help="report card of one encoder: metrics with/without spatial norm, figures, position vs FID, γ advice",
        description="Measure one encoder on an image folder and write a report card (report.md, report.json, "
        "metrics.csv and PNGs): the four spatial metrics of the raw tokens and after spatial normalization over a "
        "γ sweep, the correlogram, similarity maps and PCA token maps, the linear probe with --labels, where the "
        "encoder's LDS falls against the paper's LDS-gFID relation (an interval, never one FID) and a γ "
        "recommendation with its reasoning. See docs/analysis.md.",
    )
    p.add_argument("name", metavar="NAME", help="zoo id (see 'irepa encoders list')")
    p.add_argument(
        "--gammas",
        type=float,
        nargs="+",
        default=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
        metavar="G",
        help="γ values of the spatial-normalization sweep (must include 0)",
    )
    p.add_argument(
        "--relation",
        type=Path,
        metavar="FILE",
        help="position the encoder against your own study: correlations.json of 'irepa analyze correlate' "
        "(its LDS points) instead of the encoders quoted in the paper's text",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder of the report card")
    add_measure_arguments(p)
    add_encoder_arguments(p, name_option=False)


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen action."""
    return {"list": _list, "info": _info, "download": _download, "report": _report}[args.action](args)


def _report(args: argparse.Namespace) -> int:
    from irepa.analysis.report_card import encoder_report
    from irepa.cli.measure_args import measure_inputs, read_relation
    from irepa.utils.device import resolve_device

    folder, options, probe = measure_inputs(args)
    relation = read_relation(args.relation) if args.relation is not None else None
    encoder = load_encoder_from_args(args, args.name)
    card = encoder_report(
        args.name,
        encoder,
        folder,
        args.out,
        gammas=args.gammas,
        options=options,
        probe=probe,
        relation=relation,
        batch_size=args.batch_size,
        device=resolve_device(args.device),
    )
    for note in card.report.notes:
        print(f"note: {note}")
    print(card.report.raw.table())
    if card.probe is not None:
        print(f"probe top-1: {100 * card.probe['top1']:.2f} % ({card.probe['num_val']} held-out images)")
    pos = card.position
    if pos.get("interval") is not None:
        print(
            f"LDS {pos['value']:.3f}: {int(100 * pos['confidence'])} % prediction interval {pos['interval'][0]:.1f}"
            f"-{pos['interval'][1]:.1f} gFID against {pos['fit']['n']} points (a range, not a prediction)"
        )
    print(f"recommended γ = {card.gamma['gamma']:g}: {card.gamma['reason']}")
    print(f"wrote {args.out / 'report.md'} and {len(card.files) - 1} more files")
    return 0


def _locations(args: argparse.Namespace) -> WeightLocations:
    loc = environment_locations(cache_dir=args.cache_dir, hf_cache_dir=args.hf_cache_dir)
    return dataclasses.replace(loc, offline=True)


def _rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    from irepa.encoders import ENCODERS, is_cached

    rows = []
    locations = _locations(args) if getattr(args, "cached", False) else None
    families = {spec.family.lower() for _, spec in ENCODERS.items()}
    if args.family and args.family.lower() not in families:
        raise IrepaError(f"unknown family {args.family!r}; families: {', '.join(sorted(families))}")
    for name, spec in ENCODERS.items():
        if args.study and not spec.study:
            continue
        if args.family and spec.family.lower() != args.family.lower():
            continue
        row = spec.summary()
        if locations is not None:
            row["cached"] = is_cached(spec, locations)
        rows.append(row)
        del name
    return rows


def _fmt_grid(pair: list[int]) -> str:
    return f"{pair[0]}x{pair[1]}"


def _list(args: argparse.Namespace) -> int:
    rows = _rows(args)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    header = ["id", "family", "params (M)", "patch", "grid@256", "grid@512", "input@256/512", "dim", "weights"]
    if args.cached:
        header.insert(-1, "cached")
    table = []
    for r in rows:
        cells = [
            r["id"] + (" *" if r["study"] else ""),
            r["family"],
            f"{r['params_m']:.1f}" if r["params_m"] else "-",
            str(r["patch_size"]),
            _fmt_grid(r["grid_256"]),
            _fmt_grid(r["grid_512"]),
            f"{r['input_256'][0]}/{r['input_512'][0]}",
            str(r["embed_dim"]),
            r["weights"] + (" [gated]" if r["gated"] else ""),
        ]
        if args.cached:
            cells.insert(-1, "yes" if r["cached"] else "no")
        table.append(cells)
    if args.format == "markdown":
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for cells in table:
            print("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return 0
    widths = [max(len(h), *(len(c[i]) for c in table)) if table else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for cells in table:
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    print(f"\n{len(table)} encoders (* = one of the paper's 27 study encoders)")
    return 0


def _info(args: argparse.Namespace) -> int:
    from irepa.encoders import ENCODERS
    from irepa.encoders.weights import find_local_weights

    spec = ENCODERS.get(args.name)
    info = spec.summary()
    if spec.weights is not None and spec.weights.asset is None:
        found, looked = find_local_weights(spec, _locations(args))
        info["looked_in"] = looked
        info["found"] = str(found.path) if found else None
        info["homepage"] = spec.weights.homepage
        info["alt_filenames"] = list(spec.weights.alt_filenames)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key == "preprocessing":
            for variant, pre in value.items():
                default = " (default)" if variant == spec.default_preprocessing else ""
                print(
                    f"{'preprocessing':<{width}}  {variant}{default}: mean {pre['mean']} std {pre['std']}, "
                    f"{pre['interpolation']}{' antialias' if pre['antialias'] else ''} — {pre['note']}"
                )
            continue
        if isinstance(value, list) and value and isinstance(value[0], str):
            value = "; ".join(value)
        print(f"{key:<{width}}  {value}")
    return 0


def _download(args: argparse.Namespace) -> int:
    from irepa.encoders import ENCODERS, WeightLocations, download_weights

    names = list(args.names) + ([n for n, s in ENCODERS.items() if s.study] if args.study else [])
    if not names:
        raise IrepaError("name at least one encoder to download (or pass --study)")
    specs = [ENCODERS.get(n) for n in dict.fromkeys(names)]  # unknown ids fail before any download
    loc = weight_locations(args)
    if loc["offline"]:
        raise IrepaError("cannot download in offline mode (unset HF_HUB_OFFLINE / drop --offline)")
    locations = WeightLocations(cache_dir=loc["cache_dir"], hf_cache_dir=loc["hf_cache_dir"], offline=False)
    for spec in specs:
        if spec.weights is None or spec.weights.asset is not None:
            print(f"{spec.id}: nothing to download ({'weight-free' if spec.weights is None else 'shipped with irepa'})")
            continue
        resolved = download_weights(spec, locations=locations, revision=args.revision)
        extra = f", sha256 {resolved.sha256[:16]}…" if resolved.sha256 else ""
        print(f"{spec.id}: {resolved.path} (revision {resolved.revision or 'n/a'}{extra})")
    print(f"cache: {loc['cache_dir']} (copy it to offline machines and set IREPA_CACHE)")
    return 0
