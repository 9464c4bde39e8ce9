# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""The course's label files against the i-CLEVR vocabulary: a user's ``objects.json`` must be the course's 24 labels in
the course's order. (The vocabulary itself, `LabelVocabulary`, ships inside every saved pipeline in
``pipeline_iclevr.py``; this check is the package's alone.)"""

from __future__ import annotations

from collections.abc import Mapping

from pipeline_iclevr import LABELS


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


