# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""The generator trainers' one training loop: resume → epochs of batches → after each optimiser step log, checkpoint,
validate, stop on the schedule or the time budget → final validation and the pipeline saved in one piece with its card,
samples and summary → the Hub.

Each trainer (``train_conditional_ddpm.py``, ``train_conditional_gan.py``) subclasses `TrainingRun` with its networks
and fills in the hooks: `train_batch` (one batch; whether an optimiser step completed), `losses`, `sampling_pipeline`
(the pipeline of the weights as they are sampled and saved), `saved_model` and `model_figures`. Why one loop with hooks
rather than two self-contained scripts: resuming mid-epoch, the time budget, validation pauses and the one-piece save are
where runs break, and they are tested once here for both trainers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors import SafetensorError
from tqdm.auto import tqdm

from iclevr.checkpoints import check_free_space, checkpoint_if_due, resume_step
from iclevr.io import move_into, partial_folder
from iclevr.stopwatch import Stopwatch
from iclevr.validation import validate_pipeline
from pipeline_iclevr import LabelVocabulary

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class TrainingRun:
    """What every generator trainer's run holds (each trainer adds its networks and optimisers), and the hooks the
    loop calls; ``step`` counts optimiser steps (a GAN's: generator updates)."""

    args: argparse.Namespace
    accelerator: Accelerator
    loader: torch.utils.data.DataLoader
    max_steps: int
    updates_per_epoch: int
    batches_per_update: int  # gradient accumulation steps; a GAN's discriminator steps per generator step
    vocab: LabelVocabulary
    evaluator: object = None
    step: int = 0
    record: dict | None = None
    stopwatch: Stopwatch | None = None

    # --- the hooks ---------------------------------------------------------------------------------------------------
    def train_batch(self, index: int, images: torch.Tensor, labels: torch.Tensor, *layouts: torch.Tensor) -> bool:
        """Train on the ``index``-th batch of the epoch (images, labels, and a layout model's boxes and box labels);
        whether an optimiser step completed (and ``step`` advanced)."""
        raise NotImplementedError

    def losses(self) -> dict[str, float]:
        """The last step's losses by name, as logged and summarised."""
        raise NotImplementedError

    def logs(self) -> dict[str, float]:
        """What is logged and shown after each step: the losses, and whatever else the trainer follows."""
        return self.losses()

    def sampling_pipeline(self, final: bool = False) -> contextlib.AbstractContextManager:
        """A context yielding the pipeline of the weights as they are sampled and saved (EMA ones, if used); ``final``
        for the saved one, after training."""
        raise NotImplementedError

    def saved_model(self, final: bool = False) -> torch.nn.Module:
        """The bare network the pipeline holds (its weights are checked before a save)."""
        raise NotImplementedError

    def model_figures(self) -> dict:
        """The model's figures in ``train_summary.json`` and the card (parameters, resolution, ...)."""
        raise NotImplementedError

    def write_card(self, summary: dict, folder: Path, samples: bool) -> None:
        """The pipeline's ``README.md`` into ``folder``."""
        raise NotImplementedError

    def set_train_mode(self) -> None:
        """Put the trained networks in training mode (validation leaves them in eval mode)."""
        raise NotImplementedError

    @property
    def batches_per_epoch(self) -> int | None:
        """Batches of an epoch trained on (None: all); a GAN trains whole generator updates only."""
        return None

    def budget_note(self) -> str:
        """The end of the warning logged when ``--max_train_minutes`` cuts the schedule."""
        return "."

    # --- the shared state --------------------------------------------------------------------------------------------
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

    def stop_here(self) -> bool:
        """Whether training ends after this step: the schedule's last step, or ``--max_train_minutes`` spent (then the
        schedule ends here, with a warning)."""
        if self.step >= self.max_steps:
            return True
        if self.stopwatch.out_of_time(self.accelerator, self.args.max_train_minutes):
            if self.accelerator.is_main_process:  # once, as the trainers' Accelerate loggers log
                logger.warning(f"--max_train_minutes {self.args.max_train_minutes:g} spent at step {self.step} of "
                               f"{self.max_steps}{self.budget_note()}")
            self.max_steps = self.step
            return True
        return False

    def summary(self) -> dict:
        """``train_summary.json``: steps, the final losses, the time figures, the model's figures, the precision, the
        Dynamo backend, the process count and the last validation (without its per-seed list)."""
        return {"steps": self.step, **{f"final_{k}": v for k, v in self.losses().items()}, **self.stopwatch.figures(self.step),
                **self.model_figures(), "mixed_precision": self.accelerator.mixed_precision,
                "dynamo_backend": self.accelerator.state.dynamo_plugin.backend.value.lower(),
                "processes": self.accelerator.num_processes,
                "validation": {k: v for k, v in (self.record or {}).items() if k != "accuracy_per_seed"}}


# --- the loop --------------------------------------------------------------------------------------------------------
def train(run: TrainingRun) -> None:
    """Resume, train to the end of the schedule or the time budget, then `finish`. Resuming at (or past) the last step
    trains nothing and only saves: this exports ``checkpoint-N`` as a pipeline."""
    accelerator = run.accelerator
    run.step = resume_step(run.args, accelerator)
    first_epoch = run.step // run.updates_per_epoch
    skip_batches = (run.step % run.updates_per_epoch) * run.batches_per_update
    run.stopwatch = Stopwatch()
    progress = tqdm(total=run.max_steps, initial=run.step, desc="Steps", disable=not accelerator.is_local_main_process)
    for epoch in range(first_epoch, run.num_epochs if run.step < run.max_steps else first_epoch):
        run.set_train_mode()
        run.loader.set_epoch(epoch)
        skip = skip_batches if epoch == first_epoch else 0
        batches = accelerator.skip_first_batches(run.loader, skip) if skip else run.loader
        for index, batch in enumerate(batches, start=skip):
            if run.batches_per_epoch is not None and index >= run.batches_per_epoch:
                break
            if run.train_batch(index, *batch) and after_step(run, epoch, progress):
                break
        if run.step >= run.max_steps:
            break
    progress.close()
    finish(run)


def after_step(run: TrainingRun, epoch: int, progress: tqdm) -> bool:
    """Log, checkpoint and validate after an optimiser step; returns whether training should stop here."""
    logs = run.logs()
    progress.update(1)
    progress.set_postfix({name: f"{value:.4f}" for name, value in logs.items()})
    run.accelerator.log({**logs, "epoch": epoch}, step=run.step)
    checkpoint_if_due(run.args, run.accelerator, run.step)
    if run.validation_due():
        validate(run)
    return run.stop_here()


def validate(run: TrainingRun) -> None:
    with run.stopwatch.paused(), run.sampling_pipeline() as pipeline:  # validation is not training time
        run.record = validate_pipeline(pipeline, run.args, run.accelerator, run.step, run.evaluator,
                                       run.stopwatch.training_seconds / 60)
    logger.info(f"validation at step {run.step}: {run.record}")


def finish(run: TrainingRun) -> None:
    """Final validation, then the pipeline saved in one piece with its card, ``samples.png`` (the last validation's
    grid, only when it was made at the final step) and ``train_summary.json`` (main process), then the Hub."""
    accelerator, args = run.accelerator, run.args
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if run.validation_due(final=True):
            validate(run)
        summary = run.summary()
        grid = Path(args.output_dir) / "validation" / f"step-{run.step:07d}.png"
        model = run.saved_model(final=True)
        check_free_space(Path(args.output_dir), sum(p.numel() * p.element_size() for p in model.parameters()) + (1 << 20),
                         "the pipeline")
        try:
            with run.sampling_pipeline(final=True) as pipeline, \
                    saved_pipeline_folder(pipeline, model, Path(args.output_dir)) as folder:
                if grid.is_file():
                    shutil.copy(grid, folder / "samples.png")
                (folder / "train_summary.json").write_text(json.dumps(summary, indent=2))
                run.write_card(summary, folder, samples=grid.is_file())
        except (OSError, RuntimeError, SafetensorError) as error:  # a full disk, as each writer reports it
            raise SystemExit(f"Saving the pipeline in {args.output_dir} failed ({error}); removed the partial save: the "
                             "previous pipeline and the checkpoints are kept. Free some space and rerun with "
                             "--resume_from_checkpoint latest.") from None
        logger.info(f"Saved the pipeline to {args.output_dir}: {summary}")
        if args.push_to_hub:
            from iclevr.hub import push_to_hub

            logger.info(f"Pushed to https://huggingface.co/{push_to_hub(args)}")
    accelerator.end_training()


def check_finite(loss: torch.Tensor, step: int, network: str = "") -> None:
    """Stop a run at a non-finite loss (of ``network``, when there are several) before any weight is written."""
    if not torch.isfinite(loss):
        what = f"{network} loss" if network else "loss"
        raise FloatingPointError(f"Non-finite {what} {loss.item()} at step {step}; stopping before any weight is written.")


# --- saving ----------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def saved_pipeline_folder(pipeline, model: torch.nn.Module, output_dir: Path) -> Iterator[Path]:
    """Save ``pipeline`` into ``output_dir`` in one piece, with whatever the block writes into the yielded folder (the
    card, samples, summary): all of it goes into ``pipeline.partial`` and moves in with ``model_index.json`` last
    (`iclevr.io.move_into`), so a save interrupted at any point leaves either the previous pipeline with its own card
    and samples, or a folder that `from_pretrained` refuses, never a mix. A ``samples.png`` the block does not write
    is removed (it would show other weights). Non-finite weights of ``model`` (the network the pipeline holds) are
    refused before anything is touched."""
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise FloatingPointError(f"Refusing to save non-finite weights ({len(bad)} tensors, e.g. {bad[0]}); "
                                 "the checkpoints in the output folder are untouched.")
    partial = partial_folder(output_dir / "pipeline")
    try:
        pipeline.save_pretrained(partial, safe_serialization=True)
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if not (partial / "samples.png").is_file():
        (output_dir / "samples.png").unlink(missing_ok=True)
    move_into(partial, output_dir, last="model_index.json")


def save_pipeline_folder(pipeline, model: torch.nn.Module, output_dir: Path) -> Path:
    """`saved_pipeline_folder` with nothing beside the pipeline."""
    with saved_pipeline_folder(pipeline, model, output_dir):
        pass
    return output_dir
