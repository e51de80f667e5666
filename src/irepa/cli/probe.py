"""``irepa probe``: linear-probe top-1 (the paper's global-information measure) on extracted feature files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from irepa.errors import IrepaError


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``irepa probe``."""
    parser.description = (
        "Train irepa's linear probe (standardized features, AdamW + cosine, lr x wd grid selected on a stratified "
        "holdout of the training split, retrain, report validation top-1) on files written by "
        "'irepa features extract'. Labels come from the class subfolders recorded in the files."
    )
    parser.add_argument("--train", type=Path, required=True, help="training features file (.safetensors)")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--val", type=Path, default=None, help="validation features file")
    split.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="without --val: hold out this stratified fraction of --train as the validation split",
    )
    parser.add_argument(
        "--features",
        choices=("mean", "cls", "mean+cls"),
        default="mean",
        help="per-image vector: mean-pooled patch tokens (paper, default), CLS token, or both",
    )
    parser.add_argument("--epochs", type=int, default=50, help="passes per training run (default 50)")
    parser.add_argument("--batch-size", type=int, default=1024, help="features per step (default 1024)")
    parser.add_argument(
        "--lr", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3, 1e-2], help="AdamW learning-rate grid"
    )
    parser.add_argument("--wd", type=float, nargs="+", default=[0.0, 1e-3], help="AdamW weight-decay grid")
    parser.add_argument(
        "--holdout-fraction", type=float, default=0.2, help="training share held out for model selection (0.2)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of splits and batch order (default 0)")
    parser.add_argument("--no-standardize", action="store_true", help="skip feature standardization")
    parser.add_argument("--device", default="cpu", help="training device (default cpu)")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")


def _labels(features, name: str):
    if not features.has("labels") or not features.classes:
        raise IrepaError(
            f"{name} features file {str(features.path)!r} has no labels; extract it from a ROOT/CLASS/IMAGE folder"
        )
    return features.tensor("labels").long(), list(features.classes)


def run(args: argparse.Namespace) -> int:
    """Run the probe and print top-1."""
    import torch

    from irepa.encoders.features import read_features
    from irepa.metrics.probe import ProbeProtocol, linear_probe, stratified_split
    from irepa.utils.io import write_json

    protocol = ProbeProtocol(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rates=tuple(args.lr),
        weight_decays=tuple(args.wd),
        holdout_fraction=args.holdout_fraction,
        seed=args.seed,
        standardize=not args.no_standardize,
    )
    train_file = read_features(args.train)
    x_train = train_file.pooled(args.features)
    y_train, classes = _labels(train_file, "training")
    if args.val is not None:
        val_file = read_features(args.val)
        if val_file.metadata.get("encoder") != train_file.metadata.get("encoder"):
            raise IrepaError(
                f"training and validation features come from different encoders "
                f"({train_file.metadata.get('encoder')} vs {val_file.metadata.get('encoder')})"
            )
        x_val = val_file.pooled(args.features)
        y_val_local, val_classes = _labels(val_file, "validation")
        # Labels are per-file indices into each file's sorted class list: map validation classes by name.
        unknown = sorted(set(val_classes) - set(classes))
        if unknown:
            raise IrepaError(f"validation classes missing from the training split: {', '.join(unknown[:5])}")
        remap = torch.tensor([classes.index(c) for c in val_classes])
        y_val = remap[y_val_local]
        split = {"val": str(args.val)}
    else:
        fraction = args.val_fraction if args.val_fraction is not None else 0.2
        if not 0 < fraction < 1:
            raise IrepaError(f"--val-fraction must be in (0, 1), got {fraction}")
        keep, hold = stratified_split(y_train, fraction, seed=args.seed + 1)  # a different split than the holdout
        x_train, x_val, y_val, y_train = x_train[keep], x_train[hold], y_train[hold], y_train[keep]
        split = {"val_fraction": fraction, "val_split_seed": args.seed + 1}
    result = linear_probe(x_train, y_train, x_val, y_val, protocol, device=args.device)
    report = {
        "encoder": train_file.metadata.get("encoder"),
        "features": args.features,
        "train": str(args.train),
        **split,
        "classes": len(classes),
        **result.to_dict(),
    }
    top5 = f", top-5 {100 * result.top5:.2f}%" if result.top5 is not None else ""
    print(
        f"{report['encoder']} ({args.features}): top-1 {100 * result.top1:.2f}%{top5} on {result.num_val} images "
        f"(lr {result.learning_rate:g}, wd {result.weight_decay:g}; train top-1 {100 * result.train_top1:.2f}%)"
    )
    if args.out is not None:
        write_json(args.out, report)
        print(f"wrote {args.out}")
    else:
        print(json.dumps({k: report[k] for k in ("top1", "top5", "learning_rate", "weight_decay")}))
    return 0
