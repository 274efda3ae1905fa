"""The nifr field: nerfacto-style geometry and colour, plus a geometry-grounded feature head.

Owns the spatial encodings (hash grid, or a multi-resolution tri-plane that is about ten
times faster than nerfstudio's pure-torch hash grid on a CPU), the density and proposal
fields, and the per-sample outputs: density, RGB and a D-dimensional feature.

Gradient policy of the feature head: it reads its own encoding of the position and the
density network's intermediate geometric features. The geometric features enter through
a gradient scale (``geo_feature_grad_scale``, 0 = detached): feature losses may shape them
only as much as asked, and never move the density through the rendering weights, which
the model detaches for every feature rendering (as LERF does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn

from nerfstudio.cameras.rays import RaySamples
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.field_components.activations import trunc_exp
from nerfstudio.field_components.embedding import Embedding
from nerfstudio.field_components.encodings import Encoding, HashEncoding, KPlanesEncoding, SHEncoding
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.field_components.mlp import MLP
from nerfstudio.field_components.spatial_distortions import SceneContraction, SpatialDistortion
from nerfstudio.fields.base_field import Field, get_normalized_directions

FEATURE = "feature"
"""Key of the per-sample feature in the field outputs (nerfstudio's FieldHeadNames has none for it)."""


@dataclass
class EncodingConfig:
    """A spatial encoding of positions normalised to [0, 1]^3."""

    kind: Literal["hashgrid", "triplane"] = "hashgrid"
    """hashgrid: nerfstudio's hash grid (tinycudann when installed); triplane: multi-resolution
    tri-plane through grid_sample, the fast choice without tinycudann."""
    resolutions: Tuple[int, ...] = (16, 2048)
    """hashgrid: (base, max) resolution; triplane: the resolution of each scale."""
    num_levels: int = 16
    """hashgrid levels (unused by the tri-plane, whose levels are ``resolutions``)."""
    features_per_level: int = 2
    log2_hashmap_size: int = 19

    def setup(self, implementation: Literal["tcnn", "torch"]) -> Encoding:
        if self.kind == "triplane":
            return MultiResTriplaneEncoding(self.resolutions, self.features_per_level)
        return HashEncoding(
            num_levels=self.num_levels,
            min_res=self.resolutions[0],
            max_res=self.resolutions[-1],
            log2_hashmap_size=self.log2_hashmap_size,
            features_per_level=self.features_per_level,
            implementation=implementation,
        )


_PLANE_AXES = torch.tensor([[0, 1], [0, 2], [1, 2]])
"""The coordinates of each of KPlanes' three planes, in its order."""


class MultiResTriplaneEncoding(Encoding):
    """K-Planes style tri-planes at several resolutions, concatenated; input in [0, 1]^3."""

    def __init__(self, resolutions: Tuple[int, ...], channels: int) -> None:
        super().__init__(in_dim=3)
        self.planes = nn.ModuleList(
            KPlanesEncoding(resolution=(r, r, r), num_components=channels, reduce="product") for r in resolutions
        )
        for scale in self.planes:
            assert [list(c) for c in scale.coo_combs] == _PLANE_AXES.tolist(), "KPlanes' plane order changed"
        self._stacked: List[Tensor] = []
        self._stacked_key: List[Tuple[int, int]] = []

    def get_out_dim(self) -> int:
        return sum(p.get_out_dim() for p in self.planes)

    def forward(self, in_tensor: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs out"]:
        x = in_tensor * 2.0 - 1.0
        if torch.is_grad_enabled():
            return torch.cat([p(x) for p in self.planes], dim=-1)
        # Without gradients (rendering to refine, evaluate, view), the same values from one
        # grid_sample per resolution on its three planes stacked, the coordinates gathered once for
        # all resolutions: the proposal field's encoding takes 0.09 instead of 0.13 s for 19200 rays
        # of 48 samples on 2 CPU cores. Training keeps nerfstudio's path and its backward.
        coords = x.reshape(-1, 3)[:, _PLANE_AXES].transpose(0, 1).unsqueeze(1)  # (3, 1, N, 2)
        scales = []
        for planes in self.stacked_planes():
            xy, xz, yz = F.grid_sample(planes, coords, align_corners=True, padding_mode="border")[:, :, 0]
            scales.append(xy * xz * yz)  # (C, N): KPlanes' product, in its order
        return torch.cat(scales).T.reshape(*in_tensor.shape[:-1], -1)

    def stacked_planes(self) -> List[Float[Tensor, "3 C R R"]]:
        """Each resolution's planes stacked, rebuilt only when a plane has changed since."""
        key = [(p.data_ptr(), p._version) for scale in self.planes for p in scale.plane_coefs]
        if key != self._stacked_key:
            self._stacked = [torch.stack(list(scale.plane_coefs)).detach() for scale in self.planes]
            self._stacked_key = key
        return self._stacked

    def total_variation(self) -> Float[Tensor, ""]:
        """Total variation of every plane (K-Planes' spatial smoothness), summed over resolutions.

        nerfstudio's ``tv_loss`` gives the same value, but on planes stacked into one tensor: the
        copy, there and back in the backward pass, made it twice as slow (nifr-small's planes: 17.8
        against 9.2 ms a step with its gradient, on a 2-core CPU).
        """
        total = 0.0
        for scale in self.planes:
            for plane in scale.plane_coefs:  # (C, R, R)
                rows = (plane[:, 1:, :] - plane[:, :-1, :]).square().mean()
                columns = (plane[:, :, 1:] - plane[:, :, :-1]).square().mean()
                total = total + 2.0 * (rows + columns) / len(scale.plane_coefs)
        return total


class CubeContraction(SceneContraction):
    """MipNeRF-360's contraction of space into the cube [-2, 2]^3 (nerfstudio's
    ``SceneContraction(order=inf)``), with the L-inf norm taken as max |x|: the same values bit for
    bit, but torch's ord=inf vector norm is over 100x slower on a CPU (9.4 ms against 0.07 ms for
    1024 x 48 points), which made the contraction a tenth of a nifr-small training step."""

    def __init__(self) -> None:
        super().__init__(order=float("inf"))

    def forward(self, positions):
        if not isinstance(positions, Tensor):  # Gaussians: nerfstudio's path
            return super().forward(positions)
        magnitude = positions.abs().amax(dim=-1, keepdim=True)
        return torch.where(magnitude < 1, positions, (2 - 1 / magnitude) * (positions / magnitude))


def normalized_positions(
    ray_samples: RaySamples, spatial_distortion: Optional[SpatialDistortion], aabb: Float[Tensor, "2 3"]
) -> Tuple[Float[Tensor, "*bs 3"], Float[Tensor, "*bs"]]:
    """Sample positions mapped to [0, 1]^3 and a mask of those inside it: the contracted space
    [-2, 2]^3 with a spatial distortion, else the scene box ``aabb`` (a bounded scene)."""
    positions = ray_samples.frustums.get_positions()
    if spatial_distortion is not None:
        positions = (spatial_distortion(positions) + 2.0) / 4.0
    else:
        positions = SceneBox.get_normalized_positions(positions, aabb)
    inside = ((positions > 0.0) & (positions < 1.0)).all(dim=-1)
    return positions * inside[..., None], inside


class ProposalDensityField(Field):
    """A small density-only field for proposal sampling (nerfacto's HashMLPDensityField, any encoding)."""

    def __init__(
        self,
        encoding: EncodingConfig,
        spatial_distortion: Optional[SpatialDistortion],
        aabb: Float[Tensor, "2 3"],
        hidden_dim: int = 16,
        average_init_density: float = 1.0,
        implementation: Literal["tcnn", "torch"] = "torch",
    ) -> None:
        super().__init__()
        self.spatial_distortion = spatial_distortion
        self.register_buffer("aabb", aabb.clone())
        self.average_init_density = average_init_density
        enc = encoding.setup(implementation)
        mlp = MLP(
            in_dim=enc.get_out_dim(),
            num_layers=2,
            layer_width=hidden_dim,
            out_dim=1,
            activation=nn.ReLU(),
            implementation=implementation,
        )
        self.mlp_base = nn.Sequential(enc, mlp)

    def get_density(self, ray_samples: RaySamples) -> Tuple[Tensor, None]:
        positions, inside = normalized_positions(ray_samples, self.spatial_distortion, self.aabb)
        raw = self.mlp_base(positions.view(-1, 3)).view(*ray_samples.frustums.shape, 1).to(positions)
        density = self.average_init_density * trunc_exp(raw) * inside[..., None]
        return density, None

    def get_outputs(self, ray_samples: RaySamples, density_embedding: Optional[Tensor] = None) -> dict:
        return {}


class NifrField(Field):
    """Density + RGB (nerfacto) and a unit-free D-dim feature per sample, grounded in the geometry."""

    def __init__(
        self,
        num_images: int,
        spatial_distortion: Optional[SpatialDistortion],
        aabb: Float[Tensor, "2 3"],
        density_encoding: EncodingConfig,
        feature_encoding: EncodingConfig,
        feature_dim: int = 32,
        hidden_dim: int = 64,
        geo_feat_dim: int = 15,
        hidden_dim_color: int = 64,
        hidden_dim_feature: int = 64,
        appearance_embedding_dim: int = 32,
        use_average_appearance_embedding: bool = True,
        geo_feature_grad_scale: float = 0.0,
        average_init_density: float = 1.0,
        implementation: Literal["tcnn", "torch"] = "torch",
    ) -> None:
        super().__init__()
        self.spatial_distortion = spatial_distortion
        self.register_buffer("aabb", aabb.clone())
        self.geo_feat_dim = geo_feat_dim
        self.feature_dim = feature_dim
        self.geo_feature_grad_scale = geo_feature_grad_scale
        self.average_init_density = average_init_density
        self.use_average_appearance_embedding = use_average_appearance_embedding

        density_enc = density_encoding.setup(implementation)
        self.mlp_base = nn.Sequential(
            density_enc,
            MLP(
                in_dim=density_enc.get_out_dim(),
                num_layers=2,
                layer_width=hidden_dim,
                out_dim=1 + geo_feat_dim,
                activation=nn.ReLU(),
                implementation=implementation,
            ),
        )
        self.direction_encoding = SHEncoding(levels=4, implementation=implementation)
        self.embedding_appearance = Embedding(num_images, appearance_embedding_dim) if appearance_embedding_dim else None
        self.mlp_head = MLP(
            in_dim=self.direction_encoding.get_out_dim() + geo_feat_dim + appearance_embedding_dim,
            num_layers=3,
            layer_width=hidden_dim_color,
            out_dim=3,
            activation=nn.ReLU(),
            out_activation=nn.Sigmoid(),
            implementation=implementation,
        )
        self.feature_encoding = feature_encoding.setup(implementation)
        self.mlp_feature = MLP(
            in_dim=self.feature_encoding.get_out_dim() + geo_feat_dim,
            num_layers=2,
            layer_width=hidden_dim_feature,
            out_dim=feature_dim,
            activation=nn.ReLU(),
            implementation=implementation,
        )
        self._positions: Optional[Tensor] = None

    def get_density(self, ray_samples: RaySamples) -> Tuple[Tensor, Tensor]:
        positions, inside = normalized_positions(ray_samples, self.spatial_distortion, self.aabb)
        self._positions = positions
        h = self.mlp_base(positions.view(-1, 3)).view(*ray_samples.frustums.shape, -1)
        raw_density, geo_features = torch.split(h, [1, self.geo_feat_dim], dim=-1)
        # exp keeps high densities reachable from small parameters (as nerfacto)
        density = self.average_init_density * trunc_exp(raw_density.to(positions)) * inside[..., None]
        return density, geo_features

    def _appearance(self, camera_indices: Optional[Tensor], shape: torch.Size) -> Optional[Tensor]:
        if self.embedding_appearance is None:
            return None
        if self.training:
            assert camera_indices is not None, "camera indices are needed for appearance"
            return self.embedding_appearance(camera_indices.squeeze(-1))
        dim = self.embedding_appearance.out_dim
        if self.use_average_appearance_embedding:
            return self.embedding_appearance.mean(dim=0).expand(*shape, dim)
        return torch.zeros(*shape, dim, device=self.aabb.device)

    def get_outputs(self, ray_samples: RaySamples, density_embedding: Optional[Tensor] = None) -> Dict:
        assert density_embedding is not None and self._positions is not None
        return self.sample_outputs(
            self._positions, ray_samples.frustums.directions, density_embedding, ray_samples.camera_indices
        )

    def get_outputs_where(
        self, ray_samples: RaySamples, density_embedding: Tensor, keep: Bool[Tensor, "*bs"]
    ) -> Dict:
        """``get_outputs`` at the samples ``keep`` selects only, zero elsewhere (after ``get_density``)."""
        assert self._positions is not None
        indices = None if ray_samples.camera_indices is None else ray_samples.camera_indices[keep]
        kept = self.sample_outputs(
            self._positions[keep], ray_samples.frustums.directions[keep], density_embedding[keep], indices
        )
        outputs = {}
        for name, values in kept.items():
            outputs[name] = values.new_zeros(*keep.shape, values.shape[-1]).index_put((keep,), values)
        return outputs

    def sample_outputs(
        self,
        positions: Float[Tensor, "*bs 3"],
        directions: Float[Tensor, "*bs 3"],
        geo_features: Float[Tensor, "*bs G"],
        camera_indices: Optional[Tensor],
    ) -> Dict:
        """RGB and feature of samples at normalised ``positions`` seen along ``directions``."""
        shape = positions.shape[:-1]
        directions = get_normalized_directions(directions)
        colour_in = [self.direction_encoding(directions.view(-1, 3)), geo_features.reshape(-1, self.geo_feat_dim)]
        appearance = self._appearance(camera_indices, shape)
        if appearance is not None:
            colour_in.append(appearance.reshape(-1, appearance.shape[-1]))
        rgb = self.mlp_head(torch.cat(colour_in, dim=-1)).view(*shape, 3).to(directions)
        return {FieldHeadNames.RGB: rgb, FEATURE: self.get_features(positions, geo_features)}

    def get_features(
        self, positions: Float[Tensor, "*bs 3"], geo_features: Float[Tensor, "*bs G"]
    ) -> Float[Tensor, "*bs D"]:
        """Per-sample features (not normalised: normalisation happens after volumetric rendering)."""
        geo = scale_gradient(geo_features, self.geo_feature_grad_scale)
        x = torch.cat([self.feature_encoding(positions.reshape(-1, 3)), geo.reshape(-1, self.geo_feat_dim)], -1)
        return self.mlp_feature(x).view(*positions.shape[:-1], self.feature_dim).to(positions)


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """Identity forward; gradient multiplied by ``scale`` backward (0 detaches)."""
    if scale == 0.0:
        return x.detach()
    if scale == 1.0:
        return x
    return x * scale + x.detach() * (1.0 - scale)
