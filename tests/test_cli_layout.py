"""Layout of the command line: one module per command under fewstep/cli with ``add_parser`` and ``run``, and
every ``--help`` works."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import fewstep.cli
from fewstep.cli import build_parser, main

COMMANDS = ("demo", "tune", "train", "sample", "compare", "eval", "analyze", "bench", "schedule")
NOT_COMMANDS = {"args", "applies", "outputs"}  # shared argument types and helpers; which options act; outputs claimed


def _command_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(fewstep.cli.__path__) if m.name not in NOT_COMMANDS)


def _subparsers() -> dict:
    return next(a for a in build_parser()._actions if a.dest == "command").choices


def test_every_command_module_has_add_parser_and_run():
    assert _command_modules() == sorted(COMMANDS)
    for name in _command_modules():
        mod = importlib.import_module(f"fewstep.cli.{name}")
        assert callable(getattr(mod, "add_parser", None)), f"fewstep.cli.{name} has no add_parser"
        assert callable(getattr(mod, "run", None)), f"fewstep.cli.{name} has no run"
        assert _subparsers()[name].get_default("func") is mod.run, f"{name} does not run fewstep.cli.{name}.run"


def test_parser_lists_the_commands_in_order():
    assert tuple(_subparsers()) == COMMANDS
    assert [m.__name__.rsplit(".", 1)[1] for m in fewstep.cli.COMMANDS] == list(COMMANDS)


@pytest.mark.parametrize("argv", [[]] + [[c] for c in COMMANDS], ids=["fewstep"] + list(COMMANDS))
def test_help_exits_zero(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fewstep" + (f" {argv[0]}" if argv else ""))
    assert "(issue" not in out


def test_python_dash_m_help_exits_zero():
    res = subprocess.run([sys.executable, "-m", "fewstep", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert all(c in res.stdout for c in COMMANDS)


def test_schedule_help_says_which_options_apply_to_which_action(capsys):
    with pytest.raises(SystemExit):
        main(["schedule", "--help"])
    out = capsys.readouterr().out
    for section, option in (("search and learn:", "--solver"), ("search only:", "--grid"), ("learn only:", "--init"),
                            ("export only:", "--format")):
        assert section in out
        assert out.index(section) < out.index(option + " ", out.index(section))
