# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""The panel: images drawn by models trained on the **real** i-CLEVR images, with the figure the course's own
evaluator gave each set. Reading them with our evaluator and comparing says how far our evaluator (and so the
renderer it learnt from) is from i-CLEVR's look.

A panel folder holds ``manifest.json`` (``{"entries": [{"folder", "reported": {"test": 0.82, ...}, "metric"}]}``)
and, per entry, ``<folder>/<set>/0.png ... N-1.png`` for each set named in ``reported``. The conditions of a set
are ``<panel>/<set>.json`` where the panel has one, else the project's copy (``iclevr/conditions/<set>.json``).

``metric`` is how the author computed the reported figure: ``pooled`` (the course's hits over all labels of the
set) or ``per_image_mean`` (the mean of one-image calls of the course's ``compute_acc``); we read each set in its
author's metric, so the comparison is like for like. The panel is a development set: it checks the evaluator and
chooses renderer settings; nothing trains on it or picks weights by it.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from iclevr.evaluator import Evaluator, read_image_folder
from iclevr.io import read_json
from iclevr.labels import CONDITIONS_DIR, load_conditions
from iclevr.metrics import course_hits, evaluate_scores

METRICS = ("pooled", "per_image_mean")


def read_manifest(panel_dir: str | os.PathLike) -> list[dict]:
    """The panel's entries, checked: each names its folder, its metric and a reported figure per set."""
    panel_dir = Path(panel_dir)
    manifest = read_json(panel_dir / "manifest.json", "--panel_dir's manifest.json")
    entries = manifest.get("entries") if isinstance(manifest, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{panel_dir / 'manifest.json'} must be an object with a non-empty 'entries' list.")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("folder"), str) or not isinstance(entry.get("reported"), dict):
            raise ValueError(f"{panel_dir / 'manifest.json'}: entry {i} needs 'folder' and 'reported' ({{set: figure}}).")
        if entry.get("metric", "pooled") not in METRICS:
            raise ValueError(f"{panel_dir / 'manifest.json'}: entry {i} has metric {entry.get('metric')!r}; use one of {METRICS}.")
    return entries


def check_panel_dir(parser, panel_dir: str | None) -> None:
    """The entry points' ``--panel_dir`` check: a folder with a manifest.json, else ``parser.error``."""
    if panel_dir is not None and not (Path(panel_dir) / "manifest.json").is_file():
        parser.error(f"--panel_dir {panel_dir} has no manifest.json; give a panel folder (see iclevr/panel.py).")


def set_conditions(panel_dir: Path, name: str) -> list[list[str]]:
    """The conditions of one panel set: the panel's own ``<set>.json``, else the project's copy."""
    for path in (panel_dir / f"{name}.json", CONDITIONS_DIR / f"{name}.json"):
        if path.is_file():
            return load_conditions(str(path))
    raise FileNotFoundError(f"No conditions for the panel set {name!r}: neither {panel_dir / (name + '.json')} nor "
                            f"{CONDITIONS_DIR / (name + '.json')} exists.")


def panel_accuracy(hits, counts, metric: str) -> float:
    """A set's figure from per-image hits and label counts: pooled (hits / labels) or the mean of per-image ratios."""
    if metric == "pooled":
        return sum(hits) / sum(counts)
    return statistics.fmean(h / c for h, c in zip(hits, counts))


def read_panel(evaluator: Evaluator, panel_dir: str | os.PathLike) -> dict:
    """Score every set of the panel with ``evaluator``, each in its author's metric.

    Returns ``{"rows": [{"folder", "set", "metric", "reported", "ours", "gap", "shape_misses"}...], "mean_abs_gap",
    "max_abs_gap", "mean_gap"}`` where ``gap = ours - reported``.
    """
    panel_dir = Path(panel_dir)
    rows = []
    for entry in read_manifest(panel_dir):
        metric = entry.get("metric", "pooled")
        for name, reported in sorted(entry["reported"].items()):
            conditions = set_conditions(panel_dir, name)
            images = read_image_folder(panel_dir / entry["folder"] / name, len(conditions))
            targets = evaluator.vocab.encode_batch(conditions)
            scores = evaluator.predict(images)  # once: the metric and the kinds of miss both come from these scores
            hits = course_hits(scores, targets).tolist()
            counts = targets.sum(1).long().tolist()
            ours = panel_accuracy(hits, counts, metric)
            metrics = evaluate_scores(scores, targets, labels=evaluator.vocab.labels)
            rows.append({"folder": entry["folder"], "set": name, "metric": metric, "reported": float(reported),
                         "ours": ours, "gap": ours - float(reported), "misses": metrics["misses"]})
    gaps = [row["gap"] for row in rows]
    return {"panel_dir": str(panel_dir), "rows": rows, "mean_gap": statistics.fmean(gaps),
            "mean_abs_gap": statistics.fmean(abs(g) for g in gaps), "max_abs_gap": max(abs(g) for g in gaps)}


def panel_table(panel: dict) -> str:
    """The panel as a markdown table, one row per set, with the averages."""
    lines = ["| panel set | metric | course evaluator | ours | gap | misses (colour / shape / object) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in panel["rows"]:
        misses = row["misses"]
        lines.append(f"| {row['folder']} {row['set']} | {row['metric']} | {row['reported']:.3f} | {row['ours']:.3f} | "
                     f"{row['gap']:+.3f} | {misses['colour']} / {misses['shape']} / {misses['object']} |")
    lines.append(f"| **mean** | | | | {panel['mean_gap']:+.3f} (mean abs {panel['mean_abs_gap']:.3f}, "
                 f"max abs {panel['max_abs_gap']:.3f}) | |")
    return "\n".join(lines)
