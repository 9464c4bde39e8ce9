# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Rendering a procedural i-CLEVR dataset in the course's layout: planning scenes, rendering them over processes, and
writing the folder in one piece (`render_dataset`). The CLI is ``render_iclevr.py``.

Files: ``CLEVR_train_{scene:06d}_{k}.png`` (k + 1 objects; each scene adds one object at a time), ``train.json``,
``objects.json``, ``scenes.json`` (every object's colour, shape, size, material, position and yaw), ``views.json``
(each image's camera and lamps, jittered per scene) and ``layouts.json`` (every object's label and box in the image,
which the layout-conditioned model trains on). The same seed and style give byte-identical files, whatever the number
of workers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from iclevr.io import read_json, staged_folder, write_json
from iclevr.labels import load_conditions, parse_train_json, scene_id
from iclevr.render.look import DEFAULT_STYLE, RenderStyle, View, sample_view
from iclevr.render.raycast import ground_axes, image_box, render, visible_pixels
from iclevr.render.scenes import SceneObject, place_objects, sample_labels, scene_rng
from iclevr.utils import image_grid
from pipeline_iclevr import LABELS, LabelVocabulary

MIN_VISIBLE_PIXELS = DEFAULT_STYLE.min_visible_pixels  # unoccluded pixels every labelled object keeps at 64x64
OBJECTS_PER_SCENE = 3


def default_spp(width: int) -> int:
    """Sub-samples per pixel per axis: small images need more to keep object edges smooth."""
    return 2 if width >= 160 else 4


@dataclass(frozen=True)
class SceneJob:
    """One layout to place and the images to render from it: ``(file name, number of objects)`` each."""

    index: int
    labels: tuple[str, ...]
    images: tuple[tuple[str, int], ...]


# --- planning (pure) ---------------------------------------------------------------------------------------------
def plan_random_scenes(num_scenes: int, seed: int, excluded: set[frozenset[str]]) -> list[SceneJob]:
    """Scenes of 1, 2, 3 objects with fresh labels, none of whose images has an excluded label set."""
    jobs = []
    for index in range(num_scenes):
        labels = sample_labels(scene_rng(seed, index), OBJECTS_PER_SCENE, excluded)
        images = tuple((f"CLEVR_train_{index:06d}_{k}.png", k + 1) for k in range(OBJECTS_PER_SCENE))
        jobs.append(SceneJob(index, tuple(labels), images))
    return jobs


def plan_from_labels(records: Sequence[tuple[str, list[str]]], excluded: set[frozenset[str]]) -> tuple[list[SceneJob], list[str]]:
    """Scenes reproducing the label lists of a train.json; returns the jobs and the files left out by ``excluded``.

    Files of one i-CLEVR scene (``..._0.png``, ``..._1.png``, ...) share a layout when each one's labels extend the
    previous one's, as in the real data; any other file gets a layout of its own.
    """
    kept = [(name, labels) for name, labels in records if frozenset(labels) not in excluded]
    dropped = [name for name, labels in records if frozenset(labels) in excluded]
    groups: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
    for name, labels in kept:
        groups[scene_id(name)].append((name, labels))
    jobs = []
    for members in groups.values():
        members.sort(key=lambda item: len(item[1]))
        longest = members[-1][1]
        if all(labels == longest[: len(labels)] for _, labels in members):
            jobs.append(SceneJob(len(jobs), tuple(longest), tuple((name, len(labels)) for name, labels in members)))
        else:
            for name, labels in members:
                jobs.append(SceneJob(len(jobs), tuple(labels), ((name, len(labels)),)))
    return jobs, dropped


def plan_conditions(conditions: Sequence[Sequence[str]]) -> list[SceneJob]:
    """One reference image per condition, named ``{i}.png`` like the course's generated images."""
    return [SceneJob(i, tuple(labels), ((f"{i}.png", len(labels)),)) for i, labels in enumerate(conditions)]


# --- rendering (one process) -------------------------------------------------------------------------------------
def layout(job: SceneJob, seed: int, min_visible: int | None = None, style: RenderStyle = DEFAULT_STYLE) -> tuple[list[SceneObject], View]:
    """The job's view (camera and lamps, jittered per scene) and its objects, placed by the style's rules; every
    object keeps ``min_visible`` (default: the style's) unoccluded pixels at 64x64 in every image."""
    min_visible = style.min_visible_pixels if min_visible is None else min_visible
    rng = scene_rng(seed, job.index)
    view = sample_view(rng, style)

    def is_visible(objects: list[SceneObject]) -> bool:
        return min(visible_pixels(objects, view=view, style=style)) >= min_visible

    return place_objects(rng, job.labels, is_visible, style=style, axes=ground_axes(view)), view


def reference_scenes(conditions: Sequence[Sequence[str]], seed: int, style: RenderStyle = DEFAULT_STYLE) -> list[tuple[list[SceneObject], View]]:
    """The renderer's own scene and view of each condition, as ``render_iclevr --conditions_json`` places them: the
    report's rendered reference rows (`iclevr.evaluator.reference_images`, `iclevr.obedience`)."""
    return [layout(job, seed + 1_000_003, style=style) for job in plan_conditions(conditions)]


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()


def render_jobs(jobs: Sequence[SceneJob], out_dir: str, seed: int, width: int, height: int, spp: int,
                min_visible: int | None = None, style: RenderStyle = DEFAULT_STYLE) -> list[dict]:
    """Render jobs into ``out_dir``; returns per-image records ``{file_name, labels, objects, view, layout}``."""
    torch.set_num_threads(1)  # parallelism comes from processes; one thread each avoids oversubscription
    records = []
    for job in jobs:
        objects, view = layout(job, seed, min_visible, style)
        for file_name, count in job.images:
            image = render(objects[:count], width, height, spp, view=view, style=style).image
            # Level 1: half the encoding time of the default level 6, for files ~40% larger (still lossless).
            Image.fromarray(to_uint8(image)).save(Path(out_dir) / file_name, format="PNG", compress_level=1)
            records.append({"file_name": file_name, "labels": list(job.labels[:count]),
                            "objects": [o.to_dict() for o in objects[:count]], "view": view.to_dict(),
                            "layout": scene_layout(objects[:count], view)})
    return records


def scene_layout(objects: Sequence[SceneObject], view: View | None = None) -> list[dict]:
    """The objects as a layout (``layouts.json``'s format, `iclevr.layouts`): each one's label and its box in the image
    seen from ``view`` (the scene's camera)."""
    return [{"label": obj.label, "box": [round(v, 4) for v in image_box(obj, view)]} for obj in objects]


def _chunks(jobs: Sequence[SceneJob], size: int) -> Iterator[Sequence[SceneJob]]:
    for start in range(0, len(jobs), size):
        yield jobs[start : start + size]


def render_all(jobs: Sequence[SceneJob], out_dir: Path, seed: int, width: int, height: int, spp: int,
               min_visible: int | None, num_workers: int, style: RenderStyle = DEFAULT_STYLE) -> list[dict]:
    """Render every job, in order, with a progress bar; work is spread over ``num_workers`` processes."""
    total = sum(len(job.images) for job in jobs)
    chunks = list(_chunks(jobs, 16))
    args = (str(out_dir), seed, width, height, spp, min_visible, style)
    records: list[dict] = []
    with tqdm(total=total, desc="Rendering", unit="img") as progress:
        if num_workers <= 1:
            for chunk in chunks:
                records.extend(render_jobs(chunk, *args))
                progress.update(len(records) - progress.n)
        else:
            with ProcessPoolExecutor(num_workers) as pool:
                futures = [pool.submit(render_jobs, chunk, *args) for chunk in chunks]
                for future in futures:
                    records.extend(future.result())
                    progress.update(len(records) - progress.n)
    return records


# --- preview and output folder -----------------------------------------------------------------------------------
def contact_sheet(folder: Path, records: Sequence[dict], count: int = 32, cell: int = 160) -> Image.Image:
    """A grid of the first ``count`` images, enlarged to ``cell`` pixels wide, with their labels written under each."""
    records = list(records)[:count]
    images = []
    for record in records:
        with Image.open(folder / record["file_name"]) as image:
            images.append(image.convert("RGB").resize((cell, cell * image.height // image.width), Image.Resampling.BILINEAR))
    return image_grid(images, columns=8, captions=["\n".join(record["labels"]) for record in records])


def render_dataset(output_dir: str | Path, jobs: Sequence[SceneJob], seed: int, width: int, height: int, spp: int,
                   min_visible: int | None = None, num_workers: int = 1, overwrite: bool = False,
                   preview: bool = False, conditions: bool = False, style: RenderStyle = DEFAULT_STYLE) -> list[dict]:
    """Render ``jobs`` into ``output_dir`` with its json files, written in one piece (`iclevr.io.staged_folder`):
    an interrupted render leaves the old folder (or none) in place. ``conditions`` also writes ``conditions.json``
    (one label list per ``{i}.png``); ``preview`` a contact sheet of the first 32 images. ``style``: the look
    (`iclevr.render.look`; i-CLEVR's by default); ``min_visible`` defaults to the style's visibility rule."""
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; pass --overwrite to replace it.")
    with staged_folder(output_dir) as folder:
        records = render_all(jobs, folder, seed, width, height, spp, min_visible, num_workers, style)
        write_json(folder / "train.json", {r["file_name"]: r["labels"] for r in records})
        write_json(folder / "objects.json", {name: i for i, name in enumerate(LABELS)})
        write_json(folder / "scenes.json", {r["file_name"]: r["objects"] for r in records})
        write_json(folder / "views.json", {r["file_name"]: r["view"] for r in records})
        write_json(folder / "layouts.json", {r["file_name"]: r["layout"] for r in records})
        if conditions:
            write_json(folder / "conditions.json", [r["labels"] for r in records])
        if preview:
            contact_sheet(folder, records).save(folder / "preview.png")
    return records


def read_excluded(path: str | None, vocab: LabelVocabulary) -> set[frozenset[str]]:
    """Label combinations to keep out, from a test.json-style list of label lists."""
    if path is None:
        return set()
    data = read_json(path, "--exclude_json")
    if not isinstance(data, list):
        raise ValueError(f"--exclude_json {path} must be a JSON list of label lists.")
    try:
        return {frozenset(vocab.names(labels)) for labels in data}
    except ValueError as error:
        raise ValueError(f"--exclude_json {path}: {error}") from None


def plan_jobs(num_scenes: int, seed: int, labels_json: str | None = None, conditions_json: str | None = None,
              exclude_json: str | None = None) -> tuple[list[SceneJob], list[str]]:
    """The scenes to render: one per condition of ``conditions_json``, or the label lists of ``labels_json``, or
    ``num_scenes`` random ones; none with a label set of ``exclude_json``. Returns the jobs and the files left out."""
    vocab = LabelVocabulary()
    excluded = read_excluded(exclude_json, vocab)
    if conditions_json is not None:
        conditions = load_conditions(conditions_json, vocab)
        return plan_conditions([c for c in conditions if frozenset(c) not in excluded]), []
    if labels_json is not None:
        records = parse_train_json(read_json(labels_json, "--labels_json"), vocab, source=labels_json)
        return plan_from_labels(records, excluded)
    return plan_random_scenes(num_scenes, seed, excluded), []
