# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Small helpers shared by the entry points: image grids, swapping in EMA weights, unwrapping a prepared model,
choosing mixed precision for the hardware at hand, and the benches' timing loop."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from diffusers.utils.torch_utils import is_compiled_module
from PIL import Image, ImageDraw
from torch.utils.flop_counter import FlopCounterMode


def display_scale(size: int, target: int = 96) -> int:
    """The whole-number enlargement that shows a ``size``-pixel image at least ``target`` pixels wide."""
    return max(1, -(-target // size))


def image_grid(images: Sequence[Image.Image] | np.ndarray | torch.Tensor, columns: int = 8, captions: Sequence[str] | None = None,
               scale: int = 1) -> Image.Image:
    """Tile images row-major into one picture, ``columns`` per row (8, like the course's reports).

    Accepts PIL images, a float array ``(B, H, W, 3)`` in [0, 1] (diffusers ``"np"``) or a uint8 tensor/array
    ``(B, H, W, 3)``; ``captions`` (one per image, lines split by newlines) are written under each image. ``scale``
    enlarges each image that many times with nearest-neighbour sampling, so small generations can be read without
    smoothing away what the model drew.
    """
    if isinstance(images, torch.Tensor):
        images = images.cpu().numpy()
    if isinstance(images, np.ndarray):
        array = (images * 255).round().clip(0, 255).astype(np.uint8) if images.dtype != np.uint8 else images
        images = [Image.fromarray(a) for a in array]
    if not images:
        raise ValueError("No images to put in a grid.")
    if scale > 1:
        images = [image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST) for image in images]
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


def bare_model(accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The model without the DDP wrapper and without the ``torch.compile`` wrapper (``--dynamo_backend``), for
    validation, held-out scoring and ``save_pretrained``: their batch shapes differ from training's and would only
    recompile."""
    # The compiled wrapper comes off first: `unwrap_model` keeps it by default and re-points it at the model without
    # DDP, which would silently stop gradient synchronisation in the rest of a multi-GPU run.
    return accelerator.unwrap_model(model._orig_mod if is_compiled_module(model) else model)


def multi_process_cpu_launch() -> bool:
    """True when launched as several processes (``accelerate launch --multi_gpu --num_processes N``) with no GPU.

    Accelerate only forms a gloo process group on CPU when the Accelerator is created with ``cpu=True``; without it,
    each process would train alone and write every file N times.
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware: AMX tiles (Sapphire Rapids and later) or AVX512-BF16.

    Without either, PyTorch emulates bf16 convolutions and matmuls, and bf16 autocast trains many times *slower* than
    fp32 (docs/experiments.md); with either it is faster.
    """
    cpu = torch.cpu
    probes = [getattr(cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if all(probe is None for probe in probes):  # a torch without the probes: oneDNN's own answer
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return any(probe() for probe in probes if probe is not None)


def auto_mixed_precision() -> str:
    """The fastest safe ``--mixed_precision`` for the device Accelerate will train on: on CUDA bf16 where the GPU
    supports it, else fp16; on a CPU bf16 only with native bf16 (`cpu_has_native_bf16`), else ``"no"`` (fp32)."""
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "no"


def auto_dynamo_backend() -> str:
    """The ``--dynamo_backend auto`` choice: what ``accelerate launch --dynamo_backend`` asked for when it is not
    ``no``; else ``inductor`` with CUDA, where compiled training steps were 1.3x faster than eager ones once warmed
    up, and ``no`` on a CPU, where they were slower in fp32 and, in bf16 on an AVX512-BF16 CPU, 3 % faster: a gain
    that repays its warm-up only after half an hour (docs/experiments.md, "Compiling the training step")."""
    launched = os.environ.get("ACCELERATE_DYNAMO_BACKEND", "no").lower()
    if launched != "no":
        return launched
    return "inductor" if torch.cuda.is_available() else "no"


def slow_bf16_warning(mixed_precision: str, device: torch.device) -> str | None:
    """The warning for bf16 autocast on a CPU that only emulates bf16 (``None`` when there is nothing to say)."""
    if mixed_precision != "bf16" or device.type != "cpu" or cpu_has_native_bf16():
        return None
    return ("--mixed_precision bf16 on a CPU without native bf16 (no AMX or AVX512-BF16): PyTorch emulates it, and "
            "training runs over 10x slower than fp32. Pass --mixed_precision no, or let main_job.py choose "
            "(--mixed_precision auto).")


def hardware_line() -> str:
    """What the benches print first, so that their figures say which CPU (and whether it has native bf16) made them."""
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {'yes' if cpu_has_native_bf16() else 'no'}")


def training_flops(loss: Callable[[], torch.Tensor]) -> int:
    """FLOPs of one forward and backward pass: ``loss()`` and its backward under ``torch.utils.flop_counter`` (the
    gradients it leaves are the caller's to clear)."""
    with FlopCounterMode(display=False) as counter:
        loss().backward()
    return counter.get_total_flops()


def measure_throughput(step: Callable, batches: Iterable[tuple], warmup: int, steps: int) -> float:
    """Images per second of ``step(images, labels)`` over ``steps`` batches, after ``warmup`` untimed ones (kernel
    selection, allocator and compile warm-up would otherwise be charged to the first rows of a bench)."""
    iterator = iter(batches)
    for _ in range(warmup):
        step(*next(iterator))
    start, count = time.perf_counter(), 0
    for _ in range(steps):
        images, labels = next(iterator)
        step(images, labels)
        count += images.shape[0]
    return count / (time.perf_counter() - start)
