# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Loading i-CLEVR data into a `datasets.Dataset`, shared by the trainers, the evaluator and the renderer's tests.

Two layouts are supported, both ending in the same columns:

- the course's i-CLEVR layout: a folder of PNGs plus ``train.json`` (``{"CLEVR_train_000001_0.png": ["red sphere"]}``);
- a Hub-style image folder (or Hub dataset) whose ``metadata.jsonl`` has a ``file_name`` and a list of label names.

Columns: ``image`` (uint8, ``(resolution, resolution, 3)``, decoded and resized once, then cached on disk so later
epochs and later runs do no PNG decoding), ``labels`` (float32 multi-hot over the vocabulary), ``label_names``
(canonical names) and ``file_name``.

The label vocabulary comes from the data (`iclevr.labels.dataset_vocabulary` reads it back from a loaded dataset):
the folder's ``objects.json`` when it has one, else a Hub dataset's ``ClassLabel`` names, else the label names the
data uses (`iclevr.labels`). Decoding is `iclevr.images`'. Both layouts end in the same steps (`decode_labelled`).

Run as a module to prepare (decode + cache) a dataset and print its statistics::

    python -m iclevr.data --train_data_dir data/iclevr --resolution 64
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from iclevr.argtypes import check_output_folder, positive_int
from iclevr.images import dataset_features, decode_image_batch
from iclevr.io import read_json
from iclevr.labels import (
    BadDataError,
    dataset_vocabulary,
    parse_train_json,
    scene_id,
    summarise_problems,
    vocabulary_from_names,
    vocabulary_from_objects_json,
)
from pipeline_iclevr import LABELS, LabelVocabulary, normalize_label_name

logger = logging.getLogger(__name__)

CACHE_VERSION = "2"  # bump when the decoding or the cached columns change, so stale caches are not reused


def _finish(dataset, skip_bad_images: bool, source: str, vocab: LabelVocabulary):
    """Raise on (or, with ``skip_bad_images``, drop and report) rows whose image failed to decode or whose size
    differs from the others' (a dataset's renders share one size; an odd one out is a broken or foreign file)."""
    sizes = dataset["size"]
    common = Counter(size for size in sizes if size).most_common(1)
    errors = [
        (name, error or f"wrong size {size}: the other images are {common[0][0]} (resize it to match)")
        for name, error, size in zip(dataset["file_name"], dataset["error"], sizes)
        if error or (size and size != common[0][0])
    ]
    if errors:
        problems = [f"{name}: {error}" for name, error in errors]
        if not skip_bad_images:
            raise BadDataError(
                f"{source}: "
                + summarise_problems(problems, f"bad images out of {len(dataset)}")
                + "\nFix or remove these files, or pass --skip_bad_images to skip them (they will be listed)."
            )
        logger.warning("Skipped %s", summarise_problems(problems, f"bad images out of {len(dataset)} in {source}"))
        bad = {name for name, _ in errors}
        dataset = dataset.filter(lambda name: name not in bad, input_columns="file_name")
    dataset = dataset.remove_columns(["error", "size"])
    dataset.info.description = json.dumps({"skipped_bad_images": [name for name, _ in errors], "label2id": vocab.label2id})
    return dataset


def skipped_images(dataset) -> list[str]:
    """File names that ``--skip_bad_images`` dropped while building ``dataset``."""
    try:
        return json.loads(dataset.info.description or "{}").get("skipped_bad_images", [])
    except json.JSONDecodeError:
        return []


def default_cache_dir() -> Path:
    from datasets import config

    return Path(config.HF_DATASETS_CACHE) / "iclevr_diffusion"


def cache_root(cache_dir: str | None) -> Path:
    """The folder the CLIs cache rendered data, evaluators and latents in: ``--cache_dir``, else the default."""
    return Path(cache_dir) if cache_dir else default_cache_dir()


def check_data_source(dataset_name: str | None, train_data_dir, train_json=None) -> None:
    """Exactly one source: a Hub ``dataset_name``, or a local ``train_data_dir`` (with an optional ``train_json``)."""
    if dataset_name is not None and (train_data_dir is not None or train_json is not None):
        raise ValueError("Give either --dataset_name or --train_data_dir/--train_json, not both.")
    if dataset_name is None and train_data_dir is None:
        raise ValueError("Give --train_data_dir (i-CLEVR layout or image folder) or --dataset_name.")


def load_iclevr_folder(
    train_data_dir: str | os.PathLike,
    train_json: str | os.PathLike | None = None,
    resolution: int = 64,
    skip_bad_images: bool = False,
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
):
    """Load the course's i-CLEVR layout (PNGs in ``train_data_dir`` + ``train.json``) as a `datasets.Dataset`.

    Args:
        train_data_dir: folder holding the PNG files named in ``train_json``.
        train_json: labels file; defaults to ``train_data_dir/train.json``. If ``train_data_dir/objects.json``
            exists it is checked against the vocabulary.
        resolution: square output size; images are squashed (not cropped), like the course does.
        skip_bad_images: drop missing/unreadable/non-RGB images and log them, instead of raising.
        cache_dir: where decoded images are cached (keyed by file names, sizes, mtimes, labels and resolution).
        num_proc: processes used for decoding.
    """
    from datasets import Dataset

    if resolution < 8:
        raise ValueError(f"--resolution must be at least 8, got {resolution}.")
    data_dir = Path(train_data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"--train_data_dir {data_dir} is not a directory.")
    train_json = Path(train_json) if train_json is not None else data_dir / "train.json"
    data = read_json(train_json, "Labels file (--train_json)")
    values = data.values() if isinstance(data, dict) else []
    vocab = folder_vocabulary(data_dir, (name for labels in values if isinstance(labels, list) for name in labels))
    records = parse_train_json(data, vocab, source=str(train_json))

    paths, stats = [], []
    for file_name, _ in records:
        path = data_dir / file_name
        paths.append(str(path))
        try:
            stat = path.stat()
            stats.append(f"{stat.st_size}:{stat.st_mtime_ns}")
        except OSError:
            stats.append("missing")
    names = [labels for _, labels in records]
    fields = [CACHE_VERSION, resolution, paths, stats, names] + ([] if vocab.labels == LABELS else [vocab.label2id])
    key = hashlib.sha256(json.dumps(fields).encode("utf-8")).hexdigest()[:24]
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    table = Dataset.from_dict({"path": paths, "file_name": [file_name for file_name, _ in records], "label_names": names})
    return decode_labelled(table, "path", vocab, resolution, str(data_dir), skip_bad_images, num_proc,
                           cache_file_name=str(cache_dir / f"iclevr-{key}.arrow"), new_fingerprint=key, load_from_cache_file=True)


def load_imagefolder(
    dataset_name: str | None = None,
    train_data_dir: str | os.PathLike | None = None,
    resolution: int = 64,
    image_column: str = "image",
    label_column: str = "labels",
    skip_bad_images: bool = False,
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
    dataset_config_name: str | None = None,
):
    """Load a Hub dataset (``dataset_name``, ``dataset_config_name``) or a local image folder with ``metadata.jsonl``
    (``train_data_dir``).

    Each row needs an image and, in ``label_column``, a list of label names (or indices), e.g. a metadata.jsonl line
    ``{"file_name": "0001.png", "labels": ["red sphere", "cyan cube"]}``, or one label (single-label data: a name, or a
    Hub dataset's ``ClassLabel``). The vocabulary: the ``ClassLabel`` names, else the folder's ``objects.json``, else
    the names the rows use (see the module docstring).
    """
    from datasets import Image as ImageFeature
    from datasets import load_dataset

    check_data_source(dataset_name, train_data_dir)
    if dataset_name is not None:
        dataset = load_dataset(dataset_name, dataset_config_name, split="train", cache_dir=cache_dir)
    else:
        check_metadata_jsonl(Path(train_data_dir) / "metadata.jsonl")
        dataset = load_dataset("imagefolder", data_dir=str(train_data_dir), split="train", cache_dir=cache_dir)
    source = dataset_name or str(train_data_dir)
    for column, flag in ((image_column, "--image_column"), (label_column, "--label_column")):
        if column not in dataset.column_names:
            raise ValueError(
                f"{source} has no column {column!r} (columns: {dataset.column_names}); set {flag} to the right one."
            )
    dataset = dataset.cast_column(image_column, ImageFeature(decode=False))

    rows = [[labels] if isinstance(labels, (str, int)) and not isinstance(labels, bool) else labels  # single-label data
            for labels in dataset[label_column]]
    feature = dataset.features[label_column]
    class_names = getattr(getattr(feature, "feature", feature), "names", None)  # ClassLabel, or a list of them
    if class_names is not None:  # a Hub dataset's own label names: the vocabulary, in its order
        vocab = LabelVocabulary({normalize_label_name(name): i for i, name in enumerate(class_names)})
    else:
        vocab = folder_vocabulary(train_data_dir, (name for labels in rows for name in labels or []))
    problems, names = [], []
    for row, labels in enumerate(rows):
        try:
            names.append(vocab.names(labels))
        except ValueError as error:
            names.append([])
            problems.append(f"row {row}: {error}")
    if problems:
        raise BadDataError(f"{source}: " + summarise_problems(problems, "rows with invalid labels"))

    file_names = [Path(value["path"]).name if value.get("path") else f"row_{i}" for i, value in enumerate(dataset[image_column])]
    table = dataset.select_columns([image_column]).add_column("file_name", file_names).add_column("label_names", names)
    return decode_labelled(table, image_column, vocab, resolution, source, skip_bad_images, num_proc)


def check_metadata_jsonl(path: Path) -> None:
    """Every line of an image folder's ``metadata.jsonl`` is a JSON object; else `BadDataError` naming the file, the
    line and the parser's reason. (datasets itself drops a metadata file it cannot read, and then reports the
    missing label column instead.)"""
    if not path.is_file():
        return
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise BadDataError(f"{path}:{number}: not valid JSON ({error.msg}: column {error.colno}); each line must be "
                               'one object such as {"file_name": "0001.png", "labels": ["red sphere"]}.') from None
        if not isinstance(row, dict):
            raise BadDataError(f"{path}:{number}: expected a JSON object with file_name and labels, got {type(row).__name__}.")


def folder_vocabulary(folder: str | os.PathLike | None, names) -> LabelVocabulary:
    """A dataset's vocabulary: its folder's ``objects.json`` when it has one, else the one the label ``names`` define."""
    if folder is not None and (Path(folder) / "objects.json").is_file():
        return vocabulary_from_objects_json(Path(folder) / "objects.json")
    return vocabulary_from_names(name for name in names if isinstance(name, str))


def decode_labelled(table, image_column: str, vocab: LabelVocabulary, resolution: int, source: str, skip_bad_images: bool,
                    num_proc: int | None, **cache):
    """Both layouts' last steps: the multi-hot ``labels`` column from ``label_names``, every image decoded at
    ``resolution`` (into ``cache``'s file, when given), and bad images raised or skipped (`_finish`)."""
    table = table.add_column("labels", [vocab.encode(names).tolist() for names in table["label_names"]])
    dataset = table.map(
        decode_image_batch,
        batched=True,
        batch_size=256,
        fn_kwargs={"resolution": resolution, "image_column": image_column},
        remove_columns=[image_column] if image_column != "image" else None,
        features=dataset_features(resolution, len(vocab)),
        num_proc=num_proc,
        desc=f"Decoding images at {resolution}x{resolution}",
        **cache,
    )
    return _finish(dataset, skip_bad_images, source, vocab)


def load_train_dataset(
    train_data_dir: str | os.PathLike | None = None,
    train_json: str | os.PathLike | None = None,
    dataset_name: str | None = None,
    **kwargs,
):
    """Dispatch on the layout: ``dataset_name`` → Hub; a folder with metadata.jsonl → imagefolder; else i-CLEVR layout."""
    check_data_source(dataset_name, train_data_dir, train_json)
    if dataset_name is not None:
        return load_imagefolder(dataset_name=dataset_name, **kwargs)
    if train_json is None and (Path(train_data_dir) / "metadata.jsonl").is_file():
        return load_imagefolder(train_data_dir=train_data_dir, **kwargs)
    for name in ("image_column", "label_column", "dataset_config_name"):  # the imagefolder layouts' own
        kwargs.pop(name, None)
    return load_iclevr_folder(train_data_dir, train_json, **kwargs)


def dataset_to_tensors(dataset, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole dataset in memory: uint8 images ``(N, H, W, 3)`` and float32 labels ``(N, 24)``.

    At 64x64 the 18,009 i-CLEVR images take 221 MB, so keeping them decoded in memory makes data loading free.
    """
    images, labels = [], []
    view = dataset.with_format("numpy", columns=["image", "labels"])
    for start in range(0, len(dataset), batch_size):
        batch = view[start : start + batch_size]
        images.append(torch.from_numpy(np.asarray(batch["image"]).astype(np.uint8)))
        labels.append(torch.from_numpy(np.asarray(batch["labels"], dtype=np.float32)))
    return torch.cat(images), torch.cat(labels)


def split_by_scene(file_names: list[str], heldout_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Row indices of a train / held-out split that keeps every scene (all its 1-, 2-, 3-object images) on one side.

    A scene's side depends only on its name and the seed, so the split is stable as data is added.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"The held-out fraction must be in [0, 1), got {heldout_fraction}.")
    train, heldout = [], []
    for row, name in enumerate(file_names):
        digest = hashlib.sha256(f"{seed}:{scene_id(name)}".encode()).digest()
        (heldout if int.from_bytes(digest[:4], "big") < heldout_fraction * 2**32 else train).append(row)
    return train, heldout


# --- CLI ---------------------------------------------------------------------------------------------------------
def describe(dataset) -> dict:
    """Summary statistics of a loaded dataset: rows, scenes, objects per image and label frequencies."""
    objects = Counter(len(names) for names in dataset["label_names"])
    labels = Counter(name for names in dataset["label_names"] for name in names)
    return {
        "rows": len(dataset),
        "vocabulary": list(dataset_vocabulary(dataset).labels),
        "scenes": len({scene_id(name) for name in dataset["file_name"]}),
        "objects_per_image": dict(sorted(objects.items())),
        "label_counts": dict(sorted(labels.items(), key=lambda item: -item[1])),
        "skipped_bad_images": skipped_images(dataset),
    }


def add_data_args(parser, train_data_dir_help: str = "Folder of PNGs (i-CLEVR layout with train.json, or imagefolder with metadata.jsonl).") -> None:
    """The data flags every script shares (diffusers-example names)."""
    parser.add_argument("--train_data_dir", type=str, default=None, help=train_data_dir_help)
    parser.add_argument("--train_json", type=str, default=None, help="Labels file; default TRAIN_DATA_DIR/train.json.")
    parser.add_argument("--dataset_name", type=str, default=None, help="A Hub dataset with image and label-list columns.")
    parser.add_argument("--dataset_config_name", type=str, default=None, help="The Hub dataset's configuration (default: its only one).")
    parser.add_argument("--image_column", type=str, default="image", help="Image column of an imagefolder/Hub dataset.")
    parser.add_argument("--label_column", type=str, default="labels", help="Label-list column of an imagefolder/Hub dataset.")
    parser.add_argument("--skip_bad_images", action="store_true", help="Skip and report bad images instead of failing.")
    parser.add_argument("--cache_dir", type=str, default=None, help="Where decoded images are cached (default: the datasets cache).")


def load_dataset_from_args(args: argparse.Namespace, resolution: int, train_data_dir=None, num_proc: int | None = None):
    """`load_train_dataset` driven by the flags of `add_data_args` (``train_data_dir`` overrides the flag)."""
    return load_train_dataset(
        train_data_dir=train_data_dir if train_data_dir is not None else args.train_data_dir,
        train_json=args.train_json,
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        resolution=resolution,
        image_column=args.image_column,
        label_column=args.label_column,
        skip_bad_images=args.skip_bad_images,
        cache_dir=args.cache_dir,
        num_proc=num_proc,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Decode, validate and cache an i-CLEVR dataset; print its statistics.")
    add_data_args(parser)
    parser.add_argument("--resolution", type=positive_int, default=64, help="Square size images are resized to.")
    parser.add_argument("--num_proc", type=positive_int, default=None, help="Processes used to decode images.")
    args = parser.parse_args(argv)
    check_output_folder(parser, args.cache_dir, "--cache_dir")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dataset = load_dataset_from_args(args, args.resolution, num_proc=args.num_proc)
    print(json.dumps(describe(dataset), indent=2))


if __name__ == "__main__":
    main()
