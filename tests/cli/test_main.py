import pytest

from irepa.cli.main import COMMANDS


def test_top_level_help_lists_every_command(run_cli):
    res = run_cli("--help")
    assert res.code == 0
    for name in COMMANDS:
        assert name in res.out


def test_unknown_command_suggests(run_cli):
    res = run_cli("trian")
    assert res.code == 2
    assert "did you mean 'train'" in res.err


def test_every_command_has_help(run_cli):
    for name in COMMANDS:
        res = run_cli(name, "--help")
        assert res.code == 0, (name, res)
        assert f"irepa {name}" in res.out


def test_version_via_subprocess(run_cli_subprocess):
    res = run_cli_subprocess("--version")
    assert res.code == 0
    assert res.out.startswith("irepa ")


@pytest.mark.parametrize(
    "args", [["encoders", "list"], ["encoders", "info", "dinov2-vit-b"], ["train", "--preset", "debug", "--dry-run"]]
)
def test_output_piped_into_a_closed_reader_is_not_a_traceback(args):
    """`irepa encoders list | head -1`: the reader leaves early; the command ends quietly with status 0."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": str(src)}
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: the first write raises BrokenPipeError
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "irepa", *args], stdout=write_end, stderr=subprocess.PIPE, text=True, env=env,
            timeout=600,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
