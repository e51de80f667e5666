"""``irepa train``: train a diffusion transformer with REPA / iREPA, from one process to many nodes.

Examples::

    irepa train --preset sit-b2-irepa                                   # 1 process (GPU if available)
    irepa train --preset sit-xl2-irepa --dry-run --processes 8          # print the resolved config and batch split
    torchrun --nproc_per_node 8 -m irepa train --preset sit-xl2-irepa   # 8 GPUs
    irepa train --config my.yaml optim.lr=2e-4 train.max_steps=100000   # file + overrides
    irepa train --help-config align                                     # every align.* key: type, default, meaning

Config precedence: defaults < preset (``--preset`` or ``preset:`` in the file) < ``--config`` file < ``key=value``.
Re-running the same command resumes from the run directory's newest checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from irepa.errors import IrepaError

if TYPE_CHECKING:
    from irepa.training.config import TrainConfig


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``irepa train`` arguments."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "config precedence: defaults < preset < --config file < key=value overrides\n"
        "config keys: --help-config lists all of them (or of one section: --help-config optim)\n"
        "multi-GPU: torchrun --nproc_per_node N -m irepa train ...   (or: accelerate launch --multi_gpu -m irepa ...)\n"
        "resume: rerun the same command (same --run-dir); see docs/training.md"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted config overrides, e.g. optim.lr=2e-4 align.encoders=[dinov2-vit-b] data.latents=PATH",
    )
    parser.add_argument("--preset", metavar="NAME", help="start from a shipped preset (see --list-presets)")
    parser.add_argument("--config", type=Path, metavar="FILE", help="YAML config file (may name a 'preset:')")
    parser.add_argument(
        "--run-dir",
        type=Path,
        metavar="DIR",
        help="run directory for checkpoints, snapshots and logs (default: runs/<run name>); reusing it resumes",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config, the per-device batch and what would happen (resume/fresh), then exit",
    )
    parser.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="with --dry-run: number of processes to split the global batch over (default: $WORLD_SIZE or 1)",
    )
    parser.add_argument("--list-presets", action="store_true", help="list the shipped presets and exit")
    parser.add_argument(
        "--help-config",
        nargs="?",
        const="",
        metavar="SECTION",
        help="list every config key (type, default, meaning), or those of one section (model, align, optim, ...), "
        "and exit",
    )


def _world_size_from_env() -> int | None:
    value = os.environ.get("WORLD_SIZE")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise IrepaError(f"environment variable WORLD_SIZE={value!r} is not an integer") from exc


def _preset_line(name: str, config: TrainConfig) -> str:
    """One ``--list-presets`` line, from the preset's resolved config (so defaults are shown as they apply)."""
    align = config.align
    if not align.encoders:
        method = "no alignment"
    else:
        projector = f"conv {align.kernel_size}x{align.kernel_size}" if align.projector == "conv" else align.projector
        norm = f"{align.target_norm} (γ {align.gamma})" if align.target_norm == "spatial" else align.target_norm
        method = (
            f"{', '.join(align.encoders)}, {projector} projector, λ {align.weight}, target norm {norm}, "
            f"depth {align.depth}"
        )
    objective = config.objective.name
    return f"{name:<28} {config.model.name:<10} {objective + ', ' if objective != 'denoising' else ''}{method}; " + (
        config.train.precision
    )


def _config_help(section: str) -> str:
    """The ``--help-config`` text: per section its keys with type, default and docstring."""
    import dataclasses
    import textwrap

    import yaml

    from irepa.config import describe
    from irepa.training.config import TrainConfig
    from irepa.training.objectives import OBJECTIVES

    fields = []
    for field in describe(TrainConfig):
        if field.key != "objective.settings":
            fields.append(field)
            continue
        # The objective's settings are flat keys of the section, one dataclass per registered objective.
        for name, objective in OBJECTIVES.items():
            fields += [
                dataclasses.replace(f, doc=f"(objective {name}) {f.doc}".strip(), section_doc=field.section_doc)
                for f in describe(objective.Settings, "objective.")
            ]
    sections = list(dict.fromkeys(f.key.split(".")[0] for f in fields if "." in f.key))
    if section and section not in sections:
        raise IrepaError(f"--help-config: unknown section {section!r}; sections: {', '.join(sections)}")
    lines, current = [], None
    for field in fields:
        where = field.key.split(".")[0] if "." in field.key else ""
        if section and where != section:
            continue
        if where != current:
            current = where
            lines += ["" if lines else None, f"{where or 'top level'}: {field.section_doc}"]
        default = yaml.safe_dump(field.default, default_flow_style=True, width=10**6).removesuffix("...\n").strip()
        lines.append(f"  {field.key} ({field.type}, default {default})")
        lines += textwrap.wrap(field.doc, 116, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(line for line in lines if line is not None)


def run(args: argparse.Namespace) -> int:
    """Resolve the config, then dry-run or train; returns the exit status."""
    from irepa.training.config import resolve_config
    from irepa.training.presets import list_presets

    if args.help_config is not None:
        print(_config_help(args.help_config))
        return 0
    if args.list_presets:
        for name in list_presets():
            print(_preset_line(name, resolve_config(preset=name)))
        return 0
    config = resolve_config(preset=args.preset, config_file=args.config, overrides=args.overrides)
    run_dir = args.run_dir or Path("runs") / (config.name or "default")
    env_world = _world_size_from_env()
    if args.dry_run:
        from irepa.cli.encoders import environment_locations
        from irepa.training.dryrun import dry_run_report

        world = args.processes or env_world or 1
        print(dry_run_report(config, run_dir, world_size=world, weight_locations=environment_locations()))
        return 0
    if args.processes is not None:
        raise IrepaError("--processes only applies to --dry-run; the launcher (torchrun) sets the process count")

    from irepa.cli.encoders import environment_locations
    from irepa.training.trainer import Trainer

    trainer = Trainer(config, run_dir, expected_world_size=env_world, weight_locations=environment_locations())
    result = trainer.fit()
    if trainer.is_main:
        if result.status == "interrupted":
            print(
                f"interrupted by {result.signal} at step {result.step}; checkpoint {result.checkpoint}. "
                "Rerun the same command to resume.",
                file=sys.stderr,
            )
        else:
            print(f"finished {result.step} steps; EMA snapshot: {result.snapshot}")
    return 0
