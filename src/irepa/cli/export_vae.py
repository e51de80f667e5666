"""``irepa export-vae RUN_DIR --out DIR``: the tuned VAE of a REPA-E run as a diffusers folder.

Example::

    irepa export-vae runs/repae-xl2 --out vaes/e2e-sdvae
    irepa data encode --store stores/in256 --out stores/in256-e2e --vae vaes/e2e-sdvae
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``irepa export-vae``."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory of an end-to-end (objective repa-e) run")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (config.json + weights)")
    parser.add_argument("--step", type=int, metavar="N", help="checkpoint step to export (default: the newest)")


def run(args: argparse.Namespace) -> int:
    """Export and print where the folder went."""
    from irepa.training.export import export_vae

    result = export_vae(args.run_dir, args.out, step=args.step)
    stats = " with its latent statistics" if result["latent_stats"] is not None else ""
    print(f"wrote the VAE of step {result['step']} ({result['checkpoint']}){stats} to {result['out']}")
    return 0
