"""Random augmentation of single training samples (never applied to validation or test).

Image transforms work on (C, H, W) tensors in [0, 1] before normalisation, so padding
is black and brightness is a real brightness; gaussian noise is added after normalisation.
Randomness comes from `generator` (torch's global generator when None, which
`seed_everything` and DataLoader workers seed).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from kiln_api.spec import AugmentationSpec

Transform = Callable[[torch.Tensor], torch.Tensor]


def image_augmentation_enabled(spec: AugmentationSpec) -> bool:
    return bool(spec.horizontal_flip or spec.random_crop or spec.rotation or spec.color_jitter or spec.gaussian_noise)


def table_augmentation_enabled(spec: AugmentationSpec) -> bool:
    return spec.gaussian_noise > 0


def augment_image(img: torch.Tensor, spec: AugmentationSpec, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip, pad-and-crop, rotate and jitter one (C, H, W) image, each as configured."""
    if spec.horizontal_flip and _uniform(generator) < 0.5:
        img = img.flip(-1)
    if spec.random_crop:
        img = random_crop(img, spec.random_crop, generator)
    if spec.rotation:
        img = rotate(img, (2 * _uniform(generator) - 1) * spec.rotation)
    if spec.color_jitter:
        img = jitter(img, 1 + (2 * _uniform(generator) - 1) * spec.color_jitter, 1 + (2 * _uniform(generator) - 1) * spec.color_jitter)
    return img


def random_crop(img: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by `padding` on every side and cut the original size back out at a random offset."""
    _, height, width = img.shape
    padded = F.pad(img, (padding, padding, padding, padding))
    top = int(torch.randint(0, 2 * padding + 1, (1,), generator=generator))
    left = int(torch.randint(0, 2 * padding + 1, (1,), generator=generator))
    return padded[:, top : top + height, left : left + width]


def rotate(img: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate about the centre; corners that come from outside the image are black."""
    angle = math.radians(degrees)
    theta = torch.tensor(
        [[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0]], dtype=img.dtype
    )
    grid = F.affine_grid(theta[None], [1, *img.shape], align_corners=False)
    return F.grid_sample(img[None], grid, align_corners=False, padding_mode="zeros")[0]


def jitter(img: torch.Tensor, brightness: float, contrast: float) -> torch.Tensor:
    """Scale brightness, then stretch contrast about the mean; stays within [0, 1]."""
    img = img * brightness
    mean = img.mean()
    return ((img - mean) * contrast + mean).clamp(0.0, 1.0)


def add_noise(x: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    return x + torch.randn(x.shape, generator=generator, dtype=x.dtype) * std


class ImageTrainTransform:
    """Pixel-space augmentation -> normalisation -> noise. A class, not a closure, so it pickles
    into DataLoader worker processes."""

    def __init__(self, spec: AugmentationSpec, normalize: Transform | None, generator: torch.Generator | None) -> None:
        self.spec, self.normalize, self.generator = spec, normalize, generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = augment_image(x, self.spec, self.generator)
        if self.normalize is not None:
            x = self.normalize(x)
        return add_noise(x, self.spec.gaussian_noise, self.generator) if self.spec.gaussian_noise else x


class NoiseTransform:
    def __init__(self, std: float, generator: torch.Generator | None) -> None:
        self.std, self.generator = std, generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return add_noise(x, self.std, self.generator)


class ChannelNormalize:
    """(x - center) / scale per channel of a (C, H, W) image."""

    def __init__(self, center: torch.Tensor, scale: torch.Tensor) -> None:
        self.center, self.scale = center.reshape(-1, 1, 1), scale.reshape(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.center) / self.scale


def train_transform(
    spec: AugmentationSpec, *, image: bool, normalize: Transform | None = None, generator: torch.Generator | None = None
) -> Transform | None:
    """The per-sample transform of the training split, or None when nothing is random.

    For images `normalize` runs between the pixel-space augmentations and the noise.
    """
    if image and image_augmentation_enabled(spec):
        return ImageTrainTransform(spec, normalize, generator)
    if not image and table_augmentation_enabled(spec):
        return NoiseTransform(spec.gaussian_noise, generator)
    return None


def _uniform(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))
