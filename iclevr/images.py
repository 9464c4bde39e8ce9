# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Images: decoding a file into an RGB array at the training resolution (refusing what is not a colour image), and
the tensors the models see (``[-1, 1]`` NCHW) and back, with label-preserving flips."""

from __future__ import annotations

import io
import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# The most pixels a training image may have: 4096 x 4096, 800 times i-CLEVR's 320 x 240 and far below PIL's own
# decompression-bomb limit (89M), so a hostile or broken file is a bad image, reported by name, not a traceback.
MAX_PIXELS = 4096 * 4096


def load_rgb_image(source: str | os.PathLike | Image.Image | dict) -> Image.Image:
    """Open and fully decode an image as RGB, raising `ValueError` with the reason for anything that is not a colour image.

    Real i-CLEVR PNGs are RGBA with an opaque alpha channel; those (and palette images without transparency)
    convert losslessly. Greyscale images or images with real transparency are rejected rather than guessed at.
    """
    if isinstance(source, dict):  # datasets Image(decode=False) value
        source = source.get("path") if source.get("bytes") is None else io.BytesIO(source["bytes"])
    try:
        image = source if isinstance(source, Image.Image) else Image.open(source)
        if image.width * image.height > MAX_PIXELS:  # checked before decoding: a 48 KB PNG can hold 400M pixels
            raise ValueError(f"{image.width}x{image.height} pixels, over the limit of {MAX_PIXELS:,} for a training image")
        image.load()  # decode now so truncated files fail here, not in the middle of training
    except FileNotFoundError:
        raise ValueError("file is missing") from None
    except Image.DecompressionBombError as error:  # PIL's own limit, met while opening: far over ours
        raise ValueError(f"over the limit of {MAX_PIXELS:,} pixels for a training image ({error})") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"unreadable or truncated image ({error})") from None
    if image.mode in ("L", "LA", "I", "I;16", "F", "1"):
        raise ValueError(f"greyscale image (mode {image.mode}); i-CLEVR images must be RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        alpha_min = image.getchannel("A").getextrema()[0]
        if alpha_min < 255:
            raise ValueError("image has transparent pixels (RGBA with alpha < 255); flatten it onto a background first")
        image = image.convert("RGB")
    if image.mode != "RGB":
        raise ValueError(f"unsupported image mode {image.mode}; expected RGB")
    return image


def resize_to_array(image: Image.Image, resolution: int) -> np.ndarray:
    """Squash an image to ``resolution x resolution`` (as the course does with 320x240 i-CLEVR) and return uint8 HWC."""
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def decode_image_batch(batch: dict, resolution: int, image_column: str) -> dict:
    arrays, errors, sizes = [], [], []
    for source in batch[image_column]:
        try:
            image = load_rgb_image(source)
            arrays.append(resize_to_array(image, resolution))
            errors.append("")
            sizes.append(f"{image.width}x{image.height}")
        except ValueError as error:
            arrays.append(np.zeros((resolution, resolution, 3), dtype=np.uint8))
            errors.append(str(error))
            sizes.append("")
    return {"image": arrays, "error": errors, "size": sizes}


def dataset_features(resolution: int, vocab_size: int):
    from datasets import Array3D, Features, List, Value

    return Features(
        {
            "image": Array3D(shape=(resolution, resolution, 3), dtype="uint8"),
            "labels": List(Value("float32"), length=vocab_size),
            "label_names": List(Value("string")),
            "file_name": Value("string"),
            "error": Value("string"),
            "size": Value("string"),
        }
    )


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` images → float32 ``(B, 3, H, W)`` in ``[-1, 1]``."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"Expected uint8 images of shape (B, H, W, 3), got {images.dtype} {tuple(images.shape)}.")
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8_images(pixels: torch.Tensor) -> torch.Tensor:
    """float ``(B, 3, H, W)`` in ``[-1, 1]`` → uint8 ``(B, H, W, 3)`` (clamped), the inverse of `to_model_input`."""
    return pixels.detach().float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def random_hflip(pixels: torch.Tensor, generator: torch.Generator | None = None, boxes: torch.Tensor | None = None):
    """Flip each image of a ``(B, C, H, W)`` batch horizontally with probability 1/2 (labels stay valid). With layout
    ``boxes`` ``(B, K, 4)`` (fractions of the image), flip each image's boxes with it and return both."""
    flip = torch.rand(pixels.shape[0], generator=generator) < 0.5
    flipped = torch.where(flip[:, None, None, None].to(pixels.device), pixels.flip(-1), pixels)
    if boxes is None:
        return flipped
    mirrored = torch.stack([1 - boxes[..., 2], boxes[..., 1], 1 - boxes[..., 0], boxes[..., 3]], -1)
    return flipped, torch.where(flip[:, None, None].to(boxes.device), mirrored, boxes)


def collate_examples(examples: list[dict], random_flip: bool = False) -> dict[str, torch.Tensor]:
    """Collate rows of a dataset in ``torch`` format into ``pixel_values`` ([-1, 1], NCHW) and ``labels`` (B, 24)."""
    # datasets' numpy/torch formatters widen uint8 arrays to int64; narrow back before scaling.
    images = torch.stack([torch.as_tensor(example["image"]) for example in examples]).to(torch.uint8)
    pixels = to_model_input(images)
    if random_flip:
        pixels = random_hflip(pixels)
    labels = torch.stack([torch.as_tensor(example["labels"], dtype=torch.float32) for example in examples])
    return {"pixel_values": pixels, "labels": labels}
