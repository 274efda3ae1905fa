"""Textures and the solids of the procedural scenes, in a scene's local frame (metres, z up).

Each solid can be intersected by a batch of rays, report its normals and albedo at hit points,
and say whether a point lies inside it; textures are RGB images laid on surfaces in metres.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
from skimage import data as skdata

TEXELS_PER_METRE = 100  # about the finest detail a default-preset pixel resolves: less aliasing
EPS = 1e-6


@dataclass(frozen=True)
class Texture:
    """An RGB image laid on a surface, spanning `size` = (u, v) metres and repeating beyond."""

    image: np.ndarray  # (h, w, 3) float32 in [0, 1]
    size: tuple[float, float]

    def sample(self, uv: np.ndarray) -> np.ndarray:
        """Bilinear, wrapping lookup: (M, 2) surface coordinates in metres -> (M, 3) colours."""
        h, w = self.image.shape[:2]
        x = uv[:, 0] * (w / self.size[0]) - 0.5
        y = uv[:, 1] * (h / self.size[1]) - 0.5
        x0, y0 = np.floor(x), np.floor(y)
        fx, fy = (x - x0).astype(np.float32)[:, None], (y - y0).astype(np.float32)[:, None]
        x0, y0 = x0.astype(np.int64) % w, y0.astype(np.int64) % h
        x1, row0, row1 = (x0 + 1) % w, y0 * w, (y0 + 1) % h * w
        texels = self.image.reshape(-1, 3)
        top = texels.take(row0 + x0, 0) * (1 - fx) + texels.take(row0 + x1, 0) * fx
        bottom = texels.take(row1 + x0, 0) * (1 - fx) + texels.take(row1 + x1, 0) * fx
        return top * (1 - fy) + bottom * fy


@functools.cache
def _skimage_photo(name: str) -> np.ndarray:
    return np.asarray(getattr(skdata, name)())


def photo(name: str, tint: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """A picture shipped with scikit-image as (h, w, 3) float32 in [0, 1].

    Grey ones are contrast-stretched, so every surface has texture a small image still shows,
    and tinted.
    """
    image = np.asarray(_skimage_photo(name), dtype=np.float32)
    image = image / 255.0 if image.max() > 1 else image
    if image.ndim == 2:
        lo, hi = np.percentile(image, (1, 99))
        image = (0.15 + 0.85 * np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1))[..., None] * np.float32(tint)
    return image[..., :3].astype(np.float32)


def toned(image: np.ndarray, gain: float, contrast: float) -> np.ndarray:
    """``image`` with its deviations from its mean colour scaled by ``contrast``, then by ``gain``."""
    mean = image.reshape(-1, 3).mean(0)
    return np.clip(gain * (mean + contrast * (image - mean)), 0.0, 1.0).astype(np.float32)


def texture(image: np.ndarray, size: tuple[float, float]) -> Texture:
    """``image`` stretched over ``size`` metres, resampled to the scenes' texel density."""
    w, h = (max(2, round(s * TEXELS_PER_METRE)) for s in size)
    return Texture(cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA), size)


def plain(colour: tuple[float, float, float], seed: int, grain: float = 0.02) -> Texture:
    """A painted surface: one colour with a faint, fine grain (sparse texture), 1 m square."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.standard_normal((100, 100)).astype(np.float32), (0, 0), 1.5)
    image = np.float32(colour) * (1 + grain * noise / noise.std())[..., None]
    return Texture(np.clip(image, 0, 1).astype(np.float32), (1.0, 1.0))


def tiles(colours: tuple[tuple[float, float, float], ...], grout: tuple[float, float, float], size: float) -> Texture:
    """Square tiles of ``size`` metres in a repeating pattern of ``colours`` (checkered when two),
    with grout lines: a repetitive texture."""
    n = len(colours)
    cell = round(size * TEXELS_PER_METRE)
    tile = np.empty((n * cell, n * cell, 3), np.float32)
    for i in range(n):
        for j in range(n):
            tile[i * cell : (i + 1) * cell, j * cell : (j + 1) * cell] = colours[(i + j) % n]
    line = max(1, cell // 25)
    for k in range(n):
        tile[k * cell : k * cell + line] = grout
        tile[:, k * cell : k * cell + line] = grout
    return Texture(tile, (n * size, n * size))


def panel(base: Texture, size: tuple[float, float], pictures: list[tuple[np.ndarray, float, float, float]]) -> Texture:
    """A flat surface of ``size`` (u, v) metres: ``base`` repeated, with pictures (image, u, v,
    width in metres; v counted from the top) framed on it."""
    frame, ppm = 0.04, TEXELS_PER_METRE
    h, w = round(size[1] * ppm), round(size[0] * ppm)
    v, u = (np.mgrid[0:h, 0:w] + 0.5) / ppm
    canvas = base.sample(np.stack([u.ravel(), v.ravel()], 1)).reshape(h, w, 3)
    for image, u0, v0, width in pictures:
        height = width * image.shape[0] / image.shape[1]
        c0, r0, c1, r1 = (round(x * ppm) for x in (u0, v0, u0 + width, v0 + height))
        f = round(frame * ppm)
        canvas[r0 - f : r1 + f, c0 - f : c1 + f] = 0.1
        canvas[r0:r1, c0:c1] = cv2.resize(image, (c1 - c0, r1 - r0), interpolation=cv2.INTER_AREA)
    return Texture(canvas.astype(np.float32), size)


def dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product of (N, k) arrays -> (N,); einsum is several times faster than (a * b).sum(1)."""
    return np.einsum("ij,ij->i", a, b)


class Primitive(Protocol):
    """A solid the renderer can intersect and shade."""

    @property
    def bound(self) -> tuple[np.ndarray, float]:
        """A sphere (centre (3,), radius) enclosing the solid, to skip rays that cannot hit it."""
        ...

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        """(N, 3) origins and directions -> (N,) ray parameter of the nearest hit, inf if none."""
        ...

    def surface(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(M, 3) points on the surface -> unit normals towards free space (M, 3), albedo (M, 3)."""
        ...

    def contains(self, point: np.ndarray, margin: float) -> bool:
        """Whether the (3,) point lies inside the solid grown by `margin` metres."""
        ...


@dataclass(frozen=True)
class Box:
    """A box turned by `yaw` about the vertical; seen from inside when it is a room."""

    centre: np.ndarray  # (3,)
    half: np.ndarray  # (3,) half extents
    yaw: float
    faces: tuple[Texture, ...]  # six, for the faces -x, +x, -y, +y, -z, +z
    inside: bool = False

    @property
    def rotation(self) -> np.ndarray:
        """(3, 3) local-from-box rotation."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    @property
    def bound(self) -> tuple[np.ndarray, float]:
        return self.centre, float(np.linalg.norm(self.half))

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        p, q = (origins - self.centre) @ self.rotation, dirs @ self.rotation
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (-self.half - p) / q, (self.half - p) / q
        lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
        # Slab method; explicit columns because reducing over a length-3 axis is slow in numpy.
        near = np.maximum(np.maximum(lo[:, 0], lo[:, 1]), lo[:, 2])
        far = np.minimum(np.minimum(hi[:, 0], hi[:, 1]), hi[:, 2])
        t = far if self.inside else near
        return np.where((near <= far) & (t > EPS), t, np.inf)

    def surface(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = (points - self.centre) @ self.rotation
        axis = np.argmax(np.abs(x) / self.half, 1)
        face = 2 * axis + (x[np.arange(len(x)), axis] > 0)
        normals, albedo = np.empty_like(x), np.empty_like(x)
        for index, surface_texture in enumerate(self.faces):
            mask = face == index
            normal = np.zeros(3)
            normal[index // 2] = (1.0 if index % 2 else -1.0) * (-1.0 if self.inside else 1.0)
            # Walls read left to right as seen from the free side and top down, so photos are not mirrored.
            if index < 4:
                u_axis, v_axis = np.array([-normal[1], normal[0], 0.0]), np.array([0.0, 0.0, -1.0])
            else:
                u_axis, v_axis = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
            uv = x[mask] @ np.stack([u_axis, v_axis], 1) + np.abs([u_axis, v_axis]) @ self.half
            normals[mask], albedo[mask] = normal, surface_texture.sample(uv)
        return normals @ self.rotation.T, albedo

    def contains(self, point: np.ndarray, margin: float) -> bool:
        return bool(np.all(np.abs((point - self.centre) @ self.rotation) <= self.half + margin))


@dataclass(frozen=True)
class Sphere:
    """A ball; its texture wraps once around the equator and spans pole to pole."""

    centre: np.ndarray  # (3,)
    radius: float
    texture: Texture  # size (2 pi r, pi r)

    @property
    def bound(self) -> tuple[np.ndarray, float]:
        return self.centre, self.radius

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        oc = origins - self.centre
        a, b = dot(dirs, dirs), dot(oc, dirs)
        disc = b * b - a * (dot(oc, oc) - self.radius**2)
        with np.errstate(invalid="ignore"):
            t = (-b - np.sqrt(disc)) / a
        return np.where((disc >= 0) & (t > EPS), t, np.inf)

    def surface(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = (points - self.centre) / self.radius
        uv = self.radius * np.stack([np.arctan2(n[:, 1], n[:, 0]) + np.pi, np.arccos(np.clip(n[:, 2], -1, 1))], 1)
        return n, self.texture.sample(uv)

    def contains(self, point: np.ndarray, margin: float) -> bool:
        return bool(np.linalg.norm(point - self.centre) <= self.radius + margin)


@dataclass(frozen=True)
class Cylinder:
    """An upright cylinder with flat caps; the side texture wraps once around."""

    axis_xy: np.ndarray  # (2,)
    radius: float
    z0: float
    z1: float
    side: Texture  # size (2 pi r, z1 - z0)
    cap: Texture

    @property
    def bound(self) -> tuple[np.ndarray, float]:
        half_height = (self.z1 - self.z0) / 2
        return np.array([*self.axis_xy, self.z0 + half_height]), math.hypot(self.radius, half_height)

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        p, d = origins[:, :2] - self.axis_xy, dirs[:, :2]
        a, b = dot(d, d), dot(p, d)
        disc = b * b - a * (dot(p, p) - self.radius**2)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (-b - np.sqrt(disc)) / a
            z = origins[:, 2] + t * dirs[:, 2]
            hits = [np.where((disc >= 0) & (t > EPS) & (z >= self.z0) & (z <= self.z1), t, np.inf)]
            for z_cap in (self.z0, self.z1):
                t = (z_cap - origins[:, 2]) / dirs[:, 2]
                at = p + t[:, None] * d
                hits.append(np.where((t > EPS) & (dot(at, at) <= self.radius**2), t, np.inf))
        return np.minimum.reduce(hits)

    def surface(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xy = points[:, :2] - self.axis_xy
        r = np.sqrt(dot(xy, xy))
        gaps = np.stack([np.abs(r - self.radius), np.abs(points[:, 2] - self.z0), np.abs(points[:, 2] - self.z1)], 1)
        part = gaps.argmin(1)  # 0 side, 1 bottom, 2 top
        normal = np.zeros_like(points)
        normal[:, :2] = xy / np.maximum(r, EPS)[:, None]
        normal[part > 0] = 0.0
        normal[part == 1, 2], normal[part == 2, 2] = -1.0, 1.0
        side = part == 0
        albedo = self.cap.sample(xy + self.radius)
        uv = np.stack([(np.arctan2(xy[side, 1], xy[side, 0]) + np.pi) * self.radius, self.z1 - points[side, 2]], 1)
        albedo[side] = self.side.sample(uv)
        return normal, albedo

    def contains(self, point: np.ndarray, margin: float) -> bool:
        radial = np.linalg.norm(point[:2] - self.axis_xy)
        return bool(radial <= self.radius + margin and self.z0 - margin <= point[2] <= self.z1 + margin)


def box(centre: tuple[float, ...], size: tuple[float, ...], yaw_deg: float, faces: Texture | tuple[Texture, ...]) -> Box:
    """A box of ``size`` metres standing at ``centre``, one texture on every face or six."""
    faces = faces if isinstance(faces, tuple) else (faces,) * 6
    return Box(np.array(centre, dtype=float), np.array(size, dtype=float) / 2, math.radians(yaw_deg), faces)


def ball(centre: tuple[float, ...], radius: float, image: np.ndarray) -> Sphere:
    """A ball with ``image`` wrapped around it."""
    return Sphere(np.array(centre, dtype=float), radius, texture(image, (2 * math.pi * radius, math.pi * radius)))


def drum(xy: tuple[float, float], radius: float, z0: float, z1: float, side: np.ndarray, cap: np.ndarray) -> Cylinder:
    """An upright cylinder from ``z0`` to ``z1`` with ``side`` wrapped around it and ``cap`` on its ends."""
    return Cylinder(
        np.array(xy, dtype=float), radius, z0, z1,
        texture(side, (2 * math.pi * radius, z1 - z0)), texture(cap, (2 * radius, 2 * radius)),
    )  # fmt: skip
