"""Tests of nifr_ns.pose_io: both pose-file forms, their errors, and nerfstudio's frame."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest

from nifr_ns.geometry import T_cw_to_opengl_c2w, look_at, perturb_pose
from nifr_ns.pose_io import (
    DataparserTransform,
    Intrinsics,
    PoseFileError,
    PosedImage,
    PoseSet,
    read_hloc,
    read_poses,
    read_transforms,
    write_hloc,
    write_poses,
    write_transforms,
)

SHARED = {"w": 160, "h": 120, "fl_x": 130.0, "fl_y": 128.0, "cx": 80.0, "cy": 60.5}


def random_T_cw(rng: np.random.Generator) -> np.ndarray:
    eye = rng.normal(size=3) * 2 + [0, 0, 1]
    return look_at(eye, rng.normal(size=3) * 0.2, np.array([0.0, 0.0, 1.0]))


def transforms_meta(rng: np.random.Generator, per_frame: bool, n: int = 4) -> dict:
    """A transforms.json with extra keys; per frame, intrinsics differ and some are distorted."""
    frames = []
    for i in range(n):
        frame = {
            "file_path": f"images/frame_{i:03d}.png",
            "transform_matrix": T_cw_to_opengl_c2w(random_T_cw(rng)).tolist(),
            "depth_file_path": f"depths/frame_{i:03d}.png",
        }
        if per_frame:
            frame.update(SHARED, fl_x=100.0 + i, cx=79.0 + i / 2, k1=0.01 * i, p2=-0.001 * i)
        frames.append(frame)
    meta = {"camera_model": "OPENCV", "custom_note": "kept", "frames": frames}
    return meta if per_frame else {**SHARED, **meta}


def nonzero(distortion: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in distortion.items() if v}


def assert_same_poses(a: PoseSet, b: PoseSet) -> None:
    assert a.names == b.names
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.T_cw, y.T_cw, atol=1e-12)
        assert x.intrinsics == y.intrinsics


@pytest.mark.parametrize("per_frame", [False, True], ids=["shared", "per_frame"])
def test_transforms_to_hloc_to_transforms_round_trip(tmp_path, per_frame):
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps(transforms_meta(np.random.default_rng(1), per_frame)))
    original = read_poses(path)
    assert original.form == "transforms" and original.root == tmp_path
    assert len({image.intrinsics for image in original}) == (4 if per_frame else 1)

    write_hloc(original, tmp_path / "out" / "poses.txt", tmp_path / "out" / "cameras.txt")
    via_hloc = read_poses(tmp_path / "out" / "poses.txt", tmp_path / "out" / "cameras.txt", image_root=tmp_path)
    assert via_hloc.form == "hloc" and via_hloc.root == tmp_path
    assert_same_poses(via_hloc, original)

    write_transforms(dataclasses.replace(via_hloc, form="transforms"), tmp_path / "again" / "transforms.json")
    again = read_transforms(tmp_path / "again" / "transforms.json")
    assert_same_poses(again, original)
    written = json.loads((tmp_path / "again" / "transforms.json").read_text())
    assert ("fl_x" in written) != per_frame
    assert all(("fl_x" in frame) == per_frame for frame in written["frames"])


def test_rewriting_a_transforms_file_keeps_other_keys_and_new_poses(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps(transforms_meta(rng, per_frame=False)))
    poses = read_poses(path)
    refined = {poses.names[1]: perturb_pose(poses.images[1].T_cw, 3.0, 0.1, rng)}
    write_transforms(poses.with_poses(refined), tmp_path / "out" / "refined.json", extra={"refined_by": "test"})

    again = read_poses(tmp_path / "out" / "refined.json")
    np.testing.assert_allclose(again.by_name(poses.names[1]).T_cw, refined[poses.names[1]], atol=1e-12)
    np.testing.assert_allclose(again.by_name(poses.names[0]).T_cw, poses.images[0].T_cw, atol=1e-12)
    assert again.images[2].extra == {"depth_file_path": "depths/frame_002.png"}
    assert again.extra == {"custom_note": "kept", "refined_by": "test"}


def test_hloc_round_trip_keeps_every_camera_model(tmp_path):
    cameras = {
        "a.jpg": "SIMPLE_PINHOLE 640 480 500 320 240",
        "b.jpg": "PINHOLE 640 480 500 510 321 239",
        "c.jpg": "SIMPLE_RADIAL 640 480 500 320 240 0.02",
        "d.jpg": "RADIAL 640 480 500 320 240 0.02 -0.001",
        "e.jpg": "OPENCV 640 480 500 510 320 240 0.02 -0.001 0.0005 0.0003",
        "f.jpg": "OPENCV_FISHEYE 640 480 300 301 320 240 0.1 0.01 0.001 0.0001",
    }
    rng = np.random.default_rng(3)
    (tmp_path / "cameras.txt").write_text("".join(f"{name} {camera}\n" for name, camera in cameras.items()))
    lines = []
    for name in cameras:
        q = rng.normal(size=4)
        lines.append(" ".join([name, *map(str, q / np.linalg.norm(q)), *map(str, rng.normal(size=3))]))
    (tmp_path / "poses.txt").write_text("\n".join(lines) + "\n")
    poses = read_hloc(tmp_path / "poses.txt", tmp_path / "cameras.txt")
    assert [image.intrinsics.model for image in poses] == [camera.split()[0] for camera in cameras.values()]

    write_poses(poses, tmp_path / "out" / "poses.txt", tmp_path / "out" / "cameras.txt")
    assert_same_poses(read_hloc(tmp_path / "out" / "poses.txt", tmp_path / "out" / "cameras.txt"), poses)

    # Through a transforms.json (one camera type per file): models may widen, cameras stay the same.
    perspective = dataclasses.replace(poses, images=poses.images[:-1], form="transforms")
    write_transforms(perspective, tmp_path / "t.json")
    for before, after in zip(perspective, read_transforms(tmp_path / "t.json")):
        np.testing.assert_allclose(after.intrinsics.K(), before.intrinsics.K())
        assert nonzero(after.intrinsics.distortion) == nonzero(before.intrinsics.distortion)


def test_fisheye_transforms_keep_their_model(tmp_path):
    meta = {**SHARED, "camera_model": "OPENCV_FISHEYE", "k1": 0.1, "k4": 0.002}
    meta["frames"] = [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}]
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    intrinsics = read_poses(tmp_path / "transforms.json").images[0].intrinsics
    assert intrinsics.model == "OPENCV_FISHEYE"
    assert intrinsics.distortion == {"k1": 0.1, "k2": 0.0, "k3": 0.0, "k4": 0.002}


@pytest.mark.parametrize("model, params", [("SIMPLE_RADIAL", (500, 320, 240, 0.02)), ("PINHOLE", (500, 510, 321, 239))])
@pytest.mark.parametrize("sx, sy", [(0.5, 0.5), (0.25, 0.3)])
def test_scaled_intrinsics_follow_the_resized_image(model, params, sx, sy):
    camera = Intrinsics(model, 640, 480, params)
    small = camera.scaled(sx, sy)
    assert (small.width, small.height) == (round(640 * sx), round(480 * sy))
    assert nonzero(small.distortion) == nonzero(camera.distortion)
    # A ray hits the resized image where it hit the original, scaled (continuous pixel coordinates).
    ray = np.array([0.1, -0.2, 1.0])
    uv, uv_small = camera.K() @ ray, small.K() @ ray
    np.testing.assert_allclose(uv_small[:2], uv[:2] * [sx, sy])


def test_intrinsics_reject_bad_parameters():
    with pytest.raises(ValueError, match="takes 4 parameters"):
        Intrinsics("PINHOLE", 640, 480, (500, 320, 240))
    with pytest.raises(ValueError, match="unknown camera model"):
        Intrinsics("FOV", 640, 480, (500, 500, 320, 240, 0.1))
    with pytest.raises(ValueError, match="positive"):
        Intrinsics.pinhole(640, 480, -500, 500, 320, 240)


def test_pose_set_lookup_and_copies():
    camera = Intrinsics.pinhole(64, 48, 50, 50, 32, 24)
    with pytest.raises(ValueError, match="unique"):
        PoseSet([PosedImage("a", np.eye(4), camera), PosedImage("a", np.eye(4), camera)], "hloc", Path("."))
    poses = PoseSet([PosedImage("a", np.eye(4), camera), PosedImage("b", np.eye(4), camera)], "hloc", Path("."))
    moved = np.eye(4)
    moved[0, 3] = 1
    copy = poses.with_poses({"b": moved})
    np.testing.assert_array_equal(copy.by_name("b").T_cw, moved)
    np.testing.assert_array_equal(poses.by_name("b").T_cw, np.eye(4))
    with pytest.raises(KeyError):
        poses.with_poses({"c": moved})


# --- nerfstudio's frame ---------------------------------------------------------------------


def random_similarity(rng: np.random.Generator) -> DataparserTransform:
    T = look_at(rng.normal(size=3), rng.normal(size=3) + 5, np.array([0.0, 1.0, 0.0]))
    return DataparserTransform(T[:3], float(rng.uniform(0.1, 3.0)))


def test_dataparser_transform_round_trips():
    rng = np.random.default_rng(4)
    dp = random_similarity(rng)
    T_cw = np.stack([random_T_cw(rng) for _ in range(3)])
    c2w_ns = dp.T_cw_to_nerfstudio_c2w(T_cw)
    np.testing.assert_allclose(dp.nerfstudio_c2w_to_T_cw(c2w_ns[:, :3]), T_cw, atol=1e-12)
    np.testing.assert_allclose(dp.c2w_to_world(dp.c2w_to_nerfstudio(c2w_ns)), c2w_ns, atol=1e-12)
    X = rng.normal(size=(5, 3))
    np.testing.assert_allclose(dp.points_to_world(dp.points_to_nerfstudio(X)), X, atol=1e-12)
    # Poses and points map alike: camera centres land on the nerfstudio cameras' origins.
    centres = T_cw_to_opengl_c2w(T_cw)[:, :3, 3]
    np.testing.assert_allclose(dp.points_to_nerfstudio(centres), c2w_ns[:, :3, 3], atol=1e-12)
    identity = DataparserTransform.identity()
    np.testing.assert_allclose(identity.T_cw_to_nerfstudio_c2w(T_cw), T_cw_to_opengl_c2w(T_cw))


APPLIED = {"applied_transform": [[0, 1, 0, 0.5], [1, 0, 0, -1], [0, 0, -1, 2]], "applied_scale": 2.5}


@pytest.mark.parametrize("layout", ["plain", "applied", "colmap_folder"])
def test_mapping_agrees_with_nerfstudio_dataparser(tmp_path, layout):
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    meta = transforms_meta(np.random.default_rng(5), per_frame=True, n=5)
    meta["cy"] = 61.0  # beside the frames' own cy: nerfstudio lets the top-level key win
    if layout == "applied":
        meta.update(APPLIED)
    if layout == "colmap_folder":  # nerfstudio assumes a default applied_transform for such folders
        (tmp_path / "colmap" / "sparse" / "0").mkdir(parents=True)
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    data = tmp_path if layout == "colmap_folder" else tmp_path / "transforms.json"

    parser = NerfstudioDataParserConfig(data=data, downscale_factor=1, eval_mode="all").setup()
    outputs = parser.get_dataparser_outputs("train")
    outputs.save_dataparser_transform(tmp_path / "dataparser_transforms.json")
    dp = DataparserTransform.load(tmp_path / "dataparser_transforms.json", data=data)

    poses = read_poses(tmp_path / "transforms.json")
    cameras = outputs.cameras
    ns_c2w = cameras.camera_to_worlds.double().numpy()
    T_cw = np.stack([poses.by_name(str(f.relative_to(tmp_path))).T_cw for f in outputs.image_filenames])
    np.testing.assert_allclose(dp.T_cw_to_nerfstudio_c2w(T_cw)[:, :3], ns_c2w, atol=1e-5)
    np.testing.assert_allclose(dp.nerfstudio_c2w_to_T_cw(ns_c2w), T_cw, atol=1e-5)
    if layout != "plain":  # nerfstudio's saved file alone maps the frame before applied_transform
        raw = DataparserTransform.load(tmp_path / "dataparser_transforms.json")
        assert not np.allclose(raw.T_cw_to_nerfstudio_c2w(T_cw)[:, :3], ns_c2w, atol=1e-3)

    for i, f in enumerate(outputs.image_filenames):
        intrinsics = poses.by_name(str(f.relative_to(tmp_path))).intrinsics
        got = [cameras.fx[i], cameras.fy[i], cameras.cx[i], cameras.cy[i], cameras.width[i], cameras.height[i]]
        expected = [intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy, intrinsics.width, intrinsics.height]
        np.testing.assert_allclose(np.array([float(v) for v in got]), expected, rtol=1e-6)
        ns_distortion = dict(zip(["k1", "k2", "k3", "k4", "p1", "p2"], cameras.distortion_params[i].tolist()))
        for key, value in intrinsics.distortion.items():
            assert ns_distortion[key] == pytest.approx(value, abs=1e-7)


# --- malformed files ------------------------------------------------------------------------

CAMERAS = "# name MODEL w h\na.png PINHOLE 640 480 500 500 320 240\nb.png SIMPLE_RADIAL 640 480 500 320 240 0.1\n"
POSE_A = "a.png 1 0 0 0 0.1 0.2 0.3"
POSE_B = "b.png 0 1 0 0 0 0 1"
SCALED = (1.1 * np.eye(4)).tolist()
REFLECTED = np.diag([1.0, 1.0, -1.0, 1.0]).tolist()


class Case(NamedTuple):
    files: dict[str, str]  # file name -> text; a file left out is missing
    read: Callable[[Path], object]  # reads from the folder holding the files
    bad_file: str
    line: int | None
    match: str  # part of the message that says what is wrong


def hloc(poses: str | None, cameras: str | None, bad_file: str, line: int | None, match: str) -> Case:
    files = {name: text for name, text in [("poses.txt", poses), ("cameras.txt", cameras)] if text is not None}
    return Case(files, lambda folder: read_poses(folder / "poses.txt", folder / "cameras.txt"), bad_file, line, match)


def transforms(text: str | None, line: int | None, match: str) -> Case:
    files = {} if text is None else {"transforms.json": text}
    return Case(files, lambda folder: read_poses(folder / "transforms.json"), "transforms.json", line, match)


def dataparser(text: str, line: int | None, match: str) -> Case:
    return Case({"dp.json": text}, lambda folder: DataparserTransform.load(folder / "dp.json"), "dp.json", line, match)


def frames_json(*frames: str, top: dict | None = None) -> str:
    """A transforms.json with frame i on line 4 + i."""
    header = json.dumps({**SHARED, **(top or {})})[1:-1]
    return "{\n" + header + ',\n"frames": [\n' + ",\n".join(frames) + "\n]}\n"


def frame(name: str = "a.png", matrix: list | None = None) -> str:
    return json.dumps({"file_path": name, "transform_matrix": np.eye(4).tolist() if matrix is None else matrix})


MALFORMED = {
    "hloc_wrong_column_count": hloc(f"# header\n{POSE_A}\nb.png 1 0 0 0 0 0\n", CAMERAS, "poses.txt", 3, "8 columns"),
    "hloc_non_numeric": hloc("\n\na.png 1 0 0 zero 0 0 0\n", CAMERAS, "poses.txt", 3, "not a number"),
    "hloc_nan": hloc(f"{POSE_A}\nb.png 1 0 0 0 nan 0 0\n", CAMERAS, "poses.txt", 2, "finite"),
    "hloc_inf": hloc("a.png 1 0 0 0 0 -inf 0\n", CAMERAS, "poses.txt", 1, "finite"),
    "hloc_non_unit_quaternion": hloc(f"{POSE_B}\na.png 1 0.1 0 0 0 0 0\n", CAMERAS, "poses.txt", 2, "quaternion"),
    "hloc_duplicate_name": hloc(f"{POSE_A}\n{POSE_B}\n{POSE_A}\n", CAMERAS, "poses.txt", 3, "duplicate"),
    "hloc_name_without_intrinsics": hloc(f"{POSE_A}\nc.png 1 0 0 0 0 0 0\n", CAMERAS, "poses.txt", 2, "no intrinsics"),
    "hloc_unknown_model": hloc(POSE_A, "a.png PINHOLEX 640 480 1 2 3 4\n", "cameras.txt", 1, "unknown camera model"),
    "hloc_wrong_parameter_count": hloc(POSE_A, CAMERAS + "c.png OPENCV 640 480 1 2 3 4\n", "cameras.txt", 4, "takes 8"),
    "hloc_short_intrinsics_line": hloc(POSE_A, "a.png PINHOLE 640\n", "cameras.txt", 1, "MODEL width height"),
    "hloc_non_integer_size": hloc(POSE_A, "a.png PINHOLE 640.5 480 1 1 2 2\n", "cameras.txt", 1, "integer"),
    "hloc_duplicate_intrinsics": hloc(POSE_A, CAMERAS + "a.png PINHOLE 64 48 1 1 2 2\n", "cameras.txt", 4, "duplicate"),
    "hloc_missing_poses_file": hloc(None, CAMERAS, "poses.txt", None, "cannot read"),
    "hloc_missing_intrinsics_file": hloc(POSE_A, None, "cameras.txt", None, "cannot read"),
    "hloc_intrinsics_not_given": Case(
        {"poses.txt": POSE_A}, lambda folder: read_poses(folder / "poses.txt"), "poses.txt", None, "intrinsics file"
    ),
    "json_invalid": transforms(frames_json(frame(), '{"file_path": "b.png",,}'), 5, "invalid JSON"),
    "json_missing_transform_matrix": transforms(frames_json(frame(), '{"file_path": "b.png"}'), 5, "transform_matrix"),
    "json_missing_file_path": transforms(frames_json(frame(), frame("b"), '{"transform_matrix": []}'), 6, "file_path"),
    "json_matrix_not_4x4": transforms(frames_json(frame(matrix=np.eye(3).tolist())), 4, "4x4"),
    "json_matrix_not_numbers": transforms(frames_json(frame(matrix=[["a"] * 4] * 4)), 4, "numbers"),
    "json_matrix_scaled": transforms(frames_json(frame(), frame("b.png", SCALED)), 5, "not rigid"),
    "json_matrix_reflection": transforms(frames_json(frame(matrix=REFLECTED)), 4, "not rigid"),
    "json_matrix_nan": transforms(frames_json(frame(matrix=[[float("nan")] * 4] * 4)), 4, "NaN"),
    "json_duplicate_file_path": transforms(frames_json(frame(), frame()), 5, "duplicate"),
    "json_missing_intrinsics_key": transforms(frames_json(frame()).replace('"fl_y": 128.0, ', ""), 4, "'fl_y'"),
    "json_non_numeric_intrinsics": transforms(frames_json(frame(), top={"cx": "centre"}), 4, "'cx'"),
    "json_unsupported_camera_model": transforms(frames_json(frame(), top={"camera_model": "FISHEYE624"}), 4, "camera"),
    "json_no_frames": transforms("[1, 2]", None, "frames"),
    "json_missing_file": transforms(None, None, "cannot read"),
    "dataparser_invalid_json": dataparser('{\n"transform": [[1, 0, 0, 0]],\n"scale": }', 3, "invalid JSON"),
    "dataparser_missing_scale": dataparser(json.dumps({"transform": np.eye(4)[:3].tolist()}), None, "scale"),
    "dataparser_bad_shape": dataparser(json.dumps({"transform": np.eye(3).tolist(), "scale": 1}), None, "3x4"),
}


@pytest.mark.parametrize("case", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_files_are_reported_with_file_and_line(tmp_path, case):
    for name, text in case.files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(PoseFileError, match=case.match) as info:
        case.read(tmp_path)
    assert info.value.line == case.line
    where = f"{tmp_path / case.bad_file}:" if case.line is None else f"{tmp_path / case.bad_file}:{case.line}: "
    assert str(info.value).startswith(where)
