"""Every numeric and output-folder flag of every script is checked as it is parsed: a bad value stops the script
with argparse's one line (exit code 2), never a traceback from inside a run. Table-driven: the table is each
parser's own flags, found by building it."""

import sys

import pytest

from iclevr import argtypes

from .conftest import script_parser
from .test_cli import SCRIPTS as ENTRY_POINTS

SCRIPTS = [*ENTRY_POINTS, "iclevr/data.py", "iclevr/digits.py"]  # and the package's two command lines (python -m)

# A value outside each domain type's range (and one a plain float would accept: nan).
BAD_VALUES = {
    argtypes.positive_int: ["0", "-3", "2.5"],
    argtypes.non_negative_int: ["-1", "x"],
    argtypes.port: ["0", "70000"],
    argtypes.positive_float: ["0", "-1e-3", "nan", "inf"],
    argtypes.non_negative_float: ["-1", "nan"],
    argtypes.finite_float: ["nan", "-inf"],
    argtypes.probability: ["1.5", "-0.1", "nan"],
    argtypes.fraction: ["0", "1", "nan"],
}
OUTPUT_FLAGS = {"--output_dir", "--cache_dir"}


def run_main(module, script, argv, monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, (argv, err)
    assert "Traceback" not in err and "error:" in err, err
    return err


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_numeric_flag_refuses_values_out_of_its_range(script, monkeypatch, capsys):
    module, parser, _ = script_parser(script, monkeypatch)
    checked = 0
    for action in parser._actions:
        if action.type in (int, float):
            pytest.fail(f"{script}: {action.option_strings} takes a bare {action.type.__name__}: give it a domain type (iclevr.argtypes)")
        for bad in BAD_VALUES.get(action.type, []):
            err = run_main(module, script, [action.option_strings[0], bad], monkeypatch, capsys)
            assert f"argument {action.option_strings[0]}" in err and "expected" in err, err
            checked += 1
    numeric = [a for a in parser._actions if a.type in BAD_VALUES]
    assert checked == sum(len(BAD_VALUES[a.type]) for a in numeric)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_output_folder_flag_refuses_a_file_or_a_place_it_cannot_be_made(script, tmp_path, monkeypatch, capsys):
    module, parser, _ = script_parser(script, monkeypatch)
    flags = [a.option_strings[0] for a in parser._actions if a.option_strings and a.option_strings[0] in OUTPUT_FLAGS]
    required = [arg for a in parser._actions if a.required and a.option_strings[0] not in flags
                for arg in (a.option_strings[0], "x")]  # checked after the output folders
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for flag in flags:
        err = run_main(module, script, [*required, flag, str(a_file)], monkeypatch, capsys)
        assert f"{flag} {a_file} is a file, not a folder" in err, err
        err = run_main(module, script, [*required, flag, str(a_file / "below")], monkeypatch, capsys)
        assert f"{flag} {a_file / 'below'} cannot be created: {a_file} is a file" in err, err
        err = run_main(module, script, [*required, flag, "/proc/iclevr-test"], monkeypatch, capsys)
        assert f"{flag} /proc/iclevr-test cannot be created or written" in err, err
    assert sorted(tmp_path.iterdir()) == [a_file]  # the checks leave nothing behind
