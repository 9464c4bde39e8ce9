# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Evaluate a trained `ICLEVRPipeline` (or a GAN's `ICLEVRGANPipeline`) with the evaluator and write a report.

    python evaluate_pipeline.py --pipeline outputs/iclevr-ddpm --evaluator outputs/evaluator --num_seeds 3

By default it scores the course's test.json and the project's synthetic set (both in ``iclevr/conditions/``).
For each condition set it generates one image per condition per seed (batched, seeded), saves
``images/<set>/<i>.png`` for the first seed (the course's naming, so the course's evaluator can score them too) and a
grid with 8 images per row, and scores every seed with the course metric and exact-set accuracy (mean ± std over
seeds, and by number of objects). Beside the model it scores three reference rows per set: rendered images of the
same conditions (the ceiling), empty floors and pure noise. It also draws the denoising process of one condition.
``--sweep`` adds a table of accuracy and seconds per image over schedulers x steps x guidance scales, and a plot;
``--eta_study`` and ``--interpolation_study`` the DDIM eta grid and the noise interpolation strip. A layout model is
also asked to place each condition's objects at layouts drawn from its prior, and scored on whether each object is
found in its box (`iclevr.obedience`). ``--best_of N``
samples N candidates per condition and keeps the one the model's own lift score ranks first (`iclevr.sampling`).
Writes ``metrics.json`` and ``report.md`` to ``--output_dir``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from iclevr.argtypes import check_output_folder, non_negative_float, non_negative_int, positive_int
from iclevr.cli import run
from iclevr.evaluator import Evaluator, sanity_report
from iclevr.labels import COURSE_NEW_TEST, COURSE_TEST, SYNTHETIC_TEST, load_conditions
from iclevr.metrics import mean_std, total_misses
from iclevr.obedience import layout_figure, layout_obedience
from iclevr.panel import check_panel_dir, panel_table, read_panel
from iclevr.sampling import (
    SCHEDULERS,
    generate,
    generate_best_of,
    initial_noise,
    is_one_step,
    load_pipeline,
    score,
    slerp,
)
from iclevr.utils import display_scale, image_grid
from pipeline_iclevr import LABELS

DENOISING_EXAMPLE = ["red sphere", "cyan cylinder", "cyan cube"]  # i-CLEVR's; another vocabulary draws its first condition
ETAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # DDIM's eta: 0 deterministic, 1 as stochastic as DDPM
INTERPOLATION_POINTS = 9


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Generate, score and report on an ICLEVRPipeline.")
    parser.add_argument("--pipeline", type=str, required=True, help="Saved pipeline folder (or Hub id).")
    parser.add_argument("--evaluator", type=str, required=True, help="Evaluator folder or the course's checkpoint.pth.")
    parser.add_argument("--conditions_json", type=str, nargs="+", default=[str(COURSE_TEST), str(COURSE_NEW_TEST), str(SYNTHETIC_TEST)],
                        help="Condition sets (test.json format); default: the course's test.json and new_test.json and the "
                             "project's synthetic set.")
    parser.add_argument("--output_dir", type=str, default="outputs/report", help="Where images, metrics.json and report.md go.")
    parser.add_argument("--scheduler", type=str, default=None, choices=sorted(SCHEDULERS),
                        help="Sampler (default: the one the pipeline was saved with, i.e. validated with).")
    parser.add_argument("--num_inference_steps", type=positive_int, default=None,
                        help="Sampling steps (default: the pipeline's default call's, the steps its trainer validated with).")
    parser.add_argument("--guidance_scale", type=non_negative_float, default=None,
                        help="Classifier-free guidance scale (default: the pipeline's default call's, as validated).")
    parser.add_argument("--num_seeds", type=positive_int, default=3, help="Generation repeats with different seeds (mean ± std).")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="First seed.")
    parser.add_argument("--batch_size", type=positive_int, default=64, help="Images generated per forward batch.")
    parser.add_argument("--sweep", action="store_true", help="Also sweep schedulers x steps x guidance scales.")
    parser.add_argument("--sweep_schedulers", type=str, default="ddim,dpm++", help="Schedulers in the sweep.")
    parser.add_argument("--sweep_steps", type=str, default="10,20,25,50", help="Step counts in the sweep.")
    parser.add_argument("--sweep_guidance", type=str, default="1,2,3,4", help="Guidance scales in the sweep.")
    parser.add_argument("--eta_study", action="store_true",
                        help=f"Also sample one set of initial noises with DDIM at eta {', '.join(map(str, ETAS))}: a grid and "
                             "the accuracy at each eta on the first condition set.")
    parser.add_argument("--interpolation_study", action="store_true",
                        help="Also interpolate between two initial noises per condition (spherically, and linearly for "
                             f"contrast) at {INTERPOLATION_POINTS} points: a strip for one condition and the accuracy at each point.")
    parser.add_argument("--best_of", type=positive_int, default=1,
                        help="Sample N candidates per condition and keep the one the model's own lift score ranks first "
                             "(CompLift; the evaluator never ranks): extra sampling compute, reported in s/image. 1: off.")
    parser.add_argument("--lift_timesteps", type=positive_int, default=8, help="Noise levels the lift score averages over (--best_of).")
    parser.add_argument("--panel_dir", type=str, default=None,
                        help="A panel of other models' i-CLEVR pictures with the course evaluator's figures (iclevr/panel.py): "
                             "the report adds each set read by this evaluator beside that figure, so a reader sees how "
                             "far the evaluator is from the course's.")
    parser.add_argument("--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu", help="Device.")
    args = parser.parse_args(argv)
    check_output_folder(parser, args.output_dir, "--output_dir")
    check_panel_dir(parser, args.panel_dir)
    for name in args.sweep_schedulers.split(","):
        if name not in SCHEDULERS:
            parser.error(f"--sweep_schedulers: unknown scheduler {name!r}; choose from {sorted(SCHEDULERS)}.")
    return args


def sampling_kwargs(args, **overrides) -> dict:
    """The pipeline call's sampling arguments from the flags (none for a GAN, which samples in one step)."""
    if args.one_step:
        return {}
    return {"num_inference_steps": args.num_inference_steps, "guidance_scale": args.guidance_scale} | overrides


def evaluate_set(pipe, evaluator, name, conditions, args, out: Path) -> dict:
    """Generate and score one condition set over the seeds; save the first seed's images and grid."""
    runs = []
    for k in range(args.num_seeds):
        if args.best_of > 1:
            images, seconds = generate_best_of(pipe, conditions, args.seed + k, args.batch_size, args.best_of,
                                               args.lift_timesteps, **sampling_kwargs(args))
        else:
            images, seconds = generate(pipe, conditions, args.seed + k, args.batch_size, **sampling_kwargs(args))
        runs.append((score(evaluator, images, conditions), seconds))
        if k == 0:
            folder = out / "images" / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate((images * 255).round().astype(np.uint8)):
                Image.fromarray(image).save(folder / f"{i}.png")
            image_grid(images, columns=8, captions=["\n".join(c) for c in conditions],
                       scale=display_scale(images.shape[2])).save(out / f"grid_{name}.png")
    by_objects = {
        n: mean_std([r["by_num_objects"][n]["accuracy"] for r, _ in runs]) for n in runs[0][0]["by_num_objects"]
    }
    return {
        "conditions": len(conditions),
        "accuracy": mean_std([r["accuracy"] for r, _ in runs]),
        "exact_set_accuracy": mean_std([r["exact_set_accuracy"] for r, _ in runs]),
        "accuracy_by_num_objects": by_objects,
        "misses": total_misses([r for r, _ in runs]),
        "seconds_per_image": statistics.fmean(s for _, s in runs),
        "references": sanity_report(evaluator, conditions, seed=args.seed),
    }


def denoising_figure(pipe, labels, args, snapshots: int = 8) -> Image.Image:
    """One condition from noise to image: ``snapshots`` states x_t along the sampling trajectory."""
    frames = []
    steps = args.num_inference_steps
    keep = {round(i * (steps - 1) / (snapshots - 1)) for i in range(snapshots)}

    def capture(_pipe, step, _t, tensors):
        if step in keep:
            frames.append((tensors["latents"][0].float().cpu() / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy())
        return tensors

    pipe([labels], generator=torch.Generator().manual_seed(args.seed), callback_on_step_end=capture, **sampling_kwargs(args))
    captions = [f"step {step + 1}/{steps}" for step in sorted(keep)]
    grid = image_grid(np.stack(frames), columns=len(frames), captions=captions, scale=display_scale(frames[0].shape[0]))
    title = textwrap.wrap(f"{', '.join(labels)}: noise -> image ({steps} steps)", width=max(10, grid.width // 6))
    canvas = Image.new("RGB", (grid.width, grid.height + 12 * len(title) + 2), "white")
    canvas.paste(grid, (0, 12 * len(title) + 2))
    ImageDraw.Draw(canvas).multiline_text((2, 1), "\n".join(title), fill="black", spacing=1)
    return canvas


def eta_study(args, evaluator, conditions, out: Path) -> list[dict]:
    """DDIM at each eta from the same initial noises (per seed), scored on ``conditions``; the grid shows the first
    8 conditions of the first seed, a row per eta."""
    pipe = load_pipeline(args.pipeline, "ddim", args.device)
    rows, grid_rows = [], []
    for eta in ETAS:
        accuracies = []
        for k in range(args.num_seeds):
            latents = initial_noise(pipe, len(conditions), args.seed + k)
            images, _ = generate(pipe, conditions, args.seed + k, args.batch_size, latents, **sampling_kwargs(args, eta=eta))
            accuracies.append(score(evaluator, images, conditions)["accuracy"])
            if k == 0:
                grid_rows.append(images[:8])
        rows.append({"eta": eta, "accuracy": mean_std(accuracies)})
    # every image names its eta; the first row also its condition (the same in every row of a column)
    captions = [f"eta {eta:g}" + ("\n" + "\n".join(c) if eta == ETAS[0] else "") for eta in ETAS for c in conditions[:8]]
    grid = np.concatenate(grid_rows)
    image_grid(grid, columns=len(grid_rows[0]), captions=captions, scale=display_scale(grid.shape[1])).save(out / "eta.png")
    return rows


def interpolation_study(args, evaluator, conditions, out: Path) -> dict:
    """Between two initial noises per condition, spherically (slerp) and linearly, at evenly spaced points: the
    accuracy at each point on ``conditions``, and a strip of ``args.example`` (a row per path)."""
    pipe = load_pipeline(args.pipeline, args.scheduler, args.device)
    alphas = [i / (INTERPOLATION_POINTS - 1) for i in range(INTERPOLATION_POINTS)]
    start, end = initial_noise(pipe, len(conditions), args.seed), initial_noise(pipe, len(conditions), args.seed + 1)
    example_start, example_end = initial_noise(pipe, 1, args.seed + 2), initial_noise(pipe, 1, args.seed + 3)
    paths = {"slerp": slerp, "lerp": lambda a, b, alpha: (1 - alpha) * a + alpha * b}
    results, strip = {}, []
    for name, mix in paths.items():
        for alpha in alphas:
            images, _ = generate(pipe, conditions, args.seed, args.batch_size, mix(start, end, alpha), **sampling_kwargs(args))
            results.setdefault(name, []).append({"alpha": alpha, "accuracy": score(evaluator, images, conditions)["accuracy"]})
        path = torch.cat([mix(example_start, example_end, alpha) for alpha in alphas])  # the strip in one batch
        strip.append(generate(pipe, [args.example] * len(alphas), args.seed, args.batch_size, path, **sampling_kwargs(args))[0])
    captions = [f"{name} {alpha:.2f}" for name in paths for alpha in alphas]
    frames = np.concatenate(strip)
    image_grid(frames, columns=len(alphas), captions=captions, scale=display_scale(frames.shape[1])).save(out / "interpolation.png")
    return results


def sweep(args, evaluator, conditions) -> list[dict]:
    rows = []
    for name, steps, guidance in itertools.product(args.sweep_schedulers.split(","), map(int, args.sweep_steps.split(",")),
                                                   map(float, args.sweep_guidance.split(","))):
        pipe = load_pipeline(args.pipeline, name, args.device)
        images, seconds = generate(pipe, conditions, args.seed, args.batch_size,
                                   **sampling_kwargs(args, num_inference_steps=steps, guidance_scale=guidance))
        rows.append({"scheduler": name, "steps": steps, "guidance_scale": guidance,
                     "accuracy": score(evaluator, images, conditions)["accuracy"], "seconds_per_image": seconds})
    return rows


def sweep_plot(rows: list[dict], path: Path) -> None:
    """Accuracy against steps, one line per scheduler and guidance scale (drawn with PIL: no plotting dependency)."""
    width, height, margin = 560, 360, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    steps = sorted({r["steps"] for r in rows})
    x = {s: margin + i * (width - 2 * margin) / max(len(steps) - 1, 1) for i, s in enumerate(steps)}
    y = lambda acc: height - margin - acc * (height - 2 * margin)  # noqa: E731
    draw.line([(margin, margin), (margin, height - margin), (width - margin, height - margin)], fill="black")
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        draw.text((5, y(tick) - 6), f"{tick:.2f}", fill="black")
    for s in steps:
        draw.text((x[s] - 6, height - margin + 5), str(s), fill="black")
    draw.text((width // 2 - 40, height - 20), "sampling steps", fill="black")
    colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]
    series = sorted({(r["scheduler"], r["guidance_scale"]) for r in rows})
    for i, key in enumerate(series):
        points = sorted((r["steps"], r["accuracy"]) for r in rows if (r["scheduler"], r["guidance_scale"]) == key)
        color = colors[i % len(colors)]
        draw.line([(x[s], y(a)) for s, a in points], fill=color, width=2)
        draw.text((width - margin - 110, margin + 12 * i), f"{key[0]} w={key[1]:g}", fill=color)
    image.save(path)


def reference(references: dict, kind: str) -> str:
    """A reference row's accuracy for the report, or "n/a" where there is none (the renderer draws i-CLEVR only)."""
    return f"{references[kind]['accuracy']:.3f}" if kind in references else "n/a"


def write_report(out: Path, args, results: dict, sweep_rows: list[dict], studies: dict, layouts: dict | None = None,
                 panel: dict | None = None) -> None:
    sampling = (f"Sampler {args.sampler}, {args.num_inference_steps} steps, guidance {args.guidance_scale}" if not args.one_step
                else "A GAN generator (one forward pass: no sampler, steps or guidance)")
    if args.best_of > 1:
        sampling += (f", best of {args.best_of} candidates per condition by the model's lift score ({args.lift_timesteps} "
                     "noise levels; s/image includes every candidate and the scoring)")
    lines = [f"# Evaluation of `{args.pipeline}`", "",
             f"{sampling}, {args.num_seeds} seeds; evaluator `{args.evaluator}`. Condition sets: "
             + ", ".join(f"`{path}`" for path in args.conditions_json) + ".", "",
             "| set | model accuracy (mean ± std) | exact-set | rendered (ceiling) | empty floor | noise | s/image |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        ref = r["references"]
        lines.append(f"| {name} | {r['accuracy']['mean']:.3f} ± {r['accuracy']['std']:.3f} | "
                     f"{r['exact_set_accuracy']['mean']:.3f} | {reference(ref, 'rendered')} | "
                     f"{reference(ref, 'floor')} | {reference(ref, 'noise')} | {r['seconds_per_image']:.3f} |")
    lines += ["", "By number of objects (model accuracy, mean over seeds):", ""]
    for name, r in results.items():
        parts = ", ".join(f"{n} object(s): {v['mean']:.3f}" for n, v in sorted(r["accuracy_by_num_objects"].items()))
        lines.append(f"- {name}: {parts}")
    lines += ["", "Missed labels by kind, over all seeds (colour: the object's shape drawn in another colour; shape: its "
              "colour on another shape; object: neither, a different object or none):", ""]
    for name, r in results.items():
        lines.append(f"- {name}: " + ", ".join(f"{kind} {count}" for kind, count in r["misses"].items()))
    if panel:
        lines += ["", "## Panel", "", f"Pictures drawn by models trained on the real i-CLEVR images (`{args.panel_dir}`), read by this "
                  "evaluator beside the figure the course's own evaluator gave them (each in its author's metric): how far "
                  "this evaluator, and so the figures above, are from the course's.", "", panel_table(panel)]
    if layouts:
        lines += ["", "## Layouts", "", "A layout model learns from the renderer's object positions (each object's box in the image). "
                  "Here each condition is sampled at a layout drawn from the model's own prior (seeded, as a user would give "
                  "one); each object is then kept alone in its box, the rest replaced by the empty floor, and the evaluator "
                  "must read its label there. Rendered: the renderer's scenes cut at their true boxes (the ceiling); chance: "
                  "the same images cut at another condition's boxes.", "",
                  "| set | objects | read in their boxes (mean ± std) | chance (other boxes) | rendered (ceiling) |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {name} | {r['objects']} | {r['obeyed']['mean']:.3f} ± {r['obeyed']['std']:.3f} | "
                  f"{r['chance']['mean']:.3f} | {r['rendered']:.3f} |" for name, r in layouts.items()]
        lines += [""] + [f"![layouts {name}](layouts_{name}.png)" for name in layouts]
    for name in results:
        lines += ["", f"## {name}", "", f"![{name}](grid_{name}.png)"]
    if not args.one_step:
        lines += ["", "## Denoising process", "", "![denoising](denoising.png)"]
    if sweep_rows:
        lines += ["", "## Sweep", "", "| scheduler | steps | guidance | accuracy | s/image |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['scheduler']} | {r['steps']} | {r['guidance_scale']:g} | {r['accuracy']:.3f} | {r['seconds_per_image']:.3f} |" for r in sweep_rows]
        lines += ["", "![sweep](sweep.png)"]
    first = Path(args.conditions_json[0]).name
    if "eta" in studies:
        lines += ["", "## DDIM eta", "", f"The same initial noises sampled with DDIM at each eta ({args.num_inference_steps} steps, "
                  f"guidance {args.guidance_scale:g}); accuracy on `{first}` over {args.num_seeds} seeds.", "",
                  "| eta | accuracy (mean ± std) |", "| --- | --- |"]
        lines += [f"| {r['eta']:g} | {r['accuracy']['mean']:.3f} ± {r['accuracy']['std']:.3f} |" for r in studies["eta"]]
        lines += ["", "![eta](eta.png)"]
    if "interpolation" in studies:
        paths = studies["interpolation"]
        lines += ["", "## Noise interpolation", "", f"Two initial noises per condition of `{first}`, mixed along a great circle "
                  "(slerp) or a straight line (lerp); accuracy at each point (seed 0). The strip: "
                  f"{', '.join(args.example)}.", "", "| path | " + " | ".join(f"{r['alpha']:.2f}" for r in paths["slerp"]) + " |",
                  "| --- |" + " --- |" * len(paths["slerp"])]
        lines += [f"| {name} | " + " | ".join(f"{r['accuracy']:.3f}" for r in rows) + " |" for name, rows in paths.items()]
        lines += ["", "![interpolation](interpolation.png)"]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(args.pipeline, args.scheduler, args.device)
    args.one_step = is_one_step(pipe)
    if args.one_step and (args.sweep or args.eta_study or args.best_of > 1):
        raise ValueError(f"{args.pipeline} is a GAN generator: it has no sampler to sweep, no DDIM eta and no denoising lift "
                         "to rank by; drop --sweep, --eta_study and --best_of.")
    args.sampler = "one-step GAN generator" if args.one_step else type(pipe.scheduler).__name__  # named in the report and metrics.json
    if not args.one_step:  # the pipeline's default call unless the flags say otherwise, so the report samples as validated
        args.num_inference_steps = args.num_inference_steps or pipe.config.default_num_inference_steps
        args.guidance_scale = pipe.config.default_guidance_scale if args.guidance_scale is None else args.guidance_scale
    evaluator = Evaluator.from_pretrained(args.evaluator, device=args.device)
    if evaluator.vocab.labels != pipe.vocab.labels:
        raise ValueError(f"The evaluator scores {len(evaluator.vocab)} labels ({', '.join(evaluator.vocab.labels[:4])}, ...) and "
                         f"the pipeline draws {len(pipe.vocab)} ({', '.join(pipe.vocab.labels[:4])}, ...): score a pipeline "
                         "with an evaluator trained on the same vocabulary.")
    condition_sets = {path: load_conditions(path, pipe.vocab) for path in args.conditions_json}
    first = condition_sets[args.conditions_json[0]]
    args.example = DENOISING_EXAMPLE if pipe.vocab.labels == LABELS else first[0]  # drawn in the figures
    results = {Path(path).stem: {"conditions_json": str(path)} | evaluate_set(pipe, evaluator, Path(path).stem, conditions, args, out)
               for path, conditions in condition_sets.items()}
    layouts = {}
    if getattr(pipe, "uses_layouts", False):
        for path, conditions in condition_sets.items():
            layouts[Path(path).stem] = layout_obedience(pipe, evaluator, conditions, [args.seed + k for k in range(args.num_seeds)],
                                                        args.batch_size, **sampling_kwargs(args))
            layout_figure(*layouts[Path(path).stem].pop("first")).save(out / f"layouts_{Path(path).stem}.png")
    if not args.one_step:  # a GAN has no denoising process to draw
        denoising_figure(pipe, args.example, args).save(out / "denoising.png")
    sweep_rows = []
    if args.sweep:
        sweep_rows = sweep(args, evaluator, first)
        sweep_plot(sweep_rows, out / "sweep.png")
    studies = {}
    if args.eta_study:
        studies["eta"] = eta_study(args, evaluator, first, out)
    if args.interpolation_study:
        studies["interpolation"] = interpolation_study(args, evaluator, first, out)
    panel = read_panel(evaluator, args.panel_dir) if args.panel_dir else None
    metrics = {"args": vars(args), "sets": results, "layouts": layouts, "sweep": sweep_rows, "studies": studies, "panel": panel}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_report(out, args, results, sweep_rows, studies, layouts, panel)
    for name, r in results.items():
        print(f"{name}: accuracy {r['accuracy']['mean']:.3f} ± {r['accuracy']['std']:.3f} "
              f"(rendered {reference(r['references'], 'rendered')}, floor {reference(r['references'], 'floor')}, "
              f"noise {reference(r['references'], 'noise')})")
    if panel:
        print(f"panel: mean gap to the course evaluator {panel['mean_gap']:+.3f} (mean abs {panel['mean_abs_gap']:.3f}, "
              f"max abs {panel['max_abs_gap']:.3f}, {len(panel['rows'])} sets)")
    for name, r in layouts.items():
        print(f"{name}: objects read in their boxes {r['obeyed']['mean']:.3f} ± {r['obeyed']['std']:.3f} "
              f"(chance {r['chance']['mean']:.3f}, rendered {r['rendered']:.3f})")
    return metrics


if __name__ == "__main__":
    run(main)  # the project's own errors as one line (iclevr.cli)
