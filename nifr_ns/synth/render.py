"""The exact ray caster of the procedural scenes: depth and diffusely lit colour of any view.

Rays are cast in the scene's local frame; a pixel averages an odd s x s grid of sub-pixel rays
(anti-aliasing) and its depth is that of the middle ray. Light: ambient plus one lamp or the
sun, with hard shadows; rays that hit nothing see the sky (outdoors) or black.
"""

from __future__ import annotations

import math

import numpy as np

from nifr_ns.pose_io import Intrinsics
from nifr_ns.synth.primitives import Primitive, dot
from nifr_ns.synth.scenes import Light, Scene

_RAYS_PER_CHUNK = 1 << 16


def _hits(
    primitive: Primitive, origins: np.ndarray, dirs: np.ndarray, apex: np.ndarray, towards: np.ndarray
) -> np.ndarray:
    """`primitive.intersect` for rays whose lines all pass through the (3,) `apex`.

    Rays whose line misses the primitive's bounding sphere (seen from `apex` along the (N, 3)
    unit directions `towards`) are skipped: most rays miss most objects.
    """
    centre, radius = primitive.bound
    offset = centre - apex
    distance = float(np.linalg.norm(offset))
    if distance <= radius:
        return primitive.intersect(origins, dirs)
    near = towards @ (offset / distance) >= math.sqrt(1 - (radius / distance) ** 2)
    t = np.full(len(dirs), np.inf)
    t[near] = primitive.intersect(origins[near], dirs[near])
    return t


def _parallel_hits(primitive: Primitive, origins: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """`primitive.intersect` for rays from (N, 3) `origins` all along the unit (3,) `direction`,
    skipping those whose line misses its bounding sphere."""
    centre, radius = primitive.bound
    offset = centre - origins
    along = offset @ direction
    near = (dot(offset, offset) - along**2 <= radius**2) & (along >= -radius)
    t = np.full(len(origins), np.inf)
    t[near] = primitive.intersect(origins[near], np.broadcast_to(direction, (int(near.sum()), 3)))
    return t


def cast(scene: Scene, eye: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hits of rays from the (3,) `eye` along (N, 3) `dirs`.

    Returns (N,) ray parameters (inf if none) and (N,) indices into ``scene.primitives``, -1 if none.
    """
    origins = np.broadcast_to(eye, dirs.shape)
    towards = dirs / np.sqrt(dot(dirs, dirs))[:, None]
    ts = np.stack([_hits(primitive, origins, dirs, eye, towards) for primitive in scene.primitives])
    index = ts.argmin(0)
    t = ts[index, np.arange(len(index))]
    return t, np.where(np.isfinite(t), index, -1)


def _lit(scene: Scene, light: Light, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """(N,) direct light reaching surface points with (N, 3) normals: Lambert's cosine, the lamp's
    fall-off, and 0 where an object stands between them and the light."""
    if light.is_sun:
        to_light = np.broadcast_to(light.direction, points.shape)
        lit = np.clip(dot(normals, to_light), 0.0, None)
    else:
        to_light = light.position - points
        distance = np.sqrt(dot(to_light, to_light))
        lit = np.clip(dot(normals, to_light) / distance, 0.0, None) / (1 + (distance / light.reach) ** 2)
    # Shadow rays run from the surface, nudged off it, towards the light (the lamp at t = 1); a
    # lamp hangs inside its room, so only objects can hide it.
    facing = np.flatnonzero(lit > 0)
    origins = points[facing] + 1e-4 * normals[facing]
    blocked = np.zeros(len(facing), dtype=bool)
    if light.is_sun:
        for primitive in scene.objects:
            blocked |= np.isfinite(_parallel_hits(primitive, origins, light.direction))
    else:
        dirs = light.position - origins
        towards = -dirs / np.sqrt(dot(dirs, dirs))[:, None]
        for primitive in scene.objects:
            blocked |= _hits(primitive, origins, dirs, light.position, towards) < 1.0
    lit[facing[blocked]] = 0.0
    return lit


def _surfaces(scene: Scene, points: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normals and albedo (N, 3) of hit points, zero where index is -1."""
    normals, albedo = np.zeros_like(points), np.zeros_like(points)
    for i, primitive in enumerate(scene.primitives):
        mask = index == i
        if mask.any():
            normals[mask], albedo[mask] = primitive.surface(points[mask])
    return normals, albedo


def shade(scene: Scene, points: np.ndarray, index: np.ndarray) -> np.ndarray:
    """(N, 3) colours of hit points (black where index is -1): albedo under ambient and direct light."""
    normals, albedo = _surfaces(scene, points, index)
    lit = _lit(scene, scene.light, points, normals)
    return albedo * (scene.ambient + scene.light.strength * lit)[:, None]


def shadow_mask(scene: Scene, T_cw: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    """(H, W) bool: pixels whose surface (seen through the pixel centre) faces the light but lies in
    an object's shadow."""
    rows, cols = np.mgrid[0 : intrinsics.height, 0 : intrinsics.width] + 0.5
    eye, dirs = local_rays(scene, T_cw, np.stack([cols.ravel(), rows.ravel()], 1), intrinsics)
    t, index = cast(scene, eye, dirs)
    hit = index >= 0
    points = eye + t[hit, None] * dirs[hit]
    normals, _ = _surfaces(scene, points, index[hit])
    light = scene.light
    towards = light.direction if light.is_sun else light.position - points
    facing = dot(normals, np.broadcast_to(towards, points.shape)) > 0
    mask = np.zeros(len(dirs), dtype=bool)
    mask[np.flatnonzero(hit)] = facing & (_lit(scene, light, points, normals) == 0)
    return mask.reshape(intrinsics.height, intrinsics.width)


def _sky(scene: Scene, dirs: np.ndarray) -> np.ndarray:
    """(N, 3) colour of the sky along (N, 3) local directions: horizon to zenith by elevation."""
    horizon, zenith = (np.array(c) for c in scene.sky)
    elevation = np.clip(dirs[:, 2] / np.sqrt(dot(dirs, dirs)), 0.0, 1.0)[:, None]
    return horizon + (zenith - horizon) * np.sqrt(elevation)


def local_rays(scene: Scene, T_cw: np.ndarray, pixels: np.ndarray, intrinsics: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """The (3,) centre and (N, 3) ray directions, in the local frame, of a world pose's (N, 2)
    pixel positions (u, v).

    Directions have unit camera z, so a hit's ray parameter is its z-depth.
    """
    T_cl = T_cw @ scene.world_from_local
    rotation = T_cl[:3, :3]
    x = (pixels[:, 0] - intrinsics.cx) / intrinsics.fx
    y = (pixels[:, 1] - intrinsics.cy) / intrinsics.fy
    return -rotation.T @ T_cl[:3, 3], np.stack([x, y, np.ones_like(x)], 1) @ rotation


def _trace(scene: Scene, eye: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ray parameters (N,), 0 where nothing is hit, and colours (N, 3) of rays from the (3,) `eye`."""
    ts, colours = [], []
    # Chunks small enough for the CPU caches run about three times faster than one big batch.
    for start in range(0, len(dirs), _RAYS_PER_CHUNK):
        chunk = dirs[start : start + _RAYS_PER_CHUNK]
        t, index = cast(scene, eye, chunk)
        t = np.where(index >= 0, t, 0.0)
        colour = shade(scene, eye + t[:, None] * chunk, index)
        if scene.sky is not None:
            missed = index < 0
            colour[missed] = _sky(scene, chunk[missed])
        ts.append(t)
        colours.append(colour)
    return np.concatenate(ts), np.concatenate(colours)


def render_view(
    scene: Scene, T_cw: np.ndarray, intrinsics: Intrinsics, supersample: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Render a world-to-camera pose (OpenCV axes, world frame).

    Returns rgb (H, W, 3) float64 in [0, 1], the mean of an odd `supersample` x `supersample`
    grid of sub-pixel rays, and depth (H, W): the z-depth of the ray through the pixel centre
    (the middle of the grid), 0 where nothing is hit.
    """
    if supersample % 2 == 0:
        raise ValueError("supersample must be odd: the middle sub-pixel ray gives the pixel's depth")
    if any(intrinsics.distortion.values()):
        raise ValueError("render_view draws pinhole images: the intrinsics must have no distortion")
    width, height, s = intrinsics.width, intrinsics.height, supersample
    offsets = (np.arange(s) + 0.5) / s - 0.5
    dv, du = (o.reshape(-1, 1, 1) for o in np.meshgrid(offsets, offsets, indexing="ij"))
    rows, cols = np.mgrid[0:height, 0:width] + 0.5
    pixels = np.stack([np.broadcast_to(cols + du, (s * s, height, width)).ravel(), (rows + dv).ravel()], 1)
    t, rgb = _trace(scene, *local_rays(scene, T_cw, pixels, intrinsics))
    rgb = rgb.reshape(s * s, height, width, 3).mean(0)
    return np.clip(rgb, 0.0, 1.0), t.reshape(s * s, height, width)[s * s // 2]
