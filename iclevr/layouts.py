# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Layouts in the training data: a folder's ``layouts.json``, layouts inferred for data without one, and the layout
prior a layout model's pipeline keeps.

``layouts.json`` maps each image's file name to its objects: ``{"CLEVR_train_000001_1.png": [{"label": "red sphere",
"box": [x0, y0, x1, y1]}, ...]}``, boxes as fractions of the image (x to the right, y down), one object per label of
the image. The embedded renderer writes it from its own object positions (`iclevr.render.raycast.image_box`); any
local folder (i-CLEVR layout or imagefolder) may carry one. An image whose layout is unknown maps to ``null``: it
trains without a map (as the map dropout already teaches) and stays out of the layout prior. For data with labels
only, ``--layout_conditioning infer`` writes such a file into the cache from the object finder's boxes
(`infer_layouts`). Painting a layout into the map the UNet reads is the pipeline's (`pipeline_iclevr.layout_map`), so
that training and sampling paint alike.
"""

from __future__ import annotations

from pathlib import Path

import torch

from iclevr.io import move_into, partial_folder, read_json, write_json
from iclevr.labels import BadDataError, summarise_problems
from pipeline_iclevr import LabelVocabulary, layout_tensors, read_layout

LAYOUTS_FILE = "layouts.json"


def read_layouts_file(folder: str | Path | None, file_names: list[str], labels: torch.Tensor,
                      vocab: LabelVocabulary) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The layouts of a dataset's images from ``folder/layouts.json``, as ``boxes (N, K, 4)`` and ``box_labels (N, K)``
    (-1 padded; all -1 for an image whose layout is ``null``), in the order of ``file_names``; None when the folder
    has no such file.

    Every image needs a layout whose labels are its own (``labels``, multi-hot ``(N, L)``); otherwise the error names
    the files (the first few) and the fix.
    """
    if folder is None or not (Path(folder) / LAYOUTS_FILE).is_file():
        return None
    path = Path(folder) / LAYOUTS_FILE
    data = read_json(path, "Layouts file")
    if not isinstance(data, dict):
        raise BadDataError(f"{path} must map file names to layouts ({{\"a.png\": [{{\"label\": ..., \"box\": [x0, y0, x1, y1]}}]}}), "
                           f"got a JSON {type(data).__name__}.")
    layouts, problems = [], []
    for name, row in zip(file_names, labels):
        if name not in data:
            problems.append(f"{name}: no layout")
            continue
        if data[name] is None:  # unknown: the image trains without a map
            layouts.append([])
            continue
        try:
            layouts.append(read_layout(vocab, data[name], row, name))
        except ValueError as error:
            problems.append(str(error))
    if problems:
        raise BadDataError(f"{path}: " + summarise_problems(problems, f"images of {len(file_names)} without a valid layout")
                           + f"\nEvery image needs one object per label with its box (or null where it is unknown); mend "
                           f"{LAYOUTS_FILE}, or remove it to train the label-only model.")
    return layout_tensors(layouts)


def layout_prior(boxes: torch.Tensor, box_labels: torch.Tensor, size: int, seed: int) -> dict[str, list]:
    """The prior a layout model's pipeline keeps (`ICLEVRPipeline`'s ``layout_prior``): for each object count, up to
    ``size`` training layouts drawn uniformly without replacement (seeded), as boxes rounded to 1e-4. Only images
    without a layout are left out; nothing else is filtered, so the prior keeps the data's distribution of places and
    sizes; labels are assigned at sampling time."""
    generator = torch.Generator().manual_seed(seed)
    counts = (box_labels >= 0).sum(1)
    prior = {}
    for count in sorted(set(counts.tolist()) - {0}):  # an image without a layout has none to give
        rows = (counts == count).nonzero().flatten()
        chosen = rows[torch.randperm(len(rows), generator=generator)[:size]].sort().values
        prior[str(count)] = [[[round(float(v), 4) for v in boxes[row, k]] for k in range(count)] for row in chosen.tolist()]
    return prior


def infer_layouts(finder_dir: str | Path, images: torch.Tensor, labels: torch.Tensor, file_names: list[str],
                  vocab: LabelVocabulary, cache: Path, device: torch.device | str = "cpu") -> tuple[Path, dict]:
    """Layouts for images that have labels only, from the object finder in ``finder_dir``: ``cache/<key>/layouts.json``
    (``null`` for an image where the finder is unsure of any of its objects, so that image trains without a map) and
    ``inference.json`` (how many layouts are whole). The key hashes the finder's weights and the images, so another
    finder or other data never reuses a file, and the same pair infers once. Nothing is written beside the data.

    Returns the folder holding ``layouts.json`` and the summary."""
    import hashlib

    from iclevr.object_finder import find_objects, load_object_finder

    finder_dir = Path(finder_dir)
    finder = load_object_finder(finder_dir, device)  # checks the folder
    if tuple(finder.vocab.labels) != tuple(vocab.labels):
        raise ValueError(f"The object finder in {finder_dir} knows the labels {list(finder.vocab.labels)[:6]}... in its own "
                         f"order, the data {list(vocab.labels)[:6]}...; train a finder on renders of the data's vocabulary "
                         "(render_iclevr.py, then train_object_finder.py) and pass it with --object_finder.")
    digest = hashlib.sha256((finder_dir / "diffusion_pytorch_model.safetensors").read_bytes())
    digest.update((finder_dir / "config.json").read_bytes())  # its threshold
    digest.update(images.numpy().tobytes())
    digest.update(labels.numpy().tobytes())
    digest.update("\n".join(file_names).encode())
    folder = cache / f"inferred-layouts-{digest.hexdigest()[:24]}"
    if (folder / LAYOUTS_FILE).is_file():
        return folder, read_json(folder / "inference.json", "Inferred layouts' summary")
    found = find_objects(finder, images, labels)
    layouts = {}
    for name, boxes, box_labels, whole in zip(file_names, found.boxes, found.box_labels, found.complete):
        layouts[name] = [{"label": vocab.labels[int(index)], "box": [round(float(v), 4) for v in box]}
                         for box, index in zip(boxes, box_labels) if index >= 0] if whole else None
    objects = found.box_labels >= 0
    summary = {"object_finder": str(finder_dir), "confidence_threshold": finder.config.confidence_threshold,
               "images": len(file_names), "whole_layouts": int(found.complete.sum()),
               "objects": int(objects.sum()), "objects_found": int((found.found & objects).sum())}
    partial = partial_folder(folder)
    write_json(partial / "inference.json", summary)
    write_json(partial / LAYOUTS_FILE, layouts)
    move_into(partial, folder, last=LAYOUTS_FILE)  # a whole file or none: an interrupted run infers again
    return folder, summary
