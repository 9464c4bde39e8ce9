# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Render a procedural i-CLEVR dataset in the course's layout: the project's embedded default data.

    python render_iclevr.py --output_dir data/iclevr --num_scenes 6003              # 18,009 images at 320x240
    python render_iclevr.py --output_dir data/iclevr-64 --width 64 --height 64      # already at training size
    python render_iclevr.py --output_dir data/stand-in --labels_json iclevr/conditions/train.json
    python render_iclevr.py --output_dir data/test-ref --conditions_json iclevr/conditions/test.json

Draws i-CLEVR's look (CLEVR's generator, with i-CLEVR's proportions: docs/renderer.md); ``--render_style legacy`` draws
the project's first look. Writes
``CLEVR_train_{scene:06d}_{k}.png`` (k + 1 objects), ``train.json``, ``objects.json``, ``scenes.json``, ``views.json``
(each scene's camera and lamps) and ``layouts.json``. The same seed gives byte-identical files, whatever the number of
workers; the folder appears only once complete.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from iclevr.argtypes import check_output_folder, non_negative_int, positive_int
from iclevr.cli import run
from iclevr.io import writer_lock
from iclevr.render.dataset import default_spp, plan_jobs, render_dataset
from iclevr.render.look import COMPONENTS, style_from_name

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Render a procedural i-CLEVR dataset in the course's layout.")
    parser.add_argument("--output_dir", type=str, required=True, help="Folder to create (must be empty or absent).")
    parser.add_argument("--num_scenes", type=positive_int, default=6003, help="Scenes to render; each gives 3 images (1, 2, 3 objects). 6003 matches real i-CLEVR.")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="Random seed; the same seed gives byte-identical files.")
    parser.add_argument("--width", type=positive_int, default=320, help="Image width (i-CLEVR: 320).")
    parser.add_argument("--height", type=positive_int, default=240, help="Image height (i-CLEVR: 240).")
    parser.add_argument("--spp", type=positive_int, default=None, help="Anti-aliasing sub-samples per pixel per axis; default 2 at widths >= 160, else 4 (small images need more to keep edges smooth).")
    parser.add_argument("--labels_json", type=str, default=None, help="Render exactly the label lists of this train.json (e.g. iclevr/conditions/train.json, real i-CLEVR's).")
    parser.add_argument("--exclude_json", type=str, default=None, help="A list of label lists to keep out of the rendered images (held-out compositions).")
    parser.add_argument("--conditions_json", type=str, default=None, help="Render one reference image per condition of this test.json-style list, as {i}.png.")
    parser.add_argument("--min_visible_pixels", type=non_negative_int, default=None,
                        help="Unoccluded pixels each object keeps at 64x64, so every label is visible (default: the style's: "
                             "15 for legacy; i-CLEVR's 11 is CLEVR's 200 at 320x240).")
    parser.add_argument("--render_style", type=str, default="iclevr", choices=["iclevr", "legacy"],
                        help="The look: iclevr (default) follows CLEVR's generator, which drew i-CLEVR, with i-CLEVR's "
                             "proportions; its evaluator reads real-data models' pictures closest to the course's "
                             "(docs/renderer.md). legacy is the project's first renderer: half metal, half small, another camera.")
    parser.add_argument("--legacy_components", type=str, default="",
                        help=f"Comma-separated parts of the look to revert to legacy ({', '.join(COMPONENTS)}): "
                             "the per-change measurements of docs/renderer.md.")
    parser.add_argument("--num_workers", type=positive_int, default=os.cpu_count() or 1, help="Rendering processes (default: one per core).")
    parser.add_argument("--preview", action="store_true", help="Also write preview.png: the first 32 images with their labels.")
    parser.add_argument("--overwrite", action="store_true", help="Replace a non-empty --output_dir (only once the new dataset is complete).")
    args = parser.parse_args(argv)
    check_output_folder(parser, args.output_dir, "--output_dir")
    if sum(x is not None for x in (args.labels_json, args.conditions_json)) > 1:
        parser.error("--labels_json and --conditions_json are exclusive.")
    if args.width < 8 or args.height < 8:
        parser.error("--width and --height must be at least 8.")
    if args.spp is None:
        args.spp = default_spp(args.width)
    try:
        args.style = style_from_name(args.render_style, [c for c in args.legacy_components.split(",") if c])
    except ValueError as error:
        parser.error(f"--legacy_components: {error}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    jobs, dropped = plan_jobs(args.num_scenes, args.seed, args.labels_json, args.conditions_json, args.exclude_json)
    if dropped:
        logger.info("Left out %d images whose label set is in --exclude_json.", len(dropped))
    with writer_lock(args.output_dir):
        records = render_dataset(args.output_dir, jobs, args.seed, args.width, args.height, args.spp, args.min_visible_pixels,
                                 args.num_workers, args.overwrite, args.preview, conditions=args.conditions_json is not None,
                                 style=args.style)
    print(f"Wrote {len(records)} images ({args.width}x{args.height}) to {args.output_dir}", file=sys.stderr)


if __name__ == "__main__":
    run(main)  # the project's own errors as one line (iclevr.cli)
