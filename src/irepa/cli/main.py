"""Entry point of the ``irepa`` console script: dispatches to one module per subcommand.

Subcommand modules are imported only when used, so ``irepa --help`` and light commands start fast. Each module in
:data:`COMMANDS` exposes::

    def configure(parser: argparse.ArgumentParser) -> None   # add arguments (and nested subcommands)
    def run(args: argparse.Namespace) -> int                   # do the work, return the exit status

Errors of bad input (:class:`irepa.errors.IrepaError`) are printed as one ``error: ...`` line with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import MutableMapping, Sequence

from irepa import __version__
from irepa.errors import IrepaError

#: name -> (module, one-line help). Order is the order shown by ``irepa --help``.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("irepa.cli.demo", "run the embedded offline demo (REPA vs iREPA at laptop scale)"),
    "train": ("irepa.cli.train", "train a diffusion transformer with REPA / iREPA (single GPU to multi-node)"),
    "sample": ("irepa.cli.sample", "generate samples into an ADM-format .npz with a recipe card"),
    "eval": ("irepa.cli.evaluate", "FID, sFID, IS, precision/recall (ADM protocol); reference statistics"),
    "metrics": ("irepa.cli.metrics", "spatial-structure metrics (LDS, CDS, SRSS, RMSC) of patch tokens"),
    "encoders": ("irepa.cli.encoders", "list, inspect, download and report on the vision encoders of the zoo"),
    "features": ("irepa.cli.features", "extract encoder patch tokens from an image folder"),
    "probe": ("irepa.cli.probe", "linear probing (global information) on extracted features"),
    "analyze": ("irepa.cli.analyze", "the encoder study: correlations with FID, the paper's numbers, CLS mixing"),
    "data": ("irepa.cli.data", "prepare image stores (ADM centre crop) and encode VAE latents"),
    "convert": ("irepa.cli.convert", "convert official REPA / iREPA / REPA-E checkpoints to safetensors"),
    "export-vae": ("irepa.cli.export_vae", "write the tuned VAE of an end-to-end (REPA-E) run as a diffusers folder"),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    parser = argparse.ArgumentParser(
        prog="irepa",
        description="Representation alignment (REPA / iREPA) for diffusion transformers.",
        epilog="commands:\n" + "\n".join(lines) + "\n\nRun 'irepa COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"irepa {__version__}")
    parser.add_argument("command", metavar="COMMAND", nargs="?", help="one of: " + ", ".join(COMMANDS))
    return parser


#: Spin iterations of an idle OpenMP worker before it sleeps (libgomp's own value for an oversubscribed machine).
SPIN_COUNT = "1000"


def cpu_thread_policy(environ: MutableMapping[str, str]) -> None:
    """Let idle OpenMP threads sleep almost at once, unless the user chose a wait policy.

    torch's CPU kernels (and MKL) run on GNU OpenMP, whose idle workers by default spin for ~300,000 iterations
    before sleeping. On a 2-core machine shared with other processes the spinning threads take the cores from the
    one doing the work: the demo's tiny-SiT step ran 10x slower with 8 jobs on 2 cores (0.08 vs 0.83 steps/s),
    while with a short spin the results are bit-identical (the same threads split the same work). It must be set
    before torch is imported (libgomp reads it once), so the entry point sets it, not the library.

    Args:
        environ: The process environment (``os.environ``); ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` set by the
            user are left alone.
    """
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        environ["GOMP_SPINCOUNT"] = SPIN_COUNT


def build_command_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    """Build the argument parser of subcommand ``name`` (used by ``main`` and by the tests)."""
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"irepa {name}", description=help_)
    module.configure(parser)
    return parser, module


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``irepa`` command line; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        _top_parser().parse_args(argv or ["--help"])  # --help / --version exit here
        return 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"irepa: error: unknown command {command!r}{hint} (see 'irepa --help')", file=sys.stderr)
        return 2
    if "torch" not in sys.modules:  # too late once torch (and libgomp) are loaded, e.g. main() called in-process
        cpu_thread_policy(os.environ)
    parser, module = build_command_parser(command)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except IrepaError as exc:
        print(f"irepa {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"irepa {command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`irepa encoders list | head`): not an error of ours. Point stdout at /dev/null so
        # the interpreter's final flush does not raise again.
        _silence_stdout()
        return 0


def _silence_stdout() -> None:
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
