# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Publishing a trained pipeline: its model card, built with huggingface_hub's `ModelCard` (Hub metadata, how to load
it, the accuracy as a ``model-index`` entry, samples and the training figures), and the upload of the folder without
anything of the run. Shared by the diffusion and the GAN trainer, each with its own card template."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline_iclevr import LABELS, HubUploadError, LabelVocabulary

# How the model card shows each figure of the training summary (a dict of numbers, also saved as train_summary.json).
CARD_FIGURES = {
    "steps": ("steps", "{}"), "final_loss": ("final loss", "{:.4f}"),
    "final_loss_discriminator": ("final discriminator loss", "{:.4f}"),
    "final_loss_generator": ("final generator loss", "{:.4f}"), "images_seen": ("images seen (this run)", "{}"),
    "images_per_second": ("images/s", "{:.1f}"), "seconds_per_step": ("seconds per step", "{:.3f}"),
    "minutes": ("minutes", "{:.1f}"), "training_minutes": ("training minutes (validation excluded)", "{:.1f}"),
    "parameters_millions": ("parameters (millions)", "{:.2f}"),
    "generator_parameters_millions": ("generator parameters (millions)", "{:.2f}"),
    "discriminator_head": ("discriminator head", "{}"), "resolution": ("resolution", "{}"),
    "mixed_precision": ("mixed precision", "{}"), "processes": ("processes", "{}"),
}
PIPELINE_TAG = "text-to-image"
# What every card ends with, after its own introduction and usage: the accuracy, the samples, the training figures.
CARD_TAIL = """{{ accuracy }}
## Samples

{{ samples }}
## Training

| figure | value |
| --- | --- |
{{ figures }}
"""
HUB_IGNORE = ["checkpoint-*", "logs/*", "validation/*", "*.partial/*"]  # the pipeline and its card, nothing of the run


def card_rows(summary: dict) -> list[str]:
    """Markdown table rows of a training summary: its figures, then the last validation's."""
    rows = [f"| {label} | {fmt.format(summary[key])} |" for key, (label, fmt) in CARD_FIGURES.items()
            if summary.get(key) is not None]
    for key, value in summary.get("validation", {}).items():
        if key == "conditions_json":  # the file's name: its local path means nothing on the Hub
            rows.append(f"| validation conditions | `{Path(value).name}` |")
        elif key != "step":
            rows.append(f"| validation {key} | {value:.4f} |" if isinstance(value, float) else f"| validation {key} | {value} |")
    return rows


def describe_data(vocab: LabelVocabulary) -> tuple[str, str, list[str]]:
    """What a card says the model draws, an example ``labels`` argument, and the Hub ``datasets`` entry."""
    if vocab.labels == LABELS:
        return ("i-CLEVR scenes (1-3 objects, 24 labels = 8 colours x 3 shapes)",
                '[["red sphere", "cyan cube"], ["gray cylinder"]]', ["i-clevr"])
    shown = ", ".join(vocab.labels[:6]) + (", ..." if len(vocab) > 6 else "")
    return f"images with {len(vocab)} labels ({shown})", json.dumps([[vocab.labels[0]], [vocab.labels[-1]]]), []


def write_card(args, summary: dict, vocab: LabelVocabulary, template: str, kind: str, tag: str, sampling: str,
               folder: Path, samples: bool, **fields) -> None:
    """``folder/README.md``: ``template`` (a `ModelCard` template) filled with the title, the data, an example call,
    the last validation's accuracy (measured with ``sampling``), ``samples.png`` when ``samples`` and the training
    figures; the Hub metadata carry the library, tags, ``inference: false``, the dataset and a ``model-index`` entry
    of that accuracy. The ``pipeline_tag`` is text-to-image: the Hub has no class-conditional task, and a call takes
    label names."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    data, example, datasets = describe_data(vocab)
    validation = summary.get("validation", {})
    seeds = f"{args.validation_num_seeds} seed(s)"
    eval_results, accuracy = None, ""
    if "accuracy" in validation:
        conditions = Path(validation["conditions_json"]).name
        eval_results = [EvalResult(
            task_type=PIPELINE_TAG, dataset_type=datasets[0] if datasets else "imagefolder",
            dataset_name=f"{'i-CLEVR ' if datasets else ''}{conditions}", metric_type="accuracy",
            metric_value=round(validation["accuracy"], 4), metric_name=f"course accuracy ({sampling}, {seeds})")]
        spread = f" ± {validation['accuracy_std']:.3f}" if "accuracy_std" in validation else ""
        accuracy = (f"## Accuracy\n\n{validation['accuracy']:.3f}{spread} on `{conditions}` (the course metric, {seeds}), "
                    f"{sampling}.\n\n")
    title = args.hub_model_id or f"{'i-CLEVR ' if datasets else ''}{kind}"
    card_data = ModelCardData(library_name="diffusers", license="apache-2.0", pipeline_tag=PIPELINE_TAG,
                              tags=["diffusers", "class-conditional", tag, *datasets], datasets=datasets or None,
                              model_name=title, eval_results=eval_results, inference=False)
    card = ModelCard.from_template(card_data, template_str=template, title=title, repo=card_repo(args),
                                   data=data, example=example, accuracy=accuracy,
                                   samples="![samples](samples.png)\n" if samples else "",
                                   measured=bool(accuracy), figures="\n".join(card_rows(summary)), **fields)
    card.save(Path(folder) / "README.md")


def card_repo(args) -> str:
    """What the card's usage snippet loads: the Hub repository, else the output folder as given (a relative path), or
    its name where it was given as an absolute path (which means nothing on another machine)."""
    if args.hub_model_id:
        return args.hub_model_id
    return args.output_dir if not Path(args.output_dir).is_absolute() else Path(args.output_dir).name


def push_to_hub(args) -> str:
    """Create the Hub repository and upload the saved pipeline folder (checkpoints and logs excluded).

    Raises:
        HubUploadError: the Hub or the connection failed; the message names the repository and the command that
            uploads the (complete, loadable) folder again.
    """
    from huggingface_hub import HfApi

    try:
        api = HfApi(token=args.hub_token)
        repo_id = api.create_repo(args.hub_model_id, exist_ok=True, private=args.hub_private_repo).repo_id
        api.upload_folder(repo_id=repo_id, folder_path=args.output_dir, commit_message="Upload the pipeline",
                          ignore_patterns=list(HUB_IGNORE))  # upload_folder extends the list it is given
    except Exception as error:  # any failure of the Hub client (HTTP 5xx, a dropped connection, ...) at this boundary
        excludes = " ".join(f'--exclude "{pattern}"' for pattern in HUB_IGNORE)
        raise HubUploadError(args.hub_model_id, error, f"the pipeline in {args.output_dir} is saved and loads; run "
                             f"`hf upload {args.hub_model_id} {args.output_dir} . {excludes}`") from error
    return repo_id
