# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Score a folder of generated i-CLEVR images with the evaluator (the course metric).

Images are named ``0.png ... N-1.png``, one per condition of the conditions file (the course's convention)::

    python evaluate_images.py --evaluator outputs/evaluator --images_dir outputs/images/test \\
        --conditions_json iclevr/conditions/test.json --output_json outputs/test_metrics.json

``--panel_dir`` reads a panel of other models' i-CLEVR pictures (`iclevr.panel`) and prints each set's figure beside
the course evaluator's, in the author's metric::

    python evaluate_images.py --evaluator pretrained/evaluator --panel_dir ../shared/panel
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from iclevr.argtypes import check_output_folder, non_negative_int
from iclevr.cli import run
from iclevr.evaluator import Evaluator, read_image_folder, sanity_report
from iclevr.labels import COURSE_TEST, load_conditions
from iclevr.panel import check_panel_dir, panel_table, read_panel


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Score generated i-CLEVR images with the evaluator (the course metric).")
    parser.add_argument("--evaluator", type=str, required=True, help="Evaluator folder (from train_evaluator.py) or the course's checkpoint.pth.")
    parser.add_argument("--conditions_json", type=str, default=str(COURSE_TEST), help="test.json-style list of label lists, one per image (default: the course's test.json).")
    parser.add_argument("--images_dir", type=str, default=None, help="Folder of 0.png ... N-1.png to score against the conditions.")
    parser.add_argument("--sanity", action="store_true", help="Also score rendered references, empty floors and pure noise for the conditions.")
    parser.add_argument("--panel_dir", type=str, default=None,
                        help="A panel folder (manifest.json + one folder of images per model and set): each set read by this "
                             "evaluator beside the course evaluator's figure, so the gap between the two shows.")
    parser.add_argument("--output_json", type=str, default=None, help="Write the figures here as JSON.")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="Seed for the sanity references.")
    parser.add_argument("--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu", help="Device to run the evaluator on (default: the GPU if there is one).")
    args = parser.parse_args(argv)
    if args.output_json:
        check_output_folder(parser, Path(args.output_json).parent, "--output_json's folder")
    if args.images_dir is None and not args.sanity and args.panel_dir is None:
        parser.error("Give --images_dir to score, --sanity for the reference rows, --panel_dir for a panel, or several.")
    check_panel_dir(parser, args.panel_dir)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    conditions = load_conditions(args.conditions_json)
    evaluator = Evaluator.from_pretrained(args.evaluator, device=args.device)
    result: dict = {"conditions_json": args.conditions_json}
    if args.images_dir is not None:
        result["images"] = evaluator.score(read_image_folder(args.images_dir, len(conditions)), conditions)
        result["images"]["images_dir"] = args.images_dir
    if args.sanity:
        result["sanity"] = sanity_report(evaluator, conditions, args.seed)
    summary = {k: v for k, v in result.get("images", {}).items() if k in ("images", "accuracy", "exact_set_accuracy")}
    if args.images_dir is not None or args.sanity:
        print(json.dumps({"conditions_json": args.conditions_json, "images": summary, "sanity": result.get("sanity")}, indent=2))
    if args.panel_dir is not None:
        result["panel"] = read_panel(evaluator, args.panel_dir)
        print(panel_table(result["panel"]))
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    run(main)  # the project's own errors as one line (iclevr.cli)
