# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""The whole job in one command: data -> evaluator -> `accelerate launch` training -> saved pipeline -> report.

    python main_job.py --output_dir outputs/main

1. **Evaluator**: ``--evaluator`` if given; else the one shipped in ``pretrained/evaluator`` (trained with
   ``EVALUATOR_RECIPE``); with ``--retrain_evaluator``, the one cached in ``<cache_dir>/evaluator-<recipe>`` from an
   earlier run, else it renders its training set (64x64) and trains it once with ``accelerate launch train_evaluator.py``.
2. **Diffusion model**: a 40-step calibration run of the trainer measures this machine's seconds per step (and
   renders the embedded training set on first use); then ``accelerate launch train_conditional_ddpm.py`` (on a CPU
   with the project's ``accelerate_config.yaml``, on CUDA one process per GPU) with ``--recipe`` (on a CPU the
   trainer's default; with CUDA the GPU recipe: 64x64, a larger UNet), its
   schedule sized to what fits ``--train_minutes`` here (written to ``plan.json``), the course accuracy logged during
   training. Mixed precision follows the hardware (``--mixed_precision auto``). The same command after a kill resumes:
   the evaluator is cached, and training continues from its last checkpoint with the planned schedule.
3. **Report**: ``evaluate_pipeline.py`` over the course's test.json and new_test.json (shipped in
   ``iclevr/conditions/``) and the project's synthetic set, ``--num_seeds`` seeds, next to rendered / floor / noise
   reference rows; with ``--panel_dir``, the panel read beside the course evaluator's figures.

Each stage is a subprocess of the entry points a user would run by hand, so what this runs is what the README
documents. Stage times and the headline figures go to ``<output_dir>/main_job.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from filelock import FileLock

from iclevr.argtypes import check_output_folder, positive_float, positive_int
from iclevr.checkpoints import latest_checkpoint
from iclevr.cli import run
from iclevr.data import cache_root
from iclevr.ddpm import DEFAULT_LR_WARMUP_STEPS
from iclevr.evaluator import SHIPPED_EVALUATOR, shipped_evaluator
from iclevr.io import writer_lock
from iclevr.labels import COURSE_TEST
from iclevr.panel import check_panel_dir
from iclevr.utils import auto_mixed_precision

PROJECT_DIR = Path(__file__).resolve().parent
# What the main job adds to the trainer's defaults: EMA weights (and --mixed_precision, chosen per machine).
TRAIN_RECIPE = ["--use_ema"]
# What --recipe gpu adds on top: a 4-level UNet at full resolution (no space-to-depth stem), twice as wide with two
# layers per level, self-attention below the top level and one cross-attention token per label, a larger batch at a
# lower rate: the width and tokens a GPU affords (docs/experiments.md, "GPU recipe"), with uniform timesteps.
GPU_RECIPE = ["--resolution", "64", "--patch_size", "1", "--block_out_channels", "64,128,256,256", "--layers_per_block", "2",
              "--attention_levels", "0,1,1,1", "--conditioning", "both", "--train_batch_size", "128", "--learning_rate", "3e-4",
              "--weighting_scheme", "none"]
# The default recipe's warm-up share of its schedule (200 of 5,000 steps), kept when the schedule is shortened.
WARMUP_SHARE = 0.04
# Steps of the calibration run that measures this machine's training speed (the first is excluded as warm-up; 40
# average out the step-to-step noise of a shared machine).
CALIBRATION_STEPS = 40
# The evaluator trained when none is given: evaluator run 5 (90,000 rendered 64x64 images, 9 epochs, each image
# scored with its mirror image), the cheapest recipe measured to reach both targets, held-out accuracy 0.99 and
# exact-set 0.95 on 3-object scenes (6 epochs reach the first only; docs/experiments.md, "Evaluator runs").
# Saved in half precision, which halves the shipped file and keeps both targets (pretrained/README.md).
EVALUATOR_RECIPE = {"num_scenes": 30000, "seed": 1, "num_epochs": 9, "train_batch_size": 128, "flip_average": True,
                    "save_dtype": "float16", "render_style": "iclevr", "appearance_augment": True}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Render, train the evaluator (once), train the diffusion model, report.")
    parser.add_argument("--output_dir", type=str, default="outputs/main", help="Where the pipeline and report go.")
    parser.add_argument("--evaluator", type=str, default=None,
                        help="Evaluator folder or course checkpoint.pth (default: the shipped pretrained/evaluator).")
    parser.add_argument("--retrain_evaluator", action="store_true",
                        help="Train the evaluator with the shipped one's recipe instead of using it (cached for later runs; "
                             "about 75 minutes on 2 native-bf16 cores, rendering included; several hours on AVX2-only ones).")
    parser.add_argument("--cache_dir", type=str, default=None, help="Rendered data and the trained evaluator are cached here.")
    parser.add_argument("--train_minutes", type=positive_float, default=57.0,
                        help="Wall-time budget of diffusion training (validation excluded); a first run's evaluator adds to "
                             "the job's time, not to this. The schedule is sized to what fits it on this machine.")
    parser.add_argument("--max_train_steps", type=positive_int, default=None,
                        help="Cap on the schedule's steps (default: as many as a calibration run shows fit --train_minutes).")
    parser.add_argument("--validation_steps", type=positive_int, default=500, help="Course accuracy logged every N training steps.")
    parser.add_argument("--num_seeds", type=positive_int, default=3, help="Sampling seeds of the report (mean ± std).")
    parser.add_argument("--panel_dir", type=str, default=None,
                        help="A panel of other models' i-CLEVR pictures with the course evaluator's figures: the report reads it "
                             "too, to show how far the evaluator is from the course's (evaluate_pipeline.py --panel_dir).")
    parser.add_argument("--accelerate_config", type=str, default=None,
                        help="accelerate config for both training stages (default: on a CPU the project's, one process with "
                             "every core; with CUDA GPUs one process per GPU).")
    parser.add_argument("--mixed_precision", type=str, default="auto", choices=["auto", "no", "fp16", "bf16"],
                        help="Mixed precision of both training stages. auto: bf16 on a GPU that supports it (else fp16) and on "
                             "a CPU with native bf16 (AMX / AVX512-BF16), fp32 on other CPUs (where bf16 is emulated and "
                             "many times slower).")
    parser.add_argument("--recipe", type=str, default="auto", choices=["auto", "cpu", "gpu"],
                        help="The diffusion recipe: cpu is the trainer's default (64x64 through a space-to-depth stem, "
                             "3.6M parameters, layouts where the data has them, tuned for a CPU hour); gpu a larger UNet at "
                             "full resolution with label tokens (GPU_RECIPE); auto picks gpu where CUDA is available.")
    parser.add_argument("--train_args", type=str, default="", help="Extra flags for train_conditional_ddpm.py (after the recipe's), quoted as one string.")
    args = parser.parse_args(argv)
    check_output_folder(parser, args.output_dir, "--output_dir")
    check_output_folder(parser, args.cache_dir, "--cache_dir")
    if args.evaluator and not Path(args.evaluator).exists():
        parser.error(f"--evaluator {args.evaluator} does not exist.")
    if args.evaluator and args.retrain_evaluator:
        parser.error("--evaluator and --retrain_evaluator are exclusive: give your evaluator, or have one trained.")
    if args.accelerate_config and not Path(args.accelerate_config).is_file():
        parser.error(f"--accelerate_config {args.accelerate_config} does not exist.")
    if args.mixed_precision == "auto":
        args.mixed_precision = auto_mixed_precision()
    if args.recipe == "auto":
        args.recipe = "gpu" if torch.cuda.is_available() else "cpu"
    check_panel_dir(parser, args.panel_dir)
    for name in ("output_dir", "evaluator", "cache_dir", "accelerate_config", "panel_dir"):  # the stages run in the project folder
        if getattr(args, name):
            setattr(args, name, str(Path(getattr(args, name)).resolve()))
    return args


def run_stage(name: str, command: list[str], timings: dict) -> None:
    """Run one stage as a subprocess (output streamed), time it, stop the job if it fails."""
    print(f"\n=== {name}: {shlex.join(command)}", flush=True)
    start = time.time()
    result = subprocess.run(command, cwd=PROJECT_DIR)
    timings[name] = round(time.time() - start, 1)
    if result.returncode != 0:
        raise SystemExit(f"Stage '{name}' failed (exit code {result.returncode}); earlier stages' outputs are kept.")


def launch(args, script: str) -> list[str]:
    """``accelerate launch`` of an entry point on the device at hand: ``--accelerate_config`` when given; else with CUDA
    one process per GPU; else the project's CPU config (one process with every core: a bare launch on a CPU pins
    one thread)."""
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if args.accelerate_config:
        command += ["--config_file", args.accelerate_config]
    elif torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        command += ["--num_machines", "1", "--num_processes", str(gpus), *(["--multi_gpu"] if gpus > 1 else []),
                    "--dynamo_backend", "no"]
    else:
        command += ["--config_file", str(PROJECT_DIR / "accelerate_config.yaml")]
    # --quiet: a failing stage shows its own one-line error, without the launcher's CalledProcessError traceback after it.
    return command + ["--quiet", str(PROJECT_DIR / script)]


def ensure_evaluator(args, cache: Path, timings: dict) -> Path:
    """The given evaluator, else the shipped one; with ``--retrain_evaluator`` the cached one or a freshly trained one
    (cached for the next run)."""
    if args.evaluator:
        return Path(args.evaluator)
    if not args.retrain_evaluator:
        if shipped_evaluator() is None:
            raise SystemExit(f"The shipped evaluator {SHIPPED_EVALUATOR} is missing: restore it (git checkout -- pretrained), "
                             "give --evaluator DIR, or train one with --retrain_evaluator.")
        print(f"Using the shipped evaluator {SHIPPED_EVALUATOR}")
        return SHIPPED_EVALUATOR
    recipe = EVALUATOR_RECIPE
    folder = evaluator_folder(cache, recipe)
    cache.mkdir(parents=True, exist_ok=True)
    # A second job on the same cache waits here for the first one's evaluator instead of rendering its data again
    # (replacing the folder the first one is reading) and training a second copy.
    with FileLock(f"{folder}.lock"):
        if (folder / "model.safetensors").is_file():
            print(f"Using the cached evaluator {folder}")
            return folder
        data = cache / f"evaluator-data-{recipe['render_style']}-seed{recipe['seed']}-scenes{recipe['num_scenes']}"
        if not (data / "train.json").is_file():
            run_stage("render evaluator data", [sys.executable, str(PROJECT_DIR / "render_iclevr.py"), "--output_dir", str(data),
                                                "--num_scenes", str(recipe["num_scenes"]), "--seed", str(recipe["seed"]),
                                                "--width", "64", "--height", "64", "--render_style", recipe["render_style"],
                                                "--overwrite"], timings)
        run_stage("train evaluator", launch(args, "train_evaluator.py") + [
            "--train_data_dir", str(data), "--cache_dir", str(cache), "--output_dir", str(folder),
            "--num_epochs", str(recipe["num_epochs"]), "--train_batch_size", str(recipe["train_batch_size"]),
            "--mixed_precision", args.mixed_precision, "--report_to", "none", "--save_dtype", recipe.get("save_dtype", "float32"),
            *(["--flip_average"] if recipe.get("flip_average") else []),
            "--appearance_augment" if recipe.get("appearance_augment") else "--no-appearance_augment"], timings)
    return folder


def evaluator_folder(cache: Path, recipe: dict) -> Path:
    """The cache folder of the evaluator an ``EVALUATOR_RECIPE`` trains: named by every setting that changes it, so a
    changed recipe trains a new one instead of reusing an evaluator trained another way."""
    name = f"evaluator-{recipe['render_style']}-seed{recipe['seed']}-scenes{recipe['num_scenes']}-epochs{recipe['num_epochs']}"
    name += "-flip" if recipe.get("flip_average") else ""
    name += "-appearance" if recipe.get("appearance_augment") else ""
    return cache / (name + ("-fp16" if recipe.get("save_dtype") == "float16" else ""))


def recipe_flags(args) -> list[str]:
    """The trainer flags of ``--recipe`` (then ``--train_args``, which may override any of them)."""
    return [*TRAIN_RECIPE, *(GPU_RECIPE if args.recipe == "gpu" else []), *shlex.split(args.train_args)]


def calibrate(args, cache: Path, out: Path, timings: dict) -> float:
    """Seconds per training step of the recipe on this machine, from a short run of the trainer itself (which also
    renders the embedded data on first use, so that the real run starts training at once)."""
    folder = out / "calibration"
    shutil.rmtree(folder, ignore_errors=True)  # left by an interrupted job: never resumed, never mixed in
    run_stage("calibrate", launch(args, "train_conditional_ddpm.py") + [
        "--output_dir", str(folder), "--cache_dir", str(cache), "--max_train_steps", str(CALIBRATION_STEPS),
        "--mixed_precision", args.mixed_precision, *recipe_flags(args),
        "--lr_warmup_steps", "1"], timings)  # the rate does not change the speed; this only quiets the warm-up warning
    seconds = json.loads((folder / "train_summary.json").read_text())["seconds_per_step"]
    shutil.rmtree(folder)
    return seconds


def schedule_steps(args, seconds_per_step: float) -> int:
    """The schedule's length: the steps this machine trains in ``--train_minutes`` (``seconds_per_step`` from the
    calibration run), capped by ``--max_train_steps``, so a faster machine trains a longer schedule in the same minutes
    and the learning rate decays to its end instead of being cut off by the clock."""
    steps = max(1, int(args.train_minutes * 60 / seconds_per_step))
    return min(steps, args.max_train_steps) if args.max_train_steps else steps


def plan_training(args, cache: Path, out: Path, timings: dict) -> dict:
    """The diffusion schedule. A job stopped during training (its plan and a checkpoint are in ``out``) resumes with
    the schedule it planned, uncalibrated; otherwise a calibration run sizes it, and the plan is written first."""
    path = out / "plan.json"
    request = {key: getattr(args, key) for key in ("train_minutes", "max_train_steps", "recipe", "train_args", "mixed_precision")}
    if path.is_file() and latest_checkpoint(out / "pipeline") is not None:
        plan = json.loads(path.read_text())
        if plan["request"] != request:
            raise SystemExit(f"{out} holds a stopped job planned with {plan['request']}, not {request}: rerun it with those "
                             "settings to resume it, or give another --output_dir.")
        print(f"Resuming the stopped job in {out}: {plan['max_train_steps']} steps, as planned.")
        return plan
    seconds = calibrate(args, cache, out, timings)
    steps = schedule_steps(args, seconds)
    plan = {"request": request, "calibrated_seconds_per_step": round(seconds, 4), "max_train_steps": steps,
            "warmup_flags": warmup_flags(args, steps)}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan, indent=2))
    return plan


def warmup_flags(args, steps: int) -> list[str]:
    """The trainer's default warm-up, capped at the recipe's share of the schedule (200 of 5,000 steps), so a shorter
    run keeps the recipe's shape instead of spending most of its steps warming up; none when ``--train_args`` gives one."""
    if any(flag.split("=")[0] == "--lr_warmup_steps" for flag in shlex.split(args.train_args)):
        return []
    return ["--lr_warmup_steps", str(max(1, min(DEFAULT_LR_WARMUP_STEPS, round(steps * WARMUP_SHARE))))]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with writer_lock(args.output_dir):
        return run_job(args)


def run_job(args: argparse.Namespace) -> dict:
    """The stages, in order (`main`, under the output folder's lock)."""
    start = time.time()
    out = Path(args.output_dir)
    cache = cache_root(args.cache_dir)
    timings: dict[str, float] = {}
    evaluator = ensure_evaluator(args, cache, timings)
    plan = plan_training(args, cache, out, timings)
    pipeline = out / "pipeline"
    run_stage("train diffusion model", launch(args, "train_conditional_ddpm.py") + [
        "--output_dir", str(pipeline), "--cache_dir", str(cache), "--evaluator", str(evaluator),
        "--validation_steps", str(args.validation_steps), "--max_train_steps", str(plan["max_train_steps"]),
        "--max_train_minutes", f"{args.train_minutes:g}", "--mixed_precision", args.mixed_precision,
        "--validation_conditions_json", str(COURSE_TEST), "--resume_from_checkpoint", "latest",
        *recipe_flags(args), *plan["warmup_flags"]], timings)
    run_stage("report", [sys.executable, str(PROJECT_DIR / "evaluate_pipeline.py"), "--pipeline", str(pipeline),
                         "--evaluator", str(evaluator), "--output_dir", str(out / "report"), "--num_seeds", str(args.num_seeds),
                         *(["--panel_dir", args.panel_dir] if args.panel_dir else [])], timings)
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    summary = {"wall_seconds": round(time.time() - start, 1), "stage_seconds": timings, "evaluator": str(evaluator),
               "mixed_precision": args.mixed_precision, "recipe": args.recipe,
               "train_minutes_budget": args.train_minutes, "calibrated_seconds_per_step": plan["calibrated_seconds_per_step"],
               "max_train_steps": plan["max_train_steps"],
               "accuracy": {name: result["accuracy"] for name, result in metrics["sets"].items()},
               "objects_read_in_their_boxes": {name: result["obeyed"] for name, result in metrics.get("layouts", {}).items()},
               "conditions_json": {name: result["conditions_json"] for name, result in metrics["sets"].items()}}
    (out / "main_job.json").write_text(json.dumps(summary, indent=2))
    print(f"\nDone in {summary['wall_seconds'] / 60:.1f} min: {json.dumps(summary['accuracy'])}\nReport: {out / 'report' / 'report.md'}")
    return summary


if __name__ == "__main__":
    run(main)  # the project's own errors as one line (iclevr.cli)
