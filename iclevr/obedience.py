# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Does a layout model put each object where it is asked? The report's layout measure.

Each condition gets a layout drawn from the model's own prior with a seed (as a user would pass one: never from the
evaluator or the scored images), and is sampled with it. Then, for every object, the image is kept inside that
object's box only, the rest replaced by the empty floor, and the evaluator is asked for that one label (the course
metric with a one-label condition: is it the evaluator's top label?). A model that ignores the layout leaves the
boxes empty, or holds other objects there, and fails.

Two reference rows make the figure readable: the renderer's own scenes cut at their true boxes (the ceiling: a nearer
object may cover part of a box) and the same generated images cut at another condition's boxes (what chance
placement gives).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from iclevr.metrics import mean_std
from iclevr.sampling import generate
from iclevr.utils import display_scale, image_grid
from pipeline_iclevr import sample_layout


def prior_layouts(pipe, conditions: list[list[str]], seed: int) -> list[list[dict]]:
    """One layout per condition drawn from the pipeline's prior with ``seed`` (`pipeline_iclevr.sample_layout`)."""
    generator = torch.Generator().manual_seed(seed)
    layouts = []
    for condition in conditions:
        placed = sample_layout(pipe.config.layout_prior, pipe.vocab.indices(condition), generator)
        layouts.append([{"label": pipe.vocab.labels[index], "box": box} for index, box in placed])
    return layouts


def box_crops(images: np.ndarray, layouts: list[list[dict]], floor: np.ndarray) -> tuple[np.ndarray, list[list[str]]]:
    """Every object of every image alone: its box kept (each cell the box touches), the rest ``floor``; with its label."""
    height, width = images.shape[1:3]
    crops, labels = [], []
    for image, layout in zip(images, layouts):
        for item in layout:
            x0, y0, x1, y1 = item["box"]
            rows = slice(math.floor(y0 * height), max(math.ceil(y1 * height), math.floor(y0 * height) + 1))
            cols = slice(math.floor(x0 * width), max(math.ceil(x1 * width), math.floor(x0 * width) + 1))
            crop = floor.copy()
            crop[rows, cols] = image[rows, cols]
            crops.append(crop)
            labels.append([item["label"]])
    return np.stack(crops), labels


def floor_image(size: int) -> np.ndarray:
    """The renderer's empty floor at ``size`` x ``size``, in [0, 1]."""
    from iclevr.evaluator import reference_images

    return reference_images([["gray cube"]], "floor", resolution=size)[0].numpy().astype(np.float32) / 255.0


def rendered_with_layouts(conditions: list[list[str]], size: int, seed: int) -> tuple[np.ndarray, list[list[dict]]]:
    """The renderer's scenes of the conditions with their true boxes: the ceiling of the measure."""
    from iclevr.render.dataset import reference_scenes, scene_layout, to_uint8
    from iclevr.render.raycast import render

    scenes = reference_scenes(conditions, seed)
    images = np.stack([to_uint8(render(objects, size, size, spp=4, view=view).image) for objects, view in scenes]).astype(np.float32) / 255.0
    return images, [scene_layout(objects, view) for objects, view in scenes]


def shifted(layouts: list[list[dict]]) -> list[list[dict]]:
    """Each layout's labels on the boxes of the next layout with as many objects (a chance placement)."""
    by_count: dict[int, list[int]] = {}
    for i, layout in enumerate(layouts):
        by_count.setdefault(len(layout), []).append(i)
    moved = list(layouts)
    for members in by_count.values():
        for i, j in zip(members, members[1:] + members[:1]):
            moved[i] = [{"label": a["label"], "box": b["box"]} for a, b in zip(layouts[i], layouts[j])]
    return moved


def read_in_boxes(evaluator, images: np.ndarray, layouts: list[list[dict]], floor: np.ndarray) -> float:
    """The share of the layouts' objects the evaluator reads alone in their boxes of ``images`` (`box_crops`)."""
    crops, labels = box_crops(images, layouts, floor)
    return evaluator.score(torch.from_numpy(crops).permute(0, 3, 1, 2), labels)["accuracy"]


def layout_obedience(pipe, evaluator, conditions: list[list[str]], seeds: list[int], batch_size: int, **sampling) -> dict:
    """The share of objects the evaluator reads inside their own boxes, mean ± std over ``seeds`` (each draws its
    layouts and its noise), with the ceiling and chance rows; and the first seed's images and layouts, for a figure."""
    size = pipe.image_size[0]
    floor = floor_image(size)
    obeyed, chance, first = [], [], None
    for seed in seeds:
        layouts = prior_layouts(pipe, conditions, seed)
        images, _ = generate(pipe, conditions, seed, batch_size, layouts=layouts, **sampling)
        obeyed.append(read_in_boxes(evaluator, images, layouts, floor))
        chance.append(read_in_boxes(evaluator, images, shifted(layouts), floor))
        first = first or (images, layouts)
    rendered, truth = rendered_with_layouts(conditions, size, seeds[0])
    return {"objects": sum(len(c) for c in conditions), "obeyed": mean_std(obeyed), "chance": mean_std(chance),
            "rendered": read_in_boxes(evaluator, rendered, truth, floor), "first": first}


def layout_figure(images: np.ndarray, layouts: list[list[dict]], count: int = 16) -> Image.Image:
    """The first ``count`` images enlarged, each asked box outlined and captioned with its label."""
    scale = display_scale(images.shape[1], 128)
    pictures = []
    for image, layout in zip(images[:count], layouts[:count]):
        picture = Image.fromarray((image * 255).round().clip(0, 255).astype(np.uint8)).resize(
            (image.shape[1] * scale, image.shape[0] * scale), Image.Resampling.NEAREST)
        draw = ImageDraw.Draw(picture)
        for item in layout:
            x0, y0, x1, y1 = (v * picture.width if i % 2 == 0 else v * picture.height for i, v in enumerate(item["box"]))
            draw.rectangle([x0, y0, x1, y1], outline="white")
        pictures.append(picture)
    captions = ["\n".join(item["label"] for item in layout) for layout in layouts[:count]]
    return image_grid(pictures, columns=8, captions=captions)
