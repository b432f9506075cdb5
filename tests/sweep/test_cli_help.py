"""Every help text renders, and ``--version`` names the installed version."""

import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from sweep.cli import build_parser, main


def test_the_top_level_and_every_subcommand_help_render(capsys) -> None:
    commands = sorted(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert {"run", "export", "report", "promote", "rerun", "status"} <= set(commands)
    for argv in (["--help"], *([c, "--help"] for c in commands)):
        with pytest.raises(SystemExit) as done:
            main(argv)
        out, err = capsys.readouterr()
        assert done.value.code == 0, (argv, err)
        assert out.startswith("usage: sweep") and not err, argv
        if argv != ["--help"]:
            assert f"sweep {argv[0]}" in out.splitlines()[0]
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "{md,latex,html,csv,json}" in capsys.readouterr().out  # the format registry's choices


def test_version_from_the_installed_command() -> None:
    command = Path(sys.executable).with_name("sweep")
    done = subprocess.run(
        [str(command) if command.exists() else shutil.which("sweep") or "sweep", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"sweep {version('sweep')}"
