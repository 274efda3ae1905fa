"""The feature head: grounded in the geometry's features, with the gradient policy its config sets."""

from __future__ import annotations

import pytest
import torch

from nifr_ns.field import EncodingConfig, MultiResTriplaneEncoding, NifrField

TRIPLANE = EncodingConfig(kind="triplane", resolutions=(8, 16), features_per_level=4)


def make_field(grad_scale: float) -> NifrField:
    torch.manual_seed(0)
    return NifrField(
        num_images=2,
        spatial_distortion=None,
        aabb=torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]),  # positions are already normalised
        density_encoding=TRIPLANE,
        feature_encoding=TRIPLANE,
        feature_dim=16,
        hidden_dim=16,
        geo_feature_grad_scale=grad_scale,
    )


def test_geometric_features_reach_the_feature_head() -> None:
    field = make_field(1.0)
    positions = torch.rand(8, 3)
    geo = torch.randn(8, field.geo_feat_dim)
    jacobian = torch.autograd.functional.jacobian(lambda g: field.get_features(positions, g), geo)
    # (8, D, 8, G): each sample's feature depends on its own geometric features
    per_sample = jacobian.diagonal(dim1=0, dim2=2)
    assert (per_sample.abs().amax(dim=(0, 1)) > 0).all()


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0])
def test_feature_loss_reaches_density_network_only_as_configured(scale: float) -> None:
    field = make_field(scale)
    positions = torch.rand(64, 3)
    geo = field.mlp_base(positions)[:, 1:]
    field.get_features(positions, geo).square().sum().backward()
    density_mlp_grad = sum(p.grad.abs().sum() for p in field.mlp_base[1].parameters() if p.grad is not None)
    head_grad = sum(p.grad.abs().sum() for p in field.mlp_feature.parameters())
    assert head_grad > 0
    if scale == 0.0:
        assert density_mlp_grad == 0
    else:
        assert density_mlp_grad > 0


def test_gradient_scale_scales_the_gradient() -> None:
    grads = []
    for scale in (0.5, 1.0):
        field = make_field(scale)
        geo = torch.randn(32, field.geo_feat_dim, requires_grad=True)
        field.get_features(torch.rand(32, 3), geo).sum().backward()
        grads.append(geo.grad)
    assert torch.allclose(grads[0] * 2, grads[1], atol=1e-6)


def test_outputs_at_kept_samples_equal_the_dense_ones_and_are_zero_elsewhere() -> None:
    from nerfstudio.cameras.rays import Frustums, RaySamples

    field = make_field(0.0).eval()
    ones = torch.ones(4, 5, 1)
    directions = torch.nn.functional.normalize(torch.randn(4, 1, 3), dim=-1).expand(4, 5, 3)
    starts = torch.linspace(0.0, 0.8, 5)[None, :, None].expand(4, 5, 1)
    samples = RaySamples(Frustums(torch.full((4, 5, 3), 0.1), directions, starts, starts + 0.1, 0.01 * ones))
    dense = field.forward(samples)
    keep = torch.rand(4, 5) > 0.5
    _, geo = field.get_density(samples)
    sparse = field.get_outputs_where(samples, geo, keep)
    for name in ("rgb", "feature"):
        key = next(k for k in dense if getattr(k, "value", k) == name)
        torch.testing.assert_close(sparse[key][keep], dense[key][keep])
        assert (sparse[key][~keep] == 0).all()


def test_a_bounded_field_maps_its_scene_box_to_the_unit_cube_and_is_empty_outside() -> None:
    from nerfstudio.cameras.rays import Frustums, RaySamples

    from nifr_ns.field import normalized_positions

    aabb = torch.tensor([[-2.0, -2.0, -2.0], [2.0, 2.0, 2.0]])
    origins = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 0.0], [3.0, 0.0, 0.0]])
    ones = torch.ones(3, 1)
    samples = RaySamples(Frustums(origins, torch.tensor([[1.0, 0, 0]]).expand(3, 3), 0 * ones, 0 * ones, ones))
    positions, inside = normalized_positions(samples, None, aabb)
    assert inside.tolist() == [True, True, False]
    torch.testing.assert_close(positions[:2], torch.tensor([[0.5, 0.5, 0.5], [0.75, 0.25, 0.5]]))
    field = make_field(0.0)
    field.aabb.copy_(aabb)
    density, _ = field.get_density(samples)
    assert density[2].item() == 0.0 and (density[:2] > 0).all()


def test_triplane_total_variation_is_zero_when_constant_and_descending_it_smooths() -> None:
    encoding = MultiResTriplaneEncoding((8, 16), channels=4)
    with torch.no_grad():
        for plane in encoding.parameters():
            plane.fill_(0.3)
    assert encoding.total_variation().item() == 0.0

    torch.manual_seed(0)
    encoding = MultiResTriplaneEncoding((8, 16), channels=4)
    before = encoding.total_variation()
    assert before > 0
    from nerfstudio.model_components.losses import tv_loss  # K-Planes' definition, planes stacked

    reference = sum(tv_loss(torch.stack(list(scale.plane_coefs))) for scale in encoding.planes)
    torch.testing.assert_close(before, reference)
    before.backward()
    assert all(plane.grad is not None and plane.grad.abs().sum() > 0 for plane in encoding.parameters())
    with torch.no_grad():
        for plane in encoding.parameters():
            plane -= 0.1 * plane.grad
    assert encoding.total_variation() < before


def test_triplane_without_gradients_equals_nerfstudios_path_and_follows_plane_updates() -> None:
    torch.manual_seed(0)
    encoding = MultiResTriplaneEncoding((8, 16), channels=4)
    x = torch.rand(5, 7, 3)
    reference = encoding(x)  # gradients on: nerfstudio's KPlanes path
    with torch.no_grad():
        stacked = encoding(x)
    assert stacked.shape == reference.shape == (5, 7, 8)
    assert torch.equal(stacked, reference)
    with torch.no_grad():  # a training step in place: the stacked planes must not go stale
        for plane in encoding.parameters():
            plane.mul_(1.5)
        updated = encoding(x)
    assert torch.equal(updated, encoding(x).detach()) and not torch.equal(updated, stacked)


def test_cube_contraction_equals_nerfstudios_and_carries_its_gradient() -> None:
    from nerfstudio.field_components.spatial_distortions import SceneContraction

    from nifr_ns.field import CubeContraction

    torch.manual_seed(0)
    points = torch.randn(64, 32, 3) * torch.logspace(-1, 2, 32)[None, :, None]  # inside and far outside
    ours, reference = CubeContraction(), SceneContraction(order=float("inf"))
    assert torch.equal(ours(points), reference(points))
    assert ours(points).abs().amax() <= 2.0
    assert torch.equal(ours(points).abs().amax(dim=-1) < 1, points.abs().amax(dim=-1) < 1)

    x = points.clone().requires_grad_(True)
    y = points.clone().requires_grad_(True)
    (ours(x) * torch.cos(points)).sum().backward()
    (reference(y) * torch.cos(points)).sum().backward()
    torch.testing.assert_close(x.grad, y.grad)
