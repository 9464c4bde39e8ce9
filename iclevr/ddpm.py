# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""The diffusion trainer's parts (``train_conditional_ddpm.py`` composes them): the denoiser and its noise schedule,
the training data, the loss, validation, and saving the pipeline with its model card.

The denoiser is diffusers' `UNet2DConditionModel` with ``class_embed_type="projection"``: the multi-hot condition goes
through the UNet's own projection into the timestep embedding, so it is saved and reloaded with the model. Where the
data carries layouts (`iclevr.layouts`), the UNet also reads a layout map beside the noisy image (one channel per
label, painted on each object's box), as diffusers' inpainting UNets read their mask: objects are placed, then drawn.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_snr
from filelock import FileLock

from iclevr.argtypes import (
    finite_float,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)
from iclevr.data import add_data_args, cache_root, dataset_to_tensors, load_dataset_from_args
from iclevr.flags import add_length_args, add_precision_ema_args, add_run_args, check_run_args, int_list
from iclevr.hub import CARD_TAIL, write_card
from iclevr.images import to_model_input
from iclevr.labels import dataset_vocabulary
from iclevr.layouts import LAYOUTS_FILE, infer_layouts, read_layouts_file
from iclevr.loop import save_pipeline_folder
from iclevr.object_finder import shipped_object_finder
from iclevr.render.dataset import default_spp, plan_random_scenes, render_dataset
from iclevr.render.look import DEFAULT_STYLE
from iclevr.sampling import SCHEDULERS
from iclevr.utils import ema_weights
from pipeline_iclevr import (
    DEFAULT_GUIDANCE_SCALE,
    LABELS,
    LAYOUT_CHANNELS,
    ICLEVRPipeline,
    LabelVocabulary,
    condition_routes,
    label_channels,
    layout_map,
    predict,
)

DEFAULT_LR_WARMUP_STEPS = 200  # the trainer's default warm-up, which main_job.py shortens with a shorter schedule


def add_training_data_args(group, resolution: int = 64) -> None:
    """The data flags of the generator trainers: a dataset (`add_data_args`) or the embedded set, the resolution (default
    ``resolution``), flips."""
    add_data_args(group, "i-CLEVR-layout folder (PNGs + train.json) or imagefolder with metadata.jsonl. Default: the embedded procedural set.")
    group.add_argument("--embedded_num_scenes", type=positive_int, default=18003,
                       help="Scenes of the embedded default set (3 images each); more scenes beat repeated epochs in an hour.")
    group.add_argument("--resolution", type=positive_int, default=resolution, help="Training resolution (square): the size of the images the pipeline draws.")
    group.add_argument("--random_flip", action="store_true", help="Flip images horizontally at random (labels stay valid).")
    group.add_argument("--dataloader_num_workers", type=non_negative_int, default=0, help="DataLoader workers (data is in memory, so 0).")


# --- flags -------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags of ``train_conditional_ddpm.py`` (diffusers-example names), checked before any work starts."""
    parser = argparse.ArgumentParser(prog="train_conditional_ddpm.py", description="Train a class-conditional DDPM on i-CLEVR and save an ICLEVRPipeline.")
    data = parser.add_argument_group("data")
    add_training_data_args(data)
    data.add_argument("--channels_last", action="store_true", help="Use the channels-last memory format (faster with bf16 on some CPUs; docs/experiments.md).")

    model = parser.add_argument_group("model")
    model.add_argument("--pretrained_model_name_or_path", type=str, default=None,
                       help="Fine-tune a saved ICLEVRPipeline (folder or Hub id): its UNet and noise schedule, whose resolution, "
                            "patch size and prediction type replace the flags'; the other model flags are ignored.")
    model.add_argument("--model_config_name_or_path", type=str, default=None,
                       help="Build the UNet from this config (a folder holding config.json, or the file) instead of the model "
                            "flags, and train it from scratch.")
    model.add_argument("--gradient_checkpointing", action="store_true",
                       help="Recompute activations in the backward pass: less memory for a larger batch, at more time per step.")
    model.add_argument("--block_out_channels", type=int_list, default=[32, 64, 128], help="UNet channels per level, e.g. 32,64,128.")
    model.add_argument("--patch_size", type=positive_int, default=2,
                       help="Space-to-depth factor: the UNet works at resolution / patch_size on 3 x patch_size² channels, "
                            "so the default 2 draws 64x64 images at about the cost of 32x32 ones (1: a UNet at full resolution).")
    model.add_argument("--layers_per_block", type=positive_int, default=1,
                       help="ResNet layers per UNet level (1: on a CPU a second costs a third of the images/s and is no "
                            "better by 1,000 steps; the GPU recipe uses 2).")
    model.add_argument("--attention_levels", type=int_list, default=None, help="1/0 per level: self-attention there (default: the lowest level only).")
    model.add_argument("--attention_head_dim", type=positive_int, default=32, help="Channels per attention head.")
    model.add_argument("--layout_conditioning", type=str, default="auto", choices=["auto", "on", "off", "infer"],
                       help="Also condition on where each object is (a layout map beside the noisy image): auto where the data "
                            f"carries {LAYOUTS_FILE} (the embedded set does), on to require it, off for the label-only model, "
                            "infer to find the objects with --object_finder (data with labels only: the course's real "
                            "images, a Hub dataset; written to the cache, never into the data's folder). Placing objects "
                            "first binds colour and shape locally and learns far faster.")
    model.add_argument("--object_finder", type=str, default=None,
                       help="The object finder --layout_conditioning infer reads each image's boxes with (default: the shipped "
                            "pretrained/object-finder, trained on renders; train_object_finder.py trains one).")
    model.add_argument("--layout_channels", type=str, default="labels", choices=list(LAYOUT_CHANNELS),
                       help="The layout map's channels: one per label, or one per word of the label names (a colour's and a "
                            "shape's channel each learnt from every object that holds it). Per word learns faster early and is level by "
                            "1,000 steps, so the default stays per label.")
    model.add_argument("--layout_prior_size", type=positive_int, default=512,
                       help="Training layouts per object count kept in the saved pipeline's config, drawn uniformly: its "
                            "prior for calls that give no layout (512 keep the config small and the layouts varied).")
    model.add_argument("--conditioning", type=str, default="class_embedding", choices=["class_embedding", "cross_attention", "both"],
                       help="How the UNet sees the labels: one projected vector added to the timestep embedding, one "
                            "cross-attention token per label at the attention levels, or both.")
    model.add_argument("--cross_attention_dim", type=positive_int, default=64, help="Width of the label tokens (cross-attention conditioning).")
    model.add_argument("--time_embedding_dim", type=positive_int, default=512,
                       help="Width of the timestep + class embedding every ResNet block reads (wider than diffusers' 4x the "
                            "first level binds the labels faster).")
    model.add_argument("--resnet_time_scale_shift", type=str, default="scale_shift", choices=["default", "scale_shift"],
                       help="How every ResNet block applies the (timestep + class) embedding: added, or as a FiLM scale and shift.")

    diffusion = parser.add_argument_group("diffusion")
    diffusion.add_argument("--ddpm_num_steps", type=positive_int, default=1000, help="Diffusion steps in training.")
    diffusion.add_argument("--ddpm_beta_schedule", type=str, default="squaredcos_cap_v2", choices=["linear", "scaled_linear", "squaredcos_cap_v2"], help="Noise schedule.")
    diffusion.add_argument("--logsnr_shift", type=finite_float, default=None,
                           help="Added to the noise schedule's log-SNR at every timestep (simple diffusion). Default "
                                "2 ln(32 / resolution): 0 at 32x32, more noise at higher resolution, whose neighbouring "
                                "pixels reveal more of the image at the same noise level.")
    diffusion.add_argument("--prediction_type", type=str, default="sample", choices=["epsilon", "v_prediction", "sample"],
                           help="What the UNet predicts: the clean image x0 ('sample'), the noise ('epsilon') or v. x0 with "
                                "an unweighted loss binds the condition fastest.")
    diffusion.add_argument("--snr_gamma", type=non_negative_float, default=0.0,
                           help="Min-SNR-gamma loss weighting (0 = off: with x0-prediction every noise level then weighs the "
                                "same in image space, so the high-noise steps that decide layout and colour are trained).")
    diffusion.add_argument("--weighting_scheme", type=str, default="logit_normal", choices=["none", "logit_normal", "mode"],
                           help="How training timesteps are drawn (diffusers' compute_density_for_timestep_sampling): none = "
                                "uniform; logit_normal (the default) and mode favour the middle noise levels, where layout "
                                "and binding are decided, and so train faster.")
    diffusion.add_argument("--logit_mean", type=finite_float, default=0.0, help="Mean of the logit-normal timestep density.")
    diffusion.add_argument("--logit_std", type=positive_float, default=1.0, help="Standard deviation of the logit-normal timestep density.")
    diffusion.add_argument("--mode_scale", type=positive_float, default=1.29, help="Scale of the 'mode' timestep density (SD3's value).")
    diffusion.add_argument("--condition_dropout", type=probability, default=0.1,
                           help="Probability of replacing the condition (labels and layout map together) by the null (all-zero) "
                                "one, for classifier-free guidance.")
    diffusion.add_argument("--layout_dropout", type=probability, default=0.1,
                           help="Probability of dropping a layout model's map alone (labels kept), so the label vector still "
                                "teaches what to draw.")
    diffusion.add_argument("--foreground_weight", type=non_negative_float, default=4.0, help="Extra loss weight on pixels where the clean image departs from the floor (the training set's mean image): weight = 1 + W * departure. 0 = plain MSE.")

    optim = parser.add_argument_group("optimisation")
    add_length_args(optim)
    optim.add_argument("--gradient_accumulation_steps", type=positive_int, default=1, help="Batches accumulated per optimiser step.")
    optim.add_argument("--learning_rate", type=positive_float, default=2e-3, help="Peak learning rate.")
    optim.add_argument("--lr_scheduler", type=str, default="cosine", choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"], help="Schedule (diffusers get_scheduler).")
    optim.add_argument("--lr_warmup_steps", type=non_negative_int, default=DEFAULT_LR_WARMUP_STEPS, help="Warm-up steps (a short warm-up suits the high default rate).")
    optim.add_argument("--adam_beta1", type=fraction, default=0.9, help="AdamW beta1.")
    optim.add_argument("--adam_beta2", type=fraction, default=0.999, help="AdamW beta2.")
    optim.add_argument("--adam_weight_decay", type=non_negative_float, default=1e-2, help="AdamW weight decay.")
    optim.add_argument("--adam_epsilon", type=positive_float, default=1e-8, help="AdamW epsilon.")
    optim.add_argument("--max_grad_norm", type=positive_float, default=1.0, help="Gradient clipping norm.")
    add_precision_ema_args(optim, ema_max_decay=0.9999)

    run = parser.add_argument_group("run")
    add_run_args(run, output_dir="outputs/iclevr-ddpm", project_name="train_conditional_ddpm")
    run.add_argument("--validation_scheduler", type=str, default="dpm++", choices=sorted(SCHEDULERS),
                     help="Sampler of validation, also saved with the pipeline so its default call samples as measured; "
                          "DPM-Solver++ at 25 steps scores within the seed spread of DDIM at 50.")
    run.add_argument("--validation_inference_steps", type=positive_int, default=25,
                     help="Sampling steps at validation (the pipeline's default call takes 25 too).")
    run.add_argument("--validation_guidance_scale", type=non_negative_float, default=DEFAULT_GUIDANCE_SCALE, help="Classifier-free guidance at validation.")

    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject impossible combinations before any work starts."""
    if args.pretrained_model_name_or_path and args.model_config_name_or_path:
        parser.error("--pretrained_model_name_or_path and --model_config_name_or_path are exclusive: fine-tune saved weights, "
                     "or train a given architecture from scratch.")
    if args.pretrained_model_name_or_path:
        read_pretrained(parser, args)
    levels = len(args.block_out_channels)
    if args.attention_levels is None:
        args.attention_levels = [0] * (levels - 1) + [1]
    if len(args.attention_levels) != levels or set(args.attention_levels) - {0, 1}:
        parser.error(f"--attention_levels needs one 0/1 per level ({levels}), got {args.attention_levels}.")
    if args.resolution % (args.patch_size * 2 ** (levels - 1)):
        parser.error(f"--resolution {args.resolution} must be divisible by {args.patch_size * 2 ** (levels - 1)} (--patch_size "
                     f"{args.patch_size}, then the UNet downsamples {levels - 1} times).")
    if args.logsnr_shift is None:
        args.logsnr_shift = 2 * math.log(32 / args.resolution)
    if math.gcd(32, *args.block_out_channels) < 4:
        parser.error(f"--block_out_channels {args.block_out_channels} need a common divisor of at least 4 for GroupNorm.")
    if any(c % args.attention_head_dim for c, a in zip(args.block_out_channels, args.attention_levels) if a):
        parser.error("--attention_head_dim must divide the channels of every attention level.")
    if args.conditioning != "class_embedding" and not any(args.attention_levels):
        parser.error(f"--conditioning {args.conditioning} needs at least one attention level (--attention_levels) to cross-attend.")
    if args.condition_dropout == 1.0:
        parser.error("--condition_dropout must be below 1: a model that never sees its labels cannot follow them.")
    if args.condition_dropout + args.layout_dropout >= 1.0 and args.layout_conditioning != "off":
        parser.error("--condition_dropout plus --layout_dropout must stay below 1: a layout model must see some maps.")
    if args.object_finder is not None and args.layout_conditioning != "infer":
        parser.error("--object_finder is read only with --layout_conditioning infer; add that, or drop --object_finder.")
    if args.layout_conditioning == "infer":
        args.object_finder = args.object_finder or shipped_object_finder()
        if args.object_finder is None:
            parser.error("--layout_conditioning infer needs an object finder: this installation ships none (a clone has "
                         "pretrained/object-finder); pass one with --object_finder (train_object_finder.py trains one).")
        args.object_finder = str(args.object_finder)
    check_run_args(parser, args)


def read_pretrained(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--pretrained_model_name_or_path``'s resolution, patch size and prediction type replace the flags' (its
    weights fix them); a folder or repository that is no saved ICLEVRPipeline is refused."""
    path = args.pretrained_model_name_or_path
    try:
        index = ICLEVRPipeline.load_config(path)
        unet = UNet2DConditionModel.load_config(path, subfolder="unet")
        scheduler = DDPMScheduler.load_config(path, subfolder="scheduler")
    except (OSError, ValueError) as error:
        parser.error(f"--pretrained_model_name_or_path {path} is not a saved ICLEVRPipeline (model_index.json, unet/, "
                     f"scheduler/): {error}")
    args.patch_size = int(index.get("patch_size", 1))
    args.layout_channels = index.get("layout_channels", "labels")
    args.resolution = int(unet["sample_size"]) * args.patch_size
    args.prediction_type = scheduler.get("prediction_type", args.prediction_type)


# --- model -------------------------------------------------------------------------------------------------------
def build_model(args: argparse.Namespace, num_labels: int = len(LABELS), map_channels: int = 0) -> UNet2DConditionModel:
    """The denoiser: ``--pretrained_model_name_or_path``'s UNet, or one built from ``--model_config_name_or_path``, or
    from the model flags (`build_unet`); checked to take ``num_labels`` labels and 3 channels per patch pixel, plus
    a layout model's ``map_channels`` (0: label-only)."""
    if args.pretrained_model_name_or_path:
        unet = UNet2DConditionModel.from_pretrained(args.pretrained_model_name_or_path, subfolder="unet")
    elif args.model_config_name_or_path:
        config = Path(args.model_config_name_or_path)
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config.parent if config.is_file() else config))
    else:
        unet = build_unet(args, num_labels, map_channels)
    source = args.pretrained_model_name_or_path or args.model_config_name_or_path or "the model flags"
    if not condition_routes(unet.config, num_labels):
        raise ValueError(f"The UNet of {source} does not take this data's {num_labels} labels (class_embed_type='projection' "
                         f"with projection_class_embeddings_input_dim={num_labels}, or encoder_hid_dim={num_labels}).")
    channels = 3 * args.patch_size**2 + map_channels
    if unet.config.in_channels != channels or unet.config.sample_size * args.patch_size != args.resolution:
        mode = f"a layout model ({map_channels} map channels)" if map_channels else "a label-only model"
        raise ValueError(f"The UNet of {source} takes {unet.config.in_channels} channels at {unet.config.sample_size}x"
                         f"{unet.config.sample_size}; --resolution {args.resolution} with --patch_size {args.patch_size} as "
                         f"{mode} needs {channels} at {args.resolution // args.patch_size} (--layout_conditioning chooses).")
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return unet


def build_unet(args: argparse.Namespace, num_labels: int = len(LABELS), map_channels: int = 0) -> UNet2DConditionModel:
    """A UNet from the model flags, with self-attention (or, for label tokens, self + cross-attention) at the
    attention levels.

    ``class_embedding`` projects the multi-hot condition into the timestep embedding; ``cross_attention`` turns it into
    one token per label (`pipeline_iclevr.label_tokens`) through ``encoder_hid_proj``, attended to by every attention
    level and the middle block. A layout model takes ``map_channels`` more input channels: the layout map.
    """
    cross = args.conditioning in ("cross_attention", "both")
    attn = "CrossAttn" if cross else "Attn"
    down = tuple(f"{attn}DownBlock2D" if a else "DownBlock2D" for a in args.attention_levels)
    up = tuple(f"{attn}UpBlock2D" if a else "UpBlock2D" for a in reversed(args.attention_levels))
    extra = {}
    if args.conditioning in ("class_embedding", "both"):
        extra |= {"class_embed_type": "projection", "projection_class_embeddings_input_dim": num_labels}
    if cross:
        extra |= {"encoder_hid_dim": num_labels, "encoder_hid_dim_type": "text_proj", "cross_attention_dim": args.cross_attention_dim}
    return UNet2DConditionModel(
        sample_size=args.resolution // args.patch_size,
        in_channels=3 * args.patch_size**2 + map_channels,
        out_channels=3 * args.patch_size**2,
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
    if args.pretrained_model_name_or_path:  # the schedule the weights were trained with, whatever the saved sampler
        return DDPMScheduler.from_pretrained(args.pretrained_model_name_or_path, subfolder="scheduler")
    # Pixels live in [-1, 1], so samplers may clip their x0 estimate there.
    schedule = {"num_train_timesteps": args.ddpm_num_steps, "beta_schedule": args.ddpm_beta_schedule}
    if args.logsnr_shift:  # saved as the scheduler's trained_betas, so every sampler built from its config follows it
        schedule["trained_betas"] = shifted_betas(DDPMScheduler(**schedule).alphas_cumprod, args.logsnr_shift).tolist()
    return DDPMScheduler(**schedule, prediction_type=args.prediction_type, clip_sample=True)


def shifted_betas(alphas_cumprod: torch.Tensor, shift: float, max_beta: float = 0.999) -> torch.Tensor:
    """The betas of a schedule whose log-SNR is ``log(a / (1 - a)) + shift`` at every step (Hoogeboom et al. 2023,
    "simple diffusion": shifting by ``2 ln(base / resolution)`` keeps the noise per image region of the base
    resolution), capped at ``max_beta`` as diffusers' cosine schedule is."""
    alphas_cumprod = alphas_cumprod.double()
    shifted = torch.sigmoid(torch.log(alphas_cumprod) - torch.log1p(-alphas_cumprod) + shift)
    previous = torch.cat([torch.ones(1, dtype=shifted.dtype), shifted[:-1]])
    return (1 - shifted / previous).clamp(max=max_beta).float()


# --- data --------------------------------------------------------------------------------------------------------
def embedded_data_dir(args: argparse.Namespace) -> Path:
    """The embedded set's cache folder (the default look's; a set cached in another look is never reused)."""
    return cache_root(args.cache_dir) / f"rendered-{DEFAULT_STYLE.name}-seed{args.seed}-scenes{args.embedded_num_scenes}-{args.resolution}px"


def load_training_data(args: argparse.Namespace, accelerator: Accelerator):
    """The training data as a `datasets.Dataset` decoded at ``--resolution``, and its local folder (None for a Hub
    dataset); with no data given, the embedded procedural set, rendered once into the cache."""
    with accelerator.main_process_first():  # render/decode once; the other processes then read the cache
        if args.train_data_dir is None and args.dataset_name is None:
            data_dir = embedded_data_dir(args)
            data_dir.parent.mkdir(parents=True, exist_ok=True)
            # Runs launched side by side on one cache (a sweep) wait here for one render and one decode, instead of
            # each rendering with every core.
            with FileLock(f"{data_dir}.lock"):
                if not (data_dir / "train.json").is_file():
                    render_dataset(data_dir, plan_random_scenes(args.embedded_num_scenes, args.seed, set()), args.seed,
                                   args.resolution, args.resolution, default_spp(args.resolution),
                                   num_workers=os.cpu_count() or 1, overwrite=True)
                return load_dataset_from_args(args, args.resolution, data_dir), data_dir
        return load_dataset_from_args(args, args.resolution), args.train_data_dir


def build_dataset(args: argparse.Namespace, accelerator: Accelerator,
                  read_layouts: bool = True) -> tuple[torch.utils.data.TensorDataset, LabelVocabulary, str]:
    """The training data in memory (uint8 images ``(N, H, W, 3)``, multi-hot labels, and for a layout model each
    image's boxes and box labels), its label vocabulary, and why layouts are used or not (`use_layouts`). A trainer
    without a layout model (the GAN's) passes ``read_layouts=False``."""
    dataset, folder = load_training_data(args, accelerator)
    images, labels = dataset_to_tensors(dataset)
    vocab = dataset_vocabulary(dataset)
    layouts, reason = use_layouts(args, dataset, folder, images, labels, vocab, accelerator) if read_layouts else (None, "label-only")
    return torch.utils.data.TensorDataset(images, labels, *(layouts or ())), vocab, reason


def use_layouts(args: argparse.Namespace, dataset, folder, images: torch.Tensor, labels: torch.Tensor,
                vocab: LabelVocabulary, accelerator: Accelerator):
    """The data's layouts (boxes, box labels) under ``--layout_conditioning``, or None, and the reason, for the log."""
    if args.layout_conditioning == "off":
        return None, "label-only: --layout_conditioning off"
    if args.layout_conditioning == "infer":
        return inferred_layouts(args, dataset, images, labels, vocab, accelerator)
    if folder is None or "file_name" not in dataset.column_names:
        found, why = None, "a Hub dataset carries no layouts.json"
    else:
        found = read_layouts_file(folder, dataset["file_name"], labels, vocab)
        why = f"{Path(folder) / LAYOUTS_FILE} does not exist"
    if found is None:
        if args.layout_conditioning == "on":
            raise ValueError(f"--layout_conditioning on needs layouts, but {why}; give a folder with {LAYOUTS_FILE} "
                             "(render_iclevr.py writes one), or train label-only (--layout_conditioning off).")
        return None, f"label-only: {why}"
    return found, f"layouts from {Path(folder) / LAYOUTS_FILE} (the objects' boxes in the image)"


def inferred_layouts(args: argparse.Namespace, dataset, images: torch.Tensor, labels: torch.Tensor, vocab: LabelVocabulary,
                     accelerator: Accelerator):
    """``--layout_conditioning infer``: each image's layout found by ``--object_finder`` (`iclevr.layouts.infer_layouts`,
    cached; the main process infers, the others read its file). An image where the finder is unsure of an object
    trains without a map; the reason for the log says how many layouts are whole."""
    names = list(dataset["file_name"]) if "file_name" in dataset.column_names else [str(i) for i in range(len(dataset))]
    with accelerator.main_process_first():
        folder, summary = infer_layouts(args.object_finder, images, labels, names, vocab, cache_root(args.cache_dir),
                                        accelerator.device)
    if summary["whole_layouts"] == 0:
        raise ValueError(f"The object finder {args.object_finder} found no whole layout in {summary['images']} images (of "
                         f"{summary['objects']} objects it found {summary['objects_found']}); these images may be far from "
                         "its renders: train label-only (--layout_conditioning off), or train a finder on closer renders.")
    found = read_layouts_file(folder, names, labels, vocab)
    return found, (f"layouts inferred by {args.object_finder}: {summary['whole_layouts']} of {summary['images']} images have a "
                   f"whole layout ({summary['objects_found']} of {summary['objects']} objects found at confidence "
                   f">= {summary['confidence_threshold']}), the other {summary['images'] - summary['whole_layouts']} train "
                   f"without a map ({folder / LAYOUTS_FILE})")


def build_dataloader(dataset, args: argparse.Namespace) -> torch.utils.data.DataLoader:
    # Its own generator: creating an epoch's iterator must not consume the global RNG that draws noise, or a
    # resumed run would draw different noise than an uninterrupted one.
    return torch.utils.data.DataLoader(dataset, batch_size=args.train_batch_size, shuffle=True, drop_last=True,
                                       num_workers=args.dataloader_num_workers,
                                       generator=torch.Generator().manual_seed(args.seed))


def mean_image(images: torch.Tensor) -> torch.Tensor:
    """The mean of uint8 images ``(N, H, W, 3)`` as ``(1, 3, H, W)`` in [-1, 1]: the floor, for `foreground_weights`."""
    total = torch.zeros(images.shape[1:], dtype=torch.float64)
    for start in range(0, images.shape[0], 1024):
        total += images[start : start + 1024].double().sum(0)
    return to_model_input((total / images.shape[0]).round().to(torch.uint8)[None])


# --- loss --------------------------------------------------------------------------------------------------------
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


def sample_timesteps(args: argparse.Namespace, batch_size: int, num_timesteps: int, device) -> torch.Tensor:
    """Training timesteps: uniform, or from diffusers' SD3 densities over [0, 1] mapped onto the discrete steps."""
    if args.weighting_scheme == "none":
        return torch.randint(0, num_timesteps, (batch_size,), device=device)
    u = compute_density_for_timestep_sampling(args.weighting_scheme, batch_size, logit_mean=args.logit_mean,
                                              logit_std=args.logit_std, mode_scale=args.mode_scale, device=device)
    return (u * num_timesteps).long().clamp(0, num_timesteps - 1)


def diffusion_loss(unet, noise_scheduler, pixels, conditions, args, pixel_weights=None, layout=None) -> torch.Tensor:
    """One denoising loss: random timesteps, condition dropout for CFG (labels and a layout model's ``layout`` map
    together, and the map alone), optional pixel and min-SNR-gamma weighting."""
    noise = torch.randn_like(pixels)
    timesteps = sample_timesteps(args, pixels.shape[0], noise_scheduler.config.num_train_timesteps, pixels.device)
    noisy = noise_scheduler.add_noise(pixels, noise, timesteps)
    draw = torch.rand(pixels.shape[0], 1, device=pixels.device)
    keep = (draw >= args.condition_dropout).to(conditions.dtype)
    if layout is not None:  # one draw: the null condition with p, the labels without their map with p_layout
        layout = layout * (draw >= args.condition_dropout + args.layout_dropout).to(layout.dtype)[..., None, None]
    prediction = predict(unet, noisy, timesteps, conditions * keep, args.patch_size, layout)
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


def map_channels_of(args: argparse.Namespace, vocab: LabelVocabulary, layouts: bool) -> torch.Tensor | None:
    """The layout-map channels each label paints under ``--layout_channels`` (None for a label-only model)."""
    return label_channels(vocab, args.layout_channels) if layouts else None


def training_layout_map(boxes: torch.Tensor, box_labels: torch.Tensor, channels: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    """A batch's layout map at the UNet's resolution (`pipeline_iclevr.layout_map`, as the pipeline paints it), each
    label painting its row of ``channels`` (`pipeline_iclevr.label_channels`)."""
    size = args.resolution // args.patch_size
    return layout_map(boxes, box_labels, channels, (size, size))


def sampling_pipeline(unet, noise_scheduler: DDPMScheduler, args: argparse.Namespace,
                      vocab: LabelVocabulary | None = None, max_labels_per_image: int | None = None,
                      prior: dict | None = None) -> ICLEVRPipeline:
    """The pipeline as it is validated and saved: ``--validation_scheduler`` over the training noise schedule, and
    ``--validation_inference_steps`` and ``--validation_guidance_scale`` as the call's defaults, so the saved model's
    default call samples as its figures were measured; the data's vocabulary (default i-CLEVR's), so it takes the
    data's label names; the most labels of a training image, beyond which a call warns; a layout model's prior."""
    scheduler = SCHEDULERS[args.validation_scheduler].from_config(noise_scheduler.config)
    label2id = (vocab or LabelVocabulary()).label2id
    return ICLEVRPipeline(unet=unet, scheduler=scheduler, label2id=label2id, patch_size=args.patch_size,
                          default_num_inference_steps=args.validation_inference_steps,
                          default_guidance_scale=args.validation_guidance_scale, max_labels_per_image=max_labels_per_image,
                          layout_prior=prior, layout_channels=args.layout_channels)


# --- saving ------------------------------------------------------------------------------------------------------
def save_pipeline(unet, ema, noise_scheduler, args: argparse.Namespace, output_dir: Path,
                  vocab: LabelVocabulary | None = None, max_labels_per_image: int | None = None, prior: dict | None = None) -> Path:
    """Save the final pipeline (EMA weights if used) with the sampler it was validated with, and a copy of
    pipeline_iclevr.py, so it loads as remote code.

    Written in one piece, non-finite weights refused (`iclevr.loop.save_pipeline_folder`).
    """
    with ema_weights(ema, unet):
        return save_pipeline_folder(sampling_pipeline(unet, noise_scheduler, args, vocab, max_labels_per_image, prior), unet, output_dir)


CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

A class-conditional denoising diffusion model for {{ data }}, trained with the `train_conditional_ddpm.py` script of
iclevr-diffusion. Each image is conditioned on a multi-hot label vector embedded by the UNet's projection class
embedding; guidance is classifier-free.

## Usage

```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{{ repo }}", trust_remote_code=True)  # or pipeline_iclevr.ICLEVRPipeline
images = pipe({{ example }}).images  # the default call: {{ sampler }}, {{ steps }} steps, guidance {{ guidance }}
```

{% if layouts %}This is a layout model: objects are placed, then drawn. {% if inferred %}It learns from boxes the object finder
found in the training images (`--layout_conditioning infer`; an image where it was unsure of an object trained without
a map){% else %}It learns from the renderer's object positions (each
object's box in the image, from the training folder's `layouts.json`){% endif %} and reads a map of the boxes beside the noisy
image. Place the objects yourself (boxes as fractions of the image, y down, one per label):

```python
out = pipe(["red sphere", "cyan cube"], layouts=[{"label": "red sphere", "box": [0.1, 0.5, 0.3, 0.8]},
                                                 {"label": "cyan cube", "box": [0.6, 0.3, 0.75, 0.5]}])
```

A call without layouts draws each image's from the prior kept in the pipeline config (`layout_prior`: a uniform sample
of the training layouts by object count, unfiltered); `out.layouts` says where each object went.

{% endif %}The default call's sampler, steps and guidance are the pipeline config's (`default_num_inference_steps`,
`default_guidance_scale`): {% if measured %}the ones its accuracy below was measured with{% else %}the ones it was
saved with; no accuracy was measured during training{% endif %}. Guidance at or below 1 samples the conditional model
alone, as in diffusers.

""" + CARD_TAIL


def write_model_card(args, summary: dict, vocab: LabelVocabulary, folder: Path, samples: bool, layouts: bool = False) -> None:
    """The diffusion pipeline's README.md in ``folder`` (`iclevr.hub.write_card`), its accuracy measured with the
    pipeline's default call (the validation sampler, steps and guidance); a layout model's says how to place objects."""
    sampler = SCHEDULERS[args.validation_scheduler].__name__
    write_card(args, summary, vocab, CARD_TEMPLATE, "class-conditional DDPM", "ddpm",
               f"{sampler}, guidance {args.validation_guidance_scale:g}, {args.validation_inference_steps} steps", folder, samples,
               steps=args.validation_inference_steps, guidance=f"{args.validation_guidance_scale:g}", sampler=sampler, layouts=layouts,
               inferred=args.layout_conditioning == "infer")
