"""Random augmentation of the training split (never applied to validation or test).

Two forms with the same transforms: per sample (`train_transform`, on a dataset's items) and per
batch on the device (`batch_train_transform`, what the training loop uses: one kernel per transform
for the whole batch, with per-sample random parameters, instead of a Python call per sample).

Image transforms work on (C, H, W) tensors in [0, 1] before normalisation, so padding
is black and brightness is a real brightness; gaussian noise is added after normalisation.
Randomness comes from `generator` (per sample: torch's global generator when None, which
`seed_everything` and DataLoader workers seed; per batch: a generator on the batch's device).
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


# ----------------------------------------------------------------------------- per batch, on the device


def flip_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each (N, C, H, W) image left-right with probability 0.5."""
    flip = torch.rand(len(x), generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def crop_batch(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad every image by `padding` and cut each back out at its own random offset."""
    n, _, height, width = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=x.device)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=x.device)
    rows = (top[:, None] + torch.arange(height, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (left[:, None] + torch.arange(width, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def rotate_batch(x: torch.Tensor, max_degrees: float, generator: torch.Generator) -> torch.Tensor:
    """Rotate each image about its centre by a random angle in [-max_degrees, max_degrees]; black corners."""
    return rotate_by(x, (2 * torch.rand(len(x), generator=generator, device=x.device) - 1) * max_degrees)


def rotate_by(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate image i of an (N, C, H, W) batch by degrees[i] about its centre, as `rotate` does one."""
    angle = degrees.to(torch.float64).deg2rad()
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def jitter_batch(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Per image: scale brightness, then stretch contrast about its mean, by up to `strength`; stays in [0, 1]."""
    shape = (len(x), 1, 1, 1)
    brightness = 1 + (2 * torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype) - 1) * strength
    contrast = 1 + (2 * torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype) - 1) * strength
    x = x * brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean).clamp(0.0, 1.0)


def noise_batch(x: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    return x + torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * std


class BatchTrainTransform:
    """The training split's augmentation for whole batches on their device: pixel-space transforms
    (images), normalisation, noise. `to(device)` once; then `transform(x, generator)` per batch."""

    def __init__(self, spec: AugmentationSpec, *, image: bool, normalize: ChannelNormalize | None = None) -> None:
        self.spec, self.image = spec, image
        self.center = self.scale = None
        if normalize is not None:
            self.center, self.scale = normalize.center[None], normalize.scale[None]  # (1, C, 1, 1)

    def to(self, device: torch.device) -> BatchTrainTransform:
        if self.center is not None:
            self.center, self.scale = self.center.to(device), self.scale.to(device)
        return self

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        spec = self.spec
        if self.image:
            if spec.horizontal_flip:
                x = flip_batch(x, generator)
            if spec.random_crop:
                x = crop_batch(x, spec.random_crop, generator)
            if spec.rotation:
                x = rotate_batch(x, spec.rotation, generator)
            if spec.color_jitter:
                x = jitter_batch(x, spec.color_jitter, generator)
            if self.center is not None:
                x = (x - self.center) / self.scale
        return noise_batch(x, spec.gaussian_noise, generator) if spec.gaussian_noise else x


def batch_train_transform(
    spec: AugmentationSpec, *, image: bool, normalize: ChannelNormalize | None = None
) -> BatchTrainTransform | None:
    """The per-batch transform of the training split, or None when nothing is random (then the
    split is stored normalised, as validation and test are)."""
    if (image and image_augmentation_enabled(spec)) or (not image and table_augmentation_enabled(spec)):
        return BatchTrainTransform(spec, image=image, normalize=normalize if image else None)
    return None
