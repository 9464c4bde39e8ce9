# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""What every trainer here shares: the Accelerator set-up, the learning-rate schedule, resumable checkpoints and the
wall-time budget. Each exists once, so the diffusion trainer and the evaluator trainer behave alike."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, broadcast, set_seed
from diffusers.optimization import get_scheduler

from iclevr.data import SYNTHETIC_TEST, check_data_source, load_conditions
from iclevr.io import move_into, partial_folder, partial_path, remove_partial_saves, replace_folder
from iclevr.metrics import mean_std, total_misses
from iclevr.utils import auto_dynamo_backend, image_grid, multi_process_cpu_launch, slow_bf16_warning
from pipeline_iclevr import LabelVocabulary

logger = logging.getLogger(__name__)


def int_list(text: str) -> list[int]:
    """argparse type of a comma-separated list of integers (``32,64,128``)."""
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


# --- the flags every generator trainer shares ----------------------------------------------------------------------
def add_length_args(group) -> None:
    """Batch size and the length of a run: epochs, steps or a wall-time budget."""
    group.add_argument("--train_batch_size", type=int, default=64, help="Batch size per process.")
    group.add_argument("--num_epochs", type=int, default=10, help="Epochs (ignored when --max_train_steps is set).")
    group.add_argument("--max_train_steps", type=int, default=None, help="Total optimiser steps; overrides --num_epochs.")
    group.add_argument("--max_train_minutes", type=float, default=None,
                       help="Stop after this much training wall time (validation excluded), then save as usual: a fixed time budget.")


def add_precision_ema_args(group, ema_max_decay: float, compiles: bool = True) -> None:
    """Mixed precision, the Dynamo backend (when the trainer's models ``compiles``), the seed, and the EMA of the
    weights (diffusers' `EMAModel` warm-up)."""
    group.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"], help="Mixed precision (default: Accelerate's config).")
    if compiles:
        group.add_argument("--dynamo_backend", type=str, default="auto", choices=["auto", "no", "inductor"],
                           help="torch.compile the trained models through Accelerate. auto: the backend `accelerate launch "
                                "--dynamo_backend` names, else inductor with CUDA, where compiled steps were faster, and no on "
                                "a CPU, where the few per cent they save barely repay the compile within an hour (docs/experiments.md).")
    group.add_argument("--seed", type=int, default=0, help="Random seed; a run with the same seed is reproducible on CPU.")
    group.add_argument("--use_ema", action="store_true", help="Keep an exponential moving average of the weights and save it.")
    group.add_argument("--ema_max_decay", type=float, default=ema_max_decay, help="Maximum EMA decay.")
    group.add_argument("--ema_inv_gamma", type=float, default=1.0, help="EMA warm-up inverse multiplicative factor.")
    group.add_argument("--ema_power", type=float, default=0.75, help="EMA warm-up exponent.")


def add_run_args(group, output_dir: str, project_name: str) -> None:
    """Output, checkpoints, trackers, validation with the evaluator, and the Hub."""
    group.add_argument("--output_dir", type=str, default=output_dir, help="Where checkpoints and the pipeline are written.")
    group.add_argument("--checkpointing_steps", type=int, default=500, help="Save a resumable checkpoint every N steps.")
    group.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep at most this many checkpoints.")
    group.add_argument("--resume_from_checkpoint", type=str, default=None, help="'latest' (starts fresh when there is none, so a rerun command resumes) or a checkpoint folder to resume from.")
    group.add_argument("--report_to", type=str, default="tensorboard", choices=["tensorboard", "wandb", "none"], help="Experiment tracker (none: no tracker).")
    group.add_argument("--tracker_project_name", type=str, default=project_name, help="Project name the tracker files the run under.")
    group.add_argument("--logging_dir", type=str, default="logs", help="Tracker folder, relative to --output_dir.")
    group.add_argument("--validation_steps", type=int, default=None, help="Sample the validation conditions every N steps (and at the end).")
    group.add_argument("--validation_conditions_json", type=str, default=str(SYNTHETIC_TEST), help="Conditions sampled at validation (test.json format; default: the project's synthetic set).")
    group.add_argument("--validation_num_seeds", type=int, default=1,
                       help="Sampling seeds per validation (--seed, --seed+1, ...): the accuracy logged is their mean, as in "
                            "the report; one seed on 32 conditions is noisy.")
    group.add_argument("--evaluator", type=str, default=None, help="Evaluator folder or course checkpoint.pth: log the course accuracy at validation.")
    group.add_argument("--push_to_hub", action="store_true", help="Upload the pipeline (no checkpoints) to the Hub at the end.")
    group.add_argument("--hub_model_id", type=str, default=None, help="Hub repository, e.g. user/iclevr-ddpm.")
    group.add_argument("--hub_token", type=str, default=None, help="Hub token (else the logged-in one); never logged or saved.")
    group.add_argument("--hub_private_repo", action="store_true", help="Create the Hub repository as private.")


def check_run_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject impossible values of the shared flags before any work starts."""
    for name in ("train_batch_size", "checkpointing_steps", "num_epochs", "validation_num_seeds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be positive.")
    for name in ("max_train_steps", "max_train_minutes", "validation_steps"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive.")
    if args.dataset_name or args.train_data_dir or args.train_json:  # else the embedded set
        try:
            check_data_source(args.dataset_name, args.train_data_dir, args.train_json)
        except ValueError as error:
            parser.error(str(error))
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id (e.g. user/iclevr-ddpm).")
    if args.resume_from_checkpoint and args.resume_from_checkpoint != "latest" and not Path(args.resume_from_checkpoint).is_dir():
        parser.error(f"--resume_from_checkpoint {args.resume_from_checkpoint} is not a checkpoint folder (or use 'latest').")
    if args.validation_steps is not None and not Path(args.validation_conditions_json).is_file():
        parser.error(f"--validation_conditions_json {args.validation_conditions_json} does not exist.")
    if args.evaluator and not Path(args.evaluator).exists():
        parser.error(f"--evaluator {args.evaluator} does not exist.")


def setup_accelerator(seed: int, **accelerator_kwargs) -> Accelerator:
    """The Accelerator of a training run, then logging, a warning for emulated bf16, and the seed.

    ``cpu=True`` whenever several processes run without a GPU: only then does Accelerate form a gloo process group;
    otherwise each process would train alone and write every file N times.
    """
    accelerator = Accelerator(cpu=multi_process_cpu_launch(), **accelerator_kwargs)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if (warning := slow_bf16_warning(accelerator.mixed_precision, accelerator.device)) and accelerator.is_main_process:
        logger.warning(warning)
    set_seed(seed)
    return accelerator


def start_generator_run(args: argparse.Namespace, **accelerator_kwargs) -> Accelerator:
    """The Accelerator of a generator trainer's run (`setup_accelerator` with the shared flags: seedable sampler, the
    tracker under ``--output_dir/--logging_dir``, ``--dynamo_backend`` resolved), and the output folder, cleared of what
    an interrupted save left."""
    output_dir = Path(args.output_dir)
    # A trainer without the flag never compiles, whatever `accelerate launch` says (the GAN's spectral norm updates
    # its power-iteration vectors in place, which a compiled backward refuses).
    requested = getattr(args, "dynamo_backend", "no")
    backend = auto_dynamo_backend() if requested == "auto" else requested
    accelerator = setup_accelerator(
        args.seed, mixed_precision=args.mixed_precision, log_with=None if args.report_to == "none" else args.report_to,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)),
        dynamo_backend=backend, **accelerator_kwargs)
    if backend != "no":
        accelerator.print(f"torch.compile through Accelerate (dynamo_backend={backend}): the first steps compile the models.")
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        for folder in remove_partial_saves(output_dir):
            logger.warning(f"Removed {folder}, left by an interrupted save.")
    return accelerator


def start_trackers_and_evaluator(args: argparse.Namespace, accelerator: Accelerator):
    """The tracker (``--report_to``, the flags as its config, never the Hub token) and, on the main process, the
    ``--evaluator`` that scores validation; returns the evaluator (None elsewhere or without one)."""
    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers(args.tracker_project_name, config={k: str(v) for k, v in vars(args).items() if k != "hub_token"})
    if not (args.evaluator and accelerator.is_main_process):
        return None
    from iclevr.evaluator import Evaluator

    return Evaluator.from_pretrained(args.evaluator, device=accelerator.device)


def resume_step(args: argparse.Namespace, accelerator: Accelerator) -> int:
    """Load ``--resume_from_checkpoint`` (``latest``: the newest complete checkpoint, or a fresh start when there is
    none) with ``accelerator.load_state``; returns the step it was saved at (0 for a fresh start)."""
    if not args.resume_from_checkpoint:
        return 0
    path = latest_checkpoint(args.output_dir) if args.resume_from_checkpoint == "latest" else Path(args.resume_from_checkpoint)
    if path is None:
        accelerator.print(f"No checkpoint in {args.output_dir} to resume from: starting a new run.")
        return 0
    accelerator.print(f"Resuming from {path}")
    accelerator.load_state(str(path))
    return checkpoint_step(path)


def checkpoint_if_due(args: argparse.Namespace, accelerator: Accelerator, step: int) -> None:
    """Every ``--checkpointing_steps``: rotate to ``--checkpoints_total_limit`` and save one in one piece."""
    if step % args.checkpointing_steps == 0:
        if accelerator.is_main_process:
            rotate_checkpoints(Path(args.output_dir), args.checkpoints_total_limit)
        save_checkpoint(accelerator, Path(args.output_dir), step)


def build_lr_scheduler(name: str, optimizer, warmup_steps: int, total_steps: int, num_processes: int):
    """diffusers' ``get_scheduler`` over a run of ``total_steps`` optimiser steps.

    Once prepared, Accelerate steps a scheduler once per process at every optimiser step, so its lengths are given
    in those units (x ``num_processes``); without that, an N-process cosine ends at 1/N of training and climbs back.
    """
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps * num_processes,
                         num_training_steps=total_steps * num_processes)


# --- checkpoints ---------------------------------------------------------------------------------------------------
def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step of a ``checkpoint-<step>`` folder name, or None for any other name."""
    prefix, _, step = Path(path).name.rpartition("-")
    return int(step) if prefix == "checkpoint" and step.isdigit() else None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The complete ``checkpoint-<step>`` folders of a run, oldest first (``.partial`` ones never count)."""
    folders = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(folders, key=checkpoint_step)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    return (list_checkpoints(output_dir) or [None])[-1]


def rotate_checkpoints(output_dir: Path, limit: int | None) -> None:
    """Delete the oldest checkpoints so that at most ``limit - 1`` remain before a new one is written."""
    if limit is None:
        return
    folders = list_checkpoints(output_dir)
    for folder in folders[: max(0, len(folders) - limit + 1)]:
        logger.info(f"Removing old checkpoint {folder}")
        shutil.rmtree(folder)


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int) -> Path:
    """``accelerator.save_state`` written in one piece (`iclevr.io`): every process writes its RNG state into
    ``checkpoint-<step>.partial``, which the main process then renames, so ``--resume_from_checkpoint latest``
    only ever finds complete checkpoints."""
    final = output_dir / f"checkpoint-{step}"
    if accelerator.is_main_process:
        partial_folder(final)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial_path(final)))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_folder(partial_path(final), final)
    accelerator.wait_for_everyone()
    return final


def save_pipeline_folder(pipeline, model: torch.nn.Module, output_dir: Path) -> Path:
    """Save ``pipeline`` into ``output_dir`` in one piece: written into ``pipeline.partial`` and moved in with
    ``model_index.json`` last (`iclevr.io.move_into`), so a save interrupted at any point leaves either the previous
    pipeline or a folder that `from_pretrained` refuses, never a mix. Non-finite weights of ``model`` (the network the
    pipeline holds) are refused before anything is touched."""
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise FloatingPointError(f"Refusing to save non-finite weights ({len(bad)} tensors, e.g. {bad[0]}); "
                                 "the checkpoints in the output folder are untouched.")
    partial = partial_folder(output_dir / "pipeline")
    pipeline.save_pretrained(partial, safe_serialization=True)
    move_into(partial, output_dir, last="model_index.json")
    return output_dir


def check_finite(loss: torch.Tensor, step: int, network: str = "") -> None:
    """Stop a run at a non-finite loss (of ``network``, when there are several) before any weight is written."""
    if not torch.isfinite(loss):
        what = f"{network} loss" if network else "loss"
        raise FloatingPointError(f"Non-finite {what} {loss.item()} at step {step}; stopping before any weight is written.")


# --- time --------------------------------------------------------------------------------------------------------
class Stopwatch:
    """A run's wall time, with pauses (validation) kept out of the training time, and its throughput measured from the
    first optimiser step on (the first step pays for kernel selection and allocation, which later ones do not)."""

    def __init__(self):
        self.start = time.time()
        self.paused_seconds = 0.0
        self.images = 0
        self._first = None  # (time, images, step) at the first optimiser step

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        start = time.time()
        try:
            yield
        finally:
            self.paused_seconds += time.time() - start

    def count(self, images: int, step: int) -> None:
        """Record a batch of ``images`` trained on; ``step`` is the optimiser step reached after it."""
        self.images += images
        if self._first is None and step > 0:
            self._first = (time.time(), self.images, step)

    @property
    def training_seconds(self) -> float:
        return time.time() - self.start - self.paused_seconds

    def out_of_time(self, accelerator: Accelerator, budget_minutes: float | None) -> bool:
        """Whether ``budget_minutes`` of training time are spent. Every process gets rank 0's answer, so all of them
        stop at the same step (their clocks differ slightly)."""
        if budget_minutes is None:
            return False
        done = torch.tensor([float(self.training_seconds >= budget_minutes * 60)], device=accelerator.device)
        if accelerator.num_processes > 1:
            done = broadcast(done, from_process=0)
        return bool(done.item())

    def figures(self, step: int) -> dict:
        """The time figures of a run's ``train_summary.json``: images seen, images/s and seconds per step (`rates`),
        and the minutes in all and in training."""
        images_per_second, seconds_per_step = self.rates(step)
        return {"images_seen": self.images, "images_per_second": images_per_second, "seconds_per_step": seconds_per_step,
                "minutes": (self.training_seconds + self.paused_seconds) / 60, "training_minutes": self.training_seconds / 60}

    def rates(self, step: int) -> tuple[float, float | None]:
        """Images per second and seconds per optimiser step since the first step (pauses all fall after it);
        ``(0, None)`` when no step was timed."""
        if self._first is None or step <= self._first[2]:
            return 0.0, None
        timed = max(time.time() - self._first[0] - self.paused_seconds, 1e-9)
        return (self.images - self._first[1]) / timed, timed / (step - self._first[2])


# --- a run's state ---------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class TrainingRun:
    """What every generator trainer's run holds (each trainer adds its networks and optimisers); ``step`` counts
    optimiser steps (a GAN's: generator updates)."""

    args: argparse.Namespace
    accelerator: Accelerator
    loader: torch.utils.data.DataLoader
    max_steps: int
    updates_per_epoch: int
    vocab: LabelVocabulary
    evaluator: object = None
    step: int = 0
    record: dict | None = None
    stopwatch: Stopwatch | None = None

    @property
    def num_epochs(self) -> int:
        return math.ceil(self.max_steps / self.updates_per_epoch)

    def validation_due(self, final: bool = False) -> bool:
        """Whether the main process validates now: every ``--validation_steps``, and at the end (``final``) when the
        last step was not one of those."""
        every = self.args.validation_steps
        if final:
            return bool(every) and self.step % every != 0
        return bool(every) and self.step % every == 0 and self.accelerator.is_main_process

    def stop_here(self, budget_note: str = ".") -> bool:
        """Whether training ends after this step: the schedule's last step, or ``--max_train_minutes`` spent (then the
        schedule ends here, with a warning ending in ``budget_note``)."""
        if self.step >= self.max_steps:
            return True
        if self.stopwatch.out_of_time(self.accelerator, self.args.max_train_minutes):
            if self.accelerator.is_main_process:  # once, as the trainers' Accelerate loggers log
                logger.warning(f"--max_train_minutes {self.args.max_train_minutes:g} spent at step {self.step} of "
                               f"{self.max_steps}{budget_note}")
            self.max_steps = self.step
            return True
        return False

    def summary(self, losses: dict, model: dict) -> dict:
        """``train_summary.json``: steps, the final ``losses``, the time figures, the trainer's ``model`` figures, the
        precision, the Dynamo backend, the process count and the last validation (without its per-seed list)."""
        return {"steps": self.step, **losses, **self.stopwatch.figures(self.step), **model,
                "mixed_precision": self.accelerator.mixed_precision,
                "dynamo_backend": self.accelerator.state.dynamo_plugin.backend.value.lower(),
                "processes": self.accelerator.num_processes,
                "validation": {k: v for k, v in (self.record or {}).items() if k != "accuracy_per_seed"}}


def publish(args: argparse.Namespace, summary: dict) -> None:
    """After the pipeline and its card are saved: ``train_summary.json``, a log line, and with ``--push_to_hub`` the
    upload (`iclevr.hub.push_to_hub`)."""
    output_dir = Path(args.output_dir)
    (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    logger.info(f"Saved the pipeline to {output_dir}: {summary}")
    if args.push_to_hub:
        from iclevr.hub import push_to_hub

        logger.info(f"Pushed to https://huggingface.co/{push_to_hub(args)}")


# --- validation --------------------------------------------------------------------------------------------------
@torch.no_grad()
def validate_pipeline(pipeline, args: argparse.Namespace, accelerator: Accelerator, step: int, evaluator=None,
                      **sampling) -> dict:
    """Sample ``--validation_conditions_json`` with ``pipeline`` into a grid and, with an evaluator, score them.

    With ``--validation_num_seeds`` above 1 every seed samples all conditions; the accuracy logged is the mean over
    seeds (``accuracy_std`` their spread), and the grid shows the first seed. Writes ``validation/step-N.png``,
    ``samples.png`` and a line of ``validation/metrics.jsonl``, and logs to the trackers.
    """
    conditions = load_conditions(args.validation_conditions_json, pipeline.vocab)
    pipeline.set_progress_bar_config(disable=True)
    per_seed, start = [], time.time()
    for seed in range(args.seed, args.seed + args.validation_num_seeds):
        with accelerator.autocast():
            per_seed.append(pipeline(conditions, output_type="np", generator=torch.Generator(device="cpu").manual_seed(seed),
                                     **sampling).images)
    seconds = time.time() - start
    images = per_seed[0]
    grid = image_grid(images, columns=8)
    folder = Path(args.output_dir) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    grid.save(folder / f"step-{step:07d}.png")
    grid.save(Path(args.output_dir) / "samples.png")
    record = {"step": step, "conditions_json": str(args.validation_conditions_json),
              "seconds_per_image": seconds / (len(conditions) * len(per_seed))}
    if evaluator is not None:
        reports = [evaluator.score(torch.from_numpy(batch).permute(0, 3, 1, 2), conditions) for batch in per_seed]
        accuracy = mean_std([r["accuracy"] for r in reports])
        record |= {"accuracy": accuracy["mean"], "exact_set_accuracy": mean_std([r["exact_set_accuracy"] for r in reports])["mean"]}
        record |= {f"misses_{kind}": count for kind, count in total_misses(reports).items()}  # what fails to bind
        if len(reports) > 1:
            record |= {"accuracy_std": accuracy["std"], "accuracy_per_seed": accuracy["values"]}
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("validation", images, step, dataformats="NHWC")
    accelerator.log({f"validation/{k}": v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}, step=step)
    with open(folder / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")
    return record
