"""The procedural scenes: their solids, textures, light and sky, and where cameras may stand.

Each scene is built in a local frame (metres, z up) and placed in the world by a seeded rigid
transform, so nothing may assume an axis-aligned or centred world. The scenes differ in what
breaks localizers (the suite of ``ns-nifr-synth --suite``):

- ``room``: a bright room, richly textured with photographs, lit by a lamp and ambient light;
- ``dark-room``: a smaller room in dark, low-contrast materials, lit by one lamp in a corner with
  little ambient light, so that half of it lies in shade and objects cast deep shadows;
- ``tiled-hall``: a hall of plain painted walls and a checkered floor, a wall of small repeating
  tiles and few pictures (sparse and repetitive texture), under a strong lamp (high contrast);
- ``facade``: outdoors, a street in front of building facades with rows of alike windows, open sky
  above (unbounded: sky pixels have no depth) and the sun casting shadows.

Lighting is view-independent (diffuse) and baked into every view, with hard shadows.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Callable, Literal, Optional, get_args

import cv2
import numpy as np

from nifr_ns.synth.primitives import (
    Box,
    Cylinder,
    Primitive,
    Sphere,
    Texture,
    ball,
    box,
    drum,
    panel,
    photo,
    plain,
    texture,
    tiles,
    toned,
)

SceneName = Literal["room", "dark-room", "tiled-hall", "facade"]
SCENE_NAMES: tuple[str, ...] = get_args(SceneName)
ROOM_SIZE = (6.0, 5.0, 3.0)  # the default room's


@dataclass(frozen=True)
class Light:
    """A lamp at ``position`` (light falling off with distance, half at ``reach`` metres) or the sun
    in ``direction`` (unit, towards it); either casts hard shadows."""

    position: Optional[np.ndarray] = None  # (3,) local frame
    direction: Optional[np.ndarray] = None  # (3,)
    strength: float = 1.0
    reach: float = 4.0

    @property
    def is_sun(self) -> bool:
        return self.direction is not None

    def record(self, to_world: Callable[[np.ndarray], list[float]]) -> dict:
        """The light in the world frame, for scene.json."""
        if self.is_sun:
            return {"kind": "sun", "direction": to_world(self.direction, direction=True), "strength": self.strength}
        return {"kind": "lamp", "position": to_world(self.position), "strength": self.strength, "reach": self.reach}


@dataclass(frozen=True)
class CameraRegion:
    """Where a scene's cameras stand and how they look (local frame)."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    yaw_deg: tuple[float, float] = (0.0, 360.0)
    pitch_deg: tuple[float, float] = (-30.0, 10.0)
    roll_deg: float = 6.0


@dataclass(frozen=True)
class Scene:
    """A scene in its local frame, and where that frame lies in the world."""

    name: str
    room: Optional[Box]  # the shell seen from inside; None outdoors
    objects: tuple[Primitive, ...]
    ambient: float
    light: Light
    cameras: CameraRegion
    world_from_local: np.ndarray  # (4, 4)
    lamp_region: Optional[tuple[tuple[float, ...], tuple[float, ...]]] = None
    """Where the lamp may be moved to (lo, hi corners); None for the sun."""
    sky: Optional[tuple[tuple[float, float, float], tuple[float, float, float]]] = None
    """Colours at the horizon and the zenith of rays that hit nothing (None: black)."""

    @property
    def primitives(self) -> tuple[Primitive, ...]:
        """Everything a ray can hit: the room first, if any, then the objects."""
        return ((self.room,) if self.room is not None else ()) + self.objects

    @property
    def size(self) -> Optional[tuple[float, ...]]:
        """The room's extent in metres (None outdoors)."""
        return None if self.room is None else tuple(float(x) for x in 2 * self.room.half)

    def with_objects(self, extra: list[Primitive]) -> Scene:
        return replace(self, objects=self.objects + tuple(extra))

    def with_light(self, light: Light) -> Scene:
        return replace(self, light=light)

    def to_local(self, point: np.ndarray) -> np.ndarray:
        rotation, translation = self.world_from_local[:3, :3], self.world_from_local[:3, 3]
        return rotation.T @ (point - translation)

    def to_world(self, point: np.ndarray, direction: bool = False) -> list[float]:
        moved = self.world_from_local[:3, :3] @ point
        return (moved if direction else moved + self.world_from_local[:3, 3]).tolist()


# ---------------------------------------------------------------------------------------------
# room: the default scene


@functools.cache  # the same for every seed
def _room_shell() -> Box:
    """Floor, ceiling and four walls with framed pictures, seen from inside."""
    sx, sy, sz = ROOM_SIZE
    # The brick photo's courses run vertically: turned a quarter, they lie as on a wall.
    brick = texture(np.rot90(photo("brick", (0.8, 0.46, 0.36))), (1.2, 1.2))
    blue_brick = texture(np.rot90(photo("brick", (0.55, 0.6, 0.7))), (1.5, 1.5))
    grass = texture(photo("grass", (0.62, 0.72, 0.45)), (1.0, 1.0))
    page = texture(photo("page", (0.9, 0.85, 0.72)), (0.8, 0.4))
    coins, phantom = photo("coins", (0.95, 0.8, 0.5)), photo("shepp_logan_phantom", (0.9, 0.85, 0.6))
    walls = (  # -x, +x, -y, +y
        panel(brick, (sy, sz), [(photo("astronaut"), 0.6, 0.6, 1.3), (coins, 3.2, 0.9, 1.0)]),
        panel(grass, (sy, sz), [(photo("rocket"), 0.5, 0.5, 1.6), (photo("immunohistochemistry"), 3.2, 0.8, 1.0)]),
        panel(page, (sx, sz), [(photo("coffee"), 1.0, 0.6, 1.4), (photo("colorwheel"), 3.9, 0.8, 0.9)]),
        panel(blue_brick, (sx, sz), [(photo("camera"), 1.2, 0.7, 1.0), (phantom, 3.6, 0.8, 1.0)]),
    )
    floor = texture(photo("gravel", (0.62, 0.55, 0.47)), (1.0, 1.0))
    ceiling = texture(photo("moon", (0.95, 0.94, 0.9)), (2.0, 2.0))
    half = np.array(ROOM_SIZE) / 2
    return Box(half, half, 0.0, (*walls, floor, ceiling), inside=True)


@functools.cache
def _room_furniture() -> tuple[Primitive, ...]:
    """Boxes, balls and cylinders standing at different depths, for parallax and occlusion."""
    wood = texture(photo("camera", (0.78, 0.6, 0.42)), (0.9, 0.9))
    concrete = texture(photo("gravel", (0.72, 0.72, 0.7)), (0.5, 0.5))
    return (
        box((1.6, 1.3, 0.375), (1.2, 0.8, 0.75), 12.0, wood),  # table
        box((4.95, 0.75, 0.9), (0.6, 0.5, 1.8), -20.0, texture(photo("horse", (0.5, 0.32, 0.22)), (0.8, 0.8))),
        box((4.3, 3.7, 0.3), (0.6, 0.6, 0.6), 35.0, texture(photo("chelsea"), (0.6, 0.6))),  # crate
        ball((2.9, 4.0, 0.45), 0.45, photo("hubble_deep_field")),
        ball((1.75, 1.2, 1.0), 0.25, photo("cell", (0.9, 0.62, 0.78))),  # on the table
        Cylinder(np.array([3.9, 2.1]), 0.22, 0.0, ROOM_SIZE[2], concrete, concrete),  # pillar
        drum((0.8, 4.2), 0.3, 0.0, 0.8, photo("clock"), photo("coins", (0.6, 0.5, 0.4))),
    )


def _room(world_from_local: np.ndarray) -> Scene:
    return Scene(
        "room", _room_shell(), _room_furniture(), ambient=0.5,
        light=Light(position=np.array([2.8, 2.3, 2.4]), strength=1.0, reach=4.0),  # hanging under the ceiling
        cameras=CameraRegion(lo=(0.7, 0.7, 1.2), hi=(5.3, 4.3, 1.8)),
        world_from_local=world_from_local, lamp_region=((0.6, 0.6, 1.6), (5.4, 4.4, 2.8)),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# dark-room: dark, low-contrast materials, one lamp in a corner

_DARK_SIZE = (5.0, 4.2, 2.8)


def _dark(image: np.ndarray) -> np.ndarray:
    return toned(image, gain=0.75, contrast=0.6)


@functools.cache
def _dark_room_shell() -> Box:
    sx, sy, sz = _DARK_SIZE
    plaster = texture(_dark(photo("moon", (0.75, 0.7, 0.62))), (1.5, 1.5))
    boards = texture(_dark(np.rot90(photo("camera", (0.55, 0.42, 0.3)))), (1.2, 1.2))
    cloth = texture(_dark(photo("grass", (0.45, 0.5, 0.55))), (0.7, 0.7))
    walls = (  # -x, +x, -y, +y
        panel(plaster, (sy, sz), [(_dark(photo("chelsea")), 0.7, 0.7, 1.2), (_dark(photo("clock")), 2.7, 0.9, 0.8)]),
        panel(cloth, (sy, sz), [(_dark(photo("astronaut")), 1.2, 0.6, 1.2)]),
        panel(plaster, (sx, sz), [(_dark(photo("rocket")), 0.8, 0.5, 1.2), (_dark(photo("coins", (0.9, 0.8, 0.6))), 3.0, 0.8, 1.0)]),
        panel(boards, (sx, sz), [(_dark(photo("coffee")), 1.8, 0.7, 1.3)]),
    )
    floor = texture(_dark(photo("gravel", (0.5, 0.45, 0.4))), (0.8, 0.8))
    ceiling = texture(_dark(photo("page", (0.8, 0.8, 0.75))), (1.6, 0.8))
    half = np.array(_DARK_SIZE) / 2
    return Box(half, half, 0.0, (*walls, floor, ceiling), inside=True)


@functools.cache
def _dark_room_furniture() -> tuple[Primitive, ...]:
    leather = texture(_dark(photo("horse", (0.45, 0.3, 0.25))), (0.7, 0.7))
    metal = texture(_dark(photo("gravel", (0.6, 0.62, 0.66))), (0.4, 0.4))
    return (
        box((3.4, 0.75, 0.4), (1.8, 0.8, 0.8), 5.0, leather),  # sofa
        box((4.45, 3.3, 1.0), (0.6, 0.9, 2.0), -10.0, texture(_dark(photo("brick", (0.6, 0.5, 0.4))), (0.8, 0.8))),
        box((1.3, 3.4, 0.35), (0.9, 0.6, 0.7), 25.0, texture(_dark(photo("immunohistochemistry")), (0.6, 0.6))),
        ball((2.6, 2.6, 0.35), 0.35, _dark(photo("retina"))),
        drum((3.0, 1.9), 0.18, 0.0, 1.1, _dark(photo("text", (0.8, 0.7, 0.5))), _dark(photo("coins"))),
        Cylinder(np.array([1.6, 1.5]), 0.16, 0.0, _DARK_SIZE[2], metal, metal),
    )


def _dark_room(world_from_local: np.ndarray) -> Scene:
    return Scene(
        "dark-room", _dark_room_shell(), _dark_room_furniture(), ambient=0.18,
        light=Light(position=np.array([0.7, 0.8, 2.3]), strength=1.8, reach=2.6),
        cameras=CameraRegion(lo=(0.8, 0.8, 1.2), hi=(4.2, 3.4, 1.7)),
        world_from_local=world_from_local, lamp_region=((0.5, 0.5, 1.5), (4.5, 3.7, 2.6)),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# tiled-hall: plain walls, repeating tiles, few pictures, a strong lamp

_HALL_SIZE = (7.0, 5.5, 3.2)


@functools.cache
def _hall_shell() -> Box:
    sx, sy, sz = _HALL_SIZE
    white, blue, sand = plain((0.86, 0.84, 0.8), 1), plain((0.62, 0.7, 0.8), 2), plain((0.8, 0.72, 0.58), 3)
    mosaic = tiles(((0.75, 0.78, 0.8), (0.35, 0.5, 0.62), (0.85, 0.85, 0.82)), (0.55, 0.55, 0.55), 0.2)
    walls = (  # -x, +x, -y, +y
        panel(white, (sy, sz), [(photo("astronaut"), 1.8, 0.8, 1.2)]),
        panel(mosaic, (sy, sz), []),
        panel(blue, (sx, sz), []),
        panel(sand, (sx, sz), [(photo("coffee"), 4.2, 0.7, 1.1)]),
    )
    floor = tiles(((0.85, 0.83, 0.78), (0.28, 0.3, 0.34)), (0.5, 0.5, 0.5), 0.5)
    ceiling = plain((0.92, 0.92, 0.9), 4)
    half = np.array(_HALL_SIZE) / 2
    return Box(half, half, 0.0, (*walls, floor, ceiling), inside=True)


@functools.cache
def _hall_furniture() -> tuple[Primitive, ...]:
    grey, red, wood = plain((0.5, 0.5, 0.52), 5), plain((0.7, 0.22, 0.18), 6), plain((0.6, 0.45, 0.3), 7)
    crate = tiles(((0.7, 0.6, 0.4), (0.5, 0.4, 0.28)), (0.3, 0.25, 0.2), 0.15)
    return (
        box((2.0, 1.6, 0.45), (1.4, 0.7, 0.9), 15.0, wood),  # counter
        box((5.4, 4.0, 0.35), (0.7, 0.7, 0.7), 30.0, crate),
        Cylinder(np.array([4.6, 2.0]), 0.25, 0.0, _HALL_SIZE[2], grey, grey),  # pillar
        Cylinder(np.array([2.4, 3.9]), 0.25, 0.0, _HALL_SIZE[2], grey, grey),
        ball((6.0, 1.0, 0.4), 0.4, np.full((8, 16, 3), (0.7, 0.22, 0.18), np.float32)),
        box((0.9, 4.6, 0.6), (0.6, 0.6, 1.2), 0.0, red),
    )


def _tiled_hall(world_from_local: np.ndarray) -> Scene:
    return Scene(
        "tiled-hall", _hall_shell(), _hall_furniture(), ambient=0.3,
        light=Light(position=np.array([3.6, 2.8, 2.9]), strength=1.5, reach=5.0),
        cameras=CameraRegion(lo=(0.8, 0.8, 1.2), hi=(6.2, 4.7, 1.8)),
        world_from_local=world_from_local, lamp_region=((0.6, 0.6, 1.8), (6.4, 4.9, 3.0)),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# facade: a street, building fronts, open sky, the sun


def _facade_texture(base: Texture, size: tuple[float, float], shop: list, seed: int) -> Texture:
    """A building front ``size`` (u, v) metres: ``base`` with rows of windows, each floor 3 m high,
    one every 2.5 m, alike but for what the glass reflects; pictures (``shop``) on the ground floor."""
    canvas = panel(base, size, shop).image.copy()
    ppm = canvas.shape[0] / size[1]
    rng = np.random.default_rng(seed)
    frame = (0.9, 0.88, 0.84)
    for floor in np.arange(3.0, size[1] - 2.4, 3.0):  # the ground floor keeps its pictures
        for u in np.arange(0.8, size[0] - 1.5, 2.5):
            r0, r1 = round((size[1] - floor - 2.3) * ppm), round((size[1] - floor - 0.7) * ppm)
            c0, c1 = round(u * ppm), round((u + 1.2) * ppm)
            canvas[r0 - 6 : r1 + 6, c0 - 6 : c1 + 6] = frame
            glass = np.linspace(0.12, 0.3, r1 - r0)[:, None, None] * np.float32(rng.uniform(0.8, 1.2, 3))
            canvas[r0:r1, c0:c1] = glass
            canvas[r0:r1, (c0 + c1) // 2 - 3 : (c0 + c1) // 2 + 3] = frame  # the mullion
    return Texture(np.clip(canvas, 0, 1).astype(np.float32), size)


@functools.cache
def _street() -> tuple[Primitive, ...]:
    stone = texture(np.rot90(photo("brick", (0.88, 0.82, 0.7))), (2.0, 2.0))
    brick = texture(np.rot90(photo("brick", (0.75, 0.45, 0.35))), (1.5, 1.5))
    render = plain((0.85, 0.8, 0.68), 8, grain=0.04)
    roof = plain((0.4, 0.38, 0.38), 9)
    main = _facade_texture(
        stone, (22.0, 9.0),
        [(photo("coffee"), 2.5, 6.6, 2.0), (photo("astronaut"), 9.0, 6.4, 1.6), (photo("rocket"), 16.0, 6.5, 1.8)], 10,
    )  # fmt: skip
    left = _facade_texture(brick, (7.0, 10.0), [(photo("chelsea"), 2.5, 7.5, 1.6)], 11)
    right = _facade_texture(render, (8.0, 7.5), [(photo("colorwheel"), 3.0, 4.8, 1.4)], 12)
    ground = texture(photo("gravel", (0.38, 0.38, 0.4)), (1.5, 1.5))
    kiosk = panel(plain((0.3, 0.45, 0.35), 13), (2.0, 2.4), [(photo("coins"), 0.4, 0.5, 1.2)])
    crown = texture(photo("grass", (0.45, 0.6, 0.35)), (2.0, 2.0))
    bark = photo("gravel", (0.45, 0.35, 0.25))
    post = photo("text", (0.3, 0.3, 0.32))
    return (
        box((11.0, 0.0, -0.5), (120.0, 120.0, 1.0), 0.0, ground),
        # fronts: each building shows its -y face to the street; gaps between them open on the sky
        box((11.0, 14.0, 4.5), (22.0, 8.0, 9.0), 0.0, (roof, roof, main, roof, roof, roof)),
        box((-4.5, 12.0, 5.0), (7.0, 6.0, 10.0), 15.0, (left, left, left, roof, roof, roof)),
        box((30.0, 15.0, 3.75), (8.0, 6.0, 7.5), -20.0, (right, right, right, roof, roof, roof)),
        box((10.0, 8.6, 1.2), (2.0, 1.2, 2.4), 0.0, (kiosk, kiosk, kiosk, kiosk, roof, roof)),
        box((18.0, 8.9, 0.25), (2.0, 0.5, 0.5), 0.0, texture(photo("horse", (0.5, 0.35, 0.2)), (1.0, 1.0))),  # bench
        drum((23.5, 9.0), 0.15, 0.0, 2.6, bark, bark),  # tree
        Sphere(np.array([23.5, 9.0, 3.4]), 1.2, crown),
        *(drum((x, 7.8), 0.12, 0.0, 0.9, post, post) for x in (4.0, 7.0, 13.0, 16.0, 21.0)),  # bollards
    )


def sun_direction(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Unit vector towards the sun (local frame) at an azimuth from +x towards +y and an elevation."""
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    return np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])


def _facade(world_from_local: np.ndarray) -> Scene:
    return Scene(
        "facade", None, _street(), ambient=0.45,
        light=Light(direction=sun_direction(240.0, 40.0), strength=0.9),
        cameras=CameraRegion(lo=(3.0, 1.5, 1.5), hi=(24.0, 5.0, 1.8), yaw_deg=(35.0, 145.0), pitch_deg=(-5.0, 25.0),
                             roll_deg=4.0),
        world_from_local=world_from_local, sky=((0.8, 0.85, 0.92), (0.35, 0.55, 0.88)),
    )  # fmt: skip


_BUILDERS: dict[str, Callable[[np.ndarray], Scene]] = {
    "room": _room, "dark-room": _dark_room, "tiled-hall": _tiled_hall, "facade": _facade,
}  # fmt: skip


def world_from_local(rng: np.random.Generator) -> np.ndarray:
    """(4, 4) rigid transform: tens of degrees about a tilted axis, several metres away."""
    axis = rng.normal(size=3)
    while np.abs(axis / np.linalg.norm(axis)).max() > 0.9:
        axis = rng.normal(size=3)
    angle = math.radians(rng.uniform(25.0, 60.0)) * rng.choice([-1.0, 1.0])
    transform = np.eye(4)
    transform[:3, :3] = cv2.Rodrigues(axis / np.linalg.norm(axis) * angle)[0]
    transform[:3, 3] = rng.uniform(2.0, 6.0, 3) * rng.choice([-1.0, 1.0], 3)
    return transform


def build_scene(seed: int, name: str = "room") -> Scene:
    """Scene ``name`` placed in the world by the transform drawn from ``seed``."""
    from nifr_ns.synth.views import rng_for

    if name not in _BUILDERS:
        raise ValueError(f"unknown scene '{name}': one of {', '.join(SCENE_NAMES)}")
    return _BUILDERS[name](world_from_local(rng_for(seed, "world", name)))
