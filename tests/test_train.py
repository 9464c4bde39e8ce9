import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

import iclevr.io
from iclevr import ddpm, hub
from iclevr.checkpoints import latest_checkpoint
from iclevr.data import dataset_to_tensors
from iclevr.io import writer_lock
from iclevr.labels import SYNTHETIC_TEST
from pipeline_iclevr import ICLEVRPipeline, unet_condition_kwargs

from .conftest import accelerate_launch, run_ok, run_side_by_side

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--resolution", "16", "--patch_size", "1", "--block_out_channels", "8,16", "--attention_head_dim", "8", "--train_batch_size", "4",
        "--lr_warmup_steps", "1", "--seed", "3"]


def _command(rendered_dir, output_dir, *flags, processes=1):
    return accelerate_launch(ROOT / "train_conditional_ddpm.py", processes) + [
        "--train_data_dir", str(rendered_dir), "--output_dir", str(output_dir), "--cache_dir", str(output_dir.parent / "cache"),
        *TINY, *flags]


def _direct(rendered_dir, output_dir, *flags):
    """The trainer run as a plain script: one process needs no launcher, and starts in half the time."""
    return [sys.executable, str(ROOT / "train_conditional_ddpm.py"), "--train_data_dir", str(rendered_dir), "--output_dir",
            str(output_dir), "--cache_dir", str(output_dir.parent / "cache"), *TINY, *flags]


def _launch(rendered_dir, output_dir, *flags, processes=1, timeout=300):
    """A run to completion: ``accelerate launch`` for several processes, else the plain script (`_direct`)."""
    command = _command(rendered_dir, output_dir, *flags, processes=processes) if processes > 1 else _direct(rendered_dir, output_dir, *flags)
    return run_ok(command, timeout)


def _weights(folder):
    return load_file(Path(folder) / "unet" / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def trained(rendered_dir, tmp_path_factory):
    """One small run: 6 steps, checkpoints every 2 (limit 2), EMA, validation every 3 scored by an evaluator."""
    from iclevr.evaluator import build_evaluator

    out = tmp_path_factory.mktemp("run") / "out"
    build_evaluator().save_pretrained(out.parent / "evaluator")
    _launch(rendered_dir, out, "--max_train_steps", "6", "--checkpointing_steps", "2", "--checkpoints_total_limit", "2",
            "--use_ema", "--validation_steps", "3", "--validation_inference_steps", "2",
            "--validation_num_seeds", "2", "--evaluator", str(out.parent / "evaluator"))
    return out


def test_launch_produces_a_pipeline(trained):
    for name in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                 "scheduler/scheduler_config.json", "pipeline_iclevr.py", "README.md", "samples.png"):
        assert (trained / name).is_file(), name
    assert sorted(p.name for p in trained.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]  # rotated
    # Checkpoints in the diffusers examples' layout: the UNet and its EMA as from_pretrained folders, no pickle.
    checkpoint = trained / "checkpoint-6"
    assert {"unet", "unet_ema", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"} <= {p.name for p in checkpoint.iterdir()}
    assert not list(checkpoint.glob("model*.safetensors")) and not list(checkpoint.glob("custom_checkpoint_*"))
    from diffusers import UNet2DConditionModel
    from diffusers.training_utils import EMAModel

    assert UNet2DConditionModel.from_pretrained(checkpoint / "unet").config.sample_size == 16
    ema = EMAModel.from_pretrained(checkpoint / "unet_ema", model_cls=UNet2DConditionModel)
    assert ema.optimization_step == 6
    saved = ICLEVRPipeline.from_pretrained(trained).unet.state_dict()
    assert all(torch.equal(saved[name], p) for name, p in zip(saved, ema.shadow_params, strict=True))  # the saved EMA
    records = [json.loads(line) for line in (trained / "validation" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6]
    assert all(0 <= r["accuracy"] <= 1 and 0 <= r["exact_set_accuracy"] <= 1 for r in records)
    labels = sum(len(condition) for condition in json.loads(SYNTHETIC_TEST.read_text()))
    for r in records:  # two seeds each: the logged accuracy is their mean, and every missed label has a kind
        assert len(r["accuracy_per_seed"]) == 2 and r["accuracy"] == pytest.approx(sum(r["accuracy_per_seed"]) / 2)
        misses = r["misses_colour"] + r["misses_shape"] + r["misses_object"]
        assert misses == round(sum(labels * (1 - a) for a in r["accuracy_per_seed"]))
    assert list((trained / "logs").rglob("events.out.tfevents.*"))
    summary = json.loads((trained / "train_summary.json").read_text())
    assert summary["steps"] == 6 and summary["seconds_per_step"] > 0 and summary["mixed_precision"] == "no"
    assert summary["dynamo_backend"] == "no"  # auto on a CPU
    assert summary["images_seen"] == 6 * 4 and summary["validation"]["accuracy"] == records[-1]["accuracy"]
    pipe = ICLEVRPipeline.from_pretrained(trained)
    pipe.set_progress_bar_config(disable=True)
    images = pipe([["red sphere"], ["gray cube", "blue cylinder"]], num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 16, 16, 3)


def test_the_saved_pipeline_samples_as_it_was_measured(trained):
    """The saved sampler is the validation's (DPM-Solver++), so the default call with the card's steps, guidance and
    seed reproduces the last validation's accuracy exactly."""
    from diffusers import DPMSolverMultistepScheduler

    from iclevr.evaluator import Evaluator
    from iclevr.labels import load_conditions

    pipe = ICLEVRPipeline.from_pretrained(trained)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    last = [json.loads(line) for line in (trained / "validation" / "metrics.jsonl").read_text().splitlines()][-1]
    conditions = load_conditions(SYNTHETIC_TEST)
    # The default call: the steps (2 here, not the pipeline's 25) and guidance the run validated with, from its config.
    assert (pipe.config.default_num_inference_steps, pipe.config.default_guidance_scale) == (2, 2.0)
    assert pipe.config.max_labels_per_image == 3
    images = pipe(conditions, generator=torch.Generator().manual_seed(3), output_type="pt").images
    accuracy = Evaluator.from_pretrained(trained.parent / "evaluator").score(images, conditions)["accuracy"]
    assert accuracy == last["accuracy_per_seed"][0]


def test_model_card(trained):
    from huggingface_hub import ModelCard

    card = ModelCard.load(trained / "README.md")
    assert card.data.library_name == "diffusers" and card.data.inference is False and card.data.datasets == ["i-clevr"]
    last = [json.loads(line) for line in (trained / "validation" / "metrics.jsonl").read_text().splitlines()][-1]
    (result,) = card.data.eval_results
    assert result.metric_type == "accuracy" and result.metric_value == round(last["accuracy"], 4)
    assert "synthetic_test.json" in result.dataset_name and "DPMSolverMultistepScheduler" in result.metric_name
    assert card.data.pipeline_tag == "text-to-image" and result.task_type == "text-to-image"  # conditional, by label names
    text = card.text
    assert "# i-CLEVR class-conditional DDPM" in text and "https://github.com/" not in text
    assert 'DiffusionPipeline.from_pretrained("' in text and "trust_remote_code=True" in text
    assert "![samples](samples.png)" in text and "| steps | 6 |" in text and "| images/s |" in text
    assert "| validation accuracy |" in text and "| seconds per step |" in text
    assert "DPMSolverMultistepScheduler, 2 steps, guidance 2" in text and "the ones its accuracy below was measured with" in text
    assert str(ROOT) not in text and "/tmp" not in text and "| validation conditions | `synthetic_test.json` |" in text


def test_a_run_without_validation_at_its_end_has_no_stale_samples_and_says_nothing_was_measured(trained, rendered_dir, tmp_path):
    """A resumed run whose last step was not validated: the previous run's samples.png (other weights) goes, and the
    card claims no measured accuracy."""
    out = tmp_path / "resumed"
    shutil.copytree(trained, out)
    assert (out / "samples.png").is_file()
    _launch(rendered_dir, out, "--max_train_steps", "7", "--use_ema", "--resume_from_checkpoint", "latest")
    text = (out / "README.md").read_text()
    assert not (out / "samples.png").exists() and "![samples]" not in text
    assert "no accuracy was measured during training" in text and "| steps | 7 |" in text


def test_resume_matches_uninterrupted_run(trained, rendered_dir, tmp_path):
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(trained / "checkpoint-4", resumed / "checkpoint-4")  # what a run killed after step 4 leaves
    result = _launch(rendered_dir, resumed, "--max_train_steps", "6", "--checkpointing_steps", "2", "--use_ema",
                     "--resume_from_checkpoint", "latest")
    assert "Resuming from" in result.stdout + result.stderr
    assert sorted(p.name for p in resumed.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]  # continued at 5
    expected, actual = _weights(trained), _weights(resumed)  # EMA weights: EMA and optimizer state both restored
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_resume_at_the_last_step_exports_the_checkpoint_without_training(trained, rendered_dir, tmp_path):
    """checkpoint-4 is mid-epoch (6 batches per epoch): a resume there used to train one more step before saving."""
    exported = tmp_path / "exported"
    result = _launch(rendered_dir, exported, "--max_train_steps", "4", "--use_ema",
                     "--resume_from_checkpoint", str(trained / "checkpoint-4"))
    assert "Resuming from" in result.stdout + result.stderr
    assert not list(exported.glob("checkpoint-*"))  # no step taken, so nothing new to checkpoint
    ema = load_file(trained / "checkpoint-4" / "unet_ema" / "diffusion_pytorch_model.safetensors")
    unet = ICLEVRPipeline.from_pretrained(exported).unet
    for name, actual in unet.state_dict().items():
        assert torch.equal(actual, ema[name]), name  # untouched
    assert "| steps | 4 |" in (exported / "README.md").read_text()


def _popen(rendered_dir, output_dir, *flags):
    """A single-process run started like `_launch`'s (the same thread settings, so the same arithmetic), in a process
    group of its own for killpg."""
    return subprocess.Popen(_direct(rendered_dir, output_dir, *flags), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def test_sigkill_at_random_moments_then_resume_matches_uninterrupted_run(trained, rendered_dir, tmp_path):
    """Kill -9 the trainer at random moments, checkpoint writes included, resume each time."""
    out = tmp_path / "killed"
    flags = ["--max_train_steps", "6", "--checkpointing_steps", "1", "--use_ema"]
    rng = random.Random(0)
    kills = 0
    for _attempt in range(3):
        resume = ["--resume_from_checkpoint", "latest"] if latest_checkpoint(out) else []
        process = _popen(rendered_dir, out, *flags, *resume)
        deadline = time.time() + 120
        while process.poll() is None and time.time() < deadline and not list(out.glob("checkpoint-*")):
            time.sleep(0.02)  # wait for training to be under way: the first save has started
        time.sleep(rng.uniform(0.0, 0.3))
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            kills += 1
        process.wait()
        if (out / "model_index.json").exists():  # killed after the final save: what is there must load
            ICLEVRPipeline.from_pretrained(out)
        for folder in out.glob("checkpoint-*"):  # what a kill left: complete checkpoints, maybe one .partial folder
            assert folder.name.endswith(".partial") or (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file(), folder
    assert kills >= 1
    result = _launch(rendered_dir, out, *flags, "--resume_from_checkpoint", "latest")
    assert not list(out.glob("*.partial"))  # cleaned up
    expected, actual = _weights(trained), _weights(out)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert "Resuming from" in result.stdout + result.stderr


def test_one_writer_per_output_folder(rendered_dir, tmp_path):
    """A trainer holds its output folder's lock while it runs, and finishes and loads; a second run on a folder in use
    stops within seconds with one line naming the folder and the holder's PID; a SIGKILLed holder blocks nothing."""
    out = tmp_path / "shared"
    lock = tmp_path / "shared.writing.lock"
    first = _popen(rendered_dir, out, "--max_train_steps", "30", "--checkpointing_steps", "100000")
    while not (lock.is_file() and lock.read_text().strip()) and first.poll() is None:
        time.sleep(0.01)
    # Tried at once, in this process: no start-up to race with the trainer's run.
    with pytest.raises(SystemExit, match=f"{out} is being written by another run \\(PID {lock.read_text().strip()};"), \
            writer_lock(out):
        pass
    assert first.wait(timeout=300) == 0
    ICLEVRPipeline.from_pretrained(out)  # the first run's pipeline, whole

    with writer_lock(out):  # a run holding the folder, as the trainer did
        started = time.time()  # a single process needs no launcher (whose own traceback would follow the line)
        second = subprocess.run(_direct(rendered_dir, out, "--max_train_steps", "2"), cwd=ROOT, capture_output=True,
                                text=True, timeout=300)
    assert second.returncode != 0 and time.time() - started < 60, second.stderr[-2000:]
    assert f"{out} is being written by another run (PID {os.getpid()}" in second.stderr and "Traceback" not in second.stderr

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from iclevr.io import writer_lock\n"
                               "with writer_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)", str(out)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with writer_lock(out):  # the OS dropped the dead holder's lock
        pass


def test_a_truncated_checkpoint_is_skipped_and_training_continues_from_the_one_before(trained, rendered_dir, tmp_path):
    out = tmp_path / "damaged"
    shutil.copytree(trained, out)
    weights = out / "checkpoint-6" / "unet" / "diffusion_pytorch_model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])  # complete-looking, but cut
    result = _launch(rendered_dir, out, "--max_train_steps", "6", "--checkpointing_steps", "2", "--use_ema",
                     "--resume_from_checkpoint", "latest")
    log = result.stdout + result.stderr
    assert f"Skipping {out / 'checkpoint-6'}: unet/diffusion_pytorch_model.safetensors has {size // 2:,} bytes, the manifest " \
           f"says {size:,}" in log
    assert f"Resuming from {out / 'checkpoint-4'}" in log
    for key, value in _weights(trained).items():  # steps 5 and 6 trained again: the uninterrupted run's weights
        assert torch.equal(value, _weights(out)[key]), key
    for folder in out.glob("checkpoint-*"):  # and every checkpoint verifies again (6 was rewritten)
        assert (folder / "manifest.json").is_file()

    for folder in out.glob("checkpoint-*"):  # none verifies: one line, no traceback, nothing trained over them
        (folder / "manifest.json").write_text("{")
    refused = subprocess.run(_direct(rendered_dir, out, "--max_train_steps", "6", "--resume_from_checkpoint", "latest"), cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert f"No checkpoint in {out} verifies (checkpoint-4, checkpoint-6)" in refused.stderr


def test_partial_checkpoint_is_never_picked(trained, rendered_dir, tmp_path):
    out = tmp_path / "partial"
    out.mkdir()
    shutil.copytree(trained / "checkpoint-4", out / "checkpoint-4")
    (out / "checkpoint-5.partial").mkdir()  # a save killed half way: newer, but incomplete
    (out / "checkpoint-5.partial" / "model.safetensors").write_bytes(b"half")
    assert latest_checkpoint(out).name == "checkpoint-4"
    result = _launch(rendered_dir, out, "--max_train_steps", "6", "--checkpointing_steps", "2", "--use_ema",
                     "--resume_from_checkpoint", "latest")
    assert "Resuming from" in result.stdout + result.stderr and "checkpoint-4" in result.stdout + result.stderr
    assert not (out / "checkpoint-5.partial").exists() and "interrupted save" in result.stderr
    for key, value in _weights(trained).items():
        assert torch.equal(value, _weights(out)[key]), key


def test_interrupted_pipeline_save_never_loads_broken(tmp_path, monkeypatch):
    """Kill the final save between any two of its file moves: the folder holds the old pipeline or none, never a mix."""
    args = ddpm.parse_args([*TINY, "--output_dir", str(tmp_path)])
    scheduler = ddpm.build_noise_scheduler(args)
    old = ddpm.build_model(args)
    ddpm.save_pipeline(old, None, scheduler, args, tmp_path)
    new = ddpm.build_model(args)
    torch.nn.init.zeros_(new.conv_out.weight)
    real_replace = iclevr.io.os.replace
    moves = 4  # pipeline_iclevr.py, scheduler/, unet/, then model_index.json
    for crash_at in range(moves):
        calls = []

        def crashing_replace(src, dst, calls=calls, crash_at=crash_at):
            if len(calls) == crash_at:
                raise KeyboardInterrupt("killed")
            calls.append(dst)
            real_replace(src, dst)

        monkeypatch.setattr(iclevr.io.os, "replace", crashing_replace)
        with pytest.raises(KeyboardInterrupt):
            ddpm.save_pipeline(new, None, scheduler, args, tmp_path)
        monkeypatch.setattr(iclevr.io.os, "replace", real_replace)
        if (tmp_path / "model_index.json").exists():
            pytest.fail(f"a pipeline folder loads after a crash at move {crash_at}")  # only the final move adds it
        with pytest.raises((OSError, ValueError)):  # diffusers: no model_index.json
            ICLEVRPipeline.from_pretrained(tmp_path)
        ddpm.save_pipeline(old, None, scheduler, args, tmp_path)  # a completed save repairs it
        reloaded = ICLEVRPipeline.from_pretrained(tmp_path)
        assert torch.equal(reloaded.unet.conv_out.weight, old.conv_out.weight)
        assert not list(tmp_path.glob("*.partial"))
    assert len(calls) == moves - 1


def test_non_finite_weights_are_never_saved(tmp_path):
    args = ddpm.parse_args([*TINY, "--output_dir", str(tmp_path)])
    unet = ddpm.build_model(args)
    with torch.no_grad():
        unet.conv_in.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite weights"):
        ddpm.save_pipeline(unet, None, ddpm.build_noise_scheduler(args), args, tmp_path)
    assert not (tmp_path / "model_index.json").exists() and not (tmp_path / "unet").exists()


def test_exploding_run_stops_with_a_clear_error_and_keeps_good_checkpoints(rendered_dir, tmp_path):
    out = tmp_path / "explode"
    command = _command(rendered_dir, out, "--learning_rate", "1e35", "--lr_warmup_steps", "2", "--max_train_steps", "8",
                       "--checkpointing_steps", "1")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Non-finite loss" in result.stderr
    assert not (out / "model_index.json").exists()  # no pipeline saved from a broken run
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert checkpoints and all(not p.name.endswith(".partial") for p in checkpoints)
    for folder in checkpoints:
        assert all(torch.isfinite(t).all() for t in _weights(folder).values()), folder


@pytest.mark.parametrize(
    "flags",
    [[], ["--conditioning", "cross_attention", "--attention_levels", "0,1"],
     ["--conditioning", "both", "--attention_levels", "1,1", "--resnet_time_scale_shift", "scale_shift"],
     ["--time_embedding_dim", "64", "--resnet_time_scale_shift", "default"]],
    ids=["class_embedding", "cross_attention", "both", "embedding_width_64_additive"],
)
def test_reload_equals_in_memory_model(tmp_path, flags):
    args = ddpm.parse_args([*TINY, "--output_dir", str(tmp_path), *flags])
    unet = ddpm.build_model(args)
    scheduler = ddpm.build_noise_scheduler(args)
    ddpm.save_pipeline(unet, None, scheduler, args, tmp_path)
    reloaded = ICLEVRPipeline.from_pretrained(tmp_path)
    sample, conditions = torch.randn(2, 3, 16, 16), torch.eye(24)[:2]
    with torch.no_grad():
        expected = unet(sample, 10, **unet_condition_kwargs(unet.config, conditions)).sample
        actual = reloaded.unet(sample, 10, **unet_condition_kwargs(reloaded.unet.config, conditions)).sample
        null = reloaded.unet(sample, 10, **unet_condition_kwargs(reloaded.unet.config, torch.zeros_like(conditions))).sample
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(actual, null)  # the labels reach the output through the chosen route
    args.condition_dropout = 0.0  # with dropout both conditions could be nulled, leaving no gradient to check
    loss = ddpm.diffusion_loss(unet, scheduler, sample.clamp(-1, 1), conditions, args)
    loss.backward()
    assert unet.time_embedding.linear_2.out_features == args.time_embedding_dim
    if unet.class_embedding is not None:
        assert unet.class_embedding.linear_2.out_features == args.time_embedding_dim
    routes = {"class_embedding": ["class_embedding.linear_1"], "cross_attention": ["encoder_hid_proj"],
              "both": ["class_embedding.linear_1", "encoder_hid_proj"]}
    for module in routes[args.conditioning]:  # the label embedding is trained
        assert unet.get_submodule(module).weight.grad.abs().sum() > 0, module
    assert (tmp_path / "pipeline_iclevr.py").read_text() == (ROOT / "pipeline_iclevr.py").read_text()


def test_two_processes_train_and_save_once(rendered_dir, tmp_path):
    out = tmp_path / "ddp"
    result = _launch(rendered_dir, out, "--max_train_steps", "2", "--checkpointing_steps", "2", processes=2)
    assert (result.stdout + result.stderr).count("Saved the pipeline") == 1
    assert "| processes | 2 |" in (out / "README.md").read_text()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert sorted(p.name for p in (out / "checkpoint-2").glob("random_states_*.pkl")) == ["random_states_0.pkl", "random_states_1.pkl"]
    resumed = _launch(rendered_dir, out, "--max_train_steps", "4", "--checkpointing_steps", "2",
                      "--resume_from_checkpoint", "latest", processes=2)
    log = resumed.stdout + resumed.stderr
    assert "Resuming from" in log and log.count("Saved the pipeline") == 1 and "| steps | 4 |" in (out / "README.md").read_text()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"] and not list(out.glob("*.partial"))
    # Checkpoints hold the bare UNet's keys (no DDP "module." prefix), so one process resumes what two wrote.
    unet_keys = set(ICLEVRPipeline.from_pretrained(out).unet.state_dict())
    assert set(_weights(out / "checkpoint-4")) == unet_keys
    single = _launch(rendered_dir, out, "--max_train_steps", "5", "--resume_from_checkpoint", "latest")
    assert "Resuming from" in single.stdout + single.stderr and "| steps | 5 |" in (out / "README.md").read_text()


@pytest.mark.slow
def test_torch_compile_run_saves_portable_checkpoints(rendered_dir, tmp_path):
    """`--dynamo_backend inductor` (the trainer's flag): compiles, trains with EMA, validates and saves the bare model;
    an eager run resumes it."""
    out = tmp_path / "compiled"
    compiled = _launch(rendered_dir, out, "--max_train_steps", "2", "--checkpointing_steps", "2", "--validation_steps", "2",
                       "--validation_inference_steps", "2", "--use_ema", "--dynamo_backend", "inductor", timeout=900)
    assert "dynamo_backend=inductor" in compiled.stdout + compiled.stderr
    assert json.loads((out / "train_summary.json").read_text())["dynamo_backend"] == "inductor"
    pipeline = ICLEVRPipeline.from_pretrained(out)
    assert set(_weights(out / "checkpoint-2")) == set(pipeline.unet.state_dict())
    resumed = _launch(rendered_dir, out, "--max_train_steps", "3", "--resume_from_checkpoint", "latest", "--use_ema",
                      "--dynamo_backend", "no")
    assert "Resuming from" in resumed.stdout + resumed.stderr and "| steps | 3 |" in (out / "README.md").read_text()


@pytest.mark.parametrize("cuda, launched, expected", [(False, None, "no"), (True, None, "inductor"), (True, "NO", "inductor"),
                                                      (False, "INDUCTOR", "inductor"), (False, "NO", "no")])
def test_auto_dynamo_backend_follows_the_device_and_the_launcher(monkeypatch, cuda, launched, expected):
    """auto compiles with CUDA and keeps a CPU eager, unless `accelerate launch --dynamo_backend` asked for a backend."""
    from iclevr.utils import auto_dynamo_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    if launched is None:
        monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", launched)
    assert auto_dynamo_backend() == expected
    assert ddpm.parse_args(["--output_dir", "x"]).dynamo_backend == "auto"


def test_push_to_hub_uploads_the_pipeline_only_and_keeps_the_token_out(trained, tmp_path, monkeypatch):
    """Against a stand-in Hub: huggingface_hub's own upload_folder picks the files (the same ignore patterns as a real
    push); the stand-in records the repository it was asked to create and the files of the commit."""
    from huggingface_hub import HfApi, hf_api

    calls = {}

    class Repo:
        repo_id = "user/iclevr-ddpm"

    def create_repo(self, repo_id, exist_ok, private):
        calls["create"] = (repo_id, private, self.token)
        return Repo()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "_prepare_folder_deletions", lambda self, **kwargs: [])
    monkeypatch.setattr(HfApi, "_validate_yaml", lambda self, content, **kwargs: None)
    monkeypatch.setattr(hf_api, "is_xet_available", lambda: False)
    monkeypatch.setattr(HfApi, "create_commit", lambda self, **kwargs: calls.setdefault("commit", kwargs))
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    args = ddpm.parse_args([*TINY, "--output_dir", str(out), "--push_to_hub", "--hub_model_id", "user/iclevr-ddpm",
                            "--hub_token", "hf_SECRET123", "--hub_private_repo"])
    assert hub.push_to_hub(args) == "user/iclevr-ddpm"
    assert calls["create"] == ("user/iclevr-ddpm", True, "hf_SECRET123")
    uploaded = sorted(op.path_in_repo for op in calls["commit"]["operations"])
    assert uploaded == ["README.md", "model_index.json", "pipeline_iclevr.py", "samples.png", "scheduler/scheduler_config.json",
                        "train_summary.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"]
    for path in out.rglob("*"):
        if path.is_file():
            assert b"hf_SECRET123" not in path.read_bytes(), path


def test_save_pretrained_and_push_to_hub_upload_a_folder_that_loads_as_remote_code(trained, tmp_path, monkeypatch):
    """Against a stand-in Hub (huggingface_hub's create_repo and upload_folder, replaced by a folder per repository):
    ``save_pretrained(push_to_hub=True)`` uploads once pipeline_iclevr.py is in the folder, with the trainer's card,
    and what was uploaded loads with ``trust_remote_code=True``; ``push_to_hub()`` of the loaded pipeline likewise."""
    import diffusers.utils.hub_utils
    from diffusers import DiffusionPipeline

    import pipeline_iclevr

    hub_root, created = tmp_path / "hub", []

    class Repo:
        def __init__(self, repo_id):
            self.repo_id = repo_id

    def create_repo(repo_id, exist_ok=False, private=None, token=None):
        created.append((repo_id, private))
        return Repo(repo_id)

    def upload_folder(repo_id, folder_path, path_in_repo=None, **kwargs):
        shutil.copytree(folder_path, hub_root / repo_id, dirs_exist_ok=True)  # what the repository holds after the commit

    monkeypatch.setattr(pipeline_iclevr, "create_repo", create_repo)
    monkeypatch.setattr(diffusers.utils.hub_utils, "upload_folder", upload_folder)
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    pipe = ICLEVRPipeline.from_pretrained(out)
    pipe.save_pretrained(out, push_to_hub=True, repo_id="user/iclevr-ddpm", private=True)
    uploaded = hub_root / "user" / "iclevr-ddpm"
    assert created == [("user/iclevr-ddpm", True)] and (uploaded / "pipeline_iclevr.py").is_file()
    assert (uploaded / "README.md").read_text() == (trained / "README.md").read_text()  # the project's card, not a generic one
    remote = DiffusionPipeline.from_pretrained(uploaded, trust_remote_code=True)
    assert type(remote).__name__ == "ICLEVRPipeline"

    pipe.push_to_hub("user/pushed")
    pushed = hub_root / "user" / "pushed"
    assert (pushed / "pipeline_iclevr.py").is_file() and (pushed / "README.md").read_text() == (trained / "README.md").read_text()
    assert not list(pushed.glob("checkpoint-*"))  # the pipeline only, nothing of the run
    remote = DiffusionPipeline.from_pretrained(pushed, trust_remote_code=True)
    remote.set_progress_bar_config(disable=True)
    assert remote("red sphere", num_inference_steps=1, output_type="np").images.shape == (1, 16, 16, 3)


def test_fine_tuning_a_saved_pipeline_or_training_a_given_architecture(trained, rendered_dir, tmp_path):
    """--pretrained_model_name_or_path starts from the saved UNet (its resolution replaces the flag's); a step at a
    negligible rate leaves its weights; --model_config_name_or_path builds the same architecture, freshly initialised."""
    start = _weights(trained)
    tuned = tmp_path / "tuned"
    _launch(rendered_dir, tuned, "--pretrained_model_name_or_path", str(trained), "--resolution", "32",
            "--max_train_steps", "1", "--learning_rate", "1e-12", "--adam_weight_decay", "0")
    assert ICLEVRPipeline.from_pretrained(tuned).unet.config.sample_size == 16
    assert all(torch.allclose(start[k], v, atol=1e-6) for k, v in _weights(tuned).items())
    fresh = tmp_path / "fresh"
    _launch(rendered_dir, fresh, "--model_config_name_or_path", str(trained / "unet" / "config.json"), "--max_train_steps", "1",
            "--seed", "11")
    weights = _weights(fresh)
    assert weights.keys() == start.keys() and not all(torch.allclose(start[k], v, atol=1e-3) for k, v in weights.items())
    with pytest.raises(SystemExit):
        ddpm.parse_args([*TINY, "--output_dir", str(tmp_path / "x"), "--pretrained_model_name_or_path", str(tmp_path)])


def test_gradient_checkpointing_tf32_and_dataset_config_flags(tmp_path, monkeypatch):
    from iclevr.data import load_imagefolder
    from iclevr.run_setup import start_generator_run

    args = ddpm.parse_args([*TINY, "--output_dir", str(tmp_path / "out"), "--gradient_checkpointing", "--allow_tf32",
                            "--report_to", "none"])
    assert ddpm.build_model(args).is_gradient_checkpointing and not ddpm.build_model(ddpm.parse_args(TINY)).is_gradient_checkpointing
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    start_generator_run(args)
    assert torch.backends.cuda.matmul.allow_tf32
    seen = {}

    def load_dataset(*args, **kwargs):
        seen["args"] = args
        raise RuntimeError("stop here")

    monkeypatch.setattr("datasets.load_dataset", load_dataset)
    with pytest.raises(RuntimeError, match="stop here"):
        load_imagefolder(dataset_name="user/shapes", dataset_config_name="64px")
    assert seen["args"] == ("user/shapes", "64px")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--resolution", "17"], "must be divisible by 2"),
        (["--push_to_hub"], "--push_to_hub needs --hub_model_id"),
        (["--resume_from_checkpoint", "/nonexistent"], "is not a checkpoint folder"),
        (["--attention_levels", "1,1,1"], "one 0/1 per level"),
        (["--block_out_channels", "6,10"], "GroupNorm"),
        (["--condition_dropout", "1.0"], "--condition_dropout must be below 1"),
        (["--dataset_name", "a/b", "--train_data_dir", "x"], "not both"),
        (["--block_out_channels", "8,x"], "comma-separated integers"),
        (["--evaluator", "/nonexistent"], "does not exist"),
        (["--prediction_type", "x0"], "invalid choice"),
        (["--conditioning", "cross_attention", "--attention_levels", "0,0"], "needs at least one attention level"),
        (["--max_train_minutes", "0"], "argument --max_train_minutes: expected a finite number > 0"),
        (["--time_embedding_dim", "0"], "argument --time_embedding_dim: expected a positive integer"),
        (["--validation_num_seeds", "0"], "argument --validation_num_seeds: expected a positive integer"),
        (["--patch_size", "0"], "argument --patch_size: expected a positive integer"),
        (["--patch_size", "3"], "must be divisible by 6 (--patch_size 3"),
        (["--validation_scheduler", "heun"], "invalid choice"),
    ],
)
def test_bad_flags_fail_before_work(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        ddpm.parse_args([*TINY, "--output_dir", str(tmp_path / "never"), *flags])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_the_noise_schedule_shift_moves_every_log_snr_and_is_saved(tmp_path):
    """--logsnr_shift adds to the log-SNR at every step (default 2 ln(32 / resolution): none at 32x32, the recipe's
    tuned schedule), and the saved sampler carries the shifted schedule."""
    from diffusers import DPMSolverMultistepScheduler

    def log_snr(scheduler):
        alphas = scheduler.alphas_cumprod.double()
        return torch.log(alphas) - torch.log1p(-alphas)

    at32 = ddpm.parse_args(["--output_dir", str(tmp_path), "--resolution", "32", "--patch_size", "1"])
    assert at32.logsnr_shift == 0 and ddpm.build_noise_scheduler(at32).config.trained_betas is None
    base = log_snr(ddpm.build_noise_scheduler(at32))
    at64 = ddpm.parse_args(["--output_dir", str(tmp_path), "--resolution", "64", "--patch_size", "2"])
    assert at64.logsnr_shift == pytest.approx(-2 * math.log(2))
    shifted = ddpm.build_noise_scheduler(at64)
    away_from_the_cap = slice(0, 990)  # the last steps are capped at beta 0.999 in both schedules
    torch.testing.assert_close(log_snr(shifted)[away_from_the_cap], base[away_from_the_cap] - 2 * math.log(2),
                               atol=1e-3, rtol=0)
    at64.validation_scheduler = "dpm++"
    unet = ddpm.build_model(at64)
    assert (unet.config.sample_size, unet.config.in_channels, unet.config.out_channels) == (32, 12, 12)
    ddpm.save_pipeline(unet, None, shifted, at64, tmp_path)
    reloaded = ICLEVRPipeline.from_pretrained(tmp_path)
    assert isinstance(reloaded.scheduler, DPMSolverMultistepScheduler) and reloaded.config.patch_size == 2
    torch.testing.assert_close(reloaded.scheduler.alphas_cumprod, shifted.alphas_cumprod)
    reloaded.set_progress_bar_config(disable=True)
    assert reloaded([["red sphere"]], num_inference_steps=2, output_type="np").images.shape == (1, 64, 64, 3)


def test_timestep_densities_favour_the_middle_noise_levels(tmp_path):
    """Logit-normal timesteps by default; logit-normal and 'mode' put more of them in the middle third of the
    schedule than the uniform third, and `none` draws exactly torch's uniform integers."""
    counts = {}
    for scheme in ("none", "logit_normal", "mode"):
        args = ddpm.parse_args(["--output_dir", str(tmp_path), "--weighting_scheme", scheme])
        torch.manual_seed(0)
        t = ddpm.sample_timesteps(args, 20_000, 1000, "cpu")
        assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 999
        counts[scheme] = ((t >= 333) & (t < 667)).float().mean().item()
    assert ddpm.parse_args(["--output_dir", str(tmp_path)]).weighting_scheme == "logit_normal"
    torch.manual_seed(0)
    drawn = ddpm.sample_timesteps(ddpm.parse_args(["--output_dir", str(tmp_path), "--weighting_scheme", "none"]), 64, 1000, "cpu")
    torch.manual_seed(0)
    assert torch.equal(drawn, torch.randint(0, 1000, (64,)))
    assert counts["none"] == pytest.approx(1 / 3, abs=0.02)
    assert counts["logit_normal"] > 0.42 and counts["mode"] > 0.36


def test_foreground_weights_favour_objects(rendered_dir, tmp_path):
    from iclevr.data import load_train_dataset
    from iclevr.images import to_model_input

    args = ddpm.parse_args([*TINY, "--output_dir", str(tmp_path), "--resolution", "64", "--foreground_weight", "4"])
    dataset = load_train_dataset(train_data_dir=rendered_dir, resolution=64, cache_dir=tmp_path)
    images, _ = dataset_to_tensors(dataset)
    floor = ddpm.mean_image(images)
    pixels = to_model_input(images[:6])
    weights = ddpm.foreground_weights(pixels, floor, args.foreground_weight)
    assert weights.shape == (6, 1, 64, 64)
    torch.testing.assert_close(weights.mean(dim=(2, 3)), torch.ones(6, 1))
    departure = (pixels - floor).abs().amax(1, keepdim=True)
    objects, background = departure > 0.5, departure < 0.05  # clearly an object (or shadow) / clearly floor
    assert (weights[objects].mean() > 3 * weights[background].mean()) and objects.any() and background.any()


def test_time_budget_and_warmup_longer_than_the_schedule_are_reported(rendered_dir, tmp_path):
    result = _launch(rendered_dir, tmp_path / "out", "--max_train_steps", "50", "--max_train_minutes", "0.0001",
                     "--lr_warmup_steps", "60", "--resume_from_checkpoint", "latest")
    assert "No checkpoint in" in result.stdout and "starting a new run" in result.stdout  # latest with none: a fresh run
    assert "--max_train_minutes 0.0001 spent at step 1 of 50" in result.stderr and "schedule stops at" in result.stderr
    assert "--lr_warmup_steps 60 is not shorter than the 50-step schedule" in result.stderr
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert summary["steps"] == 1 and summary["seconds_per_step"] is None  # nothing timed past the warm-up step
    assert (tmp_path / "out" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_bare_model_strips_compile_and_ddp_without_touching_the_wrappers(tmp_path):
    """Accelerate's own unwrap of compile(DDP(model)) re-points the compiled wrapper at the bare model (no DDP, so no
    gradient sync afterwards); `bare_model` must return the bare model and leave the training wrapper as it was."""
    import torch.distributed as dist
    from accelerate.utils import extract_model_from_parallel

    from iclevr.utils import bare_model

    class Unwrapper:  # what bare_model uses of an Accelerator, without touching Accelerate's global state
        unwrap_model = staticmethod(extract_model_from_parallel)

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = torch.nn.Linear(2, 2)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        compiled = torch.compile(ddp)  # lazy: nothing compiles unless called
        assert bare_model(Unwrapper(), compiled) is model and compiled._orig_mod is ddp
        assert bare_model(Unwrapper(), ddp) is model and bare_model(Unwrapper(), model) is model
        extract_model_from_parallel(compiled)  # the default keeps the compile wrapper, and rewires it:
        assert compiled._orig_mod is model
    finally:
        dist.destroy_process_group()


def test_runs_sharing_a_cache_render_the_embedded_set_once(tmp_path, monkeypatch):
    """Two runs started together on one cache (a sweep): one renders, the other waits for it and reads the same set,
    instead of both rendering and the second replacing the folder the first is decoding."""
    renders, real_render = [], ddpm.render_dataset

    def slow_render(*args, **kwargs):  # both runs pass the "is it rendered?" check before either finishes rendering
        renders.append(args[0])
        time.sleep(0.5)
        real_render(*args, **(kwargs | {"num_workers": 1}))

    monkeypatch.setattr(ddpm, "render_dataset", slow_render)
    args = ddpm.parse_args([*TINY, "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"),
                            "--embedded_num_scenes", "4"])
    accelerator = Accelerator(cpu=True)
    datasets = run_side_by_side(lambda: ddpm.load_training_data(args, accelerator)[0])
    assert len(renders) == 1
    assert datasets[0]["file_name"] == datasets[1]["file_name"] and len(datasets[0]) == 12


def test_a_course_folder_trains_the_label_only_model_scored_by_the_course_checkpoint(rendered_dir, tmp_path):
    """The real-data path: a folder in the course's layout (PNGs and train.json, no scenes, views or layouts) trains
    the label-only model, and the course's checkpoint.pth (a torchvision ResNet-18 state dict) scores its validation."""
    from .test_evaluator import TorchvisionLayoutResNet18

    course = tmp_path / "iclevr"
    course.mkdir()
    train = json.loads((rendered_dir / "train.json").read_text())
    for name in train:
        shutil.copy(rendered_dir / name, course / name)
    (course / "train.json").write_text(json.dumps(train))
    torch.save({"model": TorchvisionLayoutResNet18().state_dict()}, tmp_path / "checkpoint.pth")
    out = tmp_path / "out"
    _launch(course, out, "--max_train_steps", "2", "--validation_steps", "2", "--validation_inference_steps", "2",
            "--evaluator", str(tmp_path / "checkpoint.pth"))
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["layouts"] is False and summary["steps"] == 2
    assert 0.0 <= summary["validation"]["accuracy"] <= 1.0 and summary["validation"]["step"] == 2
    pipe = ICLEVRPipeline.from_pretrained(out)
    assert pipe.unet.config.in_channels == 3  # no layout map beside the noisy image
    assert pipe(["red sphere"], num_inference_steps=2, output_type="pt").images.shape == (1, 3, 16, 16)


def test_a_failed_upload_names_the_repository_keeps_the_folder_and_a_retry_uploads_it_whole(trained, tmp_path, monkeypatch):
    """The stand-in Hub drops the connection half-way through the first upload (as a commit, nothing lands), then
    works: the error names the repository and how to retry, the local folder is byte-for-byte the same and loads, and
    the retry uploads every file."""
    import diffusers.utils.hub_utils

    import pipeline_iclevr

    hub_root, attempts = tmp_path / "hub", []

    class Repo:
        def __init__(self, repo_id):
            self.repo_id = repo_id

    def upload_folder(repo_id, folder_path, path_in_repo=None, **kwargs):
        files = sorted(p for p in Path(folder_path).rglob("*") if p.is_file())
        attempts.append((repo_id, {p.relative_to(folder_path) for p in files}))
        staged = tmp_path / "staged" / str(len(attempts))
        for path in files[: len(files) // 2]:  # half the files sent ...
            (staged / path.relative_to(folder_path)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, staged / path.relative_to(folder_path))
        if len(attempts) == 1:
            raise ConnectionError("Connection reset by peer")  # ... then the connection drops: no commit
        shutil.copytree(folder_path, hub_root / repo_id, dirs_exist_ok=True)

    monkeypatch.setattr(pipeline_iclevr, "create_repo", lambda repo_id, **kwargs: Repo(repo_id))
    monkeypatch.setattr(diffusers.utils.hub_utils, "upload_folder", upload_folder)
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    pipe = ICLEVRPipeline.from_pretrained(out)
    with pytest.raises(pipeline_iclevr.HubUploadError) as info:
        pipe.push_to_hub("user/iclevr-ddpm")
    message = str(info.value)
    assert "user/iclevr-ddpm" in message and "Connection reset by peer" in message and "push_to_hub('user/iclevr-ddpm')" in message
    assert not (hub_root / "user" / "iclevr-ddpm").exists()  # nothing landed
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    ICLEVRPipeline.from_pretrained(out)  # the local folder still loads
    pipe.push_to_hub("user/iclevr-ddpm")  # the retry
    uploaded = hub_root / "user" / "iclevr-ddpm"
    assert [repo for repo, _ in attempts] == ["user/iclevr-ddpm"] * 2 and attempts[0][1] == attempts[1][1]  # whole again
    assert {p.relative_to(uploaded) for p in uploaded.rglob("*") if p.is_file()} == attempts[1][1]
    assert (uploaded / "README.md").read_text() == (out / "README.md").read_text()


def test_the_trainers_failed_push_says_how_to_upload_the_saved_folder(trained, tmp_path, monkeypatch):
    """``--push_to_hub`` when the Hub answers 503: the message names the repository and the `hf upload` command."""
    from huggingface_hub import HfApi

    import pipeline_iclevr

    def unavailable(self, **kwargs):
        raise OSError("503 Server Error: Service Unavailable")

    class Repo:
        repo_id = "user/iclevr-ddpm"

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, exist_ok, private: Repo())
    monkeypatch.setattr(HfApi, "upload_folder", unavailable)
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    args = ddpm.parse_args([*TINY, "--output_dir", str(out), "--push_to_hub", "--hub_model_id", "user/iclevr-ddpm"])
    with pytest.raises(pipeline_iclevr.HubUploadError, match="503 Server Error") as info:
        hub.push_to_hub(args)
    assert f"hf upload user/iclevr-ddpm {out} . --exclude \"checkpoint-*\"" in str(info.value)
    ICLEVRPipeline.from_pretrained(out)
