# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Sampling a saved pipeline the way the report measures it: a named sampler, seeded batches, and the seconds per
image. Shared by ``evaluate_pipeline.py`` and ``bench/bench_sampling.py``, so the bench times what the report scores.

`generate_best_of` adds best-of-N sampling ranked by the model's own lift score (CompLift, Yu et al. 2025): how much
better the model denoises an image knowing each of its labels than knowing none. The evaluator never ranks."""

from __future__ import annotations

import time

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from pipeline_iclevr import ICLEVRPipeline, predict
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
             layouts: list | None = None, **sampling) -> tuple[np.ndarray, float]:
    """Images ``(N, H, W, 3)`` in [0, 1] for the conditions, in seeded batches (from ``latents`` ``(N, 3, H, W)``
    when given, else from noise the seed draws; a layout model's objects where ``layouts`` say, else where its prior
    draws them); and the seconds per image."""
    outputs, start = [], time.perf_counter()
    for offset in range(0, len(conditions), batch_size):
        batch = slice(offset, offset + batch_size)
        generator = torch.Generator().manual_seed(seed * 100_003 + offset)
        placed = {} if layouts is None else {"layouts": layouts[batch]}
        outputs.append(pipe(conditions[batch], generator=generator, output_type="np",
                            latents=None if latents is None else latents[batch], **placed, **sampling).images)
    return np.concatenate(outputs), (time.perf_counter() - start) / len(conditions)


def score(evaluator, images: np.ndarray, conditions) -> dict:
    """`Evaluator.score` of ``"np"`` images ``(N, H, W, 3)`` in [0, 1]."""
    return evaluator.score(torch.from_numpy(images).permute(0, 3, 1, 2).float(), conditions)


def initial_noise(pipe, count: int, seed: int) -> torch.Tensor:
    """``count`` seeded initial noises, the pipeline's ``latents`` argument: ``(count, 3, H, W)`` in a diffusion
    pipeline's pixel space, ``(count, latent_dim)`` for a GAN."""
    shape = (pipe.gan.config.latent_dim,) if is_one_step(pipe) else (3, *pipe.image_size)
    return torch.randn((count, *shape), generator=torch.Generator().manual_seed(seed))


def slerp(start: torch.Tensor, end: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical interpolation between noises, per sample: keeps the norm that a Gaussian sample of this size has,
    where a straight line's midpoint has about 0.71 of it (and samples as a washed-out image)."""
    a, b = start.flatten(1), end.flatten(1)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1, 1))[:, None]
    mixed = (torch.sin((1 - alpha) * theta) * a + torch.sin(alpha * theta) * b) / torch.sin(theta).clamp(min=1e-8)
    return mixed.view_as(start)


@torch.no_grad()
def lift_scores(pipe: ICLEVRPipeline, images: torch.Tensor, conditions: torch.Tensor, num_timesteps: int = 8,
                seed: int = 0) -> torch.Tensor:
    """Per image and label, the model's lift score (CompLift): its denoising error under the null condition minus
    under that label alone, averaged over ``num_timesteps`` evenly spaced noise levels (the same noise for every image,
    so candidates differ only by what they show). A positive lift says the image holds what the label asks for, as the
    model reads it: ``log p(x | label) - log p(x)`` up to the ELBO's weighting.

    Args:
        images: ``(N, 3, H, W)`` in [0, 1] (``output_type="pt"``).
        conditions: ``(N, L)`` multi-hot.

    Returns:
        ``(N, L)`` lifts, NaN where a label is not in the condition.
    """
    device, dtype = pipe._execution_device, pipe.unet.dtype
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    total = noise_scheduler.config.num_train_timesteps
    clean = (images * 2 - 1).to(device, dtype)
    rng = torch.Generator().manual_seed(seed)
    lifts = torch.zeros(conditions.shape)
    pairs = conditions.nonzero()
    for k in range(num_timesteps):
        step = torch.full((clean.shape[0],), round((k + 0.5) * total / num_timesteps), device=device, dtype=torch.long)
        noise = torch.randn(clean.shape[1:], generator=rng).to(device, dtype).expand_as(clean)
        noisy = noise_scheduler.add_noise(clean, noise, step)
        target = {"epsilon": noise, "sample": clean, "v_prediction": noise_scheduler.get_velocity(clean, noise, step)}[
            noise_scheduler.config.prediction_type]
        null = denoising_error(pipe, noisy, step, torch.zeros(conditions.shape, device=device, dtype=dtype), target)
        rows, labels = pairs.unbind(1)  # one pass over every (image, one of its labels)
        single = torch.nn.functional.one_hot(labels, conditions.shape[1]).to(device, dtype)
        conditional = denoising_error(pipe, noisy[rows], step[rows], single, target[rows])
        lifts[rows, labels] += (null[rows] - conditional).cpu() / num_timesteps
    return lifts.masked_fill(conditions == 0, float("nan"))


def denoising_error(pipe, noisy: torch.Tensor, step: torch.Tensor, conditions: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per image, the mean squared error of the UNet's prediction (in its own prediction space) under ``conditions``."""
    prediction = predict(pipe.unet, noisy, step, conditions, pipe.config.patch_size)
    return (prediction.float() - target.float()).pow(2).mean((1, 2, 3))


def generate_best_of(pipe, conditions, seed: int, batch_size: int, best_of: int, num_timesteps: int = 8,
                     **sampling) -> tuple[np.ndarray, float]:
    """Best-of-N sampling: ``best_of`` candidates per condition (seeds ``seed``, ``seed + 1_000_000``, ...), and for each
    the one whose weakest label lifts most (the minimum over its labels of `lift_scores`, so a missing or wrong object
    sinks a candidate). Returns the chosen images ``(N, H, W, 3)`` and the seconds per chosen image, candidates and
    scoring included."""
    start = time.perf_counter()
    multi_hot = pipe.vocab.encode_batch(conditions)
    candidates, scores = [], []
    for k in range(best_of):
        images, _ = generate(pipe, conditions, seed + 1_000_000 * k, batch_size, **sampling)
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        lifts = torch.cat([lift_scores(pipe, pixels[i : i + batch_size], multi_hot[i : i + batch_size], num_timesteps, seed)
                           for i in range(0, len(conditions), batch_size)])
        candidates.append(images)
        scores.append(torch.nan_to_num(lifts, nan=float("inf")).amin(1))
    chosen = torch.stack(scores).argmax(0).numpy()
    images = np.stack(candidates)[chosen, np.arange(len(conditions))]
    return images, (time.perf_counter() - start) / len(conditions)
