# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Train a multi-label class-conditional DDPM on i-CLEVR with 🤗 Accelerate and save it as an `ICLEVRPipeline`.

    accelerate launch --config_file accelerate_config.yaml train_conditional_ddpm.py --output_dir outputs/iclevr-ddpm \\
        --use_ema --validation_steps 1000 --evaluator outputs/evaluator

With neither ``--train_data_dir`` nor ``--dataset_name`` it trains on the embedded default: the procedural i-CLEVR
set, rendered once into a cache folder and reused after. The flags and the parts (model, loss, data, validation,
saving) live in `iclevr.ddpm`, so the benches build the same model; the loop both generator trainers share (resume,
checkpoints, the time budget, validation, the one-piece save) in `iclevr.loop`. This file is the diffusion model's
part of it: its set-up and its training step.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel

from iclevr import ddpm
from iclevr.checkpoints import save_in_diffusers_layout
from iclevr.cli import run
from iclevr.images import random_hflip, to_model_input
from iclevr.io import is_main_rank, writer_lock
from iclevr.layouts import layout_prior
from iclevr.loop import TrainingRun, check_finite, train
from iclevr.run_setup import build_lr_scheduler, start_generator_run, start_trackers_and_evaluator
from iclevr.utils import bare_model, ema_weights

logger = get_logger(__name__)


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
    prior: dict | None  # a layout model's layout prior (None: label-only)
    map_channels: torch.Tensor | None  # the layout-map channels each label paints (None: label-only)
    loss: float = float("nan")

    def train_batch(self, index: int, images: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor | None = None,
                    box_labels: torch.Tensor | None = None) -> bool:
        """One batch (with a layout model's boxes and box labels): the weighted denoising loss, backward, and (once
        gradients are synchronised) the optimiser and EMA."""
        args, accelerator = self.args, self.accelerator
        with accelerator.accumulate(self.unet):
            pixels = to_model_input(images)
            weights = ddpm.foreground_weights(pixels, self.floor, args.foreground_weight) if self.floor is not None else None
            if args.random_flip:  # after weighting: the floor image is not mirror-symmetric
                flipped = random_hflip(pixels if weights is None else torch.cat([pixels, weights], 1), boxes=boxes)
                if boxes is not None:  # the boxes are mirrored with their images
                    flipped, boxes = flipped
                pixels, weights = flipped[:, :3], (None if weights is None else flipped[:, 3:])
            pixels = pixels.contiguous(memory_format=memory_format(args))
            layout = None if boxes is None else ddpm.training_layout_map(boxes, box_labels, self.map_channels, args)
            with accelerator.autocast():
                loss = ddpm.diffusion_loss(self.unet, self.noise_scheduler, pixels, labels, args, weights, layout)
            check_finite(loss, self.step)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(self.unet.parameters(), args.max_grad_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if accelerator.optimizer_step_was_skipped:  # fp16 loss scaling found inf/NaN gradients
                logger.warning(f"Skipped the optimiser step at step {self.step}: non-finite gradients under fp16 loss scaling.")
        if accelerator.sync_gradients:
            if self.ema is not None:
                self.ema.step(self.unet.parameters())
            self.step += 1
            self.loss = loss.detach().item()
        self.stopwatch.count(images.shape[0] * accelerator.num_processes, self.step)
        return accelerator.sync_gradients

    def losses(self) -> dict[str, float]:
        return {"loss": self.loss}

    def logs(self) -> dict[str, float]:
        return {**self.losses(), "lr": self.lr_scheduler.get_last_lr()[0]}

    def budget_note(self) -> str:
        return (f": the learning-rate schedule stops at {self.lr_scheduler.get_last_lr()[0]:.2e}, not at its end. Fewer "
                "--max_train_steps fit this machine (main_job.py sizes them by a calibration run).")

    @contextlib.contextmanager
    def sampling_pipeline(self, final: bool = False):
        unet = self.saved_model(final)
        with ema_weights(self.ema, unet):
            yield ddpm.sampling_pipeline(unet, self.noise_scheduler, self.args, self.vocab, self.max_labels_per_image, self.prior)

    def saved_model(self, final: bool = False) -> torch.nn.Module:
        unet = bare_model(self.accelerator, self.unet)
        # The saved UNet in the standard layout: channels_last would only make inference slower elsewhere.
        return unet.to(memory_format=torch.contiguous_format) if final else unet

    def model_figures(self) -> dict:
        return {"parameters_millions": sum(p.numel() for p in self.unet.parameters()) / 1e6, "resolution": self.args.resolution,
                "layouts": self.prior is not None}

    def write_card(self, summary: dict, folder: Path, samples: bool) -> None:
        ddpm.write_model_card(self.args, summary, self.vocab, folder, samples, layouts=self.prior is not None)

    def set_train_mode(self) -> None:
        self.unet.train()


def set_up(args: argparse.Namespace, accelerator: Accelerator) -> Run:
    """Data, model, EMA, optimiser and schedule, prepared by Accelerate (this order fixes what the seed draws; loading
    the data draws nothing); checkpoints then hold the UNet as ``unet/`` and its EMA as ``unet_ema/``."""
    dataset, vocab, layout_reason = ddpm.build_dataset(args, accelerator)
    layouts = len(dataset.tensors) == 4
    logger.info(f"Conditioning: {layout_reason}")
    map_channels = ddpm.map_channels_of(args, vocab, layouts)
    unet = ddpm.build_model(args, len(vocab), 0 if map_channels is None else map_channels.shape[1])
    prior = layout_prior(*dataset.tensors[2:], args.layout_prior_size, args.seed) if layouts else None
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
    save_in_diffusers_layout(accelerator, unet, "unet", ema)
    evaluator = start_trackers_and_evaluator(args, accelerator)
    logger.info(f"{len(dataset)} images, {max_steps} steps of {args.train_batch_size}x{accelerator.num_processes}x"
                f"{args.gradient_accumulation_steps}, {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters")
    return Run(args=args, accelerator=accelerator, loader=loader, max_steps=max_steps, updates_per_epoch=updates_per_epoch,
               batches_per_update=args.gradient_accumulation_steps, vocab=vocab, evaluator=evaluator, unet=unet, ema=ema,
               optimizer=optimizer, lr_scheduler=lr_scheduler, noise_scheduler=noise_scheduler, floor=floor,
               max_labels_per_image=int(dataset.tensors[1].sum(1).max()), prior=prior, map_channels=map_channels)


def memory_format(args: argparse.Namespace) -> torch.memory_format:
    return torch.channels_last if args.channels_last else torch.contiguous_format


def main(argv: list[str] | None = None) -> None:
    args = ddpm.parse_args(argv)
    with writer_lock(args.output_dir, hold=is_main_rank()):
        accelerator = start_generator_run(args, gradient_accumulation_steps=args.gradient_accumulation_steps)
        train(set_up(args, accelerator))


if __name__ == "__main__":
    run(main)  # the project's own errors as one line (iclevr.cli)
