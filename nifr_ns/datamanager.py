"""Training batches for the contrastive losses: whole images plus pixel groups per image.

Each batch holds a few overlapping training images (an anchor and some of its nearest
views), whole, for the image encoder, and a group of random pixels per image whose rays
are rendered. Pixels of one image are each other's negatives; the other images of the
batch give the cross-view pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple, Type

import torch
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig


@dataclass
class NifrDataManagerConfig(VanillaDataManagerConfig):
    """Groups of pixels from a few overlapping images per batch."""

    _target: Type = field(default_factory=lambda: NifrDataManager)
    images_per_batch: int = 4
    """Images per batch (the anchor and images drawn from its nearest views)."""
    neighbour_pool: int = 6
    """The other images of a batch are drawn from the anchor's this many nearest views."""
    # the total number of rays stays train_num_rays_per_batch, split evenly between the images


class NifrDataManager(VanillaDataManager):
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
        n = self.pixels_per_image
        y = torch.randint(h, (g, n), generator=self.generator)
        x = torch.randint(w, (g, n), generator=self.generator)
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
        return ray_bundle, batch


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
