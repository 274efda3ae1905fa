"""Tests of the self-supervised losses in nifr_ns.losses."""

import math

import pytest
import torch
import torch.nn.functional as F

from nifr_ns.losses import (
    depth_loss,
    info_nce,
    local_info_nce,
    multiview_loss,
    multiview_pairs,
    prototype_loss,
    ranking_loss,
    sinkhorn,
)


def unit(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, dtype=dtype), dim=-1)


def noisy(x: torch.Tensor, std: float = 0.1) -> torch.Tensor:
    return F.normalize(x + std * torch.randn_like(x), dim=-1)


@pytest.fixture(autouse=True)
def seed() -> None:
    torch.manual_seed(0)


# ---- info_nce ----


def _level_and_pixels(stride: int) -> tuple:
    """A (1, D, 6, 8) unit level of a 6s x 8s image and 5 pixel centres with their cells."""
    fmap = F.normalize(torch.randn(1, 16, 6, 8, dtype=torch.float64), dim=1)
    rows, cols = torch.tensor([0, 2, 5, 3, 1]), torch.tensor([0, 7, 3, 3, 4])
    uv = torch.stack([cols * stride + stride / 2, rows * stride + stride / 2], dim=-1)[None].double()
    return fmap, uv, rows, cols


@pytest.mark.parametrize("stride", [1, 4])
def test_local_info_nce_positive_is_the_cell_under_the_pixel(stride: int) -> None:
    fmap, uv, rows, cols = _level_and_pixels(stride)
    hw = (6 * stride, 8 * stride)
    at_pixels = fmap[0, :, rows, cols].T[None]  # (1, 5, D): exactly the cells' features
    neighbours = fmap[0, :, rows, (cols + 1) % 8].T[None]  # one cell to the right
    aligned = local_info_nce(at_pixels, fmap, uv, hw, 0.05, radius=1)
    assert aligned < 0.1 < local_info_nce(neighbours, fmap, uv, hw, 0.05, radius=1)


def test_local_info_nce_over_the_whole_map_is_cross_entropy_over_all_cells() -> None:
    """A window larger than the map, its off-map cells left out, is every cell exactly once."""
    fmap, uv, rows, cols = _level_and_pixels(1)
    f3d = unit(1, 5, 16, dtype=torch.float64)
    logits = f3d[0] @ fmap[0].reshape(16, 48) / 0.2
    expected = F.cross_entropy(logits, rows * 8 + cols)
    torch.testing.assert_close(local_info_nce(f3d, fmap, uv, (6, 8), 0.2, radius=8), expected)


def test_local_info_nce_gradients_match_finite_differences() -> None:
    fmap, uv, _, _ = _level_and_pixels(1)
    f3d = unit(1, 5, 16, dtype=torch.float64).requires_grad_()
    fmap.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, m: local_info_nce(a, m, uv, (6, 8), 0.5, radius=2), (f3d, fmap))


@pytest.mark.parametrize("symmetric", [True, False])
def test_info_nce_lower_for_aligned_than_shuffled(symmetric: bool) -> None:
    a = unit(3, 32, 8)
    b = noisy(a)
    shuffled = b[:, torch.randperm(32)]
    assert info_nce(a, b, 0.1, symmetric=symmetric) < info_nce(a, shuffled, 0.1, symmetric=symmetric)


def test_info_nce_symmetric_averages_both_directions() -> None:
    a, b = unit(2, 8, 4), unit(2, 8, 4)
    mask = torch.rand(2, 8) < 0.8
    one_way = info_nce(a, b, 0.1, mask, symmetric=False)
    other_way = info_nce(b, a, 0.1, mask, symmetric=False)
    assert not torch.isclose(one_way, other_way)
    torch.testing.assert_close(info_nce(a, b, 0.1, mask), 0.5 * (one_way + other_way))


@pytest.mark.parametrize("symmetric", [True, False])
def test_info_nce_gradients_match_finite_differences(symmetric: bool) -> None:
    a = unit(2, 4, 3, dtype=torch.float64).requires_grad_()
    b = unit(2, 4, 3, dtype=torch.float64).requires_grad_()
    mask = torch.tensor([[True, True, False, True], [True, True, True, True]])
    assert torch.autograd.gradcheck(lambda a, b: info_nce(a, b, 0.5, mask, symmetric), (a, b))


@pytest.mark.parametrize("symmetric", [True, False])
def test_info_nce_masked_equals_loss_on_valid_entries(symmetric: bool) -> None:
    a, b = unit(1, 10, 4), unit(1, 10, 4)
    mask = torch.rand(1, 10) < 0.6
    mask[0, :2] = True
    expected = info_nce(a[mask][None], b[mask][None], 0.2, symmetric=symmetric)
    torch.testing.assert_close(info_nce(a, b, 0.2, mask, symmetric), expected)


def test_info_nce_ignores_changes_to_masked_entries() -> None:
    a, b = unit(2, 8, 4), unit(2, 8, 4)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, 3] = mask[1, 5] = False
    loss = info_nce(a, b, 0.1, mask)
    a2, b2 = a.clone(), b.clone()
    a2[0, 3], b2[1, 5] = a[0, 0], unit(4)  # a masked entry made a perfect match, another randomised
    torch.testing.assert_close(info_nce(a2, b2, 0.1, mask), loss)


def test_info_nce_groups_with_fewer_than_two_valid_entries_contribute_nothing() -> None:
    a, b = unit(2, 6, 4), unit(2, 6, 4)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 1:] = False
    torch.testing.assert_close(info_nce(a, b, 0.1, mask), info_nce(a[:1], b[:1], 0.1))


def test_info_nce_all_masked_is_zero_with_a_graph() -> None:
    a, b = unit(2, 5, 4).requires_grad_(), unit(2, 5, 4).requires_grad_()
    loss = info_nce(a, b, 0.1, torch.zeros(2, 5, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.all(a.grad == 0) and torch.all(b.grad == 0)


# ---- sinkhorn and prototype_loss ----


def test_sinkhorn_marginals() -> None:
    num_samples, num_prototypes = 24, 6
    scores = (unit(num_samples, 8) @ unit(num_prototypes, 8).T).requires_grad_()
    codes = sinkhorn(scores, epsilon=0.05, iterations=100)
    assert not codes.requires_grad
    assert torch.all(codes >= 0)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(num_samples))
    torch.testing.assert_close(
        codes.sum(dim=0), torch.full((num_prototypes,), num_samples / num_prototypes), rtol=0, atol=1e-3
    )


def test_sinkhorn_spreads_samples_that_all_prefer_one_prototype() -> None:
    scores = torch.zeros(8, 4)
    scores[:, 0] = 1.0  # everyone prefers prototype 0; equipartition must overrule that
    codes = sinkhorn(scores, epsilon=0.05, iterations=50)
    torch.testing.assert_close(codes.sum(dim=0), torch.full((4,), 2.0), rtol=0, atol=1e-3)


def test_prototype_loss_lower_for_aligned_than_shuffled() -> None:
    z3d = unit(64, 8)
    z2d = noisy(z3d)
    prototypes = torch.randn(10, 8)
    args = dict(temperature=0.1, epsilon=0.05, iterations=3)
    shuffled = z2d[torch.randperm(64)]
    assert prototype_loss(z3d, z2d, prototypes, **args) < prototype_loss(z3d, shuffled, prototypes, **args)


def test_prototype_loss_does_not_depend_on_prototype_scale() -> None:
    z3d, z2d, prototypes = unit(16, 8), unit(16, 8), torch.randn(6, 8)
    args = dict(temperature=0.1, epsilon=0.05, iterations=3)
    scaled = prototypes * torch.rand(6, 1) * 3
    torch.testing.assert_close(prototype_loss(z3d, z2d, scaled, **args), prototype_loss(z3d, z2d, prototypes, **args))


def test_prototype_loss_gradients_match_finite_differences() -> None:
    # The codes are detached targets, so finite differences only agree with autograd where the
    # codes are locally constant: each sample close to its own prototype, one per prototype,
    # and a small epsilon make the assignment a fixed permutation (sensitivity ~ exp(-1/eps)).
    num, dim = 4, 6
    prototypes = torch.linalg.qr(torch.randn(dim, num, dtype=torch.float64))[0].T.contiguous()
    z3d = noisy(prototypes[torch.randperm(num)], 0.05).requires_grad_()
    z2d = noisy(prototypes[torch.randperm(num)], 0.05).requires_grad_()
    prototypes = (prototypes * 1.5).requires_grad_()  # not unit: the normalisation is checked too

    def loss(z3d: torch.Tensor, z2d: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        return prototype_loss(z3d, z2d, prototypes, temperature=0.5, epsilon=0.02, iterations=10)

    assert torch.autograd.gradcheck(loss, (z3d, z2d, prototypes))
    loss(z3d, z2d, prototypes).backward()
    for tensor in (z3d, z2d, prototypes):
        assert tensor.grad.abs().sum() > 0


# ---- ranking_loss ----


def ranked_features(similarities: torch.Tensor) -> tuple:
    """An encoder feature, a surface feature equal to it, and sample features whose cosine
    similarities to it are ``similarities`` (R, S)."""
    rays, count = similarities.shape
    basis = torch.linalg.qr(torch.randn(count + 1, count + 1, dtype=similarities.dtype))[0]
    enc = basis[0].expand(rays, -1)
    sines = (1 - similarities**2).sqrt()
    samples = similarities[..., None] * basis[0] + sines[..., None] * basis[1:][None]
    return enc, enc.clone(), samples


def test_ranking_loss_zero_when_order_is_right_and_positive_when_reversed() -> None:
    distance = torch.tensor([[0.5, 0.1, 0.3, 0.9], [2.0, 1.0, 4.0, 3.0]])
    margin = 0.2
    # Similarity falls faster than the margin asks: 1.5 * margin from surface to farthest sample.
    similarities = 1 - 1.5 * margin * distance / distance.amax(dim=1, keepdim=True)
    enc, surface, samples = ranked_features(similarities)
    assert ranking_loss(enc, surface, samples, distance, margin).item() == 0.0
    reversed_distance = distance.amax(dim=1, keepdim=True) - distance
    assert ranking_loss(enc, surface, samples, reversed_distance, margin) > 0


def test_ranking_loss_margin_grows_with_distance_gap() -> None:
    # Similarity falling linearly by half the margin: the far pairs break it, not only consecutive ones.
    distance = torch.tensor([[0.25, 0.5, 0.75, 1.0]])
    enc, surface, samples = ranked_features(1 - 0.1 * distance)
    assert ranking_loss(enc, surface, samples, distance, margin=0.2) > 0
    assert ranking_loss(enc, surface, samples, distance, margin=0.1).item() == pytest.approx(0.0, abs=1e-6)


def test_ranking_loss_lower_for_ordered_than_shuffled_distances() -> None:
    distance = torch.rand(16, 6)
    enc, surface, samples = ranked_features(1 - 0.5 * distance / distance.amax(dim=1, keepdim=True))
    shuffled = distance[:, torch.randperm(6)]
    assert ranking_loss(enc, surface, samples, distance, 0.3) < ranking_loss(enc, surface, samples, shuffled, 0.3)


def test_ranking_loss_gradients_match_finite_differences_and_skip_3d_features() -> None:
    enc = unit(3, 4, dtype=torch.float64).requires_grad_()
    surface = unit(3, 4, dtype=torch.float64).requires_grad_()
    samples = unit(3, 5, 4, dtype=torch.float64).requires_grad_()
    distance = torch.rand(3, 5, dtype=torch.float64)
    mask = torch.rand(3, 5) < 0.8
    assert torch.autograd.gradcheck(lambda e: ranking_loss(e, surface, samples, distance, 0.3, mask), (enc,))
    ranking_loss(enc, surface, samples, distance, 0.3, mask).backward()
    assert surface.grad is None and samples.grad is None


def test_ranking_loss_ignores_masked_samples() -> None:
    distance = torch.tensor([[0.2, 0.4, 0.6, 0.8]])
    enc, surface, samples = ranked_features(1 - 0.5 * distance)
    mask = torch.tensor([[True, True, False, True]])
    loss = ranking_loss(enc, surface, samples, distance, 0.2, mask)
    assert loss.item() == 0.0
    # The masked sample made a violating one (more similar than the surface, nearest): no effect.
    samples[0, 2], distance[0, 2] = surface[0], 0.05
    assert ranking_loss(enc, surface, samples, distance, 0.2, mask).item() == 0.0
    assert ranking_loss(enc, surface, samples, distance, 0.2) > 0


# ---- multi-view ----


def test_multiview_pairs_rejects_out_of_view_behind_and_occluded_points() -> None:
    height, width, focal = 48, 64, 50.0
    K = torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    T_cw = torch.eye(4, dtype=torch.float64)
    T_cw[:3, 3] = torch.tensor([0.0, 0.0, 1.0])  # camera centre at world (0, 0, -1)
    points = torch.tensor(
        [
            [0.2, -0.1, 1.0],  # visible, on B's surface
            [0.4, -0.2, 3.0],  # on the same ray from B's centre, twice as far: occluded
            [0.0, 0.0, -3.0],  # behind the camera
            [3.0, 0.0, 1.0],  # in front but outside the image
        ],
        dtype=torch.float64,
    )
    surface_depth = 2.0

    asked = []

    def depth_b(uv: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
        asked.append((uv, pair))
        return torch.full(uv.shape[:1], surface_depth, dtype=uv.dtype)

    uv, valid = multiview_pairs(points, T_cw, K, (height, width), depth_b, rel_tol=0.05)
    assert len(asked) == 1 and torch.equal(asked[0][0], uv[:2])  # rendering is asked for in-view points only
    assert asked[0][1].tolist() == [0, 0]
    assert valid.tolist() == [True, False, False, False]
    z = points[0, 2] + 1.0
    expected = torch.stack([focal * points[0, 0] / z + width / 2, focal * points[0, 1] / z + height / 2])
    torch.testing.assert_close(uv[0], expected)

    torch.testing.assert_close(uv[1], uv[0])

    _, valid_given_depths = multiview_pairs(points, T_cw, K, (height, width), torch.full((4,), surface_depth), 0.05)
    assert torch.equal(valid_given_depths, valid)
    _, valid_without_depth = multiview_pairs(points, T_cw, K, (height, width), None, 0.05)
    assert valid_without_depth.tolist() == [True, True, False, False]


def test_multiview_pairs_batched_equals_pair_by_pair_with_one_rendering_call() -> None:
    torch.manual_seed(0)
    K = torch.tensor([[50.0, 0.0, 32.0], [0.0, 50.0, 24.0], [0.0, 0.0, 1.0]])
    points = torch.randn(3, 20, 3) * torch.tensor([1.0, 1.0, 0.3]) + torch.tensor([0.0, 0.0, 2.0])
    T_cw = torch.eye(4).repeat(3, 1, 1)
    T_cw[:, :3, 3] = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, 0.5], [-0.2, 0.1, -0.5]])
    walls = torch.tensor([2.0, 2.3, 1.6])  # each view B sees a fronto-parallel wall at its own depth
    calls = []

    def depth_b(uv: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
        calls.append(len(uv))
        return walls[pair]

    uv, valid = multiview_pairs(points, T_cw, K, (48, 64), depth_b, rel_tol=0.1)
    assert len(calls) == 1 and uv.shape == (3, 20, 2) and valid.shape == (3, 20)
    for p in range(3):
        uv_p, valid_p = multiview_pairs(points[p], T_cw[p], K, (48, 64), lambda uv, _: walls[p].expand(len(uv)), 0.1)
        torch.testing.assert_close(uv[p], uv_p)
        assert torch.equal(valid[p], valid_p)
    assert 0 < valid.sum() < valid.numel()  # the test exercises both outcomes


def test_multiview_pairs_occlusion_tolerance_is_relative() -> None:
    K = torch.tensor([[50.0, 0.0, 32.0], [0.0, 50.0, 24.0], [0.0, 0.0, 1.0]])
    points = torch.tensor([[0.0, 0.0, 10.0], [0.0, 0.0, 1.0]])
    rendered = torch.tensor([10.3, 1.3])  # 0.3 off for both: 3 % of the far one, 30 % of the near one
    _, valid = multiview_pairs(points, torch.eye(4), K, (48, 64), rendered, rel_tol=0.05)
    assert valid.tolist() == [True, False]


def test_multiview_loss_lower_for_aligned_and_ignores_invalid_pairs() -> None:
    feat_a = unit(20, 8)
    enc_b = noisy(feat_a)
    valid = torch.rand(20) < 0.7
    loss = multiview_loss(feat_a, enc_b, valid, 0.1)
    assert loss < multiview_loss(feat_a, enc_b[torch.randperm(20)], valid, 0.1)
    changed = enc_b.clone()
    changed[~valid] = unit(int((~valid).sum()), 8)
    torch.testing.assert_close(multiview_loss(feat_a, changed, valid, 0.1), loss)
    assert not math.isnan(multiview_loss(feat_a, enc_b, torch.zeros(20, dtype=torch.bool), 0.1).item())


def test_depth_loss_is_the_mean_error_over_pixels_with_sensor_depth() -> None:
    sensor = torch.tensor([2.0, 0.0, 4.0, 0.0])  # 0: no measurement
    rendered = torch.tensor([2.5, 9.0, 3.0, 7.0], requires_grad=True)
    loss = depth_loss(rendered, sensor)
    assert loss.item() == pytest.approx(0.75)  # (0.5 + 1.0) / 2: the unknown pixels count for nothing
    loss.backward()
    assert rendered.grad.tolist() == [0.5, 0.0, -0.5, 0.0]  # pulls each known depth toward the sensor
    assert depth_loss(sensor.clone(), sensor).item() == 0.0
    assert depth_loss(rendered, torch.zeros(4)).item() == 0.0  # a view without depth: no loss, no NaN


def test_relative_colour_loss_weighs_dim_texture_as_bright_texture_and_scales_like_mse() -> None:
    from nifr_ns.losses import RelativeMSELoss

    generator = torch.Generator().manual_seed(0)
    gt = torch.rand(256, 3, generator=generator) * 0.5 + 0.25
    pred = gt * (1 + 0.1 * torch.randn(256, 3, generator=generator))
    loss = RelativeMSELoss(offset=0.01)
    # one batch, half of it a tenth as bright with the same relative errors: under MSE that half
    # counts a hundred times less; under the relative loss a dim pixel weighs as its error relative to
    # its own intensity says, and no pixel less than under MSE
    scale = torch.ones(256, 1)
    scale[128:] = 0.1
    gt_mixed, pred_mixed = gt * scale, pred * scale
    weights = loss.weights_for(gt_mixed, pred_mixed)
    mean, eps = gt_mixed.mean(), 0.01 * gt_mixed.mean()
    dim = pred_mixed < mean
    assert dim[128:].all() and weights.min() == 1.0
    torch.testing.assert_close(weights[dim], ((mean + eps) / (pred_mixed[dim] + eps)).square().clamp_min(1.0))
    squared = (pred_mixed - gt_mixed).square()
    assert squared[128:].sum() < 0.02 * squared[:128].sum()
    assert (weights * squared)[128:].sum() > 0.2 * (weights * squared)[:128].sum()
    # every intensity scaled alike: the loss scales as MSE does, so Adam's steps do not change
    assert loss(gt * 0.2, pred * 0.2) == pytest.approx(0.04 * float(loss(gt, pred)), rel=1e-5)
    # the weights are constants: the gradient is the weighted squared error's
    pred.requires_grad_(True)
    loss(gt, pred).backward()
    weights = loss.weights_for(gt, pred.detach())
    torch.testing.assert_close(pred.grad, 2 * weights * (pred.detach() - gt) / pred.numel())
