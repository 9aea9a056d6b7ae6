"""Augmentation changes training samples and never validation or test samples."""

from __future__ import annotations

import pickle

import pytest
import torch
from kiln_api.spec import AugmentationSpec, DataSpec
from kiln_trainer.data import load_data
from kiln_trainer.data.augmentation import add_noise, augment_image, jitter, random_crop, rotate


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ramp(channels: int = 1, size: int = 6) -> torch.Tensor:
    return torch.arange(channels * size * size, dtype=torch.float32).reshape(channels, size, size) / (channels * size * size)


def test_horizontal_flip_flips_about_half_the_time() -> None:
    img, g = ramp(), gen()
    outs = [augment_image(img, AugmentationSpec(horizontal_flip=True), g) for _ in range(200)]
    flipped = sum(torch.equal(o, img.flip(-1)) for o in outs)
    unchanged = sum(torch.equal(o, img) for o in outs)
    assert flipped + unchanged == 200 and 70 < flipped < 130


def test_random_crop_shifts_within_the_padding() -> None:
    img, g = ramp(), gen()
    crops = [random_crop(img, 2, g) for _ in range(50)]
    assert all(c.shape == img.shape for c in crops)
    assert len({tuple(c.flatten().tolist()) for c in crops}) > 5
    # Every crop is the image shifted by at most 2 pixels: its non-zero values are image values.
    values = set(img.flatten().tolist())
    assert all(v in values for c in crops for v in c.flatten().tolist() if v != 0)


def test_rotation_by_ninety_degrees_is_a_quarter_turn() -> None:
    img = ramp(size=4)
    out = rotate(img, 90.0)
    assert torch.allclose(out, torch.rot90(img, 1, dims=(1, 2)), atol=1e-5) or torch.allclose(
        out, torch.rot90(img, -1, dims=(1, 2)), atol=1e-5
    )
    assert torch.allclose(rotate(img, 0.0), img, atol=1e-6)


@pytest.mark.parametrize(("brightness", "contrast"), [(1.0, 1.0), (1.5, 1.0), (0.5, 0.7), (1.2, 1.8)])
def test_jitter_keeps_pixels_in_range(brightness: float, contrast: float) -> None:
    img = ramp(channels=3)
    out = jitter(img, brightness, contrast)
    assert out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out, img) == (brightness == 1.0 and contrast == 1.0)


def test_gaussian_noise_has_the_requested_spread() -> None:
    x = torch.zeros(20000)
    assert float(add_noise(x, 0.5, gen()).std()) == pytest.approx(0.5, rel=0.05)


IMAGE_AUGMENTATIONS = [
    {"horizontalFlip": True},
    {"randomCrop": 2},
    {"rotation": 30.0},
    {"colorJitter": 0.4},
    {"gaussianNoise": 0.3},
]


@pytest.mark.parametrize("augmentation", IMAGE_AUGMENTATIONS)
def test_image_augmentation_touches_train_only(augmentation: dict) -> None:
    torch.manual_seed(0)
    plain = load_data(DataSpec(source="builtin:digits"), for_architecture="cnn")
    augmented = load_data(DataSpec(source="builtin:digits", augmentation=augmentation), for_architecture="cnn")
    draws = [augmented.train[i][0] for i in range(20)]
    assert any(not torch.allclose(d, plain.train[i][0]) for i, d in enumerate(draws))
    for split in ("validation", "test"):
        a, p = getattr(augmented, split), getattr(plain, split)
        assert all(torch.equal(a[i][0], p[i][0]) and torch.equal(a[i][0], a[i][0]) for i in range(len(p)))


def test_unaugmented_images_are_normalised_like_augmented_ones() -> None:
    plain = load_data(DataSpec(source="builtin:digits"), for_architecture="cnn")
    # A 0-degree "rotation" would be identity; a tiny one changes little, so the scales must match.
    rotated = load_data(DataSpec(source="builtin:digits", augmentation={"rotation": 0.01}), for_architecture="cnn")
    assert torch.allclose(rotated.train[0][0], plain.train[0][0], atol=1e-2)


def test_table_noise_touches_train_only() -> None:
    plain = load_data(DataSpec(source="builtin:iris"))
    noisy = load_data(DataSpec(source="builtin:iris", augmentation={"gaussianNoise": 0.5}))
    first, second = noisy.train[0][0], noisy.train[0][0]
    assert not torch.equal(first, second) and not torch.equal(first, plain.train[0][0])
    assert torch.equal(noisy.validation.x, plain.validation.x) and torch.equal(noisy.test[3][0], plain.test[3][0])


@pytest.mark.parametrize(
    ("source", "arch", "augmentation"),
    [("builtin:digits", "cnn", {"rotation": 10.0, "gaussianNoise": 0.1}), ("builtin:iris", "mlp", {"gaussianNoise": 0.1})],
)
def test_augmented_datasets_pickle_for_loader_workers(source: str, arch: str, augmentation: dict) -> None:
    train = load_data(DataSpec(source=source, augmentation=augmentation), for_architecture=arch).train
    clone = pickle.loads(pickle.dumps(train))
    assert clone[0][0].shape == train[0][0].shape and torch.equal(clone.y, train.y)
