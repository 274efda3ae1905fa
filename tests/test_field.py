"""The feature head: grounded in the geometry's features, with the gradient policy its config sets."""

from __future__ import annotations

import pytest
import torch

from nifr_ns.field import EncodingConfig, NifrField

TRIPLANE = EncodingConfig(kind="triplane", resolutions=(8, 16), features_per_level=4)


def make_field(grad_scale: float) -> NifrField:
    torch.manual_seed(0)
    return NifrField(
        num_images=2,
        spatial_distortion=None,
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
