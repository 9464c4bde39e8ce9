# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Sampling: time and accuracy of DDPM-1000 against DDIM / DPM-Solver++ at 10, 20, 25 and 50 steps.

    python bench/bench_sampling.py --pipeline outputs/main/pipeline --evaluator outputs/evaluator

One trained pipeline, one condition set (the course's test.json unless told otherwise), the
same seed for every row, classifier-free guidance as given. ``--scaling`` adds how one denoising step costs with
resolution (32, 64) and batch (1, 32, 64) for the trainer's default model shape (untrained weights: cost only).
"""

import argparse
import time

import torch

from iclevr import ddpm
from iclevr.argtypes import non_negative_float
from iclevr.evaluator import Evaluator
from iclevr.labels import COURSE_TEST, load_conditions
from iclevr.sampling import generate, load_pipeline, score
from iclevr.utils import cpu_has_native_bf16
from pipeline_iclevr import DEFAULT_GUIDANCE_SCALE, unet_condition_kwargs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", type=str, required=True, help="Trained pipeline folder.")
    parser.add_argument("--evaluator", type=str, required=True, help="Evaluator folder or course checkpoint.pth.")
    parser.add_argument("--conditions_json", type=str, default=str(COURSE_TEST), help="Condition set (default: the course's test.json).")
    parser.add_argument("--guidance_scale", type=non_negative_float, default=DEFAULT_GUIDANCE_SCALE, help="Classifier-free guidance scale for every row.")
    parser.add_argument("--rows", type=str, default="ddpm:1000,ddim:10,ddim:20,ddim:25,ddim:50,dpm++:10,dpm++:20,dpm++:25,dpm++:50",
                        help="Comma-separated SCHEDULER:STEPS rows.")
    parser.add_argument("--scaling", action="store_true", help="Add the resolution x batch cost grid.")
    args = parser.parse_args()
    path = args.conditions_json
    conditions = load_conditions(path)
    evaluator = Evaluator.from_pretrained(args.evaluator)
    print(f"{len(conditions)} conditions from {path}, guidance {args.guidance_scale}, {torch.get_num_threads()} threads")
    print(f"{'sampler':<8} {'steps':>6} {'s/image':>8} {'accuracy':>9} {'exact-set':>10}")
    for row in args.rows.split(","):
        name, steps = row.split(":")
        pipe = load_pipeline(args.pipeline, name, "cpu")
        images, seconds = generate(pipe, conditions, 0, 64, num_inference_steps=int(steps), guidance_scale=args.guidance_scale)
        result = score(evaluator, images, conditions)
        print(f"{name:<8} {steps:>6} {seconds:>8.3f} {result['accuracy']:>9.3f} {result['exact_set_accuracy']:>10.3f}", flush=True)
    if args.scaling:
        print(f"\n{'resolution':>10} {'batch':>6} {'ms/step (CFG pair)':>19} {'ms/image/step':>14}")
        for resolution in (32, 64):
            unet = ddpm.build_model(ddpm.parse_args(["--resolution", str(resolution)])).eval()
            for batch in (1, 32, 64):
                x = torch.randn(2 * batch, 3, resolution, resolution)
                kwargs = unet_condition_kwargs(unet.config, torch.zeros(2 * batch, 24))
                # bf16 only where the CPU computes it natively (elsewhere it is emulated, 15x slower): as main_job.py chooses
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_has_native_bf16()):
                    unet(x, 500, **kwargs)
                    start = time.perf_counter()
                    for _ in range(5):
                        unet(x, 500, **kwargs)
                ms = (time.perf_counter() - start) / 5 * 1000
                print(f"{resolution:>10} {batch:>6} {ms:>19.1f} {ms / batch:>14.2f}", flush=True)


if __name__ == "__main__":
    main()
