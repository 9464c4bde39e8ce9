# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Renderer throughput, PNG writing included, at i-CLEVR's 320x240 and at the 64x64 training size, for the i-CLEVR
look and the legacy one.

    python bench/bench_render.py --num_scenes 200

Prints images/s per size and look, the projected time for the 18,009-image stand-in (6,003 scenes x 3 images), and
each look's speed as a share of the legacy look's, measured side by side in one run with the same scenes and worker
count (the i-CLEVR look should keep at least half the legacy look's speed).
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from iclevr.argtypes import positive_int
from iclevr.render.dataset import plan_random_scenes, render_all
from iclevr.render.look import style_from_name
from iclevr.utils import hardware_line

REAL_ICLEVR_IMAGES = 18_009


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_scenes", type=positive_int, default=200, help="Scenes per size (3 images each).")
    parser.add_argument("--num_workers", type=positive_int, default=os.cpu_count() or 1, help="Rendering processes.")
    parser.add_argument("--sizes", type=str, default="320x240:2,64x64:4", help="Comma-separated WIDTHxHEIGHT:SPP.")
    parser.add_argument("--styles", type=str, default="legacy,iclevr", help="Looks to time (legacy first: the others are shown as a share of it).")
    args = parser.parse_args()
    print(hardware_line())
    jobs = plan_random_scenes(args.num_scenes, seed=0, excluded=set())
    print(f"{'size':>9} {'spp':>4} {'look':>7} {'images':>7} {'seconds':>8} {'img/s':>7} {'18,009 images':>14} {'vs legacy':>9}")
    for spec in args.sizes.split(","):
        size, spp = spec.split(":")
        width, height = map(int, size.split("x"))
        rates = {}
        for name in args.styles.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                records = render_all(jobs, Path(tmp), 0, width, height, int(spp), None, args.num_workers, style_from_name(name))
                seconds = time.perf_counter() - start
            rates[name] = len(records) / seconds
            share = f"{rates[name] / rates['legacy']:.2f}x" if "legacy" in rates else "-"
            print(f"{size:>9} {spp:>4} {name:>7} {len(records):>7} {seconds:>8.1f} {rates[name]:>7.1f} "
                  f"{REAL_ICLEVR_IMAGES / rates[name] / 60:>11.1f} min {share:>9}")


if __name__ == "__main__":
    main()
