# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Where a training step's time goes: the default model's step, profiled by kind of work, against the machine's
matmul peak measured in the same run.

    python bench/bench_profile.py --steps 10                 # the default recipe (bf16 where the CPU has it natively)
    python bench/bench_profile.py --model_args "--resolution 64"

The step is the trainer's (`iclevr.ddpm.diffusion_loss` on the default model, AdamW, EMA with foreach). Each op's self
time is put in one kind (convolution, normalisation, attention, elementwise/activation, copies/layout, optimiser,
EMA, data); the table gives each kind's share and the step's achieved FLOP/s (`torch.utils.flop_counter`) against a
large square matmul's in the same precision, timed right before.
"""

import argparse
import time
from contextlib import nullcontext

import torch
from diffusers import UNet2DConditionModel
from diffusers.training_utils import EMAModel
from torch.profiler import ProfilerActivity, profile, record_function

from iclevr import ddpm
from iclevr.argtypes import non_negative_int, positive_int
from iclevr.images import to_model_input
from iclevr.utils import cpu_has_native_bf16, hardware_line, training_flops

# First match wins; matched against the lower-cased op name.
KINDS = (
    ("convolution", ("conv", "mkldnn_convolution")),
    ("normalisation", ("group_norm", "layer_norm", "batch_norm")),
    ("attention", ("attention", "softmax", "bmm", "baddbmm")),
    ("matmul (linear)", ("addmm", "aten::mm", "matmul", "linear")),
    ("copies / layout", ("copy", "clone", "contiguous", "to_copy", "cat", "permute", "transpose", "view", "reshape",
                         "empty", "zeros", "fill", "slice", "select", "expand", "stack", "pad", "as_strided")),
)


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, patterns in KINDS:
        if any(pattern in lowered for pattern in patterns):
            return kind
    return "elementwise / activation / other"


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large square matmul in ``dtype``: the matrix units' practical peak on this machine."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def make_step(args, bf16: bool):
    torch.manual_seed(0)
    unet = ddpm.build_model(args).train()
    scheduler = ddpm.build_noise_scheduler(args)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, foreach=True, model_cls=UNet2DConditionModel,
                   model_config=unet.config)
    images = torch.randint(0, 256, (args.train_batch_size, args.resolution, args.resolution, 3), dtype=torch.uint8)
    labels = (torch.rand(args.train_batch_size, 24) < 0.08).float()
    floor = ddpm.mean_image(images)

    def step():
        with record_function("## data"):
            pixels = to_model_input(images)
            weights = ddpm.foreground_weights(pixels, floor, args.foreground_weight)
        with record_function("## forward + backward"):
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
                loss = ddpm.diffusion_loss(unet, scheduler, pixels, labels, args, weights)
            loss.backward()
        with record_function("## optimiser"):
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        with record_function("## ema"):
            ema.step(unet.parameters())

    return step, unet, scheduler, images, labels, floor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=positive_int, default=10, help="Profiled steps (after --warmup untimed ones).")
    parser.add_argument("--warmup", type=non_negative_int, default=3, help="Untimed steps first (kernel selection, allocation).")
    parser.add_argument("--precision", type=str, default="auto", choices=["auto", "fp32", "bf16"],
                        help="auto: bf16 where the CPU has native bf16, as the main job chooses; else fp32.")
    parser.add_argument("--model_args", type=str, default="", help="train_conditional_ddpm.py flags for the model, e.g. '--resolution 64'.")
    args = parser.parse_args()
    bf16 = args.precision == "bf16" or (args.precision == "auto" and cpu_has_native_bf16())
    train_args = ddpm.parse_args(args.model_args.split())
    print(f"{hardware_line()}; {'bf16' if bf16 else 'fp32'}; resolution {train_args.resolution}, batch {train_args.train_batch_size}")
    peak = matmul_peak(torch.bfloat16 if bf16 else torch.float32)

    step, unet, scheduler, images, labels, floor = make_step(train_args, bf16)
    for _ in range(args.warmup):
        step()
    def loss():  # one forward, as the step runs it
        pixels = to_model_input(images)
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            return ddpm.diffusion_loss(unet, scheduler, pixels, labels, train_args, ddpm.foreground_weights(pixels, floor, 4.0))

    flops = training_flops(loss)
    unet.zero_grad(set_to_none=True)

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    seconds = (time.perf_counter() - start) / args.steps  # profiled: a little slower than a bare step

    shares: dict[str, float] = {}
    phases: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key.startswith("## "):
            phases[event.key[3:]] = event.cpu_time_total / 1e6 / args.steps
            continue
        shares[kind_of(event.key)] = shares.get(kind_of(event.key), 0.0) + event.self_cpu_time_total / 1e6 / args.steps
    # The optimiser's and EMA's ops are elementwise too: report those phases as their own kinds.
    total = sum(shares.values())
    images_per_second = train_args.train_batch_size / seconds
    print(f"\n{parameters(unet):.2f}M parameters; {flops / train_args.train_batch_size / 1e9:.2f} GFLOP per training image "
          f"(forward + backward); {seconds * 1000:.0f} ms per step under the profiler ({images_per_second:.1f} images/s)")
    print(f"achieved {flops / seconds / 1e9:.0f} GFLOP/s against a {'bf16' if bf16 else 'fp32'} matmul's {peak / 1e9:.0f} "
          f"GFLOP/s: {flops / seconds / peak:.0%} of the matrix units")
    print(f"\n{'phase':<22} {'ms/step':>8} {'share':>7}")
    for name in ("data", "forward + backward", "optimiser", "ema"):
        print(f"{name:<22} {phases.get(name, 0.0) * 1000:>8.1f} {phases.get(name, 0.0) / seconds:>7.0%}")
    print(f"\n{'kind of op (self time)':<34} {'ms/step':>8} {'share':>7}")
    for kind, value in sorted(shares.items(), key=lambda item: -item[1]):
        print(f"{kind:<34} {value * 1000:>8.1f} {value / total:>7.0%}")
    print("\n(optimiser and EMA ops are counted by kind above and by phase in the first table)")


def parameters(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


if __name__ == "__main__":
    main()
