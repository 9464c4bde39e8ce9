# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Training throughput: the trainer's recipe against a naive loop written like the course reports, and each CPU lever.

    python bench/bench_train.py --resolution 32 --train_batch_size 64 --steps 30

Same model (the trainer's `build_model` with its default flags), same batch, same loss (`diffusion_loss`), measured
side by side in one run after warm-up steps. Rows:

- naive: fp32, every batch decoded from PNG files (PIL open, resize, normalise) as a course-style Dataset does,
  contiguous layout, AdamW without foreach;
- pre-decoded: the same, from uint8 tensors decoded once (what the trainer does);
- + bf16 autocast (the trainer's --mixed_precision bf16);
- + channels_last; fp32 + channels_last; torch.compile in fp32 and in bf16 (compile time reported apart).

``--scaling`` adds a grid of resolution (32, 64, and 64 through a patch-2 space-to-depth stem) x batch for the
default recipe (images/s and ms per step; bf16 where the CPU
has native bf16, as the main job chooses, else fp32).

``--processes`` runs the trainer itself (``accelerate launch``, the default recipe, EMA, the main job's precision)
one after the other: one process with every core (the project's config) against one process per core over gloo
(one thread each), at the same global batch and at twice it, beside one process at twice the batch (so a gain
of the larger global batch is not taken for one of the processes); images/s from each run's ``train_summary.json``.

``--shapes`` measures the default recipe's step (bf16 where the CPU has it natively, else fp32) against the model
shapes and precisions the profile points at (``bench/bench_profile.py``): no attention level, the attention level
or GroupNorm in fp32 inside bf16 autocast, wider levels. Interleaved rounds, so drift of the machine hits every row
alike; images/s (the median round), GFLOP per image (``torch.utils.flop_counter``) and the GFLOP/s achieved.

``--dynamo`` runs the trainer eager and with ``--dynamo_backend inductor``: images/s once warmed up (from the first
optimiser step on, as the trainer counts them), the minutes each run took, and after how many minutes of training
compiling has paid for its warm-up.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0
from PIL import Image

from iclevr import ddpm
from iclevr.argtypes import non_negative_int, positive_int
from iclevr.data import dataset_to_tensors, load_train_dataset
from iclevr.images import to_model_input
from iclevr.render.dataset import default_spp, plan_random_scenes, render_dataset
from iclevr.utils import cpu_has_native_bf16, hardware_line, measure_throughput, training_flops


class PngDataset(torch.utils.data.Dataset):
    """What the course reports do: open and transform a PNG for every sample, every epoch."""

    def __init__(self, folder: Path, labels: dict[str, torch.Tensor], resolution: int):
        self.folder, self.names, self.labels, self.resolution = folder, sorted(labels), labels, resolution

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        image = Image.open(self.folder / self.names[i]).convert("RGB").resize((self.resolution, self.resolution), Image.BILINEAR)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        return pixels, self.labels[self.names[i]]


class Fp32Attention:
    """An attention processor run in fp32 with autocast off: the CPU's bf16 flash-attention backward is slow."""

    def __init__(self):
        self.processor = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, *args, **kwargs):
        kwargs = {key: value.float() if torch.is_tensor(value) and value.is_floating_point() else value for key, value in kwargs.items()}
        with torch.autocast("cpu", enabled=False):
            return self.processor(attn, hidden_states.float(), *args, **kwargs).to(hidden_states.dtype)


def fp32_group_norm(norm: torch.nn.GroupNorm, hidden_states: torch.Tensor) -> torch.Tensor:
    """GroupNorm in fp32 with autocast off, returned in the input's dtype (so only the normalisation changes)."""
    with torch.autocast("cpu", enabled=False):
        return F.group_norm(hidden_states.float(), norm.num_groups, norm.weight, norm.bias, norm.eps).to(hidden_states.dtype)


def in_fp32(unet: torch.nn.Module, part: str) -> None:
    """Run ``part`` ("attention" or "group_norm") of ``unet`` in fp32 inside bf16 autocast."""
    if part == "attention":
        unet.set_attn_processor(Fp32Attention())
        return
    for module in unet.modules():
        if isinstance(module, torch.nn.GroupNorm):
            module.forward = types.MethodType(fp32_group_norm, module)


def bench_unet(args, fp32_part: str | None = None) -> torch.nn.Module:
    """The trainer's model for ``args``, with ``fp32_part`` (if any) run in fp32 inside bf16 autocast."""
    unet = ddpm.build_model(args)
    if fp32_part:
        in_fp32(unet, fp32_part)
    return unet


def make_step(args, bf16: bool, channels_last: bool, compile_model: bool, foreach: bool, fp32_part: str | None = None):
    torch.manual_seed(0)
    unet = bench_unet(args, fp32_part)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    unet = unet.to(memory_format=memory_format).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, foreach=foreach)
    scheduler = ddpm.build_noise_scheduler(args)
    model = torch.compile(unet) if compile_model else unet

    def step(pixels, labels):
        pixels = pixels.contiguous(memory_format=memory_format)
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = ddpm.diffusion_loss(model, scheduler, pixels, labels, args)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def cycle_png(dataset, batch_size):
    while True:
        yield from torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)


def cycle_tensors(images, labels, batch_size):
    generator = torch.Generator().manual_seed(0)
    while True:
        order = torch.randperm(images.shape[0], generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            yield to_model_input(images[index]), labels[index]


ROOT = Path(__file__).resolve().parents[1]


def trainer_run(folder: Path, out: Path, processes: int, batch: int, steps: int, resolution: int, dynamo: str = "no") -> dict:
    """``train_summary.json`` of ``steps`` steps of the trainer on ``folder``: one process with every core (the
    project's config), or ``processes`` processes over gloo with one thread each; ``dynamo`` is its
    ``--dynamo_backend``."""
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    if processes == 1:
        launch += ["--config_file", str(ROOT / "accelerate_config.yaml")]
    else:
        launch += ["--multi_gpu", "--num_processes", str(processes), "--num_machines", "1", "--dynamo_backend", "no"]
    env = os.environ | ({"OMP_NUM_THREADS": "1"} if processes > 1 else {})
    run = out / f"run-{processes}x{batch}-{dynamo}"
    command = launch + [str(ROOT / "train_conditional_ddpm.py"), "--train_data_dir", str(folder), "--cache_dir", str(out / "cache"),
                        "--output_dir", str(run), "--resolution", str(resolution),
                        "--train_batch_size", str(batch), "--max_train_steps", str(steps), "--lr_warmup_steps", "1",
                        "--use_ema", "--mixed_precision", "bf16" if cpu_has_native_bf16() else "no", "--report_to", "none",
                        "--checkpointing_steps", str(10 * steps), "--dynamo_backend", dynamo]
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=ROOT)
    return json.loads((run / "train_summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=positive_int, default=32, help="Training resolution of the comparison.")
    parser.add_argument("--train_batch_size", type=positive_int, default=64, help="Batch size of the comparison.")
    parser.add_argument("--steps", type=positive_int, default=30, help="Timed steps per row.")
    parser.add_argument("--warmup", type=non_negative_int, default=3, help="Untimed steps per row.")
    parser.add_argument("--compile", action="store_true", help="Add a torch.compile row (compiling takes minutes on CPU).")
    parser.add_argument("--scaling", action="store_true", help="Add the resolution x batch grid of the default recipe.")
    parser.add_argument("--processes", action="store_true",
                        help="Add the trainer's own throughput: 1 process x every core against 1 process per core over gloo.")
    parser.add_argument("--shapes", action="store_true",
                        help="Add model shapes and precisions against the default step: no attention, fp32 attention or "
                             "GroupNorm inside bf16 autocast, wider levels (images/s, GFLOP per image, GFLOP/s).")
    parser.add_argument("--dynamo", action="store_true",
                        help="Add the trainer's own run eager against --dynamo_backend inductor: images/s once warmed up, and the "
                             "minutes of training after which compiling has paid for its warm-up.")
    parser.add_argument("--model_args", type=str, default="", help="Extra train_conditional_ddpm.py model flags, e.g. '--conditioning both'.")
    args = parser.parse_args()
    print(f"{hardware_line()}; resolution {args.resolution}, batch {args.train_batch_size}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "data"
        render_dataset(folder, plan_random_scenes(200, 0, set()), 0, 64, 64, default_spp(64), num_workers=2)
        dataset = load_train_dataset(train_data_dir=folder, resolution=args.resolution, cache_dir=Path(tmp) / "cache")
        images, labels = dataset_to_tensors(dataset)
        label_of = dict(zip(dataset["file_name"], labels))
        png = PngDataset(folder, label_of, args.resolution)
        train_args = ddpm.parse_args(["--resolution", str(args.resolution), *args.model_args.split()])
        rows = [
            ("naive: fp32, PNG decode per batch", dict(bf16=False, channels_last=False, compile_model=False, foreach=False), "png"),
            ("pre-decoded uint8 tensors", dict(bf16=False, channels_last=False, compile_model=False, foreach=False), "tensor"),
            ("+ foreach AdamW", dict(bf16=False, channels_last=False, compile_model=False, foreach=True), "tensor"),
            ("+ bf16 autocast (main job, native bf16)", dict(bf16=True, channels_last=False, compile_model=False, foreach=True), "tensor"),
            ("+ channels_last", dict(bf16=True, channels_last=True, compile_model=False, foreach=True), "tensor"),
            ("fp32 + foreach + channels_last", dict(bf16=False, channels_last=True, compile_model=False, foreach=True), "tensor"),
        ]
        if args.compile:
            # Both precisions: fp32 is what the main job trains in on a CPU without native bf16 (most laptops).
            rows.append(("fp32 + foreach + torch.compile", dict(bf16=False, channels_last=False, compile_model=True, foreach=True), "tensor"))
            rows.append(("+ torch.compile (bf16)", dict(bf16=True, channels_last=False, compile_model=True, foreach=True), "tensor"))
        results = {}
        print(f"{'configuration':<38} {'images/s':>9} {'vs naive':>9}")
        for name, options, source in rows:
            batches = cycle_png(png, args.train_batch_size) if source == "png" else cycle_tensors(images, labels, args.train_batch_size)
            start = time.perf_counter()
            step = make_step(train_args, **options)
            rate = measure_throughput(step, batches, args.warmup, args.steps)
            results[name] = rate
            extra = f"  (incl. warm-up/compile {time.perf_counter() - start:.0f} s)" if options["compile_model"] else ""
            print(f"{name:<38} {rate:>9.1f} {rate / results[rows[0][0]]:>8.2f}x{extra}", flush=True)
        if args.scaling:
            print(f"\n{'resolution':>10} {'patch':>6} {'batch':>6} {'images/s':>9} {'ms/step':>8}")
            # 64 with patch 2 is the space-to-depth model: 64x64 images through the 32x32 UNet.
            for resolution, patch in ((32, 1), (64, 1), (64, 2)):
                scaled = load_train_dataset(train_data_dir=folder, resolution=resolution, cache_dir=Path(tmp) / "cache")
                scaled_images, scaled_labels = dataset_to_tensors(scaled)
                for batch in (16, 64, 128):
                    step_args = ddpm.parse_args(["--resolution", str(resolution), "--patch_size", str(patch), *args.model_args.split()])
                    step = make_step(step_args, bf16=cpu_has_native_bf16(), channels_last=False, compile_model=False, foreach=True)
                    rate = measure_throughput(step, cycle_tensors(scaled_images, scaled_labels, batch), args.warmup, max(5, args.steps // 3))
                    print(f"{resolution:>10} {patch:>6} {batch:>6} {rate:>9.1f} {1000 * batch / rate:>8.0f}", flush=True)
        if args.shapes:
            shapes(args, images, labels)
        if args.processes:
            cores, batch = os.cpu_count() or 1, args.train_batch_size
            print(f"\ntrainer (accelerate launch), {max(20, args.steps)} steps each; global batch = processes x batch")
            print(f"{'processes x threads':>20} {'batch':>6} {'global':>7} {'images/s':>9} {'vs 1 process':>13}")
            base = trainer_run(folder, Path(tmp), 1, batch, max(20, args.steps), args.resolution)["images_per_second"]
            print(f"{'1 x ' + str(cores):>20} {batch:>6} {batch:>7} {base:>9.1f} {1.0:>12.2f}x", flush=True)
            for processes, per_process in ((cores, batch // cores), (1, batch * cores), (cores, batch)):
                rate = trainer_run(folder, Path(tmp), processes, per_process, max(20, args.steps), args.resolution)["images_per_second"]
                layout = f"{processes} x {cores // processes}"
                print(f"{layout:>20} {per_process:>6} {per_process * processes:>7} {rate:>9.1f} {rate / base:>12.2f}x", flush=True)
        if args.dynamo:
            steps = max(40, args.steps)
            print(f"\ntrainer (accelerate launch, one process with every core), {steps} steps each")
            print(f"{'dynamo_backend':>15} {'images/s':>9} {'vs eager':>9} {'minutes':>8}")
            eager, compiled = (trainer_run(folder, Path(tmp), 1, args.train_batch_size, steps, args.resolution, dynamo)
                               for dynamo in ("no", "inductor"))
            for name, run in (("no", eager), ("inductor", compiled)):
                rate = run["images_per_second"]
                print(f"{name:>15} {rate:>9.1f} {rate / eager['images_per_second']:>8.2f}x {run['training_minutes']:>8.2f}", flush=True)
            print(break_even(eager, compiled, steps))


# (row, extra model flags, the part run in fp32 inside bf16 autocast); the first row is the default every ratio is against.
SHAPES = (
    ("the default (32,64,128; attention at 8x8)", "", None),
    ("no attention level (--attention_levels 0,0,0)", "--attention_levels 0,0,0", None),
    ("attention in fp32 inside bf16 autocast", "", "attention"),
    ("GroupNorm in fp32 inside bf16 autocast", "", "group_norm"),
    ("wider (--block_out_channels 64,128,128)", "--block_out_channels 64,128,128", None),
    ("wider (--block_out_channels 64,128,256)", "--block_out_channels 64,128,256", None),
)


def flops_per_image(args, bf16: bool, fp32_part: str | None, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Forward + backward FLOPs per training image of the model ``args`` describe, as the bench's step runs it."""
    unet = bench_unet(args, fp32_part).train()
    scheduler, pixels = ddpm.build_noise_scheduler(args), to_model_input(images)

    def loss():
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            return ddpm.diffusion_loss(unet, scheduler, pixels, labels, args)

    return training_flops(loss) / images.shape[0]


def shapes(args, images: torch.Tensor, labels: torch.Tensor, rounds: int = 3) -> None:
    """The ``--shapes`` table: each row's step built once, then timed in ``rounds`` interleaved rounds."""
    bf16 = cpu_has_native_bf16()
    rows = [row for row in SHAPES if bf16 or row[2] is None]  # without bf16 autocast an fp32 part changes nothing
    steps, flops = {}, {}
    for name, flags, fp32_part in rows:
        step_args = ddpm.parse_args(["--resolution", str(args.resolution), *args.model_args.split(), *flags.split()])
        steps[name] = make_step(step_args, bf16=bf16, channels_last=False, compile_model=False, foreach=True, fp32_part=fp32_part)
        flops[name] = flops_per_image(step_args, bf16, fp32_part, images[: args.train_batch_size], labels[: args.train_batch_size])
    rates = {name: [] for name in steps}
    for round_index in range(rounds):
        for name, step in steps.items():
            warmup = args.warmup if round_index == 0 else 1
            rates[name].append(measure_throughput(step, cycle_tensors(images, labels, args.train_batch_size), warmup, max(5, args.steps // rounds)))
    print(f"\nmodel shapes and precisions ({'bf16 autocast' if bf16 else 'fp32'}), {rounds} interleaved rounds of "
          f"{max(5, args.steps // rounds)} steps")
    print(f"{'row':<48} {'images/s':>9} {'vs default':>11} {'GFLOP/image':>12} {'GFLOP/s':>8}")
    base = statistics.median(rates[rows[0][0]])
    for name in steps:
        rate = statistics.median(rates[name])
        print(f"{name:<48} {rate:>9.1f} {rate / base:>10.2f}x {flops[name] / 1e9:>12.2f} {flops[name] * rate / 1e9:>8.0f}", flush=True)


def break_even(eager: dict, compiled: dict, steps: int) -> str:
    """When compiling pays, from the two runs' ``train_summary.json``: its warm-up (the compiled run's time beyond its
    steps at its own warmed-up rate, less the same overhead of the eager run) against the share of each step it saves."""
    overhead = {name: 60 * run["training_minutes"] - steps * run["seconds_per_step"] for name, run in (("no", eager), ("inductor", compiled))}
    warmup = overhead["inductor"] - overhead["no"]
    saved = 1 - compiled["seconds_per_step"] / eager["seconds_per_step"]
    if saved <= 0:
        return f"compiling does not pay here: {compiled['seconds_per_step']:.3f} s/step against {eager['seconds_per_step']:.3f} eager"
    return (f"compile warm-up {warmup:.0f} s; {100 * saved:.1f} % of each step saved; compiling pays after "
            f"{warmup / saved / 60:.1f} minutes of training")


if __name__ == "__main__":
    main()
