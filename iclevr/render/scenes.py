# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""CLEVR-like scene sampling: pure logic (numpy RNG in, object lists out), no rendering and no I/O.

A scene is a list of `SceneObject`; i-CLEVR images are the prefixes of one scene (1, 2, then 3 objects).
Visibility is checked by the caller through a callback, so this module stays free of the ray caster.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from iclevr.render.look import DEFAULT_STYLE, RenderStyle
from pipeline_iclevr import COLORS, LABELS, SHAPES

# CLEVR's colours (sRGB, 0-255) and sizes.
CLEVR_RGB = {
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
# CLEVR's sizes: a sphere's or cylinder's radius and half height, a cube's half diagonal (CLEVR shrinks cubes by
# sqrt(2)). "iclevr" is i-CLEVR's one size (*inferred* from the panel, docs/renderer.md): every shape 0.6 in half
# height and half width, the cube not shrunk, so its side is 1.2 and it looks larger than the sphere beside it.
SIZES = {"large": 0.7, "small": 0.35, "iclevr": 0.6}
PLACEMENT_RANGE = 3.0  # objects are placed with x, y in [-3, 3], as in CLEVR
MIN_GAP = 0.25  # free space between two objects' bounding circles


@dataclass(frozen=True)
class SceneObject:
    """One CLEVR object standing on the ground plane."""

    color: str
    shape: str
    size: str
    material: str
    x: float
    y: float
    yaw: float  # radians; only changes the look of cubes

    @property
    def label(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def radius(self) -> float:
        """A sphere's or cylinder's radius (and half height), a cube's half diagonal."""
        unshrunk_cube = self.shape == "cube" and self.size == "iclevr"
        return SIZES[self.size] * (math.sqrt(2.0) if unshrunk_cube else 1.0)

    @property
    def footprint(self) -> float:
        """Radius of the circle the object covers on the ground (a cube's half diagonal)."""
        return self.radius

    def to_dict(self) -> dict:
        return asdict(self)


def split_label(label: str) -> tuple[str, str]:
    color, shape = label.split(" ")
    if color not in COLORS or shape not in SHAPES:
        raise ValueError(f"Not an i-CLEVR label: {label!r}")
    return color, shape


def _sample_object(rng: np.random.Generator, label: str, style: RenderStyle = DEFAULT_STYLE, centre: bool = False) -> SceneObject:
    """One object of ``label`` at a random place (``centre``: at the scene's centre, as i-CLEVR's first object)."""
    color, shape = split_label(label)
    size, material = str(rng.choice(list(style.sizes))), str(rng.choice(list(style.materials)))
    x, y = (float(v) for v in rng.uniform(-PLACEMENT_RANGE, PLACEMENT_RANGE, 2))
    return SceneObject(color=color, shape=shape, size=size, material=material, x=0.0 if centre else x,
                       y=0.0 if centre else y, yaw=float(rng.uniform(0.0, math.pi / 2)))


def _fits(candidate: SceneObject, placed: Sequence[SceneObject], margin: float = 0.0,
          axes: Sequence[tuple[float, float]] = ()) -> bool:
    """CLEVR's rules: 0.25 free between bounding circles, and (``margin``) two objects at least that far apart along
    each of the camera's ground ``axes`` (left-right, front-behind), so "left of" and "behind" are never ambiguous."""
    for other in placed:
        dx, dy = candidate.x - other.x, candidate.y - other.y
        if math.hypot(dx, dy) < candidate.footprint + other.footprint + MIN_GAP:
            return False
        if any(abs(dx * ax + dy * ay) < margin for ax, ay in axes):
            return False
    return True


def sample_labels(
    rng: np.random.Generator, num_objects: int, excluded: Iterable[frozenset[str]] = (), max_tries: int = 1000
) -> list[str]:
    """Distinct labels for a scene whose every prefix (1..num_objects objects) avoids the ``excluded`` label sets."""
    if not 1 <= num_objects <= len(LABELS):
        raise ValueError(f"num_objects must be in 1..{len(LABELS)}, got {num_objects}.")
    excluded = set(excluded)
    for _ in range(max_tries):
        labels = [LABELS[i] for i in rng.choice(len(LABELS), size=num_objects, replace=False)]
        if not any(frozenset(labels[: k + 1]) in excluded for k in range(num_objects)):
            return labels
    raise ValueError(f"Could not sample {num_objects} labels avoiding {len(excluded)} excluded combinations.")


def place_objects(
    rng: np.random.Generator,
    labels: Sequence[str],
    is_visible: Callable[[list[SceneObject]], bool] | None = None,
    max_tries: int = 200,
    style: RenderStyle = DEFAULT_STYLE,
    axes: Sequence[tuple[float, float]] = (),
) -> list[SceneObject]:
    """Place objects with the given labels one at a time, re-placing the newest until it fits and all are visible.

    Args:
        rng: the scene's own random generator (one per scene keeps scenes independent of batching).
        labels: labels in the order the objects are added.
        is_visible: callback telling whether every object of a candidate scene is visible enough; objects only
            get more occluded as the scene grows, so checking each prefix as it is built checks every image.
        max_tries: re-placements of one object before the whole scene is re-placed from scratch.
        style: the look, which sets the sizes, materials and the placement margin (`iclevr.render.look`).
        axes: the camera's ground axes the margin is measured along (`iclevr.render.raycast.ground_axes`).
    """
    for _ in range(max_tries):
        placed: list[SceneObject] = []
        for label in labels:
            for _ in range(max_tries):
                candidate = _sample_object(rng, label, style, centre=not placed and style.first_at_centre)
                if _fits(candidate, placed, style.margin, axes) and (is_visible is None or is_visible([*placed, candidate])):
                    placed.append(candidate)
                    break
            else:
                break  # this layout is too crowded for the next object; start the scene over
        if len(placed) == len(labels):
            return placed
    raise RuntimeError(f"Could not place {list(labels)} visibly after {max_tries} attempts.")


def scene_rng(seed: int, scene_index: int) -> np.random.Generator:
    """The random generator of one scene, so a scene's content depends only on (seed, scene index)."""
    return np.random.default_rng([seed, scene_index])


def sample_condition_set(seed: int, objects_per_condition: Sequence[int]) -> list[list[str]]:
    """A test.json-style list of conditions (distinct labels each), e.g. the project's own condition sets."""
    rng = np.random.default_rng(seed)
    return [[LABELS[i] for i in rng.choice(len(LABELS), size=n, replace=False)] for n in objects_per_condition]
