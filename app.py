# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""A Gradio demo page for a trained `ICLEVRPipeline`: build a condition of 1-3 objects, sample, see the images.

    python app.py [--pipeline outputs/main/pipeline] [--evaluator EVALUATOR_DIR]

Each object is a colour and a shape; objects 2 and 3 may be left out. With a layout model, "Place the objects" puts
each one where its sliders say (its centre, left to right and back to front, and a small or large box), the
pipeline's ``layouts`` argument; otherwise each image's layout is drawn from the model's training layouts. Guidance,
sampling steps, the number of images and the seed are the pipeline call's own arguments. With an evaluator (a folder saved by ``train_evaluator.py``;
the main job's is found through its ``main_job.json``), each image is captioned with the labels the evaluator reads
on it (its top k for a k-object condition, as the course metric counts them), and misses are marked.

The page needs only this file, ``pipeline_iclevr.py`` and the packages of ``requirements-app.txt``, so it also runs
as a Hugging Face Space: put this file in a saved pipeline folder (which already holds ``pipeline_iclevr.py``), with
``requirements-app.txt`` as its ``requirements.txt``; with no ``--pipeline`` it loads ``$ICLEVR_PIPELINE``, else
the folder it sits in when that holds ``model_index.json``, else the pipeline that ships in ``pretrained/iclevr-ddpm``
(the main job's, so a clone serves a trained model at once).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import gradio as gr
import torch

from iclevr.argtypes import port, positive_int
from iclevr.cli import run
from iclevr.evaluator import shipped_evaluator
from pipeline_iclevr import ICLEVRPipeline

SHIPPED_PIPELINE = Path(__file__).resolve().parent / "pretrained" / "iclevr-ddpm"
MAX_OBJECTS = 3  # i-CLEVR scenes hold 1-3 objects
MAX_IMAGES = 8
NONE = "(none)"
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit seed; the page keeps to the non-negative half
# Shown unsmoothed and enlarged: the pipeline draws 32x32 or 64x64 images.
CSS = "#gallery img { image-rendering: pixelated; }"


def default_pipeline() -> str:
    """Where the page looks for a pipeline when ``--pipeline`` is not given (see the module docstring)."""
    if os.environ.get("ICLEVR_PIPELINE"):
        return os.environ["ICLEVR_PIPELINE"]
    here = Path(__file__).resolve().parent
    return str(here) if (here / "model_index.json").is_file() else str(SHIPPED_PIPELINE)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve a demo page for a trained ICLEVRPipeline.")
    parser.add_argument("--pipeline", type=str, default=None,
                        help="Saved pipeline folder or Hub id (default: $ICLEVR_PIPELINE, this file's folder if it holds a "
                             "pipeline, else the shipped pretrained/iclevr-ddpm; the main job's own is outputs/main/pipeline).")
    parser.add_argument("--evaluator", type=str, default=None,
                        help="Evaluator folder (train_evaluator.py's) to caption each image with the labels it reads "
                             "(default: the one the main job's main_job.json names, else the shipped pretrained/evaluator).")
    parser.add_argument("--host", type=str, default=None, help="Address to serve on (default: Gradio's, 127.0.0.1 or $GRADIO_SERVER_NAME).")
    parser.add_argument("--port", type=port, default=None, help="Port to serve on (default: Gradio's, 7860 or $GRADIO_SERVER_PORT).")
    parser.add_argument("--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu", help="Device to sample on.")
    parser.add_argument("--concurrency_limit", type=positive_int, default=1,
                        help="Requests sampled at once. 1: on a CPU one sampling already uses every core, and two at once "
                             "each take twice as long.")
    parser.add_argument("--max_queue", type=positive_int, default=16,
                        help="Requests that may wait; one more is told the page is busy and to retry, instead of waiting "
                             "without limit (16 of the shipped model's ~4 s calls on 2 CPU cores: about a minute's wait).")
    args = parser.parse_args(argv)
    args.pipeline = args.pipeline or default_pipeline()
    local = Path(args.pipeline)
    if (local.exists() or args.pipeline.startswith((".", "/"))) and not (local / "model_index.json").is_file():
        parser.error(f"--pipeline {args.pipeline} is not a saved pipeline folder (no model_index.json). Train one first "
                     "(python main_job.py, or train_conditional_ddpm.py) or pass --pipeline DIR.")
    if args.evaluator is None:
        args.evaluator = main_job_evaluator(local) or (str(shipped_evaluator()) if shipped_evaluator() else None)
    elif not (Path(args.evaluator) / "config.json").is_file():
        parser.error(f"--evaluator {args.evaluator} is not an evaluator folder (no config.json); train_evaluator.py saves one.")
    return args


def main_job_evaluator(pipeline: Path) -> str | None:
    """The evaluator that ``main_job.json`` beside a main job's pipeline names, if it is still there."""
    record = pipeline.parent / "main_job.json"
    if not record.is_file():
        return None
    folder = json.loads(record.read_text()).get("evaluator")
    return folder if folder and (Path(folder) / "config.json").is_file() else None


def colours_and_shapes(labels) -> tuple[list[str], list[str]]:
    """The colours and shapes of a ``"<colour> <shape>"`` vocabulary, in its order; a vocabulary of other labels is refused."""
    pairs = [label.split(" ", 1) for label in labels]
    colours = list(dict.fromkeys(pair[0] for pair in pairs))
    shapes = list(dict.fromkeys(pair[-1] for pair in pairs))
    if any(len(pair) != 2 for pair in pairs) or len(colours) * len(shapes) != len(labels):
        raise ValueError("This page builds conditions as colour x shape; the pipeline's labels are not of that form: "
                         f"{', '.join(labels[:6])}...")
    return colours, shapes


def read_condition(slots) -> list[str]:
    """The condition of the page's (colour, shape) choices, object by object; half-filled objects are refused."""
    labels = []
    for number, (colour, shape) in enumerate(slots, start=1):
        if (colour == NONE) != (shape == NONE):
            raise gr.Error(f"Object {number} has a {'shape' if colour == NONE else 'colour'} but no "
                           f"{'colour' if colour == NONE else 'shape'}: pick both, or neither to leave it out.")
        if colour != NONE:
            labels.append(f"{colour} {shape}")
    if not labels:
        raise gr.Error("The condition is empty: pick a colour and a shape for at least one object.")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise gr.Error(f"{', '.join(duplicates)} is asked for twice: each label may appear once in an i-CLEVR scene. "
                       "Change one of the objects.")
    return labels


def read_seed(seed) -> int:
    """The page's seed as the generator's: a whole number in 0..2^63-1, else a message on the page."""
    if seed is None or isinstance(seed, bool) or not isinstance(seed, (int, float)) or seed != seed:
        raise gr.Error(f"The seed must be a whole number from 0 to {MAX_SEED}; got {seed!r}.")
    if isinstance(seed, float) and not seed.is_integer():
        raise gr.Error(f"The seed must be a whole number from 0 to {MAX_SEED}; got {seed}.")
    if not 0 <= int(seed) <= MAX_SEED:
        raise gr.Error(f"The seed must be a whole number from 0 to {MAX_SEED} (2^63 - 1); got {int(seed)}. Pick a smaller one.")
    return int(seed)


def box_sizes(prior: dict) -> dict[str, tuple[float, float]]:
    """A small and a large box's (width, height): the lower and upper quartiles of the prior's training boxes."""
    boxes = [box for layouts in prior.values() for layout in layouts for box in layout]
    widths = statistics.quantiles([b[2] - b[0] for b in boxes], n=4)
    heights = statistics.quantiles([b[3] - b[1] for b in boxes], n=4)
    return {"small": (widths[0], heights[0]), "large": (widths[2], heights[2])}


def centred_box(x: float, y: float, size: tuple[float, float]) -> list[float]:
    """The box of ``size`` (width, height) centred on (x, y), moved inside the image."""
    width, height = size
    x0 = min(max(x - width / 2, 0.0), 1.0 - width)
    y0 = min(max(y - height / 2, 0.0), 1.0 - height)
    return [round(x0, 4), round(y0, 4), round(x0 + width, 4), round(y0 + height, 4)]


class Demo:
    """The loaded pipeline (and evaluator), once per server, and the page's one action: sample a condition."""

    def __init__(self, pipeline: str, evaluator: str | None = None, device: str = "cpu"):
        self.pipe = ICLEVRPipeline.from_pretrained(pipeline).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.colours, self.shapes = colours_and_shapes(self.pipe.vocab.labels)
        self.box_sizes = box_sizes(self.pipe.config.layout_prior) if self.pipe.config.layout_prior else None
        self.reader = None
        if evaluator:
            from transformers import AutoImageProcessor, ResNetForImageClassification
            from transformers import pipeline as hf_pipeline

            # Loaded in float32 whatever the file holds: the shipped evaluator is saved in half precision.
            model = ResNetForImageClassification.from_pretrained(evaluator).float()
            self.reader = hf_pipeline("image-classification", model=model, image_processor=AutoImageProcessor.from_pretrained(evaluator),
                                      device=device)

    def caption(self, image, condition: list[str]) -> str:
        """What the evaluator reads on an image: its top len(condition) labels, each missed label marked."""
        if self.reader is None:
            return ", ".join(condition)
        read = [r["label"] for r in self.reader(image, top_k=len(condition))]
        missed = [label for label in condition if label not in read]
        verdict = "all read" if not missed else "missed: " + ", ".join(f"✗ {label}" for label in missed)
        return f"read: {', '.join(read)} — {verdict}"

    def summary(self, captions: list[str]) -> str:
        """The evaluator's readings as a list under the gallery, where no caption is cut short ("" without one)."""
        if self.reader is None:
            return ""
        whole = sum(caption.endswith("all read") for caption in captions)
        lines = [f"**The evaluator read every object on {whole} of {len(captions)} images.**", ""]
        return "\n".join(lines + [f"{i}. {caption}" for i, caption in enumerate(captions, start=1)])

    def layout(self, slots, placements) -> list[dict]:
        """The layout of the page's placement controls: (x, y, size) per filled object slot."""
        return [{"label": f"{colour} {shape}", "box": centred_box(float(x), float(y), self.box_sizes[size])}
                for (colour, shape), (x, y, size) in zip(slots, placements) if colour != NONE]

    def generate(self, *values, progress=gr.Progress()):  # noqa: B008 (Gradio fills a Progress default with its tracker)
        """Gradio's handler: (colour, shape) per object, for a layout model whether to place them and (x, y, size)
        per object, then guidance, steps, images, seed → captioned images and the evaluator's readings."""
        slots = list(zip(values[0 : 2 * MAX_OBJECTS : 2], values[1 : 2 * MAX_OBJECTS : 2], strict=True))
        rest = values[2 * MAX_OBJECTS :]
        layouts = None
        if self.pipe.uses_layouts:
            place, flat, rest = rest[0], rest[1 : 1 + 3 * MAX_OBJECTS], rest[1 + 3 * MAX_OBJECTS :]
            placements = list(zip(flat[0::3], flat[1::3], flat[2::3], strict=True))
        guidance, steps, count, seed = rest
        condition = read_condition(slots)
        seed = read_seed(seed)
        if self.pipe.uses_layouts and place:
            layouts = [self.layout(slots, placements)]
        steps, count = int(steps), int(count)

        def report(pipe, step, timestep, tensors):
            progress((step + 1, steps), desc="Sampling")
            return tensors

        try:
            images = self.pipe([condition], layouts=layouts, num_inference_steps=steps, guidance_scale=float(guidance),
                               num_images_per_prompt=count, generator=torch.Generator().manual_seed(seed),
                               callback_on_step_end=report).images
        except ValueError as error:  # the pipeline's check_inputs: the problem and the fix, shown on the page
            raise gr.Error(str(error)) from error
        captions = [self.caption(image, condition) for image in images]
        return list(zip(images, captions, strict=True)), self.summary(captions)


def build_page(demo: Demo) -> gr.Blocks:
    """The page: an object row each (colour, shape), the sampling settings, a generate button and a gallery."""
    height, width = demo.pipe.image_size
    with gr.Blocks(title="i-CLEVR diffusion") as page:
        gr.Markdown(f"# i-CLEVR class-conditional diffusion\nPick 1-{MAX_OBJECTS} objects; the model draws a {width}x{height} "
                    "scene holding them." + (" The evaluator's reading is under each image." if demo.reader else ""))
        choices, placement = [], []
        if demo.pipe.uses_layouts:
            placement.append(gr.Checkbox(False, label="Place the objects (else each image's layout is drawn from the "
                                                      "model's training layouts)", elem_id="place"))
        with gr.Row():
            for number in range(1, MAX_OBJECTS + 1):
                with gr.Column(min_width=200):
                    gr.Markdown(f"**Object {number}**" + ("" if number == 1 else " (optional)"))
                    colour = gr.Radio([NONE, *demo.colours], value=demo.colours[1] if number == 1 else NONE, label="colour",
                                      elem_id=f"colour-{number}")
                    shape = gr.Radio([NONE, *demo.shapes], value=demo.shapes[1] if number == 1 else NONE, label="shape",
                                     elem_id=f"shape-{number}")
                    choices += [colour, shape]
                    if demo.pipe.uses_layouts:
                        placement += [gr.Slider(0, 1, value=number / (MAX_OBJECTS + 1), step=0.05, label="x (left → right)",
                                                elem_id=f"x-{number}"),
                                      gr.Slider(0, 1, value=0.5, step=0.05, label="y (back → front)", elem_id=f"y-{number}"),
                                      gr.Radio(["small", "large"], value="large", label="size", elem_id=f"size-{number}")]
        with gr.Row():
            # The pipeline's default call (the steps and guidance it was validated with) is where the sliders start.
            guidance = gr.Slider(0, 8, value=demo.pipe.config.default_guidance_scale, step=0.5, label="guidance scale",
                                 elem_id="guidance")
            steps = gr.Slider(1, 100, value=demo.pipe.config.default_num_inference_steps, step=1, label="sampling steps",
                              elem_id="steps")
            count = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="images", elem_id="count")
            seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
        button = gr.Button("Generate", variant="primary", elem_id="generate")
        gallery = gr.Gallery(label="samples", columns=4, height="auto", format="png", elem_id="gallery")
        readings = gr.Markdown(elem_id="readings")
        button.click(demo.generate, inputs=[*choices, *placement, guidance, steps, count, seed], outputs=[gallery, readings])
    return page


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    page = build_page(Demo(args.pipeline, args.evaluator, args.device))
    # A bounded queue: a user past it gets Gradio's "Queue is full, please try again" instead of an endless wait.
    # show_error: any other failure reaches the page as its own message, not Gradio's generic line.
    page.queue(max_size=args.max_queue, default_concurrency_limit=args.concurrency_limit)
    page.launch(server_name=args.host, server_port=args.port, css=CSS, show_error=True)


if __name__ == "__main__":
    run(main)  # the project's own errors as one line (iclevr.cli)
