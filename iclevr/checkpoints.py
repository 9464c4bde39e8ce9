# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Resumable checkpoints in diffusers' layout: ``accelerator.save_state`` into ``checkpoint-<step>``, written in one
piece, with the trained network (and its EMA) saved by `save_pretrained` through Accelerate's save/load-state hooks, as
the diffusers examples do; rotation, and resuming from the newest complete one."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator

from iclevr.io import partial_folder, partial_path, replace_folder

logger = logging.getLogger(__name__)


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


def save_in_diffusers_layout(accelerator: Accelerator, model, name: str, ema=None) -> None:
    """Checkpoints hold ``model`` as ``<name>/`` and its EMA as ``<name>_ema/`` (config + safetensors, loadable with
    ``from_pretrained``), as the diffusers examples save them through Accelerate's save/load-state hooks, instead of
    Accelerate's ``model_N.safetensors`` and a pickled EMA. Other prepared models stay with Accelerate.

    ``model`` is the prepared model (DDP- or compile-wrapped or not); ``ema`` a diffusers `EMAModel` built with
    ``model_cls`` and ``model_config``.
    """
    from diffusers.training_utils import EMAModel

    from iclevr.utils import bare_model

    target = bare_model(accelerator, model)

    def owned(models) -> int | None:
        return next((i for i, candidate in enumerate(models) if bare_model(accelerator, candidate) is target), None)

    def save(models, weights, output_dir):
        index = owned(models)
        if index is None:
            return
        weights.pop(index)  # every process: what is left is saved by Accelerate in model order
        if accelerator.is_main_process:
            target.save_pretrained(Path(output_dir) / name)
            if ema is not None:
                with torch.random.fork_rng(devices=[]):  # EMAModel.save_pretrained initialises a model: keep the RNG
                    ema.save_pretrained(Path(output_dir) / f"{name}_ema")

    def load(models, input_dir):
        index = owned(models)
        if index is None:
            return
        models.pop(index)
        if not (Path(input_dir) / name).is_dir():
            raise FileNotFoundError(f"{input_dir} has no {name}/ folder: it was written by an earlier version of this "
                                    "trainer, which kept the weights in model.safetensors. Resume it with that version, or "
                                    "start a new run in another --output_dir.")
        with torch.random.fork_rng(devices=[]):
            target.load_state_dict(type(target).from_pretrained(Path(input_dir) / name).state_dict())
            if ema is not None:
                with warnings.catch_warnings():  # diffusers' EMAModel.from_pretrained calls its own deprecated path
                    warnings.simplefilter("ignore", FutureWarning)
                    loaded = EMAModel.from_pretrained(Path(input_dir) / f"{name}_ema", model_cls=type(target), foreach=ema.foreach)
                ema.load_state_dict(loaded.state_dict())
                ema.to(accelerator.device)

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)
