# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Train a conditional GAN baseline on i-CLEVR with 🤗 Accelerate and save it as an `ICLEVRGANPipeline`.

    accelerate launch --config_file accelerate_config.yaml train_conditional_gan.py --output_dir outputs/iclevr-gan \\
        --use_ema --validation_steps 500 --evaluator outputs/evaluator

It takes the diffusion trainer's data, length, precision, EMA, checkpoint, validation and Hub flags, so the two train
on the same data under the same budget and are scored by the same evaluator and report (``evaluate_pipeline.py``
scores a saved GAN like a saved DDPM). The parts (discriminator, hinge losses, saving) live in `iclevr.gan`, the loop
both generator trainers share in `iclevr.loop`; this file is the GAN's part of it: its set-up and its training step (a
discriminator update on every batch, a generator update every ``--discriminator_steps``). A step is a generator update.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from diffusers.training_utils import EMAModel

from iclevr import ddpm, gan
from iclevr.checkpoints import save_in_diffusers_layout
from iclevr.cli import run
from iclevr.images import random_hflip, to_model_input
from iclevr.io import is_main_rank, writer_lock
from iclevr.loop import TrainingRun, check_finite, train
from iclevr.run_setup import start_generator_run, start_trackers_and_evaluator
from iclevr.utils import bare_model
from pipeline_iclevr_gan import ConditionalGenerator

logger = get_logger(__name__)


@dataclass(kw_only=True)
class Run(TrainingRun):
    """One GAN run: the shared state plus both networks, the generator's EMA, both optimisers and the training labels
    (the pool BatchNorm statistics are refreshed from)."""

    generator: torch.nn.Module
    discriminator: torch.nn.Module
    ema: EMAModel | None
    generator_optimizer: torch.optim.Optimizer
    discriminator_optimizer: torch.optim.Optimizer
    train_labels: torch.Tensor
    loss_discriminator: float = float("nan")
    loss_generator: float = float("nan")

    def train_batch(self, index: int, images: torch.Tensor, labels: torch.Tensor) -> bool:
        """One batch: a discriminator update on real and generated images, then, every ``--discriminator_steps``
        batches, a generator update on a fresh draw of noise for the same labels (so it learns the data's label
        distribution); whether the generator was updated."""
        args, accelerator = self.args, self.accelerator
        update_generator = (index + 1) % args.discriminator_steps == 0
        pixels = to_model_input(images)
        if args.random_flip:
            pixels = random_hflip(pixels)
        latent_dim = bare_model(accelerator, self.generator).config.latent_dim
        with accelerator.autocast():
            with torch.no_grad():  # the discriminator's update needs no gradient through the generator
                fake = self.generator(torch.randn(pixels.shape[0], latent_dim, device=pixels.device), labels)
            loss_d = gan.discriminator_loss(self.discriminator(pixels, labels), self.discriminator(fake, labels), labels,
                                            args.aux_loss_weight)
        check_finite(loss_d, self.step, "discriminator")
        accelerator.backward(loss_d)
        self.discriminator_optimizer.step()
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        if update_generator:
            with accelerator.autocast():
                fake = self.generator(torch.randn(pixels.shape[0], latent_dim, device=pixels.device), labels)
                loss_g = gan.generator_loss(self.discriminator(fake, labels), labels, args.aux_loss_weight)
            check_finite(loss_g, self.step, "generator")
            accelerator.backward(loss_g)
            self.generator_optimizer.step()
            self.generator_optimizer.zero_grad(set_to_none=True)
            self.discriminator_optimizer.zero_grad(set_to_none=True)  # the gradients the generator's loss left in D
            if self.ema is not None:
                self.ema.step(self.generator.parameters())
            self.step += 1
            self.loss_discriminator, self.loss_generator = loss_d.detach().item(), loss_g.detach().item()
        self.stopwatch.count(images.shape[0] * accelerator.num_processes, self.step)
        return update_generator

    @property
    def batches_per_epoch(self) -> int:
        # Every epoch is a whole number of generator updates: the batches left over are not trained on, so an epoch
        # that a resumed run starts is the same as in an uninterrupted one.
        return self.updates_per_epoch * self.batches_per_update

    def losses(self) -> dict[str, float]:
        return {"loss_discriminator": self.loss_discriminator, "loss_generator": self.loss_generator}

    def sampling_pipeline(self, final: bool = False):
        return gan.sampling_pipeline(self.saved_model(), self.ema, self.train_labels, self.args.seed, self.vocab)

    def saved_model(self, final: bool = False) -> torch.nn.Module:
        return bare_model(self.accelerator, self.generator)

    def model_figures(self) -> dict:
        return {"generator_parameters_millions": sum(p.numel() for p in self.generator.parameters()) / 1e6,
                "resolution": self.args.resolution, "discriminator_head": self.args.discriminator_head}

    def write_card(self, summary: dict, folder: Path, samples: bool) -> None:
        gan.write_model_card(self.args, summary, self.vocab, folder, samples)

    def set_train_mode(self) -> None:
        self.generator.train()
        self.discriminator.train()


def set_up(args: argparse.Namespace, accelerator: Accelerator) -> Run:
    """Both networks, the generator's EMA, two Adam optimisers and the data, prepared by Accelerate; checkpoints then
    hold the generator as ``gan/`` and its EMA as ``gan_ema/`` (the discriminator stays with Accelerate)."""
    dataset, vocab, _ = ddpm.build_dataset(args, accelerator, read_layouts=False)  # the GAN draws from labels alone
    train_labels = dataset.tensors[1]
    generator = gan.build_generator(args, vocab)
    discriminator = gan.Discriminator(len(vocab), args.discriminator_channels, args.discriminator_head)
    ema = None
    if args.use_ema:
        ema = EMAModel(generator.parameters(), decay=args.ema_max_decay, use_ema_warmup=True, inv_gamma=args.ema_inv_gamma,
                       power=args.ema_power, foreach=True, model_cls=ConditionalGenerator, model_config=generator.config)
    betas = (args.adam_beta1, args.adam_beta2)
    generator_optimizer = torch.optim.Adam(generator.parameters(), lr=args.learning_rate, betas=betas)
    discriminator_optimizer = torch.optim.Adam(discriminator.parameters(), lr=args.discriminator_learning_rate, betas=betas)
    loader = ddpm.build_dataloader(dataset, args)
    updates_per_epoch = len(loader) // accelerator.num_processes // args.discriminator_steps
    if updates_per_epoch == 0:
        raise ValueError(f"{len(dataset)} images are fewer than {args.discriminator_steps} batches of {args.train_batch_size}; "
                         "lower --train_batch_size or --discriminator_steps.")
    max_steps = args.max_train_steps or args.num_epochs * updates_per_epoch
    generator, discriminator, generator_optimizer, discriminator_optimizer, loader = accelerator.prepare(
        generator, discriminator, generator_optimizer, discriminator_optimizer, loader)
    if ema is not None:
        ema.to(accelerator.device)
    save_in_diffusers_layout(accelerator, generator, "gan", ema)
    evaluator = start_trackers_and_evaluator(args, accelerator)
    millions = [sum(p.numel() for p in m.parameters()) / 1e6 for m in (generator, discriminator)]
    logger.info(f"{len(dataset)} images, {max_steps} generator steps ({args.discriminator_steps} discriminator steps each) of "
                f"{args.train_batch_size}x{accelerator.num_processes}; G {millions[0]:.2f}M, D {millions[1]:.2f}M parameters")
    return Run(args=args, accelerator=accelerator, loader=loader, max_steps=max_steps, updates_per_epoch=updates_per_epoch,
               batches_per_update=args.discriminator_steps, vocab=vocab, evaluator=evaluator, generator=generator,
               discriminator=discriminator, ema=ema, generator_optimizer=generator_optimizer,
               discriminator_optimizer=discriminator_optimizer, train_labels=train_labels)


def main(argv: list[str] | None = None) -> None:
    args = gan.parse_args(argv)
    with writer_lock(args.output_dir, hold=is_main_rank()):
        train(set_up(args, start_generator_run(args)))


if __name__ == "__main__":
    run(main)  # the project's own errors as one line (iclevr.cli)
