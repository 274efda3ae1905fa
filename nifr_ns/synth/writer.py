"""Writing a procedural scene, or the suite of them, to disk: training views, queries in grades, poses.

Layout of one scene (:func:`generate_scene`)::

    OUT/
      transforms.json                  training views, nerfstudio format: OpenGL camera-to-world,
                                       shared PINHOLE intrinsics, per frame file_path and
                                       depth_file_path (read with depth_unit_scale_factor 1e-3)
      images/train_XXXX.png            8-bit RGB
      depths/train_XXXX.png            uint16 z-depth of the pixel centre in mm, 0 = invalid (and sky)
      queries/images/query_XXXX.png    query views under their grade's changes
      queries/depths/query_XXXX.png    their ground-truth depth, as above
      queries/gt.json, init.json       ground-truth and perturbed initial poses, transforms form,
                                       file_path "images/query_XXXX.png" relative to queries/
      queries/gt.txt, init.txt         the same in hloc form (name qw qx qy qz tx ty tz)
      queries/intrinsics.txt           hloc/COLMAP intrinsics of the query names (per query: the
                                       ``camera`` grade has other cameras)
      scene.json                       settings, scene, world_from_local, light, and per query its
                                       grade, perturbation, appearance, light, camera and occluders

A suite (:func:`generate_suite`) is ``DIR/suite.json`` and one such folder per scene, ``DIR/<scene>``.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Literal, Optional

import cv2
import numpy as np

from nifr_ns.geometry import perturb_pose
from nifr_ns.pose_io import Intrinsics, PosedImage, PoseSet, write_poses, write_transforms
from nifr_ns.synth.render import render_view
from nifr_ns.synth.scenes import SCENE_NAMES, Scene, SceneName, build_scene
from nifr_ns.synth.views import (
    Grade,
    degrade,
    grade_appearance,
    moved_light,
    occluders,
    other_camera,
    rng_for,
    sample_cameras,
)

AppearanceLevel = Literal["none", "mild", "strong"]
DEPTH_UNIT_SCALE_FACTOR = 1e-3
SUITE_GRADES = ("strong", "light", "camera", "occluders")
"""The suite's query grades: global photometric change, the light moved, another camera, occluders."""

_PRESETS = {"tiny": (64, 48, 20, 4), "default": (160, 120, 80, 20)}  # width, height, n_train, n_queries
_SUITE_QUERIES = {"tiny": 4, "default": 40}  # per scene, cycling through the grades
_OUTPUTS = ("transforms.json", "scene.json", "images", "depths", "queries")

ViewCallback = Callable[[str, int, int], None]
"""Called after each written view with its file name (relative to OUT), views done and views in all."""


@dataclass(frozen=True)
class SynthConfig:
    """Every setting of the generated scene; the flags of ns-nifr-synth."""

    scene: SceneName = "room"
    """Which scene: room (bright, rich texture; the default), dark-room (dark, low contrast, one lamp,
    deep shadows), tiled-hall (plain walls and repeating tiles, strong lamp), facade (outdoors: a
    street, building fronts, open sky, the sun)."""
    preset: Literal["tiny", "default"] = "default"
    """tiny: 64x48 px, 20 training views, 4 queries (tests); default: 160x120 px, 80 and 20 (demo,
    benchmarks); a suite has 4 / 40 queries per scene."""
    seed: int = 0
    """Seeds everything random (world frame, cameras, appearance, perturbations): same seed, same bytes."""
    width: Optional[int] = None
    """Image width in pixels; None: the preset's."""
    height: Optional[int] = None
    """Image height in pixels; None: the preset's."""
    n_train: Optional[int] = None
    """Number of training views; None: the preset's."""
    n_queries: Optional[int] = None
    """Number of query views; None: the preset's."""
    hfov_deg: float = 65.0
    """Horizontal field of view in degrees."""
    supersample: int = 3
    """Sub-pixel rays per pixel along each axis, odd (the middle ray gives the depth)."""
    appearance: AppearanceLevel = "strong"
    """Strength of the queries' change of exposure, gamma, colour cast, vignetting and noise."""
    occluders: bool = False
    """Put a ball and a pole, unseen in the training views, in front of each query camera."""
    grades: tuple[str, ...] = ()
    """Cycle the queries through these grades, overriding --appearance and --occluders: tokens joined
    by '+', an appearance level (none, mild, strong) and any of light (the light moved), camera
    (another camera, blurred and noisy), occluders; e.g. none mild strong strong+occluders light
    camera. The grade of each query is recorded in scene.json. A suite's default: strong light
    camera occluders."""
    rot_deg: tuple[float, float] = (4.0, 8.0)
    """Range of the initial poses' rotation error, degrees (uniform)."""
    trans: tuple[float, float] = (0.1, 0.3)
    """Range of the initial poses' camera-centre error, metres (uniform)."""
    overwrite: bool = False
    """Write into a non-empty OUT, replacing a scene written there before."""

    def grade(self, query: int) -> str:
        """The grade of query number ``query``."""
        if self.grades:
            return self.grades[query % len(self.grades)]
        return f"{self.appearance}+occluders" if self.occluders else self.appearance

    def resolved(self) -> SynthConfig:
        """This config with the preset's sizes and counts filled in; ValueError if a value is invalid."""
        preset = dict(zip(("width", "height", "n_train", "n_queries"), _PRESETS[self.preset]))
        config = replace(self, **{key: value for key, value in preset.items() if getattr(self, key) is None})
        checks = {
            f"scene must be one of {', '.join(SCENE_NAMES)}": config.scene in SCENE_NAMES,
            "width and height must be positive": min(config.width, config.height) >= 1,
            "n_train must be positive and n_queries not negative": config.n_train >= 1 and config.n_queries >= 0,
            "hfov_deg must lie in (0, 180)": 0 < config.hfov_deg < 180,
            "supersample must be odd and positive": config.supersample >= 1 and config.supersample % 2 == 1,
            "rot_deg and trans must be ranges LO HI, 0 <= LO <= HI": all(
                0 <= lo <= hi for lo, hi in (config.rot_deg, config.trans)
            ),
            "seed must not be negative": config.seed >= 0,
        }
        failed = [message for message, ok in checks.items() if not ok]
        for grade in config.grades:
            try:
                Grade.parse(grade)
            except ValueError as error:
                failed.append(str(error))
        if failed:
            raise ValueError("; ".join(failed))
        return config

    def for_suite(self, scene: str) -> SynthConfig:
        """This config as one scene of a suite: the suite's grades and query count unless set."""
        n_queries = self.n_queries if self.n_queries is not None else _SUITE_QUERIES[self.preset]
        return replace(self, scene=scene, grades=self.grades or SUITE_GRADES, n_queries=n_queries).resolved()


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


def generate_scene(out: Path, config: SynthConfig, on_view: Optional[ViewCallback] = None) -> SceneInfo:
    """Render the scene of `config` and write it to `out` (layout in the module docstring).

    Raises ValueError for invalid settings, FileExistsError if `out` holds anything and
    config.overwrite is off; with it on, only the generator's own outputs in `out` are removed.
    """
    config = config.resolved()
    out = Path(out)
    _prepare_output(out, config.overwrite, _OUTPUTS)
    scene = build_scene(config.seed, config.scene)

    def rng(stream: str) -> np.random.Generator:
        return rng_for(config.seed, stream, config.scene)

    intrinsics = scene_intrinsics(config)
    train_poses = sample_cameras(scene, config.n_train, intrinsics, rng("train"))
    query_poses = sample_cameras(scene, config.n_queries, intrinsics, rng("queries"))
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
    appearance_rng, occluder_rng, perturb_rng = rng("appearance"), rng("occluders"), rng("perturb")
    light_rng, camera_rng = rng("light"), rng("camera")
    gt, init, records = [], [], []
    cameras_used = 0
    for i, T_gt in enumerate(query_poses):
        grade = Grade.parse(config.grade(i))
        changes: dict = {}  # beyond the appearance and occluders, what this query's grade changed
        extra, placed = occluders(scene, T_gt, intrinsics, occluder_rng) if grade.occluders else ([], [])
        seen = scene.with_objects(extra)
        if grade.light:
            seen = seen.with_light(moved_light(scene, light_rng))
            changes["light"] = seen.light.record(scene.to_world)
        camera = intrinsics
        if grade.camera:
            camera, changes["camera"] = other_camera(cameras_used, config.width, camera_rng)
            cameras_used += 1
        rgb, depth = render_view(seen, T_gt, camera, config.supersample)
        if grade.camera:
            rgb = degrade(rgb, changes["camera"], camera_rng)
        rgb, appearance = grade_appearance(rgb, grade.level, appearance_rng)
        gt.append(_write_view(queries, f"query_{i:04d}.png", rgb, depth, T_gt, camera))
        rot_deg, trans = perturb_rng.uniform(*config.rot_deg), perturb_rng.uniform(*config.trans)
        init.append(PosedImage(gt[-1].name, perturb_pose(T_gt, rot_deg, trans, perturb_rng), camera))
        records.append({"name": gt[-1].name, "grade": config.grade(i), "rot_deg": rot_deg, "trans": trans,
                        "appearance": appearance, "occluders": placed, **changes})  # fmt: skip
        report(f"queries/{gt[-1].name}", config.n_train + i + 1, total)
    gt_set, init_set = PoseSet(gt, "hloc", queries), PoseSet(init, "hloc", queries)
    for poses, stem in ((gt_set, "gt"), (init_set, "init")):
        write_poses(poses, queries / f"{stem}.txt", queries / "intrinsics.txt")
        write_transforms(poses, queries / f"{stem}.json")

    metadata = {
        "generator": "nifr_ns.synth",
        **{key: value for key, value in asdict(config).items() if key != "overwrite"},
        "room_size": scene.size,
        "world_from_local": scene.world_from_local.tolist(),
        "light": scene.light.record(scene.to_world),
        "intrinsics": dict(model=intrinsics.model, width=config.width, height=config.height, params=intrinsics.params),
        "depth_unit_scale_factor": DEPTH_UNIT_SCALE_FACTOR,
        "queries": records,
    }
    (out / "scene.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return SceneInfo(out, scene, train_set, gt_set, init_set, metadata)


def generate_suite(
    out: Path, config: SynthConfig, scenes: tuple[str, ...] = SCENE_NAMES, on_view: Optional[ViewCallback] = None
) -> dict[str, SceneInfo]:
    """Every scene of ``scenes`` under ``config`` (:meth:`SynthConfig.for_suite`) in ``out/<scene>``, and
    ``out/suite.json`` naming them, their grades and settings. Raises as :func:`generate_scene`; checks
    every scene's settings and the folder before writing anything."""
    configs = {name: config.for_suite(name) for name in scenes}
    out = Path(out)
    _prepare_output(out, config.overwrite, (*SCENE_NAMES, "suite.json"))
    total = sum(c.n_train + c.n_queries for c in configs.values())
    done = 0
    infos = {}
    for name, scene_config in configs.items():

        def report(view: str, count: int, _: int, before: int = done, prefix: str = name) -> None:
            if on_view is not None:
                on_view(f"{prefix}/{view}", before + count, total)

        infos[name] = generate_scene(out / name, scene_config, report)
        done += scene_config.n_train + scene_config.n_queries
    first = next(iter(configs.values()))
    suite = {
        "generator": "nifr_ns.synth",
        "scenes": list(configs),
        "grades": list(first.grades),
        "preset": first.preset,
        "seed": first.seed,
        "queries_per_scene": first.n_queries,
    }
    (out / "suite.json").write_text(json.dumps(suite, indent=2) + "\n")
    return infos


def _prepare_output(out: Path, overwrite: bool, outputs: tuple[str, ...]) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty: choose an empty or new folder, or overwrite (--overwrite)")
        for name in outputs:
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


