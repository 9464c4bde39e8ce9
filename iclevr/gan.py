# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""The conditional GAN baseline's parts (``train_conditional_gan.py`` composes them): its flags, the discriminator,
the hinge losses, and saving the generator as an `ICLEVRGANPipeline`.

The generator is `pipeline_iclevr_gan.ConditionalGenerator` (BigGAN-style, conditional BatchNorm in every block),
shipped with its pipeline file so a saved GAN loads like a saved DDPM. The discriminator is a spectral-norm ResNet that sees the
labels through a projection (Miyato & Koyama 2018: ``D(x, y) = psi(phi(x)) + <embed(y), phi(x)>``, here with the
multi-hot ``y`` embedded as the sum of its labels' vectors), or through ACGAN's auxiliary classifier, or both.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from iclevr.argtypes import fraction, non_negative_float, positive_float, positive_int
from iclevr.ddpm import add_training_data_args
from iclevr.flags import add_length_args, add_precision_ema_args, add_run_args, check_run_args, int_list
from iclevr.hub import CARD_TAIL, write_card
from iclevr.loop import save_pipeline_folder
from iclevr.utils import ema_weights
from pipeline_iclevr import LabelVocabulary
from pipeline_iclevr_gan import ConditionalGenerator, ICLEVRGANPipeline

DISCRIMINATOR_HEADS = ("projection", "acgan", "both")


# --- flags -------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags of ``train_conditional_gan.py``: the diffusion trainer's data, length, precision, EMA and run flags,
    plus the GAN's own."""
    parser = argparse.ArgumentParser(prog="train_conditional_gan.py",
                                     description="Train a conditional GAN on i-CLEVR and save an ICLEVRGANPipeline.")
    add_training_data_args(parser.add_argument_group("data"), resolution=32)

    model = parser.add_argument_group("model")
    model.add_argument("--latent_dim", type=positive_int, default=128, help="Length of the generator's noise vector.")
    model.add_argument("--generator_channels", type=int_list, default=None,
                       help="Generator channels from 4x4 up to the resolution, one per level (default: 256,256,128,64 at 32x32).")
    model.add_argument("--discriminator_channels", type=int_list, default=None,
                       help="Discriminator channels per level, each level halving the resolution down to 4x4 "
                            "(default: 64,128,256 at 32x32).")
    model.add_argument("--discriminator_head", type=str, default="projection", choices=DISCRIMINATOR_HEADS,
                       help="How the discriminator sees the labels: a projection (the default: it scored higher than "
                            "ACGAN's auxiliary classifier at equal minutes, docs/experiments.md), the classifier, or both.")
    model.add_argument("--aux_loss_weight", type=non_negative_float, default=1.0, help="Weight of the auxiliary classifier's BCE (acgan, both).")

    optim = parser.add_argument_group("optimisation")
    add_length_args(optim)
    optim.add_argument("--learning_rate", type=positive_float, default=2e-4, help="Generator Adam learning rate (constant, as GANs use).")
    optim.add_argument("--discriminator_learning_rate", type=positive_float, default=2e-4, help="Discriminator Adam learning rate.")
    optim.add_argument("--adam_beta1", type=fraction, default=0.0, help="Adam beta1 of both networks (0: no momentum, as SNGAN and BigGAN).")
    optim.add_argument("--adam_beta2", type=fraction, default=0.999, help="Adam beta2 of both networks.")
    optim.add_argument("--discriminator_steps", type=positive_int, default=2,
                       help="Discriminator updates per generator update, each on its own batch (SNGAN uses 5; 2 fits a CPU hour).")
    add_precision_ema_args(optim, ema_max_decay=0.999, compiles=False)

    run = parser.add_argument_group("run")
    add_run_args(run, output_dir="outputs/iclevr-gan", project_name="train_conditional_gan")
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject impossible combinations before any work starts; fill in the resolution-dependent defaults."""
    levels = args.resolution.bit_length() - 3
    if args.resolution < 8 or args.resolution & (args.resolution - 1):
        parser.error(f"--resolution must be a power of two of at least 8 for the GAN, got {args.resolution}.")
    if args.generator_channels is None:
        args.generator_channels = ([256] * levels + [128, 64])[-(levels + 1):] if levels >= 2 else [256] * (levels + 1)
    if args.discriminator_channels is None:
        args.discriminator_channels = [64 * 2 ** min(i, 2) for i in range(levels)]
    if len(args.generator_channels) != levels + 1:
        parser.error(f"--generator_channels needs {levels + 1} entries at resolution {args.resolution} (4x4 up to it).")
    if len(args.discriminator_channels) != levels:
        parser.error(f"--discriminator_channels needs {levels} entries at resolution {args.resolution} (down to 4x4).")
    if min(args.generator_channels + args.discriminator_channels) < 1:
        parser.error("--generator_channels and --discriminator_channels must be positive.")
    check_run_args(parser, args)


# --- models ------------------------------------------------------------------------------------------------------
def build_generator(args: argparse.Namespace, vocab: LabelVocabulary) -> ConditionalGenerator:
    return ConditionalGenerator(num_labels=len(vocab), sample_size=args.resolution, latent_dim=args.latent_dim,
                                block_out_channels=tuple(args.generator_channels))


class DiscriminatorBlock(torch.nn.Module):
    """SNGAN's down-block: (ReLU →) conv → ReLU → conv → 2x average pooling, plus a pooled 1x1 shortcut; spectral norm
    on every convolution. The first block skips the leading ReLU, which would clip the input image."""

    def __init__(self, in_channels: int, out_channels: int, first: bool):
        super().__init__()
        self.first = first
        self.conv1 = spectral_norm(torch.nn.Conv2d(in_channels, out_channels, 3, padding=1))
        self.conv2 = spectral_norm(torch.nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.shortcut = spectral_norm(torch.nn.Conv2d(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.relu(self.conv1(x if self.first else F.relu(x))))
        return F.avg_pool2d(h, 2) + self.shortcut(F.avg_pool2d(x, 2))


class Discriminator(torch.nn.Module):
    """Image + multi-hot labels → a realness logit ``(B,)`` and, with an auxiliary classifier, label logits ``(B, L)``."""

    def __init__(self, num_labels: int, channels: list[int], head: str = "projection"):
        super().__init__()
        if head not in DISCRIMINATOR_HEADS:
            raise ValueError(f"Unknown discriminator head {head!r}; choose from {DISCRIMINATOR_HEADS}.")
        self.head = head
        self.blocks = torch.nn.Sequential(*(DiscriminatorBlock(a, b, i == 0) for i, (a, b) in enumerate(zip([3, *channels[:-1]], channels))))
        self.realness = spectral_norm(torch.nn.Linear(channels[-1], 1))
        self.label_embedding = spectral_norm(torch.nn.Linear(num_labels, channels[-1], bias=False)) if head != "acgan" else None
        self.classifier = spectral_norm(torch.nn.Linear(channels[-1], num_labels)) if head != "projection" else None

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        features = F.relu(self.blocks(images)).sum(dim=(2, 3))  # global sum pooling, as SNGAN
        logit = self.realness(features).squeeze(1)
        if self.label_embedding is not None:
            logit = logit + (self.label_embedding(labels.to(features.dtype)) * features).sum(1)
        return logit, (self.classifier(features) if self.classifier is not None else None)


# --- losses ------------------------------------------------------------------------------------------------------
def discriminator_loss(real: tuple, fake: tuple, labels: torch.Tensor, aux_weight: float) -> torch.Tensor:
    """Hinge loss on real and generated images, plus the auxiliary classifier's BCE on the real ones (ACGAN trains the
    classifier on real images only, so the generator cannot teach it its own mistakes)."""
    loss = F.relu(1 - real[0].float()).mean() + F.relu(1 + fake[0].float()).mean()
    if real[1] is not None:
        loss = loss + aux_weight * F.binary_cross_entropy_with_logits(real[1].float(), labels)
    return loss


def generator_loss(fake: tuple, labels: torch.Tensor, aux_weight: float) -> torch.Tensor:
    """The hinge generator loss ``-D(G(z, y), y)``, plus the classifier's BCE of the generated images against ``y``."""
    loss = -fake[0].float().mean()
    if fake[1] is not None:
        loss = loss + aux_weight * F.binary_cross_entropy_with_logits(fake[1].float(), labels)
    return loss


# --- sampling and saving -----------------------------------------------------------------------------------------
@torch.no_grad()
def refresh_batch_norm(generator: ConditionalGenerator, labels: torch.Tensor, batches: int = 16, batch_size: int = 64,
                       seed: int = 0) -> None:
    """Recompute the generator's BatchNorm running statistics for its current weights ("standing statistics", as
    BigGAN): the EMA averages the weights only, and statistics gathered under the live weights do not fit them.

    ``labels`` is a pool of training conditions drawn from at random; the draws use their own generator, so sampling
    does not move the training RNG.
    """
    rng = torch.Generator().manual_seed(seed)
    norms = [m for m in generator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    was_training = generator.training
    generator.train()
    device, dtype = generator.device, generator.dtype
    for _ in range(batches):
        rows = torch.randint(labels.shape[0], (batch_size,), generator=rng)
        latents = torch.randn(batch_size, generator.config.latent_dim, generator=rng)
        generator(latents.to(device, dtype), labels[rows].to(device, dtype))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    generator.train(was_training)


@contextlib.contextmanager
def sampling_pipeline(generator: ConditionalGenerator, ema, train_labels: torch.Tensor, seed: int,
                      vocab: LabelVocabulary) -> Iterator[ICLEVRGANPipeline]:
    """An eval-mode `ICLEVRGANPipeline` (taking ``vocab``'s label names) over the generator with the EMA weights (if
    used) and fresh BatchNorm statistics; the live weights, statistics and mode come back afterwards, so training goes
    on unchanged."""
    training = generator.training
    with ema_weights(ema, generator):
        buffers = {name: buffer.clone() for name, buffer in generator.named_buffers()}
        try:
            refresh_batch_norm(generator, train_labels, seed=seed)
            yield ICLEVRGANPipeline(gan=generator.eval(), label2id=vocab.label2id)
        finally:
            for name, buffer in generator.named_buffers():
                buffer.copy_(buffers[name])
            generator.train(training)


def save_pipeline(generator, ema, train_labels: torch.Tensor, args: argparse.Namespace, output_dir: Path,
                  vocab: LabelVocabulary) -> Path:
    """Save the generator (EMA weights if used, standing BatchNorm statistics) as an `ICLEVRGANPipeline`, written
    in one piece as the diffusion trainer saves (`iclevr.loop.save_pipeline_folder`)."""
    with sampling_pipeline(generator, ema, train_labels, args.seed, vocab) as pipeline:
        return save_pipeline_folder(pipeline, generator, output_dir)


CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

A conditional GAN for {{ data }}, trained with the `train_conditional_gan.py` script of iclevr-diffusion as a
baseline for its diffusion models: a BigGAN-style generator (conditional BatchNorm) against a spectral-norm
discriminator ({{ head }} head), hinge loss. Each image is conditioned on a multi-hot label vector.

## Usage

```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{{ repo }}", trust_remote_code=True)  # or pipeline_iclevr_gan.ICLEVRGANPipeline
images = pipe({{ example }}).images  # one forward pass: no sampler, steps or guidance
```

""" + CARD_TAIL


def write_model_card(args, summary: dict, vocab: LabelVocabulary, folder: Path, samples: bool) -> None:
    """The GAN pipeline's README.md in ``folder`` (`iclevr.hub.write_card`)."""
    write_card(args, summary, vocab, CARD_TEMPLATE, "conditional GAN", "gan", "one-step GAN generator", folder, samples,
               head=args.discriminator_head)
