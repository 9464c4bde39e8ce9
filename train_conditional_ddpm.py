# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Train a multi-label class-conditional DDPM on i-CLEVR with 🤗 Accelerate and save it as an `ICLEVRPipeline`.

    accelerate launch --config_file accelerate_config.yaml train_conditional_ddpm.py --output_dir outputs/iclevr-ddpm \\
        --use_ema --validation_steps 1000 --evaluator outputs/evaluator

With neither ``--train_data_dir`` nor ``--dataset_name`` it trains on the embedded default: the procedural i-CLEVR
set, rendered once into a cache folder and reused after. The flags and the parts (model, loss, data, validation,
saving) live in `iclevr.ddpm`, so the benches build the same model; the shared mechanisms (checkpoints, the time
budget) in `iclevr.training`. This file is the training loop: set-up → resume → ``train_step`` per batch → finish.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from iclevr import ddpm
from iclevr.data import random_hflip, to_model_input
from iclevr.io import remove_partial_saves
from iclevr.training import (
    Stopwatch,
    build_lr_scheduler,
    checkpoint_step,
    latest_checkpoint,
    rotate_checkpoints,
    save_checkpoint,
    setup_accelerator,
)
from iclevr.utils import bare_model
from pipeline_iclevr import LabelVocabulary

logger = get_logger(__name__)


# --- the run -----------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """Everything one training run holds; ``step`` counts optimiser steps."""

    args: argparse.Namespace
    accelerator: Accelerator
    unet: torch.nn.Module
    ema: EMAModel | None
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    loader: torch.utils.data.DataLoader
    noise_scheduler: DDPMScheduler
    floor: torch.Tensor | None
    max_steps: int
    updates_per_epoch: int
    vocab: LabelVocabulary
    evaluator: object = None
    step: int = 0
    loss: float = float("nan")
    record: dict | None = None
    stopwatch: Stopwatch | None = None

    @property
    def num_epochs(self) -> int:
        return math.ceil(self.max_steps / self.updates_per_epoch)


def set_up(args: argparse.Namespace, accelerator: Accelerator) -> Run:
    """Data, model, EMA, optimiser and schedule, prepared by Accelerate (this order fixes what the seed draws; loading
    the data draws nothing)."""
    dataset, vocab = ddpm.build_dataset(args, accelerator)
    unet = ddpm.build_model(args, len(vocab))
    noise_scheduler = ddpm.build_noise_scheduler(args)
    ema = None
    if args.use_ema:  # foreach: one fused update over all weight tensors instead of hundreds of small ops
        ema = EMAModel(unet.parameters(), decay=args.ema_max_decay, use_ema_warmup=True, inv_gamma=args.ema_inv_gamma,
                       power=args.ema_power, foreach=True, model_cls=UNet2DConditionModel, model_config=unet.config)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    loader = ddpm.build_dataloader(dataset, args)
    floor = ddpm.mean_image(dataset.tensors[0]).to(accelerator.device) if args.foreground_weight > 0 else None
    updates_per_epoch = math.ceil(len(loader) / accelerator.num_processes / args.gradient_accumulation_steps)
    if updates_per_epoch == 0:
        raise ValueError(f"{len(dataset)} images are fewer than one batch of {args.train_batch_size}; lower --train_batch_size.")
    max_steps = args.max_train_steps or args.num_epochs * updates_per_epoch
    if args.lr_warmup_steps >= max_steps and args.lr_scheduler != "constant":
        logger.warning(f"--lr_warmup_steps {args.lr_warmup_steps} is not shorter than the {max_steps}-step schedule: the learning "
                       f"rate never decays. Pass fewer warm-up steps (e.g. --lr_warmup_steps {max(1, max_steps // 25)}).")
    lr_scheduler = build_lr_scheduler(args.lr_scheduler, optimizer, args.lr_warmup_steps, max_steps, accelerator.num_processes)
    unet = unet.to(memory_format=memory_format(args))  # before DDP wraps it, so gradient buckets match the layout
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers(args.tracker_project_name, config={k: str(v) for k, v in vars(args).items() if k != "hub_token"})
    evaluator = None
    if args.evaluator and accelerator.is_main_process:
        from iclevr.evaluator import Evaluator

        evaluator = Evaluator.from_pretrained(args.evaluator, device=accelerator.device)
    logger.info(f"{len(dataset)} images, {max_steps} steps of {args.train_batch_size}x{accelerator.num_processes}x"
                f"{args.gradient_accumulation_steps}, {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters")
    return Run(args, accelerator, unet, ema, optimizer, lr_scheduler, loader, noise_scheduler, floor, max_steps,
               updates_per_epoch, vocab, evaluator)


def memory_format(args: argparse.Namespace) -> torch.memory_format:
    return torch.channels_last if args.channels_last else torch.contiguous_format


def resume(run: Run) -> tuple[int, int]:
    """Load ``--resume_from_checkpoint`` (model, optimiser, schedule, EMA, RNG states); returns the epoch to start in
    and the batches of it already trained on."""
    if not run.args.resume_from_checkpoint:
        return 0, 0
    path = latest_checkpoint(run.args.output_dir) if run.args.resume_from_checkpoint == "latest" else Path(run.args.resume_from_checkpoint)
    if path is None:
        run.accelerator.print(f"No checkpoint in {run.args.output_dir} to resume from: starting a new run.")
        return 0, 0
    run.accelerator.print(f"Resuming from {path}")
    run.accelerator.load_state(str(path))
    run.step = checkpoint_step(path)
    return run.step // run.updates_per_epoch, (run.step % run.updates_per_epoch) * run.args.gradient_accumulation_steps


def train_step(run: Run, images: torch.Tensor, labels: torch.Tensor) -> None:
    """One batch: the weighted denoising loss, backward, and (once gradients are synchronised) the optimiser and EMA."""
    args, accelerator = run.args, run.accelerator
    with accelerator.accumulate(run.unet):
        pixels = to_model_input(images)
        weights = ddpm.foreground_weights(pixels, run.floor, args.foreground_weight) if run.floor is not None else None
        if args.random_flip:  # after weighting: the floor image is not mirror-symmetric
            flipped = random_hflip(pixels if weights is None else torch.cat([pixels, weights], 1))
            pixels, weights = flipped[:, :3], (None if weights is None else flipped[:, 3:])
        pixels = pixels.contiguous(memory_format=memory_format(args))
        with accelerator.autocast():
            loss = ddpm.diffusion_loss(run.unet, run.noise_scheduler, pixels, labels, args, weights)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"Non-finite loss {loss.item()} at step {run.step}; stopping before any weight is written.")
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(run.unet.parameters(), args.max_grad_norm)
        run.optimizer.step()
        run.lr_scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        if accelerator.optimizer_step_was_skipped:  # fp16 loss scaling found inf/NaN gradients
            logger.warning(f"Skipped the optimiser step at step {run.step}: non-finite gradients under fp16 loss scaling.")
    if accelerator.sync_gradients:
        if run.ema is not None:
            run.ema.step(run.unet.parameters())
        run.step += 1
        run.loss = loss.detach().item()
    run.stopwatch.count(images.shape[0] * accelerator.num_processes, run.step)


def after_step(run: Run, epoch: int, progress: tqdm) -> bool:
    """Log, checkpoint and validate after an optimiser step; returns whether training should stop here."""
    args, accelerator = run.args, run.accelerator
    lr = run.lr_scheduler.get_last_lr()[0]
    progress.update(1)
    progress.set_postfix(loss=f"{run.loss:.4f}", lr=f"{lr:.2e}")
    accelerator.log({"loss": run.loss, "lr": lr, "epoch": epoch}, step=run.step)
    if run.step % args.checkpointing_steps == 0:
        if accelerator.is_main_process:
            rotate_checkpoints(Path(args.output_dir), args.checkpoints_total_limit)
        save_checkpoint(accelerator, Path(args.output_dir), run.step)
    if args.validation_steps and run.step % args.validation_steps == 0 and accelerator.is_main_process:
        validate(run, bare_model(accelerator, run.unet))
    if run.step >= run.max_steps:
        return True
    if run.stopwatch.out_of_time(accelerator, args.max_train_minutes):
        logger.warning(f"--max_train_minutes {args.max_train_minutes:g} spent at step {run.step} of {run.max_steps}: the "
                       f"learning-rate schedule stops at {lr:.2e}, not at its end. Fewer --max_train_steps fit this machine "
                       "(main_job.py sizes them by a calibration run).")
        run.max_steps = run.step
        return True
    return False


def validate(run: Run, unet: torch.nn.Module) -> None:
    with run.stopwatch.paused():  # validation is not training time
        run.record = ddpm.log_validation(unet, run.ema, run.noise_scheduler, run.args, run.accelerator, run.step, run.vocab,
                                         run.evaluator)
    logger.info(f"validation at step {run.step}: {run.record}")


def finish(run: Run) -> None:
    """Final validation, the pipeline, its model card and ``train_summary.json`` (main process), then the Hub."""
    run.accelerator.wait_for_everyone()
    if run.accelerator.is_main_process:
        args, output_dir = run.args, Path(run.args.output_dir)
        unet = bare_model(run.accelerator, run.unet).to(memory_format=torch.contiguous_format)
        if args.validation_steps and run.step % args.validation_steps:
            validate(run, unet)
        images_per_second, seconds_per_step = run.stopwatch.rates(run.step)
        summary = {"steps": run.step, "final_loss": run.loss, "images_seen": run.stopwatch.images,
                   "images_per_second": images_per_second, "seconds_per_step": seconds_per_step,
                   "minutes": (run.stopwatch.training_seconds + run.stopwatch.paused_seconds) / 60,
                   "training_minutes": run.stopwatch.training_seconds / 60,
                   "parameters_millions": sum(p.numel() for p in unet.parameters()) / 1e6, "resolution": args.resolution,
                   "mixed_precision": run.accelerator.mixed_precision, "processes": run.accelerator.num_processes,
                   "validation": {k: v for k, v in (run.record or {}).items() if k != "accuracy_per_seed"}}
        ddpm.save_pipeline(unet, run.ema, run.noise_scheduler, args, output_dir, run.vocab)
        ddpm.write_model_card(args, summary)
        (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
        logger.info(f"Saved the pipeline to {output_dir}: {summary}")
        if args.push_to_hub:
            logger.info(f"Pushed to https://huggingface.co/{ddpm.push_to_hub(args)}")
    run.accelerator.end_training()


def main(argv: list[str] | None = None) -> None:
    args = ddpm.parse_args(argv)
    output_dir = Path(args.output_dir)
    accelerator = setup_accelerator(
        args.seed, gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)))
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        for folder in remove_partial_saves(output_dir):
            logger.warning(f"Removed {folder}, left by an interrupted save.")
    run = set_up(args, accelerator)
    first_epoch, skip_batches = resume(run)
    run.stopwatch = Stopwatch()
    progress = tqdm(total=run.max_steps, initial=run.step, desc="Steps", disable=not accelerator.is_local_main_process)
    # Resuming at (or past) the last step trains nothing and only saves: this exports checkpoint-N as a pipeline.
    for epoch in range(first_epoch, run.num_epochs if run.step < run.max_steps else first_epoch):
        run.unet.train()
        run.loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(run.loader, skip_batches) if epoch == first_epoch and skip_batches else run.loader
        for images, labels in batches:
            train_step(run, images, labels)
            if accelerator.sync_gradients and after_step(run, epoch, progress):
                break
        if run.step >= run.max_steps:
            break
    progress.close()
    finish(run)


if __name__ == "__main__":
    main()
