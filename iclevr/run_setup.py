# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""A training run's Accelerate set-up: the Accelerator (logging, the emulated-bf16 warning, the seed, the Dynamo
backend, trackers), the output folder cleared of interrupted saves, the evaluator that scores validation, and the
learning-rate schedule in Accelerate's units."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler

from iclevr.io import remove_partial_saves
from iclevr.utils import auto_dynamo_backend, multi_process_cpu_launch, slow_bf16_warning

logger = logging.getLogger(__name__)


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
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
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


def build_lr_scheduler(name: str, optimizer, warmup_steps: int, total_steps: int, num_processes: int):
    """diffusers' ``get_scheduler`` over a run of ``total_steps`` optimiser steps.

    Once prepared, Accelerate steps a scheduler once per process at every optimiser step, so its lengths are given
    in those units (x ``num_processes``); without that, an N-process cosine ends at 1/N of training and climbs back.
    """
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps * num_processes,
                         num_training_steps=total_steps * num_processes)
