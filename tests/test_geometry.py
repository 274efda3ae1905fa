"""Tests of nifr_ns.geometry: frames, rotations, SE(3), projection and error metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.autograd.functional import jacobian

from nifr_ns import geometry as g


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    return g.quaternion_to_matrix(rng.normal(size=4))


def random_pose(rng: np.random.Generator) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = random_rotation(rng)
    T[:3, 3] = rng.normal(size=3) * 3
    return T


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_quaternion_round_trip(rng):
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        R = g.quaternion_to_matrix(q)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        np.testing.assert_allclose(g.quaternion_to_matrix(-q), R, atol=1e-15)
        back = g.matrix_to_quaternion(R)
        assert back[0] >= 0
        np.testing.assert_allclose(back, q if q[0] >= 0 else -q, atol=1e-12)


def test_quaternion_handedness_and_half_turns():
    angle = 0.3
    R = g.quaternion_to_matrix([math.cos(angle / 2), 0, 0, math.sin(angle / 2)])
    np.testing.assert_allclose(R @ [1, 0, 0], [math.cos(angle), math.sin(angle), 0], atol=1e-15)
    # qw = 0: 180-degree turns, where trace-based conversions break down.
    for axis in np.eye(3).tolist() + [[1 / math.sqrt(2), -1 / math.sqrt(2), 0]]:
        R = g.quaternion_to_matrix([0, *axis])
        np.testing.assert_allclose(g.quaternion_to_matrix(g.matrix_to_quaternion(R)), R, atol=1e-12)


def test_nearest_rotation_repairs_small_noise(rng):
    R = random_rotation(rng)
    repaired = g.nearest_rotation(R + 1e-4 * rng.normal(size=(3, 3)))
    np.testing.assert_allclose(repaired @ repaired.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(repaired) == pytest.approx(1.0)
    np.testing.assert_allclose(repaired, R, atol=1e-3)


def test_opengl_opencv_round_trip_batched(rng):
    T_cw = np.stack([random_pose(rng) for _ in range(5)])
    c2w_gl = g.T_cw_to_opengl_c2w(T_cw)
    np.testing.assert_allclose(g.opengl_c2w_to_T_cw(c2w_gl), T_cw, atol=1e-12)
    np.testing.assert_allclose(g.opengl_c2w_to_T_cw(c2w_gl[:, :3]), T_cw, atol=1e-12)
    np.testing.assert_allclose(c2w_gl[:, :3, 3], g.camera_center(T_cw), atol=1e-12)


def test_opengl_camera_looking_down_minus_z_looks_down_plus_z_in_opencv():
    T_cw = g.opengl_c2w_to_T_cw(np.eye(4))
    in_front = T_cw @ [0, 0, -2, 1]  # world point 2 units down world -z
    above = T_cw @ [0, 1, 0, 1]  # world +y is the OpenGL camera's up
    np.testing.assert_allclose(in_front[:3], [0, 0, 2])
    assert above[1] < 0  # up in the image is -y in OpenCV axes


def test_look_at_points_the_camera_at_the_target(rng):
    eye, target, up = np.array([1.0, 2.0, 3.0]), np.array([-2.0, 0.5, 0.0]), np.array([0.0, 0.0, 1.0])
    T_cw = g.look_at(eye, target, up)
    np.testing.assert_allclose(T_cw[:3, :3] @ T_cw[:3, :3].T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(g.camera_center(T_cw), eye, atol=1e-12)
    target_cam = T_cw @ np.r_[target, 1]
    np.testing.assert_allclose(target_cam[:2], 0, atol=1e-12)
    assert target_cam[2] == pytest.approx(np.linalg.norm(target - eye))
    assert (T_cw @ np.r_[target + up, 1])[1] < 0  # world up is image up


def test_perturb_pose_gives_exactly_the_requested_errors(rng):
    for rot_deg, trans in [(0.0, 0.0), (1.0, 0.01), (5.0, 0.25), (30.0, 2.0), (179.0, 0.5)]:
        T_cw = random_pose(rng)
        perturbed = g.perturb_pose(T_cw, rot_deg, trans, rng)
        np.testing.assert_allclose(perturbed[:3, :3] @ perturbed[:3, :3].T, np.eye(3), atol=1e-12)
        trans_err, rot_err = g.pose_errors(perturbed, T_cw)
        assert trans_err == pytest.approx(trans, abs=1e-9)
        assert rot_err == pytest.approx(rot_deg, abs=1e-6)


def test_pose_errors_batched_and_known_values(rng):
    T_gt = np.stack([random_pose(rng) for _ in range(3)])
    T_est = T_gt.copy()
    # Moving the camera centre by (3, 4, 0) in the world: error 5, no rotation.
    T_est[0, :3, 3] -= T_est[0, :3, :3] @ [3.0, 4.0, 0.0]
    # A 90-degree turn about the camera's own centre: no translation error.
    T_est[1] = g.perturb_pose(T_gt[1], 90.0, 0.0, rng)
    trans_err, rot_err = g.pose_errors(T_est, T_gt)
    np.testing.assert_allclose(trans_err, [5.0, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(rot_err, [0.0, 90.0, 0.0], atol=1e-6)


def test_recall_counts_queries_under_both_thresholds():
    trans_err = np.array([0.005, 0.015, 0.03, 0.2, np.nan])
    rot_err = np.array([0.5, 3.0, 1.0, 1.0, np.nan])
    got = g.recall(trans_err, rot_err, [(0.01, 1.0), (0.05, 2.0), (0.25, 5.0)])
    assert got == pytest.approx([1 / 5, 2 / 5, 4 / 5])
    assert all(math.isnan(r) for r in g.recall([], [], [(1.0, 1.0)]))


# --- torch part -----------------------------------------------------------------------


def twist(axis: np.ndarray, angle: float, v: np.ndarray) -> torch.Tensor:
    axis = axis / np.linalg.norm(axis)
    return torch.tensor(np.r_[angle * axis, v], dtype=torch.float64)


@pytest.mark.parametrize("angle", [0.0, 1e-12, 1e-7, 1e-3, 0.05, 0.07, 0.5, 2.0, 3.0, math.pi - 1e-6, math.pi - 1e-9])
def test_se3_log_inverts_exp(rng, angle):
    xi = twist(rng.normal(size=3), angle, rng.normal(size=3))
    T = g.se3_exp(xi)
    R = T[:3, :3].numpy()
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(torch.linalg.norm(g.se3_log(T) - xi).item(), 0.0, atol=1e-9)


def test_se3_exp_rotation_matches_quaternion_and_half_turn_round_trips(rng):
    axis, angle = rng.normal(size=3), 2.5
    axis /= np.linalg.norm(axis)
    T = g.se3_exp(twist(axis, angle, np.zeros(3))).numpy()
    expected = g.quaternion_to_matrix(np.r_[math.cos(angle / 2), math.sin(angle / 2) * axis])
    np.testing.assert_allclose(T[:3, :3], expected, atol=1e-12)
    # Exactly pi: the axis sign is ambiguous, so check exp(log(T)) == T.
    T_pi = g.as_4x4(np.c_[g.quaternion_to_matrix(np.r_[0.0, axis]), rng.normal(size=3)])
    T_pi = torch.tensor(T_pi)
    xi = g.se3_log(T_pi)
    assert torch.linalg.norm(xi[:3]).item() == pytest.approx(math.pi)
    np.testing.assert_allclose(g.se3_exp(xi).numpy(), T_pi.numpy(), atol=1e-12)


def test_se3_batched_float32_round_trip(rng):
    angles = np.r_[0.0, 1e-4, 0.3, 0.79, 1.5, 3.1]
    xi = torch.stack([twist(rng.normal(size=3), a, rng.normal(size=3)) for a in angles]).float()
    T = g.se3_exp(xi)
    assert T.shape == (len(angles), 4, 4) and T.dtype == torch.float32
    np.testing.assert_allclose(g.se3_log(T).numpy(), xi.numpy(), atol=2e-5)


def test_se3_gradients_are_finite_at_identity():
    xi = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    J = jacobian(lambda x: g.se3_log(g.se3_exp(x)), xi)
    np.testing.assert_allclose(J.numpy(), np.eye(6), atol=1e-12)


def test_point_pose_jacobian_matches_autograd(rng):
    X = torch.tensor(rng.normal(size=(5, 3)), dtype=torch.float64)
    T = torch.tensor(random_pose(rng))

    def moved(xi: torch.Tensor) -> torch.Tensor:
        return g.transform_points(g.se3_exp(xi) @ T, X)

    expected = jacobian(moved, torch.zeros(6, dtype=torch.float64))  # (5, 3, 6)
    np.testing.assert_allclose(g.point_pose_jacobian(g.transform_points(T, X)).numpy(), expected.numpy(), atol=1e-12)


def make_K(fx: float = 120.0, fy: float = 110.0, cx: float = 80.5, cy: float = 60.0) -> torch.Tensor:
    return torch.tensor([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=torch.float64)


def test_project_jacobian_matches_autograd(rng):
    K = make_K()
    X = torch.tensor(rng.normal(size=(6, 3)) + [0, 0, 4], dtype=torch.float64)
    full = jacobian(lambda x: g.project(x, K)[0], X)  # (6, 2, 6, 3): cross terms are 0
    expected = torch.stack([full[i, :, i] for i in range(len(X))])
    np.testing.assert_allclose(g.project_jacobian(X, K).numpy(), expected.numpy(), atol=1e-12)
    # Batched cameras (B, 3, 3) with points (B, N, 3) give each camera's own Jacobians.
    K2 = torch.stack([K, make_K(90.0, 95.0, 40.0, 30.0)])
    batched = g.project_jacobian(torch.stack([X, X]), K2)
    np.testing.assert_allclose(batched[1].numpy(), g.project_jacobian(X, K2[1]).numpy())
    np.testing.assert_allclose(batched[0].numpy(), expected.numpy(), atol=1e-12)


def test_unproject_inverts_project_and_centres_pixels(rng):
    K = make_K()
    X = torch.tensor(rng.normal(size=(10, 3)) + [0, 0, 5], dtype=torch.float64)
    uv, z = g.project(X, K)
    np.testing.assert_allclose(z.numpy(), X[:, 2].numpy())
    np.testing.assert_allclose(g.unproject(uv, z, K).numpy(), X.numpy(), atol=1e-12)
    # A point on the optical axis lands on the principal point.
    uv_axis, _ = g.project(torch.tensor([[0.0, 0.0, 3.0]], dtype=torch.float64), K)
    np.testing.assert_allclose(uv_axis.numpy(), [[80.5, 60.0]])


def test_a_depth_map_lifted_to_the_world_projects_back_to_its_pixel_centres(rng):
    K, T_cw = make_K(), random_pose(rng)
    depth = rng.uniform(1.0, 4.0, size=(6, 8))
    X_world = g.depth_map_to_world(depth, K.numpy(), T_cw)
    X_cam = torch.from_numpy(X_world.reshape(-1, 3) @ T_cw[:3, :3].T + T_cw[:3, 3])
    uv, z = g.project(X_cam, K)
    y, x = np.mgrid[0:6, 0:8] + 0.5
    np.testing.assert_allclose(uv.numpy(), np.stack([x, y], -1).reshape(-1, 2), atol=1e-9)
    np.testing.assert_allclose(z.numpy(), depth.reshape(-1), atol=1e-12)


def test_transform_points_agrees_with_matrix_product(rng):
    T = random_pose(rng)
    X = rng.normal(size=(4, 3))
    got = g.transform_points(torch.tensor(T), torch.tensor(X)).numpy()
    np.testing.assert_allclose(got, (T @ np.c_[X, np.ones(4)].T).T[:, :3], atol=1e-12)


def test_skew_is_the_cross_product(rng):
    a, b = torch.tensor(rng.normal(size=(2, 4, 3)))
    np.testing.assert_allclose((g.skew(a) @ b.unsqueeze(-1)).squeeze(-1).numpy(), torch.cross(a, b, dim=-1).numpy())
