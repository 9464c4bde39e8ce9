# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""`ICLEVRPipeline`: class-conditional image generation for i-CLEVR, and the i-CLEVR label vocabulary.

This file is copied into every saved model so the Hub can load it as remote code, so it may import only
the standard library, torch and diffusers (with huggingface_hub, which diffusers requires), and it holds all that a
saved model needs to sample: the label vocabulary and its one reader (`LabelVocabulary.read`, which every other
module imports from here), the pipeline, the UNet call (`predict`), and the helpers the GAN pipeline, shipped beside
it, shares (input checks, output conversion, shipping the source). What only the project needs, such as checking a
course ``objects.json``, lives in the `iclevr` package.

    >>> pipe = ICLEVRPipeline.from_pretrained("outputs/iclevr-ddpm")
    >>> images = pipe([["red sphere", "cyan cube"], ["gray cylinder"]], num_inference_steps=25, guidance_scale=2.0).images

A layout model (a UNet that also reads a layout map) places the objects first: where the call says
(``layouts=[[{"label": "red sphere", "box": [0.1, 0.5, 0.3, 0.8]}, ...]]``, boxes as fractions of the image), else
as a training layout drawn from the prior kept in its config; the output's ``layouts`` say where each object went.

The default vocabulary is the course's `objects.json`: 24 labels, 8 colours x 3 shapes, with
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
import inspect
import json
import math
import numbers
import operator
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput, logging
from diffusers.utils.hub_utils import load_or_create_model_card, populate_model_card
from diffusers.utils.torch_utils import randn_tensor
from huggingface_hub import create_repo

COLORS = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
SHAPES = ("cube", "sphere", "cylinder")
LABELS = tuple(f"{color} {shape}" for shape in SHAPES for color in COLORS)
DEFAULT_LABEL2ID = {name: i for i, name in enumerate(LABELS)}  # the course's objects.json
logger = logging.get_logger(__name__)
SINGLE = "The condition"  # how messages name the condition of a call that gives one
# The guidance every entry point samples with unless told otherwise (chosen on a validation set, not on test.json).
DEFAULT_GUIDANCE_SCALE = 2.0

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
            The label → index map: canonical names (see `normalize_label_name`) and indices ``0..N-1``, each once.
            Defaults to i-CLEVR's 24 labels in the course's `objects.json` order.

    Every label input goes through one reader, [`~LabelVocabulary.read`]. A *condition* (the labels of one image) is:
        - a list of label names (case-, space- and underscore-insensitive), e.g. ``["red sphere", "cyan cube"]``, or a
          bare name ``"red sphere"`` for a condition of one label;
        - a list of integer label indices (Python or numpy integers), e.g. ``[9, 6]``;
        - a multi-hot row of shape ``(N,)`` holding only 0 and 1 (a `torch.Tensor` or a numpy array).

    A batch is a list of conditions or a ``(batch, N)`` multi-hot tensor or array. A condition must hold at least one
    label and no label twice. The all-zero vector (the classifier-free guidance null condition) is built with
    [`~LabelVocabulary.null_condition`], never read from user input.
    """

    def __init__(self, label2id: Mapping[str, int] | None = None):
        label2id = dict(DEFAULT_LABEL2ID if label2id is None else label2id)
        check_label_map(label2id)
        self.labels: tuple[str, ...] = tuple(sorted(label2id, key=label2id.__getitem__))
        self.label2id: dict[str, int] = {name: i for i, name in enumerate(self.labels)}
        self.id2label: dict[int, str] = dict(enumerate(self.labels))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def words(self) -> tuple[str, ...]:
        """The distinct words of the label names, in order of first use (i-CLEVR's 24 labels hold 11: 8 colours, 3 shapes)."""
        return tuple(dict.fromkeys(word for name in self.labels for word in name.split()))

    def __repr__(self) -> str:
        return f"LabelVocabulary({len(self)} labels: {', '.join(self.labels)})"

    # --- the reader ----------------------------------------------------------------------------------------------
    def read(self, labels) -> torch.Tensor:
        """Multi-hot float32 rows ``(batch, N)`` of one condition or a batch of them (see the class docstring).

        A flat list of label names and indices is one condition; a list holding lists or multi-hot rows is a batch.
        Every error names the condition and the label at fault, and says how to write it instead.
        """
        if is_array(labels):
            rows = torch.as_tensor(labels)
            if rows.ndim not in (1, 2):
                raise ValueError(f"Multi-hot labels must be one row ({len(self)},) or a batch (batch, {len(self)}), got "
                                 f"shape {tuple(rows.shape)}.")
            if rows.ndim == 1:
                return self._multi_hot_row(rows, SINGLE)[None]
            if rows.shape[0] == 0:
                raise ValueError("The condition is empty: the batch of multi-hot rows has no row.")
            return torch.stack([self._multi_hot_row(row, f"Condition {i}") for i, row in enumerate(rows)])
        if isinstance(labels, str):
            labels = [labels]
        if isinstance(labels, Mapping) or not isinstance(labels, Iterable):
            raise ValueError(f"labels must be a condition (a list of label names or indices, or a multi-hot row) or a "
                             f"list of conditions, got {describe_input(labels)}; e.g. [['red sphere', 'cyan cube'], ['gray cube']].")
        items = list(labels)
        if not items:
            raise ValueError("The condition is empty: every image needs at least one label, e.g. ['red sphere'] (and a "
                             "batch at least one condition, e.g. [['red sphere'], ['cyan cube']]).")
        if all(is_scalar(item) for item in items):  # one condition
            return self._condition_row(items, SINGLE)[None]
        rows = []
        for i, item in enumerate(items):
            where = f"Condition {i}"
            if is_scalar(item):
                raise ValueError(f"{where} is the bare label {item!r} in a list of conditions: write [{item!r}] for a "
                                 "condition of that one label.")
            if is_array(item):
                rows.append(self._multi_hot_row(torch.as_tensor(item), where))
            elif isinstance(item, Iterable) and not isinstance(item, Mapping):
                rows.append(self._condition_row(list(item), where))
            else:
                raise ValueError(f"{where} is {describe_input(item)}: a condition is a list of label names or indices, "
                                 "or a multi-hot row.")
        return torch.stack(rows)

    # --- single conditions -------------------------------------------------------------------------------------------
    def index(self, name: str) -> int:
        """Index of one label name; an unknown name raises `ValueError` listing the closest valid names."""
        key = normalize_label_name(name)
        if key in self.label2id:
            return self.label2id[key]
        close = difflib.get_close_matches(key, self.labels, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        if self.labels == LABELS:
            raise ValueError(
                f"Unknown i-CLEVR label {name!r}.{hint} Valid labels are '<colour> <shape>' with colour in "
                f"{', '.join(COLORS)} and shape in {', '.join(SHAPES)}: {', '.join(self.labels)}."
            )
        raise ValueError(f"Unknown label {name!r}.{hint} Valid labels are: {', '.join(self.labels)}.")

    def encode(self, condition: Condition) -> torch.Tensor:
        """Multi-hot float32 tensor of shape ``(N,)`` for one condition (`read`)."""
        rows = self.read(condition)
        if rows.shape[0] != 1:
            raise ValueError(f"Expected one condition, got a batch of {rows.shape[0]}; read batches with read().")
        return rows[0]

    def indices(self, condition: Condition) -> list[int]:
        """Sorted label indices of one condition."""
        return self.encode(condition).nonzero().flatten().tolist()

    def names(self, condition: Condition) -> list[str]:
        """Canonical label names of one condition, in the order given (multi-hot rows in vocabulary order)."""
        self.encode(condition)  # validates: empty, duplicates, unknown names
        if is_array(condition):
            return self.decode(torch.as_tensor(condition))
        items = [condition] if isinstance(condition, str) else list(condition)
        return [self.labels[self._label_index(item, SINGLE)] for item in items]

    def decode(self, multi_hot: torch.Tensor) -> list[str]:
        """Label names (in vocabulary order) of one multi-hot row."""
        return [self.labels[i] for i in self._multi_hot_row(multi_hot, SINGLE).nonzero().flatten().tolist()]

    def null_condition(self, batch_size: int | None = None) -> torch.Tensor:
        """The all-zero condition used for classifier-free guidance (shape ``(N,)`` or ``(batch_size, N)``)."""
        shape = (len(self),) if batch_size is None else (batch_size, len(self))
        return torch.zeros(shape, dtype=torch.float32)

    # --- batches -------------------------------------------------------------------------------------------
    def encode_batch(self, conditions: Sequence[Condition] | torch.Tensor) -> torch.Tensor:
        """Multi-hot float32 tensor of shape ``(batch, N)`` (`read`)."""
        return self.read(conditions)

    def decode_batch(self, multi_hot: torch.Tensor) -> list[list[str]]:
        """Label names of each row of a ``(batch, N)`` multi-hot tensor."""
        if not is_array(multi_hot) or torch.as_tensor(multi_hot).ndim != 2:
            raise ValueError(f"decode_batch expects a (batch, {len(self)}) multi-hot tensor, got {describe_input(multi_hot)}.")
        return [self.decode(row) for row in torch.as_tensor(multi_hot)]

    # --- helpers -------------------------------------------------------------------------------------------
    def _condition_row(self, items: list, where: str) -> torch.Tensor:
        if not items:
            raise ValueError(f"{where} is empty: every image needs at least one label. (The classifier-free guidance "
                             "null condition is LabelVocabulary.null_condition(), not an empty list.)")
        ids = [self._label_index(item, where) for item in items]
        duplicates = sorted({self.labels[i] for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"{where} {items!r} holds the label(s) {duplicates} twice: each label may appear once.")
        row = torch.zeros(len(self), dtype=torch.float32)
        row[ids] = 1.0
        return row

    def _label_index(self, item, where: str) -> int:
        if isinstance(item, str):
            try:
                return self.index(item)
            except ValueError as error:  # a batch names the condition; one condition needs no name
                raise ValueError(error if where == SINGLE else f"{where}: {error}") from None
        if is_bool(item) or not hasattr(item, "__index__"):
            raise ValueError(f"{where} holds the label {item!r} ({type(item).__name__}): a label is a name such as "
                             f"{self.labels[0]!r} or an integer index 0..{len(self) - 1}.")
        index = operator.index(item)
        if not 0 <= index < len(self):
            raise ValueError(f"{where} holds the label index {index}, out of range: valid indices are 0..{len(self) - 1}.")
        return index

    def _multi_hot_row(self, vector, where: str) -> torch.Tensor:
        if not is_array(vector):
            raise ValueError(f"{where} must be a multi-hot row, got {describe_input(vector)}.")
        vector = torch.as_tensor(vector)
        if vector.ndim != 1 or vector.shape[0] != len(self):
            raise ValueError(f"{where} is a multi-hot row of shape {tuple(vector.shape)}; it must have shape ({len(self)},), "
                             "one 0/1 entry per label. For label indices, give a list such as [9, 6].")
        values = vector.detach().to(torch.float32).cpu()
        bad = ~((values == 0) | (values == 1))
        if bad.any():
            found = ", ".join(dict.fromkeys(f"{v:g}" for v in values[bad].tolist()))  # distinct, NaN once
            raise ValueError(f"{where} is a multi-hot row that may hold only 0 and 1, got [{found}] at label(s) "
                             f"{[self.labels[i] for i in bad.nonzero().flatten().tolist()][:5]}.")
        if not values.any():
            raise ValueError(f"{where} is an all-zero multi-hot row: every image needs at least one label.")
        return values


def is_array(value) -> bool:
    """A tensor or a numpy array (anything with ``__array__`` and a shape), not a 0-d scalar."""
    return (isinstance(value, torch.Tensor) or hasattr(value, "__array__")) and len(getattr(value, "shape", ())) > 0


def is_bool(value) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"


def is_scalar(value) -> bool:
    """One label as given: a name, an integer, or a value mistaken for one (a float, a bool, a 0-d tensor)."""
    return isinstance(value, (str, int, float)) or is_bool(value) or (hasattr(value, "__index__") and not is_array(value)) \
        or (hasattr(value, "shape") and len(value.shape) == 0)


def check_label_map(label2id: Mapping[str, int]) -> None:
    """Check a label → index map: canonical, distinct names and the indices ``0..N-1``, each once."""
    if not isinstance(label2id, Mapping) or not label2id:
        raise ValueError(f"A label vocabulary must be a non-empty map of label names to indices, got {describe_input(label2id)}.")
    names = [name for name in label2id if not isinstance(name, str) or not name or normalize_label_name(name) != name]
    if names:
        raise ValueError(f"Label names must be lower case words separated by single spaces, got {names[:5]}; write them "
                         "as normalize_label_name does.")
    indices = list(label2id.values())
    if any(isinstance(i, bool) or not isinstance(i, int) for i in indices) or sorted(indices) != list(range(len(indices))):
        raise ValueError(f"Label indices must be the integers 0..{len(label2id) - 1}, each used once; got {indices}.")


# --- layouts -----------------------------------------------------------------------------------------------------
# A layout is one image's objects: ``[{"label": "red sphere", "box": [x0, y0, x1, y1]}, ...]``, boxes as fractions of
# the image's width and height (x to the right, y down), one object per label of the image's condition.
Layout = Sequence[Mapping]


@dataclass
class ICLEVRPipelineOutput(BaseOutput):
    """Output of [`ICLEVRPipeline`].

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`): the generated images.
        layouts (`list[list[dict]]`, *optional*): for a layout model, where each image's objects were placed (the
            call's layouts, or those drawn from the prior): ``{"label", "box"}`` per object; None for a label-only one.
    """

    images: object
    layouts: list | None = None


LAYOUT_CHANNELS = ("labels", "words")  # the forms of the layout map (`label_channels`)


def label_channels(vocab: LabelVocabulary, form: str = "labels") -> torch.Tensor:
    """Which layout-map channels each label paints, ``(N, C)`` of 0/1.

    ``"labels"``: one channel per label (the identity). ``"words"``: one channel per distinct word of the label names
    (`LabelVocabulary.words`), so ``"red sphere"`` paints ``red`` and ``sphere`` and every colour of a shape teaches
    that shape's channel; a vocabulary of one-word names (digits) paints the same map either way.
    """
    if form not in LAYOUT_CHANNELS:
        raise ValueError(f"layout_channels must be one of {LAYOUT_CHANNELS}, got {form!r}.")
    if form == "labels":
        return torch.eye(len(vocab))
    column = {word: i for i, word in enumerate(vocab.words)}
    channels = torch.zeros(len(vocab), len(column))
    for i, name in enumerate(vocab.labels):
        channels[i, [column[word] for word in name.split()]] = 1.0
    return channels


def layout_map(boxes: torch.Tensor, box_labels: torch.Tensor, channels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Paint layouts into the map the UNet reads beside the noisy image: ``(B, C, H, W)``, where each object sets its
    label's channels (a row of ``channels``) on every cell its box overlaps, and the others to 0; nearer objects,
    whose boxes reach lower in the image (a camera looking down on a floor), are painted over farther ones. Training
    and sampling both paint with this, so the model reads what it was taught.

    Args:
        boxes: ``(B, K, 4)`` boxes ``x0, y0, x1, y1`` in [0, 1].
        box_labels: ``(B, K)`` label indices, -1 where an image has fewer than ``K`` objects.
        channels: ``(N, C)``: the channels each label paints (`label_channels`).
        size: ``(H, W)`` of the map: the UNet's sample size.
    """
    height, width = size
    device = boxes.device
    x0, y0, x1, y1 = (boxes[..., i, None, None].float() for i in range(4))
    cols = torch.arange(width, device=device, dtype=torch.float32)
    rows = torch.arange(height, device=device, dtype=torch.float32)
    # a cell is covered where the box overlaps it, so even a box smaller than a cell marks one
    inside_x = (x0 * width < cols + 1) & (x1 * width > cols)  # (B, K, 1, W)
    inside_y = (y0 * height < rows[:, None] + 1) & (y1 * height > rows[:, None])  # (B, K, H, 1)
    depth = torch.where(inside_x & inside_y & (box_labels >= 0)[..., None, None], 1.0 + y1, 0.0)  # (B, K, H, W)
    nearest, covered = depth.argmax(1), depth.amax(1) > 0
    labels = box_labels.gather(1, nearest.flatten(1)).view_as(nearest).clamp(min=0)
    painted = channels.to(device=device, dtype=torch.float32)[labels].permute(0, 3, 1, 2)
    return painted * covered[:, None].float()


def layout_tensors(layouts: Sequence[Sequence[tuple[int, Sequence[float]]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(label index, box)`` lists, one per image, as ``boxes (B, K, 4)`` and ``box_labels (B, K)`` (-1 padded)."""
    most = max(1, *(len(layout) for layout in layouts))
    boxes = torch.zeros(len(layouts), most, 4)
    box_labels = torch.full((len(layouts), most), -1, dtype=torch.long)
    for i, layout in enumerate(layouts):
        for k, (index, box) in enumerate(layout):
            boxes[i, k] = torch.tensor([float(v) for v in box])
            box_labels[i, k] = index
    return boxes, box_labels


def check_box(box, where: str) -> list[float]:
    """A box ``[x0, y0, x1, y1]``: four finite numbers in [0, 1] with ``x0 < x1`` and ``y0 < y1``."""
    if (isinstance(box, (str, Mapping)) or not isinstance(box, Iterable)):
        raise ValueError(f"{where}: a box is [x0, y0, x1, y1] in fractions of the image, got {describe_input(box)}.")
    values = list(box.tolist() if is_array(box) else box)
    if len(values) != 4 or not all(is_scalar(v) and not is_bool(v) and math.isfinite(float(v)) for v in values):
        raise ValueError(f"{where}: a box is four finite numbers [x0, y0, x1, y1], got {values!r}.")
    x0, y0, x1, y1 = (float(v) for v in values)
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise ValueError(f"{where}: box {values!r} must have 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 (fractions of the "
                         "image's width and height, y down).")
    return [x0, y0, x1, y1]


def read_layout(vocab: LabelVocabulary, layout, condition: torch.Tensor, where: str) -> list[tuple[int, list[float]]]:
    """One image's layout as ``(label index, box)`` pairs, checked against its condition (the same labels, each once)."""
    if isinstance(layout, (str, Mapping)) or not isinstance(layout, Iterable):
        raise ValueError(f"{where}: a layout is a list of {{'label': name, 'box': [x0, y0, x1, y1]}}, one per label, got "
                         f"{describe_input(layout)}.")
    pairs = []
    for k, item in enumerate(layout):
        if isinstance(item, Mapping) and set(item) >= {"label", "box"}:
            label, box = item["label"], item["box"]
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            label, box = item
        else:
            raise ValueError(f"{where}, object {k}: give {{'label': name, 'box': [x0, y0, x1, y1]}}, got {describe_input(item)}.")
        index = vocab._label_index(label, f"{where}, object {k}")
        pairs.append((index, check_box(box, f"{where}, object {k} ({vocab.labels[index]})")))
    asked = sorted(condition.nonzero().flatten().tolist())
    placed = sorted(index for index, _ in pairs)
    if placed != asked:
        raise ValueError(f"{where}: the layout places {[vocab.labels[i] for i in placed]} but the condition asks for "
                         f"{[vocab.labels[i] for i in asked]}; give one box per label of the condition.")
    return pairs


def check_layout_prior(prior) -> None:
    """A layout prior: ``{"<k>": [layout, ...]}`` for object counts ``k``, each layout ``k`` boxes."""
    if not isinstance(prior, Mapping) or not prior:
        raise ValueError(f"layout_prior must map object counts to lists of layouts, got {describe_input(prior)}.")
    for count, layouts in prior.items():
        if not str(count).isdigit() or int(count) < 1 or not isinstance(layouts, list) or not layouts:
            raise ValueError(f"layout_prior[{count!r}] must be a non-empty list of layouts of {count} boxes each.")
        for i, boxes in enumerate(layouts):
            if not isinstance(boxes, list) or len(boxes) != int(count):
                raise ValueError(f"layout_prior[{count!r}][{i}] must hold {count} boxes, got {describe_input(boxes)}.")
            for k, box in enumerate(boxes):
                check_box(box, f"layout_prior[{count!r}][{i}], box {k}")


def random_index(high: int, generator: torch.Generator | None) -> int:
    """A uniform draw from ``range(high)`` from ``generator`` (on its own device), or from torch's global one."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(high, (1,), generator=generator, device=device))


def sample_layout(prior: Mapping, labels: list[int], generator: torch.Generator | None) -> list[tuple[int, list[float]]]:
    """A layout for one condition from the prior: a training layout with as many objects, drawn uniformly, its boxes
    given the labels in a random order (labels and places are independent in the training scenes). More labels than
    any prior layout holds take the largest layout plus boxes of one-object layouts."""
    counts = sorted(int(k) for k in prior)
    count = len(labels) if len(labels) in counts else counts[-1]
    layouts = prior[str(count)]
    boxes = list(layouts[random_index(len(layouts), generator)])[: len(labels)]
    while len(boxes) < len(labels):
        singles = prior[str(counts[0])]
        boxes.append(singles[random_index(len(singles), generator)][0])
    order = [labels[i] for i in torch.randperm(len(labels), generator=generator, device=generator.device if generator else "cpu").tolist()]
    return [(index, list(box)) for index, box in zip(order, boxes)]


class HubUploadError(ConnectionError):
    """An upload to the Hub failed. One line names the repository, the cause and how to retry; the upload is one
    commit, so the repository keeps its previous state, and every retry sends the whole folder again."""

    def __init__(self, repo_id: str, cause: BaseException, retry: str):
        self.repo_id = repo_id
        super().__init__(f"Uploading to the Hub repository {repo_id} failed ({type(cause).__name__}: {cause}). Nothing "
                         f"local was changed, and the repository keeps its previous state. To retry, {retry}: each "
                         "upload sends the whole folder.")


class ICLEVRPipeline(DiffusionPipeline):
    r"""Generate i-CLEVR scenes from multi-hot label conditions with classifier-free guidance.

    Args:
        unet ([`UNet2DConditionModel`]):
            Denoiser that embeds the multi-hot condition itself, so the embedding is saved and reloaded with it:
            globally (``class_embed_type="projection"``, ``projection_class_embeddings_input_dim=N``) and/or as one
            cross-attention token per label (``encoder_hid_dim=N``, ``encoder_hid_dim_type="text_proj"``; see
            [`label_tokens`]).
        scheduler ([`SchedulerMixin`]):
            Any diffusers scheduler (DDPM, DDIM, DPM-Solver++, Euler, ...); swap with ``Scheduler.from_config``.
        label2id (`dict`, *optional*):
            The label vocabulary (see [`LabelVocabulary`]), stored in the pipeline config so it survives save/load.
            Defaults to i-CLEVR's 24 labels.
        patch_size (`int`, *optional*, defaults to 1):
            Space-to-depth factor ``p``: the UNet denoises ``(3 p², H / p, W / p)`` tensors, each channel group one
            pixel of a ``p x p`` patch, and the pipeline returns ``H x W`` images (see [`predict`]). With ``p = 2`` a
            32x32 UNet draws 64x64 images at nearly the cost of 32x32 ones.
        default_num_inference_steps (`int`, *optional*, defaults to 25):
            The steps a call samples with when it names none: the trainer saves the steps the model was validated with.
        default_guidance_scale (`float`, *optional*, defaults to 2.0):
            The guidance a call samples with when it names none: likewise the validated one.
        max_labels_per_image (`int`, *optional*):
            The most labels of any training image (3 for i-CLEVR); a call asking for more is sampled with a warning.
        layout_prior (`dict`, *optional*):
            A layout model's prior: training layouts by object count (``{"1": [[box]], "2": [[box, box]], ...}``, boxes
            ``[x0, y0, x1, y1]`` in fractions of the image), a uniform sample of the training data's, kept in the
            config. A call given no ``layouts`` draws each image's from it. A UNet reads layouts when it takes the
            layout map's channels beyond the image's (see [`layout_map`]).
        layout_channels (`str`, *optional*, defaults to ``"labels"``):
            The layout map's form (see [`label_channels`]): a channel per label, or per word of the label names.
    """

    model_cpu_offload_seq = "unet"
    # "prompt_embeds" are the multi-hot rows the UNet is conditioned on (null rows first under guidance), named as in
    # diffusers' text pipelines so that its guidance callbacks (SDCFGCutoffCallback) work unchanged.
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

    # --- saving and loading: a saved folder carries this file and names it in model_index.json -------------------
    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs):
        """diffusers' ``save_pretrained``, plus a copy of this file and ``"_class_name": ["pipeline_iclevr",
        "ICLEVRPipeline"]`` in ``model_index.json``, so the folder (or its Hub repository) loads with
        ``DiffusionPipeline.from_pretrained(path, trust_remote_code=True)`` as well as with this class.

        With ``push_to_hub=True`` the folder is uploaded once complete, this file included, with the model card that
        the trainer wrote into it (``repo_id``, ``token``, ``private``, ``commit_message``, ``create_pr`` as in
        diffusers); diffusers' own order would upload before the file is copied, and replace the card."""
        hub = {key: kwargs.pop(key) for key in ("repo_id", "token", "private", "commit_message", "create_pr") if key in kwargs}
        super().save_pretrained(save_directory, **kwargs)
        ship_source(self, save_directory)
        if push_to_hub:
            self.upload_saved_folder(save_directory, **hub)

    def push_to_hub(self, repo_id: str, commit_message: str | None = None, private: bool | None = None,
                    token: str | None = None, create_pr: bool = False, safe_serialization: bool = True,
                    variant: str | None = None, **kwargs) -> str:
        """Save into a temporary folder (`save_pretrained`, which ships this file) and upload it. The model card is
        the one beside the weights this pipeline was loaded from (the trainer's), else diffusers' generic card."""
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, safe_serialization=safe_serialization, variant=variant)
            source = Path(self.name_or_path or "") / "README.md"
            if self.name_or_path and source.is_file():
                shutil.copy(source, Path(folder) / "README.md")
            return self.upload_saved_folder(folder, repo_id=repo_id, token=token, private=private,
                                            commit_message=commit_message, create_pr=create_pr)

    def upload_saved_folder(self, folder: str | os.PathLike, repo_id: str | None = None, token: str | None = None,
                            private: bool | None = None, commit_message: str | None = None, create_pr: bool = False):
        """Create the Hub repository and upload a saved folder as it is; a folder without a model card gets
        diffusers' generic one.

        Raises:
            HubUploadError: the Hub or the connection failed; it names the repository and how to retry. The upload is
                one commit, so the repository keeps its previous state, and nothing local is touched.
        """
        repo_id = repo_id or Path(folder).name
        try:
            repo_id = create_repo(repo_id, exist_ok=True, private=private, token=token).repo_id
            if not (Path(folder) / "README.md").is_file():
                populate_model_card(load_or_create_model_card(repo_id, token=token, is_pipeline=True)).save(Path(folder) / "README.md")
            return self._upload_folder(folder, repo_id, token=token, commit_message=commit_message, create_pr=create_pr)
        except Exception as error:  # any failure of the Hub client (HTTP 5xx, a dropped connection, ...) at this boundary
            raise HubUploadError(repo_id, error, f"call push_to_hub({repo_id!r}) again on this pipeline (or on "
                                 "ICLEVRPipeline.from_pretrained(<its saved folder>))") from error

    @classmethod
    def load_config(cls, *args, **kwargs):
        """The folder's config, its ``[module, class]`` name read as this class: loading through ``ICLEVRPipeline``
        itself uses this class and needs no ``trust_remote_code``."""
        return read_class_name_as_own(super().load_config(*args, **kwargs))

    # --- the sampling state diffusers' step-end callbacks read and change ------------------------------------------
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """diffusers' convention: guidance only above 1; ``guidance_scale <= 1`` samples the conditional model alone."""
        return self._guidance_scale > 1

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` from a callback to skip the remaining steps (diffusers' convention)."""
        return self._interrupt

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)`` of the images (and of ``latents``): the UNet's sample size times ``patch_size``."""
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return size[0] * self.config.patch_size, size[1] * self.config.patch_size

    @property
    def uses_layouts(self) -> bool:
        """Whether the UNet reads a layout map (its channels beyond the image's)."""
        return self.unet.config.in_channels == 3 * self.config.patch_size**2 + self.map_channels.shape[1]

    def __init__(self, unet, scheduler, label2id: dict[str, int] | None = None, patch_size: int = 1,
                 default_num_inference_steps: int = 25, default_guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
                 max_labels_per_image: int | None = None, layout_prior: dict | None = None,
                 layout_channels: str = "labels"):
        super().__init__()
        label2id = dict(label2id) if label2id else dict(DEFAULT_LABEL2ID)
        self.vocab = LabelVocabulary(label2id)
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}.")
        self.map_channels = label_channels(self.vocab, layout_channels)
        pixels, painted = 3 * patch_size**2, self.map_channels.shape[1]
        if unet.config.in_channels not in (pixels, pixels + painted) or unet.config.out_channels != pixels:
            raise ValueError(
                f"patch_size {patch_size} needs a UNet with {pixels} output channels (3 per pixel of a {patch_size}x"
                f"{patch_size} patch) and {pixels} input channels, or {pixels + painted} for a layout model (its "
                f"{painted} layout-map channels, one per {layout_channels[:-1]}), got {unet.config.in_channels} in and "
                f"{unet.config.out_channels} out."
            )
        if layout_prior is not None:
            check_layout_prior(layout_prior)
        if not condition_routes(unet.config, len(self.vocab)):
            raise ValueError(
                "The UNet must embed the multi-hot condition itself: build it with class_embed_type='projection' and "
                f"projection_class_embeddings_input_dim={len(self.vocab)} (a global embedding), and/or with "
                f"encoder_hid_dim={len(self.vocab)} and encoder_hid_dim_type='text_proj' (one cross-attention token per label)."
            )
        check_sampling_numbers(default_num_inference_steps, default_guidance_scale, 0.0, "default_")
        if max_labels_per_image is not None and (is_bool(max_labels_per_image) or not isinstance(max_labels_per_image, int)
                                                 or max_labels_per_image < 1):
            raise ValueError(f"max_labels_per_image must be a positive integer or None, got {max_labels_per_image!r}.")
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(label2id=label2id, patch_size=patch_size, default_num_inference_steps=default_num_inference_steps,
                                default_guidance_scale=float(default_guidance_scale), max_labels_per_image=max_labels_per_image,
                                layout_prior=layout_prior, layout_channels=layout_channels)

    def encode_labels(self, labels, num_images_per_prompt: int = 1) -> torch.Tensor:
        """Multi-hot conditions ``(batch * num_images_per_prompt, N)`` of one condition or a batch of them
        (`LabelVocabulary.read`)."""
        return encode_conditions(self.vocab, labels, num_images_per_prompt)

    def read_layouts(self, layouts, conditions: torch.Tensor) -> list[list[tuple[int, list[float]]]] | None:
        """A call's ``layouts`` (one per condition; a single layout for a single condition) as ``(label index, box)``
        pairs, each checked against its condition; None when the call gives none."""
        if layouts is None:
            return None
        if not self.uses_layouts:
            raise ValueError("layouts were given, but this model is label-only (its UNet reads no layout map); drop them, "
                             "or load a layout model.")
        if isinstance(layouts, (str, Mapping)) or not isinstance(layouts, Sequence) or len(layouts) == 0:
            raise ValueError(f"layouts must be a list with one layout per condition, got {describe_input(layouts)}.")
        if conditions.shape[0] == 1 and isinstance(layouts[0], (Mapping, tuple)):  # one condition, its layout bare
            layouts = [layouts]
        if len(layouts) != conditions.shape[0]:
            raise ValueError(f"layouts holds {len(layouts)} layouts for {conditions.shape[0]} conditions; give one per condition.")
        where = SINGLE if conditions.shape[0] == 1 else "Layout {}"
        return [read_layout(self.vocab, layout, row, where.format(i)) for i, (layout, row) in enumerate(zip(layouts, conditions))]

    def prepare_layouts(self, conditions: torch.Tensor, layouts, generator, num_images_per_prompt: int):
        """Each image's layout (the call's, repeated per image, or one drawn from the prior per image with that
        image's generator) as ``(label index, box)`` pairs."""
        if layouts is not None:
            return [layout for layout in layouts for _ in range(num_images_per_prompt)]
        if self.config.layout_prior is None:
            raise ValueError("This layout model keeps no layout prior (layout_prior in its config): pass layouts=.")
        rows = conditions.repeat_interleave(num_images_per_prompt, dim=0)
        generators = generator if isinstance(generator, list) else [generator] * rows.shape[0]
        return [sample_layout(self.config.layout_prior, row.nonzero().flatten().tolist(), g) for row, g in zip(rows, generators)]

    def check_inputs(self, conditions, num_inference_steps, guidance_scale, eta, num_images_per_prompt, output_type,
                     generator, latents, callback_on_step_end_tensor_inputs):
        """Every argument of a call, checked before any work; ``conditions`` are the labels as read ``(batch, N)``."""
        check_sampling_numbers(num_inference_steps, guidance_scale, eta)
        batch = conditions.shape[0] * (num_images_per_prompt if isinstance(num_images_per_prompt, int) else 1)
        shape = (batch, 3, *self.image_size)
        check_sampling_inputs(num_images_per_prompt, output_type, latents, shape, ("pil", "np", "pt", "latent"),
                              "batch, channels, height, width", generator)
        if not set(callback_on_step_end_tensor_inputs) <= set(self._callback_tensor_inputs):
            raise ValueError(f"callback_on_step_end_tensor_inputs may only hold {self._callback_tensor_inputs}, got "
                             f"{callback_on_step_end_tensor_inputs}.")
        limit = self.config.max_labels_per_image
        if limit and (conditions.sum(1) > limit).any():
            logger.warning(f"{int((conditions.sum(1) > limit).sum())} condition(s) ask for more than {limit} labels (up to "
                           f"{int(conditions.sum(1).max())}), more than any training image held: expect objects missing.")

    def prepare_extra_step_kwargs(self, generator, eta):
        """``eta`` and ``generator`` for schedulers whose ``step`` takes them (DDIM takes eta; DDPM a generator)."""
        parameters = set(inspect.signature(self.scheduler.step).parameters)
        kwargs = {}
        if "eta" in parameters:
            kwargs["eta"] = eta
        if "generator" in parameters:
            kwargs["generator"] = generator
        return kwargs

    @torch.no_grad()
    def __call__(
        self,
        labels,
        layouts: Sequence[Layout] | Layout | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ):
        r"""Generate images for label conditions.

        Args:
            labels: one condition (``["red sphere", "cyan cube"]``, ``[9, 6]``, ``"red sphere"`` or a multi-hot row)
                or a batch (a list of conditions or a ``(batch, N)`` tensor or array); see [`LabelVocabulary`].
            layouts (`list`, *optional*): a layout model only: where to place each condition's objects, one layout per
                condition (a single condition may take its layout bare): ``[{"label": "red sphere", "box": [x0, y0,
                x1, y1]}, ...]``, one box per label, as fractions of the image's width and height (y down). Default:
                each image's layout is drawn from the model's prior (training layouts), after its noise.
            num_inference_steps (`int`, *optional*): denoising steps; default: the config's
                ``default_num_inference_steps``, the steps the model was validated with.
            guidance_scale (`float`, *optional*): classifier-free guidance weight ``w`` in
                ``eps = eps_null + w * (eps_cond - eps_null)``; default: the config's ``default_guidance_scale``. As in
                diffusers, ``w <= 1`` runs the conditional model alone, in a single pass; above 1 the null and the
                conditional prediction run in one batched forward.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): for reproducible sampling; a list
                holds one generator per image.
            latents (`torch.Tensor`, *optional*): initial noise ``(batch * num_images_per_prompt, 3, H, W)`` in pixel
                space (``H`` = the UNet's sample size x ``patch_size``).
            num_images_per_prompt (`int`, defaults to 1): images per condition.
            eta (`float`, defaults to 0.0): DDIM's eta in [0, 1]; ignored by schedulers without it.
            output_type (`str`, defaults to ``"pil"``): ``"pil"``, ``"np"`` (``(B, H, W, 3)`` floats in [0, 1]),
                ``"pt"`` (``(B, 3, H, W)`` in [0, 1]) or ``"latent"`` (the denoised sample as is, in [-1, 1]).
            return_dict (`bool`, defaults to True): return an [`ICLEVRPipelineOutput`] instead of a tuple.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*): called as
                ``fn(pipe, step, timestep, callback_kwargs)`` after every step; may return a dict replacing
                ``latents`` or ``prompt_embeds``, change ``pipe._guidance_scale`` for the steps that follow, or set
                ``pipe._interrupt``. diffusers' ``SDCFGCutoffCallback`` works as in Stable Diffusion: it keeps the
                last condition row, so use it with one image per call.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): tensors passed in ``callback_kwargs``:
                ``latents`` (the default) and ``prompt_embeds`` (the multi-hot rows the UNet sees, null rows first
                under guidance).

        Returns:
            [`ICLEVRPipelineOutput`] or `tuple`: the generated images, and for a layout model each image's layout.
        """
        num_inference_steps = self.config.default_num_inference_steps if num_inference_steps is None else num_inference_steps
        guidance_scale = self.config.default_guidance_scale if guidance_scale is None else guidance_scale
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        conditions = self.encode_labels(labels)
        self.check_inputs(conditions, num_inference_steps, guidance_scale, eta, num_images_per_prompt, output_type,
                          generator, latents, tensor_inputs)
        layouts = self.read_layouts(layouts, conditions)
        device, dtype = self._execution_device, self.unet.dtype
        shape = (conditions.shape[0] * num_images_per_prompt, 3, *self.image_size)
        if latents is None:  # the noise first, so a layout given or drawn leaves an image's noise the same
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        latents = latents.to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma
        placed, layout = None, None
        if self.uses_layouts:
            placed = self.prepare_layouts(conditions, layouts, generator, num_images_per_prompt)
            size = (self.image_size[0] // self.config.patch_size, self.image_size[1] // self.config.patch_size)
            layout = layout_map(*layout_tensors(placed), self.map_channels, size).to(device=device, dtype=dtype)
        conditions = conditions.repeat_interleave(num_images_per_prompt, dim=0).to(device=device, dtype=dtype)
        self._guidance_scale = float(guidance_scale)
        self._interrupt = False
        prompt_embeds = torch.cat([torch.zeros_like(conditions), conditions]) if self.do_classifier_free_guidance else conditions

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        for i, t in enumerate(self.progress_bar(timesteps)):
            if self.interrupt:
                continue
            guided = self.do_classifier_free_guidance  # a callback may have switched guidance since the last step
            prompt_embeds = rows_for_step(prompt_embeds, latents.shape[0], guided)
            model_input = self.scheduler.scale_model_input(torch.cat([latents, latents]) if guided else latents, t)
            spatial = None if layout is None else torch.cat([torch.zeros_like(layout), layout]) if guided else layout
            noise_pred = predict(self.unet, model_input, t, prompt_embeds, self.config.patch_size, spatial)
            if guided:
                null, cond = noise_pred.chunk(2)
                noise_pred = null + self._guidance_scale * (cond - null)
            latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs).prev_sample
            if callback_on_step_end is not None:
                shared = {"latents": latents, "prompt_embeds": prompt_embeds}
                outputs = callback_on_step_end(self, i, t, {name: shared[name] for name in tensor_inputs}) or {}
                latents = outputs.get("latents", latents)
                prompt_embeds = outputs.get("prompt_embeds", prompt_embeds)

        result = latents if output_type == "latent" else postprocess_images(latents, output_type)
        self.maybe_free_model_hooks()
        if placed is not None:
            placed = [[{"label": self.vocab.labels[index], "box": box} for index, box in pairs] for pairs in placed]
        output = ICLEVRPipelineOutput(images=result, layouts=placed)
        return output if return_dict else output.to_tuple()


def rows_for_step(prompt_embeds: torch.Tensor, batch: int, guided: bool) -> torch.Tensor:
    """The condition rows one step feeds the UNet: null rows then conditional ones under guidance (``2 * batch``),
    the conditional ones alone without; follows a callback that switched guidance or returned other rows."""
    rows = prompt_embeds.shape[0]
    if rows == 2 * batch:
        return prompt_embeds if guided else prompt_embeds[batch:]
    if rows == batch:
        return torch.cat([torch.zeros_like(prompt_embeds), prompt_embeds]) if guided else prompt_embeds
    raise ValueError(f"prompt_embeds holds {rows} condition rows for {batch} images: a step-end callback must return "
                     f"{batch} rows, or {2 * batch} with guidance (null rows first). SDCFGCutoffCallback keeps one row, so "
                     "it works with one image per call, as in Stable Diffusion.")


def check_sampling_numbers(num_inference_steps, guidance_scale, eta, prefix: str = "") -> None:
    """Steps a positive integer; guidance a finite number >= 0; eta a finite number in [0, 1] (numpy scalars too)."""
    if is_bool(num_inference_steps) or not hasattr(num_inference_steps, "__index__") or operator.index(num_inference_steps) < 1:
        raise ValueError(f"{prefix}num_inference_steps must be a positive integer, got {num_inference_steps!r}.")
    if is_bool(guidance_scale) or not isinstance(guidance_scale, numbers.Real) or not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"{prefix}guidance_scale must be a finite number >= 0 (<= 1: no guidance), got {guidance_scale!r}.")
    if is_bool(eta) or not isinstance(eta, numbers.Real) or not math.isfinite(eta) or not 0 <= eta <= 1:
        raise ValueError(f"eta must be a finite number in [0, 1] (0: deterministic DDIM, 1: as stochastic as DDPM), got {eta!r}.")


def condition_routes(unet_config, num_labels: int = len(LABELS)) -> list[str]:
    """How a UNet config takes the multi-hot condition: ``"class_embedding"`` and/or ``"cross_attention"``."""
    routes = []
    if getattr(unet_config, "class_embed_type", None) == "projection" and getattr(
        unet_config, "projection_class_embeddings_input_dim", None
    ) == num_labels:
        routes.append("class_embedding")
    if getattr(unet_config, "encoder_hid_dim_type", None) == "text_proj" and getattr(unet_config, "encoder_hid_dim", None) == num_labels:
        routes.append("cross_attention")
    return routes


def label_tokens(multi_hot: torch.Tensor) -> torch.Tensor:
    """One cross-attention token per label, ``(B, L, L)``: token ``i`` is one-hot ``i`` if label ``i`` is present, else zero.

    The UNet's ``encoder_hid_proj`` (a Linear from L) turns a present label into its own learned embedding and every
    absent one (and all of the null condition's) into the same bias vector, a "nothing here" token. Spatial
    positions can then attend to the object they are drawing, which binds colour and shape per object far better
    than one global vector. The set has no order, so no positional encoding is needed.
    """
    return torch.diag_embed(multi_hot)


def unet_condition_kwargs(unet_config, conditions: torch.Tensor) -> dict:
    """The UNet keyword arguments that carry multi-hot ``conditions`` ``(B, L)`` (zero rows are the null condition)."""
    routes = condition_routes(unet_config, conditions.shape[-1])
    return {
        "class_labels": conditions if "class_embedding" in routes else None,
        "encoder_hidden_states": label_tokens(conditions) if "cross_attention" in routes else None,
    }


def predict(unet, sample: torch.Tensor, timestep, conditions: torch.Tensor, patch_size: int = 1,
            layout: torch.Tensor | None = None) -> torch.Tensor:
    """The UNet's prediction for a pixel-space ``sample`` ``(B, 3, H, W)``, shaped like it.

    With ``patch_size`` ``p > 1`` the sample enters space-to-depth (`pixel_unshuffle`: ``(B, 3 p², H / p, W / p)``) and
    the prediction leaves through `pixel_shuffle`, so the noise, the loss and the sampler all stay in pixel space and
    only the UNet works at the lower resolution. Training calls this too, so both see the same pixel order. A layout
    model's ``layout`` map ``(B, C, H / p, W / p)`` (`layout_map`) enters beside the sample, as diffusers' inpainting
    UNets take their mask.
    """
    config = getattr(unet, "module", unet).config  # DDP wraps the model in multi-process runs
    if patch_size > 1:
        sample = F.pixel_unshuffle(sample, patch_size)
    if layout is not None:
        sample = torch.cat([sample, layout.to(sample.dtype)], 1)
    prediction = unet(sample, timestep, **unet_condition_kwargs(config, conditions)).sample
    return F.pixel_shuffle(prediction, patch_size) if patch_size > 1 else prediction


def ship_source(pipeline: DiffusionPipeline, save_directory: str | os.PathLike, component_folders: Sequence[str] = ()) -> None:
    """Copy the pipeline's module file and this one (which it may import) into a saved pipeline folder, and into
    ``component_folders``, where diffusers looks for the code of custom components; and name the module in
    ``model_index.json``: ``"_class_name": [<module>, <class>]``."""
    module = Path(inspect.getsourcefile(type(pipeline)))
    for folder in (Path(save_directory), *(Path(save_directory) / name for name in component_folders)):
        for source in {module, Path(__file__)}:
            target = folder / source.name
            if source.resolve() != target.resolve():
                shutil.copy(source, target)
    index = Path(save_directory) / "model_index.json"
    config = json.loads(index.read_text())
    config["_class_name"] = [module.stem, type(pipeline).__name__]
    index.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def check_sampling_inputs(num_images_per_prompt, output_type, latents, shape, output_types: Sequence[str], layout: str,
                          generator=None) -> None:
    """The checks every pipeline's ``check_inputs`` shares: images per condition, the output type, a generator list's
    length (one per image, as diffusers asks) and the latents' shape."""
    if is_bool(num_images_per_prompt) or not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}.")
    if output_type not in output_types:
        names = ", ".join(repr(name) for name in output_types[:-1])
        raise ValueError(f"output_type must be {names} or {output_types[-1]!r}, got {output_type!r}.")
    if isinstance(generator, list) and len(generator) != shape[0]:
        raise ValueError(f"You have passed a list of generators of length {len(generator)}, but requested an effective batch "
                         f"size of {shape[0]} (conditions x num_images_per_prompt). Make sure the batch size matches the "
                         "length of the generators.")
    if latents is not None and tuple(latents.shape) != tuple(shape):
        raise ValueError(f"latents must have shape {tuple(shape)} ({layout}), got {tuple(latents.shape)}.")


def postprocess_images(samples: torch.Tensor, output_type: str):
    """Samples ``(B, 3, H, W)`` in [-1, 1] as a pipeline returns them: ``"pt"`` ``(B, 3, H, W)`` in [0, 1] on the CPU,
    ``"np"`` ``(B, H, W, 3)``, or ``"pil"`` images."""
    result = (samples.float() / 2 + 0.5).clamp(0, 1).cpu()
    if output_type in ("np", "pil"):
        result = result.permute(0, 2, 3, 1).numpy()
    return DiffusionPipeline.numpy_to_pil(result) if output_type == "pil" else result


def encode_conditions(vocab: LabelVocabulary, labels, num_images_per_prompt: int = 1) -> torch.Tensor:
    """Multi-hot conditions ``(batch * num_images_per_prompt, N)`` of a pipeline's ``labels`` argument
    (`LabelVocabulary.read`)."""
    return vocab.read(labels).repeat_interleave(num_images_per_prompt, dim=0)


def read_class_name_as_own(loaded):
    """A loaded pipeline config whose ``[module, class]`` ``_class_name`` is read as the bare class name."""
    config = loaded[0] if isinstance(loaded, tuple) else loaded
    if isinstance(config.get("_class_name"), (list, tuple)):
        config["_class_name"] = config["_class_name"][-1]
    return loaded


def describe_input(value) -> str:
    """A short description of a value for error messages: a tensor's shape, else its type and repr."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"
