# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""The label files and the vocabulary a dataset's labels define: ``train.json`` (file → label names), test.json-style
condition lists, ``objects.json`` (checked against the course's order where it is i-CLEVR's), and the course's own
files, which ship in ``iclevr/conditions/`` (`COURSE_TEST`, `COURSE_OBJECTS`, `COURSE_TRAIN_LABELS`) beside the
project's synthetic condition sets, so nothing needs a path outside the repository.

Data whose labels are i-CLEVR's gets i-CLEVR's 24 labels in the course's order, so a misspelt i-CLEVR label is an
error, not a new label.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from iclevr.io import read_json
from pipeline_iclevr import LABELS, LabelVocabulary, normalize_label_name

CONDITIONS_DIR = Path(__file__).resolve().parent / "conditions"


COURSE_TEST = CONDITIONS_DIR / "test.json"  # the course's 32 test conditions: the headline set
COURSE_NEW_TEST = CONDITIONS_DIR / "new_test.json"  # the course's second set of 32 conditions


COURSE_OBJECTS = CONDITIONS_DIR / "objects.json"


COURSE_TRAIN_LABELS = CONDITIONS_DIR / "train.json"  # the label lists of real i-CLEVR's 18,009 training images


SYNTHETIC_TEST = CONDITIONS_DIR / "synthetic_test.json"  # unseen combinations in test.json's 1/2/3-object mix


MAX_LISTED = 10  # how many offending files an error message names before summarising


class BadDataError(ValueError):
    """Raised when a dataset has missing/unreadable images or invalid labels; the message names the files."""


def summarise_problems(problems: list[str], total_what: str) -> str:
    listed = "\n  ".join(problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return f"{len(problems)} {total_what}:\n  {listed}{more}"


def parse_train_json(data: Any, vocab: LabelVocabulary, source: str = "train.json") -> list[tuple[str, list[str]]]:
    """Validate a course-format train.json object and return ``[(file_name, canonical label names), ...]``.

    Every problem (wrong types, unknown or duplicate labels, empty lists) is collected, and one `BadDataError`
    names the offending files and their count.
    """
    if not isinstance(data, dict):
        raise BadDataError(
            f"{source} must be a JSON object mapping image file names to label lists, got {type(data).__name__}."
        )
    records, problems = [], []
    for file_name, labels in data.items():
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            problems.append(f"{file_name}: labels must be a list of label names, got {labels!r}")
            continue
        try:
            records.append((file_name, vocab.names(labels)))
        except ValueError as error:
            problems.append(f"{file_name}: {error}")
    if problems:
        raise BadDataError(f"{source}: " + summarise_problems(problems, "entries with invalid labels"))
    if not records:
        raise BadDataError(f"{source} lists no images.")
    return records


def load_conditions(path: str | os.PathLike, vocab: LabelVocabulary | None = None) -> list[list[str]]:
    """Read a course-format conditions file (test.json: a list of label lists) into canonical label names."""
    vocab = vocab or LabelVocabulary()
    data = read_json(path, "Conditions file")
    if not isinstance(data, list) or not data:
        raise BadDataError(f"{path} must be a non-empty JSON list of label lists, like the course's test.json.")
    conditions, problems = [], []
    for i, condition in enumerate(data):
        try:
            if not isinstance(condition, list):
                raise ValueError(f"expected a list of label names, got {condition!r}")
            conditions.append(vocab.names(condition))
        except ValueError as error:
            problems.append(f"condition {i}: {error}")
    if problems:
        raise BadDataError(f"{path}: " + summarise_problems(problems, "invalid conditions"))
    return conditions


def check_objects_json(path: str | os.PathLike, data: Any = None) -> None:
    """Check a user's objects.json (``data``: its contents, when already read) against the built-in vocabulary (raises
    `ValueError` on any mismatch)."""
    data = read_json(path, "objects.json") if data is None else data
    try:
        validate_objects_json(data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _mostly_iclevr(names) -> bool:
    """Whether at least half the distinct names are i-CLEVR labels or near misspellings of one: such data is i-CLEVR,
    and its other names are mistakes to report, not labels of a vocabulary of its own."""
    names = set(names)
    iclevr = [name for name in names if name in LABELS or difflib.get_close_matches(name, LABELS, n=1, cutoff=0.8)]
    return 2 * len(iclevr) >= len(names)


def vocabulary_from_objects_json(path: str | os.PathLike) -> LabelVocabulary:
    """The vocabulary an ``objects.json`` (label name → index) names: i-CLEVR's, checked against the course's order,
    when most of its names are i-CLEVR labels; else its own (names normalised, indices ``0..N-1``)."""
    data = read_json(path, "objects.json")
    if not isinstance(data, dict) or not data or not all(isinstance(name, str) for name in data):
        raise BadDataError(f"{path} must map label names to indices, like the course's objects.json.")
    if _mostly_iclevr(normalize_label_name(name) for name in data):
        check_objects_json(path, data)
        return LabelVocabulary()
    try:
        return LabelVocabulary({normalize_label_name(name): index for name, index in data.items()})
    except ValueError as error:
        raise BadDataError(f"{path}: {error}") from None


def vocabulary_from_names(names) -> LabelVocabulary:
    """The vocabulary of data without an ``objects.json``: i-CLEVR's when most of its distinct label names are i-CLEVR
    labels (the rest then fail with a suggestion), else its distinct names in sorted order."""
    distinct = sorted({normalize_label_name(name) for name in names})
    if not distinct or _mostly_iclevr(distinct):
        return LabelVocabulary()
    return LabelVocabulary({name: i for i, name in enumerate(distinct)})


def dataset_vocabulary(dataset) -> LabelVocabulary:
    """The label vocabulary a loaded dataset was encoded with (its ``labels`` column's order)."""
    label2id = json.loads(dataset.info.description or "{}").get("label2id")
    return LabelVocabulary(label2id) if label2id else LabelVocabulary()


def scene_id(file_name: str) -> str:
    """The scene a file belongs to: ``CLEVR_train_002066_1.png`` → ``CLEVR_train_002066`` (else the file stem).

    i-CLEVR scenes are sequences (1, 2, 3 objects) of one layout, so held-out splits must split by scene.
    """
    stem = Path(file_name).stem
    match = re.fullmatch(r"(.+)_\d+", stem)
    return match.group(1) if match else stem


def validate_objects_json(label2id: Mapping[str, int]) -> None:
    """Check a user's `objects.json` mapping against the course vocabulary; raise `ValueError` naming every mismatch."""
    if not isinstance(label2id, Mapping):
        raise ValueError(f"objects.json must map label names to indices, got {type(label2id).__name__}.")
    problems = []
    for name, index in label2id.items():
        expected = LABELS.index(name) if name in LABELS else None
        if expected is None:
            problems.append(f"unknown label {name!r}")
        elif index != expected:
            problems.append(f"{name!r} has index {index!r}, the course order gives {expected}")
    missing = [name for name in LABELS if name not in label2id]
    if missing:
        problems.append(f"missing label(s) {missing}")
    if problems:
        raise ValueError(
            "objects.json does not match the i-CLEVR vocabulary (the course's objects.json order): "
            + "; ".join(problems)
            + ". Use the course's objects.json, or omit it to use the built-in vocabulary."
        )


