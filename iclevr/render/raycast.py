# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""A vectorised CLEVR-like ray caster in torch: pure computation, no I/O, no assets.

Fixed camera looking down at 30 degrees, matte grey ground with soft light falloff, key/fill/back directional lights
with soft shadows on the ground and on other objects (each sub-sample sees a slightly different point of the light),
Lambert + Blinn-Phong shading, metal objects with an environment reflection, and stratified supersampling
(``spp x spp`` rays per pixel) for anti-aliasing.

Why it is fast: everything that does not depend on the scene (primary rays, ground hits, the lit ground) is computed
once per resolution and cached. Each object is then intersected only with the rays of its screen rectangle (the
projection of its bounding sphere), and its shadow only with the rays of the rectangle its shadow volume can cover,
as tensor slices of the image, so no per-ray gathers are needed. Objects cover a few percent of an i-CLEVR frame,
so this does a small fraction of the work of testing every ray against every object. Images are rendered one after
the other (vectorised over their pixels and sub-samples); the CLI spreads them over processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from iclevr.render.scenes import CLEVR_RGB, SceneObject

EPS = 1e-4

# Camera: CLEVR-like 30 degree elevation; a longer lens than CLEVR's (33 vs 49 degrees) from a little further away, so
# the [-3, 3] placement area fills the frame, a large object is 10-14 px across at 64x64 and a small one 5-8 px, and
# far objects do not shrink to specks (median widths over random placements: large 11-13 px, small 5-6 px). The field of view has the 4:3 aspect of i-CLEVR's 320x240 images; any
# other output size samples the same frustum, so 64x64 is exactly the course's squashed resize of 320x240.
CAMERA_ELEVATION = math.radians(30.0)
CAMERA_AZIMUTH = math.radians(-45.0)
CAMERA_DISTANCE = 13.0
CAMERA_FOV_X = math.radians(33.0)
CAMERA_ASPECT = 4.0 / 3.0

# Directional lights: (direction towards the light, intensity, angular radius of the source for soft shadows).
LIGHTS = (
    ((-0.35, -0.75, 0.85), 0.62, 0.06),  # key: upper left of the camera, casts the main shadows
    ((0.85, -0.25, 0.55), 0.22, 0.10),  # fill: right of the camera
    ((-0.40, 0.85, 0.75), 0.20, 0.10),  # back: behind the scene, rims the objects
)
AMBIENT = 0.28
GROUND_ALBEDO = 0.62
SHADOW_STRENGTH = 0.85  # shadows are not black: CLEVR's area lights and bounce light fill them


# --- camera ------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def camera_basis() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Camera position and its forward, right and up unit vectors."""
    offset = torch.tensor(
        [
            math.cos(CAMERA_ELEVATION) * math.cos(CAMERA_AZIMUTH),
            math.cos(CAMERA_ELEVATION) * math.sin(CAMERA_AZIMUTH),
            math.sin(CAMERA_ELEVATION),
        ]
    )
    forward = -offset
    right = torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0]))
    right = right / right.norm()
    up = torch.linalg.cross(right, forward)
    return CAMERA_DISTANCE * offset, forward, right, up


def _tan_half_fov() -> tuple[float, float]:
    tx = math.tan(CAMERA_FOV_X / 2)
    return tx, tx / CAMERA_ASPECT


def project(points: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """World points ``(..., 3)`` → pixel coordinates ``(..., 2)`` as (x, y), and depth along the view axis."""
    position, forward, right, up = camera_basis()
    tx, ty = _tan_half_fov()
    rel = points - position
    depth = rel @ forward
    x = (rel @ right) / (depth * tx)
    y = -(rel @ up) / (depth * ty)
    return torch.stack([(x + 1) / 2 * width, (y + 1) / 2 * height], dim=-1), depth


def light_directions(spp: int) -> torch.Tensor:
    """``(num_lights, spp*spp, 3)`` directions towards each light, one per sub-sample, spread over the light's disc."""
    n = spp * spp
    golden = math.pi * (3 - math.sqrt(5))
    i = torch.arange(n, dtype=torch.float32)
    radius = torch.sqrt((i + 0.5) / n) if n > 1 else torch.zeros(1)
    angle = i * golden
    out = []
    for direction, _, softness in LIGHTS:
        base = torch.tensor(direction) / torch.tensor(direction).norm()
        a = torch.linalg.cross(base, torch.tensor([0.0, 0.0, 1.0]))
        a = a / a.norm()
        b = torch.linalg.cross(base, a)
        jitter = base + softness * radius[:, None] * (torch.cos(angle)[:, None] * a + torch.sin(angle)[:, None] * b)
        out.append(jitter / jitter.norm(dim=-1, keepdim=True))
    return torch.stack(out)


def _pixel_rays(width: int, height: int, offsets: torch.Tensor) -> torch.Tensor:
    """Unit ray directions ``(H, W, S, 3)`` through sub-pixel offsets ``(S, 2)`` (x, y in [0, 1)) of every pixel."""
    _, forward, right, up = camera_basis()
    tx, ty = _tan_half_fov()
    py, px = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    u = (px[..., None] + offsets[:, 0]) / width * 2 - 1
    v = (py[..., None] + offsets[:, 1]) / height * 2 - 1
    directions = forward + u[..., None] * tx * right - v[..., None] * ty * up
    return directions / directions.norm(dim=-1, keepdim=True)


@dataclass(frozen=True)
class _Frame:
    """Scene-independent rays of one resolution: pixel centres, and ``S = spp*spp`` stratified sub-samples."""

    centers: torch.Tensor  # (H, W, 3)
    samples: torch.Tensor  # (H, W, S, 3)
    center_lights: torch.Tensor  # (L, 3) light directions seen from pixel centres
    sample_lights: torch.Tensor  # (L, S, 3) one point of each light's disc per sub-sample, for soft shadows


@lru_cache(maxsize=4)
def _frame(width: int, height: int, spp: int) -> _Frame:
    grid = (torch.arange(spp, dtype=torch.float32) + 0.5) / spp
    sy, sx = torch.meshgrid(grid, grid, indexing="ij")
    offsets = torch.stack([sx.flatten(), sy.flatten()], -1)
    centers = _pixel_rays(width, height, torch.tensor([[0.5, 0.5]]))[:, :, 0]
    return _Frame(centers, _pixel_rays(width, height, offsets), light_directions(1)[:, 0], light_directions(spp))


def _ground_falloff(p: torch.Tensor) -> torch.Tensor:
    """Soft light falloff on the ground: brightest a little behind the scene centre, darker towards the far edges."""
    dist2 = (p[..., 0] + 0.5) ** 2 + (p[..., 1] - 0.5) ** 2
    return 1.0 - 0.32 * (1 - torch.exp(-dist2 / 60.0)) - 0.05 * (p[..., 1] - p[..., 0]).clamp_min(0) / 8


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

    @classmethod
    def from_object(cls, obj: SceneObject) -> _Solid:
        r = obj.radius
        half_height = r / math.sqrt(2.0) if obj.shape == "cube" else r
        albedo = tuple(c / 255.0 for c in CLEVR_RGB[obj.color])
        center = (float(obj.x), float(obj.y), float(half_height))
        return cls(obj.shape, center, r, math.cos(obj.yaw), math.sin(obj.yaw), albedo, obj.material == "metal")

    @property
    def bound(self) -> float:
        """Radius of a sphere about ``center`` holding the object (cube (r/sqrt2)*sqrt3 < r*sqrt2 = cylinder's)."""
        return self.radius if self.shape == "sphere" else self.radius * math.sqrt(2.0)

    def _local(self, v: torch.Tensor) -> torch.Tensor:
        """Rotate world vectors into the cube's frame (by -yaw about z)."""
        x, y = v[..., 0], v[..., 1]
        return torch.stack([self.cos * x + self.sin * y, -self.sin * x + self.cos * y, v[..., 2]], -1)

    def _world(self, v: torch.Tensor) -> torch.Tensor:
        x, y = v[..., 0], v[..., 1]
        return torch.stack([self.cos * x - self.sin * y, self.sin * x + self.cos * y, v[..., 2]], -1)

    def intersect(self, origin: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        """Nearest positive distance along each ray (``inf`` where it misses). Shapes ``(..., 3)`` → ``(...)``."""
        oc = origin - torch.tensor(self.center)
        r = self.radius
        if self.shape == "sphere":
            b = (oc * direction).sum(-1)
            disc = b * b - ((oc * oc).sum(-1) - r * r)
            root = disc.clamp_min(0).sqrt()
            t = torch.where(-b - root > EPS, -b - root, -b + root)
            return torch.where((disc > 0) & (t > EPS), t, math.inf)
        if self.shape == "cube":
            half = r / math.sqrt(2.0)
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

    def normal(self, p: torch.Tensor) -> torch.Tensor:
        """Outward unit normal at surface points ``(..., 3)``."""
        rel = p - torch.tensor(self.center)
        if self.shape == "sphere":
            n = rel
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

    def screen_box(self, width: int, height: int, centers: list[torch.Tensor], radii: list[float]) -> tuple[slice, slice] | None:
        """Pixel rectangle holding the projections of spheres (centre, radius); ``None`` if off screen."""
        corners = torch.tensor([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=torch.float32)
        points = torch.cat([c + r * corners for c, r in zip(centers, radii)])
        pixels, depth = project(points, width, height)
        if (depth <= 0.05).any():  # too close to the camera to bound reliably: use the whole image
            return slice(0, height), slice(0, width)
        x0, y0 = pixels.amin(0).floor().long().tolist()
        x1, y1 = pixels.amax(0).ceil().long().tolist()
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1 + 1, width), min(y1 + 1, height)
        if x0 >= x1 or y0 >= y1:
            return None
        return slice(y0, y1), slice(x0, x1)

    def object_box(self, width: int, height: int):
        return self.screen_box(width, height, [torch.tensor(self.center)], [self.bound])

    def shadow_box(self, width: int, height: int, light: torch.Tensor, softness: float):
        """Rectangle of the shadow volume: the object plus its (penumbra-padded) shadow on the ground."""
        center = torch.tensor(self.center)
        on_ground = center - center[2] / light[2] * light
        shadow_radius = self.bound / float(light[2]) + float(center[2]) * 3 * softness + 0.05
        return self.screen_box(width, height, [center, on_ground], [self.bound, shadow_radius])


# --- shading -----------------------------------------------------------------------------------------------------
def _environment(reflected: torch.Tensor) -> torch.Tensor:
    """Brightness a metal surface reflects: the grey ground below the horizon, a bright studio above it."""
    return 0.22 + 0.95 * torch.sigmoid(reflected[..., 2] * 10.0 - 1.0)


def _shade_object(solid: _Solid, normals, view, lights, lit):
    """Colour ``(M, 3)`` of points on one object; ``lights`` ``(L, M, 3)``, ``lit`` ``(L, M)`` in [0, 1].

    Rubber: Lambert plus a weak, broad highlight. Metal: a little diffuse, a coloured reflection of the environment
    and sharp white highlights, which is what makes CLEVR's metal objects read as shiny.
    """
    shininess, strength = (90.0, 1.6) if solid.metal else (14.0, 0.10)
    diffuse = torch.full(normals.shape[:1], AMBIENT)
    specular = torch.zeros(normals.shape[:1])
    for li, (_, intensity, _) in enumerate(LIGHTS):
        half = lights[li] + view
        half = half / half.norm(dim=-1, keepdim=True)
        diffuse = diffuse + intensity * lit[li] * (normals * lights[li]).sum(-1).clamp_min(0)
        specular = specular + intensity * lit[li] * (normals * half).sum(-1).clamp_min(0) ** shininess
    albedo = torch.tensor(solid.albedo)
    if not solid.metal:
        return albedo * diffuse[:, None] + strength * specular[:, None]
    reflected = -view + 2 * (normals * view).sum(-1, keepdim=True) * normals
    return albedo * (0.25 * diffuse[:, None] + 0.85 * _environment(reflected)[:, None]) + strength * specular[:, None]


@dataclass
class RenderOutput:
    """One rendered image and its object masks."""

    image: torch.Tensor  # (H, W, 3) float in [0, 1]
    coverage: torch.Tensor  # (K, H, W) fraction of each pixel's rays that see object k


_EVERYWHERE = (Ellipsis,)


def _trace(solids, directions, lights, object_boxes=None, shadow_boxes=None, shading=True):
    """Trace rays ``directions`` ``(*shape, 3)`` from the camera; ``lights`` ``(L, *shape, 3)`` (may be expanded).

    ``object_boxes[k]`` / ``shadow_boxes[k][l]`` restrict work to index tuples of the leading dims (``None``: the object
    is off screen); without boxes every ray is tested against every object.
    Returns colours ``(*shape, 3)`` (``None`` without shading), the hit object ``(*shape)`` (-1: ground) and
    ``blocked`` ``(L, *shape)``, whether each light is shadowed.
    """
    position = camera_basis()[0]
    shape = directions.shape[:-1]
    best_t = -position[2] / directions[..., 2]  # the ground plane z = 0
    best_k = torch.full(shape, -1, dtype=torch.int8)
    for k, solid in enumerate(solids):
        box = object_boxes[k] if object_boxes is not None else _EVERYWHERE
        if box is not None:
            t = solid.intersect(position, directions[box])
            closer = t < best_t[box]
            best_t[box] = torch.where(closer, t, best_t[box])
            best_k[box] = torch.where(closer, k, best_k[box])
    blocked = torch.zeros((len(LIGHTS), *shape), dtype=torch.bool)
    if not shading:
        return None, best_k, blocked

    points = position + best_t[..., None] * directions
    normals = torch.zeros_like(points)
    normals[..., 2] = 1.0
    for k, solid in enumerate(solids):
        box = object_boxes[k] if object_boxes is not None else _EVERYWHERE
        if box is not None:
            normals[box] = torch.where((best_k[box] == k)[..., None], solid.normal(points[box]), normals[box])
    origins = points + 1e-3 * normals  # off the surface, so shadow rays do not hit their own start
    for k, solid in enumerate(solids):
        for li in range(len(LIGHTS)):
            box = shadow_boxes[k][li] if shadow_boxes is not None else _EVERYWHERE
            if box is not None:
                blocked[li][box] |= torch.isfinite(solid.intersect(origins[box], lights[li][box]))
    lit = 1.0 - SHADOW_STRENGTH * blocked.float()

    # Ground: matte, lit by every unblocked light (its normal is +z), with a soft falloff.
    irradiance = AMBIENT + sum(intensity * lit[li] * lights[li][..., 2] for li, (_, intensity, _) in enumerate(LIGHTS))
    colors = (GROUND_ALBEDO * _ground_falloff(points) * irradiance)[..., None].expand(*shape, 3).clone()
    for k, solid in enumerate(solids):
        rows = (best_k == k).nonzero(as_tuple=True)
        if rows[0].numel():
            colors[rows] = _shade_object(solid, normals[rows], -directions[rows], lights[(slice(None), *rows)], lit[(slice(None), *rows)])
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


def render(scene: Sequence[SceneObject], width: int, height: int, spp: int = 2, shading: bool = True) -> RenderOutput:
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
    """
    if width < 1 or height < 1 or spp < 1:
        raise ValueError(f"width, height and spp must be positive, got {width}, {height}, {spp}.")
    frame = _frame(width, height, spp)
    solids = [_Solid.from_object(obj) for obj in scene]
    object_boxes = [solid.object_box(width, height) for solid in solids]
    shadow_boxes = [
        [solid.shadow_box(width, height, frame.center_lights[li], softness) for li, (_, _, softness) in enumerate(LIGHTS)]
        for solid in solids
    ] if shading else None
    center_lights = frame.center_lights[:, None, None].expand(-1, height, width, 3)
    image, hit, blocked = _trace(solids, frame.centers, center_lights, object_boxes, shadow_boxes, shading)
    coverage = torch.stack([(hit == k).float() for k in range(len(solids))]) if solids else torch.zeros(0, height, width)
    if spp > 1 and solids:
        code = hit.long() * (1 << len(LIGHTS)) + sum(blocked[li].long() << li for li in range(len(LIGHTS)))
        rows = _edges(code).nonzero(as_tuple=True)
        if rows[0].numel():
            directions = frame.samples[rows]  # (N, S, 3)
            lights = frame.sample_lights[:, None].expand(-1, directions.shape[0], -1, -1)
            colors, sub_hit, _ = _trace(solids, directions, lights, shading=shading)
            coverage[(slice(None), *rows)] = torch.stack([(sub_hit == k).float().mean(-1) for k in range(len(solids))])
            if shading:
                image[rows] = colors.mean(1)
    if image is None:
        image = torch.full((height, width, 3), GROUND_ALBEDO)
    return RenderOutput(image.clamp(0, 1), coverage)


def image_box(obj: SceneObject) -> tuple[float, float, float, float]:
    """The object's bounding box in the image, ``(x0, y0, x1, y1)`` as fractions of the width and height (x to the
    right, y down; clipped to [0, 1]): the projection of its whole surface, hidden parts included, as layout
    annotations give it. Any output size shows the same frustum, so one box serves every resolution."""
    solid = _Solid.from_object(obj)
    center, r = torch.tensor(solid.center), solid.radius
    if obj.shape == "sphere":  # a dense Fibonacci sphere: its projection's extent is the silhouette's to < 0.1 %
        i = torch.arange(256, dtype=torch.float32) + 0.5
        z = 1 - 2 * i / 256
        angle = i * math.pi * (3 - math.sqrt(5))
        ring = (1 - z * z).sqrt()
        points = center + r * torch.stack([ring * torch.cos(angle), ring * torch.sin(angle), z], -1)
    elif obj.shape == "cube":
        half = r / math.sqrt(2.0)
        corners = torch.tensor([[x, y, z] for x in (-half, half) for y in (-half, half) for z in (-half, half)])
        points = center + solid._world(corners)
    else:  # cylinder: its two rims
        angle = torch.linspace(0, 2 * math.pi, 129)[:-1]
        rim = torch.stack([r * torch.cos(angle), r * torch.sin(angle), torch.zeros_like(angle)], -1)
        points = torch.cat([center + rim + torch.tensor([0.0, 0.0, dz]) for dz in (-r, r)])
    xy, _ = project(points, 1, 1)
    low, high = xy.amin(0).clamp(0, 1), xy.amax(0).clamp(0, 1)
    return float(low[0]), float(low[1]), float(high[0]), float(high[1])


def visible_pixels(scene: Sequence[SceneObject], width: int = 64, height: int = 64) -> list[int]:
    """Unoccluded, in-frame pixel count of each object (one ray through each pixel centre)."""
    coverage = render(scene, width, height, spp=1, shading=False).coverage
    return coverage.flatten(1).sum(1).round().long().tolist()
