# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""How big each shape is drawn, measured the same way on any i-CLEVR pictures: the renderer's, or the panel's (images
of models trained on the real data). This set the i-CLEVR proportions (docs/renderer.md).

i-CLEVR's first object stands at the centre of the floor, so the object covering the projection of the origin is
seen from the same distance in every picture: its area compares shapes, and looks, without a layout. It is found as
the saturated blob at that spot and named by its hue, where its colour is unique among the picture's labels (a grey
object is not saturated, and is skipped).

    python -m iclevr.render.measure --panel_dir ../shared/panel
    python -m iclevr.render.measure --images_dir data/iclevr-64      # a rendered folder with train.json
"""

from __future__ import annotations

import argparse
import colorsys
import statistics
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from iclevr.render.look import ICLEVR, default_view
from iclevr.render.raycast import project
from iclevr.render.scenes import CLEVR_RGB, SIZES

SATURATION = 30  # max - min of RGB (0-255) above which a pixel is part of a coloured object
MAX_HUE_DISTANCE = 0.06  # of the hue circle; CLEVR's nearest hues (red and brown) are 0.08 apart
HUES = {name: colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] for name, rgb in CLEVR_RGB.items() if name != "gray"}


@lru_cache(maxsize=8)
def centre_spot(width: int = 64, height: int = 64) -> tuple[int, int]:
    """The pixel (x, y) where the centre of an object standing at the origin is seen by CLEVR's camera."""
    xy, _ = project(torch.tensor([[0.0, 0.0, SIZES["iclevr"]]]), width, height, default_view(ICLEVR))
    return int(xy[0, 0]), int(xy[0, 1])


def _hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 1.0
    return min(d, 1.0 - d)


def centre_object(image: np.ndarray, labels: Sequence[str]) -> tuple[str, int] | None:
    """``(shape, area in pixels)`` of the object at the centre spot of an RGB uint8 image ``(H, W, 3)``, or None where
    none is found there or its colour is not unique among ``labels``."""
    from scipy import ndimage

    pixels = image.astype(np.float32)
    blobs, _ = ndimage.label(pixels.max(-1) - pixels.min(-1) > SATURATION)
    x, y = centre_spot(image.shape[1], image.shape[0])
    blob = blobs[y, x]
    if blob == 0:
        return None
    mask = blobs == blob
    hue = colorsys.rgb_to_hsv(*(pixels[mask].mean(0) / 255))[0]
    colour = min(HUES, key=lambda name: _hue_distance(HUES[name], hue))
    colours = [label.split()[0] for label in labels]
    if _hue_distance(HUES[colour], hue) > MAX_HUE_DISTANCE or colours.count(colour) != 1:
        return None
    return labels[colours.index(colour)].split()[1], int(mask.sum())


def centre_areas(pictures: Iterable[tuple[np.ndarray, Sequence[str]]]) -> dict[str, dict]:
    """Per shape: how many centre objects were found and their median area (pixels)."""
    areas: dict[str, list[int]] = {}
    for image, labels in pictures:
        found = centre_object(image, labels)
        if found:
            areas.setdefault(found[0], []).append(found[1])
    return {shape: {"objects": len(values), "median_area": statistics.median(values)} for shape, values in sorted(areas.items())}


def _panel_pictures(panel_dir: Path):
    from iclevr.evaluator import read_image_folder
    from iclevr.panel import read_manifest, set_conditions

    for entry in read_manifest(panel_dir):
        for name in entry["reported"]:
            conditions = set_conditions(panel_dir, name)
            for image, labels in zip(read_image_folder(panel_dir / entry["folder"] / name, len(conditions)), conditions):
                yield np.asarray(image), labels


def _folder_pictures(folder: Path, limit: int):
    from iclevr.io import read_json

    records = read_json(folder / "train.json", "The folder's labels (train.json)")
    for name in sorted(records)[:limit]:
        yield np.asarray(Image.open(folder / name).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)), records[name]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Median area of each shape at the centre spot of i-CLEVR pictures.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--panel_dir", type=Path, help="A panel folder (manifest.json and each entry's sets).")
    source.add_argument("--images_dir", type=Path, help="A folder of pictures with train.json (the renderer's layout).")
    parser.add_argument("--max_images", type=int, default=3000, help="Pictures read from --images_dir (enough for a stable median).")
    args = parser.parse_args(argv)
    pictures = _panel_pictures(args.panel_dir) if args.panel_dir else _folder_pictures(args.images_dir, args.max_images)
    table = centre_areas(pictures)
    for shape, row in table.items():
        print(f"{shape:9s} {row['objects']:5d} objects, median area {row['median_area']:g} px at 64x64")
    return table


if __name__ == "__main__":
    from iclevr.cli import run

    run(main)
