"""Tests of nifr_ns.optimizer: bilinear sampling with gradients, the residual Jacobian, and the
Levenberg-Marquardt solver on analytic problems with a known pose."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian

from nifr_ns import geometry as g
from nifr_ns.optimizer import (
    FeatureMap,
    LMConfig,
    image_gradient,
    lm_refine,
    lm_refine_batch,
    point_costs,
    render_step,
    residual_jacobian,
    robust_loss,
    sample_with_gradient,
)

H, W = 120, 160
K = torch.tensor([[150.0, 0.0, W / 2], [0.0, 150.0, H / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
T_GT = torch.from_numpy(g.look_at(np.array([0.5, -0.3, -3.0]), np.zeros(3), np.array([0.0, -1.0, 0.0])))


def grid_sample(fmap: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Reference: torch's bilinear sampling (D, h, w) at full-resolution uv (N, 2) -> (N, D)."""
    grid = torch.stack([2 * uv[:, 0] / W - 1, 2 * uv[:, 1] / H - 1], dim=-1)
    return F.grid_sample(fmap[None], grid[None, None], align_corners=False)[0, :, 0].T


def waves(u: torch.Tensor, v: torch.Tensor, channels: int = 8) -> torch.Tensor:
    """(channels, *u.shape) plane waves at full-resolution pixel positions, wavelengths from W down
    to W / 2.5: smooth, with a wide basin, and they pin down every image direction."""
    out = []
    for k in range(channels // 2):
        direction = 0.6 * k
        phase = 2 * math.pi * (1 + 0.5 * k) / W * (math.cos(direction) * u + math.sin(direction) * v)
        out += [torch.sin(phase), torch.cos(phase)]
    return torch.stack(out)


def pixel_centres(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, v), each (h, w): full-resolution positions of the centres of a level's pixels."""
    v, u = torch.meshgrid(
        (torch.arange(h, dtype=torch.float64) + 0.5) * H / h,
        (torch.arange(w, dtype=torch.float64) + 0.5) * W / w,
        indexing="ij",
    )
    return u, v


def wave_field(h: int, w: int, channels: int = 8) -> torch.Tensor:
    """(channels, h, w) :func:`waves` sampled at the level's pixel centres."""
    return waves(*pixel_centres(h, w), channels)


def scene(rng: np.random.Generator, fmap: torch.Tensor, n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """World points (n, 3) at depths 2..4 seen well inside the image at T_GT, and their targets
    (n, D): the feature map at their true projections, so the true pose has zero residual."""
    uv = torch.from_numpy(rng.uniform([0.15 * W, 0.15 * H], [0.85 * W, 0.85 * H], size=(n, 2)))
    X_cam = g.unproject(uv, torch.from_numpy(rng.uniform(2.0, 4.0, n)), K)
    points = g.transform_points(torch.linalg.inv(T_GT), X_cam)
    return points, sample_with_gradient(fmap, uv, (H, W))[0]


def perturbed(rng: np.random.Generator, rot_deg: float = 5.0, trans: float = 0.3) -> torch.Tensor:
    return torch.from_numpy(g.perturb_pose(T_GT.numpy(), rot_deg, trans, rng))


def errors(T_cw: torch.Tensor) -> tuple[float, float]:
    trans_err, rot_err = g.pose_errors(T_cw.double().numpy(), T_GT.numpy())
    return float(trans_err), float(rot_err)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# --- sampling and the Jacobian -----------------------------------------------------------


@pytest.mark.parametrize("level_hw", [(H, W), (H // 4, W // 4), (37, 53)])
def test_sample_gradient_matches_grid_sample_autograd_and_finite_differences(rng, level_hw):
    fmap = torch.from_numpy(rng.normal(size=(5, *level_hw)))
    uv = torch.from_numpy(rng.uniform([4.0, 4.0], [W - 4.0, H - 4.0], size=(40, 2)))
    values, grad, valid = sample_with_gradient(fmap, uv, (H, W))
    assert valid.all()
    np.testing.assert_allclose(values.numpy(), grid_sample(fmap, uv).numpy(), atol=1e-12)
    laid_out = sample_with_gradient(FeatureMap.of(fmap), uv, (H, W))  # the solver's layout, the same samples
    assert all(torch.equal(a, b) for a, b in zip(laid_out, (values, grad, valid)))

    # grid_sample's autograd: each point's features depend only on its own uv.
    full = jacobian(lambda x: grid_sample(fmap, x), uv)  # (N, D, N, 2)
    expected = full[torch.arange(len(uv)), :, torch.arange(len(uv))]
    np.testing.assert_allclose(grad.numpy(), expected.numpy(), atol=1e-10)

    eps = 1e-6
    for axis in range(2):
        step = torch.zeros(2, dtype=torch.float64)
        step[axis] = eps
        ahead, behind = (sample_with_gradient(fmap, uv + sign * step, (H, W))[0] for sign in (1, -1))
        central = (ahead - behind) / (2 * eps)
        np.testing.assert_allclose(grad[..., axis].numpy(), central.numpy(), atol=1e-6)


def test_sample_is_valid_exactly_where_all_four_neighbours_exist():
    fmap = torch.arange(4 * 6, dtype=torch.float64).reshape(1, 4, 6)
    # A 6x4 level of a 12x8 image: level pixel centres at full-resolution u = 1, 3, ..., 11.
    uv = torch.tensor([[1, 1], [11, 7], [0.99, 4], [11.01, 4], [6, 0.99], [6, 7.01]], dtype=torch.float64)
    values, _, valid = sample_with_gradient(fmap, uv, (8, 12))
    assert valid.tolist() == [True, True, False, False, False, False]
    assert values[:2, 0].tolist() == [fmap[0, 0, 0].item(), fmap[0, -1, -1].item()]


def test_residual_jacobian_matches_autograd_through_exp_projection_and_grid_sample(rng):
    fmap = torch.from_numpy(rng.normal(size=(6, H // 2, W // 2)))
    points, _ = scene(rng, fmap, n=25)
    targets = torch.from_numpy(rng.normal(size=(25, 6)))
    T = perturbed(rng, 2.0, 0.1)

    def residual(xi: torch.Tensor) -> torch.Tensor:
        uv, _ = g.project(g.transform_points(g.se3_exp(xi) @ T, points), K)
        return grid_sample(fmap, uv) - targets

    r, J, valid = residual_jacobian(T, points, targets, fmap, K, (H, W))
    assert valid.all()
    np.testing.assert_allclose(r.numpy(), residual(torch.zeros(6, dtype=torch.float64)).numpy(), atol=1e-12)
    expected = jacobian(residual, torch.zeros(6, dtype=torch.float64))  # (N, D, 6)
    np.testing.assert_allclose(J.numpy(), expected.numpy(), rtol=1e-8, atol=1e-8)


def test_the_solvers_normal_equations_equal_those_of_the_full_jacobian(rng):
    """The solver forms J^T W J and J^T W r from the Jacobian's two factors, never J itself."""
    from nifr_ns.optimizer import _Problem

    fmap = torch.from_numpy(rng.normal(size=(6, H // 2, W // 2)))
    points, _ = scene(rng, fmap, n=25)
    targets = torch.from_numpy(rng.normal(size=(25, 6)))
    weights = torch.from_numpy(rng.uniform(0.5, 1.5, size=25))
    T = perturbed(rng, 2.0, 0.1)
    config = LMConfig(robust_scale=0.5)
    state = _Problem.build([points], [targets], fmap, K, (H, W), [weights], config).evaluate(T[None])
    r, J, valid = residual_jacobian(T, points, targets, fmap, K, (H, W))
    w = torch.where(valid, weights * robust_loss((r * r).sum(-1), config)[1], 0.0)
    torch.testing.assert_close(state.H[0], torch.einsum("n,ndi,ndj->ij", w, J, J))
    torch.testing.assert_close(state.g[0], torch.einsum("n,ndi,nd->i", w, J, r))


def test_points_behind_the_camera_are_out_of_view(rng):
    fmap = wave_field(H, W)
    points, targets = scene(rng, fmap, n=10)
    # The same camera turned half a turn about its y axis sees every point behind it.
    turned = torch.diag(torch.tensor([-1.0, 1.0, -1.0, 1.0], dtype=torch.float64)) @ T_GT
    assert not residual_jacobian(turned, points, targets, fmap, K, (H, W))[2].any()
    # A point behind the camera placed so that project(), which clamps depths to a tiny positive
    # value, puts it at pixel (50, 40), inside the image.
    z = -2.0
    behind = torch.tensor([[(50e-6 - K[0, 2] * z) / K[0, 0], (40e-6 - K[1, 2] * z) / K[1, 1], z]], dtype=torch.float64)
    uv, _ = g.project(behind, K)
    np.testing.assert_allclose(uv.numpy(), [[50.0, 40.0]], atol=1e-6)
    assert not residual_jacobian(torch.eye(4, dtype=torch.float64), behind, targets[:1], fmap, K, (H, W))[2].any()


# --- the solver ----------------------------------------------------------------------------


@pytest.mark.parametrize("level", [1, 4])
@pytest.mark.parametrize("robust", ["cauchy", "huber", "l2"])
def test_recovers_a_known_pose_from_a_large_perturbation(rng, level, robust):
    fmap = wave_field(H // level, W // level)
    points, targets = scene(rng, fmap)
    T_init = perturbed(rng)  # 5 degrees and 10% of the mean depth
    result = lm_refine(T_init, points, targets, fmap, K, (H, W), LMConfig(robust=robust))
    trans_err, rot_err = errors(result.T_cw)
    assert trans_err < 1e-4 and rot_err < 1e-3
    assert result.converged and result.iterations < 30
    assert result.final_cost < 1e-3 * result.initial_cost
    assert result.num_valid == len(points) and result.inlier_ratio == 1.0
    assert result.T_cw.dtype == T_init.dtype and result.T_cw.shape == (4, 4)


def test_float32_inputs_give_a_float32_pose_just_as_close(rng):
    fmap = wave_field(H, W)
    points, targets = scene(rng, fmap)
    T_init = perturbed(rng).float()
    result = lm_refine(T_init, points.float(), targets.float(), fmap.float(), K.float(), (H, W))
    assert result.T_cw.dtype == torch.float32
    trans_err, rot_err = errors(result.T_cw)
    assert trans_err < 1e-4 and rot_err < 1e-3


def test_cauchy_survives_outliers_that_bias_least_squares(rng):
    fmap = wave_field(H, W)
    points, targets = scene(rng, fmap, n=400)
    outliers = torch.from_numpy(rng.normal(size=(120, fmap.shape[0])))
    targets[:120] = outliers / outliers.norm(dim=-1, keepdim=True)
    T_init = perturbed(rng)

    robust = lm_refine(T_init, points, targets, fmap, K, (H, W), LMConfig(robust="cauchy"))
    plain = lm_refine(T_init, points, targets, fmap, K, (H, W), LMConfig(robust="l2"))
    robust_errors, plain_errors = errors(robust.T_cw), errors(plain.T_cw)
    assert robust_errors[0] < 1e-3 and robust_errors[1] < 1e-2
    assert plain_errors[0] > 10 * robust_errors[0] and plain_errors[1] > 10 * robust_errors[1]
    assert robust.converged
    assert robust.inlier_ratio == pytest.approx(0.7, abs=0.02)

    # Zero weight on the outliers makes least squares exact again.
    weights = torch.ones(len(points), dtype=torch.float64)
    weights[:120] = 0
    weighted = lm_refine(T_init, points, targets, fmap, K, (H, W), LMConfig(robust="l2"), weights=weights)
    trans_err, rot_err = errors(weighted.T_cw)
    assert trans_err < 1e-4 and rot_err < 1e-3


def test_overlong_steps_are_rejected_and_the_cost_never_increases(rng):
    # Features that steepen towards the targets: the Gauss-Newton model underestimates how fast the
    # residual falls and overshoots, so undamped steps raise the cost and must be rejected.
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    fmap = torch.stack([torch.exp((u - W) / 5), torch.exp((v - H) / 5)]).double()
    points, targets = scene(rng, fmap, n=50)
    T_init = T_GT.clone()
    T_init[:2, 3] -= 0.1  # points appear up and left of their targets, on the flat side
    result = lm_refine(T_init, points, targets, fmap, K, (H, W), LMConfig(lambda_init=1e-8, max_iterations=50))

    history = result.cost_history
    assert len(history) == result.iterations + 1
    steps = list(zip(history, history[1:]))
    assert any(after == before for before, after in steps), "expected some rejected steps"
    assert all(after <= before for before, after in steps)
    assert result.final_cost == history[-1] < 1e-6 * history[0]
    assert result.converged
    trans_err, rot_err = errors(result.T_cw)
    assert trans_err < 1e-4 and rot_err < 1e-3


def test_started_at_the_optimum_the_pose_stays(rng):
    fmap = wave_field(H, W)
    points, targets = scene(rng, fmap)
    targets = targets + 0.01 * torch.from_numpy(rng.normal(size=targets.shape))  # a nonzero optimum
    optimum = lm_refine(perturbed(rng, 1.0, 0.05), points, targets, fmap, K, (H, W)).T_cw

    again = lm_refine(optimum, points, targets, fmap, K, (H, W))
    assert again.converged
    assert again.final_cost <= again.initial_cost
    trans_err, rot_err = g.pose_errors(again.T_cw.numpy(), optimum.numpy())
    assert trans_err < 1e-9 and rot_err < 1e-7


def test_with_no_point_in_view_the_pose_is_returned_unchanged(rng):
    fmap = wave_field(H, W)
    points, targets = scene(rng, fmap, n=20)
    looking_away = torch.diag(torch.tensor([-1.0, 1.0, -1.0, 1.0], dtype=torch.float64)) @ T_GT
    result = lm_refine(looking_away, points, targets, fmap, K, (H, W))
    assert torch.equal(result.T_cw, looking_away)
    assert result.num_valid == 0 and result.iterations == 0 and not result.converged


def test_a_batch_of_problems_solves_each_as_it_would_alone(rng):
    # Different sizes (padding), weights, a far start that needs many more steps than the others,
    # and one that sees nothing: each must take exactly its own steps, not the batch's.
    fmap = wave_field(H // 4, W // 4)
    sizes = [300, 40, 120, 20]
    problems = [scene(rng, fmap, n) for n in sizes]
    looking_away = torch.diag(torch.tensor([-1.0, 1.0, -1.0, 1.0], dtype=torch.float64)) @ T_GT
    starts = [perturbed(rng), perturbed(rng, 0.5, 0.02), perturbed(rng, 8.0, 0.5), looking_away]
    weights = [torch.from_numpy(rng.uniform(0.2, 1.0, n)) for n in sizes]
    points, targets = zip(*problems)

    together = lm_refine_batch(starts, points, targets, fmap, K, (H, W), LMConfig(), weights)
    for b, result in enumerate(together):
        alone = lm_refine(starts[b], points[b], targets[b], fmap, K, (H, W), LMConfig(), weights[b])
        assert result.iterations == alone.iterations and result.converged == alone.converged
        assert result.num_valid == alone.num_valid and result.inlier_ratio == alone.inlier_ratio
        assert result.cost_history == pytest.approx(alone.cost_history, rel=1e-9, abs=1e-15)
        assert torch.allclose(result.T_cw, alone.T_cw, atol=1e-10)
    assert len({result.iterations for result in together}) > 2, "expected the problems to stop at different steps"
    assert torch.equal(together[3].T_cw, looking_away) and together[3].iterations == 0


def cost_at(T_cw, points, targets, fmap, K, image_hw, config):
    """The cost lm_refine minimises, at T_cw: its initial cost with no iteration."""
    return lm_refine(T_cw, points, targets, fmap, K, image_hw, replace(config, max_iterations=0)).initial_cost


def test_a_point_out_of_view_costs_as_much_as_a_random_match(rng):
    fmap = wave_field(H, W)
    points, targets = scene(rng, fmap, n=200)
    config = LMConfig()
    map_features = fmap.reshape(fmap.shape[0], -1).T
    random_match = (targets[:, None, :] - map_features[None, :, :]).square().sum(-1).mean()
    unseen = float(robust_loss(random_match, config)[0])
    looking_away = torch.diag(torch.tensor([-1.0, 1.0, -1.0, 1.0], dtype=torch.float64)) @ T_GT
    assert cost_at(looking_away, points, targets, fmap, K, (H, W), config) == pytest.approx(unseen)
    # ... which is about what the same points cost in view but matched at random.
    shuffled = targets[torch.from_numpy(rng.permutation(len(targets)))]
    matched_at_random = cost_at(T_GT, points, shuffled, fmap, K, (H, W), config)
    assert matched_at_random == pytest.approx(unseen, rel=0.3)
    assert cost_at(T_GT, points, targets, fmap, K, (H, W), config) < 1e-20


def test_robust_losses_have_the_documented_form():
    s = torch.tensor([0.0, 0.005, 0.01, 0.5, 4.0], dtype=torch.float64)
    for robust in ("cauchy", "huber", "l2"):
        config = LMConfig(robust=robust, robust_scale=0.1)
        rho, rho_prime = robust_loss(s, config)
        # rho' is the derivative of rho, and all three agree with l2 near zero.
        expected = jacobian(lambda x: robust_loss(x, config)[0], s).diagonal()
        np.testing.assert_allclose(rho_prime.numpy(), expected.numpy(), rtol=1e-12)
        assert rho_prime[0] == 1.0 and rho[0] == 0.0
    cauchy, _ = robust_loss(s, LMConfig(robust="cauchy", robust_scale=0.1))
    np.testing.assert_allclose(cauchy.numpy(), (0.01 * torch.log1p(s / 0.01)).numpy())


def test_point_costs_are_the_solvers_cost_point_by_point(rng):
    """What the rotational search compares: per point, the robust cost the solver averages, and
    which points are in view; zero at the true pose."""
    fmap = wave_field(H, W)
    points, targets = scene(rng, fmap, n=200)
    config = LMConfig()
    start = perturbed(rng, 3.0, 0.1)
    rho, seen = point_costs(start, points, targets, fmap, K, (H, W), config)
    assert seen.all()  # points well inside the image, a small perturbation
    assert float(rho.mean()) == pytest.approx(cost_at(start, points, targets, fmap, K, (H, W), config))
    assert float(point_costs(T_GT, points, targets, fmap, K, (H, W), config)[0].abs().max()) < 1e-20
    looking_away = torch.diag(torch.tensor([-1.0, 1.0, -1.0, 1.0], dtype=torch.float64)) @ T_GT
    assert not point_costs(looking_away, points, targets, fmap, K, (H, W), config)[1].any()


# --- steps on the render-and-compare cost ------------------------------------------------


def test_image_gradient_is_in_full_resolution_pixel_units():
    for h, w in ((H, W), (H // 2, W // 2), (H // 4, W // 4)):
        u, v = pixel_centres(h, w)
        grad = image_gradient(torch.stack([0.3 * u - 0.2 * v, 0.05 * v]), (H, W))
        assert grad.shape == (h, w, 2, 2)
        torch.testing.assert_close(grad[..., 0, :], torch.tensor([0.3, -0.2], dtype=torch.float64).expand(h, w, 2))
        torch.testing.assert_close(grad[..., 1, :], torch.tensor([0.0, 0.05], dtype=torch.float64).expand(h, w, 2))


def render_plane(T_cw: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An exact renderer at pose T_cw on a grid of ``stride``: a plane 3 units in front of the true
    camera, textured so that the true camera sees :func:`wave_field`. Returns the grid's points
    (h * w, 3), their values (h * w, D) and the values as an image (D, h, w)."""
    h, w = H // stride, W // stride
    u, v = pixel_centres(h, w)
    rays = g.unproject(torch.stack([u, v], -1).reshape(-1, 2), torch.ones(h * w, dtype=torch.float64), K)
    R_wc, centre = T_cw[:3, :3].T, -T_cw[:3, :3].T @ T_cw[:3, 3]
    directions = rays @ R_wc.T  # world frame
    in_true = lambda X: X @ T_GT[:3, :3].T + T_GT[:3, 3]  # noqa: E731
    depth = (3.0 - in_true(centre)[2]) / (directions @ T_GT[:3, :3].T)[:, 2]
    points = centre + depth[:, None] * directions
    uv_true, _ = g.project(in_true(points), K)
    values = waves(uv_true[:, 0], uv_true[:, 1]).T
    return points, values, values.T.reshape(-1, h, w)


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_render_steps_bring_an_exact_renderer_onto_the_query(rng, stride):
    """Steps whose Jacobian is the rendering's gradient, re-rendered after each, converge to the
    pose where the rendering matches the query when renders are rigid warps of one another."""
    fmap = wave_field(H, W)
    T = start = perturbed(rng, 2.0, 0.1)
    for _ in range(8):
        points, targets, image = render_plane(T, stride)
        step = render_step(T, points, targets, image_gradient(image, (H, W)).flatten(0, 1), fmap, K, (H, W), LMConfig())
        T = g.se3_exp(step) @ T
    assert errors(start)[0] > 0.05
    trans_err, rot_err = errors(T)
    assert trans_err < 1e-3 and rot_err < 0.01, (trans_err, rot_err)


def test_with_no_point_in_view_no_render_step_is_taken(rng):
    fmap = wave_field(H, W)
    points, targets, image = render_plane(T_GT, 4)
    looking_away = torch.diag(torch.tensor([-1.0, 1.0, -1.0, 1.0], dtype=torch.float64)) @ T_GT
    gradients = image_gradient(image, (H, W)).flatten(0, 1)
    assert render_step(looking_away, points, targets, gradients, fmap, K, (H, W), LMConfig()) is None
