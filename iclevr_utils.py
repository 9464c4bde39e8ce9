# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Small helpers shared by the training and evaluation scripts: image grids, swapping in EMA weights, unwrapping a
prepared model, encoding images into an autoencoder's latents, and choosing mixed precision for the hardware at hand."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from diffusers.utils.torch_utils import is_compiled_module
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


def bare_model(accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The model without the DDP wrapper and without the ``torch.compile`` wrapper (``--dynamo_backend``), for
    validation, held-out scoring and ``save_pretrained``: their batch shapes differ from training's and would only
    recompile."""
    # The compiled wrapper comes off first: `unwrap_model` keeps it by default and re-points it at the model without
    # DDP, which would silently stop gradient synchronisation in the rest of a multi-GPU run.
    return accelerator.unwrap_model(model._orig_mod if is_compiled_module(model) else model)


def vae_scale_factor(vae) -> int:
    """How many image pixels one latent pixel spans per side (diffusers' convention: one halving per extra block)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, batch_size: int = 256, sample: bool = False, generator=None) -> torch.Tensor:
    """Images in [-1, 1] ``(B, 3, H, W)`` → scaled latents ``(B, C, H / f, W / f)``, the space a latent UNet denoises.

    The posterior's mean by default (deterministic, so encoded data can be computed once and reused); ``sample=True``
    draws from it. Latents are multiplied by the autoencoder's ``scaling_factor`` (unit variance, as in Stable
    Diffusion), which `ICLEVRPipeline.decode_latents` divides out again.
    """
    chunks = []
    for start in range(0, pixels.shape[0], batch_size):
        batch = pixels[start : start + batch_size].to(device=vae.device, dtype=vae.dtype)
        posterior = vae.encode(batch).latent_dist
        chunks.append((posterior.sample(generator) if sample else posterior.mode()).float().cpu())
    return torch.cat(chunks) * vae.config.scaling_factor


def latent_cache_key(vae, images: torch.Tensor) -> str:
    """A digest of the autoencoder (config, scaling factor included, and weights) and of the exact images: encoded
    latents cached under it are reused only for the same model on the same data."""
    digest = hashlib.sha256(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    digest.update(str(tuple(images.shape)).encode())
    digest.update(images.contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def multi_process_cpu_launch() -> bool:
    """True when launched as several processes (``accelerate launch --multi_gpu --num_processes N``) with no GPU.

    Accelerate only forms a gloo process group on CPU when the Accelerator is created with ``cpu=True``; without it,
    each process would train alone and write every file N times.
    """
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware: AMX tiles (Sapphire Rapids and later) or AVX512-BF16.

    Without either, PyTorch emulates bf16 convolutions and matmuls on the CPU, and bf16 autocast trains the default
    model about 15x *slower* than fp32 (measured on a 2-core AMD EPYC with AVX2 only: 2.3 vs 35.2 images/s), where
    with AMX it is 1.5x faster (88 vs 59 images/s on 2 Sapphire Rapids cores).
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


def slow_bf16_warning(mixed_precision: str, device: torch.device) -> str | None:
    """The warning for bf16 autocast on a CPU that only emulates bf16 (``None`` when there is nothing to say)."""
    if mixed_precision != "bf16" or device.type != "cpu" or cpu_has_native_bf16():
        return None
    return ("--mixed_precision bf16 on a CPU without native bf16 (no AMX or AVX512-BF16): PyTorch emulates it, and "
            "training runs 15x (diffusion model: 2.3 vs 35.2 images/s) to 23-35x (evaluator) slower than fp32 on an "
            "AVX2-only CPU. "
            "Pass --mixed_precision no, or let main_job.py choose (--mixed_precision auto).")


def hardware_line() -> str:
    """What the benches print first, so that their figures say which CPU (and whether it has native bf16) made them."""
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {'yes' if cpu_has_native_bf16() else 'no'}")
