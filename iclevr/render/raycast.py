# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""A vectorised CLEVR ray caster in torch: pure computation, no I/O, no assets.

The look follows a `RenderStyle` (`iclevr.render.look`); the default is CLEVR's generator, which drew i-CLEVR: its
camera and its three area lamps (warm key, cool fill, back) plus a weak sun, each scene's own jittered `View`, soft
shadows (each sub-sample sees another point of each lamp), floor and backdrop light bounced onto the objects, colours
given as linear reflectances and encoded as sRGB, matte rubber, bevelled cubes and cylinder rims (sphere-traced on a
rounded solid), and a floor that curves up into a backdrop behind the scene. The legacy style is the project's first
look (white directional lights, an ambient term, colours as is, half metal, sharp edges).

Why it is fast: each object is intersected only with the rays of its screen rectangle (the projection of its bounding
sphere), and its shadow only with the rays of the rectangle its shadow volume can cover, as tensor slices of the
image, so no per-ray gathers are needed. Objects cover a few percent of an i-CLEVR frame, so this does a small
fraction of the work of testing every ray against every object. One ray goes through each pixel centre; only pixels
whose centre sees something else than a neighbour (another object, or another set of shadowing lights) are traced
again with ``spp x spp`` sub-samples. Primary rays are cached per view and resolution, and a scene's 1-, 2- and
3-object images share their view.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from iclevr.render.look import CLEVR_LAMPS, DEFAULT_STYLE, ICLEVR, RenderStyle, View, default_view
from iclevr.render.scenes import CLEVR_RGB, SceneObject

EPS = 1e-4
CAMERA_ASPECT = 4.0 / 3.0  # i-CLEVR's 320x240; any output size samples the same frustum (64x64 = the course's squash)

# Legacy look: white directional lights (direction towards the light, intensity, angular radius), flat ambient.
LEGACY_LIGHTS = (
    ((-0.35, -0.75, 0.85), 0.62, 0.06),  # key: upper left of the camera
    ((0.85, -0.25, 0.55), 0.22, 0.10),  # fill: right of the camera
    ((-0.40, 0.85, 0.75), 0.20, 0.10),  # back: behind the scene
)
LEGACY_AMBIENT = 0.28
LEGACY_GROUND_ALBEDO = 0.62
LEGACY_SHADOW_STRENGTH = 0.85

# CLEVR's look. The lamps' watts become irradiance as a Lambertian area emitter's, power * cos / (pi * d^2); a
# surface of reflectance rho then has radiance rho / pi * irradiance, scaled by EXPOSURE and encoded as sRGB.
SUN_DIRECTION = (0.62, -0.55, 0.56)  # towards the sun: near the camera's direction, a little higher
SUN_IRRADIANCE = 0.45
FLOOR_ALBEDO = 0.8  # Blender's default grey
# Exposure and bounce strengths: calibrated together so that the empty floor's rows match the panel's median
# background (105 grey levels at the top of a 64x64 frame, about 130 in the middle, 145 at the bottom; docs/renderer.md).
EXPOSURE = 0.9
BOUNCE_FLOOR = 0.55  # floor and backdrop light reaching the floor again (scaled by how open the sky is)
BOUNCE_ABOVE = 0.35  # the backdrop's light reaching an object's upper side, relative to the floor's
BACKDROP_DISTANCE = 8.0  # where the floor starts to curve up, along the camera's ground direction past the origin
BACKDROP_FILLET = 6.0
BEVEL = 0.18  # cube edge / cylinder rim rounding, as a share of the half size
RUBBER_SHEEN = 0.04


def srgb_encode(linear: torch.Tensor) -> torch.Tensor:
    """Linear light in [0, 1] → sRGB-encoded values (IEC 61966-2-1), as Blender saves a PNG."""
    linear = linear.clamp(0, 1)
    return torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear.clamp_min(1e-12) ** (1 / 2.4) - 0.055)


# --- camera ------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def camera_basis(view: View) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Camera position and its forward, right and up unit vectors (aimed at the origin, as CLEVR's camera is)."""
    position = torch.tensor(view.camera, dtype=torch.float32)
    forward = -position / position.norm()
    right = torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0]))
    right = right / right.norm()
    up = torch.linalg.cross(right, forward)
    return position, forward, right, up


def _tan_half_fov(view: View) -> tuple[float, float]:
    tx = math.tan(view.fov_x / 2)
    return tx, tx / CAMERA_ASPECT


def project(points: torch.Tensor, width: int, height: int, view: View | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """World points ``(..., 3)`` → pixel coordinates ``(..., 2)`` as (x, y), and depth along the view axis."""
    view = view or default_view(DEFAULT_STYLE)
    position, forward, right, up = camera_basis(view)
    tx, ty = _tan_half_fov(view)
    rel = points - position
    depth = rel @ forward
    x = (rel @ right) / (depth * tx)
    y = -(rel @ up) / (depth * ty)
    return torch.stack([(x + 1) / 2 * width, (y + 1) / 2 * height], dim=-1), depth


def ground_axes(view: View | None = None) -> tuple[tuple[float, float], tuple[float, float]]:
    """The camera's right and forward directions on the ground (unit 2-vectors): CLEVR's left/right and front/behind."""
    _, forward, right, _ = camera_basis(view or default_view(DEFAULT_STYLE))
    f = forward[:2] / forward[:2].norm()
    r = right[:2] / right[:2].norm()
    return (float(r[0]), float(r[1])), (float(f[0]), float(f[1]))


def _disc(n: int) -> torch.Tensor:
    """``(n, 2)`` points spread evenly over the unit disc (golden angle), one per sub-sample; the centre for n = 1."""
    if n == 1:
        return torch.zeros(1, 2)
    i = torch.arange(n, dtype=torch.float32)
    radius, angle = torch.sqrt((i + 0.5) / n), i * math.pi * (3 - math.sqrt(5))
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], -1)


def _pixel_rays(width: int, height: int, offsets: torch.Tensor, view: View) -> torch.Tensor:
    """Unit ray directions ``(H, W, S, 3)`` through sub-pixel offsets ``(S, 2)`` (x, y in [0, 1)) of every pixel."""
    _, forward, right, up = camera_basis(view)
    tx, ty = _tan_half_fov(view)
    py, px = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    u = (px[..., None] + offsets[:, 0]) / width * 2 - 1
    v = (py[..., None] + offsets[:, 1]) / height * 2 - 1
    directions = forward + u[..., None] * tx * right - v[..., None] * ty * up
    return directions / directions.norm(dim=-1, keepdim=True)


@dataclass(frozen=True)
class _Frame:
    """Rays of one view and resolution: pixel centres, and ``S = spp*spp`` stratified sub-samples."""

    centers: torch.Tensor  # (H, W, 3)
    samples: torch.Tensor  # (H, W, S, 3)


@lru_cache(maxsize=4)
def _frame(width: int, height: int, spp: int, view: View) -> _Frame:
    grid = (torch.arange(spp, dtype=torch.float32) + 0.5) / spp
    sy, sx = torch.meshgrid(grid, grid, indexing="ij")
    offsets = torch.stack([sx.flatten(), sy.flatten()], -1)
    return _Frame(_pixel_rays(width, height, torch.tensor([[0.5, 0.5]]), view)[:, :, 0], _pixel_rays(width, height, offsets, view))


# --- lights ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Light:
    """A directional light (``position`` None: ``direction`` towards it, ``radius`` its angular radius) or an area lamp
    (``position``, facing the origin, ``radius`` its half size); ``color`` is its RGB strength."""

    color: tuple[float, float, float]
    radius: float
    direction: tuple[float, float, float] | None = None
    position: tuple[float, float, float] | None = None
    shadows: bool = True  # whether it casts shadows (tested and supersampled)

    def _axes(self, base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.linalg.cross(base, torch.tensor([0.0, 0.0, 1.0]))
        a = a / a.norm()
        return a, torch.linalg.cross(base, a)

    def towards(self, points: torch.Tensor, disc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit directions ``(..., 3)`` from ``points`` to the light's point ``disc`` ``(..., 2)`` (broadcast), and the
        light's RGB irradiance ``(..., 3)`` there on a surface facing it."""
        if self.position is None:
            base = torch.tensor(self.direction) / torch.tensor(self.direction).norm()
            a, b = self._axes(base)
            d = base + self.radius * (disc[..., :1] * a + disc[..., 1:] * b)
            d = d / d.norm(dim=-1, keepdim=True)
            return d.expand(*points.shape[:-1], 3), torch.tensor(self.color).expand(*points.shape[:-1], 3)
        center = torch.tensor(self.position)
        aim = -center / center.norm()
        a, b = self._axes(aim)
        target = center + self.radius * (disc[..., :1] * a + disc[..., 1:] * b)
        v = target - points
        dist2 = (v * v).sum(-1, keepdim=True).clamp_min(1e-6)
        d = v * dist2.rsqrt()
        emitter = (-(d * aim).sum(-1, keepdim=True)).clamp_min(0)  # a one-sided Lambertian emitter facing the origin
        return d, torch.tensor(self.color) * emitter / (math.pi * dist2)


@lru_cache(maxsize=64)
def _lights(view: View, style: RenderStyle) -> tuple[_Light, ...]:
    if not style.is_iclevr("lighting"):
        return tuple(_Light((intensity,) * 3, softness, direction=direction) for direction, intensity, softness in LEGACY_LIGHTS)
    lamps = tuple(_Light(tuple(power * c for c in color), size / 2, position=position)
                  for position, (_, size, power, color) in zip(view.lamps, CLEVR_LAMPS))
    # The sun shines from near the camera, so its shadows fall behind the objects, out of sight: it casts none here,
    # which saves a quarter of the shadow rays.
    return (*lamps, _Light((SUN_IRRADIANCE,) * 3, 0.05, direction=SUN_DIRECTION, shadows=False))


# --- one object --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Solid:
    shape: str
    center: tuple[float, float, float]  # centre of the bounding volume
    radius: float  # sphere/cylinder radius and half height; a cube's half size is radius / sqrt(2)
    cos: float
    sin: float
    albedo: tuple[float, float, float]
    metal: bool
    bevel: float = 0.0  # rounding radius of the cube's edges / the cylinder's rims (0: sharp)

    @classmethod
    def from_object(cls, obj: SceneObject, style: RenderStyle = DEFAULT_STYLE) -> _Solid:
        r = obj.radius
        half_height = r / math.sqrt(2.0) if obj.shape == "cube" else r
        albedo = tuple(c / 255.0 for c in CLEVR_RGB[obj.color])
        center = (float(obj.x), float(obj.y), float(half_height))
        bevel = BEVEL * half_height if style.is_iclevr("bevel") and obj.shape != "sphere" else 0.0
        return cls(obj.shape, center, r, math.cos(obj.yaw), math.sin(obj.yaw), albedo, obj.material == "metal", bevel)

    @property
    def half(self) -> float:
        """Half height: a cube's half size, or the sphere's and the cylinder's radius."""
        return self.radius / math.sqrt(2.0) if self.shape == "cube" else self.radius

    @property
    def bound(self) -> float:
        """Radius of a sphere about ``center`` holding the object (cube (r/sqrt2)*sqrt3 < r*sqrt2 = cylinder's)."""
        return self.radius if self.shape == "sphere" else self.radius * math.sqrt(2.0)

    def _local(self, v: torch.Tensor) -> torch.Tensor:
        """Rotate world vectors into the object's frame (by -yaw about z)."""
        x, y = v[..., 0], v[..., 1]
        return torch.stack([self.cos * x + self.sin * y, -self.sin * x + self.cos * y, v[..., 2]], -1)

    def _world(self, v: torch.Tensor) -> torch.Tensor:
        x, y = v[..., 0], v[..., 1]
        return torch.stack([self.cos * x - self.sin * y, self.sin * x + self.cos * y, v[..., 2]], -1)

    def _sharp(self, oc: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        r = self.radius
        if self.shape == "sphere":
            b = (oc * direction).sum(-1)
            disc = b * b - ((oc * oc).sum(-1) - r * r)
            root = disc.clamp_min(0).sqrt()
            t = torch.where(-b - root > EPS, -b - root, -b + root)
            return torch.where((disc > 0) & (t > EPS), t, math.inf)
        if self.shape == "cube":
            half = self.half
            lo, ld = self._local(oc), self._local(direction)
            inv = 1.0 / torch.where(ld.abs() < 1e-9, 1e-9, ld)
            t1, t2 = (-half - lo) * inv, (half - lo) * inv
            t_near = torch.minimum(t1, t2).amax(-1)
            t_far = torch.maximum(t1, t2).amin(-1)
            t = torch.where(t_near > EPS, t_near, t_far)
            return torch.where((t_far >= t_near) & (t > EPS), t, math.inf)
        # Cylinder: side wall, then the cap facing the ray.
        dx, dy, dz = direction.unbind(-1)
        ox, oy, oz = oc.unbind(-1)
        a = (dx * dx + dy * dy).clamp_min(1e-12)
        b = ox * dx + oy * dy
        disc = b * b - a * (ox * ox + oy * oy - r * r)
        t_side = (-b - disc.clamp_min(0).sqrt()) / a
        side_ok = (disc > 0) & (t_side > EPS) & ((oz + t_side * dz).abs() <= r)
        dz_safe = torch.where(dz.abs() < 1e-9, 1e-9, dz)
        t_cap = torch.where(oz > 0, r - oz, -r - oz) / dz_safe
        cx, cy = ox + t_cap * dx, oy + t_cap * dy
        cap_ok = (t_cap > EPS) & (cx * cx + cy * cy <= r * r)
        return torch.minimum(torch.where(side_ok, t_side, math.inf), torch.where(cap_ok, t_cap, math.inf))

    def _inner_point(self, local: torch.Tensor) -> torch.Tensor:
        """The nearest point of the solid shrunk by the bevel: the rounded surface lies ``bevel`` away from it."""
        inner = self.half - self.bevel
        if self.shape == "cube":
            return local.clamp(-inner, inner)
        radial = local[..., :2].norm(dim=-1, keepdim=True)
        scale = torch.where(radial > inner, inner / radial.clamp_min(1e-9), torch.ones_like(radial))
        return torch.cat([local[..., :2] * scale, local[..., 2:].clamp(-inner, inner)], -1)

    def intersect(self, origin: torch.Tensor, direction: torch.Tensor, rounded: bool = False) -> torch.Tensor:
        """Nearest positive distance along each ray (``inf`` where it misses). Shapes ``(..., 3)`` → ``(...)``.

        ``rounded``: hit the bevelled solid (sphere tracing from the sharp solid's entry point, which holds it);
        shadow rays test the sharp solid, whose shadow differs by less than a pixel.
        """
        oc = origin - torch.tensor(self.center)
        t = self._sharp(oc, direction)
        if not rounded or self.bevel <= 0:
            return t
        hit = torch.isfinite(t)
        if not hit.any():
            return t
        o, d, s = self._local(oc.expand_as(direction)[hit]), self._local(direction[hit]), t[hit]
        distance = torch.zeros_like(s)
        for _ in range(8):  # the rounded surface is at most a bevel away from the entry point: a few steps reach it
            p = o + s[:, None] * d
            distance = (p - self._inner_point(p)).norm(dim=-1) - self.bevel
            s = s + distance
        t = t.clone()
        t[hit] = torch.where(distance < 2e-3 * self.half, s, torch.full_like(s, math.inf))
        return t

    def normal(self, p: torch.Tensor) -> torch.Tensor:
        """Outward unit normal at surface points ``(..., 3)``."""
        rel = p - torch.tensor(self.center)
        if self.shape == "sphere":
            n = rel
        elif self.bevel > 0:
            local = self._local(rel)
            n = self._world(local - self._inner_point(local))
        elif self.shape == "cube":
            local = self._local(rel)
            axis = local.abs().argmax(-1, keepdim=True)
            n = self._world(torch.zeros_like(local).scatter_(-1, axis, local.gather(-1, axis).sign()))
        else:
            on_cap = rel[..., 2:3].abs() > self.radius - 1e-3
            cap = torch.zeros_like(rel)
            cap[..., 2] = rel[..., 2].sign()
            radial = rel.clone()
            radial[..., 2] = 0
            n = torch.where(on_cap, cap, radial)
        return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-9)

    def screen_box(self, width: int, height: int, view: View, centers: list[torch.Tensor], radii: list[float]) -> tuple[slice, slice] | None:
        """Pixel rectangle holding the projections of spheres (centre, radius); ``None`` if off screen."""
        corners = torch.tensor([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=torch.float32)
        points = torch.cat([c + r * corners for c, r in zip(centers, radii)])
        pixels, depth = project(points, width, height, view)
        if (depth <= 0.05).any():  # too close to the camera to bound reliably: use the whole image
            return slice(0, height), slice(0, width)
        x0, y0 = pixels.amin(0).floor().long().tolist()
        x1, y1 = pixels.amax(0).ceil().long().tolist()
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1 + 1, width), min(y1 + 1, height)
        if x0 >= x1 or y0 >= y1:
            return None
        return slice(y0, y1), slice(x0, x1)

    def object_box(self, width: int, height: int, view: View):
        return self.screen_box(width, height, view, [torch.tensor(self.center)], [self.bound])

    def shadow_box(self, width: int, height: int, view: View, light: _Light):
        """Rectangle of the shadow volume: the object plus its (penumbra-padded) shadow on the ground."""
        center = torch.tensor(self.center)
        if light.position is None:
            towards = torch.tensor(light.direction) / torch.tensor(light.direction).norm()
            on_ground = center - center[2] / towards[2] * towards
            shadow_radius = self.bound / float(towards[2]) + float(center[2]) * 3 * light.radius + 0.05
        else:  # a lamp: the shadow is the object's projection from the lamp, enlarged by its nearness and size
            lamp = torch.tensor(light.position)
            top = float(center[2]) + self.bound
            if top >= float(lamp[2]) - 0.2:
                return slice(0, height), slice(0, width)
            on_ground = lamp + (center - lamp) * (lamp[2] / (lamp[2] - center[2]))
            towards = (lamp - center) / (lamp - center).norm()
            grow = float(lamp[2]) / (float(lamp[2]) - top)
            shadow_radius = (self.bound + light.radius) * grow / float(towards[2]) + 0.1
        return self.screen_box(width, height, view, [center, on_ground], [self.bound, shadow_radius])


# --- the floor ---------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _backdrop_axis() -> torch.Tensor:
    """The horizontal direction from the base camera over the origin: the backdrop stands across it."""
    base = torch.tensor(default_view(ICLEVR).camera[:2])
    axis = -base / base.norm()
    return torch.tensor([float(axis[0]), float(axis[1]), 0.0])


def _ground(position: torch.Tensor, directions: torch.Tensor, style: RenderStyle) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance to the floor (and backdrop) along each ray, and the surface normal there."""
    t_floor = torch.where(directions[..., 2] < 0, -position[2] / directions[..., 2].clamp_max(-1e-9), math.inf)
    normal = torch.zeros_like(directions)
    normal[..., 2] = 1.0
    if style.is_iclevr("floor"):
        axis = _backdrop_axis()
        along = directions @ axis
        start = position @ axis
        t_wall = torch.where(along > 1e-6, (BACKDROP_DISTANCE + BACKDROP_FILLET - start) / along.clamp_min(1e-6), math.inf)
        t = torch.minimum(t_floor, t_wall)
        points = position + t[..., None] * directions
        # The curve between floor and backdrop: the normal turns from up to facing the camera over the fillet.
        on_floor = (points @ axis - BACKDROP_DISTANCE).clamp(0, BACKDROP_FILLET) / BACKDROP_FILLET
        on_wall = 1 - points[..., 2].clamp(0, BACKDROP_FILLET) / BACKDROP_FILLET
        turn = torch.where(t_wall < t_floor, 1 - 0.5 * on_wall ** 2, 0.5 * on_floor ** 2)  # 0: up, 1: facing the camera
        angle = turn * (math.pi / 2)
        normal = torch.cos(angle)[..., None] * normal - torch.sin(angle)[..., None] * axis
        return t, normal
    return t_floor, normal


def _legacy_ground_falloff(p: torch.Tensor) -> torch.Tensor:
    """The legacy floor's soft falloff: brightest a little behind the scene centre, darker towards the far edges."""
    dist2 = (p[..., 0] + 0.5) ** 2 + (p[..., 1] - 0.5) ** 2
    return 1.0 - 0.32 * (1 - torch.exp(-dist2 / 60.0)) - 0.05 * (p[..., 1] - p[..., 0]).clamp_min(0) / 8


# --- shading -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Scene:
    """What shading one image needs besides the rays: solids, view, style, lights and the floor's bounced light."""

    solids: tuple[_Solid, ...]
    view: View
    style: RenderStyle
    lights: tuple[_Light, ...]
    floor_radiance: torch.Tensor  # (3,) the lit floor's radiance near the origin, what bounces back


def _floor_radiance(lights: Sequence[_Light]) -> torch.Tensor:
    origin = torch.zeros(1, 3)
    total = torch.zeros(3)
    for light in lights:
        d, strength = light.towards(origin, torch.zeros(1, 2))
        total = total + strength[0] * d[0, 2].clamp_min(0)
    return FLOOR_ALBEDO / math.pi * total


def _environment(reflected: torch.Tensor) -> torch.Tensor:
    """Brightness a metal surface reflects: the grey ground below the horizon, a bright studio above it."""
    return 0.22 + 0.95 * torch.sigmoid(reflected[..., 2] * 10.0 - 1.0)


def _legacy_object(solid: _Solid, normals, view_dirs, light_dirs, lit) -> torch.Tensor:
    """The legacy look: Lambert plus a weak, broad highlight (rubber), or a little diffuse, a coloured reflection of
    the environment and sharp white highlights (metal)."""
    shininess, strength = (90.0, 1.6) if solid.metal else (14.0, 0.10)
    diffuse = torch.full(normals.shape[:1], LEGACY_AMBIENT)
    specular = torch.zeros(normals.shape[:1])
    for li, (_, intensity, _) in enumerate(LEGACY_LIGHTS):
        half = light_dirs[li] + view_dirs
        half = half / half.norm(dim=-1, keepdim=True)
        diffuse = diffuse + intensity * lit[li] * (normals * light_dirs[li]).sum(-1).clamp_min(0)
        specular = specular + intensity * lit[li] * (normals * half).sum(-1).clamp_min(0) ** shininess
    albedo = torch.tensor(solid.albedo)
    if not solid.metal:
        return albedo * diffuse[:, None] + strength * specular[:, None]
    reflected = -view_dirs + 2 * (normals * view_dirs).sum(-1, keepdim=True) * normals
    return albedo * (0.25 * diffuse[:, None] + 0.85 * _environment(reflected)[:, None]) + strength * specular[:, None]


def _bounce(scene: _Scene, normals: torch.Tensor) -> torch.Tensor:
    """Light reaching a surface indirectly: the floor's from below, the backdrop's (fainter) from above."""
    if not scene.style.is_iclevr("bounce"):
        return torch.zeros(*normals.shape[:-1], 3)
    down = ((1 - normals[..., 2:3]) / 2)
    return scene.floor_radiance * (down + BOUNCE_ABOVE * (1 - down)) * math.pi


def _iclevr_object(scene: _Scene, solid: _Solid, normals, view_dirs, light_dirs, strengths, lit) -> torch.Tensor:
    """Linear radiance of rubber (Lambert with a faint broad sheen) or metal (a tinted mirror of the floor and backdrop
    with highlights) under the lamps, the sun and the bounced light."""
    irradiance = _bounce(scene, normals)
    specular = torch.zeros(normals.shape[:1])
    for li in range(len(scene.lights)):
        facing = (normals * light_dirs[li]).sum(-1).clamp_min(0)
        irradiance = irradiance + strengths[li] * (lit[li] * facing)[:, None]
        half = light_dirs[li] + view_dirs
        half = half / half.norm(dim=-1, keepdim=True)
        power = 60.0 if solid.metal else 8.0
        specular = specular + strengths[li].mean(-1) * lit[li] * (normals * half).sum(-1).clamp_min(0) ** power
    albedo = torch.tensor(solid.albedo)
    if not solid.metal:
        return albedo * irradiance / math.pi + RUBBER_SHEEN * specular[:, None]
    reflected = -view_dirs + 2 * (normals * view_dirs).sum(-1, keepdim=True) * normals
    mirror = scene.floor_radiance * (1.0 + 1.5 * torch.sigmoid(reflected[..., 2:3] * 10.0 - 1.0))
    return albedo * (0.2 * irradiance / math.pi + 0.9 * mirror) + 0.5 * specular[:, None]


def _ambient_occlusion(scene: _Scene, points: torch.Tensor) -> torch.Tensor:
    """How much of the sky a floor point sees: objects standing near it hide some of the bounced light."""
    open_sky = torch.ones(points.shape[:-1])
    for solid in scene.solids:
        d2 = (points[..., 0] - solid.center[0]) ** 2 + (points[..., 1] - solid.center[1]) ** 2
        open_sky = open_sky * (1 - 0.6 * (solid.half ** 2 / (d2 + solid.half ** 2)) ** 1.5)
    return open_sky


@dataclass
class RenderOutput:
    """One rendered image and its object masks."""

    image: torch.Tensor  # (H, W, 3) float in [0, 1]
    coverage: torch.Tensor  # (K, H, W) fraction of each pixel's rays that see object k


_EVERYWHERE = (Ellipsis,)


def _trace(scene: _Scene, directions, disc, object_boxes=None, shadow_boxes=None, shading=True):
    """Trace rays ``directions`` ``(*shape, 3)`` from the camera; ``disc`` ``(*shape or broadcastable, 2)`` picks the
    point of each light a ray's shadow test and shading see.

    ``object_boxes[k]`` / ``shadow_boxes[k][l]`` restrict work to index tuples of the leading dims (``None``: the object
    is off screen); without boxes every ray is tested against every object.
    Returns colours ``(*shape, 3)`` (``None`` without shading), the hit object ``(*shape)`` (-1: the floor) and
    ``blocked`` ``(L, *shape)``, whether each light is shadowed.
    """
    position = camera_basis(scene.view)[0]
    shape = directions.shape[:-1]
    best_t, floor_normals = _ground(position, directions, scene.style)
    best_k = torch.full(shape, -1, dtype=torch.int8)
    for k, solid in enumerate(scene.solids):
        box = object_boxes[k] if object_boxes is not None else _EVERYWHERE
        if box is not None:
            t = solid.intersect(position, directions[box], rounded=True)
            closer = t < best_t[box]
            best_t[box] = torch.where(closer, t, best_t[box])
            best_k[box] = torch.where(closer, k, best_k[box])
    blocked = torch.zeros((len(scene.lights), *shape), dtype=torch.bool)
    if not shading:
        return None, best_k, blocked

    points = position + best_t[..., None] * directions
    normals = floor_normals
    for k, solid in enumerate(scene.solids):
        box = object_boxes[k] if object_boxes is not None else _EVERYWHERE
        if box is not None:
            normals[box] = torch.where((best_k[box] == k)[..., None], solid.normal(points[box]), normals[box])
    origins = points + 1e-3 * normals  # off the surface, so shadow rays do not hit their own start
    disc = disc.expand(*shape, 2)
    towards = [light.towards(origins, disc) for light in scene.lights]
    for k, solid in enumerate(scene.solids):
        for li in range(len(scene.lights)):
            box = shadow_boxes[k][li] if shadow_boxes is not None else _EVERYWHERE if scene.lights[li].shadows else None
            if box is not None:
                # Every solid is convex, so it never shadows itself beyond its own n.l; testing it against its own
                # points would also darken a bevel, whose points lie inside the sharp solid the shadow rays test.
                others = best_k[box] != k
                blocked[li][box] |= torch.isfinite(solid.intersect(origins[box], towards[li][0][box])) & others
    if scene.style.is_iclevr("lighting"):
        lit = 1.0 - blocked.float()
        floor_irradiance = _bounce(scene, normals) * (BOUNCE_FLOOR * _ambient_occlusion(scene, points))[..., None]
        for li, (d, strength) in enumerate(towards):
            floor_irradiance = floor_irradiance + strength * (lit[li] * (normals * d).sum(-1).clamp_min(0))[..., None]
        colors = FLOOR_ALBEDO / math.pi * floor_irradiance
    else:
        lit = 1.0 - LEGACY_SHADOW_STRENGTH * blocked.float()
        irradiance = LEGACY_AMBIENT + sum(intensity * lit[li] * towards[li][0][..., 2] for li, (_, intensity, _) in enumerate(LEGACY_LIGHTS))
        colors = (LEGACY_GROUND_ALBEDO * _legacy_ground_falloff(points) * irradiance)[..., None].expand(*shape, 3).clone()
    for k, solid in enumerate(scene.solids):
        rows = (best_k == k).nonzero(as_tuple=True)
        if rows[0].numel():
            light_dirs = torch.stack([d[rows] for d, _ in towards])
            if scene.style.is_iclevr("lighting"):
                strengths = torch.stack([s[rows] for _, s in towards])
                colors[rows] = _iclevr_object(scene, solid, normals[rows], -directions[rows], light_dirs, strengths, lit[(slice(None), *rows)])
            else:
                colors[rows] = _legacy_object(solid, normals[rows], -directions[rows], light_dirs, lit[(slice(None), *rows)])
    if scene.style.is_iclevr("lighting"):
        colors = srgb_encode(EXPOSURE * colors)
    return colors, best_k, blocked


def _edges(code: torch.Tensor) -> torch.Tensor:
    """Pixels whose code (what the centre ray saw) differs from any of their 8 neighbours'."""
    padded = torch.nn.functional.pad(code[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0]
    height, width = code.shape
    edge = torch.zeros_like(code, dtype=torch.bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            edge |= padded[dy : dy + height, dx : dx + width] != code
    return edge


def render(scene: Sequence[SceneObject], width: int, height: int, spp: int = 2, shading: bool = True,
           view: View | None = None, style: RenderStyle = DEFAULT_STYLE) -> RenderOutput:
    """Ray cast one scene.

    Adaptive supersampling: one ray through every pixel centre first; then every pixel whose centre sees something
    different from a neighbour's (another object, the ground, or another set of shadowing lights) is re-traced with
    ``spp * spp`` stratified rays, each seeing a different point of the area lights, and averaged. Interiors of
    surfaces and shadows are smooth, so this gives supersampled edges and soft shadow borders at a fraction of the cost.

    Args:
        scene: the objects, in the order they were added.
        width, height: output size; the camera frustum is fixed, so every size shows the same view.
        spp: sub-samples per pixel along each axis at edges (``spp * spp`` rays per edge pixel).
        shading: if False only the object coverage is computed (fast visibility checks); ``image`` is the bare ground.
        view: the scene's camera and lamps (`iclevr.render.look.sample_view`); default: the style's, unjittered.
        style: the look (`iclevr.render.look.RenderStyle`); default: i-CLEVR's.
    """
    if width < 1 or height < 1 or spp < 1:
        raise ValueError(f"width, height and spp must be positive, got {width}, {height}, {spp}.")
    view = view or default_view(style)
    frame = _frame(width, height, spp, view)
    lights = _lights(view, style)
    solids = tuple(_Solid.from_object(obj, style) for obj in scene)
    context = _Scene(solids, view, style, lights, _floor_radiance(lights) if style.is_iclevr("lighting") else torch.zeros(3))
    object_boxes = [solid.object_box(width, height, view) for solid in solids]
    shadow_boxes = [[solid.shadow_box(width, height, view, light) if light.shadows else None for light in lights]
                    for solid in solids] if shading else None
    image, hit, blocked = _trace(context, frame.centers, torch.zeros(1, 1, 2), object_boxes, shadow_boxes, shading)
    coverage = torch.stack([(hit == k).float() for k in range(len(solids))]) if solids else torch.zeros(0, height, width)
    if spp > 1 and solids:
        code = hit.long() * (1 << len(lights)) + sum(blocked[li].long() << li for li in range(len(lights)))
        rows = _edges(code).nonzero(as_tuple=True)
        if rows[0].numel():
            directions = frame.samples[rows]  # (N, S, 3)
            colors, sub_hit, _ = _trace(context, directions, _disc(spp * spp)[None], shading=shading)
            coverage[(slice(None), *rows)] = torch.stack([(sub_hit == k).float().mean(-1) for k in range(len(solids))])
            if shading:
                image[rows] = colors.mean(1)
    if image is None:
        image = torch.full((height, width, 3), LEGACY_GROUND_ALBEDO)
    return RenderOutput(image.clamp(0, 1), coverage)


def image_box(obj: SceneObject, view: View | None = None) -> tuple[float, float, float, float]:
    """The object's bounding box in the image, ``(x0, y0, x1, y1)`` as fractions of the width and height (x to the
    right, y down; clipped to [0, 1]): the projection of its whole surface, hidden parts included, as layout
    annotations give it, seen from the scene's ``view``. Any output size shows the same frustum, so one box serves
    every resolution. (A bevelled object's box is that of its sharp solid, at most a few hundredths of a pixel wider
    at 64x64.)"""
    solid = _Solid.from_object(obj)
    center, r = torch.tensor(solid.center), solid.radius
    if obj.shape == "sphere":  # a dense Fibonacci sphere: its projection's extent is the silhouette's to < 0.1 %
        i = torch.arange(256, dtype=torch.float32) + 0.5
        z = 1 - 2 * i / 256
        angle = i * math.pi * (3 - math.sqrt(5))
        ring = (1 - z * z).sqrt()
        points = center + r * torch.stack([ring * torch.cos(angle), ring * torch.sin(angle), z], -1)
    elif obj.shape == "cube":
        half = solid.half
        corners = torch.tensor([[x, y, z] for x in (-half, half) for y in (-half, half) for z in (-half, half)])
        points = center + solid._world(corners)
    else:  # cylinder: its two rims
        angle = torch.linspace(0, 2 * math.pi, 129)[:-1]
        rim = torch.stack([r * torch.cos(angle), r * torch.sin(angle), torch.zeros_like(angle)], -1)
        points = torch.cat([center + rim + torch.tensor([0.0, 0.0, dz]) for dz in (-r, r)])
    xy, _ = project(points, 1, 1, view)
    low, high = xy.amin(0).clamp(0, 1), xy.amax(0).clamp(0, 1)
    return float(low[0]), float(low[1]), float(high[0]), float(high[1])


def visible_pixels(scene: Sequence[SceneObject], width: int = 64, height: int = 64, view: View | None = None,
                   style: RenderStyle = DEFAULT_STYLE) -> list[int]:
    """Unoccluded, in-frame pixel count of each object (one ray through each pixel centre)."""
    coverage = render(scene, width, height, spp=1, shading=False, view=view, style=style).coverage
    return coverage.flatten(1).sum(1).round().long().tolist()
