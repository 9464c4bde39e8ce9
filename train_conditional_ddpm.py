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
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from iclevr import ddpm
from iclevr.data import random_hflip, to_model_input
from iclevr.training import (
    Stopwatch,
    TrainingRun,
    build_lr_scheduler,
    check_finite,
    checkpoint_if_due,
    publish,
    resume_step,
    start_generator_run,
    start_trackers_and_evaluator,
)
from iclevr.utils import bare_model

logger = get_logger(__name__)


# --- the run -----------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class Run(TrainingRun):
    """One diffusion run: the shared state plus the UNet, its EMA, optimiser, schedule and noise schedule."""

    unet: torch.nn.Module
    ema: EMAModel | None
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    noise_scheduler: DDPMScheduler
    floor: torch.Tensor | None
    max_labels_per_image: int
    loss: float = float("nan")


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
    evaluator = start_trackers_and_evaluator(args, accelerator)
    logger.info(f"{len(dataset)} images, {max_steps} steps of {args.train_batch_size}x{accelerator.num_processes}x"
                f"{args.gradient_accumulation_steps}, {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters")
    return Run(args=args, accelerator=accelerator, loader=loader, max_steps=max_steps, updates_per_epoch=updates_per_epoch,
               vocab=vocab, evaluator=evaluator, unet=unet, ema=ema, optimizer=optimizer, lr_scheduler=lr_scheduler,
               noise_scheduler=noise_scheduler, floor=floor, max_labels_per_image=int(dataset.tensors[1].sum(1).max()))


def memory_format(args: argparse.Namespace) -> torch.memory_format:
    return torch.channels_last if args.channels_last else torch.contiguous_format


def resume(run: Run) -> tuple[int, int]:
    """Load ``--resume_from_checkpoint`` (model, optimiser, schedule, EMA, RNG states); returns the epoch to start in
    and the batches of it already trained on."""
    run.step = resume_step(run.args, run.accelerator)
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
        check_finite(loss, run.step)
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
    checkpoint_if_due(args, accelerator, run.step)
    if run.validation_due():
        validate(run, bare_model(accelerator, run.unet))
    return run.stop_here(f": the learning-rate schedule stops at {lr:.2e}, not at its end. Fewer --max_train_steps fit "
                         "this machine (main_job.py sizes them by a calibration run).")


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
        if run.validation_due(final=True):
            validate(run, unet)
        summary = run.summary({"final_loss": run.loss}, {"parameters_millions": sum(p.numel() for p in unet.parameters()) / 1e6,
                                                         "resolution": args.resolution})
        ddpm.save_pipeline(unet, run.ema, run.noise_scheduler, args, output_dir, run.vocab, run.max_labels_per_image)
        ddpm.write_model_card(args, summary, run.vocab)
        publish(args, summary)
    run.accelerator.end_training()


def main(argv: list[str] | None = None) -> None:
    args = ddpm.parse_args(argv)
    accelerator = start_generator_run(args, gradient_accumulation_steps=args.gradient_accumulation_steps)
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
