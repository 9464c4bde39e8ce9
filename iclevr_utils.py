# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Small helpers shared by the training and evaluation scripts: image grids and swapping in EMA weights."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw


def image_grid(images: Sequence[Image.Image] | np.ndarray | torch.Tensor, columns: int = 8, captions: Sequence[str] | None = None) -> Image.Image:
    """Tile images row-major into one picture, ``columns`` per row (8, like the course's reports).

    Accepts PIL images, a float array ``(B, H, W, 3)`` in [0, 1] (diffusers ``"np"``) or a uint8 tensor/array
    ``(B, H, W, 3)``; ``captions`` are written under each image.
    """
    if isinstance(images, torch.Tensor):
        images = images.cpu().numpy()
    if isinstance(images, np.ndarray):
        array = (images * 255).round().clip(0, 255).astype(np.uint8) if images.dtype != np.uint8 else images
        images = [Image.fromarray(a) for a in array]
    if not images:
        raise ValueError("No images to put in a grid.")
    width, height = images[0].size
    caption_height = 12 * max((len(c.split("\n")) for c in captions), default=0) if captions else 0
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * width, rows * (height + caption_height)), "white")
    draw = ImageDraw.Draw(grid)
    for i, image in enumerate(images):
        x, y = (i % columns) * width, (i // columns) * (height + caption_height)
        grid.paste(image.convert("RGB"), (x, y))
        if captions:
            draw.multiline_text((x + 2, y + height), captions[i], fill="black", spacing=1)
    return grid


@contextlib.contextmanager
def ema_weights(ema, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Temporarily load a diffusers `EMAModel`'s weights into ``model`` (no-op when ``ema`` is None)."""
    if ema is None:
        yield model
        return
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield model
    finally:
        ema.restore(model.parameters())


def multi_process_cpu_launch() -> bool:
    """True when launched as several processes (``accelerate launch --multi_gpu --num_processes N``) with no GPU.

    Accelerate only forms a gloo process group on CPU when the Accelerator is created with ``cpu=True``; without it,
    each process would train alone and write every file N times.
    """
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
