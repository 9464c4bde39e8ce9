"""Every entry point, run as a user runs it (a subprocess), ends a mistake with one line on stderr and a non-zero exit:
the last line is the message, and there is no traceback. ``ICLEVR_DEBUG=1`` brings the traceback back."""

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from .conftest import accelerate_launch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--resolution", "16", "--patch_size", "1", "--block_out_channels", "8,16", "--attention_head_dim", "8"]


def _run(command, env=None, timeout=240):
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "ICLEVR_DEBUG": "", **(env or {})})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return result, lines


def _script(name):
    return [sys.executable, str(ROOT / name)]


def _assert_one_line(command, message, env=None):
    result, lines = _run(command, env)
    assert result.returncode != 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert message in lines[-1], lines[-5:]
    return result


def _png_header_claiming(path: Path, width: int, height: int) -> None:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's signature)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.fixture
def course_folder(rendered_dir, tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    labels = dict(list(json.loads((rendered_dir / "train.json").read_text()).items())[:6])
    for name in labels:
        shutil.copy(rendered_dir / name, out / name)
    (out / "train.json").write_text(json.dumps(labels))
    return out


@pytest.fixture
def bomb_folder(course_folder):
    _png_header_claiming(course_folder / "bomb.png", 20000, 20000)
    table = json.loads((course_folder / "train.json").read_text())
    (course_folder / "train.json").write_text(json.dumps({**table, "bomb.png": ["red sphere"]}))
    return course_folder


@pytest.fixture
def cut_metadata_folder(course_folder):
    """An image folder whose metadata.jsonl was cut off in the middle of its last line."""
    lines = [json.dumps({"file_name": name, "labels": labels})
             for name, labels in json.loads((course_folder / "train.json").read_text()).items()]
    (course_folder / "train.json").unlink()
    (course_folder / "metadata.jsonl").write_text("\n".join(lines)[:-20])
    return course_folder


def test_the_trainer_reports_a_decompression_bomb_in_one_line(bomb_folder, tmp_path):
    _assert_one_line([*_script("train_conditional_ddpm.py"), "--train_data_dir", str(bomb_folder), "--output_dir",
                      str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"), *TINY],
                     "over the limit of 16,777,216 pixels")


def test_accelerate_launch_quiet_reports_cut_metadata_in_one_line(cut_metadata_folder, tmp_path):
    """Through ``accelerate launch --quiet`` (what the README says to use), the launcher adds no traceback either."""
    *launcher, script = accelerate_launch(ROOT / "train_conditional_ddpm.py", 1)
    _assert_one_line([*launcher, "--quiet", script, "--train_data_dir", str(cut_metadata_folder),
                      "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"), *TINY],
                     "metadata.jsonl:6: not valid JSON")


def test_the_gan_trainer_and_the_evaluator_trainer_report_bad_data_in_one_line(bomb_folder, tmp_path):
    for script in ("train_conditional_gan.py", "train_evaluator.py"):
        _assert_one_line([*_script(script), "--train_data_dir", str(bomb_folder), "--output_dir", str(tmp_path / script),
                          "--cache_dir", str(tmp_path / "cache")], "over the limit of 16,777,216 pixels")


def test_render_and_evaluation_entry_points_report_bad_input_in_one_line(tmp_path):
    (tmp_path / "exclude.json").write_text(json.dumps({"red sphere": 1}))
    _assert_one_line([*_script("render_iclevr.py"), "--output_dir", str(tmp_path / "r"), "--num_scenes", "1",
                      "--exclude_json", str(tmp_path / "exclude.json")], "must be a JSON list of label lists")
    from iclevr.evaluator import build_evaluator

    build_evaluator().save_pretrained(tmp_path / "evaluator")
    (tmp_path / "images").mkdir()
    _assert_one_line([*_script("evaluate_images.py"), "--evaluator", str(tmp_path / "evaluator"), "--images_dir",
                      str(tmp_path / "images")], "of the 32 images the conditions need are bad")
    (tmp_path / "bad.json").write_text(json.dumps([["red spere"]]))
    _assert_one_line([*_script("evaluate_pipeline.py"), "--pipeline", str(ROOT / "pretrained" / "iclevr-ddpm"), "--evaluator",
                      str(tmp_path / "evaluator"), "--conditions_json", str(tmp_path / "bad.json"), "--output_dir",
                      str(tmp_path / "report")], "Did you mean 'red sphere'")


def test_main_job_and_app_report_bad_paths_in_one_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    _assert_one_line([*_script("main_job.py"), "--output_dir", str(tmp_path / "a_file")], "--output_dir")
    _assert_one_line([*_script("app.py"), "--pipeline", str(tmp_path)], "is not a saved pipeline folder")


def test_debug_brings_the_traceback_back(bomb_folder, tmp_path):
    result, lines = _run([*_script("train_conditional_ddpm.py"), "--train_data_dir", str(bomb_folder), "--output_dir",
                          str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"), *TINY], env={"ICLEVR_DEBUG": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr and "over the limit" in result.stderr


def test_a_bug_keeps_its_traceback():
    """Only the project's own errors are shortened: anything else (here a TypeError) is a bug, and shows its stack."""
    code = "from iclevr.cli import run\ndef main():\n    raise TypeError('a bug')\nrun(main)\n"
    result, lines = _run([sys.executable, "-c", code])
    assert result.returncode == 1 and "Traceback" in result.stderr and lines[-1] == "TypeError: a bug"


def test_a_push_to_an_unreachable_hub_ends_in_one_line_and_keeps_the_pipeline(course_folder, tmp_path):
    """The trainer's ``--push_to_hub`` with the Hub endpoint on a closed port of this machine (a refused connection):
    one line naming the repository and how to retry, and the trained pipeline is saved and loads."""
    from iclevr.demo_load import free_port
    from pipeline_iclevr import ICLEVRPipeline

    port = free_port()  # nothing listens there
    out = tmp_path / "out"
    _assert_one_line([*_script("train_conditional_ddpm.py"), "--train_data_dir", str(course_folder), "--output_dir", str(out),
                      "--cache_dir", str(tmp_path / "cache"), *TINY, "--train_batch_size", "4", "--max_train_steps", "1", "--push_to_hub",
                      "--hub_model_id", "user/iclevr-ddpm", "--hub_token", "hf_dummy"],
                     "Uploading to the Hub repository user/iclevr-ddpm failed",
                     env={"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_DISABLE_TELEMETRY": "1"})
    ICLEVRPipeline.from_pretrained(out)
