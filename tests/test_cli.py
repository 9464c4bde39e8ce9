"""Every entry point's command line, in process: ``--help`` renders and exits 0, and every flag has a help text.

argparse expands ``%`` in help texts when it formats them, so one stray ``%`` breaks ``--help`` (and only
``--help``: parsing works), which no test of parsing catches.
"""

import argparse
import subprocess
from pathlib import Path

import pytest

from .conftest import script_parser

ROOT = Path(__file__).resolve().parents[1]
# Every top-level script and bench with a main(); the shipped pipelines are modules, not entry points.
SCRIPTS = sorted(path.relative_to(ROOT).as_posix() for path in [*ROOT.glob("*.py"), *ROOT.glob("bench/*.py")]
                 if not path.name.startswith("pipeline_"))


def test_every_entry_point_is_covered():
    assert {"train_conditional_ddpm.py", "train_conditional_gan.py", "main_job.py", "bench/bench_train.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_renders_and_every_flag_says_what_it_does(script, monkeypatch, capsys):
    _, parser, code = script_parser(script, monkeypatch)
    assert code == 0
    shown = capsys.readouterr().out
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"{script}: {name} has no help text"
        assert all(option in shown for option in action.option_strings), f"{script}: {name} is missing from --help"


def test_build_outputs_are_ignored_by_git():
    """`pip install .` leaves build/ and an egg-info folder in the checkout; neither may show up as a change."""
    root = Path(__file__).resolve().parents[1]
    ignored = subprocess.run(["git", "check-ignore", "build/lib/x.py", "dist/x.whl", "iclevr_diffusion.egg-info/PKG-INFO"],
                             cwd=root, capture_output=True, text=True)
    assert ignored.stdout.split() == ["build/lib/x.py", "dist/x.whl", "iclevr_diffusion.egg-info/PKG-INFO"]
