# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Train the object finder (each labelled object's box in an image; `iclevr.object_finder`) with 🤗 Accelerate on
renders, whose ``layouts.json`` gives every object's exact box.

    python render_iclevr.py --output_dir data/finder --num_scenes 30000 --seed 1
    accelerate launch train_object_finder.py --train_data_dir data/finder --output_dir outputs/object-finder \\
        --mixed_precision bf16

Held-out split by scene. The evaluator's augmentations (mirror, low-resolution round trip, brightness, noise, and by
default the tone / saturation / blur / scale jitter that helps it read other renderers' pictures), with the boxes
moved along. Writes ``diffusion_pytorch_model.safetensors`` + ``config.json`` and ``finder_metrics.json``: on the
held-out renders, the share of objects whose box has IoU ≥ 0.7 with the true one, the share found, the share of
images whose layout is whole, by object count.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from iclevr.argtypes import (
    check_output_folder,
    fraction,
    positive_int,
    probability,
)
from iclevr.augment import augment
from iclevr.cli import run
from iclevr.data import add_data_args, dataset_to_tensors, load_dataset_from_args, split_by_scene
from iclevr.flags import add_classifier_training_args, int_list
from iclevr.io import is_main_rank, move_into, partial_folder, writer_lock
from iclevr.labels import dataset_vocabulary
from iclevr.layouts import LAYOUTS_FILE, read_layouts_file
from iclevr.object_finder import FINDER_RESOLUTION, ObjectFinder, finder_loss, finder_targets, heldout_box_figures
from iclevr.run_setup import build_lr_scheduler, setup_accelerator
from iclevr.utils import bare_model

logger = get_logger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train the object finder (each labelled object's box) on renders with layouts.")
    data = parser.add_argument_group("data")
    add_data_args(data, f"Rendered folder with {LAYOUTS_FILE} (render_iclevr.py writes one): the boxes the finder learns.")
    data.add_argument("--heldout_fraction", type=fraction, default=0.1, help="Share of scenes held out for the box figures.")
    model = parser.add_argument_group("model")
    model.add_argument("--hidden_sizes", type=int_list, default=[48, 96, 192],
                       help="Channels of the backbone's three stages (48-96-192: 0.8M parameters, 1.7 MB in half precision).")
    model.add_argument("--confidence_threshold", type=probability, default=0.3,
                       help="A heat-map peak below this marks an object as not found (its image then trains without a map).")
    train = parser.add_argument_group("training")
    train.add_argument("--output_dir", type=str, default="outputs/object-finder", help="Where the finder is saved.")
    train.add_argument("--num_epochs", type=positive_int, default=6, help="Passes over the training split (6: about 17 minutes on 2 native-bf16 cores for 81,000 images).")
    train.add_argument("--appearance_augment", action=argparse.BooleanOptionalAction, default=True,
                       help="Jitter tone curve, saturation, blur and scale (boxes scaled along; never hue), as the shipped "
                            "evaluator's recipe does: the finder must read other renderers' pictures, not only ours.")
    train.add_argument("--save_dtype", type=str, default="float32", choices=["float32", "float16"],
                       help="Precision of the saved weights (float16 halves the file; the final figures are the saved weights').")
    add_classifier_training_args(train, weight_decay=1e-4, project_name="train_object_finder")
    args = parser.parse_args(argv)
    check_output_folder(parser, args.output_dir, "--output_dir")
    check_output_folder(parser, args.cache_dir, "--cache_dir")
    if args.train_data_dir is None:
        parser.error(f"--train_data_dir is required: a rendered folder with {LAYOUTS_FILE} (python render_iclevr.py --output_dir DIR).")
    if len(args.hidden_sizes) != 3 or min(args.hidden_sizes) < 8:
        parser.error("--hidden_sizes takes three channel counts of at least 8, e.g. 48,96,192.")
    if any(not 8 <= size <= FINDER_RESOLUTION for size in args.lowres_sizes):
        parser.error(f"--lowres_sizes must lie in 8..{FINDER_RESOLUTION}.")
    return args


def build_data(args: argparse.Namespace, accelerator: Accelerator):
    """Images, labels, boxes and box labels of the folder, its train / held-out rows by scene, and its vocabulary."""
    with accelerator.main_process_first():  # decode and cache once; other processes read the cache
        dataset = load_dataset_from_args(args, FINDER_RESOLUTION)
    images, labels = dataset_to_tensors(dataset)
    vocab = dataset_vocabulary(dataset)
    layouts = read_layouts_file(args.train_data_dir, list(dataset["file_name"]), labels, vocab)
    if layouts is None:
        raise FileNotFoundError(f"{Path(args.train_data_dir) / LAYOUTS_FILE} does not exist: the finder learns from the "
                                "boxes renders carry (python render_iclevr.py --output_dir DIR writes them).")
    boxes, box_labels = layouts
    if bool((box_labels < 0).all(1).any()):
        raise ValueError(f"{Path(args.train_data_dir) / LAYOUTS_FILE} leaves images without a layout (null); the finder "
                         "learns from exact layouts only: give rendered data.")
    train_rows, heldout_rows = split_by_scene(list(dataset["file_name"]), args.heldout_fraction, args.seed)
    if not train_rows or not heldout_rows:
        raise ValueError(f"The split left {len(train_rows)} training and {len(heldout_rows)} held-out images; use more scenes.")
    return images, labels, boxes, box_labels, train_rows, heldout_rows, vocab


def train(args, accelerator: Accelerator, data: tuple) -> tuple:
    """Train the finder; returns the bare model, the last held-out figures and the history."""
    images, labels, boxes, box_labels, train_rows, heldout_rows, vocab = data
    model = ObjectFinder(labels=list(vocab.labels), hidden_sizes=args.hidden_sizes, confidence_threshold=args.confidence_threshold)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    loader = torch.utils.data.DataLoader(torch.tensor(train_rows), batch_size=args.train_batch_size, shuffle=True, drop_last=True)
    steps = args.num_epochs * math.ceil(len(loader) / accelerator.num_processes)
    scheduler = build_lr_scheduler(args.lr_scheduler, optimizer, args.lr_warmup_steps, steps, accelerator.num_processes)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers(args.tracker_project_name, config={k: str(v) for k, v in vars(args).items()})

    generator = torch.Generator().manual_seed(args.seed + accelerator.process_index)
    grid = FINDER_RESOLUTION // 4
    progress = tqdm(total=steps, desc="Object finder", disable=not accelerator.is_local_main_process)
    history, start = [], time.time()
    for epoch in range(args.num_epochs):
        model.train()
        for rows in loader:
            rows = rows.cpu()
            pixels, batch_boxes = augment(images[rows], generator, args.lowres_prob, args.lowres_sizes, True,
                                          args.appearance_augment, boxes=boxes[rows])
            targets = finder_targets(batch_boxes, box_labels[rows], len(vocab), grid)
            with accelerator.autocast():
                heat, box_maps = model(pixels.to(accelerator.device))
            loss = finder_loss(heat, box_maps, *(t.to(accelerator.device) for t in targets))
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch)
            accelerator.log({"loss": loss.item(), "lr": scheduler.get_last_lr()[0]}, step=progress.n)
        figures = heldout_box_figures(bare_model(accelerator, model), images[heldout_rows], labels[heldout_rows],
                                      boxes[heldout_rows], box_labels[heldout_rows])
        history.append({"epoch": epoch + 1, "minutes": (time.time() - start) / 60, "iou_at_least_0.7": figures["iou_at_least_0.7"],
                        "found": figures["found"], "mean_iou": figures["mean_iou"]})
        accelerator.log({f"heldout_{k}": figures[k] for k in ("iou_at_least_0.7", "found", "mean_iou")}, step=progress.n)
        logger.info(f"epoch {epoch + 1}: held-out IoU >= 0.7 for {figures['iou_at_least_0.7']:.4f} of objects, found "
                    f"{figures['found']:.4f}, mean IoU {figures['mean_iou']:.3f}", main_process_only=True)
    progress.close()
    return bare_model(accelerator, model), figures, history


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with writer_lock(args.output_dir, hold=is_main_rank()):
        accelerator = setup_accelerator(args.seed, mixed_precision=args.mixed_precision, project_dir=str(Path(args.output_dir)),
                                        log_with=None if args.report_to == "none" else args.report_to)
        start = time.time()
        data = build_data(args, accelerator)
        logger.info(f"{len(data[4])} training and {len(data[5])} held-out images, {len(data[6])} labels", main_process_only=True)
        model, figures, history = train(args, accelerator, data)
        result = save_finder(args, accelerator, model, data, figures, history, minutes=(time.time() - start) / 60)
        accelerator.end_training()
        return result


def save_finder(args, accelerator: Accelerator, model, data: tuple, figures: dict, history: list, minutes: float) -> dict:
    """Measure the final held-out figures with the weights as saved (``--save_dtype``) and save the finder with
    ``finder_metrics.json`` in one piece (the weights move in last, so a half-written folder never loads)."""
    images, labels, boxes, box_labels, train_rows, heldout_rows, vocab = data
    if args.save_dtype == "float16":  # round in place: the figures below are the saved weights'
        model.half().float()
        figures = heldout_box_figures(model, images[heldout_rows], labels[heldout_rows], boxes[heldout_rows], box_labels[heldout_rows])
    accelerator.wait_for_everyone()
    result = {}
    if accelerator.is_main_process:
        result = {"heldout_images": len(heldout_rows), "train_images": len(train_rows), "heldout": figures, "history": history,
                  "train_minutes": minutes, "processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
                  "save_dtype": args.save_dtype, "args": dict(vars(args))}
        partial = partial_folder(Path(args.output_dir))
        model = model.float().eval()
        # .half(), not .to(dtype): diffusers warns on the latter
        (model.half() if args.save_dtype == "float16" else model).save_pretrained(partial, safe_serialization=True)
        (partial / "finder_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        move_into(partial, Path(args.output_dir), last="diffusion_pytorch_model.safetensors")
        print(json.dumps({k: result["heldout"][k] for k in ("objects", "iou_at_least_0.7", "found", "complete_layouts", "mean_iou")}
                         | {"train_minutes": minutes, "save_dtype": args.save_dtype}, indent=2))
    return result


if __name__ == "__main__":
    run(main)  # the project's own errors as one line (iclevr.cli)
