# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Train a multi-label class-conditional DDPM on i-CLEVR with 🤗 Accelerate and save it as an `ICLEVRPipeline`.

    accelerate launch train_conditional_ddpm.py --output_dir outputs/iclevr-ddpm --mixed_precision bf16 --use_ema \\
        --validation_steps 1000 --evaluator outputs/evaluator

With neither ``--train_data_dir`` nor ``--dataset_name`` it trains on the embedded default: the procedural i-CLEVR
set, rendered once into a cache folder and reused after. The denoiser is diffusers' `UNet2DConditionModel` with
``class_embed_type="projection"``: the 24-dim multi-hot condition goes through the UNet's own projection MLP into the
timestep embedding, so it is saved and reloaded with the model (see the README for why not `UNet2DModel`).
With ``--pretrained_vae`` (an autoencoder from ``train_autoencoder.py``) the UNet denoises the autoencoder's latents
instead of pixels, and the saved pipeline ships the autoencoder to decode them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, broadcast, set_seed
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr
from filelock import FileLock
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from iclevr_data import (
    add_data_args,
    cache_root,
    dataset_to_tensors,
    load_conditions,
    load_dataset_from_args,
    random_hflip,
    to_model_input,
)
from iclevr_metrics import mean_std, total_misses
from iclevr_utils import (
    bare_model,
    ema_weights,
    encode_latents,
    image_grid,
    latent_cache_key,
    multi_process_cpu_launch,
    slow_bf16_warning,
    vae_scale_factor,
)
from pipeline_iclevr import DEFAULT_GUIDANCE_SCALE, LABELS, ICLEVRPipeline, unet_condition_kwargs

logger = get_logger(__name__)

PROJECT_DIR = Path(__file__).resolve().parent
DEFAULT_CONDITIONS = PROJECT_DIR / "conditions" / "synthetic_test.json"


# --- arguments ---------------------------------------------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a class-conditional DDPM on i-CLEVR and save an ICLEVRPipeline.")
    data = parser.add_argument_group("data")
    add_data_args(data, "i-CLEVR-layout folder (PNGs + train.json) or imagefolder with metadata.jsonl. Default: the embedded procedural set.")
    data.add_argument("--embedded_num_scenes", type=int, default=18003,
                      help="Scenes of the embedded default set (3 images each; 18,003 beat 6,003 on the 60-minute schedule, README).")
    data.add_argument("--resolution", type=int, default=32,
                      help="Training resolution (square); 32 is the CPU recipe, 64 the GPU one (README). With "
                           "--pretrained_vae: the image resolution the autoencoder encodes.")
    data.add_argument("--random_flip", action="store_true", help="Flip images horizontally at random (labels stay valid).")
    data.add_argument("--channels_last", action="store_true", help="Use the channels-last memory format (measured on a 2-core Sapphire Rapids CPU with the default model at 64x64: fp32 8.4 vs 7.4 img/s, but bf16 18.5 vs 25.9 img/s).")
    data.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader workers (data is in memory; 0 is usually best).")

    model = parser.add_argument_group("model")
    model.add_argument("--pretrained_vae", type=str, default=None,
                       help="Folder of an AutoencoderKL (train_autoencoder.py): train in its latent space. The images are "
                            "encoded once at start and the autoencoder is saved in the pipeline, which decodes its samples.")
    model.add_argument("--block_out_channels", type=_int_list, default=[32, 64, 128], help="UNet channels per level, e.g. 32,64,128.")
    model.add_argument("--layers_per_block", type=int, default=1, help="ResNet layers per UNet level.")
    model.add_argument("--attention_levels", type=_int_list, default=None, help="1/0 per level: self-attention there (default: the lowest level only).")
    model.add_argument("--attention_head_dim", type=int, default=32, help="Channels per attention head.")
    model.add_argument("--conditioning", type=str, default="class_embedding", choices=["class_embedding", "cross_attention", "both"],
                       help="How the UNet sees the labels: one projected vector added to the timestep embedding, one "
                            "cross-attention token per label at the attention levels, or both.")
    model.add_argument("--cross_attention_dim", type=int, default=64, help="Width of the label tokens (cross-attention conditioning).")
    model.add_argument("--time_embedding_dim", type=int, default=512,
                       help="Width of the timestep + class embedding every ResNet block reads (diffusers' default is 4x the "
                            "first level's channels, 128 here; 512 binds the labels faster, README).")
    model.add_argument("--resnet_time_scale_shift", type=str, default="scale_shift", choices=["default", "scale_shift"],
                       help="How every ResNet block applies the (timestep + class) embedding: added, or as a FiLM scale and shift.")

    diffusion = parser.add_argument_group("diffusion")
    diffusion.add_argument("--ddpm_num_steps", type=int, default=1000, help="Diffusion steps in training.")
    diffusion.add_argument("--ddpm_beta_schedule", type=str, default="squaredcos_cap_v2", choices=["linear", "scaled_linear", "squaredcos_cap_v2"], help="Noise schedule.")
    diffusion.add_argument("--prediction_type", type=str, default="sample", choices=["epsilon", "v_prediction", "sample"],
                           help="What the UNet predicts: the clean image x0 ('sample'), the noise ('epsilon') or v. x0 with "
                                "an unweighted loss (--snr_gamma 0) bound the condition fastest here (README).")
    diffusion.add_argument("--snr_gamma", type=float, default=0.0,
                           help="Min-SNR-gamma loss weighting (0 = off: with x0-prediction every noise level then weighs the "
                                "same in image space, so the high-noise steps that decide layout and colour are trained).")
    diffusion.add_argument("--condition_dropout", type=float, default=0.1, help="Probability of replacing the condition by the null (all-zero) one, for classifier-free guidance.")
    diffusion.add_argument("--foreground_weight", type=float, default=4.0, help="Extra loss weight on pixels where the clean image departs from the floor (the training set's mean image): weight = 1 + W * departure. 0 = plain MSE.")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--train_batch_size", type=int, default=64, help="Batch size per process.")
    optim.add_argument("--num_epochs", type=int, default=10, help="Epochs (ignored when --max_train_steps is set).")
    optim.add_argument("--max_train_steps", type=int, default=None, help="Total optimiser steps; overrides --num_epochs.")
    optim.add_argument("--max_train_minutes", type=float, default=None,
                       help="Stop after this much training wall time (validation excluded), then save as usual: a fixed time budget.")
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Batches accumulated per optimiser step.")
    optim.add_argument("--learning_rate", type=float, default=2e-3, help="Peak learning rate.")
    optim.add_argument("--lr_scheduler", type=str, default="cosine", choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"], help="Schedule (diffusers get_scheduler).")
    optim.add_argument("--lr_warmup_steps", type=int, default=200, help="Warm-up steps.")
    optim.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta1.")
    optim.add_argument("--adam_beta2", type=float, default=0.999, help="AdamW beta2.")
    optim.add_argument("--adam_weight_decay", type=float, default=1e-2, help="AdamW weight decay.")
    optim.add_argument("--adam_epsilon", type=float, default=1e-8, help="AdamW epsilon.")
    optim.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm.")
    optim.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"], help="Mixed precision (default: Accelerate's config).")
    optim.add_argument("--seed", type=int, default=0, help="Random seed; a run with the same seed is reproducible on CPU.")
    optim.add_argument("--use_ema", action="store_true", help="Keep an exponential moving average of the weights and save it.")
    optim.add_argument("--ema_max_decay", type=float, default=0.9999, help="Maximum EMA decay.")
    optim.add_argument("--ema_inv_gamma", type=float, default=1.0, help="EMA warm-up inverse multiplicative factor.")
    optim.add_argument("--ema_power", type=float, default=0.75, help="EMA warm-up exponent.")

    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", type=str, default="outputs/iclevr-ddpm", help="Where checkpoints and the pipeline are written.")
    run.add_argument("--checkpointing_steps", type=int, default=500, help="Save a resumable checkpoint every N steps.")
    run.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep at most this many checkpoints.")
    run.add_argument("--resume_from_checkpoint", type=str, default=None, help="'latest' or a checkpoint folder to resume from.")
    run.add_argument("--logger", type=str, default="tensorboard", choices=["tensorboard", "wandb"], help="Experiment tracker.")
    run.add_argument("--logging_dir", type=str, default="logs", help="Tracker folder, relative to --output_dir.")
    run.add_argument("--validation_steps", type=int, default=None, help="Sample the validation conditions every N steps (and at the end).")
    run.add_argument("--validation_conditions_json", type=str, default=str(DEFAULT_CONDITIONS), help="Conditions sampled at validation (test.json format).")
    run.add_argument("--validation_inference_steps", type=int, default=50, help="DDIM steps at validation.")
    run.add_argument("--validation_guidance_scale", type=float, default=DEFAULT_GUIDANCE_SCALE, help="Classifier-free guidance at validation.")
    run.add_argument("--validation_guidance_rescale", type=float, default=None,
                     help="Guidance rescale at validation, 0-1 (default: the pipeline's).")
    run.add_argument("--validation_num_seeds", type=int, default=1,
                     help="Sampling seeds per validation (--seed, --seed+1, ...): the accuracy logged is their mean, "
                          "as in the report; one seed on 32 conditions varies by about +-0.05.")
    run.add_argument("--evaluator", type=str, default=None, help="Evaluator folder or course checkpoint.pth: log the course accuracy at validation.")
    run.add_argument("--push_to_hub", action="store_true", help="Upload the pipeline (no checkpoints) to the Hub at the end.")
    run.add_argument("--hub_model_id", type=str, default=None, help="Hub repository, e.g. user/iclevr-ddpm.")
    run.add_argument("--hub_token", type=str, default=None, help="Hub token (else the logged-in one); never logged or saved.")

    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject impossible combinations before any work starts."""
    levels = len(args.block_out_channels)
    if args.attention_levels is None:
        args.attention_levels = [0] * (levels - 1) + [1]
    if len(args.attention_levels) != levels or set(args.attention_levels) - {0, 1}:
        parser.error(f"--attention_levels needs one 0/1 per level ({levels}), got {args.attention_levels}.")
    if args.pretrained_vae and not (Path(args.pretrained_vae) / "config.json").is_file():
        parser.error(f"--pretrained_vae {args.pretrained_vae} is not an autoencoder folder (config.json + weights); "
                     "train one with train_autoencoder.py.")
    if args.pretrained_vae and args.random_flip:
        parser.error("--random_flip flips the encoded latents, which are not the latents of flipped images; drop it with --pretrained_vae.")
    if not args.pretrained_vae and args.resolution % 2 ** (levels - 1):  # a latent size is checked once the autoencoder is loaded
        parser.error(f"--resolution {args.resolution} must be divisible by {2 ** (levels - 1)} (the UNet downsamples {levels - 1} times).")
    groups = math.gcd(32, *args.block_out_channels)
    if groups < 4:
        parser.error(f"--block_out_channels {args.block_out_channels} need a common divisor of at least 4 for GroupNorm.")
    if any(c % args.attention_head_dim for c, a in zip(args.block_out_channels, args.attention_levels) if a):
        parser.error("--attention_head_dim must divide the channels of every attention level.")
    for name in ("train_batch_size", "gradient_accumulation_steps", "checkpointing_steps", "num_epochs", "ddpm_num_steps", "layers_per_block"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be positive.")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        parser.error("--max_train_steps must be positive.")
    if args.validation_guidance_rescale is not None and not 0 <= args.validation_guidance_rescale <= 1:
        parser.error("--validation_guidance_rescale must be in [0, 1].")
    if args.time_embedding_dim is not None and args.time_embedding_dim < 1:
        parser.error("--time_embedding_dim must be positive.")
    if args.max_train_minutes is not None and args.max_train_minutes <= 0:
        parser.error("--max_train_minutes must be positive.")
    if args.conditioning != "class_embedding" and not any(args.attention_levels):
        parser.error(f"--conditioning {args.conditioning} needs at least one attention level (--attention_levels) to cross-attend.")
    if args.foreground_weight < 0:
        parser.error("--foreground_weight must be >= 0.")
    if args.snr_gamma < 0:
        parser.error("--snr_gamma must be >= 0 (0 turns min-SNR weighting off).")
    if not 0.0 <= args.condition_dropout < 1.0:
        parser.error("--condition_dropout must be in [0, 1).")
    if args.dataset_name and (args.train_data_dir or args.train_json):
        parser.error("Give either --dataset_name or --train_data_dir/--train_json, not both.")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id (e.g. user/iclevr-ddpm).")
    if args.resume_from_checkpoint and args.resume_from_checkpoint != "latest" and not Path(args.resume_from_checkpoint).is_dir():
        parser.error(f"--resume_from_checkpoint {args.resume_from_checkpoint} is not a checkpoint folder (or use 'latest').")
    if args.resume_from_checkpoint == "latest" and latest_checkpoint(args.output_dir) is None:
        parser.error(f"--resume_from_checkpoint latest: no checkpoint-* folder in {args.output_dir} to resume from.")
    if args.validation_num_seeds < 1:
        parser.error("--validation_num_seeds must be at least 1.")
    if args.validation_steps is not None and args.validation_steps < 1:
        parser.error("--validation_steps must be positive.")
    if args.validation_steps is not None and not Path(args.validation_conditions_json).is_file():
        parser.error(f"--validation_conditions_json {args.validation_conditions_json} does not exist.")
    if args.evaluator and not Path(args.evaluator).exists():
        parser.error(f"--evaluator {args.evaluator} does not exist.")


# --- building blocks ---------------------------------------------------------------------------------------------
def build_model(args: argparse.Namespace, vae=None) -> UNet2DConditionModel:
    """The denoiser: a UNet with self-attention (or, for label tokens, self + cross-attention) at the attention levels.

    The multi-hot condition is embedded inside the UNet, so it is saved with it: ``class_embedding`` projects it into
    the timestep embedding; ``cross_attention`` turns it into one token per label (`pipeline_iclevr.label_tokens`)
    through ``encoder_hid_proj``, attended to by every attention level and the middle block. With an autoencoder the
    UNet denoises its latents: ``latent_channels`` at ``resolution / vae_scale_factor``.
    """
    channels, size = 3, args.resolution
    if vae is not None:
        channels, size = vae.config.latent_channels, args.resolution // vae_scale_factor(vae)
        levels = len(args.block_out_channels)
        if args.resolution % vae_scale_factor(vae) or size % 2 ** (levels - 1):
            raise ValueError(f"--resolution {args.resolution} gives {size}x{size} latents with this "
                             f"autoencoder (scale factor {vae_scale_factor(vae)}), which the UNet cannot halve {levels - 1} times; "
                             f"use a resolution divisible by {vae_scale_factor(vae) * 2 ** (levels - 1)} or fewer --block_out_channels.")
    cross = args.conditioning in ("cross_attention", "both")
    attn = "CrossAttn" if cross else "Attn"
    down = tuple(f"{attn}DownBlock2D" if a else "DownBlock2D" for a in args.attention_levels)
    up = tuple(f"{attn}UpBlock2D" if a else "UpBlock2D" for a in reversed(args.attention_levels))
    extra = {}
    if args.conditioning in ("class_embedding", "both"):
        extra |= {"class_embed_type": "projection", "projection_class_embeddings_input_dim": len(LABELS)}
    if cross:
        extra |= {"encoder_hid_dim": len(LABELS), "encoder_hid_dim_type": "text_proj", "cross_attention_dim": args.cross_attention_dim}
    return UNet2DConditionModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn" if cross else "UNetMidBlock2D",
        block_out_channels=tuple(args.block_out_channels),
        layers_per_block=args.layers_per_block,
        norm_num_groups=math.gcd(32, *args.block_out_channels),
        # for cross-attention blocks diffusers reads this as the number of heads (diffusers issue 2011)
        attention_head_dim=[c // args.attention_head_dim for c in args.block_out_channels] if cross else args.attention_head_dim,
        resnet_time_scale_shift=args.resnet_time_scale_shift,
        time_embedding_dim=args.time_embedding_dim,
        **extra,
    )


def build_noise_scheduler(args: argparse.Namespace) -> DDPMScheduler:
    # Pixels live in [-1, 1], so samplers may clip their x0 estimate there; latents are unbounded (unit variance).
    return DDPMScheduler(
        num_train_timesteps=args.ddpm_num_steps, beta_schedule=args.ddpm_beta_schedule, prediction_type=args.prediction_type,
        clip_sample=args.pretrained_vae is None,
    )


def embedded_data_dir(args: argparse.Namespace) -> Path:
    root = cache_root(args.cache_dir)
    return root / f"rendered-seed{args.seed}-scenes{args.embedded_num_scenes}-{args.resolution}px"


def load_vae(args: argparse.Namespace, device) -> AutoencoderKL | None:
    """The frozen autoencoder of a latent-space run (``--pretrained_vae``), or None in pixel space."""
    if not args.pretrained_vae:
        return None
    return AutoencoderKL.from_pretrained(args.pretrained_vae).to(device).eval().requires_grad_(False)


def load_training_data(args: argparse.Namespace, accelerator: Accelerator):
    """The training data as a `datasets.Dataset` decoded at ``--resolution``; with no data given, the embedded
    procedural set, rendered once into the cache."""
    with accelerator.main_process_first():  # render/decode once; the other processes then read the cache
        if args.train_data_dir is None and args.dataset_name is None:
            data_dir = embedded_data_dir(args)
            data_dir.parent.mkdir(parents=True, exist_ok=True)
            # Runs launched side by side on one cache (a sweep) wait here for one render and one decode, instead of
            # each rendering with every core and replacing the folder while the others read it.
            with FileLock(f"{data_dir}.lock"):
                if not (data_dir / "train.json").is_file():
                    render_embedded(args, data_dir)
                return load_dataset_from_args(args, args.resolution, data_dir)
        return load_dataset_from_args(args, args.resolution)


def render_embedded(args: argparse.Namespace, data_dir: Path) -> None:
    from render_iclevr import main as render

    logger.info(f"Rendering the embedded i-CLEVR set into {data_dir} (once).")
    render(["--output_dir", str(data_dir), "--num_scenes", str(args.embedded_num_scenes), "--seed", str(args.seed),
            "--width", str(args.resolution), "--height", str(args.resolution)])


def build_dataset(args: argparse.Namespace, accelerator: Accelerator, vae: AutoencoderKL | None = None):
    """The training data in memory: uint8 images and labels, and with an autoencoder the images' latents (encoded
    once here, so training never runs the encoder)."""
    images, labels = dataset_to_tensors(load_training_data(args, accelerator))
    if vae is None:
        return torch.utils.data.TensorDataset(images, labels)
    return torch.utils.data.TensorDataset(images, labels, encoded_dataset(args, accelerator, vae, images))


def encoded_dataset(args: argparse.Namespace, accelerator: Accelerator, vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """The images' latents, encoded once per (autoencoder, data) pair and cached as safetensors beside the decoded
    images: encoding 54k images costs minutes on a CPU, which a resume or a second run should not pay again."""
    root = cache_root(args.cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"latents-{latent_cache_key(vae, images)}.safetensors"
    # main_process_first: the main process encodes and writes, the others read its file. The lock: runs launched side
    # by side on one cache (a sweep) wait for one encode instead of each spending minutes encoding the same set.
    with accelerator.main_process_first(), FileLock(f"{path}.lock"):
        if path.is_file():
            logger.info(f"Using the cached latents {path}.")
            return load_file(path)["latents"]
        start = time.time()
        # 1,024 images at a time: a float copy of the whole set would be 12x its uint8 size (2.6 GB for 54k at 64x64)
        latents = torch.cat([encode_latents(vae, to_model_input(images[i : i + 1024])) for i in range(0, len(images), 1024)])
        logger.info(f"Encoded {len(images)} images into {tuple(latents.shape[1:])} latents in {time.time() - start:.0f} s.")
        if accelerator.is_main_process:
            partial = path.with_name(path.name + PARTIAL)  # renamed into place once complete: never a torn cache file
            save_file({"latents": latents.contiguous()}, partial)
            os.replace(partial, path)
    return latents


def mean_image(dataset) -> torch.Tensor:
    """The training set's mean image ``(1, 3, H, W)`` in [-1, 1] (the floor, for `foreground_weights`)."""
    images = dataset.tensors[0]
    total = torch.zeros(images.shape[1:], dtype=torch.float64)
    for start in range(0, images.shape[0], 1024):
        total += images[start : start + 1024].double().sum(0)
    return to_model_input((total / images.shape[0]).round().to(torch.uint8)[None])


def build_dataloader(dataset, args: argparse.Namespace) -> torch.utils.data.DataLoader:
    # Its own generator: creating an epoch's iterator must not consume the global RNG that draws noise, or a
    # resumed run would draw different noise than an uninterrupted one.
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete ``checkpoint-<step>`` folder, or None."""
    folders = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return max(folders, key=lambda p: int(p.name.split("-")[-1]), default=None)


PARTIAL = ".partial"  # suffix of folders being written; never picked by `latest_checkpoint`, removed at start


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int) -> Path:
    """``accelerator.save_state`` into ``checkpoint-<step>.partial``, then one rename to ``checkpoint-<step>``.

    A run killed while writing leaves only a ``.partial`` folder, which `latest_checkpoint` ignores and
    `remove_partial_saves` deletes, so ``--resume_from_checkpoint latest`` always finds a complete checkpoint.
    """
    final = output_dir / f"checkpoint-{step}"
    partial = output_dir / f"checkpoint-{step}{PARTIAL}"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))  # every process writes its own RNG state into the same folder
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # a rerun of the same step: replace it only now that the new one is complete
            shutil.rmtree(final)
        os.replace(partial, final)
    accelerator.wait_for_everyone()
    return final


def remove_partial_saves(output_dir: Path) -> list[Path]:
    """Delete what interrupted saves left (``*.partial`` folders); returns them for the log."""
    leftovers = sorted(p for p in Path(output_dir).glob(f"*{PARTIAL}") if p.is_dir())
    for folder in leftovers:
        shutil.rmtree(folder)
    return leftovers


def rotate_checkpoints(output_dir: Path, limit: int | None) -> None:
    """Delete the oldest checkpoints so that at most ``limit - 1`` remain before a new one is written."""
    if limit is None:
        return
    folders = sorted((p for p in output_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()), key=lambda p: int(p.name.split("-")[-1]))
    for folder in folders[: max(0, len(folders) - limit + 1)]:
        logger.info(f"Removing old checkpoint {folder}")
        shutil.rmtree(folder)


def foreground_weights(pixels: torch.Tensor, floor: torch.Tensor, strength: float, scale: float = 0.25) -> torch.Tensor:
    """Per-pixel loss weights ``(B, 1, H, W)``: ``1 + strength * departure``, normalised to mean 1 per image.

    Objects cover 1-3 % of an i-CLEVR image, so a plain MSE is dominated by the floor. ``floor`` is the training set's
    mean image: with a fixed camera and objects at random places it is the empty floor, for rendered and real data
    alike. ``departure`` is how far each pixel of the clean image is from it (largest channel difference / ``scale``,
    clipped to 1): objects and their shadows.
    """
    departure = ((pixels - floor).abs().amax(1, keepdim=True) / scale).clamp(max=1.0)
    weights = 1.0 + strength * departure
    return weights / weights.mean(dim=(2, 3), keepdim=True)


def diffusion_loss(unet, noise_scheduler, pixels, conditions, args, pixel_weights=None) -> torch.Tensor:
    """One denoising loss: random timesteps, condition dropout for CFG, optional pixel and min-SNR-gamma weighting."""
    noise = torch.randn_like(pixels)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (pixels.shape[0],), device=pixels.device)
    noisy = noise_scheduler.add_noise(pixels, noise, timesteps)
    keep = (torch.rand(pixels.shape[0], 1, device=pixels.device) >= args.condition_dropout).to(conditions.dtype)
    config = getattr(unet, "module", unet).config  # DDP wraps the model in multi-process runs
    prediction = unet(noisy, timesteps, **unet_condition_kwargs(config, conditions * keep)).sample
    if args.prediction_type == "epsilon":
        target = noise
    elif args.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(pixels, noise, timesteps)
    else:
        target = pixels
    error = F.mse_loss(prediction.float(), target.float(), reduction="none")
    if pixel_weights is not None:
        error = error * pixel_weights
    per_sample = error.mean(dim=(1, 2, 3))
    if not args.snr_gamma:
        return per_sample.mean()
    snr = compute_snr(noise_scheduler, timesteps)
    clipped = torch.clamp(snr, max=args.snr_gamma)
    weights = {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}[args.prediction_type]
    return (per_sample * weights).mean()


def out_of_time(accelerator: Accelerator, budget_minutes: float | None, elapsed_seconds: float) -> bool:
    """Whether the ``--max_train_minutes`` budget is spent; in multi-process runs every process gets rank 0's answer,
    so all of them stop at the same step (their clocks differ slightly)."""
    if budget_minutes is None:
        return False
    done = torch.tensor([float(elapsed_seconds >= budget_minutes * 60)], device=accelerator.device)
    if accelerator.num_processes > 1:
        done = broadcast(done, from_process=0)
    return bool(done.item())


def make_pipeline(unet, noise_scheduler, vae=None) -> ICLEVRPipeline:
    return ICLEVRPipeline(unet=unet, scheduler=noise_scheduler, vae=vae)


@torch.no_grad()
def log_validation(unet, ema, noise_scheduler, args, accelerator, step: int, evaluator=None, vae=None) -> dict:
    """Sample the validation conditions (EMA weights if used) into a grid; with an evaluator, score them.

    With ``--validation_num_seeds`` above 1 every seed samples all conditions; the accuracy logged is the mean over
    seeds (``accuracy_std`` their spread), and the grid shows the first seed.
    """
    conditions = load_conditions(args.validation_conditions_json)
    rescale = {} if args.validation_guidance_rescale is None else {"guidance_rescale": args.validation_guidance_rescale}
    per_seed = []
    with ema_weights(ema, unet):
        pipeline = make_pipeline(unet, DDIMScheduler.from_config(noise_scheduler.config), vae)
        pipeline.set_progress_bar_config(disable=True)
        start = time.time()
        for seed in range(args.seed, args.seed + args.validation_num_seeds):
            with accelerator.autocast():
                per_seed.append(pipeline(conditions, num_inference_steps=args.validation_inference_steps,
                                         guidance_scale=args.validation_guidance_scale, output_type="np",
                                         generator=torch.Generator(device="cpu").manual_seed(seed), **rescale).images)
        seconds = time.time() - start
    images = per_seed[0]
    grid = image_grid(images, columns=8)
    folder = Path(args.output_dir) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    grid.save(folder / f"step-{step:07d}.png")
    grid.save(Path(args.output_dir) / "samples.png")
    record = {"step": step, "seconds_per_image": seconds / (len(conditions) * len(per_seed))}
    if evaluator is not None:
        reports = [evaluator.score(torch.from_numpy(batch).permute(0, 3, 1, 2), conditions) for batch in per_seed]
        accuracy = mean_std([r["accuracy"] for r in reports])
        record |= {"accuracy": accuracy["mean"], "exact_set_accuracy": mean_std([r["exact_set_accuracy"] for r in reports])["mean"]}
        record |= {f"misses_{kind}": count for kind, count in total_misses(reports).items()}  # what fails to bind
        if len(reports) > 1:
            record |= {"accuracy_std": accuracy["std"], "accuracy_per_seed": accuracy["values"]}
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("validation", images, step, dataformats="NHWC")
    accelerator.log({f"validation/{k}": v for k, v in record.items() if k not in ("step", "accuracy_per_seed")}, step=step)
    with open(folder / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")
    logger.info(f"validation at step {step}: {record}")
    return record


PIPELINE_FILES = ("unet", "scheduler", "vae", "pipeline_iclevr.py")  # moved in before model_index.json, which goes last


def save_pipeline(unet, ema, noise_scheduler, args, vae=None) -> Path:
    """Save the final pipeline (EMA weights if used) with a copy of pipeline_iclevr.py, so it loads as remote code.

    The pipeline is written into a ``.partial`` folder first and its parts moved in afterwards, with the old
    ``model_index.json`` removed first and the new one renamed in last: a save interrupted at any point leaves either
    the previous pipeline or a folder that `from_pretrained` refuses (no ``model_index.json``), never a mix.
    Non-finite weights are refused before anything is touched.
    """
    output_dir = Path(args.output_dir)
    with ema_weights(ema, unet):
        bad = [name for name, p in unet.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise FloatingPointError(f"Refusing to save non-finite weights ({len(bad)} tensors, e.g. {bad[0]}); "
                                     "the checkpoints in the output folder are untouched.")
        partial = output_dir / f"pipeline{PARTIAL}"
        if partial.exists():
            shutil.rmtree(partial)
        make_pipeline(unet, noise_scheduler, vae).save_pretrained(partial, safe_serialization=True)
    shutil.copy(PROJECT_DIR / "pipeline_iclevr.py", partial / "pipeline_iclevr.py")
    (output_dir / "model_index.json").unlink(missing_ok=True)
    for name in PIPELINE_FILES:
        target = output_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        if (partial / name).exists():  # a pixel-space pipeline has no vae
            os.replace(partial / name, target)
    os.replace(partial / "model_index.json", output_dir / "model_index.json")
    shutil.rmtree(partial)
    return output_dir


def write_model_card(args, summary: dict) -> None:
    """README.md with Hub metadata, how to load the pipeline both ways, the sample grid and the training figures."""
    repo = args.hub_model_id or Path(args.output_dir).name
    figures = "\n".join(f"| {k} | {v} |" for k, v in summary.items())
    samples = "![samples](samples.png)\n" if (Path(args.output_dir) / "samples.png").is_file() else ""
    latent = ("\nThe UNet denoises the latents of a small `AutoencoderKL` (in `vae/`, trained with `train_autoencoder.py`), "
              "which the pipeline decodes into images.") if args.pretrained_vae else ""
    card = f"""---
library_name: diffusers
license: apache-2.0
tags:
- diffusers
- class-conditional
- ddpm
- i-clevr
pipeline_tag: unconditional-image-generation
---

# {repo}

A class-conditional denoising diffusion model for i-CLEVR scenes (1-3 objects, 24 labels = 8 colours x 3 shapes),
trained with [iclevr-diffusion](https://github.com/) `train_conditional_ddpm.py`. Each image is conditioned on a
multi-hot label vector, embedded by the UNet's projection class embedding; guidance is classifier-free.{latent}

## Usage

```python
from pipeline_iclevr import ICLEVRPipeline   # the file shipped in this repository
pipe = ICLEVRPipeline.from_pretrained("{repo}")
images = pipe([["red sphere", "cyan cube"], ["gray cylinder"]], num_inference_steps=50, guidance_scale={args.validation_guidance_scale}).images
```

or without the file, as remote code:

```python
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("{repo}", custom_pipeline="pipeline_iclevr", trust_remote_code=True)
```

## Samples

{samples}
## Training

| figure | value |
| --- | --- |
{figures}
"""
    (Path(args.output_dir) / "README.md").write_text(card)


def push_to_hub(args) -> str:
    """Create the Hub repository and upload the saved pipeline folder (checkpoints and logs excluded)."""
    from huggingface_hub import create_repo, upload_folder

    repo_id = create_repo(args.hub_model_id, exist_ok=True, token=args.hub_token).repo_id
    upload_folder(repo_id=repo_id, folder_path=args.output_dir, commit_message="Upload ICLEVRPipeline",
                  ignore_patterns=["checkpoint-*", "logs/*", "validation/*", "*.tmp*"], token=args.hub_token)
    return repo_id


# --- main --------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.logger,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        cpu=multi_process_cpu_launch(),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if warning := slow_bf16_warning(accelerator.mixed_precision, accelerator.device):
        logger.warning(warning, main_process_only=True)
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        for folder in remove_partial_saves(output_dir):
            logger.warning(f"Removed {folder}, left by an interrupted save.")

    vae = load_vae(args, accelerator.device)
    unet = build_model(args, vae)
    noise_scheduler = build_noise_scheduler(args)
    ema = None
    if args.use_ema:
        # foreach: one fused update over the 168 weight tensors instead of ~500 small ops, which on a GPU are kernel
        # launches in a launch-bound step (46 ms on an H200); on the CPU 14 vs 19-33 ms per update.
        ema = EMAModel(unet.parameters(), decay=args.ema_max_decay, use_ema_warmup=True, inv_gamma=args.ema_inv_gamma,
                       power=args.ema_power, foreach=True, model_cls=UNet2DConditionModel, model_config=unet.config)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    dataset = build_dataset(args, accelerator, vae)
    loader = build_dataloader(dataset, args)
    floor = mean_image(dataset).to(accelerator.device) if args.foreground_weight > 0 else None
    updates_per_epoch = math.ceil(len(loader) / accelerator.num_processes / args.gradient_accumulation_steps)
    if updates_per_epoch == 0:
        raise ValueError(f"{len(dataset)} images are fewer than one batch of {args.train_batch_size}; lower --train_batch_size.")
    max_steps = args.max_train_steps or args.num_epochs * updates_per_epoch
    num_epochs = math.ceil(max_steps / updates_per_epoch)
    if args.lr_warmup_steps >= max_steps and args.lr_scheduler != "constant":
        logger.warning(f"--lr_warmup_steps {args.lr_warmup_steps} is not shorter than the {max_steps}-step schedule: the learning "
                       f"rate never decays. Pass fewer warm-up steps (e.g. --lr_warmup_steps {max(1, max_steps // 25)}).")
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=max_steps * accelerator.num_processes)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    unet = unet.to(memory_format=memory_format)  # before DDP wraps it, so gradient buckets match the layout
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    if accelerator.is_main_process:
        hidden = {"hub_token"}  # never sent to trackers
        accelerator.init_trackers("train_conditional_ddpm", config={k: str(v) for k, v in vars(args).items() if k not in hidden})
    evaluator = None
    if args.evaluator and accelerator.is_main_process:
        from iclevr_evaluator import Evaluator

        evaluator = Evaluator.from_pretrained(args.evaluator, device=accelerator.device)

    global_step, first_epoch, skip_batches = 0, 0, 0
    if args.resume_from_checkpoint:
        path = latest_checkpoint(args.output_dir) if args.resume_from_checkpoint == "latest" else Path(args.resume_from_checkpoint)
        accelerator.print(f"Resuming from {path}")
        accelerator.load_state(str(path))
        global_step = int(path.name.split("-")[-1])
        first_epoch = global_step // updates_per_epoch
        skip_batches = (global_step % updates_per_epoch) * args.gradient_accumulation_steps

    logger.info(f"{len(dataset)} images, {max_steps} steps of {args.train_batch_size}x{accelerator.num_processes}x{args.gradient_accumulation_steps}, "
                f"{sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters")
    progress = tqdm(total=max_steps, initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process)
    start, samples_seen, loss_value, record, validation_seconds = time.time(), 0, float("nan"), {}, 0.0
    warm = None  # (time, samples, step) after the first step: throughput is measured from there, past kernel warm-up
    # Resuming at (or past) the last step trains nothing and only saves: this exports checkpoint-N as a pipeline.
    for epoch in range(first_epoch, num_epochs if global_step < max_steps else first_epoch):
        unet.train()
        loader.set_epoch(epoch)
        epoch_loader = accelerator.skip_first_batches(loader, skip_batches) if epoch == first_epoch and skip_batches else loader
        for images, labels, *latents in epoch_loader:
            with accelerator.accumulate(unet):
                pixels = to_model_input(images)
                weights = foreground_weights(pixels, floor, args.foreground_weight) if floor is not None else None
                if args.random_flip:  # after weighting: the floor image is not mirror-symmetric
                    flipped = random_hflip(pixels if weights is None else torch.cat([pixels, weights], 1))
                    pixels, weights = flipped[:, :3], (None if weights is None else flipped[:, 3:])
                if vae is not None:  # denoise the images' latents; each latent pixel weighs as its image patch
                    pixels = latents[0]
                    weights = None if weights is None else F.avg_pool2d(weights, vae_scale_factor(vae))
                pixels = pixels.contiguous(memory_format=memory_format)
                with accelerator.autocast():
                    loss = diffusion_loss(unet, noise_scheduler, pixels, labels, args, weights)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"Non-finite loss {loss.item()} at step {global_step}; stopping before any weight is written.")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if accelerator.optimizer_step_was_skipped:  # fp16 loss scaling found inf/NaN gradients
                    logger.warning(f"Skipped the optimiser step at step {global_step}: non-finite gradients under fp16 loss scaling.")
            samples_seen += images.shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.step(unet.parameters())
            global_step += 1
            if warm is None:
                warm = (time.time(), samples_seen, global_step)
            loss_value = loss.detach().item()
            progress.update(1)
            progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
            accelerator.log({"loss": loss_value, "lr": lr_scheduler.get_last_lr()[0], "epoch": epoch}, step=global_step)
            if global_step % args.checkpointing_steps == 0:
                if accelerator.is_main_process:
                    rotate_checkpoints(output_dir, args.checkpoints_total_limit)
                save_checkpoint(accelerator, output_dir, global_step)
            if args.validation_steps and global_step % args.validation_steps == 0 and accelerator.is_main_process:
                paused = time.time()
                record = log_validation(bare_model(accelerator, unet), ema, noise_scheduler, args, accelerator, global_step, evaluator, vae)
                validation_seconds += time.time() - paused
            if global_step >= max_steps:
                break
            if out_of_time(accelerator, args.max_train_minutes, time.time() - start - validation_seconds):
                logger.warning(f"--max_train_minutes {args.max_train_minutes:g} spent at step {global_step} of {max_steps}: the "
                               f"learning-rate schedule stops at {lr_scheduler.get_last_lr()[0]:.2e}, not at its end. Fewer "
                               f"--max_train_steps fit this machine (main_job.py sizes them by a calibration run).")
                max_steps = global_step
                break
        if global_step >= max_steps:
            break
    progress.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unet = bare_model(accelerator, unet).to(memory_format=torch.contiguous_format)
        if args.validation_steps and global_step % args.validation_steps:
            paused = time.time()
            record = log_validation(unet, ema, noise_scheduler, args, accelerator, global_step, evaluator, vae)
            validation_seconds += time.time() - paused  # the final validation is not training time either
        seconds = time.time() - start
        warm = warm or (start, 0, global_step)  # nothing trained (a resume at the last step only exports): no step timed
        timed = max(time.time() - warm[0] - validation_seconds, 1e-9)  # validation all falls after the first step
        rate = (samples_seen - warm[1]) / timed
        summary = {"steps": global_step, "final loss": f"{loss_value:.4f}", "images seen (this run)": samples_seen,
                   "images/s": f"{rate:.1f}", "minutes": f"{seconds / 60:.1f}",
                   "training minutes (validation excluded)": f"{(seconds - validation_seconds) / 60:.1f}",
                   "parameters": f"{sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M", "resolution": args.resolution,
                   "denoises": "pixels" if vae is None else f"latents {unet.config.in_channels}x{unet.config.sample_size}x{unet.config.sample_size}",
                   "mixed precision": accelerator.mixed_precision, "processes": accelerator.num_processes}
        summary |= {f"validation {k}": v for k, v in record.items() if k != "step"}
        save_pipeline(unet, ema, noise_scheduler, args, vae)
        write_model_card(args, summary)
        # Machine-readable figures (main_job.py sizes its schedule to this machine from a short run's seconds per step).
        seconds_per_step = timed / (global_step - warm[2]) if global_step > warm[2] else None
        (output_dir / "train_summary.json").write_text(json.dumps(summary | {"seconds per step": seconds_per_step}, indent=2))
        logger.info(f"Saved the pipeline to {output_dir}: {summary}")
        if args.push_to_hub:
            logger.info(f"Pushed to https://huggingface.co/{push_to_hub(args)}")
    accelerator.end_training()


if __name__ == "__main__":
    main()
