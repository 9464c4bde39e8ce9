# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Does the object finder find the objects of pictures it never learnt from? The panel crop test.

The panel's pictures (`iclevr.panel`: models trained on the real i-CLEVR images) have labels but no boxes. For each
labelled object the finder gives a box; the picture is kept inside the box only, the rest replaced by the renderer's
empty floor (as the report's layout measure does, `iclevr.obedience`), and the evaluator reads it. Where the box
holds the object, the evaluator reads its label as the most likely one. The same figure for a box of the same size at
a random place says what chance gives.

    python -m iclevr.finder_check --panel_dir ../shared/panel

The finder never sees the evaluator: this only checks it, on a development set (nothing is tuned by it).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from iclevr.evaluator import EVALUATOR_RESOLUTION, Evaluator, read_image_folder, shipped_evaluator, to_evaluator_input
from iclevr.obedience import box_crops, floor_image
from iclevr.object_finder import ObjectFinder, find_objects, load_object_finder, shipped_object_finder
from iclevr.panel import check_panel_dir, read_manifest, set_conditions


def random_boxes(boxes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Boxes of the same sizes as ``boxes`` ``(..., 4)``, each at a uniformly random place inside the image."""
    size = boxes[..., 2:] - boxes[..., :2]
    corner = torch.rand(*boxes.shape[:-1], 2, generator=generator) * (1 - size)
    return torch.cat([corner, corner + size], -1)


def crop_test(finder: ObjectFinder, evaluator: Evaluator, images, conditions: list[list[str]], seed: int = 0) -> dict:
    """The crop test on one set of pictures (PIL images or what `to_evaluator_input` takes) and their conditions:
    how many objects, the share the finder found at its threshold, and the share of crops read as their label (the
    report's layout measure, `iclevr.obedience.box_crops`), for the finder's boxes and for random boxes of the same
    sizes."""
    vocab = evaluator.vocab
    pixels = (to_evaluator_input(images, EVALUATOR_RESOLUTION) + 1) / 2  # (N, 3, 64, 64) in [0, 1]
    found = find_objects(finder, pixels, vocab.encode_batch(conditions))
    pictures, floor = pixels.permute(0, 2, 3, 1).numpy(), floor_image(EVALUATOR_RESOLUTION)

    def read_as_label(boxes: torch.Tensor) -> float:
        layouts = [[{"label": vocab.labels[index], "box": box.tolist()} for index, box in zip(indices, row) if index >= 0]
                   for indices, row in zip(found.box_labels, boxes)]
        crops, labels = box_crops(pictures, layouts, floor)
        probabilities = evaluator.predict(torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous())
        return float((probabilities.argmax(1) == torch.tensor([vocab.label2id[label] for (label,) in labels])).float().mean())

    real = found.box_labels >= 0
    return {"images": len(conditions), "objects": int(real.sum()), "found": float(found.found[real].float().mean()),
            "finder_boxes": read_as_label(found.boxes),
            "random_boxes": read_as_label(random_boxes(found.boxes, torch.Generator().manual_seed(seed)))}


def panel_crop_test(finder: ObjectFinder, evaluator: Evaluator, panel_dir: str | os.PathLike, seed: int = 0) -> dict:
    """`crop_test` on every set of the panel, and the figures over all its objects."""
    panel_dir = Path(panel_dir)
    rows = []
    for entry in read_manifest(panel_dir):
        for name in sorted(entry["reported"]):
            conditions = set_conditions(panel_dir, name)
            images = read_image_folder(panel_dir / entry["folder"] / name, len(conditions))
            rows.append({"folder": entry["folder"], "set": name, **crop_test(finder, evaluator, images, conditions, seed)})
    objects = sum(row["objects"] for row in rows)
    total = {key: sum(row[key] * row["objects"] for row in rows) / objects for key in ("found", "finder_boxes", "random_boxes")}
    return {"panel_dir": str(panel_dir), "rows": rows, "objects": objects, **total}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The object finder's crop test on a panel of other models' i-CLEVR pictures.")
    parser.add_argument("--panel_dir", type=str, required=True, help="A panel folder (manifest.json + sets of pictures; iclevr/panel.py).")
    parser.add_argument("--object_finder", type=str, default=None, help="The finder's folder (default: the shipped pretrained/object-finder).")
    parser.add_argument("--evaluator", type=str, default=None, help="The evaluator that reads the crops (default: the shipped pretrained/evaluator).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random boxes.")
    parser.add_argument("--output_json", type=str, default=None, help="Also write the figures here.")
    args = parser.parse_args(argv)
    args.object_finder = args.object_finder or shipped_object_finder()
    args.evaluator = args.evaluator or shipped_evaluator()
    if args.object_finder is None or args.evaluator is None:
        parser.error("Give --object_finder and --evaluator (this installation ships neither; a clone has pretrained/).")
    check_panel_dir(parser, args.panel_dir)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = panel_crop_test(load_object_finder(args.object_finder), Evaluator.from_pretrained(args.evaluator),
                             args.panel_dir, args.seed)
    print("| panel set | objects | found | crops read as their label: finder's boxes | random boxes |\n| --- | --- | --- | --- | --- |")
    for row in result["rows"]:
        print(f"| {row['folder']} {row['set']} | {row['objects']} | {row['found']:.3f} | {row['finder_boxes']:.3f} | {row['random_boxes']:.3f} |")
    print(f"| **all** | {result['objects']} | {result['found']:.3f} | {result['finder_boxes']:.3f} | {result['random_boxes']:.3f} |")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    from iclevr.cli import run

    run(main)
