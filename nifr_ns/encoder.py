"""The 2D image encoder: a small CNN, trained from scratch, that maps an image to a
coarse-to-fine pyramid of dense, L2-normalised feature maps living in the same space
as the rendered 3D features. Owns its photometric training augmentation and the
bilinear sampling of a level at continuous pixel coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Tuple, Type

import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.configs.base_config import InstantiateConfig
from torch import Tensor, nn


@dataclass
class PhotometricAugmentationConfig:
    """Random per-image appearance changes applied to the encoder input while training, so
    that features learned from one capture stay stable under other lighting."""

    enabled: bool = True
    """Master switch; augmentation is never applied in eval mode whatever this says."""
    max_log_gain: float = 0.5
    """Exposure gain drawn as exp(U(-x, x))."""
    max_log_gamma: float = 0.4
    """Gamma drawn as exp(U(-x, x))."""
    colour_cast: float = 0.1
    """Per-channel gain drawn as exp(U(-x, x)), a white-balance shift."""
    max_noise_std: float = 0.02
    """Additive Gaussian noise with a standard deviation drawn from U(0, x)."""
    max_vignetting: float = 0.3
    """Brightness loss at the image corners drawn from U(0, x)."""
    blur_probability: float = 0.2
    """Chance that an image is slightly blurred (3x3 Gaussian, sigma 0.5 to 1)."""


def photometric_augment(
    images: Float[Tensor, "B 3 H W"], config: PhotometricAugmentationConfig
) -> Float[Tensor, "B 3 H W"]:
    """Returns a randomly re-lit copy of ``images`` (values in [0, 1]), one draw per image."""
    batch, _, height, width = images.shape

    def uniform(*shape: int, low: float, high: float) -> Tensor:
        return torch.empty(*shape, device=images.device, dtype=images.dtype).uniform_(low, high)

    gain = uniform(batch, 1, 1, 1, low=-config.max_log_gain, high=config.max_log_gain).exp()
    cast = uniform(batch, 3, 1, 1, low=-config.colour_cast, high=config.colour_cast).exp()
    gamma = uniform(batch, 1, 1, 1, low=-config.max_log_gamma, high=config.max_log_gamma).exp()
    out = (images * gain * cast).clamp(0.0, 1.0) ** gamma

    ys = torch.linspace(-1.0, 1.0, height, device=images.device, dtype=images.dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=images.device, dtype=images.dtype)
    radius2 = (ys[:, None] ** 2 + xs[None, :] ** 2) / 2.0  # 1 at the corners
    out = out * (1.0 - uniform(batch, 1, 1, 1, low=0.0, high=config.max_vignetting) * radius2)

    blurred = torch.rand(batch, device=images.device) < config.blur_probability
    if blurred.any():
        sigma = uniform(batch, low=0.5, high=1.0)
        out = torch.where(blurred[:, None, None, None], _gaussian_blur3(out, sigma), out)

    noise_std = uniform(batch, 1, 1, 1, low=0.0, high=config.max_noise_std)
    return (out + noise_std * torch.randn_like(out)).clamp(0.0, 1.0)


def _gaussian_blur3(images: Float[Tensor, "B C H W"], sigma: Float[Tensor, " B"]) -> Float[Tensor, "B C H W"]:
    """3x3 Gaussian blur with one sigma per image, as a single grouped convolution."""
    batch, channels, height, width = images.shape
    offsets = torch.tensor([-1.0, 0.0, 1.0], device=images.device, dtype=images.dtype)
    taps = torch.softmax(-(offsets**2) / (2 * sigma[:, None] ** 2), dim=1)  # normalised Gaussian
    kernels = (taps[:, :, None] * taps[:, None, :]).repeat_interleave(channels, dim=0)[:, None]
    padded = F.pad(images.reshape(1, batch * channels, height, width), (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, kernels, groups=batch * channels).reshape(batch, channels, height, width)


@dataclass
class ImageEncoderConfig(InstantiateConfig):
    """Configuration of :class:`ImageEncoder`."""

    _target: Type = field(default_factory=lambda: ImageEncoder)
    feature_dim: int = 32
    """D, the dimension of the features (must match the feature field's)."""
    base_channels: int = 32
    """Width at stride 2; halved at full resolution, doubled at each coarser stride."""
    strides: Tuple[int, ...] = (4, 2, 1)
    """Output levels, coarse to fine, as powers of two relative to the input size."""
    augment: PhotometricAugmentationConfig = field(default_factory=PhotometricAugmentationConfig)
    """Photometric augmentation of the input in training mode."""


def _conv_block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    # GroupNorm normalises per image, so eval equals train (no running statistics) and a
    # global exposure change is largely normalised away.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(math.gcd(8, out_channels), out_channels),
        nn.ReLU(inplace=True),
    )


def _fit_to_image(fmap: Float[Tensor, "B D hp wp"], stride: int, height: int, width: int) -> Float[Tensor, "B D h w"]:
    """Cuts a level computed on the padded image down to the part covering the image.

    When the image size is a multiple of the stride this is an exact crop. Otherwise the image
    ends inside a level pixel, and a crop would stretch the level past the image border by up
    to one level pixel (a scale error for pose refinement); the level is then resampled so that
    its ceil(H/s) x ceil(W/s) pixels cover exactly the image.
    """
    out_h, out_w = -(-height // stride), -(-width // stride)
    if height % stride == 0 and width % stride == 0:
        return fmap[..., :out_h, :out_w]
    padded_h, padded_w = fmap.shape[-2] * stride, fmap.shape[-1] * stride
    # Maps the output's normalised coordinates [-1, 1] onto the image's part of the padded level.
    sx, sy = width / padded_w, height / padded_h
    theta = fmap.new_tensor([[sx, 0.0, sx - 1.0], [0.0, sy, sy - 1.0]])
    grid = F.affine_grid(theta.expand(fmap.shape[0], 2, 3), [fmap.shape[0], 1, out_h, out_w], align_corners=False)
    return F.grid_sample(fmap, grid, mode="bilinear", padding_mode="border", align_corners=False)


class ImageEncoder(nn.Module):
    """A U-Net-like feature pyramid network.

    The encoder halves the resolution down to twice the coarsest output stride (one extra
    level for context); the decoder goes back up, FPN-style (1x1 projection, bilinear
    upsampling, skip addition, 3x3 block), down to the finest output stride, with a 1x1
    head on each output level.
    """

    def __init__(self, config: ImageEncoderConfig) -> None:
        super().__init__()
        self.config = config
        strides = tuple(config.strides)
        powers_of_two = all(s >= 1 and s & (s - 1) == 0 for s in strides)
        if not strides or not powers_of_two or list(strides) != sorted(set(strides), reverse=True):
            raise ValueError(f"strides must be distinct powers of two, coarse to fine; got {strides}")
        self.output_levels = [int(math.log2(s)) for s in strides]
        num_levels = self.output_levels[0] + 2
        self.pad_multiple = 2 ** (num_levels - 1)

        width = config.base_channels
        channels = [width // 2] + [width * 2**k for k in range(num_levels - 1)]
        self.down = nn.ModuleList([_conv_block(3, channels[0])])
        for k in range(1, num_levels):
            down = _conv_block(channels[k - 1], channels[k], stride=2)
            self.down.append(nn.Sequential(down, _conv_block(channels[k], channels[k])))
        decoded = range(self.output_levels[-1], num_levels - 1)
        self.lateral = nn.ModuleDict({str(k): nn.Conv2d(channels[k + 1], channels[k], 1) for k in decoded})
        self.fuse = nn.ModuleDict({str(k): _conv_block(channels[k], channels[k]) for k in decoded})
        self.heads = nn.ModuleDict({str(k): nn.Conv2d(channels[k], config.feature_dim, 1) for k in self.output_levels})

    def forward(self, images: Float[Tensor, "B 3 H W"]) -> List[Float[Tensor, "B D h w"]]:
        """Encodes images with values in [0, 1].

        Returns one map per configured stride s, coarse to fine, of shape
        (B, D, ceil(H/s), ceil(W/s)), unit-norm over D. Every level covers exactly the image
        extent, so :func:`sample_features` can index any level with full-resolution pixel
        coordinates.
        """
        if self.training and self.config.augment.enabled:
            images = photometric_augment(images, self.config.augment)
        height, width = images.shape[-2:]
        pad_h, pad_w = -height % self.pad_multiple, -width % self.pad_multiple
        x = F.pad(images * 2.0 - 1.0, (0, pad_w, 0, pad_h), mode="replicate")

        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        outputs = {}
        for k in range(len(skips) - 2, self.output_levels[-1] - 1, -1):
            x = F.interpolate(self.lateral[str(k)](x), size=skips[k].shape[-2:], mode="bilinear", align_corners=False)
            x = self.fuse[str(k)](x + skips[k])
            if k in self.output_levels:
                outputs[k] = normalize_channels(_fit_to_image(self.heads[str(k)](x), 2**k, height, width))
        return [outputs[k] for k in self.output_levels]


def normalize_channels(fmap: Float[Tensor, "B D h w"]) -> Float[Tensor, "B D h w"]:
    """Unit-norm over D, as ``F.normalize(fmap, dim=1)``; twice as fast on a CPU, where the
    norm's strided reduction over channels made it a fifth of the encoder's training step."""
    return fmap * torch.rsqrt((fmap * fmap).sum(dim=1, keepdim=True).clamp_min(1e-24))


def sample_features(
    fmap: Float[Tensor, "B D h w"], uv: Float[Tensor, "B N 2"], image_hw: Tuple[int, int]
) -> Float[Tensor, "B N D"]:
    """Bilinearly samples a level at continuous pixel coordinates of the full-resolution image.

    ``uv`` follows the pixel-centre convention (pixel (i, j) is centred at (j + 0.5, i + 0.5));
    ``image_hw`` is the (H, W) of the full image, which every level covers. Points outside
    take the border value. The samples are re-normalised to unit length.
    """
    height, width = image_hw
    scale = uv.new_tensor([2.0 / width, 2.0 / height])
    grid = (uv * scale - 1.0)[:, None]  # (B, 1, N, 2)
    sampled = F.grid_sample(fmap, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return F.normalize(sampled[:, :, 0].transpose(1, 2), dim=-1)
