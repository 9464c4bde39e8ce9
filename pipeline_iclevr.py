# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""i-CLEVR label vocabulary (and, as the project grows, the `ICLEVRPipeline`).

This file is copied into every saved model so the Hub can load it as remote code, so it may import only
the standard library, torch and diffusers. It owns label encoding; every other module imports it from here.

The vocabulary is the course's `objects.json`: 24 labels, 8 colours x 3 shapes, with
``index = shape_index * 8 + colour_index``::

    >>> from pipeline_iclevr import LabelVocabulary
    >>> vocab = LabelVocabulary()
    >>> vocab.encode(["Red sphere", "cyan  CUBE"]).nonzero().flatten().tolist()
    [6, 9]
    >>> vocab.decode(vocab.encode([9, 6]))
    ['cyan cube', 'red sphere']
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence

import torch

COLORS = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
SHAPES = ("cube", "sphere", "cylinder")
LABELS = tuple(f"{color} {shape}" for shape in SHAPES for color in COLORS)

# One condition: label names, label indices, or a multi-hot tensor of length 24.
Condition = Sequence[str] | Sequence[int] | torch.Tensor


def normalize_label_name(name: str) -> str:
    """Canonical spelling of a label name: lower case, words separated by one space (``"Red_Sphere "`` → ``"red sphere"``)."""
    if not isinstance(name, str):
        raise ValueError(f"A label name must be a string, got {type(name).__name__} {name!r}.")
    return " ".join(re.split(r"[\s_\-]+", name.strip().lower())).strip()


class LabelVocabulary:
    r"""Maps i-CLEVR label names ↔ indices ↔ multi-hot vectors, validating every input.

    Args:
        label2id (`Mapping[str, int]`, *optional*):
            The label → index map. Defaults to the course's `objects.json` order. A map that disagrees with the
            course's vocabulary is rejected, because models and evaluators trained on one order silently
            mis-score under another.

    Accepted forms of one *condition*:
        - a list of label names (case-, space- and underscore-insensitive), e.g. ``["red sphere", "cyan cube"]``;
        - a list of label indices, e.g. ``[9, 6]``;
        - a multi-hot `torch.Tensor` of shape ``(24,)`` holding only 0 and 1.

    A condition must hold at least one label and no label twice. The all-zero vector (the classifier-free
    guidance null condition) is built with [`~LabelVocabulary.null_condition`], never by `encode`.
    """

    def __init__(self, label2id: Mapping[str, int] | None = None):
        if label2id is not None:
            validate_objects_json(label2id)
        self.labels: tuple[str, ...] = LABELS
        self.label2id: dict[str, int] = {name: i for i, name in enumerate(LABELS)}
        self.id2label: dict[int, str] = dict(enumerate(LABELS))

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"LabelVocabulary({len(self)} labels: {', '.join(self.labels)})"

    # --- single conditions -------------------------------------------------------------------------------
    def index(self, name: str) -> int:
        """Index of one label name; an unknown name raises `ValueError` listing the closest valid names."""
        key = normalize_label_name(name)
        if key in self.label2id:
            return self.label2id[key]
        close = difflib.get_close_matches(key, self.labels, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"Unknown i-CLEVR label {name!r}.{hint} Valid labels are '<colour> <shape>' with colour in "
            f"{', '.join(COLORS)} and shape in {', '.join(SHAPES)}: {', '.join(self.labels)}."
        )

    def indices(self, condition: Condition) -> list[int]:
        """Sorted label indices of one condition (names, indices or a multi-hot tensor)."""
        if isinstance(condition, torch.Tensor):
            return self._indices_from_multi_hot(condition)
        if isinstance(condition, str):
            raise ValueError(
                f"A condition is a list of labels, got the bare string {condition!r}; write [{condition!r}]."
            )
        if not isinstance(condition, Iterable):
            raise ValueError(f"A condition must be a list of label names or indices, got {type(condition).__name__}.")
        items = list(condition)
        if not items:
            raise ValueError(
                "Empty condition: every image needs at least one label. (The classifier-free guidance null "
                "condition is LabelVocabulary.null_condition(), not an empty list.)"
            )
        ids = [self._item_index(item) for item in items]
        duplicates = sorted({self.labels[i] for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"Duplicate label(s) {duplicates} in condition {items!r}: each label may appear once.")
        return sorted(ids)

    def encode(self, condition: Condition) -> torch.Tensor:
        """Multi-hot float32 tensor of shape ``(24,)`` for one condition."""
        vector = torch.zeros(len(self), dtype=torch.float32)
        vector[self.indices(condition)] = 1.0
        return vector

    def decode(self, multi_hot: torch.Tensor) -> list[str]:
        """Label names (in vocabulary order) of one multi-hot vector."""
        return [self.labels[i] for i in self._indices_from_multi_hot(multi_hot)]

    def names(self, condition: Condition) -> list[str]:
        """Canonical label names of one condition, in the order given (indices and tensors in vocabulary order)."""
        if isinstance(condition, torch.Tensor):
            return self.decode(condition)
        self.indices(condition)  # validates: empty, duplicates, unknown names
        return [self.labels[self._item_index(item)] for item in condition]

    def null_condition(self, batch_size: int | None = None) -> torch.Tensor:
        """The all-zero condition used for classifier-free guidance (shape ``(24,)`` or ``(batch_size, 24)``)."""
        shape = (len(self),) if batch_size is None else (batch_size, len(self))
        return torch.zeros(shape, dtype=torch.float32)

    # --- batches -------------------------------------------------------------------------------------------
    def encode_batch(self, conditions: Sequence[Condition] | torch.Tensor) -> torch.Tensor:
        """Multi-hot float32 tensor of shape ``(batch, 24)`` from a list of conditions or a ``(batch, 24)`` tensor."""
        if isinstance(conditions, torch.Tensor):
            if conditions.ndim != 2:
                raise ValueError(
                    f"A batch of multi-hot conditions must have shape (batch, {len(self)}), got {tuple(conditions.shape)}."
                )
            for row in range(conditions.shape[0]):
                self._indices_from_multi_hot(conditions[row], where=f" (row {row})")
            return conditions.to(torch.float32).clone()
        if isinstance(conditions, str) or not isinstance(conditions, Iterable):
            raise ValueError(
                f"A batch of conditions must be a list of conditions (e.g. [['red sphere'], ['cyan cube']]), "
                f"got {conditions!r}."
            )
        conditions = list(conditions)
        if not conditions:
            raise ValueError("Empty batch: give at least one condition.")
        rows = []
        for row, condition in enumerate(conditions):
            if isinstance(condition, (str, int)):
                raise ValueError(
                    f"Batch item {row} is the single label {condition!r}, not a condition; a batch is a list of "
                    f"label lists, e.g. [[{condition!r}]]. For one condition use encode()."
                )
            try:
                rows.append(self.encode(condition))
            except ValueError as error:
                raise ValueError(f"Condition {row}: {error}") from None
        return torch.stack(rows)

    def decode_batch(self, multi_hot: torch.Tensor) -> list[list[str]]:
        """Label names of each row of a ``(batch, 24)`` multi-hot tensor."""
        if not isinstance(multi_hot, torch.Tensor) or multi_hot.ndim != 2:
            raise ValueError(f"decode_batch expects a (batch, {len(self)}) tensor, got {_describe(multi_hot)}.")
        return [self.decode(row) for row in multi_hot]

    # --- helpers -------------------------------------------------------------------------------------------
    def _item_index(self, item) -> int:
        if isinstance(item, str):
            return self.index(item)
        if isinstance(item, bool) or not isinstance(item, (int, torch.Tensor)) and not hasattr(item, "__index__"):
            raise ValueError(f"A label must be a name or an integer index, got {type(item).__name__} {item!r}.")
        index = int(item)
        if not 0 <= index < len(self):
            raise ValueError(f"Label index {index} is out of range: valid indices are 0..{len(self) - 1}.")
        return index

    def _indices_from_multi_hot(self, vector: torch.Tensor, where: str = "") -> list[int]:
        if not isinstance(vector, torch.Tensor):
            raise ValueError(f"Expected a multi-hot tensor{where}, got {_describe(vector)}.")
        if vector.ndim != 1 or vector.shape[0] != len(self):
            raise ValueError(
                f"A multi-hot condition{where} must have shape ({len(self)},), got {tuple(vector.shape)}; "
                "batches go through encode_batch/decode_batch."
            )
        values = vector.detach().to(torch.float32)
        bad = ~((values == 0) | (values == 1))
        if bad.any():
            raise ValueError(
                f"A multi-hot condition{where} may hold only 0 and 1, got {values[bad].unique().tolist()} at "
                f"position(s) {bad.nonzero().flatten().tolist()}."
            )
        ids = values.nonzero().flatten().tolist()
        if not ids:
            raise ValueError(f"Empty condition{where}: the multi-hot vector is all zeros.")
        return ids


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


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"
