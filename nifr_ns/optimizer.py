"""The Levenberg-Marquardt pose solver: feature-metric (or photometric) alignment on SE(3).

Owns one solve at one pyramid level: given 3D points with target features (rendered from the
field) and the query's feature map, it moves the query camera until the map, sampled at the
points' projections, matches the targets. What the features are (encoder features, RGB for the
photometric baseline) does not matter here; rendering, coarse-to-fine and re-rendering are the
driver's (``refinement.py``).

The problem, for points X_i (N, 3), targets f_i (N, D) and per-point weights w_i:

    r_i(T) = F(pi(T X_i)) - f_i,    cost(T) = sum_i w_i rho(|r_i|^2) / sum_i w_i,

with F the bilinearly interpolated feature map. A point out of view at T (behind the camera, or
outside the map) is charged as a random match, rho(s_out) with s_out the mean squared distance
between a target and a feature of the map (their variances plus the distance of their means,
which stays large when the two sides disagree as a whole): the cost is then one function of the
pose over a fixed set of points, so costs at any two poses compare fairly; and a point that
leaves the view costs about what a mismatch costs, so the solver gains little by pushing badly
matched points out of view and pays little for a point that truly leaves it.

Also one step of the render-and-compare cost (:func:`render_step`): the same residuals, with the
camera's motion moving the rendering instead of the query, for the driver to re-render after.

Poses are updated on the left, T <- exp(xi) T, with xi = (omega, v) as in ``geometry.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple, Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from nifr_ns.geometry import point_pose_jacobian, project, project_jacobian, se3_exp, transform_points

# geometry.project is exact only for depths beyond this.
_MIN_DEPTH = 1e-6


@dataclass
class LMConfig:
    """Robust cost and Levenberg-Marquardt schedule."""

    max_iterations: int = 30
    """Most steps (accepted + rejected) per call."""
    robust: Literal["cauchy", "huber", "l2"] = "cauchy"
    robust_scale: float = 0.1
    """c: residual norm where the robust loss departs from l2; cauchy rho(s) = c^2 log(1 + s / c^2)
    for squared residual norms s. Also the inlier threshold (|r| < c)."""
    lambda_init: float = 1e-2
    """Marquardt damping: the step solves (H + lambda diag(H)) delta = -g."""
    lambda_factor: float = 10.0
    """lambda is divided by this after an accepted step and multiplied after a rejected one."""
    lambda_max: float = 1e6
    """Give up (not converged) when lambda exceeds this: no step decreases the cost."""
    step_tolerance: float = 1e-6
    """Converged when the update's norm (radians and scene units together) is below this."""
    cost_tolerance: float = 1e-7
    """Converged when an accepted step decreases the cost by less than this fraction."""


@dataclass
class LMResult:
    """Outcome of one solve."""

    T_cw: Tensor
    """(4, 4) refined world-to-camera pose, OpenCV axes, in the input's dtype and device."""
    initial_cost: float
    """Cost at the initial pose (see the module docstring)."""
    final_cost: float
    """Cost at the final pose; never above initial_cost."""
    iterations: int
    """Steps taken, accepted and rejected."""
    inlier_ratio: float
    """Share of the points in view at the final pose whose residual norm is below robust_scale."""
    converged: bool
    """Stopped by step_tolerance or cost_tolerance (not by max_iterations or lambda_max)."""
    num_valid: int
    """Points in view at the final pose."""
    cost_history: list[float] = field(default_factory=list)
    """Cost at the current pose initially and after each step; a rejected step repeats the
    previous value."""


class FeatureMap(NamedTuple):
    """A (D, h, w) map laid out for bilinear sampling at many points: its cells as rows (h * w, D),
    so that a point's four neighbours are four contiguous reads. Gathering them across the D planes
    of the (D, h, w) layout took twice as long (35 x 120 x 160, 9600 points, 2 CPU cores)."""

    rows: Tensor
    height: int
    width: int

    @classmethod
    def of(cls, fmap: Tensor | FeatureMap, dtype: torch.dtype = torch.float64) -> FeatureMap:
        """``fmap`` (D, h, w) as rows of ``dtype``; a FeatureMap as it is."""
        if isinstance(fmap, FeatureMap):
            return fmap
        d, h, w = fmap.shape
        return cls(fmap.reshape(d, h * w).T.to(dtype).contiguous(), h, w)


def sample_with_gradient(
    fmap: Tensor | FeatureMap, uv: Tensor, image_hw: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor]:
    """Bilinear samples of a feature map at full-resolution pixel coordinates, with their gradient.

    fmap (D, h, w) may be coarser than the image (H, W) = image_hw; it covers the whole image, so
    the same point is at level coordinates uv * (w / W, h / H). Pixel centres sit at half-integers,
    matching ``grid_sample(align_corners=False)`` at x_norm = 2u/W - 1, y_norm = 2v/H - 1.

    Returns (values (N, D), d values / d uv (N, D, 2) in full-resolution pixel units, valid (N,)),
    in the promoted dtype of fmap and uv. Valid points have all four neighbours inside the map;
    the others get finite values and gradients (clamped to the border cell) that mean nothing.
    Sampling one map many times, pass it as a :class:`FeatureMap` to lay it out once.
    """
    if not isinstance(fmap, FeatureMap):
        fmap = FeatureMap.of(fmap, torch.promote_types(fmap.dtype, uv.dtype))
    h, w = fmap.height, fmap.width
    H, W = image_hw
    scale_x, scale_y = w / W, h / H
    # Continuous indices into the level, where the centre of element (i, j) is at (x, y) = (j, i).
    x = uv[:, 0] * scale_x - 0.5
    y = uv[:, 1] * scale_y - 0.5
    valid = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    x0 = x.floor().clamp(0, w - 2)
    y0 = y.floor().clamp(0, h - 2)
    fx = (x - x0).clamp(0, 1)[:, None]
    fy = (y - y0).clamp(0, 1)[:, None]

    index = (y0 * w + x0).long()
    f00, f01, f10, f11 = fmap.rows[torch.stack([index, index + 1, index + w, index + w + 1])]  # (4, N, D)
    top = f00 + fx * (f01 - f00)
    bottom = f10 + fx * (f11 - f10)
    values = top + fy * (bottom - top)
    d_dx = (f01 - f00) + fy * ((f11 - f10) - (f01 - f00))
    grad = torch.stack([d_dx * scale_x, (bottom - top) * scale_y], dim=-1)
    return values, grad, valid


def residual_jacobian(
    T_cw: Tensor, points: Tensor, targets: Tensor, fmap: Tensor | FeatureMap, K: Tensor, image_hw: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor]:
    """Residuals r (N, D) at pose T_cw (4, 4), their Jacobian dr/dxi (N, D, 6) for T <- exp(xi) T_cw
    at xi = 0, and which points are in view (N,).

    points (N, 3) world, targets (N, D), fmap (D, h, w), K (3, 3) of the full-resolution image.
    The chain rule: dF/duv (D, 2) @ duv/dX_cam (2, 3) @ dX_cam/dxi (3, 6).
    """
    r, grad, uv_jacobian, seen = residual_factors(T_cw, points, targets, fmap, K, image_hw)
    return r, grad @ uv_jacobian, seen


def residual_factors(
    T_cw: Tensor, points: Tensor, targets: Tensor, fmap: Tensor | FeatureMap, K: Tensor, image_hw: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`residual_jacobian` with the Jacobian in its two factors: residuals (N, D), dF/duv
    (N, D, 2), duv/dxi (N, 2, 6) and which points are in view (N,)."""
    X_cam, values, grad, seen = _project_and_sample(T_cw, points, fmap, K, image_hw)
    return values - targets, grad, project_jacobian(X_cam, K) @ point_pose_jacobian(X_cam), seen


def _project_and_sample(
    T_cw: Tensor, points: Tensor, fmap: Tensor | FeatureMap, K: Tensor, image_hw: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """points (N, 3) seen from poses T_cw (..., 4, 4): camera-frame points (..., N, 3), the map's
    values (..., N, D) and gradients (..., N, D, 2) at their projections, and which are in view (..., N)."""
    X_cam = transform_points(T_cw, points)
    uv, z = project(X_cam, K)
    values, grad, inside = sample_with_gradient(fmap, uv.reshape(-1, 2), image_hw)
    batch = uv.shape[:-1]
    return X_cam, values.reshape(*batch, -1), grad.reshape(*batch, -1, 2), inside.reshape(batch) & (z > _MIN_DEPTH)


def robust_loss(s: Tensor, config: LMConfig) -> tuple[Tensor, Tensor]:
    """rho(s) and rho'(s) (the IRLS weight) for squared residual norms s (N,)."""
    c = config.robust_scale
    if config.robust == "cauchy":
        return c**2 * torch.log1p(s / c**2), 1 / (1 + s / c**2)
    if config.robust == "huber":
        # rho = 2 c |r| - c^2 beyond |r| = c: continuous, with continuous slope, and linear growth.
        norm = s.clamp_min(c**2).sqrt()
        quadratic = s <= c**2
        return torch.where(quadratic, s, 2 * c * norm - c**2), torch.where(quadratic, 1.0, c / norm)
    return s, torch.ones_like(s)


def _out_of_view_cost(targets: Tensor, fmap: FeatureMap, config: LMConfig, present: Tensor | None = None) -> Tensor:
    """The robust cost of a random match, charged for a point out of view: the mean squared
    distance between a target and a feature of the map. targets (..., N, D), of which those where
    ``present`` (..., N) (default: all) count -> (...,)."""
    targets = targets.to(torch.float64)
    if present is None:
        present = torch.ones(targets.shape[:-1], dtype=torch.bool, device=targets.device)
    share = present[..., None] / present.sum(-1).clamp_min(1)[..., None, None]
    mean = (share * targets).sum(-2)
    variance = (share * (targets - mean[..., None, :]).square()).sum((-2, -1))
    map_features = fmap.rows.to(torch.float64)
    s_out = (
        variance + map_features.var(0, unbiased=False).sum() + (mean - map_features.mean(0)).square().sum(-1)
    )
    return robust_loss(s_out, config)[0]


def point_costs(
    T_cw: Tensor, points: Tensor, targets: Tensor, fmap: Tensor, K: Tensor, image_hw: tuple[int, int], config: LMConfig
) -> tuple[Tensor, Tensor]:
    """Each point's share of the solver's cost at each of the poses T_cw (..., 4, 4): its robust cost,
    or a random match's when out of view (..., N), and whether it is in view (..., N); the other inputs
    as for :func:`lm_refine`. Their mean is :func:`lm_refine`'s cost without weights, without its Jacobians."""
    fmap = FeatureMap.of(fmap)
    _, values, _, seen = _project_and_sample(T_cw.to(points), points, fmap, K.to(points), image_hw)
    rho = robust_loss((values - targets).square().sum(-1), config)[0]
    return torch.where(seen, rho, _out_of_view_cost(targets, fmap, config).to(rho)), seen


class _State(NamedTuple):
    """B problems linearised each at one pose."""

    T: Tensor  # (B, 4, 4)
    cost: Tensor  # (B,)
    s: Tensor  # (B, N) squared residual norms
    valid: Tensor  # (B, N) in view (padding never is)
    rho: Tensor  # (B, N) weighted robust cost of each point (meaningful where valid)
    H: Tensor  # (B, 6, 6) Gauss-Newton Hessian, IRLS-weighted
    g: Tensor  # (B, 6) gradient

    def put(self, rows: Tensor, other: _State) -> _State:
        """This state, with its problems ``rows`` (R,) replaced by the R of ``other``."""
        return _State(*(a.index_copy(0, rows, b) for a, b in zip(self, other)))

    def where(self, mask: Tensor, other: _State) -> _State:
        """This state, with the problems where mask (B,) taken from ``other``."""
        return _State(*(torch.where(mask.view(-1, *[1] * (a.dim() - 1)), b, a) for a, b in zip(self, other)))


@dataclass(frozen=True)
class _Problem:
    """B problems on one map, their points padded to one length N, in float64."""

    points: Tensor  # (B, N, 3)
    targets: Tensor  # (B, N, D)
    present: Tensor  # (B, N) which points are not padding
    fmap: FeatureMap
    K: Tensor  # (3, 3)
    image_hw: tuple[int, int]
    weights: Tensor  # (B, N), 0 for padding
    config: LMConfig
    rho_out: Tensor  # (B,) cost of a point out of view

    @classmethod
    def build(
        cls,
        points: Sequence[Tensor],
        targets: Sequence[Tensor],
        fmap: Tensor | FeatureMap,
        K: Tensor,
        image_hw: tuple[int, int],
        weights: Sequence[Tensor] | None,
        config: LMConfig,
    ) -> _Problem:
        f64 = torch.float64
        present = pad_sequence([torch.ones(len(p), dtype=torch.bool, device=p.device) for p in points], True)
        if weights is None:
            weights = [torch.ones(len(p), dtype=f64, device=p.device) for p in points]
        padded_weights = pad_sequence([w.to(f64) for w in weights], True)
        targets = pad_sequence([t.to(f64) for t in targets], True)
        fmap = FeatureMap.of(fmap)
        rho_out = _out_of_view_cost(targets, fmap, config, present)
        points = pad_sequence([p.to(f64) for p in points], True)
        return cls(points, targets, present, fmap, K.to(f64), tuple(image_hw), padded_weights, config, rho_out)

    def take(self, rows: Tensor) -> _Problem:
        """The problems ``rows`` (R,) of this batch."""
        picked = {name: getattr(self, name)[rows] for name in ("points", "targets", "present", "weights", "rho_out")}
        return replace(self, **picked)

    def evaluate(self, T: Tensor) -> _State:
        r, G, A, seen = residual_factors(T, self.points, self.targets, self.fmap, self.K, self.image_hw)
        valid = seen & self.present
        s = (r * r).sum(-1)
        rho, rho_prime = robust_loss(s, self.config)
        total = self.weights.sum(-1)
        charged = (self.weights * torch.where(valid, rho, self.rho_out[:, None])).sum(-1)
        cost = torch.where(total > 0, charged / total.clamp_min(1e-300), math.inf)
        H, g = _normal_equations(r, G, A, torch.where(valid, self.weights * rho_prime, 0.0))
        return _State(T, cost, s, valid, self.weights * rho, H, g)


def _normal_equations(r: Tensor, G: Tensor, A: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """H = sum_i w_i J_i^T J_i (..., 6, 6) and g = sum_i w_i J_i^T r_i (..., 6) for J_i = G_i A_i, from
    the residuals r (..., N, D), dF/duv G (..., N, D, 2), duv/dxi A (..., N, 2, 6) and weights w (..., N).

    J_i^T J_i = A_i^T (G_i^T G_i) A_i and J_i^T r_i = A_i^T G_i^T r_i: the (N, D, 6) Jacobian is
    never formed, and the work per point falls from D x 36 to D x 5."""
    gx, gy = G[..., 0], G[..., 1]
    gxy = (gx * gy).sum(-1)
    GtG = torch.stack([(gx * gx).sum(-1), gxy, gxy, (gy * gy).sum(-1)], -1)  # (..., N, 4), G^T G row-major
    Gtr = torch.stack([(gx * r).sum(-1), (gy * r).sum(-1)], -1)  # (..., N, 2)
    weighted = (weights[..., None, None] * A).flatten(-3, -2).transpose(-1, -2)  # (..., 6, N * 2)
    GtGA = (GtG.unflatten(-1, (2, 2)) @ A).flatten(-3, -2)
    return weighted @ GtGA, (weighted @ Gtr.flatten(-2)[..., None])[..., 0]


def image_gradient(image: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """Central differences of an image (C, h, w) covering a full-resolution image (H, W) = image_hw,
    one-sided at its border, in full-resolution pixel units: (h, w, C, 2), d/du then d/dv."""
    _, h, w = image.shape
    H, W = image_hw
    d_dv, d_du = torch.gradient(image, dim=(1, 2))
    return torch.stack([d_du * (w / W), d_dv * (h / H)], dim=-1).permute(1, 2, 0, 3)


def render_step(
    T_cw: Tensor,
    points: Tensor,
    targets: Tensor,
    target_gradients: Tensor,
    fmap: Tensor,
    K: Tensor,
    image_hw: tuple[int, int],
    config: LMConfig,
    damping: float = 1e-3,
) -> Tensor | None:
    """A damped Gauss-Newton step xi (6,) (T <- exp(xi) T_cw) on the render-and-compare cost, or None.

    points (N, 3) and targets (N, D) are lifted from a rendering at T_cw itself, target_gradients
    (N, D, 2) are that rendering's image gradient at their pixels (:func:`image_gradient`); the
    other inputs as for :func:`lm_refine`. The residual is the same, F(u) - R_T(u) at the rendered
    pixels u, but here the camera's motion moves the rendering, R_T(u) ~ R(u - duv), not the
    query: dr/dxi = dR/duv duv/dxi. :func:`lm_refine`'s Jacobian, the query's gradient, leads to
    where its points, held fixed, match best; this one to where re-rendered views match best,
    which differ when the renders are not a rigid warp of one another (a learned field's are not).
    """
    f64 = torch.float64
    fmap = FeatureMap.of(fmap)
    r, _, A, seen = residual_factors(T_cw.to(f64), points.to(f64), targets.to(f64), fmap, K.to(f64), image_hw)
    weights = torch.where(seen, robust_loss((r * r).sum(-1), config)[1], 0.0)
    if not bool(seen.any()):
        return None
    H, g = _normal_equations(r, target_gradients.to(f64), A, weights)
    delta, usable = _damped_step(H, g, damping)
    return delta if bool(usable) else None


def _damped_step(H: Tensor, g: Tensor, lam: Tensor | float) -> tuple[Tensor, Tensor]:
    """The LM updates delta (..., 6) solving (H + lam diag(H)) delta = -g for H (..., 6, 6), g (..., 6) and
    lam (...,), and whether each is usable (...,): not singular, finite."""
    diagonal = H.diagonal(dim1=-2, dim2=-1)
    # A floor keeps directions the points do not constrain (diag(H) ~ 0) damped too.
    floor = 1e-9 * diagonal.amax(-1, keepdim=True)
    damping = torch.as_tensor(lam, dtype=H.dtype, device=H.device)[..., None] * torch.maximum(diagonal, floor)
    delta, info = torch.linalg.solve_ex(H + torch.diag_embed(damping), -g)
    return delta, (info == 0) & torch.isfinite(delta).all(-1)


def _relative_decrease(state: _State, trial: _State) -> Tensor:
    """How much better each trial pose fits the points both poses see (share of their cost), (B,);
    -inf where they see none in common.

    Judged on the common points: a step that moves a few border points out of view would
    otherwise be rejected for the jump to their out-of-view charge, however much better it
    fits the rest, and the solver would stall near any pose that sees points at the border.
    """
    common = state.valid & trial.valid
    before = torch.where(common, state.rho, 0.0).sum(-1)
    after = torch.where(common, trial.rho, 0.0).sum(-1)
    return torch.where(common.any(-1), (before - after) / before.clamp_min(1e-300), -math.inf)


def lm_refine(
    T_cw_init: Tensor,
    points: Tensor,
    targets: Tensor,
    fmap: Tensor | FeatureMap,
    K: Tensor,
    image_hw: tuple[int, int],
    config: LMConfig | None = None,
    weights: Tensor | None = None,
) -> LMResult:
    """Refine T_cw_init (4, 4) so that fmap (D, h, w) sampled at the projections of points (N, 3)
    matches targets (N, D); K (3, 3) and image_hw (H, W) are the full-resolution camera's;
    weights (N,) >= 0 scale each point's cost (e.g. rendered opacity). The inputs may be float32
    or float64 (all of one dtype and device except fmap); the solve runs in float64.
    """
    batch_weights = None if weights is None else [weights]
    return lm_refine_batch([T_cw_init], [points], [targets], fmap, K, image_hw, config, batch_weights)[0]


def lm_refine_batch(
    T_cw_init: Sequence[Tensor],
    points: Sequence[Tensor],
    targets: Sequence[Tensor],
    fmap: Tensor | FeatureMap,
    K: Tensor,
    image_hw: tuple[int, int],
    config: LMConfig | None = None,
    weights: Sequence[Tensor] | None = None,
) -> list[LMResult]:
    """:func:`lm_refine` for B problems on one map at once (the b-th from T_cw_init[b] with points[b],
    targets[b] and weights[b], their N_b of their own): each takes the steps, damping and stop it
    would alone, while the tensor work of a step is shared, so that B solves on small grids, whose
    time is mostly per operation rather than per point, cost little more than one. Problems that have
    stopped leave the evaluation: with five starts, some run all max_iterations while others stop
    within ten (the poses are those of separate solves to rounding)."""
    config = config or LMConfig()
    problem = _Problem.build(points, targets, fmap, K, image_hw, weights, config)
    start = state = problem.evaluate(torch.stack([T.to(torch.float64) for T in T_cw_init]))
    batch = len(T_cw_init)
    history = [[cost] for cost in start.cost.tolist()]
    lam = torch.full((batch,), config.lambda_init, dtype=torch.float64, device=start.T.device)
    iterations = torch.zeros(batch, dtype=torch.long, device=start.T.device)
    converged = torch.zeros_like(start.valid[:, 0])
    running = start.valid.any(-1) & (config.max_iterations > 0)
    moving_rows, moving_problem = torch.arange(batch, device=lam.device), problem

    while bool(running.any()):
        delta, usable = _damped_step(state.H, state.g, lam)
        tiny = running & usable & (delta.norm(dim=-1) < config.step_tolerance)
        converged |= tiny
        running &= ~tiny
        iterations += running
        moving = running & usable
        rows = moving.nonzero()[:, 0]
        if not torch.equal(rows, moving_rows):  # problems that stopped leave the evaluation
            moving_rows, moving_problem = rows, problem.take(rows)
        trial = state.put(rows, moving_problem.evaluate(se3_exp(delta[rows]) @ state.T[rows])) if len(rows) else state
        decrease = torch.where(moving, _relative_decrease(state, trial), -math.inf)
        accepted, rejected = decrease > 0, running & ~(decrease > 0)
        state = state.where(accepted, trial)
        lam = torch.where(accepted, lam / config.lambda_factor, torch.where(rejected, lam * config.lambda_factor, lam))
        for b in running.nonzero()[:, 0].tolist():
            history[b].append(float(state.cost[b]))
        small_decrease = accepted & (decrease < config.cost_tolerance)
        converged |= small_decrease
        gave_up = rejected & (lam > config.lambda_max)
        running &= ~small_decrease & ~gave_up & (iterations < config.max_iterations) & state.valid.any(-1)

    num_valid = state.valid.sum(-1).tolist()
    inliers = (state.valid & (state.s < config.robust_scale**2)).sum(-1).tolist()
    return [
        LMResult(
            T_cw=state.T[b].to(T_cw_init[b]),
            initial_cost=float(start.cost[b]),
            final_cost=float(state.cost[b]),
            iterations=int(iterations[b]),
            inlier_ratio=inliers[b] / num_valid[b] if num_valid[b] else 0.0,
            converged=bool(converged[b]),
            num_valid=num_valid[b],
            cost_history=history[b],
        )
        for b in range(batch)
    ]
