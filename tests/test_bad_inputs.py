"""The bad-input catalogue: each case is a mistake a user makes, run through the public entry point it reaches, with
the message it must get (the problem and the fix) and, where files are involved, proof that nothing was written."""

import json
import shutil

import pytest
import torch
from PIL import Image

import evaluate_pipeline
import main_job
import render_iclevr
from iclevr import ddpm
from iclevr.data import load_train_dataset
from iclevr.evaluator import Evaluator, build_evaluator, read_image_folder
from iclevr.labels import BadDataError, load_conditions
from pipeline_iclevr import ICLEVRPipeline, LabelVocabulary

TINY = ["--resolution", "16", "--patch_size", "1", "--block_out_channels", "8,16", "--attention_head_dim", "8"]


# --- data: one good folder, then one broken file or label at a time ------------------------------------------------
@pytest.fixture
def folder(rendered_dir, tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    labels = json.loads((rendered_dir / "train.json").read_text())
    keep = dict(list(labels.items())[:4])
    for name in keep:
        shutil.copy(rendered_dir / name, out / name)
    (out / "train.json").write_text(json.dumps(keep))
    return out


def _add(folder, name, labels=("red sphere",)):
    table = json.loads((folder / "train.json").read_text())
    table[name] = list(labels)
    (folder / "train.json").write_text(json.dumps(table))
    return folder / name


def _truncated(folder):
    good = next(folder.glob("*.png")).read_bytes()
    _add(folder, "cut.png").write_bytes(good[: len(good) // 3])


def _zero_byte(folder):
    _add(folder, "zero.png").write_bytes(b"")


def _missing(folder):
    _add(folder, "gone.png")


def _greyscale(folder):
    Image.new("L", (64, 64), 128).save(_add(folder, "grey.png"))


def _cmyk(folder):
    Image.new("CMYK", (64, 64)).save(_add(folder, "cmyk.jpg"), format="JPEG")


def _transparent(folder):
    Image.new("RGBA", (64, 64), (9, 9, 9, 0)).save(_add(folder, "alpha.png"))


def _wrong_size(folder):
    Image.new("RGB", (320, 240), (128, 128, 128)).save(_add(folder, "big.png"))


def _unknown_label(folder):
    shutil.copy(next(folder.glob("*.png")), _add(folder, "x.png", ["red spere"]))


def _label_not_a_list(folder):
    table = json.loads((folder / "train.json").read_text())
    table["y.png"] = "red sphere"
    (folder / "train.json").write_text(json.dumps(table))


def _labels_json_not_an_object(folder):
    (folder / "train.json").write_text(json.dumps([["red sphere"]]))


def _wrong_objects_json(folder):
    (folder / "objects.json").write_text(json.dumps({"red sphere": 0}))


DATA_CASES = [
    (_truncated, "cut.png: unreadable or truncated image"),
    (_zero_byte, "zero.png: unreadable or truncated image"),
    (_missing, "gone.png: file is missing"),
    (_greyscale, "grey.png: greyscale image (mode L)"),
    (_cmyk, "cmyk.jpg: unsupported image mode CMYK"),
    (_transparent, "alpha.png: image has transparent pixels"),
    (_wrong_size, "big.png: wrong size 320x240: the other images are 64x64"),
    (_unknown_label, "Unknown i-CLEVR label 'red spere'. Did you mean 'red sphere'"),
    (_label_not_a_list, "y.png"),
    (_labels_json_not_an_object, "must be a JSON object"),
    (_wrong_objects_json, "objects.json does not match"),
]


@pytest.mark.parametrize("make, message", DATA_CASES, ids=[f.__name__.strip("_") for f, _ in DATA_CASES])
def test_bad_data(folder, tmp_path, make, message):
    make(folder)
    with pytest.raises(ValueError) as info:
        load_train_dataset(train_data_dir=folder, resolution=16, cache_dir=tmp_path / "cache")
    assert message in str(info.value)
    if isinstance(info.value, BadDataError) and "bad images" in str(info.value):
        assert "--skip_bad_images" in str(info.value)  # the way out is named
        dataset = load_train_dataset(train_data_dir=folder, resolution=16, cache_dir=tmp_path / "cache", skip_bad_images=True)
        assert len(dataset) == 4  # only the bad file is dropped, and it was reported above


# --- flags: fail before any work, nothing written -----------------------------------------------------------------
FLAG_CASES = [
    (ddpm.parse_args, ["--report_to", "mlflow"], "invalid choice"),
    (ddpm.parse_args, ["--push_to_hub"], "--push_to_hub needs --hub_model_id"),
    (ddpm.parse_args, ["--resolution", "17"], "must be divisible by 2"),
    (ddpm.parse_args, ["--mixed_precision", "fp8"], "invalid choice"),
    (ddpm.parse_args, ["--validation_steps", "5", "--validation_conditions_json", "/nonexistent.json"], "does not exist"),
    (render_iclevr.parse_args, ["--num_scenes", "0"], "argument --num_scenes: expected a positive integer, got '0'"),
    (main_job.parse_args, ["--train_minutes", "-1"], "argument --train_minutes: expected a finite number > 0"),
]


@pytest.mark.parametrize("parse, flags, message", FLAG_CASES, ids=[" ".join(f) for _, f, _ in FLAG_CASES])
def test_bad_flags(parse, flags, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra = TINY if parse is ddpm.parse_args else []
    extra += ["--output_dir", str(tmp_path / "out")] if parse is not main_job.parse_args else []
    with pytest.raises(SystemExit):
        parse([*extra, *flags])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


# --- pipeline calls -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe():
    from diffusers import DDIMScheduler

    args = ddpm.parse_args(TINY)
    pipe = ICLEVRPipeline(unet=ddpm.build_model(args), scheduler=DDIMScheduler(num_train_timesteps=100))
    pipe.set_progress_bar_config(disable=True)
    return pipe


PIPELINE_CASES = [
    ({"labels": [["red spere"]]}, "Did you mean 'red sphere'"),
    ({"labels": [[]]}, "Condition 0 is empty: every image needs at least one label"),
    ({"labels": [["red sphere", "red sphere"]]}, "holds the label(s) ['red sphere'] twice"),
    ({"labels": [[24]]}, "out of range"),
    ({"labels": torch.ones(1, 23)}, "24"),
    ({"num_inference_steps": 0}, "num_inference_steps must be a positive integer"),
    ({"guidance_scale": -2.0}, "guidance_scale must be a finite number >= 0"),
    ({"output_type": "jpg"}, "output_type must be 'pil', 'np', 'pt' or 'latent'"),
    ({"latents": torch.randn(1, 3, 8, 8)}, "latents must have shape (1, 3, 16, 16)"),
]


@pytest.mark.parametrize("kwargs, message", PIPELINE_CASES, ids=[str(k)[:40] for k, _ in PIPELINE_CASES])
def test_bad_pipeline_calls(pipe, kwargs, message):
    call = {"labels": [["red sphere"]], "num_inference_steps": 1} | kwargs
    with pytest.raises(ValueError) as info:
        pipe(**call)
    assert message in str(info.value)


# --- evaluator calls ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def evaluator():
    return Evaluator(build_evaluator().eval())


def _folder_of(tmp_path, count, size=64):
    for i in range(count):
        Image.new("RGB", (size, size), (i, i, i)).save(tmp_path / f"{i}.png")
    return tmp_path


EVALUATOR_CASES = [
    (lambda ev, tmp: ev.score(torch.rand(2, 3, 64, 64), [["red sphere"]]), "2 images but 1 conditions"),
    (lambda ev, tmp: ev.score(torch.rand(1, 1, 64, 64), [["red sphere"]]), "RGB"),
    (lambda ev, tmp: ev.score(torch.rand(1, 3, 64, 32), [["red sphere"]]), "must be square"),
    (lambda ev, tmp: ev.score(torch.rand(1, 3, 64, 64) * 3, [["red sphere"]]), "must be in [0, 1]"),
    (lambda ev, tmp: read_image_folder(_folder_of(tmp, 2), 3), "2.png: file is missing"),
    (lambda ev, tmp: Evaluator.from_pretrained(tmp / "nowhere"), "train_evaluator.py"),
    (lambda ev, tmp: load_conditions(_conditions(tmp, [["purple cone"]])), "Unknown i-CLEVR label 'purple cone'"),
]


def _conditions(tmp_path, conditions):
    path = tmp_path / "conditions.json"
    path.write_text(json.dumps(conditions))
    return path


@pytest.mark.parametrize("call, message", EVALUATOR_CASES, ids=[m[:30] for _, m in EVALUATOR_CASES])
def test_bad_evaluator_calls(evaluator, tmp_path, call, message):
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        call(evaluator, tmp_path)
    assert message in str(info.value)


def test_report_refuses_a_missing_pipeline_before_generating(tmp_path):
    with pytest.raises((OSError, ValueError, FileNotFoundError)):
        evaluate_pipeline.main(["--pipeline", str(tmp_path / "none"), "--evaluator", str(tmp_path / "none"),
                                "--output_dir", str(tmp_path / "report")])
    assert not (tmp_path / "report" / "metrics.json").exists()


def test_unknown_label_lists_valid_ones():
    with pytest.raises(ValueError) as info:
        LabelVocabulary().index("magenta pyramid")
    assert "Valid labels" in str(info.value) or "valid labels" in str(info.value)
    assert "yellow cylinder" in str(info.value)
