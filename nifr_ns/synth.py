"""The embedded procedural scene: an exactly ray-cast, textured room with its views and queries.

It is the ground truth of the demo, the tests and the benchmarks: geometry, depth and
poses are exact, so every error measured on it belongs to the method. A room (floor,
ceiling, four walls with framed photographs) holds boxes, spheres and cylinders at
different depths; surfaces carry scikit-image's sample photographs, sampled bilinearly,
lit by a lamp with ambient light and hard shadows (view-independent, so training views
agree on colour), and every pixel averages an odd s x s grid of sub-pixel rays.

The room is built in a local frame (metres, z up, corner at the origin) and written in a
world frame moved from it by a seeded rigid transform, so nothing may assume an
axis-aligned or centred world. Output of :func:`generate_scene`::

    OUT/
      transforms.json                  training views, nerfstudio format: OpenGL camera-to-world,
                                       shared PINHOLE intrinsics, per frame file_path and
                                       depth_file_path (read with depth_unit_scale_factor 1e-3)
      images/train_XXXX.png            8-bit RGB
      depths/train_XXXX.png            uint16 z-depth of the pixel centre in mm, 0 = invalid
      queries/images/query_XXXX.png    query views under changed appearance (and occluders)
      queries/depths/query_XXXX.png    their ground-truth depth, as above
      queries/gt.json, init.json       ground-truth and perturbed initial poses, transforms form,
                                       file_path "images/query_XXXX.png" relative to queries/
      queries/gt.txt, init.txt         the same in hloc form (name qw qx qy qz tx ty tz)
      queries/intrinsics.txt           hloc/COLMAP intrinsics of the query names
      scene.json                       settings, room size, world_from_local, and per query the
                                       perturbation, appearance parameters and occluders
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Literal, Protocol, get_args

import cv2
import numpy as np
from skimage import data as skdata

from nifr_ns.geometry import invert_pose, look_at, perturb_pose
from nifr_ns.pose_io import Intrinsics, PosedImage, PoseSet, write_poses, write_transforms

AppearanceLevel = Literal["none", "mild", "strong"]
QueryGrade = Literal["none", "mild", "strong", "none+occluders", "mild+occluders", "strong+occluders"]
"""A query's appearance level, with or without occluders unseen in the training views."""
APPEARANCE_STRENGTH: dict[str, float] = {"none": 0.0, "mild": 0.5, "strong": 1.0}

ROOM_SIZE = (6.0, 5.0, 3.0)
DEPTH_UNIT_SCALE_FACTOR = 1e-3
_TEXELS_PER_METRE = 100  # about the finest detail a default-preset pixel resolves: less aliasing
_LAMP = np.array([2.8, 2.3, 2.4])  # hanging under the ceiling, in the local frame
_AMBIENT, _DIFFUSE, _LAMP_REACH = 0.5, 1.0, 4.0
_EPS = 1e-6
_RAYS_PER_CHUNK = 1 << 16
# Occluder radius over its distance: a ball covers about 3-6 % of a query image, a pole 5-10 %.
_OCCLUDER_SIZE = {"ball": (0.08, 0.13), "pole": (0.04, 0.07)}
# Independent random streams, so that e.g. --occluders or --n-queries leave training views as they are.
_STREAM = {"world": 0, "train": 1, "queries": 2, "perturb": 3, "appearance": 4, "occluders": 5}


# ---------------------------------------------------------------------------------------------
# Textures and primitives (local frame)


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


def _photo(name: str, tint: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """A picture shipped with scikit-image as (h, w, 3) float32 in [0, 1].

    Grey ones are contrast-stretched, so every surface has texture a small image still shows,
    and tinted.
    """
    image = np.asarray(getattr(skdata, name)(), dtype=np.float32)
    image = image / 255.0 if image.max() > 1 else image
    if image.ndim == 2:
        lo, hi = np.percentile(image, (1, 99))
        image = (0.15 + 0.85 * np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1))[..., None] * np.float32(tint)
    return image[..., :3].astype(np.float32)


def _texture(photo: np.ndarray, size: tuple[float, float]) -> Texture:
    """`photo` stretched over `size` metres, resampled to the scene's texel density."""
    w, h = (max(2, round(s * _TEXELS_PER_METRE)) for s in size)
    return Texture(cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA), size)


def _wall(base: Texture, length: float, posters: list[tuple[np.ndarray, float, float, float]]) -> Texture:
    """A wall `length` metres long: `base` repeated, photos (image, u, v, width) framed on it."""
    frame, ppm = 0.04, _TEXELS_PER_METRE
    h, w = round(ROOM_SIZE[2] * ppm), round(length * ppm)
    v, u = (np.mgrid[0:h, 0:w] + 0.5) / ppm
    canvas = base.sample(np.stack([u.ravel(), v.ravel()], 1)).reshape(h, w, 3)
    for photo, u0, v0, width in posters:
        height = width * photo.shape[0] / photo.shape[1]
        c0, r0, c1, r1 = (round(x * ppm) for x in (u0, v0, u0 + width, v0 + height))
        f = round(frame * ppm)
        canvas[r0 - f : r1 + f, c0 - f : c1 + f] = 0.1
        canvas[r0:r1, c0:c1] = cv2.resize(photo, (c1 - c0, r1 - r0), interpolation=cv2.INTER_AREA)
    return Texture(canvas.astype(np.float32), (length, ROOM_SIZE[2]))


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
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
    """A box turned by `yaw` about the vertical; seen from inside when it is the room."""

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
        return np.where((near <= far) & (t > _EPS), t, np.inf)

    def surface(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = (points - self.centre) @ self.rotation
        axis = np.argmax(np.abs(x) / self.half, 1)
        face = 2 * axis + (x[np.arange(len(x)), axis] > 0)
        normals, albedo = np.empty_like(x), np.empty_like(x)
        for index, texture in enumerate(self.faces):
            mask = face == index
            normal = np.zeros(3)
            normal[index // 2] = (1.0 if index % 2 else -1.0) * (-1.0 if self.inside else 1.0)
            # Walls read left to right as seen from the free side and top down, so photos are not mirrored.
            if index < 4:
                u_axis, v_axis = np.array([-normal[1], normal[0], 0.0]), np.array([0.0, 0.0, -1.0])
            else:
                u_axis, v_axis = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
            uv = x[mask] @ np.stack([u_axis, v_axis], 1) + np.abs([u_axis, v_axis]) @ self.half
            normals[mask], albedo[mask] = normal, texture.sample(uv)
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
        a, b = _dot(dirs, dirs), _dot(oc, dirs)
        disc = b * b - a * (_dot(oc, oc) - self.radius**2)
        with np.errstate(invalid="ignore"):
            t = (-b - np.sqrt(disc)) / a
        return np.where((disc >= 0) & (t > _EPS), t, np.inf)

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
        a, b = _dot(d, d), _dot(p, d)
        disc = b * b - a * (_dot(p, p) - self.radius**2)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (-b - np.sqrt(disc)) / a
            z = origins[:, 2] + t * dirs[:, 2]
            hits = [np.where((disc >= 0) & (t > _EPS) & (z >= self.z0) & (z <= self.z1), t, np.inf)]
            for z_cap in (self.z0, self.z1):
                t = (z_cap - origins[:, 2]) / dirs[:, 2]
                at = p + t[:, None] * d
                hits.append(np.where((t > _EPS) & (_dot(at, at) <= self.radius**2), t, np.inf))
        return np.minimum.reduce(hits)

    def surface(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xy = points[:, :2] - self.axis_xy
        r = np.sqrt(_dot(xy, xy))
        gaps = np.stack([np.abs(r - self.radius), np.abs(points[:, 2] - self.z0), np.abs(points[:, 2] - self.z1)], 1)
        part = gaps.argmin(1)  # 0 side, 1 bottom, 2 top
        normal = np.zeros_like(points)
        normal[:, :2] = xy / np.maximum(r, _EPS)[:, None]
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


# ---------------------------------------------------------------------------------------------
# The scene


@dataclass(frozen=True)
class Scene:
    """The room and its objects in the room's local frame, and where that frame lies in the world."""

    room: Box
    objects: tuple[Primitive, ...]
    world_from_local: np.ndarray  # (4, 4)

    def with_objects(self, extra: list[Primitive]) -> Scene:
        return replace(self, objects=self.objects + tuple(extra))


@functools.cache  # the same for every seed
def _room() -> Box:
    """Floor, ceiling and four walls with framed pictures, seen from inside."""
    sx, sy, _ = ROOM_SIZE
    # The brick photo's courses run vertically: turned a quarter, they lie as on a wall.
    brick = _texture(np.rot90(_photo("brick", (0.8, 0.46, 0.36))), (1.2, 1.2))
    blue_brick = _texture(np.rot90(_photo("brick", (0.55, 0.6, 0.7))), (1.5, 1.5))
    grass = _texture(_photo("grass", (0.62, 0.72, 0.45)), (1.0, 1.0))
    page = _texture(_photo("page", (0.9, 0.85, 0.72)), (0.8, 0.4))
    coins, phantom = _photo("coins", (0.95, 0.8, 0.5)), _photo("shepp_logan_phantom", (0.9, 0.85, 0.6))
    walls = (  # -x, +x, -y, +y
        _wall(brick, sy, [(_photo("astronaut"), 0.6, 0.6, 1.3), (coins, 3.2, 0.9, 1.0)]),
        _wall(grass, sy, [(_photo("rocket"), 0.5, 0.5, 1.6), (_photo("immunohistochemistry"), 3.2, 0.8, 1.0)]),
        _wall(page, sx, [(_photo("coffee"), 1.0, 0.6, 1.4), (_photo("colorwheel"), 3.9, 0.8, 0.9)]),
        _wall(blue_brick, sx, [(_photo("camera"), 1.2, 0.7, 1.0), (phantom, 3.6, 0.8, 1.0)]),
    )
    floor = _texture(_photo("gravel", (0.62, 0.55, 0.47)), (1.0, 1.0))
    ceiling = _texture(_photo("moon", (0.95, 0.94, 0.9)), (2.0, 2.0))
    half = np.array(ROOM_SIZE) / 2
    return Box(half, half, 0.0, (*walls, floor, ceiling), inside=True)


@functools.cache  # the same for every seed
def _furniture() -> tuple[Primitive, ...]:
    """Boxes, balls and cylinders standing at different depths, for parallax and occlusion."""

    def box(centre: tuple[float, ...], size: tuple[float, ...], yaw_deg: float, texture: Texture) -> Box:
        return Box(np.array(centre), np.array(size) / 2, math.radians(yaw_deg), (texture,) * 6)

    def ball(centre: tuple[float, ...], radius: float, photo: np.ndarray) -> Sphere:
        return Sphere(np.array(centre), radius, _texture(photo, (2 * math.pi * radius, math.pi * radius)))

    wood = _texture(_photo("camera", (0.78, 0.6, 0.42)), (0.9, 0.9))
    concrete = _texture(_photo("gravel", (0.72, 0.72, 0.7)), (0.5, 0.5))
    drum_r = 0.3
    return (
        box((1.6, 1.3, 0.375), (1.2, 0.8, 0.75), 12.0, wood),  # table
        box((4.95, 0.75, 0.9), (0.6, 0.5, 1.8), -20.0, _texture(_photo("horse", (0.5, 0.32, 0.22)), (0.8, 0.8))),
        box((4.3, 3.7, 0.3), (0.6, 0.6, 0.6), 35.0, _texture(_photo("chelsea"), (0.6, 0.6))),  # crate
        ball((2.9, 4.0, 0.45), 0.45, _photo("hubble_deep_field")),
        ball((1.75, 1.2, 1.0), 0.25, _photo("cell", (0.9, 0.62, 0.78))),  # on the table
        Cylinder(np.array([3.9, 2.1]), 0.22, 0.0, ROOM_SIZE[2], concrete, concrete),  # pillar
        Cylinder(
            np.array([0.8, 4.2]),
            drum_r,
            0.0,
            0.8,
            _texture(_photo("clock"), (2 * math.pi * drum_r, 0.8)),
            _texture(_photo("coins", (0.6, 0.5, 0.4)), (2 * drum_r, 2 * drum_r)),
        ),
    )


def _world_from_local(rng: np.random.Generator) -> np.ndarray:
    """(4, 4) rigid transform: tens of degrees about a tilted axis, several metres away."""
    axis = rng.normal(size=3)
    while np.abs(axis / np.linalg.norm(axis)).max() > 0.9:
        axis = rng.normal(size=3)
    angle = math.radians(rng.uniform(25.0, 60.0)) * rng.choice([-1.0, 1.0])
    transform = np.eye(4)
    transform[:3, :3] = cv2.Rodrigues(axis / np.linalg.norm(axis) * angle)[0]
    transform[:3, 3] = rng.uniform(2.0, 6.0, 3) * rng.choice([-1.0, 1.0], 3)
    return transform


def build_scene(seed: int) -> Scene:
    """The room with its furniture, placed in the world by the transform drawn from `seed`."""
    return Scene(_room(), _furniture(), _world_from_local(_rng(seed, "world")))


def _to_local(scene: Scene, point: np.ndarray) -> np.ndarray:
    rotation, translation = scene.world_from_local[:3, :3], scene.world_from_local[:3, 3]
    return rotation.T @ (point - translation)


def _to_world(scene: Scene, point: np.ndarray) -> list[float]:
    return (scene.world_from_local[:3, :3] @ point + scene.world_from_local[:3, 3]).tolist()


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAM[stream]])


# ---------------------------------------------------------------------------------------------
# Rendering


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


def _cast(scene: Scene, eye: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hits of rays from the (3,) `eye` along (N, 3) `dirs`.

    Returns (N,) ray parameters (inf if none) and (N,) indices into (room, *objects), -1 if none.
    """
    origins = np.broadcast_to(eye, dirs.shape)
    towards = dirs / np.sqrt(_dot(dirs, dirs))[:, None]
    hits = [_hits(primitive, origins, dirs, eye, towards) for primitive in scene.objects]
    ts = np.stack([scene.room.intersect(origins, dirs), *hits])
    index = ts.argmin(0)
    t = ts[index, np.arange(len(index))]
    return t, np.where(np.isfinite(t), index, -1)


def _shade(scene: Scene, points: np.ndarray, index: np.ndarray) -> np.ndarray:
    """(N, 3) colours of hit points, black where index is -1: albedo under ambient light and the
    lamp, whose light objects shadow."""
    normals, albedo = np.zeros_like(points), np.zeros_like(points)
    for i, primitive in enumerate((scene.room, *scene.objects)):
        mask = index == i
        if mask.any():
            normals[mask], albedo[mask] = primitive.surface(points[mask])
    to_lamp = _LAMP - points
    distance = np.sqrt(_dot(to_lamp, to_lamp))
    lit = np.clip(_dot(normals, to_lamp) / distance, 0.0, None) / (1 + (distance / _LAMP_REACH) ** 2)
    # Shadow rays run from the surface, nudged off it, to the lamp at t = 1; the lamp is inside
    # the room, so only objects can hide it.
    facing = np.flatnonzero(lit > 0)
    origins = points[facing] + 1e-4 * normals[facing]
    dirs = _LAMP - origins
    towards = -dirs / np.sqrt(_dot(dirs, dirs))[:, None]
    blocked = np.zeros(len(facing), dtype=bool)
    for primitive in scene.objects:
        blocked |= _hits(primitive, origins, dirs, _LAMP, towards) < 1.0
    lit[facing[blocked]] = 0.0
    return albedo * (_AMBIENT + _DIFFUSE * lit)[:, None]


def _local_rays(
    scene: Scene, T_cw: np.ndarray, pixels: np.ndarray, intrinsics: Intrinsics
) -> tuple[np.ndarray, np.ndarray]:
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
        t, index = _cast(scene, eye, chunk)
        t = np.where(index >= 0, t, 0.0)
        ts.append(t)
        colours.append(_shade(scene, eye + t[:, None] * chunk, index))
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
    t, rgb = _trace(scene, *_local_rays(scene, T_cw, pixels, intrinsics))
    rgb = rgb.reshape(s * s, height, width, 3).mean(0)
    return np.clip(rgb, 0.0, 1.0), t.reshape(s * s, height, width)[s * s // 2]


# ---------------------------------------------------------------------------------------------
# Cameras, queries and appearance


def _roll(T_cw: np.ndarray, degrees: float) -> np.ndarray:
    """The pose turned about its optical axis."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    turn = np.eye(4)
    turn[:2, :2] = [[c, -s], [s, c]]
    return turn @ T_cw


def _sample_cameras(scene: Scene, count: int, intrinsics: Intrinsics, rng: np.random.Generator) -> list[np.ndarray]:
    """`count` world-to-camera poses (world frame) in the room's free space, looking across it.

    Positions keep 0.7 m from the walls and 0.4 m from objects, at eye height; a pose is kept
    when the image centre sees at least 1.5 m of free space and a coarse grid over the image
    nothing nearer than 0.4 m.
    """
    margin = np.array([0.7, 0.7, 1.2])
    grid = np.stack(np.meshgrid(np.linspace(0, intrinsics.width, 5), np.linspace(0, intrinsics.height, 5)), -1)
    pixels = np.concatenate([[[intrinsics.cx, intrinsics.cy]], grid.reshape(-1, 2)])
    local_from_world = invert_pose(scene.world_from_local)
    poses: list[np.ndarray] = []
    while len(poses) < count:
        eye = rng.uniform(margin, np.array(ROOM_SIZE) - margin)
        yaw, pitch = rng.uniform(0.0, 2 * math.pi), math.radians(rng.uniform(-30.0, 10.0))
        forward = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)])
        T_cw = _roll(look_at(eye, eye + forward, np.array([0.0, 0.0, 1.0])), rng.uniform(-6.0, 6.0)) @ local_from_world
        if any(o.contains(eye, 0.4) for o in scene.objects):
            continue
        depth, _ = _cast(scene, *_local_rays(scene, T_cw, pixels, intrinsics))
        if depth[0] >= 1.5 and depth.min() >= 0.4:
            poses.append(T_cw)
    return poses


def _occluders(
    scene: Scene, T_cw: np.ndarray, intrinsics: Intrinsics, rng: np.random.Generator
) -> tuple[list[Primitive], list[dict]]:
    """A ball and a pole the training views never saw, part-way along rays of the query view.

    Returns the primitives and their descriptions in the world frame.
    """
    ball_texture = _photo("retina")
    pole_texture = _photo("text", (0.35, 0.4, 0.85))
    eye = _to_local(scene, -T_cw[:3, :3].T @ T_cw[:3, 3])
    primitives: list[Primitive] = []
    records: list[dict] = []
    for kind in ("ball", "pole"):
        while True:
            pixel = rng.uniform([0.15, 0.3], [0.85, 0.8]) * [intrinsics.width, intrinsics.height]
            _, dirs = _local_rays(scene, T_cw, pixel[None], intrinsics)
            depth = rng.uniform(0.45, 0.7) * _cast(scene, eye, dirs)[0][0]
            at = eye + depth * dirs[0]
            radius = rng.uniform(*_OCCLUDER_SIZE[kind]) * depth
            if kind == "ball":
                solid: Primitive = Sphere(at, radius, _texture(ball_texture, (2 * math.pi * radius, math.pi * radius)))
                record = {"kind": kind, "centre": _to_world(scene, at), "radius": radius}
            else:
                top = rng.uniform(1.5, 2.2)
                side = _texture(pole_texture, (2 * math.pi * radius, top))
                solid = Cylinder(at[:2], radius, 0.0, top, side, side)
                ends = [_to_world(scene, np.array([*at[:2], z])) for z in (0.0, top)]
                record = {"kind": kind, "base": ends[0], "top": ends[1], "radius": radius}
            if not (solid.contains(eye, 0.3) or solid.contains(_LAMP, 0.1)):
                break
        primitives.append(solid)
        records.append(record)
    return primitives, records


def grade_appearance(rgb: np.ndarray, level: AppearanceLevel, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A random camera/illumination change of the given strength; "none" returns `rgb` unchanged.

    Exposure, colour cast and vignetting scale the (H, W, 3) image in [0, 1]; then gamma and
    Gaussian sensor noise. Returns the graded image in [0, 1] and the parameters drawn. The
    same number of draws is made at every level, so levels differ only in strength.
    """
    s = APPEARANCE_STRENGTH[level]
    params = {
        "exposure": 2.0 ** (s * rng.uniform(-1.0, 1.0)),
        "gamma": math.exp(s * rng.uniform(-0.4, 0.4)),
        "colour_cast": (1.0 + s * rng.uniform(-0.2, 0.2, 3)).tolist(),
        "vignetting": s * rng.uniform(0.2, 0.5),
        "noise_sigma": s * 0.02,
    }
    height, width = rgb.shape[:2]
    y, x = np.mgrid[0:height, 0:width] + 0.5
    r2 = ((x - width / 2) ** 2 + (y - height / 2) ** 2) / ((width / 2) ** 2 + (height / 2) ** 2)
    gain = params["exposure"] * np.array(params["colour_cast"]) * (1 - params["vignetting"] * r2)[..., None]
    graded = np.clip(rgb * gain, 0.0, 1.0) ** params["gamma"]
    graded = graded + params["noise_sigma"] * rng.standard_normal(rgb.shape)
    return np.clip(graded, 0.0, 1.0), params


# ---------------------------------------------------------------------------------------------
# Writing a scene

_PRESETS = {"tiny": (64, 48, 20, 4), "default": (160, 120, 80, 20)}  # width, height, n_train, n_queries
_OUTPUTS = ("transforms.json", "scene.json", "images", "depths", "queries")

ViewCallback = Callable[[str, int, int], None]
"""Called after each written view with its file name (relative to OUT), views done and views in all."""


@dataclass(frozen=True)
class SynthConfig:
    """Every setting of the generated scene; the flags of ns-nifr-synth."""

    preset: Literal["tiny", "default"] = "default"
    """tiny: 64x48 px, 20 training views, 4 queries (tests); default: 160x120 px, 80 and 20 (demo, benchmarks)."""
    seed: int = 0
    """Seeds everything random (world frame, cameras, appearance, perturbations): same seed, same bytes."""
    width: int | None = None
    """Image width in pixels; None: the preset's."""
    height: int | None = None
    """Image height in pixels; None: the preset's."""
    n_train: int | None = None
    """Number of training views; None: the preset's."""
    n_queries: int | None = None
    """Number of query views; None: the preset's."""
    hfov_deg: float = 65.0
    """Horizontal field of view in degrees."""
    supersample: int = 3
    """Sub-pixel rays per pixel along each axis, odd (the middle ray gives the depth)."""
    appearance: AppearanceLevel = "strong"
    """Strength of the queries' change of exposure, gamma, colour cast, vignetting and noise."""
    occluders: bool = False
    """Put a ball and a pole, unseen in the training views, in front of each query camera."""
    grades: tuple[QueryGrade, ...] = ()
    """Cycle the queries through these grades (e.g. none mild strong strong+occluders), overriding
    --appearance and --occluders; the grade of each query is recorded in scene.json."""
    rot_deg: tuple[float, float] = (4.0, 8.0)
    """Range of the initial poses' rotation error, degrees (uniform)."""
    trans: tuple[float, float] = (0.1, 0.3)
    """Range of the initial poses' camera-centre error, metres (uniform)."""
    overwrite: bool = False
    """Write into a non-empty OUT, replacing a scene written there before."""

    def grade(self, query: int) -> QueryGrade:
        """The appearance grade of query number ``query``."""
        if self.grades:
            return self.grades[query % len(self.grades)]
        return f"{self.appearance}+occluders" if self.occluders else self.appearance  # type: ignore[return-value]

    def resolved(self) -> SynthConfig:
        """This config with the preset's sizes and counts filled in; ValueError if a value is invalid."""
        preset = dict(zip(("width", "height", "n_train", "n_queries"), _PRESETS[self.preset]))
        config = replace(self, **{key: value for key, value in preset.items() if getattr(self, key) is None})
        checks = {
            "width and height must be positive": min(config.width, config.height) >= 1,
            "n_train must be positive and n_queries not negative": config.n_train >= 1 and config.n_queries >= 0,
            "hfov_deg must lie in (0, 180)": 0 < config.hfov_deg < 180,
            "supersample must be odd and positive": config.supersample >= 1 and config.supersample % 2 == 1,
            "rot_deg and trans must be ranges LO HI, 0 <= LO <= HI": all(
                0 <= lo <= hi for lo, hi in (config.rot_deg, config.trans)
            ),
            "seed must not be negative": config.seed >= 0,
            f"grades must be among {', '.join(get_args(QueryGrade))}": set(config.grades) <= set(get_args(QueryGrade)),
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError("; ".join(failed))
        return config


@dataclass(frozen=True)
class SceneInfo:
    """What :func:`generate_scene` wrote, in memory."""

    out: Path
    scene: Scene
    train: PoseSet  # transforms form, names relative to out
    queries_gt: PoseSet  # hloc form, names relative to out / "queries"
    queries_init: PoseSet
    metadata: dict  # the contents of scene.json


def scene_intrinsics(config: SynthConfig) -> Intrinsics:
    """The pinhole camera shared by all views of a resolved config: square pixels, centred principal point."""
    focal = config.width / 2 / math.tan(math.radians(config.hfov_deg) / 2)
    return Intrinsics.pinhole(config.width, config.height, focal, focal, config.width / 2, config.height / 2)


def generate_scene(out: Path, config: SynthConfig, on_view: ViewCallback | None = None) -> SceneInfo:
    """Render the scene of `config` and write it to `out` (layout in the module docstring).

    Raises ValueError for invalid settings, FileExistsError if `out` holds anything and
    config.overwrite is off; with it on, only the generator's own outputs in `out` are removed.
    """
    config = config.resolved()
    out = Path(out)
    _prepare_output(out, config.overwrite)
    scene = build_scene(config.seed)
    intrinsics = scene_intrinsics(config)
    train_poses = _sample_cameras(scene, config.n_train, intrinsics, _rng(config.seed, "train"))
    query_poses = _sample_cameras(scene, config.n_queries, intrinsics, _rng(config.seed, "queries"))
    total = config.n_train + config.n_queries
    report = on_view or (lambda name, done, total: None)

    train = []
    for i, T_cw in enumerate(train_poses):
        rgb, depth = render_view(scene, T_cw, intrinsics, config.supersample)
        train.append(_write_view(out, f"train_{i:04d}.png", rgb, depth, T_cw, intrinsics))
        report(train[-1].name, i + 1, total)
    train_set = PoseSet(train, "transforms", out)
    write_transforms(train_set, out / "transforms.json")

    queries = out / "queries"
    appearance_rng, occluder_rng = _rng(config.seed, "appearance"), _rng(config.seed, "occluders")
    perturb_rng = _rng(config.seed, "perturb")
    gt, init, records = [], [], []
    for i, T_gt in enumerate(query_poses):
        grade = config.grade(i)
        level, occluded = grade.split("+")[0], grade.endswith("+occluders")
        extra, occluders = _occluders(scene, T_gt, intrinsics, occluder_rng) if occluded else ([], [])
        rgb, depth = render_view(scene.with_objects(extra), T_gt, intrinsics, config.supersample)
        rgb, appearance = grade_appearance(rgb, level, appearance_rng)
        gt.append(_write_view(queries, f"query_{i:04d}.png", rgb, depth, T_gt, intrinsics))
        rot_deg, trans = perturb_rng.uniform(*config.rot_deg), perturb_rng.uniform(*config.trans)
        init.append(PosedImage(gt[-1].name, perturb_pose(T_gt, rot_deg, trans, perturb_rng), intrinsics))
        records.append(
            {
                "name": gt[-1].name,
                "grade": grade,
                "rot_deg": rot_deg,
                "trans": trans,
                "appearance": appearance,
                "occluders": occluders,
            }
        )
        report(f"queries/{gt[-1].name}", config.n_train + i + 1, total)
    gt_set, init_set = PoseSet(gt, "hloc", queries), PoseSet(init, "hloc", queries)
    for poses, stem in ((gt_set, "gt"), (init_set, "init")):
        write_poses(poses, queries / f"{stem}.txt", queries / "intrinsics.txt")
        write_transforms(poses, queries / f"{stem}.json")

    metadata = {
        "generator": "nifr_ns.synth",
        **{key: value for key, value in asdict(config).items() if key != "overwrite"},
        "room_size": ROOM_SIZE,
        "world_from_local": scene.world_from_local.tolist(),
        "intrinsics": dict(model=intrinsics.model, width=config.width, height=config.height, params=intrinsics.params),
        "depth_unit_scale_factor": DEPTH_UNIT_SCALE_FACTOR,
        "queries": records,
    }
    (out / "scene.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return SceneInfo(out, scene, train_set, gt_set, init_set, metadata)


def _prepare_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty: choose an empty or new folder, or overwrite (--overwrite)")
        for name in _OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write_view(
    root: Path, name: str, rgb: np.ndarray, depth: np.ndarray, T_cw: np.ndarray, intrinsics: Intrinsics
) -> PosedImage:
    """Writes root/images/name (8-bit RGB of (H, W, 3) in [0, 1]) and root/depths/name (uint16
    (H, W) z-depth in DEPTH_UNIT_SCALE_FACTOR units, 0 where invalid or out of range)."""
    for folder in ("images", "depths"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    pixels = np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)
    cv2.imwrite(str(root / "images" / name), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 6])
    units = np.round(depth / DEPTH_UNIT_SCALE_FACTOR)
    units = np.where(units <= np.iinfo(np.uint16).max, units, 0).astype(np.uint16)
    cv2.imwrite(str(root / "depths" / name), units, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    return PosedImage(f"images/{name}", T_cw, intrinsics, {"depth_file_path": f"depths/{name}"})
