"""Tests of the image encoder in nifr_ns.encoder."""

import pytest
import torch

from nifr_ns.encoder import (
    ImageEncoder,
    ImageEncoderConfig,
    PhotometricAugmentationConfig,
    _fit_to_image,
    photometric_augment,
    sample_features,
)


@pytest.fixture(autouse=True)
def seed() -> None:
    torch.manual_seed(0)


def tiny_encoder(augment: bool = True) -> ImageEncoder:
    config = ImageEncoderConfig(feature_dim=8, base_channels=8, augment=PhotometricAugmentationConfig(enabled=augment))
    return config.setup()


@pytest.mark.parametrize("height, width", [(48, 64), (50, 70), (27, 33)])
def test_levels_are_coarse_to_fine_unit_norm_maps_of_any_image_size(height: int, width: int) -> None:
    encoder = tiny_encoder().eval()
    levels = encoder(torch.rand(2, 3, height, width))
    assert len(levels) == len(encoder.config.strides)
    for fmap, stride in zip(levels, encoder.config.strides):
        assert fmap.shape == (2, 8, -(-height // stride), -(-width // stride))
        torch.testing.assert_close(fmap.norm(dim=1), torch.ones(2, *fmap.shape[-2:]))


def test_rejects_strides_that_are_not_powers_of_two_coarse_to_fine() -> None:
    for strides in [(3, 1), (1, 2, 4), (2, 2)]:
        with pytest.raises(ValueError):
            ImageEncoderConfig(strides=strides).setup()


def test_eval_is_deterministic_and_unaugmented() -> None:
    encoder = tiny_encoder(augment=True)
    images = torch.rand(2, 3, 40, 48)
    encoder.eval()
    first, second = encoder(images), encoder(images)
    encoder.config.augment.enabled = False
    encoder.train()  # with augmentation off, training mode must compute the same function
    plain = encoder(images)
    for a, b, c in zip(first, second, plain):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c)


def test_train_mode_augments_at_random() -> None:
    encoder = tiny_encoder(augment=True).train()
    images = torch.rand(2, 3, 40, 48)
    assert not torch.allclose(encoder(images)[-1], encoder(images)[-1])


def test_photometric_augment_draws_per_image_and_stays_in_range() -> None:
    images = torch.rand(1, 3, 20, 24).expand(4, -1, -1, -1)
    augmented = photometric_augment(images, PhotometricAugmentationConfig(blur_probability=0.5))
    assert augmented.shape == images.shape
    assert augmented.min() >= 0 and augmented.max() <= 1
    for i in range(1, 4):
        assert not torch.allclose(augmented[0], augmented[i])


def test_sample_features_at_pixel_centres_returns_the_map_values() -> None:
    height, width = 50, 70
    levels = tiny_encoder().eval()(torch.rand(2, 3, height, width))
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    uv = torch.stack([cols, rows], dim=-1).reshape(1, -1, 2).expand(2, -1, -1) + 0.5
    sampled = sample_features(levels[-1], uv.float(), (height, width))
    torch.testing.assert_close(sampled, levels[-1].flatten(2).transpose(1, 2))


def test_sample_features_reads_a_coarse_level_at_its_pixel_centres() -> None:
    height, width, stride = 48, 64, 4
    coarse = tiny_encoder().eval()(torch.rand(1, 3, height, width))[0]
    rows, cols = torch.meshgrid(torch.arange(height // stride), torch.arange(width // stride), indexing="ij")
    uv = (torch.stack([cols, rows], dim=-1).reshape(1, -1, 2) + 0.5) * stride
    torch.testing.assert_close(sample_features(coarse, uv.float(), (height, width)), coarse.flatten(2).transpose(1, 2))


def test_sample_features_between_centres_are_unit_vectors() -> None:
    coarse = tiny_encoder().eval()(torch.rand(1, 3, 48, 64))[0]
    uv = torch.rand(1, 50, 2) * torch.tensor([64.0, 48.0])
    torch.testing.assert_close(sample_features(coarse, uv, (48, 64)).norm(dim=-1), torch.ones(1, 50))


@pytest.mark.parametrize("height, width", [(50, 70), (52, 68), (48, 64)])
def test_every_level_covers_exactly_the_image(height: int, width: int) -> None:
    # A level computed on the padded image whose value is the image-pixel u (channel 0) and v
    # (channel 1) of each level pixel centre; after fitting, pixel centres must read the u, v of
    # an evenly spaced grid spanning [0, W] x [0, H] (except the first row and column, whose
    # centres may lie within half a level pixel of the border, where values are clamped).
    stride, padded_h, padded_w = 4, 56, 72
    rows, cols = torch.meshgrid(torch.arange(padded_h // stride), torch.arange(padded_w // stride), indexing="ij")
    ramp = (torch.stack([cols, rows])[None].float() + 0.5) * stride
    fitted = _fit_to_image(ramp, stride, height, width)
    out_h, out_w = fitted.shape[-2:]
    expected_u = (torch.arange(out_w) + 0.5) * width / out_w
    expected_v = (torch.arange(out_h) + 0.5) * height / out_h
    torch.testing.assert_close(fitted[0, 0, 1:, 1:], expected_u[1:].expand(out_h - 1, -1))
    torch.testing.assert_close(fitted[0, 1, 1:, 1:], expected_v[1:, None].expand(-1, out_w - 1))


def test_gradients_reach_every_encoder_parameter() -> None:
    encoder = tiny_encoder().train()
    levels = encoder(torch.rand(2, 3, 32, 40))
    uv = torch.rand(2, 16, 2) * torch.tensor([40.0, 32.0])
    targets = torch.nn.functional.normalize(torch.randn(2, 16, 8), dim=-1)
    loss = sum(-(sample_features(fmap, uv, (32, 40)) * targets).sum() for fmap in levels)
    loss.backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
