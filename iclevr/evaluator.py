# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""The i-CLEVR evaluator: a ResNet-18 multi-label classifier, its held-out figures, and the scorer.

The model is transformers' `ResNetForImageClassification` in the torchvision ResNet-18 shape (basic blocks,
depths 2-2-2-2, 7x7 stem with max-pool, one sigmoid output per label: i-CLEVR's 24 by default), like the course's
evaluator, so it saves as safetensors with `save_pretrained`, reloads with `from_pretrained` and pushes to the Hub. The course's own `checkpoint.pth`
(a torchvision ResNet-18 state dict) converts to it exactly (`convert_course_checkpoint`).

Inputs follow the course: 64x64 RGB normalised with mean 0.5 / std 0.5. `Evaluator.score` takes PIL images, uint8
``(B, H, W, 3)`` tensors or float ``(B, 3, H, W)`` tensors in [0, 1] (diffusers' ``output_type="pt"``), any square
size (a 32x32 generation is upsampled to 64x64, as the course does).

Training is ``train_evaluator.py`` (its augmentations: `iclevr.augment`); scoring a folder of images from the command line is ``evaluate_images.py``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from iclevr.augment import lowres_round_trip
from iclevr.images import load_rgb_image
from iclevr.labels import validate_objects_json
from iclevr.metrics import evaluate_scores
from pipeline_iclevr import LABELS, LabelVocabulary, describe_input

EVALUATOR_RESOLUTION = 64
# The evaluator that ships with the repository (main_job.EVALUATOR_RECIPE, half precision; pretrained/README.md), so
# that a first run trains none. Absent from an installed package, which carries no weights.
SHIPPED_EVALUATOR = Path(__file__).resolve().parents[1] / "pretrained" / "evaluator"


def shipped_evaluator() -> Path | None:
    """The shipped evaluator's folder when its weights and config are there (a clone; not an installed package)."""
    whole = all((SHIPPED_EVALUATOR / name).is_file() for name in ("model.safetensors", "config.json"))
    return SHIPPED_EVALUATOR if whole else None
MIN_INPUT_SIZE = 16


def evaluator_config(vocab: LabelVocabulary | None = None):
    """The course evaluator's architecture as a transformers `ResNetConfig` (torchvision ResNet-18 layout), with one
    output per label of ``vocab`` (i-CLEVR's 24 by default) named in ``id2label``."""
    from transformers import ResNetConfig

    vocab = vocab or LabelVocabulary()
    return ResNetConfig(
        num_channels=3,
        embedding_size=64,
        hidden_sizes=[64, 128, 256, 512],
        depths=[2, 2, 2, 2],
        layer_type="basic",
        hidden_act="relu",
        downsample_in_first_stage=False,
        num_labels=len(vocab),
        id2label=dict(vocab.id2label),
        label2id=dict(vocab.label2id),
        problem_type="multi_label_classification",
    )


def evaluator_image_processor():
    """The preprocessing as a transformers image processor (64x64 bilinear, mean 0.5 / std 0.5), saved beside the
    evaluator so that ``transformers.pipeline("image-classification", model=DIR)`` scores images as it does."""
    try:
        from transformers import ViTImageProcessorPil as Processor  # transformers >= 5 without torchvision
    except ImportError:
        from transformers import ViTImageProcessor as Processor
    return Processor(size={"height": EVALUATOR_RESOLUTION, "width": EVALUATOR_RESOLUTION}, image_mean=[0.5] * 3,
                     image_std=[0.5] * 3, resample=Image.Resampling.BILINEAR)


def build_evaluator(vocab: LabelVocabulary | None = None):
    """A freshly initialised evaluator model for ``vocab`` (i-CLEVR's 24 labels by default)."""
    from transformers import ResNetForImageClassification

    return ResNetForImageClassification(evaluator_config(vocab))


def model_vocabulary(config) -> LabelVocabulary:
    """The vocabulary of an evaluator's outputs, from its config: the names in ``id2label``, checked against the
    course's order where they are i-CLEVR's; i-CLEVR's 24 for transformers' placeholder names (``LABEL_0``, ...), as a
    converted course checkpoint has."""
    names = [config.id2label[i] for i in range(config.num_labels)] if getattr(config, "id2label", None) else []
    if not names or names == [f"LABEL_{i}" for i in range(config.num_labels)]:
        if config.num_labels != len(LABELS):
            raise ValueError(f"An evaluator without label names must have i-CLEVR's {len(LABELS)} outputs, this one has "
                             f"{config.num_labels}; save it with id2label naming each output.")
        return LabelVocabulary()
    label2id = {name: i for i, name in enumerate(names)}
    if set(names) & set(LABELS):
        validate_objects_json(label2id)
    return LabelVocabulary(label2id)


# --- the course checkpoint ---------------------------------------------------------------------------------------
def torchvision_to_transformers_key(key: str) -> str:
    """Map one torchvision ResNet-18 state-dict key to transformers' `ResNetForImageClassification` naming."""
    if key.startswith("conv1."):
        return "resnet.embedder.embedder.convolution." + key[len("conv1.") :]
    if key.startswith("bn1."):
        return "resnet.embedder.embedder.normalization." + key[len("bn1.") :]
    match = re.fullmatch(r"fc\.(?:0\.)?(weight|bias)", key)  # the course's fc is Sequential(Linear, Sigmoid)
    if match:
        return f"classifier.1.{match.group(1)}"
    match = re.fullmatch(r"layer(\d)\.(\d+)\.(conv1|bn1|conv2|bn2|downsample\.0|downsample\.1)\.(.+)", key)
    if match:
        stage, block, part, rest = match.groups()
        prefix = f"resnet.encoder.stages.{int(stage) - 1}.layers.{block}."
        part = {
            "conv1": "layer.0.convolution",
            "bn1": "layer.0.normalization",
            "conv2": "layer.1.convolution",
            "bn2": "layer.1.normalization",
            "downsample.0": "shortcut.convolution",
            "downsample.1": "shortcut.normalization",
        }[part]
        return f"{prefix}{part}.{rest}"
    raise ValueError(f"Unexpected key {key!r} in a torchvision ResNet-18 state dict.")


def convert_torchvision_state_dict(state_dict: dict[str, torch.Tensor]):
    """Build an evaluator from a torchvision ResNet-18 state dict with a 24-way ``fc`` (``fc.0`` or plain ``fc``)."""
    model = build_evaluator()
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}  # DataParallel saves
    converted = {torchvision_to_transformers_key(key): value for key, value in state_dict.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    wrong = [f"{k}: {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in converted.items() if k in expected and v.shape != expected[k].shape]
    if missing or wrong:
        raise ValueError(
            "Not a 24-label torchvision ResNet-18 checkpoint: "
            + (f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}; " if missing else "")
            + (f"shape mismatches {wrong[:5]}" if wrong else "")
        )
    model.load_state_dict(converted, strict=True)
    return model.eval()


def convert_course_checkpoint(path: str | os.PathLike):
    """Load the course's ``checkpoint.pth`` (``{"model": resnet18 state dict}``) safely, as an evaluator model.

    Uses ``torch.load(weights_only=True)``, so a checkpoint cannot run code when loaded.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path} is not a course checkpoint (expected a dict with key 'model' holding a state dict).")
    return convert_torchvision_state_dict(state_dict)


# --- preprocessing -----------------------------------------------------------------------------------------------
def to_evaluator_input(images, resolution: int = EVALUATOR_RESOLUTION) -> torch.Tensor:
    """Images → float ``(B, 3, 64, 64)`` normalised with mean 0.5 / std 0.5 (i.e. in [-1, 1]).

    Accepts a list of PIL images, a uint8 tensor ``(B, H, W, 3)``, or a float tensor ``(B, 3, H, W)`` in [0, 1].
    Square images of another size are resized (bilinear; 32x32 → 64x64 is the course's protocol).
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("No images to score.")
        if not all(isinstance(image, Image.Image) for image in images):
            raise ValueError("A list of images must hold PIL images; pass tensors as one batched tensor.")
        images = torch.from_numpy(np.stack([np.asarray(load_rgb_image(image)) for image in images]))
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"Expected a batch of images (B, H, W, 3) uint8 or (B, 3, H, W) float, got {describe_input(images)}.")
    if images.dtype == torch.uint8:
        if images.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (B, H, W, 3) RGB, got shape {tuple(images.shape)}.")
        pixels = images.permute(0, 3, 1, 2).float() / 255.0
    elif images.is_floating_point():
        if images.shape[1] != 3:
            raise ValueError(f"float images must be (B, 3, H, W) RGB, got shape {tuple(images.shape)}.")
        low, high = images.min().item(), images.max().item()
        if low < -1e-3 or high > 1 + 1e-3:
            raise ValueError(
                f"float images must be in [0, 1] (diffusers' output_type='pt'), got values in [{low:.3f}, {high:.3f}]; "
                "for model-space images in [-1, 1] pass (images + 1) / 2."
            )
        pixels = images.float()
    else:
        raise ValueError(f"Unsupported image dtype {images.dtype}; use uint8 or float.")
    height, width = pixels.shape[-2:]
    if height != width:
        raise ValueError(f"Images must be square (i-CLEVR generations are), got {height}x{width}; resize them first.")
    if height < MIN_INPUT_SIZE:
        raise ValueError(f"Images of {height}x{width} are too small to score; the minimum is {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}.")
    if height != resolution:
        pixels = F.interpolate(pixels, size=(resolution, resolution), mode="bilinear", antialias=height > resolution, align_corners=False)
    return pixels * 2.0 - 1.0


def read_image_folder(images_dir: str | os.PathLike, count: int) -> list[Image.Image]:
    """Read ``0.png ... count-1.png`` (the course's naming); a clear error lists missing or unreadable files."""
    folder = Path(images_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"--images_dir {folder} is not a directory.")
    images, problems = [], []
    for i in range(count):
        try:
            images.append(load_rgb_image(folder / f"{i}.png"))
        except ValueError as error:
            problems.append(f"{i}.png: {error}")
    if problems:
        raise ValueError(
            f"{folder}: {len(problems)} of the {count} images the conditions need are bad:\n  "
            + "\n  ".join(problems[:10])
            + ("\n  ..." if len(problems) > 10 else "")
            + "\nImages must be named 0.png ... N-1.png, one per condition, in order."
        )
    extra = sorted(p.name for p in folder.glob("*.png") if not re.fullmatch(r"\d+\.png", p.name) or int(p.stem) >= count)
    if extra:
        raise ValueError(f"{folder} has {len(extra)} PNG(s) no condition refers to ({extra[:5]}); the conditions file lists {count}.")
    return images


# --- held-out figures --------------------------------------------------------------------------------------------
@torch.no_grad()
def heldout_figures(model, images: torch.Tensor, labels: torch.Tensor, accelerator, batch_size: int = 512,
                    flip_average: bool = False) -> dict:
    """Course and exact-set accuracy on held-out images at 64x64 and after a 32x32 round trip.

    ``flip_average`` scores as `Evaluator` does with that setting (each image averaged with its mirror image).

    Each process scores a contiguous share of the images; the shares are gathered in process order, so every
    process gets the figures of the whole held-out set, each image counted once.
    """
    from accelerate.utils import broadcast, gather_object

    model.eval()
    if accelerator.num_processes > 1:
        # DDP broadcasts BatchNorm statistics from rank 0 at the start of each forward, so after the last training
        # step the ranks' running statistics differ by one update: score with rank 0's (the model that is saved).
        for buffer in model.buffers():
            buffer.copy_(broadcast(buffer.clone(), from_process=0))
    figures = {}
    with accelerator.split_between_processes(list(range(images.shape[0]))) as mine:
        share = images[mine[0] : mine[-1] + 1] if mine else images[:0]
    for name, size in (("64", None), ("32to64", 32)):
        scores = [torch.zeros(0, labels.shape[1])]
        for start in range(0, share.shape[0], batch_size):
            pixels = share[start : start + batch_size].permute(0, 3, 1, 2).float() / 255.0
            if size is not None:
                pixels = lowres_round_trip(pixels, size)
            pixels = (pixels * 2 - 1).to(accelerator.device).contiguous(memory_format=torch.channels_last)
            with accelerator.autocast():
                scores.append(probabilities(model, pixels, flip_average).cpu())
        gathered = gather_object([torch.cat(scores)]) if accelerator.num_processes > 1 else [torch.cat(scores)]
        report = evaluate_scores(torch.cat(gathered), labels, labels=model_vocabulary(model.config).labels)
        figures[name] = {
            "accuracy": report["accuracy"],
            "exact_set_accuracy": report["exact_set_accuracy"],
            "by_num_objects": report["by_num_objects"],
        }
    model.train()
    return figures


def probabilities(model, pixel_values: torch.Tensor, flip_average: bool = False) -> torch.Tensor:
    """Sigmoid label probabilities of normalised ``(B, 3, 64, 64)`` pixels, optionally averaged with the mirror image's."""
    scores = torch.sigmoid(model(pixel_values=pixel_values).logits.float())
    if flip_average:
        scores = (scores + torch.sigmoid(model(pixel_values=pixel_values.flip(-1)).logits.float())) / 2
    return scores


# --- the scorer --------------------------------------------------------------------------------------------------
class Evaluator:
    """A trained evaluator: predicts label probabilities and scores images against their conditions.

    Args:
        model: a `ResNetForImageClassification` whose config names its outputs (`model_vocabulary`): i-CLEVR's 24
            labels in the course's order, or a vocabulary of its own.
        device: where to run it; batches are moved there.
        batch_size: images per forward pass.
        flip_average: score each image as the mean of its own and its mirror image's probabilities (a horizontal
            flip keeps every label true, and the two views' errors on barely visible objects differ). Default: the
            model config's ``flip_average`` (set by ``train_evaluator.py --flip_average``; off for the course's
            checkpoint), so every score made with a saved evaluator uses the mode its held-out figures were made in.
    """

    def __init__(self, model, device: str | torch.device = "cpu", batch_size: int = 256, flip_average: bool | None = None):
        self.vocab = model_vocabulary(model.config)
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.flip_average = bool(getattr(model.config, "flip_average", False)) if flip_average is None else flip_average

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Evaluator:
        """Load a saved evaluator folder (safetensors), or the course's ``.pth`` checkpoint."""
        path = Path(path)
        if path.is_file() and path.suffix in (".pth", ".pt"):
            return cls(convert_course_checkpoint(path), device)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} is neither an evaluator folder (config.json + model.safetensors) nor a .pth checkpoint. "
                "Train one with `accelerate launch train_evaluator.py`."
            )
        from transformers import ResNetForImageClassification

        # A half-precision file (the shipped evaluator's) is scored in float32, as its figures were measured.
        return cls(ResNetForImageClassification.from_pretrained(path).float(), device)

    @torch.no_grad()
    def predict(self, images) -> torch.Tensor:
        """Label probabilities ``(B, L)`` for a batch of images (see `to_evaluator_input`)."""
        pixels = to_evaluator_input(images)
        outputs = []
        for start in range(0, pixels.shape[0], self.batch_size):
            batch = pixels[start : start + self.batch_size].to(self.device)
            outputs.append(probabilities(self.model, batch, self.flip_average).cpu())
        return torch.cat(outputs)

    def score(self, images, conditions: Sequence | torch.Tensor) -> dict:
        """Course accuracy, exact-set accuracy, breakdown by object count and per-label P/R of images vs conditions."""
        targets = self.vocab.encode_batch(conditions)
        probabilities = self.predict(images)
        if probabilities.shape[0] != targets.shape[0]:
            raise ValueError(f"{probabilities.shape[0]} images but {targets.shape[0]} conditions; give one condition per image.")
        return evaluate_scores(probabilities, targets, labels=self.vocab.labels)


def reference_images(conditions: Sequence[Sequence[str]], kind: str, seed: int = 0, resolution: int = EVALUATOR_RESOLUTION) -> torch.Tensor:
    """Baseline images for sanity rows, one per condition, uint8 ``(N, H, W, 3)``.

    ``kind``: ``"floor"`` (the renderer's empty grey floor), ``"noise"`` (uniform pixel noise) or ``"rendered"``
    (the renderer's picture of each condition: the ceiling a generator can hope for).
    """
    from iclevr.render.dataset import reference_scenes, to_uint8
    from iclevr.render.raycast import render

    if kind == "noise":
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(0, 256, (len(conditions), resolution, resolution, 3), generator=generator, dtype=torch.uint8)
    if kind == "floor":
        floor = torch.from_numpy(to_uint8(render([], resolution, resolution, spp=1).image))
        return floor.expand(len(conditions), -1, -1, -1).clone()
    if kind == "rendered":  # the renderer's own layout of each condition, as render_iclevr --conditions_json does
        scenes = reference_scenes(conditions, seed)
        return torch.stack([torch.from_numpy(to_uint8(render(objects, resolution, resolution, spp=4, view=view).image))
                            for objects, view in scenes])
    raise ValueError(f"Unknown reference kind {kind!r}; use 'floor', 'noise' or 'rendered'.")


def sanity_report(evaluator: Evaluator, conditions: Sequence[Sequence[str]], seed: int = 0) -> dict:
    """Course and exact-set accuracy of rendered images (ceiling), empty floors and pure noise for ``conditions``; with
    a vocabulary other than i-CLEVR's, which the renderer cannot draw, of pure noise only."""
    report = {}
    for kind in ("rendered", "floor", "noise") if evaluator.vocab.labels == LABELS else ("noise",):
        metrics = evaluator.score(reference_images(conditions, kind, seed), conditions)
        report[kind] = {"accuracy": metrics["accuracy"], "exact_set_accuracy": metrics["exact_set_accuracy"]}
    return report
