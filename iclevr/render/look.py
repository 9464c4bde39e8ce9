# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""How a scene looks: the render style (which camera, lamps, materials, shapes and placement rules) and the view of
one scene (its jittered camera and lamps). Pure data, no rendering.

The style ``ICLEVR`` follows CLEVR's generator, which drew i-CLEVR (sources in docs/renderer.md): CLEVR's
camera and lamps with their per-image jitter, soft area-lamp shadows, an approximation of bounce light, colours passed
as linear values and encoded as sRGB, rubber objects, bevelled cubes and cylinder rims, CLEVR's
placement margin and visibility rule, a floor that curves up into a backdrop, and i-CLEVR's proportions (inferred
from the panel); it is the default (`DEFAULT_STYLE`). ``LEGACY`` is the project's renderer before it. Each difference is one `COMPONENTS` entry, so
a style can revert any of them (`with_legacy`) for the per-change measurements in docs/experiments.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

# The parts of the look that change together, each one row of the per-change table.
COMPONENTS = ("objects", "camera", "lighting", "bounce", "bevel", "placement", "floor", "proportions")


@dataclass(frozen=True)
class RenderStyle:
    """Which look each component has: ``"iclevr"`` (CLEVR's generator) or ``"legacy"`` (the project's first renderer).

    Attributes:
        objects: iclevr: rubber, large objects (i-CLEVR has no shiny or small ones); legacy: half metal, half small.
        camera: iclevr: CLEVR's camera (49° lens, 11.3 from the origin) jittered ±0.5 per axis per scene; legacy: a
            fixed, longer lens from further away.
        lighting: iclevr: CLEVR's three area lamps (warm key on the right, cool fill, back) and weak sun, jittered ±1
            per axis per scene, with linear colours encoded as sRGB; legacy: white directional lights, colours as is.
        bounce: iclevr: light bounced off the floor and the backdrop fills shadows and the undersides; legacy: a flat
            ambient term.
        bevel: iclevr: cubes and cylinder rims rounded; legacy: sharp edges.
        placement: iclevr: the first object at the centre (i-CLEVR's), the others placed by CLEVR's rules: its 0.4
            margin along the camera's axes and 200 visible pixels at 320x240 (11 at 64x64); legacy: anywhere, no
            margin, 15 pixels at 64x64.
        floor: iclevr: the floor curves up into a backdrop behind the scene; legacy: an infinite plane.
        proportions: iclevr: i-CLEVR's sizes (*inferred* from the panel): every shape 0.6 in half height and half
            width, the cube not shrunk by sqrt(2); legacy: CLEVR's large size (0.7, cubes shrunk by sqrt(2)). Applies
            with the iclevr ``objects`` only.
    """

    objects: str = "iclevr"
    camera: str = "iclevr"
    lighting: str = "iclevr"
    bounce: str = "iclevr"
    bevel: str = "iclevr"
    placement: str = "iclevr"
    floor: str = "iclevr"
    proportions: str = "iclevr"

    def __post_init__(self):
        for field in fields(self):
            if getattr(self, field.name) not in ("iclevr", "legacy"):
                raise ValueError(f"RenderStyle.{field.name} must be 'iclevr' or 'legacy', got {getattr(self, field.name)!r}.")

    def with_legacy(self, components) -> RenderStyle:
        """This style with ``components`` (names from `COMPONENTS`) reverted to the legacy look."""
        unknown = sorted(set(components) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"Unknown render component(s) {unknown}; choose from {list(COMPONENTS)}.")
        return replace(self, **dict.fromkeys(components, "legacy"))

    def legacy_components(self) -> list[str]:
        return [name for name in COMPONENTS if getattr(self, name) == "legacy"]

    @property
    def name(self) -> str:
        """``"iclevr"``, ``"legacy"``, or ``"iclevr-legacy-<components>"`` for a mix: what cache folders are named by."""
        reverted = self.legacy_components()
        if not reverted:
            return "iclevr"
        return "legacy" if len(reverted) == len(COMPONENTS) else "iclevr-legacy-" + "-".join(reverted)

    def is_iclevr(self, component: str) -> bool:
        return getattr(self, component) == "iclevr"

    @property
    def min_visible_pixels(self) -> int:
        """Unoccluded pixels each object keeps at 64x64: CLEVR's 200 of 320x240's 76,800 pixels is 10.7 of 4,096."""
        return 11 if self.is_iclevr("placement") else 15

    @property
    def first_at_centre(self) -> bool:
        """i-CLEVR's scenes start from one object at the centre of the floor (*inferred*: every model trained on the
        real images draws a lone object at the same spot of the frame, the projection of the origin), and the others
        are added around it by CLEVR's rules."""
        return self.is_iclevr("placement")

    @property
    def margin(self) -> float:
        """CLEVR's minimum offset between two objects along each of the camera's ground axes (left-right, front-back)."""
        return 0.4 if self.is_iclevr("placement") else 0.0

    @property
    def sizes(self) -> tuple[str, ...]:
        if not self.is_iclevr("objects"):
            return ("large", "small")
        return ("iclevr",) if self.is_iclevr("proportions") else ("large",)

    @property
    def materials(self) -> tuple[str, ...]:
        return ("rubber",) if self.is_iclevr("objects") else ("rubber", "metal")


ICLEVR = RenderStyle()
LEGACY = RenderStyle(**dict.fromkeys(COMPONENTS, "legacy"))
# The default look: i-CLEVR's. Its evaluator reads the dev panel 0.066 below the course's evaluator on average (the
# legacy look's: 0.272), the closest of every look measured (docs/experiments.md, "The renderer, one change at a time").
DEFAULT_STYLE = ICLEVR


def style_from_name(name: str, legacy_components=()) -> RenderStyle:
    """``"iclevr"`` or ``"legacy"``, with ``legacy_components`` reverted (the ``render_iclevr.py`` flags)."""
    styles = {"iclevr": ICLEVR, "legacy": LEGACY}
    if name not in styles:
        raise ValueError(f"Unknown render style {name!r}; choose from {sorted(styles)}.")
    return styles[name].with_legacy(legacy_components)


# --- CLEVR's camera and lamps (clevr-dataset-gen image_generation/: render_images.py and data/base_scene.blend) --
CLEVR_CAMERA = (7.48, -6.51, 5.34)
CLEVR_CAMERA_JITTER = 0.5
CLEVR_FOV_X = 2 * math.atan(16.0 / 35.0)  # a 35 mm lens on a 32 mm sensor: 49.1 degrees across
CLEVR_LAMP_JITTER = 1.0
# (position, edge size of the square area lamp, power, colour): key right of the camera, fill left, back behind.
CLEVR_LAMPS = (
    ((6.45, -2.91, 4.26), 0.5, 100.0, (1.0, 0.93, 0.82)),
    ((-4.67, -4.01, 3.01), 0.5, 30.0, (0.76, 0.82, 1.0)),
    ((-1.17, 2.65, 5.82), 1.0, 50.0, (1.0, 1.0, 1.0)),
)

# The legacy camera: a longer lens from further away, no jitter.
LEGACY_ELEVATION, LEGACY_AZIMUTH, LEGACY_DISTANCE = math.radians(30.0), math.radians(-45.0), 13.0
LEGACY_FOV_X = math.radians(33.0)


@dataclass(frozen=True)
class View:
    """One scene's camera and lamps (the per-scene jitter already applied), shared by the scene's 1-, 2- and 3-object
    images as GeNeVA added objects to one fixed scene. Hashable, so rays can be cached per view."""

    camera: tuple[float, float, float]
    fov_x: float
    lamps: tuple[tuple[float, float, float], ...] = ()  # positions of CLEVR_LAMPS (empty: the legacy lights)

    def to_dict(self) -> dict:
        return {"camera": list(self.camera), "fov_x": self.fov_x, "lamps": [list(lamp) for lamp in self.lamps]}

    @classmethod
    def from_dict(cls, data: dict) -> View:
        return cls(tuple(data["camera"]), float(data["fov_x"]), tuple(tuple(lamp) for lamp in data.get("lamps", ())))


def legacy_camera() -> tuple[float, float, float]:
    ce = math.cos(LEGACY_ELEVATION)
    return (LEGACY_DISTANCE * ce * math.cos(LEGACY_AZIMUTH), LEGACY_DISTANCE * ce * math.sin(LEGACY_AZIMUTH),
            LEGACY_DISTANCE * math.sin(LEGACY_ELEVATION))


def default_view(style: RenderStyle = DEFAULT_STYLE) -> View:
    """The style's view without jitter (reference pictures, the empty floor, the tests' fixed scenes)."""
    camera = CLEVR_CAMERA if style.is_iclevr("camera") else legacy_camera()
    fov = CLEVR_FOV_X if style.is_iclevr("camera") else LEGACY_FOV_X
    lamps = tuple(position for position, *_ in CLEVR_LAMPS) if style.is_iclevr("lighting") else ()
    return View(tuple(float(v) for v in camera), fov, lamps)


def sample_view(rng: np.random.Generator, style: RenderStyle = DEFAULT_STYLE) -> View:
    """A scene's view: CLEVR jitters the camera by ±0.5 and each lamp by ±1.0 per axis, uniformly. Rounded to 5
    decimals, so the view saved in ``views.json`` re-renders the saved image exactly."""
    base = default_view(style)
    camera = base.camera
    if style.is_iclevr("camera"):
        camera = tuple(round(float(v + rng.uniform(-CLEVR_CAMERA_JITTER, CLEVR_CAMERA_JITTER)), 5) for v in camera)
    lamps = tuple(tuple(round(float(v + rng.uniform(-CLEVR_LAMP_JITTER, CLEVR_LAMP_JITTER)), 5) for v in lamp) for lamp in base.lamps)
    return View(camera, base.fov_x, lamps)
