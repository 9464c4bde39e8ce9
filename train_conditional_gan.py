# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Train a conditional GAN baseline on i-CLEVR with 🤗 Accelerate and save it as an `ICLEVRGANPipeline`.

    accelerate launch --config_file accelerate_config.yaml train_conditional_gan.py --output_dir outputs/iclevr-gan \\
        --use_ema --validation_steps 500 --evaluator outputs/evaluator

It takes the diffusion trainer's data, length, precision, EMA, checkpoint, validation and Hub flags, so the two train
on the same data under the same budget and are scored by the same evaluator and report (``evaluate_pipeline.py``
scores a saved GAN like a saved DDPM). The parts (discriminator, hinge losses, saving) live in `iclevr.gan`; this file
is the training loop: set-up → resume → ``train_step`` per batch (a discriminator update on every batch, a generator
update every ``--discriminator_steps``) → finish. A step is a generator update.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from iclevr import ddpm, gan
from iclevr.data import random_hflip, to_model_input
from iclevr.training import (
    Stopwatch,
    TrainingRun,
    check_finite,
    checkpoint_if_due,
    publish,
    resume_step,
    start_generator_run,
    start_trackers_and_evaluator,
    validate_pipeline,
)
from iclevr.utils import bare_model

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
    losses: tuple[float, float] = (float("nan"), float("nan"))


def set_up(args: argparse.Namespace, accelerator: Accelerator) -> Run:
    """Both networks, the generator's EMA, two Adam optimisers and the data, prepared by Accelerate."""
    dataset, vocab = ddpm.build_dataset(args, accelerator)
    train_labels = dataset.tensors[1]
    generator = gan.build_generator(args, vocab)
    discriminator = gan.Discriminator(len(vocab), args.discriminator_channels, args.discriminator_head)
    ema = None
    if args.use_ema:
        ema = EMAModel(generator.parameters(), decay=args.ema_max_decay, use_ema_warmup=True, inv_gamma=args.ema_inv_gamma,
                       power=args.ema_power, foreach=True)
    betas = (args.adam_beta1, args.adam_beta2)
    generator_optimizer = torch.optim.Adam(generator.parameters(), lr=args.learning_rate, betas=betas)
    discriminator_optimizer = torch.optim.Adam(discriminator.parameters(), lr=args.discriminator_learning_rate, betas=betas)
    loader = ddpm.build_dataloader(dataset, args)
    # Every epoch is a whole number of generator updates: the batches left over are not trained on, so an epoch that a
    # resumed run starts is the same as in an uninterrupted one.
    updates_per_epoch = len(loader) // accelerator.num_processes // args.discriminator_steps
    if updates_per_epoch == 0:
        raise ValueError(f"{len(dataset)} images are fewer than {args.discriminator_steps} batches of {args.train_batch_size}; "
                         "lower --train_batch_size or --discriminator_steps.")
    max_steps = args.max_train_steps or args.num_epochs * updates_per_epoch
    generator, discriminator, generator_optimizer, discriminator_optimizer, loader = accelerator.prepare(
        generator, discriminator, generator_optimizer, discriminator_optimizer, loader)
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    evaluator = start_trackers_and_evaluator(args, accelerator)
    millions = [sum(p.numel() for p in m.parameters()) / 1e6 for m in (generator, discriminator)]
    logger.info(f"{len(dataset)} images, {max_steps} generator steps ({args.discriminator_steps} discriminator steps each) of "
                f"{args.train_batch_size}x{accelerator.num_processes}; G {millions[0]:.2f}M, D {millions[1]:.2f}M parameters")
    return Run(args=args, accelerator=accelerator, loader=loader, max_steps=max_steps, updates_per_epoch=updates_per_epoch,
               vocab=vocab, evaluator=evaluator, generator=generator, discriminator=discriminator, ema=ema,
               generator_optimizer=generator_optimizer, discriminator_optimizer=discriminator_optimizer,
               train_labels=train_labels)


def resume(run: Run) -> tuple[int, int]:
    """Load ``--resume_from_checkpoint`` (both networks and optimisers, EMA, RNG states); returns the epoch to start in
    and the batches of it already trained on."""
    run.step = resume_step(run.args, run.accelerator)
    return run.step // run.updates_per_epoch, (run.step % run.updates_per_epoch) * run.args.discriminator_steps


def train_step(run: Run, images: torch.Tensor, labels: torch.Tensor, update_generator: bool) -> None:
    """One batch: a discriminator update on real and generated images, then, every ``--discriminator_steps`` batches, a
    generator update on a fresh draw of noise for the same labels (so it learns the data's label distribution)."""
    args, accelerator = run.args, run.accelerator
    pixels = to_model_input(images)
    if args.random_flip:
        pixels = random_hflip(pixels)
    latent_dim = bare_model(accelerator, run.generator).config.latent_dim
    with accelerator.autocast():
        with torch.no_grad():  # the discriminator's update needs no gradient through the generator
            fake = run.generator(torch.randn(pixels.shape[0], latent_dim, device=pixels.device), labels)
        loss_d = gan.discriminator_loss(run.discriminator(pixels, labels), run.discriminator(fake, labels), labels,
                                        args.aux_loss_weight)
    check_finite(loss_d, run.step, "discriminator")
    accelerator.backward(loss_d)
    run.discriminator_optimizer.step()
    run.discriminator_optimizer.zero_grad(set_to_none=True)
    if update_generator:
        with accelerator.autocast():
            fake = run.generator(torch.randn(pixels.shape[0], latent_dim, device=pixels.device), labels)
            loss_g = gan.generator_loss(run.discriminator(fake, labels), labels, args.aux_loss_weight)
        check_finite(loss_g, run.step, "generator")
        accelerator.backward(loss_g)
        run.generator_optimizer.step()
        run.generator_optimizer.zero_grad(set_to_none=True)
        run.discriminator_optimizer.zero_grad(set_to_none=True)  # the gradients the generator's loss left in D
        if run.ema is not None:
            run.ema.step(run.generator.parameters())
        run.step += 1
        run.losses = (loss_d.detach().item(), loss_g.detach().item())
    run.stopwatch.count(images.shape[0] * accelerator.num_processes, run.step)


def after_step(run: Run, epoch: int, progress: tqdm) -> bool:
    """Log, checkpoint and validate after a generator update; returns whether training should stop here."""
    args, accelerator = run.args, run.accelerator
    progress.update(1)
    progress.set_postfix(loss_d=f"{run.losses[0]:.3f}", loss_g=f"{run.losses[1]:.3f}")
    accelerator.log({"loss_discriminator": run.losses[0], "loss_generator": run.losses[1], "epoch": epoch}, step=run.step)
    checkpoint_if_due(args, accelerator, run.step)
    if run.validation_due():
        validate(run)
    return run.stop_here()


def validate(run: Run) -> None:
    with run.stopwatch.paused():  # validation is not training time
        generator = bare_model(run.accelerator, run.generator)
        with gan.sampling_pipeline(generator, run.ema, run.train_labels, run.args.seed, run.vocab) as pipeline:
            run.record = validate_pipeline(pipeline, run.args, run.accelerator, run.step, run.evaluator)
    logger.info(f"validation at step {run.step}: {run.record}")


def finish(run: Run) -> None:
    """Final validation, the pipeline, its model card and ``train_summary.json`` (main process), then the Hub."""
    run.accelerator.wait_for_everyone()
    if run.accelerator.is_main_process:
        args, output_dir = run.args, Path(run.args.output_dir)
        if run.validation_due(final=True):
            validate(run)
        generator = bare_model(run.accelerator, run.generator)
        summary = run.summary({"final_loss_discriminator": run.losses[0], "final_loss_generator": run.losses[1]},
                              {"generator_parameters_millions": sum(p.numel() for p in generator.parameters()) / 1e6,
                               "resolution": args.resolution, "discriminator_head": args.discriminator_head})
        gan.save_pipeline(generator, run.ema, run.train_labels, args, output_dir, run.vocab)
        gan.write_model_card(args, summary, run.vocab)
        publish(args, summary)
    run.accelerator.end_training()


def main(argv: list[str] | None = None) -> None:
    args = gan.parse_args(argv)
    accelerator = start_generator_run(args)
    run = set_up(args, accelerator)
    first_epoch, skip_batches = resume(run)
    run.stopwatch = Stopwatch()
    progress = tqdm(total=run.max_steps, initial=run.step, desc="Steps", disable=not accelerator.is_local_main_process)
    batches_per_epoch = run.updates_per_epoch * args.discriminator_steps
    for epoch in range(first_epoch, run.num_epochs if run.step < run.max_steps else first_epoch):
        run.generator.train()
        run.discriminator.train()
        run.loader.set_epoch(epoch)
        skip = skip_batches if epoch == first_epoch else 0
        batches = accelerator.skip_first_batches(run.loader, skip) if skip else run.loader
        for batch, (images, labels) in enumerate(batches, start=skip):
            if batch >= batches_per_epoch:
                break
            update = (batch + 1) % args.discriminator_steps == 0
            train_step(run, images, labels, update)
            if update and after_step(run, epoch, progress):
                break
        if run.step >= run.max_steps:
            break
    progress.close()
    finish(run)


if __name__ == "__main__":
    main()
