"""Pictures of features: a PCA colouring that stays fixed once fitted.

The viewer and the refinement report colour D-dim features by their first three
principal components; fitting once (and refitting only on request) keeps the colours of
a surface the same from frame to frame and between images.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn


class FeaturePCA(nn.Module):
    """Projects features on 3 principal components and maps them to [0, 1] with fixed ranges."""

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        # not persistent: a checkpoint does not depend on what the viewer looked at
        self.register_buffer("mean", torch.zeros(feature_dim), persistent=False)
        self.register_buffer("basis", torch.zeros(feature_dim, 3), persistent=False)
        self.register_buffer("low", torch.zeros(3), persistent=False)
        self.register_buffer("high", torch.ones(3), persistent=False)
        self.fitted = False

    def reset(self) -> None:
        """Forget the fit: the next call refits on the features it is given."""
        self.fitted = False

    @torch.no_grad()
    def fit(self, features: Float[Tensor, "N D"]) -> None:
        features = features.reshape(-1, features.shape[-1]).float()
        self.mean = features.mean(dim=0)
        _, _, v = torch.linalg.svd(features - self.mean, full_matrices=False)
        self.basis = v[:3].T.contiguous()
        projected = (features - self.mean) @ self.basis
        # robust ranges: a few outliers must not wash out the colours
        self.low = torch.quantile(projected, 0.01, dim=0)
        self.high = torch.quantile(projected, 0.99, dim=0)
        self.fitted = True

    @torch.no_grad()
    def forward(self, features: Float[Tensor, "*bs D"]) -> Float[Tensor, "*bs 3"]:
        if not self.fitted:
            self.fit(features)
        projected = (features.float() - self.mean) @ self.basis
        return ((projected - self.low) / (self.high - self.low).clamp_min(1e-6)).clamp(0.0, 1.0)
