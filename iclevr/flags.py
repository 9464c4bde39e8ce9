# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""The flags every trainer here shares, defined once: the length of a run, precision, the EMA, the seed, outputs,
checkpoints, trackers, validation and the Hub; and their checks, made before any work starts."""

from __future__ import annotations

import argparse
from pathlib import Path

from iclevr.argtypes import (
    check_output_folder,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)
from iclevr.data import check_data_source
from iclevr.labels import SYNTHETIC_TEST


def int_list(text: str) -> list[int]:
    """argparse type of a comma-separated list of integers (``32,64,128``)."""
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_length_args(group) -> None:
    """Batch size and the length of a run: epochs, steps or a wall-time budget."""
    group.add_argument("--train_batch_size", type=positive_int, default=64, help="Batch size per process.")
    group.add_argument("--num_epochs", type=positive_int, default=10, help="Epochs (ignored when --max_train_steps is set).")
    group.add_argument("--max_train_steps", type=positive_int, default=None, help="Total optimiser steps; overrides --num_epochs.")
    group.add_argument("--max_train_minutes", type=positive_float, default=None,
                       help="Stop after this much training wall time (validation excluded), then save as usual: a fixed time budget.")


def add_precision_ema_args(group, ema_max_decay: float, compiles: bool = True) -> None:
    """Mixed precision, the Dynamo backend (when the trainer's models ``compiles``), the seed, and the EMA of the
    weights (diffusers' `EMAModel` warm-up)."""
    group.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"], help="Mixed precision (default: Accelerate's config).")
    if compiles:
        group.add_argument("--dynamo_backend", type=str, default="auto", choices=["auto", "no", "inductor"],
                           help="torch.compile the trained models through Accelerate. auto: the backend `accelerate launch "
                                "--dynamo_backend` names, else inductor with CUDA, where compiled steps are faster, and no on "
                                "a CPU, where they save a few per cent and the compile costs minutes.")
    group.add_argument("--allow_tf32", action="store_true",
                       help="Allow TF32 matrix products on Ampere and newer GPUs: faster fp32 training at a slightly lower "
                            "precision; no effect on a CPU.")
    group.add_argument("--seed", type=non_negative_int, default=0, help="Random seed; a run with the same seed is reproducible on CPU.")
    group.add_argument("--use_ema", action="store_true", help="Keep an exponential moving average of the weights and save it.")
    group.add_argument("--ema_max_decay", type=probability, default=ema_max_decay, help="Maximum EMA decay.")
    group.add_argument("--ema_inv_gamma", type=positive_float, default=1.0, help="EMA warm-up inverse multiplicative factor.")
    group.add_argument("--ema_power", type=positive_float, default=0.75, help="EMA warm-up exponent.")


def add_run_args(group, output_dir: str, project_name: str) -> None:
    """Output, checkpoints, trackers, validation with the evaluator, and the Hub."""
    group.add_argument("--output_dir", type=str, default=output_dir, help="Where checkpoints and the pipeline are written.")
    group.add_argument("--checkpointing_steps", type=positive_int, default=500, help="Save a resumable checkpoint every N steps.")
    group.add_argument("--checkpoints_total_limit", type=positive_int, default=None, help="Keep at most this many checkpoints.")
    group.add_argument("--resume_from_checkpoint", type=str, default=None, help="'latest' (starts fresh when there is none, so a rerun command resumes) or a checkpoint folder to resume from.")
    group.add_argument("--report_to", type=str, default="tensorboard", choices=["tensorboard", "wandb", "none"], help="Experiment tracker (none: no tracker).")
    group.add_argument("--tracker_project_name", type=str, default=project_name, help="Project name the tracker files the run under.")
    group.add_argument("--logging_dir", type=str, default="logs", help="Tracker folder, relative to --output_dir.")
    group.add_argument("--validation_steps", type=positive_int, default=None, help="Sample the validation conditions every N steps (and at the end).")
    group.add_argument("--validation_conditions_json", type=str, default=str(SYNTHETIC_TEST), help="Conditions sampled at validation (test.json format; default: the project's synthetic set).")
    group.add_argument("--validation_num_seeds", type=positive_int, default=1,
                       help="Sampling seeds per validation (--seed, --seed+1, ...): the accuracy logged is their mean, as in "
                            "the report; one seed on 32 conditions is noisy.")
    group.add_argument("--evaluator", type=str, default=None, help="Evaluator folder or course checkpoint.pth: log the course accuracy at validation.")
    group.add_argument("--push_to_hub", action="store_true", help="Upload the pipeline (no checkpoints) to the Hub at the end.")
    group.add_argument("--hub_model_id", type=str, default=None, help="Hub repository, e.g. user/iclevr-ddpm.")
    group.add_argument("--hub_token", type=str, default=None, help="Hub token (else the logged-in one); never logged or saved.")
    group.add_argument("--hub_private_repo", action="store_true", help="Create the Hub repository as private.")


def check_run_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject impossible values of the shared flags before any work starts."""
    check_output_folder(parser, args.output_dir, "--output_dir")
    check_output_folder(parser, args.cache_dir, "--cache_dir")
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


def add_classifier_training_args(group, weight_decay: float, project_name: str) -> None:
    """The flags the two image-reading trainers share (``train_evaluator.py``, ``train_object_finder.py``): the
    optimiser and its schedule, the low-resolution round trip, precision, seed and tracker."""
    from iclevr.augment import LOWRES_PROB, LOWRES_SIZES  # torch: only for these two trainers

    group.add_argument("--train_batch_size", type=positive_int, default=128, help="Batch size per process.")
    group.add_argument("--learning_rate", type=positive_float, default=2e-3, help="Peak AdamW learning rate.")
    group.add_argument("--weight_decay", type=non_negative_float, default=weight_decay, help="AdamW weight decay.")
    group.add_argument("--lr_scheduler", type=str, default="cosine", choices=["linear", "cosine", "constant", "constant_with_warmup"],
                       help="Learning-rate schedule (diffusers get_scheduler).")
    group.add_argument("--lr_warmup_steps", type=non_negative_int, default=200, help="Warm-up steps of the schedule.")
    group.add_argument("--lowres_prob", type=probability, default=LOWRES_PROB, help="Probability of the low-resolution round trip augmentation.")
    group.add_argument("--lowres_sizes", type=int_list, default=list(LOWRES_SIZES),
                       help="Sizes images are shrunk to before being upsampled back to 64 (the sizes low-resolution generators emit).")
    group.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"], help="Mixed precision (default: Accelerate's config).")
    group.add_argument("--seed", type=non_negative_int, default=0, help="Random seed (initialisation, shuffling, augmentation, split).")
    group.add_argument("--report_to", type=str, default="tensorboard", choices=["tensorboard", "wandb", "none"], help="Experiment tracker (none: no tracker).")
    group.add_argument("--tracker_project_name", type=str, default=project_name, help="Project name the tracker files the run under.")

