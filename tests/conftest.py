import argparse
import importlib.util
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest


def accelerate_launch(script, processes: int = 1) -> list[str]:
    """The command prefix of a test's ``accelerate launch`` of ``script`` on the CPU: ``processes`` processes (over gloo
    when more than one), no mixed precision, no Dynamo backend."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--num_processes", str(processes)]
    return command + (["--multi_gpu"] if processes > 1 else []) + [str(script)]


def load_script(relative: str):
    """A script or bench of the repository (``"bench/bench_train.py"``), imported as a module: entry points do no
    work at import time, so a test can call their functions."""
    path = Path(__file__).resolve().parents[1] / relative
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def script_parser(script: str, monkeypatch):
    """A script's command line as its ``main()`` builds it: ``main()`` runs with ``--help``, which exits once the parser
    is built. Returns the script's module, the parser and that exit code."""
    parsers = []
    parse_known_args = argparse.ArgumentParser.parse_known_args

    def recording(self, *args, **kwargs):
        parsers.append(self)
        return parse_known_args(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", recording)
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    module = load_script(script)
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    monkeypatch.undo()
    assert parsers, f"{script} parsed no command line"
    return module, parsers[0], exit_info.value.code


def run_ok(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a command from the repository root; fail the test with the end of its stderr unless it exits 0."""
    result = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def run_side_by_side(work, count: int = 2, timeout: float = 300) -> list:
    """``work()`` in ``count`` threads released together (two runs or jobs started at once on one cache); returns
    what each returned, and raises the first error any of them raised."""
    start, results, errors = threading.Barrier(count), [], []

    def run():
        start.wait()
        try:
            results.append(work())
        except Exception as error:  # re-raised in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    if errors:
        raise errors[0]
    return results


@pytest.fixture(scope="session")
def rendered_dir(tmp_path_factory) -> Path:
    """A small procedural i-CLEVR dataset (8 scenes, 24 images at 64x64) in the course's layout."""
    from iclevr.render.dataset import plan_random_scenes, render_dataset

    out = tmp_path_factory.mktemp("render") / "iclevr"
    render_dataset(out, plan_random_scenes(8, 0, set()), seed=0, width=64, height=64, spp=4)
    return out


@pytest.fixture(scope="session")
def rendered_scenes(rendered_dir) -> dict:
    return json.loads((rendered_dir / "scenes.json").read_text())


@pytest.fixture(scope="session")
def rendered_views(rendered_dir) -> dict:
    from iclevr.render.look import View

    return {name: View.from_dict(view) for name, view in json.loads((rendered_dir / "views.json").read_text()).items()}
