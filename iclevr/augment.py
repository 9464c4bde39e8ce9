# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Training augmentations of the evaluator and the object finder: changes that keep every label true.

Mirror images, a low-resolution round trip (like the course's evaluator, trained on 32x32 images upsampled to 64x64,
so that upsampled low-resolution generations are read fairly), small brightness changes and pixel noise, and with
``appearance`` what no single renderer pins down: a tone curve, saturation, blur and a small change of scale. Hue is
never changed: colour is a label. Given layout ``boxes`` (fractions of the image), the mirror and the scale move them
with the pixels, so the object finder trains on the same augmentations as the evaluator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from iclevr.images import random_hflip

LOWRES_PROB = 0.5
LOWRES_SIZES = (32, 40, 48)  # the sizes low-resolution generators emit


def lowres_round_trip(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """Shrink to ``size`` (antialiased) and upsample back: what a low-resolution generator's upsampled output looks like."""
    full = pixels.shape[-1]
    small = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(small, size=(full, full), mode="bilinear", align_corners=False)


def _uniform(batch: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(batch, 1, 1, 1, generator=generator)


def appearance_jitter(pixels: torch.Tensor, generator: torch.Generator, boxes: torch.Tensor | None = None):
    """What no single renderer pins down, drawn per image, on float ``(B, 3, H, W)`` in [0, 1]: a tone curve (gamma
    0.75-1.33 and contrast ±20 %), saturation (×0.65-1.35 about each pixel's grey), a blur (σ 0.3-1.0 px, a third of
    the images) and a small change of scale (×0.9-1.1 about the centre, half of them). Hue is never changed: colour is
    a label. With ``boxes`` ``(B, K, 4)`` (fractions of the image), each image's boxes are scaled with it (clipped to
    the image) and both are returned; the random draws are the same either way."""
    batch = pixels.shape[0]
    pixels = pixels.clamp(0, 1) ** torch.exp(_uniform(batch, math.log(0.75), math.log(4 / 3), generator))
    mean = pixels.mean((1, 2, 3), keepdim=True)
    pixels = mean + (pixels - mean) * _uniform(batch, 0.8, 1.2, generator)
    grey = (pixels * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    pixels = grey + (pixels - grey) * _uniform(batch, 0.65, 1.35, generator)
    blurred = torch.rand(batch, generator=generator) < 1 / 3
    if blurred.any():
        sigma = float(0.3 + 0.7 * torch.rand(1, generator=generator))
        radius = 2
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-x * x / (2 * sigma * sigma))
        kernel = kernel / kernel.sum()
        part = F.pad(pixels[blurred], (radius,) * 4, mode="replicate")
        part = F.conv2d(part, kernel.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
        pixels[blurred] = F.conv2d(part, kernel.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    scaled = torch.rand(batch, generator=generator) < 0.5
    if scaled.any():
        count = int(scaled.sum())
        zoom = 1 / (0.9 + 0.2 * torch.rand(count, generator=generator))  # the grid's step: the image grows by 1 / zoom
        theta = torch.zeros(count, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = zoom
        grid = F.affine_grid(theta, list(pixels[scaled].shape), align_corners=False)
        pixels[scaled] = F.grid_sample(pixels[scaled], grid, mode="bilinear", padding_mode="border", align_corners=False)
        if boxes is not None:
            boxes = boxes.clone()
            boxes[scaled] = (0.5 + (boxes[scaled] - 0.5) / zoom[:, None, None]).clamp(0, 1)
    pixels = pixels.clamp(0, 1)
    return pixels if boxes is None else (pixels, boxes)


def augment(images: torch.Tensor, generator: torch.Generator, lowres_prob: float, lowres_sizes: Sequence[int],
            flip: bool = True, appearance: bool = False, boxes: torch.Tensor | None = None):
    """uint8 ``(B, H, W, 3)`` → float ``(B, 3, H, W)`` in [-1, 1], augmented in ways that keep every label true:
    mirror images (``flip``), a low-resolution round trip (probability ``lowres_prob``, one of ``lowres_sizes``), with
    ``appearance`` a tone curve, saturation, blur and scale (`appearance_jitter`), small brightness changes and pixel
    noise. With layout ``boxes`` ``(B, K, 4)``, they are mirrored and scaled with their images and both are returned."""
    pixels = images.permute(0, 3, 1, 2).float() / 255.0
    batch = pixels.shape[0]
    if flip:
        pixels, boxes = random_hflip(pixels, generator, boxes) if boxes is not None else (random_hflip(pixels, generator), None)
    if appearance:
        pixels, boxes = appearance_jitter(pixels, generator, boxes) if boxes is not None else (appearance_jitter(pixels, generator), None)
    lowres = torch.rand(batch, generator=generator) < lowres_prob
    if lowres.any():
        size = lowres_sizes[int(torch.randint(len(lowres_sizes), (1,), generator=generator))]
        pixels[lowres] = lowres_round_trip(pixels[lowres], size)
    gain = 1.0 + 0.1 * (torch.rand(batch, 1, 1, 1, generator=generator) * 2 - 1)  # brightness, hue kept
    noise = torch.rand(batch, 1, 1, 1, generator=generator) * 0.04 * torch.randn(pixels.shape, generator=generator)
    pixels = ((pixels * gain + noise).clamp(0, 1) * 2 - 1).contiguous(memory_format=torch.channels_last)
    return pixels if boxes is None else (pixels, boxes)
