"""The nifr model: nerfacto's geometry and sampling with a rendered, L2-normalised feature field.

Owns the model config, the modules built from it, what is rendered per ray and the
losses and metrics that nerfstudio's trainer, ``ns-eval`` and ``ns-viewer`` call.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Tuple, Type

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from torch.nn import Parameter

from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.model_components.losses import MSELoss
from nerfstudio.model_components.ray_samplers import ProposalNetworkSampler, UniformSampler
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer, RGBRenderer
from nerfstudio.model_components.scene_colliders import AABBBoxCollider, NearFarCollider
from nerfstudio.models.base_model import Model
from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig
from nerfstudio.utils import colormaps

from nifr_ns import checkpoints, losses
from nifr_ns.encoder import ImageEncoderConfig, sample_features
from nifr_ns.field import (
    FEATURE,
    CubeContraction,
    EncodingConfig,
    MultiResTriplaneEncoding,
    NifrField,
    ProposalDensityField,
)
from nifr_ns.geometry import opengl_c2w_to_T_cw
from nifr_ns.metrics import depth_rel_error, match_accuracy
from nifr_ns.visualization import FeaturePCA

checkpoints.allow_numpy_scalars()


@dataclass
class NifrModelConfig(NerfactoModelConfig):
    """nifr model config: nerfacto's (sampling, proposals, losses, appearance) plus the feature field.

    The encodings are set by ``density_encoding``, ``feature_encoding`` and
    ``proposal_encodings``; nerfacto's hash-grid fields (num_levels, max_res, ...,
    proposal_net_args_list) are not read.
    """

    _target: Type = field(default_factory=lambda: NifrModel)
    density_encoding: EncodingConfig = field(default_factory=EncodingConfig)
    """Encoding of the density (geometry) network."""
    feature_encoding: EncodingConfig = field(
        default_factory=lambda: EncodingConfig(resolutions=(16, 1024), num_levels=12, log2_hashmap_size=18)
    )
    """The feature head's own encoding."""
    proposal_encodings: Tuple[EncodingConfig, ...] = field(
        default_factory=lambda: (
            EncodingConfig(resolutions=(16, 128), num_levels=5, log2_hashmap_size=17),
            EncodingConfig(resolutions=(16, 256), num_levels=5, log2_hashmap_size=17),
        )
    )
    """Encoding of each proposal network (one per proposal iteration)."""
    feature_dim: int = 32
    """Dimension D of the shared 2D/3D feature space. Larger costs memory and time in every
    render and solve."""
    hidden_dim_feature: int = 64
    """Width of the feature head's MLP."""
    rgb_loss_offset: float = 0.1
    """Above 0: the colour error relative to the rendered intensity plus this share of the batch's mean
    intensity, never weighed below plain MSE (:class:`~nifr_ns.losses.RelativeMSELoss`), so that
    texture in dim light and shadow constrains the geometry as texture in bright light does; smaller
    values weigh the darkest pixels more. 0: nerfacto's mean squared error."""
    geo_feature_grad_scale: float = 0.0
    """How much of the feature losses' gradient reaches the geometric features (0: none)."""
    camera_optimizer: CameraOptimizerConfig = field(default_factory=lambda: CameraOptimizerConfig(mode="off"))
    """Off by default: the map frame must stay the frame of the input poses."""
    encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    """The 2D image encoder trained with the field (its feature_dim is set to feature_dim)."""
    temperature: float = 0.07
    """Temperature tau of the contrastive (InfoNCE) losses (above 0). Lower sharpens the
    matches the losses ask for."""
    contrastive_loss_mult: float = 1.0
    """Pixel-aligned 2D<->3D InfoNCE, averaged over the encoder's levels."""
    local_negatives_radius: int = 0
    """In the 3D->2D direction of the contrastive loss, the encoder cells within this many cells
    of the pixel are its negatives (not the other sampled pixels), so that neighbouring pixels learn to
    differ; 0: the sampled pixels only, in both directions."""
    multiview_loss_mult: float = 0.5
    """Cross-view InfoNCE: a pixel of one image lifted with the rendered depth and projected into
    another (0: off). It relies on the rendered depth: weigh it more with sensor depth than without."""
    multiview_occlusion_tol: float = 0.05
    """A projection is occluded when its depth differs from the depth rendered there by more than this share."""
    prototype_loss_mult: float = 0.1
    """Swapped prediction of Sinkhorn prototype assignments between the 2D and 3D features."""
    num_prototypes: int = 64
    """Number of learnable prototypes shared by both embeddings."""
    prototype_temperature: float = 0.1
    """Softmax temperature of the prototype predictions."""
    sinkhorn_epsilon: float = 0.05
    """Entropic regularisation of the Sinkhorn assignments."""
    sinkhorn_iterations: int = 3
    """Sinkhorn-Knopp iterations."""
    ranking_loss_mult: float = 0.1
    """Encoder feature closer to the 3D feature at the rendered surface than to features off it."""
    ranking_margin: float = 0.2
    """Similarity margin between the surface and the farthest sample of a ray."""
    plane_tv_loss_mult: float = 0.0
    """Total variation of the density and proposal tri-planes (K-Planes): smooths the geometry
    where few rays constrain it (0: off; no effect on hash grids)."""
    depth_loss_mult: float = 0.0
    """L1 between rendered and sensor z-depth, where the dataset has depth (0: off, the geometry comes
    from RGB alone, as in the method). For RGB-D captures: 0.2 with exact depth; smaller for noisy or
    unregistered depth cameras (7-Scenes)."""
    render_min_weight: float = 1e-4
    """Outside training (refinement, evaluation, the viewer), colour and features are evaluated only at
    samples whose rendering weight exceeds this; the rest add at most this much each to a ray (0:
    every sample). Most samples carry no weight, so renders are faster; 0 for exact renders."""
    geometry_warmup_steps: int = 300
    """The depth-dependent losses (multi-view, ranking) start once the geometry has had this many steps."""


class NifrModel(NerfactoModel):
    """Nerfacto's sampling and rendering with our field, a rendered feature per ray and no LPIPS."""

    config: NifrModelConfig

    def populate_modules(self) -> None:
        # Nerfacto's own populate_modules builds LPIPS, which downloads AlexNet weights: skip it.
        Model.populate_modules(self)
        cfg = self.config
        contraction = None if cfg.disable_scene_contraction else CubeContraction()
        self.field = NifrField(
            num_images=self.num_train_data,
            spatial_distortion=contraction,
            aabb=self.scene_box.aabb,
            density_encoding=cfg.density_encoding,
            feature_encoding=cfg.feature_encoding,
            feature_dim=cfg.feature_dim,
            hidden_dim=cfg.hidden_dim,
            hidden_dim_color=cfg.hidden_dim_color,
            hidden_dim_feature=cfg.hidden_dim_feature,
            appearance_embedding_dim=cfg.appearance_embed_dim if cfg.use_appearance_embedding else 0,
            use_average_appearance_embedding=cfg.use_average_appearance_embedding,
            geo_feature_grad_scale=cfg.geo_feature_grad_scale,
            average_init_density=cfg.average_init_density,
            implementation=cfg.implementation,
        )
        self.camera_optimizer = cfg.camera_optimizer.setup(num_cameras=self.num_train_data, device="cpu")
        self.proposal_networks = torch.nn.ModuleList(
            ProposalDensityField(
                cfg.proposal_encodings[min(i, len(cfg.proposal_encodings) - 1)],
                spatial_distortion=contraction,
                aabb=self.scene_box.aabb,
                average_init_density=cfg.average_init_density,
                implementation=cfg.implementation,
            )
            for i in range(1 if cfg.use_same_proposal_network else cfg.num_proposal_iterations)
        )
        self.density_fns = [
            self.proposal_networks[min(i, len(self.proposal_networks) - 1)].density_fn
            for i in range(cfg.num_proposal_iterations)
        ]

        def update_schedule(step: int) -> float:
            return float(np.clip(np.interp(step, [0, cfg.proposal_warmup], [0, cfg.proposal_update_every]), 1,
                                 cfg.proposal_update_every))

        self.proposal_sampler = ProposalNetworkSampler(
            num_nerf_samples_per_ray=cfg.num_nerf_samples_per_ray,
            num_proposal_samples_per_ray=cfg.num_proposal_samples_per_ray,
            num_proposal_network_iterations=cfg.num_proposal_iterations,
            single_jitter=cfg.use_single_jitter,
            update_sched=update_schedule,
            initial_sampler=UniformSampler(single_jitter=cfg.use_single_jitter)
            if cfg.proposal_initial_sampler == "uniform"
            else None,
        )
        if cfg.disable_scene_contraction:
            # a bounded scene: rays end where they leave the scene box, nothing lies beyond it
            self.collider = AABBBoxCollider(self.scene_box, near_plane=cfg.near_plane)
        else:
            self.collider = NearFarCollider(near_plane=cfg.near_plane, far_plane=cfg.far_plane)
        self.renderer_rgb = RGBRenderer(background_color=cfg.background_color)
        self.renderer_accumulation = AccumulationRenderer()
        self.renderer_depth = DepthRenderer(method="median")
        self.renderer_expected_depth = DepthRenderer(method="expected")
        self.rgb_loss = losses.RelativeMSELoss(cfg.rgb_loss_offset) if cfg.rgb_loss_offset > 0 else MSELoss()
        self.step = 0
        self.encoder = replace(cfg.encoder, feature_dim=cfg.feature_dim).setup()
        self.prototypes = Parameter(torch.randn(cfg.num_prototypes, cfg.feature_dim))
        self.feature_pca = FeaturePCA(cfg.feature_dim)

        from nerfstudio.viewer.viewer_elements import ViewerButton  # the viewer's GUI stack, only when built

        self.refresh_pca_button = ViewerButton(
            name="Refresh feature PCA colours", cb_hook=lambda _: self.feature_pca.reset()
        )

        from torchmetrics.functional import structural_similarity_index_measure
        from torchmetrics.image import PeakSignalNoiseRatio

        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = structural_similarity_index_measure

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        groups = super().get_param_groups()
        groups["encoder"] = list(self.encoder.parameters()) + [self.prototypes]
        return groups

    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor | List]:
        ray_samples, weights_list, ray_samples_list = self.proposal_sampler(ray_bundle, density_fns=self.density_fns)
        field_outputs, weights = self.sample_field(ray_samples)
        weights_list.append(weights)
        ray_samples_list.append(ray_samples)

        outputs: Dict[str, Tensor | List] = {
            "rgb": self.renderer_rgb(rgb=field_outputs[FieldHeadNames.RGB], weights=weights),
            "accumulation": self.renderer_accumulation(weights=weights),
            "expected_depth": self.renderer_expected_depth(weights=weights, ray_samples=ray_samples),
            # feature losses must not bend the geometry through the rendering weights
            "feature": render_features(field_outputs[FEATURE], weights.detach()),
        }
        # z-depth, along the optical axis as sensors measure it (the renderers give range along the ray)
        outputs["z_depth"] = outputs["expected_depth"][..., 0] / ray_bundle.metadata["directions_norm"][..., 0]
        with torch.no_grad():
            outputs["depth"] = self.renderer_depth(weights=weights, ray_samples=ray_samples)
        if not self.training:
            outputs["feature_pca"] = self.feature_pca(outputs["feature"])
            outputs["depth_spread"] = depth_spread(weights, ray_samples, outputs["expected_depth"])
        if self.training:
            outputs["weights_list"] = weights_list
            outputs["ray_samples_list"] = ray_samples_list
            # for the ranking loss: features along the ray and their distance to the surface
            outputs["sample_features"] = torch.nn.functional.normalize(field_outputs[FEATURE], dim=-1)
            t_mid = ((ray_samples.frustums.starts + ray_samples.frustums.ends) / 2)[..., 0]
            outputs["sample_distance"] = (t_mid - outputs["expected_depth"].detach()).abs()
            outputs["points"] = (ray_bundle.origins + ray_bundle.directions * outputs["expected_depth"]).detach()
        for i in range(self.config.num_proposal_iterations):
            outputs[f"prop_depth_{i}"] = self.renderer_depth(weights=weights_list[i], ray_samples=ray_samples_list[i])
        return outputs

    def sample_field(self, ray_samples: RaySamples) -> Tuple[Dict, Float[Tensor, "*bs 1"]]:
        """The field's outputs at the samples and their rendering weights; outside training, colour
        and features only where the weight exceeds ``render_min_weight``."""
        threshold = self.config.render_min_weight
        if self.training or not threshold > 0:
            outputs = self.field.forward(ray_samples)
            return outputs, ray_samples.get_weights(outputs[FieldHeadNames.DENSITY])
        density, geo_features = self.field.get_density(ray_samples)
        weights = ray_samples.get_weights(density)
        outputs = self.field.get_outputs_where(ray_samples, geo_features, weights[..., 0] > threshold)
        outputs[FieldHeadNames.DENSITY] = density
        return outputs, weights

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        loss_dict = super().get_loss_dict(outputs, batch, metrics_dict)
        if self.training and "full_images" in batch:
            loss_dict.update(self.feature_losses(outputs, batch))
        if self.training and self.config.plane_tv_loss_mult > 0:
            geometry = [self.field.mlp_base[0]] + [p.mlp_base[0] for p in self.proposal_networks]
            planes = [e for e in geometry if isinstance(e, MultiResTriplaneEncoding)]
            if planes:
                loss_dict["plane_tv_loss"] = self.config.plane_tv_loss_mult * sum(e.total_variation() for e in planes)
        if self.training and "depth" in batch and self.config.depth_loss_mult > 0:
            sensor = batch["depth"].to(self.device)
            loss_dict["depth_loss"] = self.config.depth_loss_mult * losses.depth_loss(outputs["z_depth"], sensor)
        return loss_dict

    def feature_losses(self, outputs: Dict, batch: Dict) -> Dict[str, Tensor]:
        """The self-supervised losses between rendered (3D) and encoder (2D) features.

        ``batch`` comes from :class:`~nifr_ns.datamanager.NifrDataManager`: G whole images
        and N pixels per image, the rays in image-major order.
        """
        cfg = self.config
        images = batch["full_images"].to(self.device)  # (G, H, W, 3)
        uv = batch["uv"].to(self.device)  # (G, N, 2)
        g, n = uv.shape[:2]
        hw = (images.shape[1], images.shape[2])
        levels = self.encoder(images.permute(0, 3, 1, 2))
        f3d = outputs["feature"].view(g, n, -1)
        f2d = [sample_features(level, uv, hw) for level in levels]  # coarse to fine, each (G, N, D)
        out = {
            "contrastive_loss": cfg.contrastive_loss_mult
            * sum(self.contrastive_loss(f3d, f, level, uv, hw) for f, level in zip(f2d, levels)) / len(f2d),
            "prototype_loss": cfg.prototype_loss_mult
            * losses.prototype_loss(
                f3d.reshape(g * n, -1),
                f2d[-1].reshape(g * n, -1),
                self.prototypes,
                cfg.prototype_temperature,
                cfg.sinkhorn_epsilon,
                cfg.sinkhorn_iterations,
            ),
        }
        if self.step < cfg.geometry_warmup_steps:
            return out
        distance = outputs["sample_distance"]
        out["ranking_loss"] = cfg.ranking_loss_mult * losses.ranking_loss(
            f2d[-1].reshape(g * n, -1),
            outputs["feature"],
            outputs["sample_features"],
            distance,
            cfg.ranking_margin,
            mask=distance > 0.02 * outputs["expected_depth"].detach(),
        )
        if g > 1 and cfg.multiview_loss_mult > 0:
            out["multiview_loss"] = cfg.multiview_loss_mult * self.multiview_loss(
                levels[-1], f3d, outputs["points"].view(g, n, 3), batch["cameras"], hw
            )
        return out

    def contrastive_loss(self, f3d: Tensor, f2d: Tensor, level: Tensor, uv: Tensor, hw: Tuple[int, int]) -> Tensor:
        """Symmetric pixel-aligned InfoNCE at one encoder level: (G, N, D) rendered and sampled
        encoder features, the (G, D, h, w) level itself and the (G, N, 2) pixels."""
        tau, radius = self.config.temperature, self.config.local_negatives_radius
        if radius == 0:
            return losses.info_nce(f3d, f2d, tau)
        local = losses.local_info_nce(f3d, level, uv, hw, tau, radius)
        return 0.5 * (losses.info_nce(f2d, f3d, tau, symmetric=False) + local)

    def multiview_loss(
        self, fine: Tensor, f3d: Tensor, points: Tensor, cameras: Cameras, hw: Tuple[int, int]
    ) -> Tensor:
        """Each image's lifted pixels against the next image's encoder features at their projections.

        Args:
            fine: (G, D, H, W) finest encoder level; f3d: (G, N, D) rendered features;
            points: (G, N, 3) lifted pixels (nerfstudio frame); cameras: the G cameras.
        """
        g = f3d.shape[0]
        other = torch.roll(torch.arange(g, device=self.device), -1)
        T_cw = torch.from_numpy(opengl_c2w_to_T_cw(cameras.camera_to_worlds.detach().cpu().numpy())).to(f3d)
        K = cameras.get_intrinsics_matrices().to(self.device)
        cameras_b = cameras[other]
        # one rendering for every pair's in-view projections: one per pair cost twice as much on a CPU
        uv_b, visible = losses.multiview_pairs(
            points, T_cw[other], K[other], hw, lambda uv, pair: self.render_z_depth(cameras_b, uv, pair),
            self.config.multiview_occlusion_tol,
        )
        enc_b = sample_features(fine[other], uv_b, hw)
        tau = self.config.temperature
        return sum(losses.multiview_loss(f3d[a], enc_b[a], visible[a], tau) for a in range(g)) / g

    @torch.no_grad()
    def render_z_depth(self, cameras: Cameras, uv: Tensor, camera_indices: Tensor) -> Tensor:
        """z-depth (along the optical axis) rendered at pixels ``uv`` (M, 2) of ``cameras[camera_indices]``
        (M,); geometry only."""
        if len(uv) == 0:
            return uv.new_zeros(0)
        rays = self.collider(cameras.generate_rays(camera_indices=camera_indices[:, None], coords=uv.flip(-1)))
        samples, _, _ = self.proposal_sampler(rays, density_fns=self.density_fns)
        density, _ = self.field.get_density(samples)
        depth = self.renderer_expected_depth(weights=samples.get_weights(density), ray_samples=samples)[..., 0]
        optical_axes = -cameras.camera_to_worlds[camera_indices, :, 2]  # OpenGL cameras look down -z
        return depth * (rays.directions * optical_axes).sum(dim=-1)

    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        gt_rgb = self.renderer_rgb.blend_background(batch["image"].to(self.device))
        predicted_rgb = outputs["rgb"]
        gt = torch.moveaxis(gt_rgb, -1, 0)[None]
        pred = torch.moveaxis(predicted_rgb, -1, 0)[None]
        metrics = {"psnr": float(self.psnr(gt, pred).item()), "ssim": float(self.ssim(gt, pred))}
        with torch.no_grad():
            fine = self.encoder(gt)[-1][0]
        metrics.update(match_accuracy(fine, outputs["feature"]))
        if "depth" in batch:
            metrics["depth_rel_error"] = depth_rel_error(outputs["z_depth"], batch["depth"].to(self.device))
        images = {
            "feature_pca": torch.cat([self.feature_pca(fine.permute(1, 2, 0)), outputs["feature_pca"]], dim=1),
            "img": torch.cat([gt_rgb, predicted_rgb], dim=1),
            "accumulation": colormaps.apply_colormap(outputs["accumulation"]),
            "depth": colormaps.apply_depth_colormap(outputs["depth"], accumulation=outputs["accumulation"]),
        }
        return metrics, images


def depth_spread(weights: Tensor, ray_samples: RaySamples, expected_depth: Tensor) -> Tensor:
    """Standard deviation of the distance along each ray under its rendering weights (..., S, 1),
    relative to their mean, the (..., 1) expected depth: how sharply the ray ends on a surface, (..., 1).

    A diffuse spread marks geometry that RGB alone has not pinned down: on the default scene's
    held-out views (nifr-small, RGB), pixels with spread under 0.023 have a median depth error of
    0.8 %, those over 0.13, 6-9 %."""
    t = (ray_samples.frustums.starts + ray_samples.frustums.ends) / 2
    variance = (weights * (t - expected_depth[..., None, :]).square()).sum(dim=-2) / weights.sum(dim=-2).clamp_min(1e-8)
    return variance.sqrt() / expected_depth.clamp_min(1e-8)


def render_features(features: Tensor, weights: Tensor) -> Tensor:
    """Volumetric rendering of per-sample features, L2-normalised.

    Args:
        features: (..., S, D) per-sample features.
        weights: (..., S, 1) rendering weights.
    Returns:
        (..., D) unit-norm features.
    """
    return torch.nn.functional.normalize((weights * features).sum(dim=-2), dim=-1)
