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
