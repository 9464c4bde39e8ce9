"""The weights that ship with the repository (``pretrained/``) work: checked on pictures they never saw, so a broken,
truncated or swapped file cannot pass."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import main_job
from iclevr.evaluator import Evaluator, reference_images
from iclevr.render.dataset import plan_random_scenes, render_dataset

EVALUATOR = Path(__file__).resolve().parents[1] / "pretrained" / "evaluator"
FRESH_SEED = 20261204  # the shipped evaluator was trained on seed 1's scenes


@pytest.fixture(scope="module")
def evaluator() -> Evaluator:
    return Evaluator.from_pretrained(EVALUATOR)


@pytest.fixture(scope="module")
def fresh_scenes(tmp_path_factory) -> Path:
    """40 scenes (120 images of 1, 2 and 3 objects) the evaluator never saw, rendered at its 64x64."""
    out = tmp_path_factory.mktemp("fresh") / "scenes"
    render_dataset(out, plan_random_scenes(40, FRESH_SEED, set()), seed=FRESH_SEED, width=64, height=64, spp=4)
    return out


def test_the_shipped_evaluator_is_the_main_job_s_recipe_in_half_precision():
    assert main_job.SHIPPED_EVALUATOR == EVALUATOR
    weights = load_file(EVALUATOR / "model.safetensors")
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float16}  # BatchNorm counts stay int64
    assert (EVALUATOR / "model.safetensors").stat().st_size < 25_000_000
    metrics = json.loads((EVALUATOR / "evaluator_metrics.json").read_text())
    recipe = main_job.EVALUATOR_RECIPE
    assert metrics["save_dtype"] == "float16" and metrics["flip_average"] is True
    assert (metrics["args"]["num_epochs"], metrics["args"]["train_batch_size"]) == (recipe["num_epochs"], recipe["train_batch_size"])
    heldout = metrics["heldout"]["64"]  # measured with the half-precision weights, flip-averaged, as it scores
    assert heldout["accuracy"] >= 0.99 and heldout["by_num_objects"]["3"]["exact_set_accuracy"] >= 0.95
    config = json.loads((EVALUATOR / "config.json").read_text())
    assert config["flip_average"] is True and config["id2label"]["9"] == "red sphere"
    assert json.loads((EVALUATOR / "preprocessor_config.json").read_text())["size"] == {"height": 64, "width": 64}


def test_the_shipped_evaluator_reads_fresh_renders_and_not_the_empty_floor(evaluator, fresh_scenes):
    labels = json.loads((fresh_scenes / "train.json").read_text())
    names = sorted(labels)
    conditions = [labels[name] for name in names]
    report = evaluator.score([Image.open(fresh_scenes / name) for name in names], conditions)
    assert report["accuracy"] >= 0.97, report["accuracy"]
    assert report["by_num_objects"]["3"]["exact_set_accuracy"] >= 0.85, report["by_num_objects"]
    floor = evaluator.score(reference_images(conditions, "floor"), conditions)
    assert floor["accuracy"] <= 0.2, floor["accuracy"]


PIPELINE = EVALUATOR.parent / "iclevr-ddpm"


def test_the_shipped_pipeline_carries_the_current_remote_code():
    """A Hub user of the shipped folder runs its pipeline_iclevr.py: it must be the repository's own, byte for byte."""
    root = PIPELINE.parent.parent
    assert (PIPELINE / "pipeline_iclevr.py").read_bytes() == (root / "pipeline_iclevr.py").read_bytes(), (
        "cp pipeline_iclevr.py pretrained/iclevr-ddpm/ after changing the pipeline")


def test_the_shipped_pipeline_is_the_main_job_s_default_model():
    """It loads from a clean clone with nothing trained, and is what the main job trains now: a layout model at 64x64
    with the trainer's default UNet, its layout prior and its card."""
    from iclevr import ddpm
    from pipeline_iclevr import ICLEVRPipeline

    pipe = ICLEVRPipeline.from_pretrained(PIPELINE)
    assert pipe.uses_layouts and pipe.image_size == (64, 64) and sorted(pipe.config.layout_prior) == ["1", "2", "3"]
    default = ddpm.build_model(ddpm.parse_args(["--output_dir", "unused"]), 24, map_channels=24).config
    shipped = pipe.unet.config
    same = lambda config: json.loads(json.dumps({k: config[k] for k in default if not k.startswith("_")}))  # noqa: E731
    assert same(shipped) == same(default)
    summary = json.loads((PIPELINE / "train_summary.json").read_text())
    assert summary["validation"]["conditions_json"].endswith("test.json")
    card = (PIPELINE / "README.md").read_text()
    assert f"{summary['validation']['accuracy']:.3f}" in card and "learns from the renderer's object positions" in card
    total = sum(f.stat().st_size for f in PIPELINE.parent.rglob("*") if f.suffix == ".safetensors")
    assert total <= 40_000_000, total  # all shipped weights together


def test_the_shipped_report_figures_belong_to_the_shipped_weights():
    """The report's seed-0 accuracy on test.json, measured again from the shipped files (fp32 on the CPU, as the report
    sampled), within one label of 72; a swapped or retrained UNet would not land there by chance."""
    from iclevr.labels import COURSE_TEST, load_conditions
    from iclevr.sampling import generate, load_pipeline, score

    metrics = json.loads((PIPELINE / "report" / "metrics.json").read_text())
    reported = metrics["sets"]["test"]["accuracy"]["values"][0]
    pipe = load_pipeline(str(PIPELINE), None, "cpu")
    conditions = load_conditions(COURSE_TEST, pipe.vocab)
    images, _ = generate(pipe, conditions, 0, 64, num_inference_steps=metrics["args"]["num_inference_steps"],
                         guidance_scale=metrics["args"]["guidance_scale"])
    again = score(Evaluator.from_pretrained(EVALUATOR), images, conditions)["accuracy"]
    assert abs(again - reported) <= 1 / 72 + 1e-9, (again, reported)
