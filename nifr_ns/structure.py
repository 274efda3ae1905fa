"""The classical structure-based localization baseline: local features + depth + PnP-RANSAC.

Owns the peer that ns-nifr-bench compares nifr against (DESIGN.md, "Benchmark harness"):
OpenCV keypoints of the query are matched to those of a few posed reference views; each
matched reference keypoint is lifted to a world point with the reference's depth (rendered
from a model or exact, the caller's choice); the pooled 2D-3D correspondences give the query
pose by PnP-RANSAC and a Levenberg-Marquardt refinement on the inliers.

numpy in, numpy out, world frame, ``T_cw`` world-to-camera in OpenCV axes; no torch, no
nerfstudio. Pixel centres are at ``(j + 0.5, i + 0.5)`` (nifr_ns.geometry) while OpenCV's
keypoints put them at ``(j, i)``: keypoints are shifted by 0.5 as soon as they are detected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from nifr_ns.geometry import as_4x4, invert_pose
from nifr_ns.pose_io import Intrinsics


@dataclass
class Reference:
    """A mapped view the query is matched against."""

    image: np.ndarray  # (H, W, 3) float in [0, 1] or uint8, RGB
    intrinsics: Intrinsics
    T_cw: np.ndarray  # (4, 4) world-to-camera, OpenCV axes
    depth: np.ndarray  # (H, W) z-depth in scene units; <= 0 or non-finite is invalid


@dataclass
class StructureConfig:
    """Settings of :func:`localize`."""

    detector: Literal["sift", "orb"] = "sift"
    """Keypoints and descriptors: SIFT (L2 matching) or ORB (Hamming)."""
    max_features: int = 2000
    """Keypoints kept per image, strongest first."""
    ratio: float = 0.8
    """Lowe's ratio test: the best match's descriptor distance over the second best's must be below this."""
    mutual: bool = True
    """Keep a match only if the query keypoint is also the reference keypoint's nearest neighbour."""
    max_depth_step: float = 0.05
    """Largest depth spread, relative to the nearest, among the 2x2 depth pixels around a reference keypoint."""
    ransac_reprojection_px: float = 2.0
    """Reprojection error (pixels) under which a correspondence is an inlier."""
    ransac_iterations: int = 10000
    """RANSAC's most hypotheses; it stops earlier once ransac_confidence is reached."""
    ransac_confidence: float = 0.999
    min_inliers: int = 12
    stretch: bool = True
    """Before detection, stretch each image's grey levels from its darkest to its brightest pixel over
    the full range. The detectors' contrast thresholds are absolute, so a dark or low-contrast image
    otherwise yields few keypoints; turn off only for images that already span the range."""
    """Fewer correspondences or inliers than this: no pose (success False, the fallback returned)."""


@dataclass
class StructureResult:
    """The outcome of :func:`localize` for one query."""

    T_cw: np.ndarray  # (4, 4) the estimate, or the fallback pose when success is False
    success: bool
    matches: int  # 2D-3D correspondences pooled over the references (after ratio and depth tests)
    inliers: int  # of them, within ransac_reprojection_px of the final pose


def _features(image: np.ndarray, config: StructureConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """(keypoints (N, 2) in this project's pixel coordinates, descriptors (N, D) or None)."""
    if image.dtype != np.uint8:
        image = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    if config.stretch:
        gray = _stretched(gray)
    if config.detector == "sift":
        # SIFT's first octave doubles the image; without precise upscaling that resize shifts every
        # keypoint 0.25 px up-left (measured), which made poses 2-4x worse at 256x192.
        detector = cv2.SIFT_create(nfeatures=config.max_features, enable_precise_upscale=True)
    else:
        # ORB's default 31 px border and patch would leave nothing of a small image.
        detector = cv2.ORB_create(nfeatures=config.max_features, edgeThreshold=15, patchSize=15)
    keypoints, descriptors = detector.detectAndCompute(gray, None)
    pt = np.array([k.pt for k in keypoints], dtype=np.float64).reshape(-1, 2)
    if config.detector == "orb":
        # ORB reports pixel p of pyramid level s as p * s, but OpenCV's resize puts that pixel's centre
        # at (p + 0.5) s in this project's convention, not p * s + 0.5.
        return pt + 0.5 * detector.getScaleFactor() ** np.array([k.octave for k in keypoints])[:, None], descriptors
    return pt + 0.5, descriptors


def _stretched(gray: np.ndarray) -> np.ndarray:
    """``gray`` (uint8) mapped linearly from its own range onto 0-255."""
    lo, hi = int(gray.min()), int(gray.max())
    return np.round((gray.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1))).astype(np.uint8)


def _match(query: np.ndarray | None, reference: np.ndarray | None, config: StructureConfig) -> np.ndarray:
    """(M, 2) index pairs (query, reference) passing the ratio test and, if asked, the mutual check."""
    if query is None or reference is None or len(query) < 2 or len(reference) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    matcher = cv2.BFMatcher(cv2.NORM_L2 if config.detector == "sift" else cv2.NORM_HAMMING)
    pairs = matcher.knnMatch(query, reference, k=2)
    pairs = [p for p in pairs if len(p) == 2]
    good = [(m.queryIdx, m.trainIdx) for m, n in pairs if m.distance < config.ratio * n.distance]
    if config.mutual:
        # Drops many-to-one matches the ratio test lets through: a higher inlier ratio, which RANSAC
        # with 5-point samples needs (measured: one query in three went from a wrong pose to 2 cm).
        back = {m.queryIdx: m.trainIdx for m in matcher.match(reference, query)}
        good = [(q, r) for q, r in good if back.get(r) == q]
    return np.array(good, dtype=np.int64).reshape(-1, 2)


def _depth_at(depth: np.ndarray, uv: np.ndarray, max_step: float) -> np.ndarray:
    """Bilinear depth at pixel positions uv (N, 2); NaN where a neighbour is invalid or the
    neighbours straddle a depth edge (interpolating there would invent a point in mid-air)."""
    height, width = depth.shape
    x, y = uv[:, 0] - 0.5, uv[:, 1] - 0.5  # depth[i, j] belongs to the pixel centre (j + 0.5, i + 0.5)
    x0 = np.clip(np.floor(x).astype(np.int64), 0, width - 2)
    y0 = np.clip(np.floor(y).astype(np.int64), 0, height - 2)
    fx, fy = np.clip(x - x0, 0, 1), np.clip(y - y0, 0, 1)
    d = np.stack([depth[y0, x0], depth[y0, x0 + 1], depth[y0 + 1, x0], depth[y0 + 1, x0 + 1]], 1).astype(np.float64)
    with np.errstate(invalid="ignore"):
        ok = np.all(np.isfinite(d) & (d > 0), 1) & (d.max(1) - d.min(1) <= max_step * d.min(1))
    weights = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], 1)
    return np.where(ok, (np.nan_to_num(d) * weights).sum(1), np.nan)


def _require_pinhole(intrinsics: Intrinsics) -> None:
    if any(intrinsics.distortion.values()):
        raise ValueError(f"structure-based localization needs undistorted (pinhole) images, got {intrinsics.model}")


def localize(
    query_image: np.ndarray,
    query_intrinsics: Intrinsics,
    references: Sequence[Reference],
    config: StructureConfig | None = None,
    fallback_T_cw: np.ndarray | None = None,
) -> StructureResult:
    """The query's T_cw (4, 4) from 2D-3D matches against posed references with depth.

    Fails (success False, T_cw the fallback or the identity) with fewer than min_inliers
    correspondences or inliers; ValueError for intrinsics with lens distortion.
    """
    config = config or StructureConfig()
    fallback = np.eye(4) if fallback_T_cw is None else as_4x4(fallback_T_cw)
    _require_pinhole(query_intrinsics)
    query_uv, query_desc = _features(query_image, config)
    points_2d, points_3d = [np.zeros((0, 2))], [np.zeros((0, 3))]
    for ref in references:
        _require_pinhole(ref.intrinsics)
        if np.shape(ref.depth) != np.shape(ref.image)[:2]:
            raise ValueError(f"reference depth {np.shape(ref.depth)} and image {np.shape(ref.image)[:2]} differ")
        ref_uv, ref_desc = _features(ref.image, config)
        pairs = _match(query_desc, ref_desc, config)
        if len(pairs) == 0:
            continue
        z = _depth_at(np.asarray(ref.depth), ref_uv[pairs[:, 1]], config.max_depth_step)
        keep = np.isfinite(z)
        pixels = np.c_[ref_uv[pairs[keep, 1]], np.ones(keep.sum())]
        X_cam = pixels @ np.linalg.inv(ref.intrinsics.K()).T * z[keep, None]
        T_wc = invert_pose(ref.T_cw)
        points_3d.append(X_cam @ T_wc[:3, :3].T + T_wc[:3, 3])
        points_2d.append(query_uv[pairs[keep, 0]])
    X, uv = np.concatenate(points_3d), np.concatenate(points_2d)
    # PnP-RANSAC's minimal samples need 4-6 points; fewer than min_inliers could never pass anyway.
    if len(X) < max(config.min_inliers, 6):
        return StructureResult(fallback, False, len(X), 0)
    K = query_intrinsics.K()
    # With SQPNP OpenCV draws EPnP hypotheses from 5 points and refits the inliers with SQPnP; its
    # P3P/AP3P kernels failed on synthetic queries this solves, one of them with 78 % inliers (measured).
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(
        X, uv, K, None, iterationsCount=config.ransac_iterations, reprojectionError=config.ransac_reprojection_px,
        confidence=config.ransac_confidence, flags=cv2.SOLVEPNP_SQPNP,
    )  # fmt: skip
    if not ok or inliers is None or len(inliers) < config.min_inliers:
        return StructureResult(fallback, False, len(X), 0 if inliers is None else len(inliers))
    inliers = inliers.ravel()
    rvec, tvec = cv2.solvePnPRefineLM(X[inliers], uv[inliers], K, None, rvec, tvec)
    T_cw = np.eye(4)
    T_cw[:3, :3], T_cw[:3, 3] = cv2.Rodrigues(rvec)[0], tvec.ravel()
    # Count inliers of the refined pose, in front of the camera, so the number describes the answer.
    X_cam = X @ T_cw[:3, :3].T + T_cw[:3, 3]
    projected = X_cam @ K.T
    with np.errstate(divide="ignore", invalid="ignore"):
        error = np.linalg.norm(projected[:, :2] / projected[:, 2:] - uv, axis=1)
    n_inliers = int(np.sum((X_cam[:, 2] > 0) & (error < config.ransac_reprojection_px)))
    if not np.all(np.isfinite(T_cw)) or n_inliers < config.min_inliers:
        return StructureResult(fallback, False, len(X), n_inliers)
    return StructureResult(T_cw, True, len(X), n_inliers)


def select_references(T_cw: np.ndarray, candidates: Sequence[np.ndarray], k: int, max_angle_deg: float = 45.0) -> list[int]:
    """Indices of the ``k`` candidate views (world-to-camera poses) nearest a prior pose by camera
    centre, among those whose viewing direction is within ``max_angle_deg`` of the prior's: a view
    that is close but looks elsewhere shares no keypoints with the query."""
    centre, axis = invert_pose(T_cw)[:3, 3], T_cw[2, :3]
    poses = np.stack([as_4x4(c) for c in candidates])
    centres = np.einsum("nji,nj->ni", poses[:, :3, :3], -poses[:, :3, 3])  # -R^T t
    facing = poses[:, 2, :3] @ axis >= np.cos(np.radians(max_angle_deg))
    order = np.argsort(np.linalg.norm(centres - centre, axis=1), kind="stable")
    return [int(i) for i in order if facing[i]][:k]
