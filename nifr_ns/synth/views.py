"""Cameras and query conditions of the procedural scenes: where views stand, and what changes
between the training views and a query (its grade).

A query's grade joins tokens with ``+``: an appearance level (``none``, ``mild``, ``strong``: a
global change of exposure, gamma, colour cast, vignetting and noise), ``light`` (the lamp or the
sun moved, so shading and shadows move), ``camera`` (another camera: focal length and resolution,
including 640x480 at the default preset, with blur and noise) and ``occluders`` (a ball and a
pole the training views never saw). ``strong+occluders`` and ``light`` are grades.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from nifr_ns.geometry import invert_pose, look_at
from nifr_ns.pose_io import Intrinsics
from nifr_ns.synth.primitives import Cylinder, Primitive, Sphere, photo, texture
from nifr_ns.synth.render import cast, local_rays
from nifr_ns.synth.scenes import SCENE_NAMES, Light, Scene, sun_direction

APPEARANCE_STRENGTH: dict[str, float] = {"none": 0.0, "mild": 0.5, "strong": 1.0}
GRADE_TOKENS = ("none", "mild", "strong", "light", "camera", "occluders")
# Other cameras at the default preset's 160 px width (scaled with the preset): width, height,
# horizontal field of view in degrees; the training views' camera is 160x120 at 65 degrees.
OTHER_CAMERAS = ((640, 480, 58.0), (200, 150, 50.0), (256, 144, 72.0), (120, 90, 70.0))
# Occluder radius over its distance: a ball covers about 3-6 % of a query image, a pole 5-10 %.
_OCCLUDER_SIZE = {"ball": (0.08, 0.13), "pole": (0.04, 0.07)}
# Independent random streams, so that e.g. --occluders or --n-queries leave training views as they are.
_STREAM = {"world": 0, "train": 1, "queries": 2, "perturb": 3, "appearance": 4, "occluders": 5, "light": 6, "camera": 7}


def rng_for(seed: int, stream: str, scene: str = "room") -> np.random.Generator:
    """The random stream ``stream`` of scene ``scene`` under ``seed`` (the room's as it always was)."""
    key = [seed, _STREAM[stream]] + ([] if scene == "room" else [1 + SCENE_NAMES.index(scene)])
    return np.random.default_rng(key)


@dataclass(frozen=True)
class Grade:
    """What a query changes against the training views."""

    level: str = "none"
    light: bool = False
    camera: bool = False
    occluders: bool = False

    @classmethod
    def parse(cls, grade: str) -> Grade:
        """``strong+occluders`` -> Grade("strong", occluders=True); ValueError for unknown tokens."""
        tokens = grade.split("+")
        unknown = [t for t in tokens if t not in GRADE_TOKENS]
        levels = [t for t in tokens if t in APPEARANCE_STRENGTH]
        if unknown or len(levels) > 1 or len(set(tokens)) < len(tokens):
            raise ValueError(
                f"grades: '{grade}' is not tokens joined by '+' (at most one of none, mild, strong; and light, "
                "camera, occluders)"
            )
        return cls(levels[0] if levels else "none", "light" in tokens, "camera" in tokens, "occluders" in tokens)


def _roll(T_cw: np.ndarray, degrees: float) -> np.ndarray:
    """The pose turned about its optical axis."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    turn = np.eye(4)
    turn[:2, :2] = [[c, -s], [s, c]]
    return turn @ T_cw


def sample_cameras(scene: Scene, count: int, intrinsics: Intrinsics, rng: np.random.Generator) -> list[np.ndarray]:
    """`count` world-to-camera poses (world frame) in the scene's camera region, looking as it says.

    A pose is kept when the image centre sees at least 1.5 m of free space, a coarse grid over the
    image nothing nearer than 0.4 m, and the eye keeps 0.4 m from objects.
    """
    region = scene.cameras
    grid = np.stack(np.meshgrid(np.linspace(0, intrinsics.width, 5), np.linspace(0, intrinsics.height, 5)), -1)
    pixels = np.concatenate([[[intrinsics.cx, intrinsics.cy]], grid.reshape(-1, 2)])
    local_from_world = invert_pose(scene.world_from_local)
    poses: list[np.ndarray] = []
    while len(poses) < count:
        eye = rng.uniform(np.array(region.lo), np.array(region.hi))
        yaw = rng.uniform(math.radians(region.yaw_deg[0]), math.radians(region.yaw_deg[1]))
        pitch = math.radians(rng.uniform(*region.pitch_deg))
        forward = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)])
        roll = rng.uniform(-region.roll_deg, region.roll_deg)
        T_cw = _roll(look_at(eye, eye + forward, np.array([0.0, 0.0, 1.0])), roll) @ local_from_world
        if any(o.contains(eye, 0.4) for o in scene.objects):
            continue
        depth, _ = cast(scene, *local_rays(scene, T_cw, pixels, intrinsics))
        if depth[0] >= 1.5 and depth.min() >= 0.4:
            poses.append(T_cw)
    return poses


def occluders(
    scene: Scene, T_cw: np.ndarray, intrinsics: Intrinsics, rng: np.random.Generator
) -> tuple[list[Primitive], list[dict]]:
    """A ball and a pole the training views never saw, part-way along rays of the query view.

    Returns the primitives and their descriptions in the world frame.
    """
    ball_texture = photo("retina")
    pole_texture = photo("text", (0.35, 0.4, 0.85))
    eye = scene.to_local(-T_cw[:3, :3].T @ T_cw[:3, 3])
    primitives: list[Primitive] = []
    records: list[dict] = []
    for kind in ("ball", "pole"):
        while True:
            pixel = rng.uniform([0.15, 0.3], [0.85, 0.8]) * [intrinsics.width, intrinsics.height]
            _, dirs = local_rays(scene, T_cw, pixel[None], intrinsics)
            surface = cast(scene, eye, dirs)[0][0]
            depth = rng.uniform(0.45, 0.7) * (surface if np.isfinite(surface) else 8.0)  # the sky: 8 m
            at = eye + depth * dirs[0]
            radius = rng.uniform(*_OCCLUDER_SIZE[kind]) * depth
            if kind == "ball":
                solid: Primitive = Sphere(at, radius, texture(ball_texture, (2 * math.pi * radius, math.pi * radius)))
                record = {"kind": kind, "centre": scene.to_world(at), "radius": radius}
            else:
                top = rng.uniform(1.5, 2.2)
                side = texture(pole_texture, (2 * math.pi * radius, top))
                solid = Cylinder(at[:2], radius, 0.0, top, side, side)
                ends = [scene.to_world(np.array([*at[:2], z])) for z in (0.0, top)]
                record = {"kind": kind, "base": ends[0], "top": ends[1], "radius": radius}
            lamp = scene.light.position
            if not (solid.contains(eye, 0.3) or (lamp is not None and solid.contains(lamp, 0.1))):
                break
        primitives.append(solid)
        records.append(record)
    return primitives, records


def moved_light(scene: Scene, rng: np.random.Generator) -> Light:
    """The scene's light moved: the lamp at least 1.5 m away, elsewhere in the room; the sun turned
    40-90 degrees in azimuth, at another elevation (20-60 degrees)."""
    light = scene.light
    if light.is_sun:
        azimuth = math.degrees(math.atan2(light.direction[1], light.direction[0]))
        azimuth += rng.choice([-1.0, 1.0]) * rng.uniform(40.0, 90.0)
        return Light(direction=sun_direction(azimuth, rng.uniform(20.0, 60.0)), strength=light.strength)
    lo, hi = (np.array(corner) for corner in scene.lamp_region)
    while True:
        position = rng.uniform(lo, hi)
        if np.linalg.norm(position - light.position) >= 1.5 and not any(o.contains(position, 0.2) for o in scene.objects):
            return Light(position=position, strength=light.strength, reach=light.reach)


def other_camera(index: int, width: int, rng: np.random.Generator) -> tuple[Intrinsics, dict]:
    """The ``index``-th other camera (cycling through :data:`OTHER_CAMERAS`, scaled from 160 px to
    the preset's ``width``), with the blur (Gaussian sigma, its pixels) and noise it adds."""
    w, h, hfov = OTHER_CAMERAS[index % len(OTHER_CAMERAS)]
    scale = width / 160
    w, h = (max(8, 2 * round(x * scale / 2)) for x in (w, h))
    focal = w / 2 / math.tan(math.radians(hfov) / 2)
    params = {"width": w, "height": h, "hfov_deg": hfov, "blur_px": rng.uniform(0.4, 1.0), "noise_sigma": rng.uniform(0.005, 0.015)}
    return Intrinsics.pinhole(w, h, focal, focal, w / 2, h / 2), params


def degrade(rgb: np.ndarray, camera: dict, rng: np.random.Generator) -> np.ndarray:
    """The other camera's optics and sensor: Gaussian blur and noise on the (H, W, 3) image."""
    blurred = cv2.GaussianBlur(rgb, (0, 0), camera["blur_px"])
    return np.clip(blurred + camera["noise_sigma"] * rng.standard_normal(rgb.shape), 0.0, 1.0)


def grade_appearance(rgb: np.ndarray, level: str, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
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

