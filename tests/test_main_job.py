import json

import pytest

import main_job
from iclevr_evaluator import build_evaluator

TINY_TRAIN = ("--resolution 16 --block_out_channels 8,16 --attention_head_dim 8 --train_batch_size 4 --lr_warmup_steps 1 "
              "--validation_inference_steps 2 --embedded_num_scenes 4")


def test_main_job_end_to_end(tmp_path):
    """Nothing but an evaluator given: embedded data rendered, trained by accelerate launch, saved, reported."""
    build_evaluator().save_pretrained(tmp_path / "evaluator")
    summary = main_job.main(["--output_dir", str(tmp_path / "job"), "--cache_dir", str(tmp_path / "cache"),
                             "--evaluator", str(tmp_path / "evaluator"), "--max_train_steps", "3", "--validation_steps", "2",
                             "--num_seeds", "1", "--train_args", TINY_TRAIN])
    job = tmp_path / "job"
    assert (job / "pipeline" / "model_index.json").is_file() and (job / "report" / "report.md").is_file()
    saved = json.loads((job / "main_job.json").read_text())
    assert saved == summary and set(saved["stage_seconds"]) == {"train diffusion model", "report"}
    assert "synthetic_test" in saved["accuracy"] and 0 <= saved["accuracy"]["synthetic_test"]["mean"] <= 1
    steps = [json.loads(line)["step"] for line in (job / "pipeline" / "validation" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 3]


def test_cached_evaluator_is_reused_without_training(tmp_path, monkeypatch):
    recipe = main_job.EVALUATOR_RECIPE
    folder = tmp_path / f"evaluator-seed{recipe['seed']}-scenes{recipe['num_scenes']}-epochs{recipe['num_epochs']}"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(main_job, "run_stage", lambda *a: pytest.fail("nothing should run"))
    args = main_job.parse_args(["--cache_dir", str(tmp_path)])
    assert main_job.ensure_evaluator(args, tmp_path, {}) == folder


def test_failed_stage_stops_the_job(tmp_path):
    with pytest.raises(SystemExit, match="Stage 'boom' failed"):
        main_job.run_stage("boom", ["python", "-c", "raise SystemExit(3)"], {})


@pytest.mark.parametrize("flags, message", [(["--train_minutes", "0"], "must be positive"),
                                            (["--evaluator", "/nonexistent"], "does not exist")])
def test_bad_flags(flags, message, capsys):
    with pytest.raises(SystemExit):
        main_job.parse_args(flags)
    assert message in capsys.readouterr().err


def test_training_budget_shrinks_with_the_time_already_spent():
    args = main_job.parse_args([])
    assert main_job.training_budget(args, 1.5) == (57.0, 5000)  # cached evaluator: all of --train_minutes
    minutes, steps = main_job.training_budget(args, 16.0)  # evaluator trained first: 75 - 16 - 6 = 53 minutes
    assert minutes == 53.0 and steps == round(5000 * 53 / 57)
    with pytest.raises(SystemExit, match="raise --job_minutes or give --evaluator"):
        main_job.training_budget(args, 70.0)


def test_evaluator_is_rendered_trained_and_cached_when_none_is_given(tmp_path, monkeypatch):
    """The first command's path on a fresh machine: no --evaluator, nothing cached (a tiny recipe stands in)."""
    monkeypatch.setattr(main_job, "EVALUATOR_RECIPE", {"num_scenes": 20, "seed": 1, "num_epochs": 1, "train_batch_size": 8})
    args = main_job.parse_args(["--cache_dir", str(tmp_path)])
    timings = {}
    folder = main_job.ensure_evaluator(args, tmp_path, timings)
    assert folder == tmp_path / "evaluator-seed1-scenes20-epochs1" and (folder / "model.safetensors").is_file()
    assert set(timings) == {"render evaluator data", "train evaluator"}
    metrics = json.loads((folder / "evaluator_metrics.json").read_text())
    assert metrics["train_images"] + metrics["heldout_images"] == 60
    assert main_job.ensure_evaluator(args, tmp_path, timings := {}) == folder and timings == {}  # cached now
