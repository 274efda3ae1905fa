"""The project's own geometry, in one place.

numpy (float64) for poses, file formats and metrics; torch (batched, differentiable,
any float dtype and device) for the pose solver.

Conventions (DESIGN.md):
- ``T_cw``: world-to-camera 4x4, OpenCV camera axes (x right, y down, z forward).
- ``c2w_gl``: camera-to-world 4x4, OpenGL camera axes (x right, y up, z backward), as nerfstudio.
- Quaternions are w-first ``(qw, qx, qy, qz)``, as COLMAP and hloc.
- Pixel (row i, col j) is centred at ``(u, v) = (j + 0.5, i + 0.5)``.
- Twists ``xi`` are ``(omega, v)``: rotation (axis-angle) first, then translation. Poses are
  perturbed on the left, ``T <- exp(xi) T``.
"""

from __future__ import annotations

import numpy as np
import torch

# Negates the camera's y and z axes: OpenCV <-> OpenGL camera axes (its own inverse).
_CV_GL = np.diag([1.0, -1.0, -1.0, 1.0])


# --- numpy: poses, conversions, metrics -------------------------------------------------


def as_4x4(M: np.ndarray) -> np.ndarray:
    """A new float64 (..., 4, 4) array from a (..., 3, 4) or (..., 4, 4) transform."""
    M = np.asarray(M, dtype=np.float64)
    if M.shape[-2:] == (4, 4):
        return M.copy()
    if M.shape[-2:] != (3, 4):
        raise ValueError(f"expected a (..., 3, 4) or (..., 4, 4) transform, got shape {M.shape}")
    bottom = np.broadcast_to(np.array([0.0, 0.0, 0.0, 1.0]), (*M.shape[:-2], 1, 4))
    return np.concatenate([M, bottom], axis=-2)


def invert_pose(T: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms (..., 4, 4) or (..., 3, 4) -> (..., 4, 4)."""
    T = as_4x4(T)
    R_inv = np.swapaxes(T[..., :3, :3], -1, -2)
    out = np.zeros_like(T)
    out[..., :3, :3] = R_inv
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", R_inv, T[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation (3, 3) of a w-first quaternion (4,); q is normalised first, so q and -q agree."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Unit w-first quaternion (4,) with qw >= 0 of a rotation (3, 3).

    Bar-Itzhack's method: the eigenvector of a symmetric 4x4 built from R. Unlike
    trace-based formulas it has no branch to get wrong near 180 degrees, and it gives the
    nearest rotation's quaternion when R is slightly off orthonormal.
    """
    (Rxx, Rxy, Rxz), (Ryx, Ryy, Ryz), (Rzx, Rzy, Rzz) = np.asarray(R, dtype=np.float64)
    K = np.array(
        [
            [Rxx - Ryy - Rzz, Ryx + Rxy, Rzx + Rxz, Rzy - Ryz],
            [Ryx + Rxy, Ryy - Rxx - Rzz, Rzy + Ryz, Rxz - Rzx],
            [Rzx + Rxz, Rzy + Ryz, Rzz - Rxx - Ryy, Ryx - Rxy],
            [Rzy - Ryz, Rxz - Rzx, Ryx - Rxy, Rxx + Ryy + Rzz],
        ]
    ) / 3.0
    eigenvalues, eigenvectors = np.linalg.eigh(K)
    x, y, z, w = eigenvectors[:, np.argmax(eigenvalues)]
    q = np.array([w, x, y, z])
    return -q if w < 0 else q


def nearest_rotation(M: np.ndarray) -> np.ndarray:
    """The rotation (..., 3, 3) closest to M (..., 3, 3) in Frobenius norm."""
    U, _, Vt = np.linalg.svd(M)
    # Flip the last singular direction where needed so the result has det +1, not -1.
    D = np.ones(U.shape[:-1])
    D[..., -1] = np.sign(np.linalg.det(U @ Vt))
    return (U * D[..., None, :]) @ Vt


def opengl_c2w_to_T_cw(c2w_gl: np.ndarray) -> np.ndarray:
    """nerfstudio camera-to-world (..., 4, 4) or (..., 3, 4), OpenGL axes -> T_cw (..., 4, 4)."""
    return invert_pose(as_4x4(c2w_gl) @ _CV_GL)


def T_cw_to_opengl_c2w(T_cw: np.ndarray) -> np.ndarray:
    """T_cw (..., 4, 4) -> nerfstudio camera-to-world (..., 4, 4), OpenGL axes."""
    return invert_pose(T_cw) @ _CV_GL


def camera_center(T_cw: np.ndarray) -> np.ndarray:
    """Camera centres in world coordinates (..., 3) of T_cw (..., 4, 4)."""
    return invert_pose(T_cw)[..., :3, 3]


def rotation_angle_deg(R: np.ndarray) -> np.ndarray:
    """Rotation angle in degrees, in [0, 180], of rotations (..., 3, 3)."""
    # atan2 of the sine (from the skew part) and the cosine (from the trace) stays accurate
    # near 0 and 180 degrees, where arccos of the trace alone loses half the digits.
    skew_part = np.stack(
        [R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], axis=-1
    )
    sin = np.linalg.norm(skew_part, axis=-1) / 2
    cos = (np.trace(R, axis1=-2, axis2=-1) - 1) / 2
    return np.degrees(np.arctan2(sin, cos))


def pose_errors(T_cw_est: np.ndarray, T_cw_gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(translation error, rotation error in degrees), each (...,), of poses (..., 4, 4).

    Translation error is the distance between camera centres (in world units); rotation
    error is the angle of R_est R_gt^T.
    """
    trans_err = np.linalg.norm(camera_center(T_cw_est) - camera_center(T_cw_gt), axis=-1)
    R_est, R_gt = np.asarray(T_cw_est)[..., :3, :3], np.asarray(T_cw_gt)[..., :3, :3]
    return trans_err, rotation_angle_deg(R_est @ np.swapaxes(R_gt, -1, -2))


def _random_unit_vector(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def perturb_pose(T_cw: np.ndarray, rot_deg: float, trans: float, rng: np.random.Generator) -> np.ndarray:
    """T_cw (4, 4) rotated by exactly rot_deg about a random axis through its centre, and its
    centre moved by exactly trans in a random direction: pose_errors(result, T_cw) == (trans, rot_deg).
    """
    half_angle = np.radians(rot_deg) / 2
    delta = quaternion_to_matrix(np.r_[np.cos(half_angle), np.sin(half_angle) * _random_unit_vector(rng)])
    R = delta @ np.asarray(T_cw)[:3, :3]
    center = camera_center(T_cw) + trans * _random_unit_vector(rng)
    out = np.eye(4)
    out[:3, :3] = R
    out[:3, 3] = -R @ center
    return out


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """T_cw (4, 4) of a camera at eye (3,) looking at target (3,), with world direction up (3,)
    pointing up in the image (camera -y), OpenCV axes."""
    eye = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    right = np.cross(forward, up)
    if np.linalg.norm(forward) == 0 or np.linalg.norm(right) < 1e-12 * np.linalg.norm(forward):
        raise ValueError("look_at needs target != eye and up not parallel to the viewing direction")
    z = forward / np.linalg.norm(forward)
    x = right / np.linalg.norm(right)
    R_wc = np.stack([x, np.cross(z, x), z], axis=1)  # columns: camera axes in the world
    T_cw = np.eye(4)
    T_cw[:3, :3] = R_wc.T
    T_cw[:3, 3] = -R_wc.T @ eye
    return T_cw


def recall(trans_err: np.ndarray, rot_err: np.ndarray, thresholds: list[tuple[float, float]]) -> list[float]:
    """Per (translation, rotation in degrees) threshold pair, the fraction of queries (N,) under
    both; NaN errors (failed queries) count as misses, and an empty set gives NaN."""
    trans_err, rot_err = np.asarray(trans_err), np.asarray(rot_err)
    if trans_err.size == 0:
        return [float("nan")] * len(thresholds)
    return [float(np.mean((trans_err < t) & (rot_err < r))) for t, r in thresholds]


# --- torch: SE(3) and the camera model for the solver ----------------------------------


def skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrices (..., 3, 3) of v (..., 3): skew(a) @ b == cross(a, b)."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(*v.shape[:-1], 3, 3)


def _small_angle(dtype: torch.dtype) -> float:
    # Below this angle the closed forms lose more digits to cancellation (and hit 0/0 at 0)
    # than the 4-term Taylor series lose to truncation: about 0.06 rad in float64, 0.8 in float32.
    return float(torch.finfo(dtype).eps * 1e6) ** 0.125


def _series(theta_sq: torch.Tensor, *coefficients: float) -> torch.Tensor:
    """c0 + c1 theta^2 + c2 theta^4 + ..., in Horner form."""
    out = torch.full_like(theta_sq, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        out = out * theta_sq + c
    return out


def _pose_matrix(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(..., 4, 4) from R (..., 3, 3) and t (..., 3)."""
    bottom = torch.zeros(*R.shape[:-2], 1, 4, dtype=R.dtype, device=R.device)
    bottom[..., 0, 3] = 1
    return torch.cat([torch.cat([R, t.unsqueeze(-1)], dim=-1), bottom], dim=-2)


def se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """Exponential map of twists xi (..., 6) = (omega, v) -> rigid transforms (..., 4, 4).

    R = exp(skew(omega)) and t = V v, with V the left Jacobian of SO(3).
    """
    omega, v = xi[..., :3], xi[..., 3:]
    theta_sq = (omega * omega).sum(-1)[..., None, None]
    small = theta_sq < _small_angle(xi.dtype) ** 2
    # The placeholder 1 keeps the unused closed-form branch (and its gradient) finite near 0.
    theta = torch.where(small, torch.ones_like(theta_sq), theta_sq).sqrt()
    sin, cos = torch.sin(theta), torch.cos(theta)
    A = torch.where(small, _series(theta_sq, 1, -1 / 6, 1 / 120, -1 / 5040), sin / theta)
    B = torch.where(small, _series(theta_sq, 1 / 2, -1 / 24, 1 / 720, -1 / 40320), (1 - cos) / theta**2)
    C = torch.where(small, _series(theta_sq, 1 / 6, -1 / 120, 1 / 5040, -1 / 362880), (theta - sin) / theta**3)
    W = skew(omega)
    W_sq = W @ W
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device)
    R = eye + A * W + B * W_sq
    V = eye + B * W + C * W_sq
    return _pose_matrix(R, (V @ v.unsqueeze(-1)).squeeze(-1))


def _so3_log(R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(omega (..., 3), theta (...,)) with R = exp(skew(omega)), theta = |omega| in [0, pi]."""
    vee = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    cos = (R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    # vee = 2 sin(theta) axis. Clamping at the tiniest float keeps sqrt's gradient finite at the
    # identity, where omega = vee / 2 exactly (theta / sin -> 1).
    sin = ((vee * vee).sum(-1) / 4).clamp_min(torch.finfo(R.dtype).tiny).sqrt()
    theta = torch.atan2(sin, cos)
    # Past 90 degrees sin -> 0 and vee loses the axis; read it from the symmetric part instead:
    # (R + R^T) / 2 = cos I + (1 - cos) n n^T, and vee only fixes the sign of n.
    obtuse = cos < 0
    sin_acute = torch.where(obtuse, torch.ones_like(sin), sin)
    omega = (theta / (2 * sin_acute)).unsqueeze(-1) * vee

    one_minus_cos = torch.where(obtuse, 1 - cos, torch.ones_like(cos))[..., None, None]
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    nn_t = ((R + R.transpose(-1, -2)) / 2 - eye) / one_minus_cos + eye
    k = nn_t.diagonal(dim1=-2, dim2=-1).argmax(-1)
    column = torch.gather(nn_t, -1, k[..., None, None].expand(*k.shape, 3, 1)).squeeze(-1)
    axis = column / column.norm(dim=-1, keepdim=True)
    axis = torch.where(((axis * vee).sum(-1, keepdim=True) < 0), -axis, axis)
    omega = torch.where(obtuse.unsqueeze(-1), theta.unsqueeze(-1) * axis, omega)
    return omega, theta


def se3_log(T: torch.Tensor) -> torch.Tensor:
    """Logarithm of rigid transforms T (..., 4, 4) -> twists xi (..., 6) = (omega, v), |omega| <= pi."""
    omega, theta = _so3_log(T[..., :3, :3])
    theta = theta[..., None, None]
    small = theta < _small_angle(T.dtype)
    theta_safe = torch.where(small, torch.ones_like(theta), theta)
    # V^-1 = I - W / 2 + D W^2, D = (1 - (theta / 2) cot(theta / 2)) / theta^2.
    half = theta_safe / 2
    D = torch.where(
        small,
        _series(theta**2, 1 / 12, 1 / 720, 1 / 30240, 1 / 1209600),
        (1 - half * torch.cos(half) / torch.sin(half)) / theta_safe**2,
    )
    W = skew(omega)
    V_inv = torch.eye(3, dtype=T.dtype, device=T.device) - W / 2 + D * (W @ W)
    v = (V_inv @ T[..., :3, 3:]).squeeze(-1)
    return torch.cat([omega, v], dim=-1)


def transform_points(T: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Points X (..., N, 3) mapped by transforms T (..., 4, 4) -> (..., N, 3)."""
    return X @ T[..., :3, :3].transpose(-1, -2) + T[..., None, :3, 3]


# Points nearer than this (or behind the camera) are projected as if at this depth, so that
# masked-out residuals keep finite values and gradients; mask them with the returned z.
_MIN_DEPTH = 1e-6


def project(X_cam: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pinhole projection of camera-frame points X_cam (..., N, 3) with K (..., 3, 3).

    Returns (uv (..., N, 2) in continuous pixel coordinates, z (..., N) depths). Only points
    with z > 1e-6 project meaningfully.
    """
    z = X_cam[..., 2]
    p = X_cam @ K.transpose(-1, -2)
    return p[..., :2] / z.clamp_min(_MIN_DEPTH).unsqueeze(-1), z


def project_jacobian(X_cam: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """d uv / d X_cam (..., N, 2, 3) of project(X_cam, K), for points with z > 1e-6."""
    uv, z = project(X_cam, K)
    # uv = K[:2] X / z with z = K[2] X, so d uv = (K[:2] - uv K[2]) dX / z.
    K_rows, K_last = K[..., None, :2, :], K[..., None, 2:, :]
    return (K_rows - uv.unsqueeze(-1) * K_last) / z.clamp_min(_MIN_DEPTH)[..., None, None]


def point_pose_jacobian(X_cam: torch.Tensor) -> torch.Tensor:
    """d X_cam / d xi (..., N, 3, 6) for the left perturbation T <- exp(xi) T at xi = 0, xi = (omega, v):
    [-skew(X_cam) | I]."""
    eye = torch.eye(3, dtype=X_cam.dtype, device=X_cam.device).expand(*X_cam.shape[:-1], 3, 3)
    return torch.cat([-skew(X_cam), eye], dim=-1)


def unproject(uv: torch.Tensor, depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Camera-frame points (..., N, 3) at pixels uv (..., N, 2) with z-depths depth (..., N) and
    K (..., 3, 3); inverse of project."""
    homogeneous = torch.cat([uv, torch.ones_like(uv[..., :1])], dim=-1)
    return (homogeneous @ torch.linalg.inv(K).transpose(-1, -2)) * depth.unsqueeze(-1)


def depth_map_to_world(depth: np.ndarray, K: np.ndarray, T_cw: np.ndarray) -> np.ndarray:
    """World points (H, W, 3) of a z-depth map (H, W) at its pixel centres, seen by a camera with
    intrinsics K (3, 3) at world-to-camera pose T_cw (4, 4)."""
    h, w = depth.shape
    y, x = np.mgrid[0:h, 0:w] + 0.5
    uv = torch.from_numpy(np.stack([x, y], -1).reshape(-1, 2))
    X_cam = unproject(uv, torch.from_numpy(np.asarray(depth, np.float64).reshape(-1)), torch.from_numpy(K)).numpy()
    T_wc = invert_pose(T_cw)
    return (X_cam @ T_wc[:3, :3].T + T_wc[:3, 3]).reshape(h, w, 3)
