# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Evaluator training throughput: what bounds the CPU minutes of `train_evaluator.py`.

    python bench/bench_evaluator.py --train_batch_size 128 --steps 15 --compile

One training step as `train_evaluator.py` takes it (its `augment` on uint8 64x64 images, ResNet-18 forward and
backward, BCE, AdamW), measured side by side in one run after warm-up steps, for each CPU lever: fp32, bf16 autocast
(the recipe), + channels_last (the recipe), + torch.compile (compile time reported apart). The last column turns
each rate into the minutes that a given number of training images takes (default: 9 epochs of 80,768 images, a
long evaluator recipe of docs/experiments.md), so the time a recipe needs can be read against a budget.
"""

import argparse
import itertools
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from iclevr.argtypes import non_negative_int, positive_int
from iclevr.augment import LOWRES_PROB, LOWRES_SIZES, augment
from iclevr.evaluator import build_evaluator
from iclevr.utils import hardware_line, measure_throughput


def make_step(bf16: bool, channels_last: bool, compile_model: bool):
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = build_evaluator().to(memory_format=memory_format).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    forward = torch.compile(model) if compile_model else model
    generator = torch.Generator().manual_seed(0)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        pixels = augment(images, generator, LOWRES_PROB, LOWRES_SIZES).contiguous(memory_format=memory_format)
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            logits = forward(pixel_values=pixels).logits
        F.binary_cross_entropy_with_logits(logits.float(), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_batch_size", type=positive_int, default=128, help="Batch size (train_evaluator.py's default).")
    parser.add_argument("--steps", type=positive_int, default=15, help="Timed steps per row.")
    parser.add_argument("--warmup", type=non_negative_int, default=3, help="Untimed steps per row.")
    parser.add_argument("--compile", action="store_true", help="Add a torch.compile row (compiling takes about a minute on CPU).")
    parser.add_argument("--train_images", type=positive_int, default=9 * 80768, help="Training images to convert rates into minutes.")
    args = parser.parse_args()
    print(f"{hardware_line()}; batch {args.train_batch_size}")
    generator = torch.Generator().manual_seed(0)
    # Random pixels cost the same as rendered scenes here: every op in the step is dense.
    images = torch.randint(0, 256, (args.train_batch_size, 64, 64, 3), dtype=torch.uint8, generator=generator)
    labels = (torch.rand(args.train_batch_size, 24, generator=generator) < 0.1).float()
    rows = [
        ("fp32", dict(bf16=False, channels_last=False, compile_model=False)),
        ("fp32 + channels_last", dict(bf16=False, channels_last=True, compile_model=False)),
        ("bf16 autocast", dict(bf16=True, channels_last=False, compile_model=False)),
        ("+ channels_last (the recipe)", dict(bf16=True, channels_last=True, compile_model=False)),
    ]
    if args.compile:
        rows.append(("+ torch.compile", dict(bf16=True, channels_last=True, compile_model=True)))
    first = None
    print(f"{'configuration':<30} {'images/s':>9} {'vs fp32':>8} {'minutes for ' + format(args.train_images, ','):>22}")
    for name, options in rows:
        start = time.perf_counter()
        step = make_step(**options)
        rate = measure_throughput(step, itertools.repeat((images, labels)), args.warmup, args.steps)
        first = first or rate
        extra = f"  (incl. warm-up/compile {time.perf_counter() - start:.0f} s)" if options["compile_model"] else ""
        print(f"{name:<30} {rate:>9.1f} {rate / first:>7.2f}x {args.train_images / rate / 60:>22.1f}{extra}", flush=True)


if __name__ == "__main__":
    main()
