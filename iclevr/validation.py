# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Validation of a generator during training: sample the validation conditions, save the grid, score it with the
evaluator, log it."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from iclevr.labels import load_conditions
from iclevr.metrics import mean_std, total_misses
from iclevr.utils import image_grid


@torch.no_grad()
def validate_pipeline(pipeline, args: argparse.Namespace, accelerator: Accelerator, step: int, evaluator=None,
                      training_minutes: float | None = None, **sampling) -> dict:
    """Sample ``--validation_conditions_json`` with ``pipeline`` into a grid and, with an evaluator, score them.

    With ``--validation_num_seeds`` above 1 every seed samples all conditions; the accuracy logged is the mean over
    seeds (``accuracy_std`` their spread), and the grid shows the first seed. Writes ``validation/step-N.png``,
    and a line of ``validation/metrics.jsonl`` (with ``training_minutes`` so far, for learning curves by wall-clock
    time), and logs to the trackers.
    """
    conditions = load_conditions(args.validation_conditions_json, pipeline.vocab)
    pipeline.set_progress_bar_config(disable=True)
    per_seed, start = [], time.time()
    for seed in range(args.seed, args.seed + args.validation_num_seeds):
        with accelerator.autocast():
            per_seed.append(pipeline(conditions, output_type="np", generator=torch.Generator(device="cpu").manual_seed(seed),
                                     **sampling).images)
    seconds = time.time() - start
    images = per_seed[0]
    grid = image_grid(images, columns=8)
    folder = Path(args.output_dir) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    grid.save(folder / f"step-{step:07d}.png")  # the final step's becomes the saved pipeline's samples.png
    record = {"step": step, **({} if training_minutes is None else {"training_minutes": round(training_minutes, 2)}),
              "conditions_json": str(args.validation_conditions_json),
              "seconds_per_image": seconds / (len(conditions) * len(per_seed))}
    if evaluator is not None:
        reports = [evaluator.score(torch.from_numpy(batch).permute(0, 3, 1, 2), conditions) for batch in per_seed]
        accuracy = mean_std([r["accuracy"] for r in reports])
        record |= {"accuracy": accuracy["mean"], "exact_set_accuracy": mean_std([r["exact_set_accuracy"] for r in reports])["mean"]}
        record |= {f"misses_{kind}": count for kind, count in total_misses(reports).items()}  # what fails to bind
        if len(reports) > 1:
            record |= {"accuracy_std": accuracy["std"], "accuracy_per_seed": accuracy["values"]}
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("validation", images, step, dataformats="NHWC")
    accelerator.log({f"validation/{k}": v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}, step=step)
    with open(folder / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")
    return record
