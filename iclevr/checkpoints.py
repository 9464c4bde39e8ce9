# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Resumable checkpoints in diffusers' layout: ``accelerator.save_state`` into ``checkpoint-<step>``, written in one
piece, with the trained network (and its EMA) saved by `save_pretrained` through Accelerate's save/load-state hooks, as
the diffusers examples do; rotation, and resuming from the newest one that verifies.

A checkpoint is complete when its ``manifest.json`` (the size and SHA-256 of every file, written last) matches its
files; a save is refused up front when the disk cannot hold it, and a save that fails anyway leaves no ``.partial``."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors import SafetensorError

from iclevr.io import partial_folder, partial_path, replace_folder

logger = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def resume_step(args: argparse.Namespace, accelerator: Accelerator) -> int:
    """Load ``--resume_from_checkpoint`` (``latest``: the newest checkpoint that verifies, skipping damaged ones with a
    warning, or a fresh start when there is none at all) with ``accelerator.load_state``; returns the step it was
    saved at (0 for a fresh start). A given checkpoint that does not verify, or a run whose checkpoints all fail, stops
    with one line."""
    if not args.resume_from_checkpoint:
        return 0
    if args.resume_from_checkpoint == "latest":
        path = verified_checkpoint(args.output_dir, accelerator.is_main_process)
    else:
        path = Path(args.resume_from_checkpoint)
        if problem := checkpoint_problem(path):
            raise SystemExit(f"--resume_from_checkpoint {path} does not verify: {problem}.")
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
    """The newest checkpoint folder (complete or not: see `verified_checkpoint`), or None."""
    return (list_checkpoints(output_dir) or [None])[-1]


def verified_checkpoint(output_dir: str | os.PathLike, warn: bool = True) -> Path | None:
    """The newest checkpoint whose files match its manifest; each newer one that does not is named in a warning.
    None when the run has no checkpoint; `SystemExit` with one line when it has some and none verifies."""
    folders = list_checkpoints(output_dir)
    for folder in reversed(folders):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        if warn:
            logger.warning(f"Skipping {folder}: {problem}; resuming from an older checkpoint.")
    if folders:
        raise SystemExit(f"No checkpoint in {output_dir} verifies ({', '.join(f.name for f in folders)}): remove them to start "
                         "anew, or give another --output_dir.")
    return None


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint folder cannot be trusted (no manifest, a file missing, truncated or changed), or None."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return f"no {MANIFEST} (an interrupted save, or an older version's checkpoint)"
    try:
        expected = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{MANIFEST} is damaged"
    for name, record in expected.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != record["size"]:
            return f"{name} has {path.stat().st_size:,} bytes, the manifest says {record['size']:,}"
        if sha256(path) != record["sha256"]:
            return f"{name} does not match its SHA-256"
    return None


def write_manifest(folder: Path) -> None:
    """``manifest.json``: the size and SHA-256 of every file of a checkpoint, written last, as the mark of completeness."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    records = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256(p)} for p in files}
    (folder / MANIFEST).write_text(json.dumps(records, indent=1))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Stop with one line when the disk under ``folder`` cannot hold ``needed`` bytes, before anything is written."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise SystemExit(f"Not enough disk space for {what} in {folder}: {needed:,} bytes needed, {free:,} free. Free some "
                         "space (older checkpoints: --checkpoints_total_limit) and resume with --resume_from_checkpoint latest.")


def checkpoint_bytes(accelerator: Accelerator) -> int:
    """What a checkpoint needs, a little over: the prepared models' weights twice (room for an EMA of each), the
    optimisers' state, and 1 MiB for the rest."""
    models = sum(t.numel() * t.element_size() for m in accelerator._models for t in [*m.parameters(), *m.buffers()])
    states = sum(v.numel() * v.element_size() for o in accelerator._optimizers for s in o.state_dict()["state"].values()
                 for v in s.values() if torch.is_tensor(v))
    return 2 * models + states + (1 << 20)


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
    ``checkpoint-<step>.partial``; the main process then writes the manifest and renames it, so
    ``--resume_from_checkpoint latest`` only ever finds complete checkpoints. Refused up front when the disk cannot
    hold it; a save that fails anyway is removed, and the run stops with one line."""
    final = output_dir / f"checkpoint-{step}"
    check_free_space(output_dir, checkpoint_bytes(accelerator), f"checkpoint-{step}")
    if accelerator.is_main_process:
        partial_folder(final)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(partial_path(final)))
    except (OSError, RuntimeError, SafetensorError) as error:  # a full disk, as each writer reports it
        shutil.rmtree(partial_path(final), ignore_errors=True)
        raise SystemExit(f"Saving checkpoint-{step} in {output_dir} failed ({error}); removed the partial save, and the "
                         "checkpoints before it are kept: free some space and resume with --resume_from_checkpoint latest.") from None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_manifest(partial_path(final))  # after every process's files: the mark of a complete checkpoint
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
