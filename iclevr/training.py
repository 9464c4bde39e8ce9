# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""What every trainer here shares: the Accelerator set-up, the learning-rate schedule, resumable checkpoints and the
wall-time budget. Each exists once, so the diffusion trainer and the evaluator trainer behave alike."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast, set_seed
from diffusers.optimization import get_scheduler

from iclevr.io import partial_folder, partial_path, replace_folder
from iclevr.utils import multi_process_cpu_launch, slow_bf16_warning

logger = logging.getLogger(__name__)


def int_list(text: str) -> list[int]:
    """argparse type of a comma-separated list of integers (``32,64,128``)."""
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


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

    def rates(self, step: int) -> tuple[float, float | None]:
        """Images per second and seconds per optimiser step since the first step (pauses all fall after it);
        ``(0, None)`` when no step was timed."""
        if self._first is None or step <= self._first[2]:
            return 0.0, None
        timed = max(time.time() - self._first[0] - self.paused_seconds, 1e-9)
        return (self.images - self._first[1]) / timed, timed / (step - self._first[2])
