"""The ``diffusion-gym`` console script (agents/command.py): dispatch, usage errors, and its declaration."""

from __future__ import annotations

import pytest
from _scripts import REPO

from agents.command import SUBCOMMANDS, main


def test_console_script_is_declared() -> None:
    text = (REPO / "pyproject.toml").read_text()  # (tomllib is Python 3.11+; the project supports 3.10)
    scripts = text.split("[project.scripts]\n", 1)[1].split("\n\n", 1)[0]
    assert 'diffusion-gym = "agents.command:main"' in scripts.splitlines()


def test_no_subcommand_prints_usage_and_exits_2(capsys) -> None:
    assert main([]) == 2
    assert "usage: diffusion-gym" in capsys.readouterr().err


def test_unknown_subcommand_is_named(capsys) -> None:
    assert main(["trian"]) == 2
    assert "unknown subcommand 'trian'" in capsys.readouterr().err


def test_help_lists_every_subcommand(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SUBCOMMANDS)


def test_bench_subcommand_reaches_the_bench_parser(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    assert "usage: diffusion-gym bench" in capsys.readouterr().out
