"""Training batches for the contrastive losses: whole images plus pixel groups per image.

Each batch holds a few overlapping training images (an anchor and some of its nearest
views), whole, for the image encoder, and a group of pixels per image (in small clusters)
whose rays are rendered. Pixels of one image are each other's negatives; the other images
of the batch give the cross-view pairs. When the dataset has depth maps (the synthetic
scene, 7-Scenes), every image comes with its depth: the sampled pixels' for the optional
depth loss, the held-out views' for the depth-error metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple, Type

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from nerfstudio.data.datasets.base_dataset import InputDataset


class SensorDepthDataset(InputDataset):
    """nerfstudio's image dataset plus each image's sensor z-depth where the dataparser lists depth
    files (nerfstudio's DepthDataset would estimate missing depth with a downloaded network)."""

    def __init__(self, dataparser_outputs: DataparserOutputs, scale_factor: float = 1.0) -> None:
        super().__init__(dataparser_outputs, scale_factor)
        meta = dataparser_outputs.metadata
        self.depth_filenames = meta.get("depth_filenames") or None
        self.depth_scale = meta.get("depth_unit_scale_factor", 1e-3) * dataparser_outputs.dataparser_scale

    def get_metadata(self, data: Dict) -> Dict:
        if self.depth_filenames is None:
            return {}
        filename = self.depth_filenames[data["image_idx"]]
        height, width = data["image"].shape[:2]
        with Image.open(filename) as depth_image:
            if self.scale_factor != 1.0:  # the images were resized by camera_res_scale_factor
                depth_image = depth_image.resize((width, height), Image.NEAREST)
            depth = np.asarray(depth_image, dtype=np.float32) * self.depth_scale
        if depth.shape != (height, width):
            raise ValueError(f"{filename}: depth is {depth.shape[1]}x{depth.shape[0]}, its image {width}x{height}")
        return {"depth": torch.from_numpy(depth)}


@dataclass
class NifrDataManagerConfig(VanillaDataManagerConfig):
    """Groups of pixels from a few overlapping images per batch."""

    _target: Type = field(default_factory=lambda: NifrDataManager)
    images_per_batch: int = 4
    """Images per batch (the anchor and images drawn from its nearest views)."""
    neighbour_pool: int = 6
    """The other images of a batch are drawn from the anchor's this many nearest views."""
    cluster_size: int = 1
    """Pixels are drawn in clusters of this many around random centres (1: independently), so
    every pixel has negatives a few pixels away that teach the features to tell neighbours apart;
    clusters also mean fewer distinct rays per batch for the geometry."""
    cluster_radius: int = 4
    """Largest offset (pixels) of a cluster's pixels from its centre."""
    # the total number of rays stays train_num_rays_per_batch, split evenly between the images


class NifrDataManager(VanillaDataManager[SensorDepthDataset]):
    """VanillaDataManager whose training batches are per-image pixel groups with their images."""

    config: NifrDataManagerConfig

    def setup_train(self) -> None:
        super().setup_train()
        images = next(self.iter_train_image_dataloader)
        if not isinstance(images["image"], Tensor):
            raise ValueError("nifr needs training images of one size (the encoder batches whole images)")
        self.train_images: Tensor = images["image"][..., :3]  # (N, H, W, 3)
        self.train_image_idx: Tensor = images["image_idx"]  # (N,) dataset index of each cached image
        self.neighbours = nearest_views(self.train_dataset.cameras.camera_to_worlds[self.train_image_idx])
        self.generator = torch.Generator().manual_seed(0)
        self.train_depths: Tensor | None = images.get("depth")  # (N, H, W) z-depth, 0 = unknown

    @property
    def pixels_per_image(self) -> int:
        return self.config.train_num_rays_per_batch // self.config.images_per_batch

    def sample_images(self) -> Tensor:
        """Positions (in the cache) of an anchor image and of others drawn among its nearest views."""
        n = len(self.train_images)
        g = min(self.config.images_per_batch, n)
        anchor = torch.randint(n, (1,), generator=self.generator)
        pool = self.neighbours[anchor[0], : max(self.config.neighbour_pool, g - 1)]
        others = pool[torch.randperm(len(pool), generator=self.generator)[: g - 1]]
        return torch.cat([anchor, others])

    def next_train(self, step: int) -> Tuple[RayBundle, Dict]:
        self.train_count += 1
        which = self.sample_images()
        images = self.train_images[which]
        g, h, w = images.shape[:3]
        y, x = self.sample_pixels(g, h, w)
        n = y.shape[1]
        camera_idx = self.train_image_idx[which].long()
        indices = torch.stack([camera_idx[:, None].expand(g, n), y, x], dim=-1).reshape(-1, 3)
        ray_bundle = self.train_ray_generator(indices.to(self.device))
        batch = {
            "image": images[torch.arange(g)[:, None], y, x].reshape(-1, 3),
            "indices": indices,
            "full_images": images,
            "uv": torch.stack([x, y], dim=-1).float() + 0.5,  # (G, N, 2) pixel centres
            "cameras": self.train_dataset.cameras[camera_idx].to(self.device),
        }
        if self.train_depths is not None:
            batch["depth"] = self.train_depths[which][torch.arange(g)[:, None], y, x].reshape(-1)
        return ray_bundle, batch

    def sample_pixels(self, g: int, h: int, w: int) -> Tuple[Tensor, Tensor]:
        """(G, N) rows and columns: clusters of pixels around random centres."""
        size, r = self.config.cluster_size, self.config.cluster_radius
        clusters = max(1, self.pixels_per_image // size)
        centre_y = torch.randint(h, (g, clusters, 1), generator=self.generator)
        centre_x = torch.randint(w, (g, clusters, 1), generator=self.generator)
        offsets = torch.randint(-r, r + 1, (2, g, clusters, size), generator=self.generator)
        offsets[:, :, :, 0] = 0  # the centre itself
        y = (centre_y + offsets[0]).clamp(0, h - 1).reshape(g, -1)
        x = (centre_x + offsets[1]).clamp(0, w - 1).reshape(g, -1)
        return y, x


def nearest_views(c2w: Tensor) -> Tensor:
    """For each camera, the others ordered by closeness of centre and viewing direction.

    Args:
        c2w: (N, 3, 4) camera-to-world poses.
    Returns:
        (N, N-1) indices.
    """
    centres = c2w[:, :, 3]
    axes = c2w[:, :, 2]  # viewing direction up to sign, the same for all cameras
    spread = torch.cdist(centres, centres).mean().clamp_min(1e-6)
    cost = torch.cdist(centres, centres) / spread + (1.0 - axes @ axes.T)
    cost.fill_diagonal_(float("inf"))
    return cost.argsort(dim=1)[:, :-1]
