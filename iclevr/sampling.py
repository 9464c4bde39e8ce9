# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Sampling a saved pipeline the way the report measures it: a named sampler, seeded batches, and the seconds per
image. Shared by ``evaluate_pipeline.py`` and ``bench/bench_sampling.py``, so the bench times what the report scores."""

from __future__ import annotations

import time

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from pipeline_iclevr import ICLEVRPipeline
from pipeline_iclevr_gan import ICLEVRGANPipeline

SCHEDULERS = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
}


def load_pipeline(path: str, scheduler: str | None, device: str) -> ICLEVRPipeline | ICLEVRGANPipeline:
    """A saved pipeline on ``device``, progress bar off: a diffusion pipeline with the sampler named ``scheduler`` (a key
    of `SCHEDULERS`; None keeps the one it was saved with), or a GAN's one-step pipeline (which has no sampler)."""
    if is_gan_folder(path):
        if scheduler is not None:
            raise ValueError(f"{path} holds a GAN generator, which samples in one step: it takes no sampler (got {scheduler!r}).")
        pipe = ICLEVRGANPipeline.from_pretrained(path).to(device)
    else:
        pipe = ICLEVRPipeline.from_pretrained(path).to(device)
        if scheduler is not None:
            pipe.scheduler = SCHEDULERS[scheduler].from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def is_gan_folder(path: str) -> bool:
    """Whether a saved pipeline (folder or Hub id) is an `ICLEVRGANPipeline`, by the class its model_index.json names."""
    name = ICLEVRPipeline.load_config(path).get("_class_name")
    return name == ICLEVRGANPipeline.__name__


def is_one_step(pipe) -> bool:
    """A GAN pipeline: one forward pass, no sampler, steps or guidance."""
    return isinstance(pipe, ICLEVRGANPipeline)


def generate(pipe, conditions, seed: int, batch_size: int, latents: torch.Tensor | None = None,
             **sampling) -> tuple[np.ndarray, float]:
    """Images ``(N, H, W, 3)`` in [0, 1] for the conditions, in seeded batches (from ``latents`` ``(N, 3, H, W)``
    when given, else from noise the seed draws); and the seconds per image."""
    outputs, start = [], time.perf_counter()
    for offset in range(0, len(conditions), batch_size):
        batch = slice(offset, offset + batch_size)
        generator = torch.Generator().manual_seed(seed * 100_003 + offset)
        outputs.append(pipe(conditions[batch], generator=generator, output_type="np",
                            latents=None if latents is None else latents[batch], **sampling).images)
    return np.concatenate(outputs), (time.perf_counter() - start) / len(conditions)


def score(evaluator, images: np.ndarray, conditions) -> dict:
    """`Evaluator.score` of ``"np"`` images ``(N, H, W, 3)`` in [0, 1]."""
    return evaluator.score(torch.from_numpy(images).permute(0, 3, 1, 2).float(), conditions)


def initial_noise(pipe, count: int, seed: int) -> torch.Tensor:
    """``count`` seeded initial noises, the pipeline's ``latents`` argument: ``(count, 3, H, W)`` in a diffusion
    pipeline's pixel space, ``(count, latent_dim)`` for a GAN."""
    shape = (pipe.generator.config.latent_dim,) if is_one_step(pipe) else (3, *pipe.image_size)
    return torch.randn((count, *shape), generator=torch.Generator().manual_seed(seed))


def slerp(start: torch.Tensor, end: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical interpolation between noises, per sample: keeps the norm that a Gaussian sample of this size has,
    where a straight line's midpoint has about 0.71 of it (and samples as a washed-out image)."""
    a, b = start.flatten(1), end.flatten(1)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1, 1))[:, None]
    mixed = (torch.sin((1 - alpha) * theta) * a + torch.sin(alpha * theta) * b) / torch.sin(theta).clamp(min=1e-8)
    return mixed.view_as(start)
