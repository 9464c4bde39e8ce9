# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Renderer throughput, PNG writing included, at i-CLEVR's 320x240 and at the 64x64 training size.

    python bench/bench_render.py --num_scenes 200

Prints images/s per size and the projected time for the 18,009-image stand-in (6,003 scenes x 3 images), measured
side by side in one run with the same scenes and worker count.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from iclevr.argtypes import positive_int
from iclevr.render.dataset import plan_random_scenes, render_all

REAL_ICLEVR_IMAGES = 18_009


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_scenes", type=positive_int, default=200, help="Scenes per size (3 images each).")
    parser.add_argument("--num_workers", type=positive_int, default=os.cpu_count() or 1, help="Rendering processes.")
    parser.add_argument("--sizes", type=str, default="320x240:2,64x64:4", help="Comma-separated WIDTHxHEIGHT:SPP.")
    args = parser.parse_args()
    jobs = plan_random_scenes(args.num_scenes, seed=0, excluded=set())
    print(f"{'size':>9} {'spp':>4} {'images':>7} {'seconds':>8} {'img/s':>7} {'18,009 images':>14}")
    for spec in args.sizes.split(","):
        size, spp = spec.split(":")
        width, height = map(int, size.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            records = render_all(jobs, Path(tmp), 0, width, height, int(spp), 15, args.num_workers)
            seconds = time.perf_counter() - start
        rate = len(records) / seconds
        print(f"{size:>9} {spp:>4} {len(records):>7} {seconds:>8.1f} {rate:>7.1f} {REAL_ICLEVR_IMAGES / rate / 60:>11.1f} min")


if __name__ == "__main__":
    main()
