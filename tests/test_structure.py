"""The structure-based baseline: exact depth and appearance-changed queries of the synthetic scene."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from nifr_ns.geometry import camera_center, pose_errors
from nifr_ns.pose_io import Intrinsics, PosedImage
from nifr_ns.structure import Reference, StructureConfig, _depth_at, _features, localize
from nifr_ns.synth import SceneInfo, SynthConfig, generate_scene


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> SceneInfo:
    # The tiny scene's cameras (seeded per stream, so the first views and queries are the tiny
    # preset's own) at 4x its 64x48 pixels: at 64x48 SIFT matches 1-5 keypoints per query, too
    # few for PnP. 10 training views hold each test query's nearest neighbours.
    config = SynthConfig(preset="tiny", width=256, height=192, n_train=10, n_queries=2)
    return generate_scene(tmp_path_factory.mktemp("structure") / "scene", config)


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _reference(scene: SceneInfo, view: PosedImage) -> Reference:
    depth = cv2.imread(str(scene.out / view.extra["depth_file_path"]), cv2.IMREAD_UNCHANGED) * 1e-3
    return Reference(_rgb(scene.out / view.name), view.intrinsics, view.T_cw, depth)


def _nearest_references(scene: SceneInfo, query: PosedImage, count: int = 3) -> list[Reference]:
    """The training views nearest the query's centre among those looking within 45 degrees of it:
    the nearest by centre alone often face elsewhere in this room."""
    views = list(scene.train)
    distance = np.array([np.linalg.norm(camera_center(v.T_cw) - camera_center(query.T_cw)) for v in views])
    facing = np.array([v.T_cw[2, :3] @ query.T_cw[2, :3] for v in views]) > np.cos(np.radians(45))
    order = np.argsort(np.where(facing, distance, np.inf))[:count]
    return [_reference(scene, views[i]) for i in order]


def _query(scene: SceneInfo, index: int) -> tuple[np.ndarray, PosedImage]:
    query = scene.queries_gt.images[index]
    return _rgb(scene.out / "queries" / query.name), query


# Measured (OpenCV 4.10): SIFT 0.76 cm / 0.13 deg on query 0, 0.91 cm / 0.15 deg on query 1,
# from 118 and 104 inliers. Without SIFT's precise upscaling (keypoints 0.25 px off) query 1
# was 3.5 cm / 0.64 deg, so these bounds catch a half-pixel-convention slip.
@pytest.mark.parametrize("index", [0, 1])
def test_sift_recovers_the_pose_of_a_query_under_changed_appearance(scene: SceneInfo, index: int) -> None:
    image, query = _query(scene, index)
    fallback = scene.queries_init.images[index].T_cw
    result = localize(image, query.intrinsics, _nearest_references(scene, query), StructureConfig(), fallback)
    trans_err, rot_err = pose_errors(result.T_cw, query.T_cw)
    assert result.success and result.inliers >= 50 and result.matches >= result.inliers
    assert trans_err < 0.02 and rot_err < 0.3, (trans_err, rot_err)


def test_orb_variant_localizes(scene: SceneInfo) -> None:
    # Measured 5.9 cm / 1.1 deg from 136 inliers: ORB's keypoints are coarser than SIFT's.
    image, query = _query(scene, 1)
    result = localize(image, query.intrinsics, _nearest_references(scene, query), StructureConfig(detector="orb"))
    trans_err, rot_err = pose_errors(result.T_cw, query.T_cw)
    assert result.success and result.inliers >= 50
    assert trans_err < 0.15 and rot_err < 3.0, (trans_err, rot_err)


@pytest.mark.parametrize("detector", ["sift", "orb"])
def test_references_without_overlap_fail_and_return_the_fallback(scene: SceneInfo, detector: str) -> None:
    image, query = _query(scene, 0)
    config = StructureConfig(detector=detector)
    fallback = scene.queries_init.images[0].T_cw
    rng = np.random.default_rng(0)
    # Noise: plenty of keypoints, exact-looking depth, nothing the query shows.
    flat = np.full(image.shape[:2], 2.0)
    noise = [
        Reference(rng.integers(0, 256, image.shape, dtype=np.uint8), view.intrinsics, view.T_cw, flat)
        for view in scene.train.images[:3]
    ]
    result = localize(image, query.intrinsics, noise, config, fallback)
    assert not result.success and result.inliers < config.min_inliers, (result.matches, result.inliers)
    np.testing.assert_array_equal(result.T_cw, fallback)
    np.testing.assert_array_equal(localize(image, query.intrinsics, noise, config).T_cw, np.eye(4))
    empty = localize(image, query.intrinsics, [], config, fallback)
    assert (empty.success, empty.matches) == (False, 0)


def test_too_few_inliers_fail_and_return_the_fallback(scene: SceneInfo) -> None:
    # Points lifted from one view with any depth fit that view's pose, so wrong depth or poses do
    # not make RANSAC fail reliably; asking for more inliers than there are does.
    image, query = _query(scene, 0)
    references, fallback = _nearest_references(scene, query), scene.queries_init.images[0].T_cw
    found = localize(image, query.intrinsics, references)
    assert found.success and found.inliers < found.matches
    result = localize(image, query.intrinsics, references, StructureConfig(min_inliers=found.matches), fallback)
    assert (result.success, result.matches) == (False, found.matches) and result.inliers < found.matches
    np.testing.assert_array_equal(result.T_cw, fallback)


def test_sift_keypoints_use_the_pixel_centre_convention() -> None:
    # A dark blob centred at (u, v) in the project's convention, pixel (i, j) centred at (j + 0.5, i + 0.5).
    v, u = np.mgrid[0:96, 0:128] + 0.5
    centre = np.array([61.3, 40.8])
    blob = 255 - 200 * np.exp(-((u - centre[0]) ** 2 + (v - centre[1]) ** 2) / (2 * 2.5**2))
    uv, _ = _features(blob.astype(np.uint8), StructureConfig())
    nearest = uv[np.argmin(np.linalg.norm(uv - centre, axis=1))]
    np.testing.assert_allclose(nearest, centre, atol=0.05)


def test_depth_lookup_rejects_invalid_pixels_and_depth_edges() -> None:
    v, u = np.mgrid[0:8, 0:8] + 0.5
    depth = 2.0 + 0.01 * u + 0.02 * v  # a plane: bilinear lookup is exact on it
    depth[:, 6:] = 5.0  # a far wall behind an edge between columns 5 and 6
    depth[0, 0] = 0.0  # invalid
    uv = np.array([[3.2, 4.7], [6.0, 3.0], [1.0, 1.0], [7.5, 7.5]])
    z = _depth_at(depth, uv, max_step=0.05)
    np.testing.assert_allclose(z[0], 2.0 + 0.01 * 3.2 + 0.02 * 4.7)
    assert np.isnan(z[1]) and np.isnan(z[2])
    assert z[3] == 5.0


def test_distorted_intrinsics_and_mismatched_depth_are_refused(scene: SceneInfo) -> None:
    image, query = _query(scene, 0)
    reference = _reference(scene, scene.train.images[0])
    camera = query.intrinsics
    distorted = Intrinsics.from_named("OPENCV", camera.width, camera.height, {**camera.named(), "k1": -0.1})
    with pytest.raises(ValueError, match="pinhole"):
        localize(image, distorted, [reference])
    with pytest.raises(ValueError, match="depth"):
        localize(image, query.intrinsics, [replace(reference, depth=reference.depth[::2, ::2])])


def test_a_dark_low_contrast_query_is_stretched_before_detection(scene: SceneInfo) -> None:
    """SIFT's contrast threshold is absolute: a query a fifth as bright and contrasted, against references
    as they are, keeps few keypoints unless both are stretched over the full range first."""
    image, query = _query(scene, 0)
    dark = np.round(image.astype(np.float64) * 0.2 + 5).astype(np.uint8)
    references = _nearest_references(scene, query)
    stretched = localize(dark, query.intrinsics, references, StructureConfig())
    raw = localize(dark, query.intrinsics, references, StructureConfig(stretch=False))
    trans_err, rot_err = pose_errors(stretched.T_cw, query.T_cw)
    assert stretched.success and trans_err < 0.03 and rot_err < 0.5, (trans_err, rot_err)
    assert stretched.inliers > 2 * raw.inliers, (stretched.inliers, raw.inliers)
