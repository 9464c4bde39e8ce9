# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Layouts in the training data: a folder's ``layouts.json``, and the layout prior a layout model's pipeline keeps.

``layouts.json`` maps each image's file name to its objects: ``{"CLEVR_train_000001_1.png": [{"label": "red sphere",
"box": [x0, y0, x1, y1]}, ...]}``, boxes as fractions of the image (x to the right, y down), one object per label of
the image. The embedded renderer writes it from its own object positions (`iclevr.render.raycast.image_box`); any
local folder (i-CLEVR layout or imagefolder) may carry one. Painting a layout into the map the UNet reads is the
pipeline's (`pipeline_iclevr.layout_map`), so that training and sampling paint alike.
"""

from __future__ import annotations

from pathlib import Path

import torch

from iclevr.io import read_json
from iclevr.labels import BadDataError, summarise_problems
from pipeline_iclevr import LabelVocabulary, layout_tensors, read_layout

LAYOUTS_FILE = "layouts.json"


def read_layouts_file(folder: str | Path | None, file_names: list[str], labels: torch.Tensor,
                      vocab: LabelVocabulary) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The layouts of a dataset's images from ``folder/layouts.json``, as ``boxes (N, K, 4)`` and ``box_labels (N, K)``
    (-1 padded), in the order of ``file_names``; None when the folder has no such file.

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
        try:
            layouts.append(read_layout(vocab, data[name], row, name))
        except ValueError as error:
            problems.append(str(error))
    if problems:
        raise BadDataError(f"{path}: " + summarise_problems(problems, f"images of {len(file_names)} without a valid layout")
                           + f"\nEvery image needs one object per label with its box; mend {LAYOUTS_FILE}, or remove it to "
                           "train the label-only model.")
    return layout_tensors(layouts)


def layout_prior(boxes: torch.Tensor, box_labels: torch.Tensor, size: int, seed: int) -> dict[str, list]:
    """The prior a layout model's pipeline keeps (`ICLEVRPipeline`'s ``layout_prior``): for each object count, up to
    ``size`` training layouts drawn uniformly without replacement (seeded), as boxes rounded to 1e-4. Nothing is
    filtered, so the prior keeps the data's distribution of places and sizes; labels are assigned at sampling time."""
    generator = torch.Generator().manual_seed(seed)
    counts = (box_labels >= 0).sum(1)
    prior = {}
    for count in sorted(set(counts.tolist())):
        rows = (counts == count).nonzero().flatten()
        chosen = rows[torch.randperm(len(rows), generator=generator)[:size]].sort().values
        prior[str(count)] = [[[round(float(v), 4) for v in boxes[row, k]] for k in range(count)] for row in chosen.tolist()]
    return prior
