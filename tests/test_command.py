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


@pytest.mark.parametrize(
    ("subcommand", "usage"),
    [
        ("run", "usage: diffusion-gym run"),
        ("compare", "usage: diffusion-gym compare"),
        ("evaluate", "usage: diffusion-gym evaluate"),
    ],  # fmt: skip
)
def test_each_subcommand_reaches_its_parser(capsys, subcommand, usage) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--help"])
    assert exit_info.value.code == 0
    assert usage in capsys.readouterr().out


def test_compare_is_run_with_compare_and_a_task_flag_is_checked(monkeypatch, capsys) -> None:
    from agents import run_command

    seen = []
    monkeypatch.setattr(run_command, "main", lambda argv, prog="diffusion-gym run": seen.append((argv, prog)) or 0)
    assert main(["compare", "ddpo,loop", "--seeds", "0,1"]) == 0
    assert seen == [(["--compare", "ddpo,loop", "--seeds", "0,1"], "diffusion-gym compare")]
    monkeypatch.undo()
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--agent", "ddpo", "--task", "lnog"])
    assert exit_info.value.code == 2
    assert "unknown task 'lnog'" in capsys.readouterr().err


def test_a_task_sets_the_run_where_its_flags_are_not_given() -> None:
    from agents.run_command import parse_args

    settings = parse_args(["--agent", "loop", "--task", "multi", "--epochs", "3", "--output-dir", "runs/x"])
    assert (settings.env.prompts, settings.eval_prompts, settings.epochs) == ("shapes-multi", "shapes-multi", 3)
    default = parse_args(["--agent", "ddpo", "--output-dir", "runs/y"])
    assert (default.env.prompts, default.epochs, default.generalisation_prompts) == (
        "shapes-long",
        40,
        "shapes-heldout",
    )
    assert default.command.startswith("diffusion-gym run --agent ddpo")
