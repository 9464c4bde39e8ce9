# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Train a small `AutoencoderKL` on i-CLEVR with 🤗 Accelerate, for a latent-space diffusion model.

    accelerate launch train_autoencoder.py --output_dir outputs/vae --evaluator outputs/evaluator
    accelerate launch train_conditional_ddpm.py --pretrained_vae outputs/vae --resolution 64 ...

It trains on the same data as the diffusion trainer (the embedded procedural set unless ``--train_data_dir`` or
``--dataset_name`` is given; same flags), with the trainer's foreground-weighted MSE (objects cover 1-3 % of the
pixels, and an autoencoder that blurs them away caps every latent model) plus a small KL term. The default, 64x64 →
16x16x4, keeps the 64x64 detail a 32x32 pixel model loses, in a quarter of its positions. After training it sets
``scaling_factor`` to one over the standard deviation of the training latents (as Stable Diffusion does), so the
diffusion model sees unit-variance latents, and saves ``config.json`` + safetensors, ``autoencoder_metrics.json``
(held-out reconstruction error and, with ``--evaluator``, the course accuracy of held-out reconstructions against
that of the originals: the ceiling of any model in this latent space) and ``reconstructions.png``.
Runs are short (minutes), so there are no checkpoints; ``--max_train_minutes`` bounds one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from diffusers import AutoencoderKL
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from iclevr_data import add_data_args, dataset_to_tensors, split_by_scene, to_model_input, to_uint8_images
from iclevr_utils import bare_model, encode_latents, image_grid, multi_process_cpu_launch, slow_bf16_warning
from train_conditional_ddpm import _int_list, foreground_weights, load_training_data, mean_image, out_of_time

logger = get_logger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a small AutoencoderKL on i-CLEVR for latent-space diffusion.")
    data = parser.add_argument_group("data")
    add_data_args(data, "i-CLEVR-layout folder (PNGs + train.json) or imagefolder with metadata.jsonl. Default: the embedded procedural set.")
    data.add_argument("--embedded_num_scenes", type=int, default=18003, help="Scenes of the embedded default set (as the diffusion trainer's).")
    data.add_argument("--resolution", type=int, default=64, help="Image resolution the autoencoder encodes (square).")
    data.add_argument("--heldout_fraction", type=float, default=0.05, help="Share of scenes held out for the reconstruction figures.")
    model = parser.add_argument_group("model")
    model.add_argument("--block_out_channels", type=_int_list, default=[32, 64, 64],
                       help="Channels per level; each level after the first halves the size (32,64,64: 64x64 → 16x16).")
    model.add_argument("--layers_per_block", type=int, default=1, help="ResNet layers per encoder level (the decoder has one more).")
    model.add_argument("--latent_channels", type=int, default=4, help="Channels of the latent.")
    train = parser.add_argument_group("training")
    train.add_argument("--output_dir", type=str, default="outputs/vae", help="Where the autoencoder is saved.")
    train.add_argument("--train_batch_size", type=int, default=32, help="Batch size per process.")
    train.add_argument("--max_train_steps", type=int, default=750,
                       help="Optimiser steps, the learning-rate schedule's length (about 27 minutes on 2 AVX2 cores in fp32; "
                            "645 of them, cut at 24 minutes, gave held-out reconstructions scoring 0.895 against 0.963 for "
                            "the originals, README).")
    train.add_argument("--max_train_minutes", type=float, default=None,
                       help="Stop after this much training time and save as usual (the schedule is not shortened: size "
                            "--max_train_steps to the time instead where the learning rate should reach its end).")
    train.add_argument("--learning_rate", type=float, default=1e-3, help="Peak AdamW learning rate.")
    train.add_argument("--lr_scheduler", type=str, default="cosine", choices=["linear", "cosine", "constant", "constant_with_warmup"], help="Learning-rate schedule (diffusers get_scheduler).")
    train.add_argument("--lr_warmup_steps", type=int, default=100, help="Warm-up steps of the schedule.")
    train.add_argument("--kl_weight", type=float, default=1e-6, help="Weight of the KL term (small: the latents need only stay bounded, not Gaussian).")
    train.add_argument("--foreground_weight", type=float, default=4.0, help="Extra loss weight on pixels that depart from the floor, as in the diffusion trainer.")
    train.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"], help="Mixed precision (default: Accelerate's config).")
    train.add_argument("--seed", type=int, default=0, help="Random seed (initialisation, batches, held-out split).")
    train.add_argument("--evaluator", type=str, default=None, help="Evaluator folder: report the course accuracy of held-out reconstructions.")
    args = parser.parse_args(argv)
    if args.train_batch_size < 1 or args.max_train_steps < 1 or args.latent_channels < 1 or args.layers_per_block < 1:
        parser.error("--train_batch_size, --max_train_steps, --latent_channels and --layers_per_block must be positive.")
    if args.max_train_minutes is not None and args.max_train_minutes <= 0:
        parser.error("--max_train_minutes must be positive.")
    if not 0.0 < args.heldout_fraction < 1.0:
        parser.error("--heldout_fraction must be in (0, 1).")
    if math.gcd(32, *args.block_out_channels) < 4:
        parser.error(f"--block_out_channels {args.block_out_channels} need a common divisor of at least 4 for GroupNorm.")
    if args.resolution % 2 ** (len(args.block_out_channels) - 1):
        parser.error(f"--resolution {args.resolution} must be divisible by {2 ** (len(args.block_out_channels) - 1)} (one halving per level after the first).")
    if args.kl_weight < 0 or args.foreground_weight < 0:
        parser.error("--kl_weight and --foreground_weight must be >= 0.")
    if args.evaluator and not Path(args.evaluator).exists():
        parser.error(f"--evaluator {args.evaluator} does not exist.")
    return args


def build_vae(args: argparse.Namespace) -> AutoencoderKL:
    """A plain-convolution AutoencoderKL (no attention: at these sizes it costs time and buys nothing measurable)."""
    levels = len(args.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(args.block_out_channels),
        layers_per_block=args.layers_per_block,
        latent_channels=args.latent_channels,
        norm_num_groups=math.gcd(32, *args.block_out_channels),
        sample_size=args.resolution,
        mid_block_add_attention=False,
    )


def autoencoder_loss(vae, pixels: torch.Tensor, weights: torch.Tensor | None, kl_weight: float) -> torch.Tensor:
    """Pixel-weighted MSE of the reconstruction from a posterior sample, plus ``kl_weight`` x KL to N(0, I)."""
    posterior = vae.encode(pixels).latent_dist
    error = (vae.decode(posterior.sample()).sample.float() - pixels.float()) ** 2
    if weights is not None:
        error = error * weights
    return error.mean() + kl_weight * posterior.kl().mean() / pixels[0].numel()


@torch.no_grad()
def reconstruct(vae, pixels: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Images in [-1, 1] through the autoencoder (posterior means), as a latent model's samples are decoded."""
    outputs = []
    for start in range(0, pixels.shape[0], batch_size):
        latents = vae.encode(pixels[start : start + batch_size].to(vae.device, vae.dtype)).latent_dist.mode()
        outputs.append(vae.decode(latents).sample.float().clamp(-1, 1).cpu())
    return torch.cat(outputs)


def heldout_figures(vae, images: torch.Tensor, labels: torch.Tensor, evaluator=None) -> dict:
    """Reconstruction MSE (in [-1, 1] units) and PSNR on held-out images; with an evaluator, the course accuracy of
    the reconstructions next to the originals' (what any model in this latent space can at best score)."""
    pixels = to_model_input(images)
    reconstructions = reconstruct(vae, pixels)
    mse = torch.mean((reconstructions - pixels) ** 2).item()
    figures = {"mse": mse, "psnr_db": 10 * math.log10(4.0 / max(mse, 1e-12))}
    if evaluator is not None:
        figures["accuracy"] = evaluator.score((reconstructions + 1) / 2, labels)["accuracy"]
        figures["accuracy_originals"] = evaluator.score(images, labels)["accuracy"]
    return figures


def set_scaling_factor(vae, images: torch.Tensor, count: int = 4096) -> float:
    """One over the standard deviation of the (unscaled) latents of up to ``count`` images, stored in the config."""
    vae.register_to_config(scaling_factor=1.0)
    latents = encode_latents(vae, to_model_input(images[:count]))
    factor = 1.0 / latents.std().item()
    vae.register_to_config(scaling_factor=factor)
    return factor


def save_reconstructions(vae, images: torch.Tensor, path: Path, count: int = 16) -> None:
    """Originals (top row of each pair) above their reconstructions."""
    originals = images[:count]
    decoded = to_uint8_images(reconstruct(vae, to_model_input(originals)))
    rows = []
    for start in range(0, originals.shape[0], 8):
        rows += [originals[start : start + 8], decoded[start : start + 8]]
    image_grid(torch.cat(rows).numpy(), columns=8).save(path)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=multi_process_cpu_launch())
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if warning := slow_bf16_warning(accelerator.mixed_precision, accelerator.device):
        logger.warning(warning, main_process_only=True)
    set_seed(args.seed)
    start = time.time()
    dataset = load_training_data(args, accelerator)
    images, labels = dataset_to_tensors(dataset)
    train_rows, heldout_rows = split_by_scene(list(dataset["file_name"]), args.heldout_fraction, args.seed)
    if not train_rows or not heldout_rows:
        raise ValueError(f"The split left {len(train_rows)} training and {len(heldout_rows)} held-out images; use more scenes.")
    train_set = torch.utils.data.TensorDataset(images[train_rows])
    floor = mean_image(train_set) if args.foreground_weight > 0 else None
    logger.info(f"{len(train_rows)} training and {len(heldout_rows)} held-out images", main_process_only=True)

    vae = build_vae(args)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.learning_rate, weight_decay=0.0)
    loader = torch.utils.data.DataLoader(train_set, batch_size=args.train_batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(args.seed))
    if len(loader) == 0:
        raise ValueError(f"{len(train_rows)} training images are fewer than one batch of {args.train_batch_size}; lower --train_batch_size.")
    scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                              num_training_steps=args.max_train_steps * accelerator.num_processes)
    vae, optimizer, loader, scheduler = accelerator.prepare(vae, optimizer, loader, scheduler)
    floor = None if floor is None else floor.to(accelerator.device)

    step, train_start = 0, time.time()
    progress = tqdm(total=args.max_train_steps, desc="Autoencoder", disable=not accelerator.is_local_main_process)
    stop = False
    while not stop:
        for (batch,) in loader:
            pixels = to_model_input(batch)
            weights = foreground_weights(pixels, floor, args.foreground_weight) if floor is not None else None
            with accelerator.autocast():
                loss = autoencoder_loss(vae, pixels, weights, args.kl_weight)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"Non-finite loss {loss.item()} at step {step}; nothing was saved. Lower --learning_rate.")
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(vae.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}")
            stop = step >= args.max_train_steps or out_of_time(accelerator, args.max_train_minutes, time.time() - train_start)
            if stop:
                break
    progress.close()
    train_minutes = (time.time() - train_start) / 60

    accelerator.wait_for_everyone()
    result = {}
    if accelerator.is_main_process:
        vae = bare_model(accelerator, vae).float().eval()
        scaling_factor = set_scaling_factor(vae, images[train_rows])
        evaluator = None
        if args.evaluator:
            from iclevr_evaluator import Evaluator

            evaluator = Evaluator.from_pretrained(args.evaluator)
        result = {
            "steps": step,
            "images_seen": step * args.train_batch_size * accelerator.num_processes,
            "train_minutes": train_minutes,
            "minutes": (time.time() - start) / 60,
            "parameters_millions": sum(p.numel() for p in vae.parameters()) / 1e6,
            "latent_shape": [args.latent_channels] + [args.resolution // 2 ** (len(args.block_out_channels) - 1)] * 2,
            "scaling_factor": scaling_factor,
            "heldout_images": len(heldout_rows),
            "heldout": heldout_figures(vae, images[heldout_rows], labels[heldout_rows], evaluator),
            "mixed_precision": accelerator.mixed_precision,
            "args": vars(args),
        }
        output_dir.mkdir(parents=True, exist_ok=True)
        vae.save_pretrained(output_dir, safe_serialization=True)
        save_reconstructions(vae, images[heldout_rows], output_dir / "reconstructions.png")
        (output_dir / "autoencoder_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: result[k] for k in ("steps", "train_minutes", "latent_shape", "scaling_factor", "heldout")}, indent=2))
    accelerator.end_training()
    return result


if __name__ == "__main__":
    main()
