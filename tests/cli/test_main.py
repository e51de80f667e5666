import pytest

from irepa.cli.main import COMMANDS, SPIN_COUNT, cpu_thread_policy


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


def test_cpu_thread_policy_defaults_to_a_short_spin_and_respects_the_user():
    env = {}
    cpu_thread_policy(env)
    assert env == {"GOMP_SPINCOUNT": SPIN_COUNT}
    for user in ({"OMP_WAIT_POLICY": "active"}, {"GOMP_SPINCOUNT": "300000"}):
        env = dict(user)
        cpu_thread_policy(env)
        assert env == user


PROBE = """
import os, sys, types
from irepa.cli import main as m
probe = types.ModuleType("probe_env")
probe.configure = lambda parser: None
probe.run = lambda args: print(os.environ.get("GOMP_SPINCOUNT"), "torch" in sys.modules)
sys.modules["probe_env"] = probe
m.COMMANDS["probe-env"] = ("probe_env", "test")
sys.exit(m.main(["probe-env"]))
"""


def test_the_entry_point_sets_the_spin_count_before_torch_loads(tmp_path):
    # What a command module sees when it imports torch: the policy is already in the environment.
    import os
    import subprocess
    import sys
    from pathlib import Path

    import irepa

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["PYTHONPATH"] = str(Path(irepa.__file__).parents[1])
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [SPIN_COUNT, "False"]


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
