"""The embedded procedural scene: exact geometry and depth, exact perturbations, determinism."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import tyro

from nifr_ns.geometry import camera_center, invert_pose, look_at, perturb_pose, pose_errors, rotation_angle_deg
from nifr_ns.pose_io import PoseSet, read_poses
from nifr_ns.scripts.synth import SynthCommand, main
from nifr_ns.synth import (
    OTHER_CAMERAS,
    ROOM_SIZE,
    SCENE_NAMES,
    SUITE_GRADES,
    SceneInfo,
    SynthConfig,
    build_scene,
    generate_scene,
    generate_suite,
    grade_appearance,
    render_view,
    scene_intrinsics,
)
from nifr_ns.synth.render import shadow_mask
from nifr_ns.synth.views import moved_light, sample_cameras


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SceneInfo:
    return generate_scene(tmp_path_factory.mktemp("synth") / "tiny", SynthConfig(preset="tiny"))


def _rgb(path: Path) -> np.ndarray:
    """(H, W, 3) float in [0, 1]."""
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB) / 255.0


def _depth(path: Path) -> np.ndarray:
    """(H, W) metres."""
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED) * 1e-3


def _bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """(H, W, C) image at (N, 2) continuous pixel positions (pixel centres at +0.5) -> (N, C)."""
    x, y = uv[:, 0] - 0.5, uv[:, 1] - 0.5
    x0 = np.clip(np.floor(x).astype(int), 0, image.shape[1] - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, image.shape[0] - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


View = tuple[np.ndarray, np.ndarray, np.ndarray]  # rgb (H, W, 3), depth (H, W), T_cw (4, 4)


def _project(view_a: View, T_b: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of A lifted with A's depth, seen from T_b: (H*W, 2) pixel positions and (H*W,) depths."""
    _, depth_a, T_a = view_a
    height, width = depth_a.shape
    v, u = np.mgrid[0:height, 0:width] + 0.5
    rays = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1) @ np.linalg.inv(K).T
    T_ba = T_b @ invert_pose(T_a)
    X_b = (rays * depth_a.reshape(-1, 1)) @ T_ba[:3, :3].T + T_ba[:3, 3]
    z = X_b[:, 2]
    return (X_b @ K.T)[:, :2] / np.where(z > 0, z, 1.0)[:, None], z


def _colour_errors(view_a: View, view_b: View, K: np.ndarray, T_b_used: np.ndarray | None = None) -> np.ndarray:
    """|colour in A - colour at its projection in B| (M, 3) for the pixels of A that B sees.

    B sees a pixel of A (lifted with A's depth) when it projects inside B, 1 px from the
    border, and B's depth there agrees (not occluded). The colour in B is then sampled where
    `T_b_used` (default: B's pose) projects the pixel.
    """
    rgb_b, depth_b, T_b = view_b
    height, width = depth_b.shape
    uv, z = _project(view_a, T_b, K)
    inside = (view_a[1].ravel() > 0) & (z > 0.1) & np.all((uv >= 1.0) & (uv <= [width - 1.0, height - 1.0]), axis=1)
    seen = inside & (np.abs(_bilinear(depth_b[..., None], uv)[:, 0] - z) < 0.02 + 0.02 * z)
    if T_b_used is not None:
        uv, _ = _project(view_a, T_b_used, K)
        seen &= np.all((uv >= 1.0) & (uv <= [width - 1.0, height - 1.0]), axis=1)
    return np.abs(view_a[0].reshape(-1, 3)[seen] - _bilinear(rgb_b, uv[seen]))


def _views(poses: PoseSet) -> list[View]:
    return [(_rgb(poses.root / i.name), _depth(poses.root / i.extra["depth_file_path"]), i.T_cw) for i in poses]


def test_a_pixel_lifted_with_its_depth_lands_on_the_same_colour_in_another_view(tiny: SceneInfo) -> None:
    train = read_poses(tiny.out / "transforms.json")
    K = train.images[0].intrinsics.K()
    views = _views(train)
    # The closest pair of viewpoints among those where B sees a third of A: a large change of
    # scale would blur colours apart even with exact poses.
    pairs = [(a, b) for a in range(len(views)) for b in range(len(views)) if a != b]
    pairs = [(a, b) for a, b in pairs if len(_colour_errors(views[a], views[b], K)) > views[a][1].size / 3]
    assert pairs
    distance, angle = pose_errors(np.stack([views[a][2] for a, _ in pairs]), np.stack([views[b][2] for _, b in pairs]))
    a, b = pairs[int(np.argmin(distance + angle / 10))]

    right = np.median(_colour_errors(views[a], views[b], K))
    # An error the size of the queries' initial ones is plainly visible.
    wrong_pose = perturb_pose(views[b][2], 8.0, 0.3, np.random.default_rng(0))
    wrong = np.median(_colour_errors(views[a], views[b], K, wrong_pose))
    assert right < 0.03
    assert wrong > 2 * right


def test_depth_is_the_exact_z_depth_of_the_pixel_centre(tiny: SceneInfo) -> None:
    # A camera tilted up at the ceiling (plane z = height in the room's frame) sees, at pixel
    # (u, v), the z-depth (height - c_z) / (R_lc K^-1 (u, v, 1))_z.
    scene, intrinsics = tiny.scene, tiny.train.images[0].intrinsics
    T_cl = look_at(np.array([1.5, 2.5, 2.2]), np.array([1.9, 2.5, 3.0]), np.array([0.0, 0.0, 1.0]))
    _, depth = render_view(scene, T_cl @ invert_pose(scene.world_from_local), intrinsics)

    height, width = depth.shape
    v, u = np.mgrid[0:height, 0:width] + 0.5
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(intrinsics.K()).T @ T_cl[:3, :3]
    expected = (ROOM_SIZE[2] - camera_center(T_cl)[2]) / rays[..., 2]
    np.testing.assert_allclose(depth, expected, rtol=1e-9)


def test_depth_pngs_decode_to_the_ray_cast_depth(tiny: SceneInfo) -> None:
    for image in tiny.train.images[:2]:
        _, depth = render_view(tiny.scene, image.T_cw, image.intrinsics)
        decoded = _depth(tiny.out / image.extra["depth_file_path"])
        assert depth.min() > 0
        np.testing.assert_allclose(decoded, depth, atol=0.5e-3 + 1e-9, rtol=0)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small scenes: 'a' and 'again' alike, 'other_seed', and 'no_occluders'."""
    root = tmp_path_factory.mktemp("small")
    base = SynthConfig(preset="tiny", n_train=2, n_queries=3, occluders=True, rot_deg=(1.0, 2.0), trans=(0.4, 0.5))
    configs = {
        "a": base,
        "again": base,
        "other_seed": replace(base, seed=1),
        "no_occluders": replace(base, occluders=False),
    }
    for name, config in configs.items():
        generate_scene(root / name, config)
    return {name: root / name for name in configs}


@pytest.mark.parametrize("scene", ["tiny", "small"])
def test_initial_poses_differ_from_ground_truth_by_exactly_the_recorded_perturbations(
    scene: str, tiny: SceneInfo, small: dict[str, Path]
) -> None:
    out = tiny.out if scene == "tiny" else small["a"]
    metadata = json.loads((out / "scene.json").read_text())
    queries = out / "queries"
    records = {record["name"]: record for record in metadata["queries"]}
    assert len(records) == metadata["n_queries"] > 0
    gt_json = read_poses(queries / "gt.json")
    for form in ("txt", "json"):
        gt = read_poses(queries / f"gt.{form}", queries / "intrinsics.txt")
        init = read_poses(queries / f"init.{form}", queries / "intrinsics.txt")
        assert gt.names == init.names == list(records)
        for name, record in records.items():
            np.testing.assert_allclose(gt.by_name(name).T_cw, gt_json.by_name(name).T_cw, atol=1e-12)
            trans, rot_deg = pose_errors(init.by_name(name).T_cw, gt.by_name(name).T_cw)
            assert trans == pytest.approx(record["trans"], abs=1e-9)
            assert rot_deg == pytest.approx(record["rot_deg"], abs=1e-6)
            assert metadata["trans"][0] <= record["trans"] <= metadata["trans"][1]
            assert metadata["rot_deg"][0] <= record["rot_deg"] <= metadata["rot_deg"][1]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_same_seed_gives_the_same_bytes_and_another_seed_other_bytes(small: dict[str, Path]) -> None:
    a, again, other = _files(small["a"]), _files(small["again"]), _files(small["other_seed"])
    assert a == again
    assert a.keys() == other.keys()
    differing = {name for name in a if a[name] != other[name]}
    assert {"transforms.json", "scene.json", "images/train_0000.png", "queries/images/query_0000.png"} <= differing


def test_occluders_change_only_the_queries_and_only_come_in_front(small: dict[str, Path]) -> None:
    with_occluders, without = _files(small["a"]), _files(small["no_occluders"])
    assert {name: data for name, data in with_occluders.items() if not name.startswith(("queries", "scene"))} == {
        name: data for name, data in without.items() if not name.startswith(("queries", "scene"))
    }
    for i in range(3):
        occluded = _depth(small["a"] / f"queries/depths/query_{i:04d}.png")
        clear = _depth(small["no_occluders"] / f"queries/depths/query_{i:04d}.png")
        closer = occluded < clear - 1e-3
        # Partial: some of the view, not all of it; never behind what was there.
        assert 0.02 < closer.mean() < 0.5
        assert np.all(occluded <= clear + 1e-3)


def test_cameras_are_in_the_room_free_space_and_the_world_frame_is_moved(tiny: SceneInfo) -> None:
    scene = tiny.scene
    world_from_local = scene.world_from_local
    assert rotation_angle_deg(world_from_local[:3, :3]) > 20
    assert np.linalg.norm(world_from_local[:3, 3]) > 2

    train = np.stack([image.T_cw for image in tiny.train])
    queries = np.stack([image.T_cw for image in tiny.queries_gt])
    for T_cw in (*train, *queries):
        centre = camera_center(T_cw @ world_from_local)  # in the room's frame
        assert np.all((centre > 0.5) & (centre < np.array(ROOM_SIZE) - 0.5))
        assert not any(solid.contains(centre, 0.3) for solid in scene.objects)
    for poses in (tiny.train, read_poses(tiny.out / "queries/gt.json")):
        for image in poses:
            depth = _depth(poses.root / image.extra["depth_file_path"])
            assert depth[depth.shape[0] // 2, depth.shape[1] // 2] > 0.5
    # Queries are new viewpoints, not copies of training views.
    distances = np.linalg.norm(camera_center(queries)[:, None] - camera_center(train)[None], axis=-1)
    assert distances.min() > 0.05


def test_appearance_levels_grade_the_change() -> None:
    image = np.random.default_rng(0).uniform(0.1, 0.9, (24, 32, 3))
    unchanged, _ = grade_appearance(image, "none", np.random.default_rng(1))
    np.testing.assert_array_equal(unchanged, image)

    def change(level: str) -> float:
        graded = [grade_appearance(image, level, np.random.default_rng(seed))[0] for seed in range(8)]
        return float(np.mean([np.abs(g - image).mean() for g in graded]))

    assert 0.01 < change("mild") < change("strong")


def test_graded_query_sets_cycle_grades_and_keep_the_training_views(
    small: dict[str, Path], tmp_path: Path
) -> None:
    config = SynthConfig(preset="tiny", n_train=2, n_queries=3, rot_deg=(1.0, 2.0), trans=(0.4, 0.5),
                         grades=("none", "strong+occluders"))
    generate_scene(tmp_path / "graded", config)
    records = json.loads((tmp_path / "graded" / "scene.json").read_text())["queries"]
    assert [r["grade"] for r in records] == ["none", "strong+occluders", "none"]
    assert [len(r["occluders"]) for r in records] == [0, 2, 0]
    assert records[0]["appearance"]["exposure"] == 1.0 and records[1]["appearance"]["exposure"] != 1.0
    # the map is the same whatever the queries: one trained model serves every graded set
    graded, plain = _files(tmp_path / "graded"), _files(small["a"])
    assert {n: d for n, d in graded.items() if not n.startswith(("queries", "scene"))} == {
        n: d for n, d in plain.items() if not n.startswith(("queries", "scene"))
    }
    with pytest.raises(ValueError, match="grades"):
        SynthConfig(grades=("foggy",)).resolved()  # type: ignore[arg-type]


def test_cli_refuses_a_non_empty_folder_and_overwrites_only_its_own_outputs(tmp_path: Path) -> None:
    out = tmp_path / "scene"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = [str(out), "--preset", "tiny", "--n-train", "2", "--n-queries", "1"]
    assert main(tyro.cli(SynthCommand, args=args)) != 0
    assert [path.name for path in out.iterdir()] == ["notes.txt"]

    stale = out / "images" / "train_0099.png"
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    assert main(tyro.cli(SynthCommand, args=[*args, "--overwrite"])) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert not stale.exists()
    assert len(read_poses(out / "transforms.json")) == 2


@pytest.fixture(scope="module")
def suites(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny suite, written twice with the same settings (few views, one query per grade)."""
    root = tmp_path_factory.mktemp("suites")
    config = SynthConfig(preset="tiny", n_train=3, supersample=1)
    for name in ("a", "b"):
        generate_suite(root / name, config)
    return root / "a", root / "b"


def test_the_suite_is_deterministic_and_its_scenes_differ(suites: tuple[Path, Path]) -> None:
    a, b = suites
    files = _files(a)
    assert files == _files(b)
    suite = json.loads((a / "suite.json").read_text())
    assert suite["scenes"] == list(SCENE_NAMES) and suite["grades"] == list(SUITE_GRADES)
    first_views = {files[f"{scene}/images/train_0000.png"] for scene in SCENE_NAMES}
    assert len(first_views) == len(SCENE_NAMES)
    for scene in SCENE_NAMES:
        records = json.loads((a / scene / "scene.json").read_text())["queries"]
        assert [r["grade"] for r in records] == list(SUITE_GRADES)
        for record in records:
            depth = _depth(a / scene / "queries" / record["name"].replace("images/", "depths/"))
            assert depth.max() > 0  # ground-truth depth for every view


def test_the_dark_room_is_darker_and_flatter_and_the_facade_has_sky_without_depth(suites: tuple[Path, Path]) -> None:
    a, _ = suites

    def views(scene: str) -> np.ndarray:
        return np.stack([_rgb(p) for p in sorted((a / scene / "images").glob("*.png"))])

    room, dark = views("room"), views("dark-room")
    assert dark.mean() < 0.75 * room.mean() and dark.std() < 0.75 * room.std()
    sky = [(_depth(p) == 0).mean() for p in sorted((a / "facade" / "depths").glob("*.png"))]
    assert max(sky) > 0.02  # open sky: pixels without depth
    assert all((_depth(p) > 0).all() for p in sorted((a / "room" / "depths").glob("*.png")))  # a closed room


def test_another_camera_has_its_own_size_and_focal_and_is_recorded(suites: tuple[Path, Path]) -> None:
    a, _ = suites
    train = read_poses(a / "room" / "transforms.json").images[0].intrinsics
    queries = a / "room" / "queries"
    gt = read_poses(queries / "gt.txt", queries / "intrinsics.txt")
    for record in json.loads((a / "room" / "scene.json").read_text())["queries"]:
        intrinsics = gt.by_name(record["name"]).intrinsics
        height, width = _rgb(queries / record["name"]).shape[:2]
        assert (width, height) == (intrinsics.width, intrinsics.height)
        if record["grade"] == "camera":
            w, h, _ = OTHER_CAMERAS[0]
            scale = train.width / 160
            assert (intrinsics.width, intrinsics.height) == (round(w * scale), round(h * scale))
            assert intrinsics.fx != pytest.approx(train.fx) and record["camera"]["blur_px"] > 0
        else:
            assert intrinsics == train


def test_a_moved_light_moves_the_shadows() -> None:
    """Pixels the shadow leaves get brighter, pixels it reaches darker, and pixels in shadow under
    both lights (ambient light alone) keep their colour exactly."""
    scene = build_scene(0, "dark-room")
    intrinsics = scene_intrinsics(SynthConfig(preset="tiny").resolved())
    rng = np.random.default_rng(3)
    for T_cw in sample_cameras(scene, 40, intrinsics, rng):
        moved = scene.with_light(moved_light(scene, rng))
        before, after = shadow_mask(scene, T_cw, intrinsics), shadow_mask(moved, T_cw, intrinsics)
        if (before & ~after).mean() > 0.02 and (before & after).mean() > 0.02:
            break
    else:
        pytest.fail("no view with shadows that move")
    change = render_view(moved, T_cw, intrinsics, 1)[0] - render_view(scene, T_cw, intrinsics, 1)[0]
    brightness = change.sum(-1)
    assert np.all(brightness[before & ~after] > 0)
    assert np.all(brightness[after & ~before] < 0)
    np.testing.assert_array_equal(change[before & after], 0.0)


def test_cli_writes_a_suite_and_refuses_a_scene_folder_and_a_suite_at_once(tmp_path: Path) -> None:
    args = ["--preset", "tiny", "--n-train", "2", "--supersample", "1"]
    assert main(tyro.cli(SynthCommand, args=["--suite", str(tmp_path / "suite"), "--scenes", "room", "facade", *args])) == 0
    suite = json.loads((tmp_path / "suite" / "suite.json").read_text())
    assert suite["scenes"] == ["room", "facade"] and suite["queries_per_scene"] == 4
    assert len(read_poses(tmp_path / "suite" / "facade" / "transforms.json")) == 2
    assert main(tyro.cli(SynthCommand, args=[str(tmp_path / "one"), "--suite", str(tmp_path / "two"), *args])) == 2
    assert main(tyro.cli(SynthCommand, args=["--suite", str(tmp_path / "three"), "--scenes", "attic", *args])) == 2
    assert not (tmp_path / "one").exists() and not (tmp_path / "two").exists() and not (tmp_path / "three").exists()
