import json
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import iclevr.utils as iclevr_utils
import main_job
from iclevr import ddpm
from iclevr.evaluator import Evaluator, build_evaluator
from iclevr.labels import COURSE_TEST
from pipeline_iclevr import ICLEVRPipeline

from .conftest import run_side_by_side

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = ("--resolution 16 --patch_size 1 --block_out_channels 8,16 --attention_head_dim 8 --train_batch_size 4 --lr_warmup_steps 1 "
              "--validation_inference_steps 2 --embedded_num_scenes 4 --checkpointing_steps 2")


def JOB_FLAGS(tmp_path):  # noqa: N802
    return ["--output_dir", str(tmp_path / "job"), "--cache_dir", str(tmp_path / "cache"), "--evaluator",
            str(tmp_path / "evaluator"), "--max_train_steps", "3", "--validation_steps", "2", "--num_seeds", "1",
            "--train_args", TINY_TRAIN]


def test_main_job_end_to_end(tmp_path):
    """Nothing but an evaluator given: embedded data rendered, trained by accelerate launch, saved, reported."""
    build_evaluator().save_pretrained(tmp_path / "evaluator")
    summary = main_job.main(JOB_FLAGS(tmp_path))
    job = tmp_path / "job"
    assert (job / "pipeline" / "model_index.json").is_file() and (job / "report" / "report.md").is_file()
    saved = json.loads((job / "main_job.json").read_text())
    assert saved == summary and set(saved["stage_seconds"]) == {"calibrate", "train diffusion model", "report"}
    assert saved["calibrated_seconds_per_step"] > 0 and not (job / "calibration").exists()
    assert saved["mixed_precision"] == iclevr_utils.auto_mixed_precision()  # bf16 only where the CPU computes it natively
    # the course's test.json and new_test.json ship with the project: the report scores them, training validates on test.json
    assert set(saved["accuracy"]) == {"test", "new_test", "synthetic_test"} and 0 <= saved["accuracy"]["test"]["mean"] <= 1
    records = [json.loads(line) for line in (job / "pipeline" / "validation" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3] and {r["conditions_json"] for r in records} == {str(COURSE_TEST)}
    assert saved["conditions_json"]["test"] == str(COURSE_TEST)


@pytest.mark.slow  # CI's 15 minutes on 2 busy AVX2 cores; run with pytest -m slow
def test_a_stopped_job_resumes_with_its_plan(tmp_path, capfd):
    """The same command after a kill: no new calibration, training continues from the last checkpoint and ends with
    the weights of the uninterrupted job."""

    build_evaluator().save_pretrained(tmp_path / "evaluator")
    main_job.main(JOB_FLAGS(tmp_path))
    pipeline = tmp_path / "job" / "pipeline"
    weights = load_file(pipeline / "unet" / "diffusion_pytorch_model.safetensors")
    shutil.rmtree(tmp_path / "job" / "report")
    assert sorted(p.name for p in pipeline.glob("checkpoint-*")) == ["checkpoint-2"]
    for leftover in ("model_index.json", "unet"):  # as if killed after checkpoint-2
        shutil.rmtree(pipeline / leftover) if (pipeline / leftover).is_dir() else (pipeline / leftover).unlink()
    capfd.readouterr()
    summary = main_job.main(JOB_FLAGS(tmp_path))
    output = capfd.readouterr()
    assert "calibrate" not in summary["stage_seconds"] and "as planned" in output.out
    assert "Resuming from" in output.out + output.err and "checkpoint-2" in output.out + output.err
    resumed = load_file(pipeline / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)
    with pytest.raises(SystemExit, match="holds a stopped job planned with"):  # other settings: refused, nothing lost
        main_job.main([*JOB_FLAGS(tmp_path)[:-2], "--train_args", TINY_TRAIN + " --learning_rate 1e-3"])


def test_cached_evaluator_is_reused_without_training(tmp_path, monkeypatch):
    recipe = main_job.EVALUATOR_RECIPE
    folder = main_job.evaluator_folder(tmp_path, recipe)
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(main_job, "run_stage", lambda *a: pytest.fail("nothing should run"))
    args = main_job.parse_args(["--cache_dir", str(tmp_path), "--retrain_evaluator"])
    assert main_job.ensure_evaluator(args, tmp_path, {}) == folder


def test_the_shipped_evaluator_is_the_default(tmp_path, monkeypatch):
    """A first run trains no evaluator: with neither --evaluator nor --retrain_evaluator it scores with the shipped one."""
    monkeypatch.setattr(main_job, "run_stage", lambda *a: pytest.fail("nothing should run"))
    args = main_job.parse_args(["--cache_dir", str(tmp_path)])
    assert main_job.ensure_evaluator(args, tmp_path, {}) == main_job.SHIPPED_EVALUATOR
    assert (main_job.SHIPPED_EVALUATOR / "model.safetensors").is_file()
    import iclevr.evaluator

    (tmp_path / "half").mkdir()  # a clone without it, or with half of it: one clear line
    (tmp_path / "half" / "config.json").write_text("{}")
    monkeypatch.setattr(iclevr.evaluator, "SHIPPED_EVALUATOR", tmp_path / "half")
    with pytest.raises(SystemExit, match="shipped evaluator .* is missing.*--retrain_evaluator"):
        main_job.ensure_evaluator(args, tmp_path, {})


def test_failed_stage_stops_the_job(tmp_path):
    with pytest.raises(SystemExit, match="Stage 'boom' failed"):
        main_job.run_stage("boom", ["python", "-c", "raise SystemExit(3)"], {})


@pytest.mark.parametrize("flags, message", [(["--train_minutes", "0"], "argument --train_minutes: expected a finite number > 0"),
                                            (["--evaluator", "/nonexistent"], "does not exist"),
                                            (["--evaluator", ".", "--retrain_evaluator"], "are exclusive")])
def test_bad_flags(flags, message, capsys):
    with pytest.raises(SystemExit):
        main_job.parse_args(flags)
    assert message in capsys.readouterr().err


def test_the_schedule_fills_the_training_minutes_on_the_machine_at_hand():
    """A faster machine trains a longer schedule in the same minutes; the evaluator's time is not taken from them."""
    args = main_job.parse_args([])
    assert main_job.schedule_steps(args, 0.671) == int(57 * 60 / 0.671)  # Sapphire Rapids: about 5,000
    assert main_job.schedule_steps(args, 0.388) == int(57 * 60 / 0.388)  # an EPYC with AVX512-BF16: about 8,800
    assert main_job.schedule_steps(args, 1.8) == int(57 * 60 / 1.8)  # AVX2 only, fp32
    assert main_job.schedule_steps(main_job.parse_args(["--train_minutes", "115"]), 0.671) == int(115 * 60 / 0.671)
    assert main_job.schedule_steps(main_job.parse_args(["--max_train_steps", "3000"]), 0.388) == 3000  # a cap


@pytest.mark.parametrize("cuda, gpus, expected", [
    (False, 0, ["--config_file", str(main_job.PROJECT_DIR / "accelerate_config.yaml")]),
    (True, 1, ["--num_machines", "1", "--num_processes", "1", "--dynamo_backend", "no"]),
    (True, 4, ["--num_machines", "1", "--num_processes", "4", "--multi_gpu", "--dynamo_backend", "no"]),
])
def test_the_stages_launch_on_the_device_at_hand(monkeypatch, cuda, gpus, expected):
    """On a CPU the project's config (one process, every core); with CUDA, one process per GPU (the CPU config's
    use_cpu would keep a GPU idle); a given --accelerate_config always wins."""
    monkeypatch.setattr(main_job.torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(main_job.torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(main_job, "auto_mixed_precision", lambda: "bf16")
    command = main_job.launch(main_job.parse_args([]), "train_conditional_ddpm.py")
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[3:-2] == expected and command[-1] == str(main_job.PROJECT_DIR / "train_conditional_ddpm.py")
    assert command[-2] == "--quiet"  # a failing stage: its own line, not the launcher's traceback
    own = main_job.parse_args(["--accelerate_config", str(main_job.PROJECT_DIR / "accelerate_config.yaml")])
    assert main_job.launch(own, "train_evaluator.py")[3:5] == ["--config_file", own.accelerate_config]


@pytest.mark.parametrize("cuda, flag, recipe", [(False, [], "cpu"), (True, [], "gpu"), (True, ["--recipe", "cpu"], "cpu"),
                                                (False, ["--recipe", "gpu"], "gpu")])
def test_the_recipe_follows_the_device(monkeypatch, cuda, flag, recipe):
    """auto: the GPU recipe (the larger UNet at full resolution) where CUDA is available, the CPU recipe elsewhere; --recipe
    chooses either anywhere, and --train_args comes last, so it overrides the recipe."""
    monkeypatch.setattr(main_job.torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(main_job, "auto_mixed_precision", lambda: "bf16")
    args = main_job.parse_args([*flag, "--train_args", "--learning_rate 1e-3"])
    flags = main_job.recipe_flags(args)
    assert args.recipe == recipe and flags[0] == "--use_ema" and flags[-2:] == ["--learning_rate", "1e-3"]
    assert ("--resolution" in flags and flags[flags.index("--resolution") + 1] == "64") == (recipe == "gpu")
    parsed = ddpm.parse_args(["--output_dir", "x", *flags])  # the trainer takes the recipe as it stands
    # both draw 64x64: the CPU recipe through the space-to-depth stem, the GPU recipe's UNet at full resolution
    assert (parsed.resolution, parsed.patch_size) == ((64, 1) if recipe == "gpu" else (64, 2)) and parsed.learning_rate == 1e-3
    assert parsed.conditioning == ("both" if recipe == "gpu" else "class_embedding")
    # The CPU recipe takes the trainer's logit-normal timesteps; the GPU recipe keeps the uniform ones it was run with.
    assert parsed.weighting_scheme == ("none" if recipe == "gpu" else "logit_normal")


@pytest.mark.slow  # CI's 15 minutes on 2 busy AVX2 cores; run with pytest -m slow
def test_evaluator_is_rendered_trained_and_cached_when_none_is_given(tmp_path, monkeypatch):
    """The first command's path on a fresh machine: no --evaluator, nothing cached (a tiny recipe stands in)."""
    monkeypatch.setattr(main_job, "EVALUATOR_RECIPE", {"num_scenes": 20, "seed": 1, "num_epochs": 1, "train_batch_size": 8,
                                                       "flip_average": True, "save_dtype": "float16", "render_style": "iclevr",
                                                       "appearance_augment": True})
    args = main_job.parse_args(["--cache_dir", str(tmp_path), "--retrain_evaluator"])
    timings = {}
    folder = main_job.ensure_evaluator(args, tmp_path, timings)
    assert folder == tmp_path / "evaluator-iclevr-seed1-scenes20-epochs1-flip-appearance-fp16" and (folder / "model.safetensors").is_file()
    assert json.loads((folder / "evaluator_metrics.json").read_text())["args"]["appearance_augment"] is True
    assert json.loads((folder / "config.json").read_text())["flip_average"] is True  # every later score averages flips
    weights = load_file(folder / "model.safetensors")  # saved as the shipped one is, and scored as saved
    assert {w.dtype for w in weights.values() if w.is_floating_point()} == {torch.float16}  # (BatchNorm counts stay int64)
    assert Evaluator.from_pretrained(folder).model.dtype == torch.float32
    assert set(timings) == {"render evaluator data", "train evaluator"}
    metrics = json.loads((folder / "evaluator_metrics.json").read_text())
    assert metrics["train_images"] + metrics["heldout_images"] == 60
    assert main_job.ensure_evaluator(args, tmp_path, timings := {}) == folder and timings == {}  # cached now


@pytest.mark.parametrize("cuda, cuda_bf16, cpu_bf16, expected", [(False, False, True, "bf16"), (False, False, False, "no"),
                                                                  (True, True, False, "bf16"), (True, False, False, "fp16")])
def test_auto_mixed_precision_follows_the_hardware(monkeypatch, cuda, cuda_bf16, cpu_bf16, expected):
    """bf16 only where it is computed in hardware: on an AVX2-only CPU it is emulated and 15x slower than fp32."""
    monkeypatch.setattr(iclevr_utils.torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(iclevr_utils.torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    monkeypatch.setattr(iclevr_utils, "cpu_has_native_bf16", lambda: cpu_bf16)
    assert iclevr_utils.auto_mixed_precision() == expected
    assert main_job.parse_args([]).mixed_precision == expected
    assert main_job.parse_args(["--mixed_precision", "no"]).mixed_precision == "no"


def test_slow_bf16_is_named_with_its_fix(monkeypatch):
    monkeypatch.setattr(iclevr_utils, "cpu_has_native_bf16", lambda: False)
    warning = iclevr_utils.slow_bf16_warning("bf16", torch.device("cpu"))
    assert "without native bf16" in warning and "--mixed_precision no" in warning
    assert iclevr_utils.slow_bf16_warning("no", torch.device("cpu")) is None
    assert iclevr_utils.slow_bf16_warning("bf16", torch.device("cuda")) is None
    monkeypatch.setattr(iclevr_utils, "cpu_has_native_bf16", lambda: True)
    assert iclevr_utils.slow_bf16_warning("bf16", torch.device("cpu")) is None


@pytest.mark.parametrize("amx, avx512_bf16, expected", [(True, False, True), (False, True, True), (False, False, False)])
def test_cpu_bf16_probe_reads_amx_and_avx512_bf16(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert iclevr_utils.cpu_has_native_bf16() is expected


@pytest.mark.parametrize("onednn", [True, False])
def test_cpu_bf16_probe_asks_onednn_where_torch_has_no_feature_probes(monkeypatch, onednn):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    assert iclevr_utils.cpu_has_native_bf16() is onednn


def test_paths_are_resolved_against_the_callers_directory(tmp_path, monkeypatch):
    """The stages run in the project folder; relative paths given to the job still mean the caller's."""
    monkeypatch.chdir(tmp_path)
    args = main_job.parse_args(["--output_dir", "out", "--cache_dir", "cache"])
    assert args.output_dir == str(tmp_path / "out") and args.cache_dir == str(tmp_path / "cache")


def test_warmup_shrinks_with_the_schedule():
    args = main_job.parse_args([])
    assert main_job.warmup_flags(args, 5000) == ["--lr_warmup_steps", "200"]  # the recipe as measured
    assert main_job.warmup_flags(args, 1809) == ["--lr_warmup_steps", "72"]  # an AVX2-only CPU's hour: 4 %, as on Sapphire Rapids
    assert main_job.warmup_flags(args, 98) == ["--lr_warmup_steps", "4"]  # a 3-minute run there: 4 warm-up steps, not 200 of 98
    assert main_job.warmup_flags(args, 3) == ["--lr_warmup_steps", "1"]
    for given in ("--lr_warmup_steps 500", "--lr_warmup_steps=500"):  # the user's own warm-up stays as given
        assert main_job.warmup_flags(main_job.parse_args([f"--train_args={given}"]), 2500) == []


def test_jobs_sharing_a_cache_train_the_evaluator_once(tmp_path, monkeypatch):
    """Two jobs started together on one cache: the second waits for the first one's evaluator and reuses it."""
    recipe = main_job.EVALUATOR_RECIPE
    folder = main_job.evaluator_folder(tmp_path, recipe)
    data = tmp_path / f"evaluator-data-{recipe['render_style']}-seed{recipe['seed']}-scenes{recipe['num_scenes']}"
    stages = []

    def slow_stage(name, command, timings):  # both jobs look for a cached evaluator before either has one
        stages.append(name)
        time.sleep(0.5)
        target = data / "train.json" if name == "render evaluator data" else folder / "model.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("{}")

    monkeypatch.setattr(main_job, "run_stage", slow_stage)
    args = main_job.parse_args(["--cache_dir", str(tmp_path), "--retrain_evaluator"])
    assert run_side_by_side(lambda: main_job.ensure_evaluator(args, tmp_path, {}), timeout=60) == [folder, folder]
    assert stages == ["render evaluator data", "train evaluator"]


@pytest.mark.slow
def test_a_job_killed_in_any_phase_reruns_to_the_same_report(tmp_path):
    """SIGKILL the whole main job (it and its stages) at a random moment of the render, the training and the report,
    then rerun the same command: each rerun finishes, its pipeline loads, and its report is the uninterrupted job's.
    Slow (about four minutes on 2 cores): run before each release with ``pytest -m slow``."""
    import os
    import random
    import signal
    import subprocess

    build_evaluator().save_pretrained(tmp_path / "evaluator")
    train = TINY_TRAIN.replace("--embedded_num_scenes 4", "--embedded_num_scenes 60")  # a render long enough to hit

    def command(name):
        flags = JOB_FLAGS(tmp_path)[:-2] + ["--train_args", train]
        flags[flags.index("--output_dir") + 1] = str(tmp_path / name)
        flags[flags.index("--cache_dir") + 1] = str(tmp_path / f"cache-{name}")
        return [sys.executable, str(ROOT / "main_job.py"), *flags]

    def report(name):  # every figure of the report but the timings
        sets = json.loads((tmp_path / name / "report" / "metrics.json").read_text())["sets"]
        return {set_name: {k: v for k, v in figures.items() if k not in ("seconds_per_image", "conditions_json")}
                for set_name, figures in sets.items()}

    subprocess.run(command("whole"), cwd=ROOT, check=True, capture_output=True, timeout=900)
    expected = report("whole")
    rng = random.Random(0)
    phases = {  # each phase's marker: a file that exists only once the phase is under way
        "render": lambda job: any(tmp_path.glob(f"cache-{job}/rendered-*.partial")),
        "training": lambda job: (tmp_path / job / "plan.json").is_file(),
        "report": lambda job: (tmp_path / job / "pipeline" / "model_index.json").is_file(),
    }
    for phase, started in phases.items():
        process = subprocess.Popen(command(phase), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        deadline = time.time() + 600
        while process.poll() is None and not started(phase) and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        assert process.poll() is None, f"the job ended before its {phase} could be interrupted"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        rerun = subprocess.run(command(phase), cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        ICLEVRPipeline.from_pretrained(tmp_path / phase / "pipeline")
        assert report(phase) == expected, phase


@pytest.mark.slow  # a whole job (about a minute alone); the trainer's own --layout_conditioning infer test is not slow
def test_the_main_job_trains_the_layout_model_on_a_folder_without_layouts(tmp_path, rendered_dir):
    """A course folder with labels only: ``--train_args`` passes ``--layout_conditioning infer`` to the calibration
    and the training run, which infer the layouts once (into the cache, not the folder), and the job ships a layout
    model whose prior holds the inferred boxes."""
    from iclevr.object_finder import ObjectFinder

    data = tmp_path / "data"
    shutil.copytree(rendered_dir, data)
    (data / "layouts.json").unlink()
    build_evaluator().save_pretrained(tmp_path / "evaluator")
    ObjectFinder(hidden_sizes=[8, 8, 8], head_channels=8, confidence_threshold=0.001).save_pretrained(tmp_path / "finder")
    train = f"{TINY_TRAIN} --train_data_dir {data} --layout_conditioning infer --object_finder {tmp_path / 'finder'}"
    main_job.main(JOB_FLAGS(tmp_path)[:-2] + ["--train_args", train])
    (inferred,) = (tmp_path / "cache").glob("inferred-layouts-*/layouts.json")
    boxes = {json.dumps(item["box"]) for layout in json.loads(inferred.read_text()).values() if layout for item in layout}
    prior = json.loads((tmp_path / "job" / "pipeline" / "model_index.json").read_text())["layout_prior"]
    assert prior and {json.dumps(box) for group in prior.values() for layout in group for box in layout} <= boxes
    assert not (data / "layouts.json").exists()
