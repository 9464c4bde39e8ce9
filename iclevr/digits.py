# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""A second, single-label dataset that needs no download: scikit-learn's bundled handwritten digits (1,797 8x8 scans
of 0-16 grey levels, the UCI "optdigits" test set), as an RGB image folder the trainers and the evaluator read.

    python -m iclevr.digits --output_dir data/digits --resolution 32

Writes ``<i>.png`` (white ink on black, upsampled bilinearly), ``metadata.jsonl`` (``{"file_name": ..., "labels":
["seven"]}``), ``objects.json`` (the 10-label vocabulary: ``"zero"`` ... ``"nine"``, indexed by the digit) and
``conditions.json`` (each digit ``--conditions_per_label`` times, the set a report scores), in one piece.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from iclevr.argtypes import check_output_folder, positive_int
from iclevr.io import staged_folder

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: uint8 images ``(1797, 8, 8)`` scaled from 0-16 to 0-255, and their digits ``(1797,)``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("The digits dataset ships with scikit-learn: pip install scikit-learn "
                          "(or pip install -e '.[digits]').") from None
    digits = load_digits()
    return (digits.images * (255 / 16)).round().astype(np.uint8), digits.target.astype(int)


def to_rgb(image: np.ndarray, resolution: int) -> Image.Image:
    """One 8x8 grey image as an RGB image of ``resolution`` pixels a side (bilinear: the strokes stay smooth)."""
    return Image.fromarray(image, mode="L").resize((resolution, resolution), Image.Resampling.BILINEAR).convert("RGB")


def write_digits_dataset(output_dir: str | Path, resolution: int = 32, conditions_per_label: int = 10,
                         limit: int | None = None, overwrite: bool = False) -> Path:
    """Write the digits as an image folder (see the module docstring); ``limit`` keeps the first N images (tests)."""
    if resolution < 8:
        raise ValueError(f"--resolution must be at least 8 (the scans are 8x8), got {resolution}.")
    if conditions_per_label < 1:
        raise ValueError(f"--conditions_per_label must be positive, got {conditions_per_label}.")
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; pass --overwrite to replace it.")
    images, targets = load_digits_arrays()
    images, targets = images[:limit], targets[:limit]
    with staged_folder(output_dir) as folder:
        lines = []
        for i, (image, digit) in enumerate(zip(images, targets)):
            to_rgb(image, resolution).save(folder / f"{i:04d}.png")
            lines.append(json.dumps({"file_name": f"{i:04d}.png", "labels": [DIGIT_NAMES[digit]]}))
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
        (folder / "objects.json").write_text(json.dumps({name: i for i, name in enumerate(DIGIT_NAMES)}) + "\n")
        conditions = [[name] for name in DIGIT_NAMES for _ in range(conditions_per_label)]
        (folder / "conditions.json").write_text(json.dumps(conditions) + "\n")
    return output_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write scikit-learn's digits as an RGB image folder with a 10-label vocabulary.")
    parser.add_argument("--output_dir", type=str, default="data/digits", help="Folder to write.")
    parser.add_argument("--resolution", type=positive_int, default=32, help="Image size (the scans are 8x8; 32 suits the default UNet).")
    parser.add_argument("--conditions_per_label", type=positive_int, default=10, help="Times each digit appears in conditions.json.")
    parser.add_argument("--limit", type=positive_int, default=None, help="Keep only the first N images (a quick smoke run).")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing folder.")
    args = parser.parse_args(argv)
    check_output_folder(parser, args.output_dir, "--output_dir")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    path = write_digits_dataset(args.output_dir, args.resolution, args.conditions_per_label, args.limit, args.overwrite)
    print(f"Wrote {len(list(path.glob('*.png')))} digits to {path}")


if __name__ == "__main__":
    main()
