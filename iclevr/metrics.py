# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""The course's i-CLEVR metric and its companions: pure tensor functions, no model and no I/O.

- **Course accuracy**: for each image, with k true labels, count how many of the k highest-scoring labels are true;
  accuracy = total hits / total true labels. Ties between equal scores go to the lower label index (a stable sort), so
  the figure is reproducible; the course's `topk` leaves tie order to the backend.
- **Exact-set accuracy**: the share of images whose predicted set (score >= threshold) equals the true set, so an
  extra or a missing object is an error (the course metric cannot see extra objects).
- **Per-label precision and recall** at the same threshold.
- **Kinds of miss**: each true label the course metric misses, paired with a wrong label in the same top-k: a colour
  error (the object's shape with another colour), a shape error (its colour on another shape), or neither (a
  different or missing object). This says what a generator fails to bind, which the accuracy alone does not. In a
  vocabulary whose names are not "<colour> <shape>" pairs every miss is of the kind "object".

The functions take any number of labels; ``labels`` (names in index order) defaults to i-CLEVR's 24.
"""

from __future__ import annotations

import statistics

import torch

from pipeline_iclevr import LABELS

MISS_KINDS = ("colour", "shape", "object")


def _check(scores: torch.Tensor, targets: torch.Tensor, labels: tuple[str, ...] | None = None) -> None:
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"scores and targets must both be (N, labels); got {tuple(scores.shape)} and {tuple(targets.shape)}."
        )
    if labels is not None and scores.shape[1] != len(labels):
        raise ValueError(f"Expected {len(labels)} labels per row, got {scores.shape[1]}.")
    if ((targets != 0) & (targets != 1)).any():
        raise ValueError("targets must be multi-hot (0/1).")
    if (targets.sum(1) == 0).any():
        raise ValueError("Every target row needs at least one true label.")


def _top_k(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per image, a mask of the k highest-scoring labels (k = number of true labels; ties to the lower index)."""
    order = torch.sort(scores.float(), dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(scores.shape[1]).expand_as(order))  # rank of each label in its row
    return rank < targets.sum(1).long()[:, None]


def course_hits(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-image hit counts: how many of the top-k scored labels are true, k = number of true labels."""
    _check(scores, targets)
    return (_top_k(scores, targets) & (targets > 0)).sum(1)


def course_accuracy(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """The course metric over a set: total top-k hits / total true labels."""
    return course_hits(scores, targets).sum().item() / targets.sum().item()


def miss_kinds(scores: torch.Tensor, targets: torch.Tensor, labels: tuple[str, ...] = LABELS) -> dict[str, int]:
    """Counts of the course metric's misses by kind (`MISS_KINDS`). Each true label outside its image's top-k is paired
    with a wrong label inside it (there are as many of each), pairing as many as possible with a label that shares an
    attribute: one of the same shape makes the miss a "colour" error (the object drawn in another colour), one of the
    same colour a "shape" error; a miss left without such a partner is "object" (a different object in its place, or
    it was not drawn)."""
    _check(scores, targets, labels)
    in_top_k = _top_k(scores, targets)
    counts = dict.fromkeys(MISS_KINDS, 0)
    paired = all(len(label.split()) == 2 for label in labels)  # "<colour> <shape>" names
    attributes = [tuple(label.split()) if paired else (label, label) for label in labels]
    for row_top, row_true in zip(in_top_k.tolist(), (targets > 0).tolist()):
        missed = [attributes[i] for i in range(len(labels)) if row_true[i] and not row_top[i]]
        wrong = [attributes[i] for i in range(len(labels)) if row_top[i] and not row_true[i]]
        partner = _max_matching(missed, wrong, lambda m, w: m[0] == w[0] or m[1] == w[1])
        for m, w in partner.items():
            counts["colour" if missed[m][1] == wrong[w][1] else "shape"] += 1
        counts["object"] += len(missed) - len(partner)
    return counts


def _max_matching(left: list, right: list, linked) -> dict[int, int]:
    """A maximum bipartite matching ``{left index: right index}`` over the pairs where ``linked(l, r)`` (augmenting
    paths; a greedy pairing can pair a miss with the one partner another miss needed)."""
    owner: dict[int, int] = {}  # right index -> left index

    def augment(i: int, seen: set[int]) -> bool:
        for j, candidate in enumerate(right):
            if j not in seen and linked(left[i], candidate):
                seen.add(j)
                if j not in owner or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    for i in range(len(left)):
        augment(i, set())
    return {i: j for j, i in owner.items()}


def exact_set_matches(scores: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per image, whether the labels scoring >= ``threshold`` are exactly the true labels."""
    _check(scores, targets)
    return ((scores >= threshold) == (targets > 0)).all(1)


def evaluate_scores(scores: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5,
                    labels: tuple[str, ...] = LABELS) -> dict:
    """All figures for one set: course accuracy, exact-set accuracy, a breakdown by number of objects, the kinds of
    miss, per-label P/R.

    Args:
        scores: ``(N, L)`` probabilities (sigmoid outputs).
        targets: ``(N, L)`` multi-hot true labels.
        threshold: probability at which a label counts as predicted for exact-set accuracy and precision/recall.
        labels: the ``L`` label names in index order (i-CLEVR's by default).
    """
    _check(scores, targets, labels)
    hits = course_hits(scores, targets)
    exact = exact_set_matches(scores, targets, threshold)
    counts = targets.sum(1).long()
    by_objects = {}
    for n in sorted(set(counts.tolist())):
        rows = counts == n
        by_objects[str(n)] = {
            "images": int(rows.sum()),
            "accuracy": hits[rows].sum().item() / counts[rows].sum().item(),
            "exact_set_accuracy": exact[rows].float().mean().item(),
        }
    predicted = scores >= threshold
    truth = targets > 0
    per_label = {}
    for i, name in enumerate(labels):
        true_pos = (predicted[:, i] & truth[:, i]).sum().item()
        n_pred, n_true = predicted[:, i].sum().item(), truth[:, i].sum().item()
        per_label[name] = {
            "support": n_true,
            "precision": true_pos / n_pred if n_pred else None,
            "recall": true_pos / n_true if n_true else None,
        }
    return {
        "images": int(scores.shape[0]),
        "accuracy": hits.sum().item() / counts.sum().item(),
        "exact_set_accuracy": exact.float().mean().item(),
        "by_num_objects": by_objects,
        "misses": miss_kinds(scores, targets, labels),
        "per_label": per_label,
    }


def total_misses(reports: list[dict]) -> dict[str, int]:
    """The kinds of miss (`miss_kinds`) summed over several `evaluate_scores` reports (sampling seeds)."""
    return {kind: sum(report["misses"][kind] for report in reports) for kind in MISS_KINDS}


def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (0 for one value) of a figure over sampling seeds, with the values."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}
