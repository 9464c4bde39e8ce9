# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""The object finder: where each labelled object of an image stands, for data that has labels but no layouts.

A small CenterNet-style detector (Zhou et al., "Objects as Points", 2019) on a transformers `ResNetBackbone`: its
three stages (1/4, 1/8 and 1/16 of the input) are summed at 1/4, and a head predicts, for every label, a heat map of
where that label's object is centred, and in every cell the box of an object centred near it (its centre's offset
from the cell, in cells, and its log width and height, in fractions of the image). Given an image and its labels,
each label's box is read at its heat map's peak (i-CLEVR holds each label at most once per image). A peak below
``confidence_threshold`` means the finder is unsure of that object, and `find` says so.

It learns from renders, whose boxes are exact (``train_object_finder.py``), with the evaluator's augmentations. It
never learns from the evaluator: the layouts it infers train the generator, which the evaluator must not touch.

The model is a diffusers `ModelMixin`, so it saves as safetensors with ``save_pretrained`` and loads with
``ObjectFinder.from_pretrained`` (the shipped one: `SHIPPED_OBJECT_FINDER`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from pipeline_iclevr import LABELS, LabelVocabulary

FINDER_RESOLUTION = 64  # images are read at the evaluator's size, as the course's pictures come
SHIPPED_OBJECT_FINDER = Path(__file__).resolve().parents[1] / "pretrained" / "object-finder"
# Cells around an object's centre cell that learn its box, so a peak one cell off still reads a good box.
BOX_NEIGHBOURHOOD = 1
MIN_BOX = 1 / 256  # the narrowest box a found object may have, in fractions of the image


def shipped_object_finder() -> Path | None:
    """The shipped object finder's folder when its weights and config are there (a clone; not an installed package)."""
    whole = all((SHIPPED_OBJECT_FINDER / name).is_file() for name in ("diffusion_pytorch_model.safetensors", "config.json"))
    return SHIPPED_OBJECT_FINDER if whole else None


def load_object_finder(path: str | Path, device: torch.device | str = "cpu") -> ObjectFinder:
    """A saved finder folder, in float32 (a half-precision file, as shipped, is run as its figures were measured)."""
    path = Path(path)
    if not (path / "diffusion_pytorch_model.safetensors").is_file() or not (path / "config.json").is_file():
        raise FileNotFoundError(f"No object finder in {path} (diffusion_pytorch_model.safetensors + config.json); train one "
                                "with train_object_finder.py, or pass the shipped one (pretrained/object-finder).")
    return ObjectFinder.from_pretrained(path).float().to(device).eval()


@dataclass
class FoundObjects:
    """Each image's labelled objects as the finder sees them, ``-1`` / zeros padded to the most labels of a batch.

    Attributes:
        boxes: ``(B, K, 4)`` boxes ``x0, y0, x1, y1`` in fractions of the image (y down).
        box_labels: ``(B, K)`` label indices, -1 where an image has fewer than ``K`` labels.
        confidence: ``(B, K)`` each box's heat-map peak in [0, 1] (0 for padding).
        found: ``(B, K)`` whether the peak reached the finder's ``confidence_threshold``.
    """

    boxes: torch.Tensor
    box_labels: torch.Tensor
    confidence: torch.Tensor
    found: torch.Tensor

    @property
    def complete(self) -> torch.Tensor:
        """``(B,)``: whether every labelled object of an image was found (its layout is whole)."""
        return (self.found | (self.box_labels < 0)).all(1)


class ObjectFinder(ModelMixin, ConfigMixin):
    r"""Finds each labelled object's box in a 64x64 image (see the module docstring).

    Args:
        labels (`list[str]`, *optional*): the label names, in the order of the data's multi-hot vectors (default:
            i-CLEVR's 24, in the course's order).
        hidden_sizes (`list[int]`): channels of the backbone's three stages (48-96-192: 0.8M parameters with the head, 1.7 MB in
            half precision, so the shipped weights stay within the tree's 40 MB).
        depths (`list[int]`): residual blocks per stage.
        head_channels (`int`): channels of the head that sums the stages.
        confidence_threshold (`float`): a heat-map peak below this marks the object as not found.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, labels: list[str] | None = None, hidden_sizes: list[int] = (48, 96, 192), depths: list[int] = (1, 1, 1),
                 head_channels: int = 96, confidence_threshold: float = 0.3):
        super().__init__()
        from transformers import ResNetBackbone, ResNetConfig

        labels = list(LABELS if labels is None else labels)
        self.vocab = LabelVocabulary({name: i for i, name in enumerate(labels)})
        if len(hidden_sizes) != len(depths) or not hidden_sizes:
            raise ValueError(f"hidden_sizes {list(hidden_sizes)} and depths {list(depths)} must give one entry per stage.")
        if not 0 < confidence_threshold < 1:
            raise ValueError(f"confidence_threshold must lie in (0, 1), got {confidence_threshold}.")
        stages = [f"stage{i + 1}" for i in range(len(hidden_sizes))]
        self.backbone = ResNetBackbone(ResNetConfig(num_channels=3, embedding_size=hidden_sizes[0], hidden_sizes=list(hidden_sizes),
                                                    depths=list(depths), layer_type="basic", out_features=stages))
        self.lateral = nn.ModuleList(nn.Conv2d(c, head_channels, 1) for c in hidden_sizes)
        n = len(self.vocab)
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(head_channels, head_channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(head_channels, 5 * n, 1))
        with torch.no_grad():  # heat maps start near a 1 % prior, as CenterNet's do, so the first steps are not all negatives
            self.head[-1].bias[:n].fill_(-4.6)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pixel_values`` ``(B, 3, 64, 64)`` in [-1, 1] → heat-map logits ``(B, N, h, w)`` and box maps
        ``(B, N, 4, h, w)`` (centre offset x, y in cells; log width, log height), ``h = w = 16``."""
        maps = self.backbone(pixel_values).feature_maps
        size = maps[0].shape[-2:]
        summed = sum(F.interpolate(lateral(m), size=size, mode="bilinear", align_corners=False) if m.shape[-2:] != size
                     else lateral(m) for lateral, m in zip(self.lateral, maps))
        out = self.head(summed)
        n = len(self.vocab)
        return out[:, :n], out[:, n:].unflatten(1, (n, 4))

    @torch.no_grad()
    def find(self, pixel_values: torch.Tensor, conditions: torch.Tensor) -> FoundObjects:
        """Each image's labelled objects: its labels (multi-hot ``conditions`` ``(B, N)``) read at their heat maps'
        peaks. ``pixel_values`` as `forward` takes them (`iclevr.evaluator.to_evaluator_input` makes them)."""
        if conditions.ndim != 2 or conditions.shape[1] != len(self.vocab) or conditions.shape[0] != pixel_values.shape[0]:
            raise ValueError(f"conditions must be ({pixel_values.shape[0]}, {len(self.vocab)}) multi-hot rows, one per image, "
                             f"got shape {tuple(conditions.shape)}.")
        heat, box_maps = self(pixel_values.to(self.device, self.dtype))
        batch, n, height, width = heat.shape
        peak, where = heat.float().sigmoid().flatten(2).max(-1)  # (B, N)
        regression = box_maps.float().flatten(3).gather(-1, where[:, :, None, None].expand(batch, n, 4, 1)).squeeze(-1)
        cx = ((where % width).float() + regression[..., 0]) / width
        cy = ((where // width).float() + regression[..., 1]) / height
        half_w, half_h = regression[..., 2].exp() / 2, regression[..., 3].exp() / 2
        boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], -1).clamp(0, 1)  # (B, N, 4)
        conditions = conditions.to(heat.device) > 0.5
        most = max(1, int(conditions.sum(1).max()))
        order = conditions.float().argsort(dim=1, descending=True, stable=True)[:, :most]  # each image's labels first, in order
        present = conditions.gather(1, order)
        box_labels = torch.where(present, order, -1)
        chosen = boxes.gather(1, order[..., None].expand(-1, -1, 4)) * present[..., None]
        confidence = peak.gather(1, order) * present
        # a box clipped to (nearly) nothing is not one: at least a quarter pixel of a 64x64 image each way
        proper = (chosen[..., 2] - chosen[..., 0] >= MIN_BOX) & (chosen[..., 3] - chosen[..., 1] >= MIN_BOX)
        found = present & proper & (confidence >= self.config.confidence_threshold)
        return FoundObjects(chosen.cpu(), box_labels.cpu(), confidence.cpu(), found.cpu())


def finder_targets(boxes: torch.Tensor, box_labels: torch.Tensor, num_labels: int, size: int):
    """Training targets of a batch of layouts (``boxes (B, K, 4)``, ``box_labels (B, K)``, -1 padded) on the finder's
    ``size`` x ``size`` grid: heat maps ``(B, N, size, size)`` (a Gaussian about each object's centre, σ a sixth of its
    box's mean side in cells and at least half a cell, exactly 1 on its centre cell), box targets ``(B, N, 4, size, size)``
    and the mask of the cells that learn a box (``BOX_NEIGHBOURHOOD`` cells around each centre cell)."""
    cells = torch.arange(size, dtype=torch.float32, device=boxes.device)
    cx, cy = (boxes[..., 0] + boxes[..., 2]) / 2 * size, (boxes[..., 1] + boxes[..., 3]) / 2 * size  # (B, K) in cells
    width, height = (boxes[..., 2] - boxes[..., 0]).clamp(min=1e-3), (boxes[..., 3] - boxes[..., 1]).clamp(min=1e-3)
    sigma = ((width + height) / 2 * size / 6).clamp(min=0.5)
    col, row = cx.floor().clamp(0, size - 1), cy.floor().clamp(0, size - 1)
    dx = cells[None, None, None, :] + 0.5 - cx[..., None, None]
    dy = cells[None, None, :, None] + 0.5 - cy[..., None, None]
    gauss = torch.exp(-(dx * dx + dy * dy) / (2 * sigma[..., None, None] ** 2))  # (B, K, size, size)
    centre = (cells[None, None, None, :] == col[..., None, None]) & (cells[None, None, :, None] == row[..., None, None])
    gauss = torch.where(centre, 1.0, gauss.clamp(max=0.999))
    near = ((cells[None, None, None, :] - col[..., None, None]).abs() <= BOX_NEIGHBOURHOOD) & (
        (cells[None, None, :, None] - row[..., None, None]).abs() <= BOX_NEIGHBOURHOOD)
    one_hot = F.one_hot(box_labels.clamp(min=0), num_labels).float() * (box_labels >= 0)[..., None].float()  # (B, K, N)
    heat = (one_hot[..., None, None] * gauss[:, :, None]).amax(1)  # (B, N, size, size)
    grid = (-1, -1, size, size)
    offsets = torch.stack([(cx[..., None, None] - cells[None, None, None, :]).expand(grid),  # centre from each cell
                           (cy[..., None, None] - cells[None, None, :, None]).expand(grid),
                           width.log()[..., None, None].expand(grid), height.log()[..., None, None].expand(grid)], 2)
    box_target = torch.einsum("bkn,bkchw->bnchw", one_hot, offsets)
    box_mask = torch.einsum("bkn,bkhw->bnhw", one_hot, near.float()).clamp(max=1)
    return heat, box_target, box_mask


def finder_loss(heat_logits: torch.Tensor, box_maps: torch.Tensor, heat: torch.Tensor, box_target: torch.Tensor,
                box_mask: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss on the heat maps (per object) plus the L1 loss of the boxes on their cells."""
    probability = heat_logits.float().sigmoid().clamp(1e-4, 1 - 1e-4)
    positive = heat >= 1.0
    positive_loss = ((1 - probability) ** 2 * probability.log())[positive].sum()
    negative_loss = ((1 - heat) ** 4 * probability ** 2 * (1 - probability).log())[~positive].sum()
    objects = positive.sum().clamp(min=1)
    box_loss = ((box_maps.float() - box_target).abs().sum(2) * box_mask).sum() / box_mask.sum().clamp(min=1)
    return -(positive_loss + negative_loss) / objects + box_loss


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of boxes ``(..., 4)`` ``x0, y0, x1, y1``, elementwise."""
    width = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    height = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = width * height
    area = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area - inter).clamp(min=1e-12)


@torch.no_grad()
def find_objects(finder: ObjectFinder, images: torch.Tensor, conditions: torch.Tensor, batch_size: int = 256) -> FoundObjects:
    """`ObjectFinder.find` over many images, in batches: uint8 ``(N, H, W, 3)`` (or what
    `iclevr.evaluator.to_evaluator_input` takes, square, resized to 64x64) and their multi-hot ``conditions``."""
    from iclevr.evaluator import to_evaluator_input

    if len(images) != len(conditions):
        raise ValueError(f"{len(images)} images but {len(conditions)} conditions; give one condition per image.")
    finder.eval()
    parts = [finder.find(to_evaluator_input(images[i:i + batch_size], FINDER_RESOLUTION), conditions[i:i + batch_size])
             for i in range(0, len(images), batch_size)]
    most = max(part.box_labels.shape[1] for part in parts)

    def joined(name: str, fill) -> torch.Tensor:
        tensors = [getattr(part, name) for part in parts]
        return torch.cat([F.pad(t, (0, 0) * (t.ndim - 2) + (0, most - t.shape[1]), value=fill) for t in tensors])

    return FoundObjects(joined("boxes", 0.0), joined("box_labels", -1), joined("confidence", 0.0), joined("found", False))


def heldout_box_figures(finder: ObjectFinder, images: torch.Tensor, conditions: torch.Tensor, boxes: torch.Tensor,
                        box_labels: torch.Tensor) -> dict:
    """How well ``finder`` finds the objects of images whose true layouts are known (``boxes``, ``box_labels``):
    the share of objects whose found box has IoU ≥ 0.7 with the true one (a box below the threshold counts as a
    miss), the share found, the mean IoU, the share of images whose layout is whole, overall and by object count."""
    found = find_objects(finder, images, conditions)
    match = (found.box_labels[:, :, None] == box_labels[:, None, :]) & (box_labels[:, None, :] >= 0)  # (N, K, K_true)
    true = (match.float()[..., None] * boxes[:, None]).sum(2)  # each found label's true box
    real = found.box_labels >= 0
    iou = box_iou(found.boxes, true)
    good = (iou >= 0.7) & found.found
    counts = real.sum(1)

    def figures(rows: torch.Tensor) -> dict:
        objects = real[rows]
        return {"images": int(rows.sum()), "objects": int(objects.sum()),
                "iou_at_least_0.7": float(good[rows][objects].float().mean()),
                "found": float(found.found[rows][objects].float().mean()),
                "mean_iou": float(iou[rows][objects].mean()),
                "complete_layouts": float(found.complete[rows].float().mean())}

    everything = figures(torch.ones(len(counts), dtype=torch.bool))
    return everything | {"by_num_objects": {str(n): figures(counts == n) for n in sorted(set(counts.tolist()))}}
