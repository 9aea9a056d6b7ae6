"""Augmentation of whole batches on the device: the same transforms as per sample, training batches only."""

from __future__ import annotations

import itertools

import pytest
import torch
from kiln_api.spec import DataSpec
from kiln_trainer.batch_feed import batch_bounds, shard_order
from kiln_trainer.data import load_data
from kiln_trainer.data.augmentation import (
    crop_batch,
    flip_batch,
    jitter_batch,
    noise_batch,
    random_crop,
    rotate,
    rotate_by,
)
from kiln_trainer.model_trainer import ModelTrainer
from kiln_trainer.worker import RunPaths, WorkerEnv

from tests.support.trainer_helpers import job


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 16, channels: int = 2, size: int = 6) -> torch.Tensor:
    return torch.rand((n, channels, size, size), generator=gen(99))


def test_flip_batch_flips_some_images_and_keeps_the_others() -> None:
    x = images(64)
    out = flip_batch(x, gen())
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54


def test_crop_batch_cuts_each_image_at_its_own_offset_within_the_padding() -> None:
    x, padding = images(32), 2
    out = crop_batch(x, padding, gen())
    assert out.shape == x.shape
    offsets = set()
    for o, img in zip(out, x, strict=True):
        padded = torch.nn.functional.pad(img, (padding,) * 4)
        found = [(t, left) for t, left in itertools.product(range(2 * padding + 1), repeat=2)
                 if torch.equal(o, padded[:, t : t + img.shape[1], left : left + img.shape[2]])]
        assert found, "every output is the padded image cut at some offset"
        offsets.add(found[0])
    assert len(offsets) > 5
    # The per-sample transform cuts the same way (shape, zeros at the border only).
    assert random_crop(x[0], padding, gen()).shape == x[0].shape


def test_rotation_of_a_batch_matches_the_per_sample_rotation() -> None:
    x = images(3, size=8)
    out = rotate_by(x, torch.tensor([90.0, 0.0, -30.0]))
    for o, img, degrees in zip(out, x, (90.0, 0.0, -30.0), strict=True):
        assert torch.allclose(o, rotate(img, degrees), atol=1e-5)
    assert torch.allclose(out[1], x[1], atol=1e-5)


def test_jitter_batch_changes_each_image_differently_and_stays_in_range() -> None:
    x = images(16)
    out = jitter_batch(x, 0.5, gen())
    assert out.min() >= 0 and out.max() <= 1
    ratios = {round(float(o.mean() / i.mean()), 3) for o, i in zip(out, x, strict=True)}
    assert len(ratios) > 8


def test_noise_batch_has_the_requested_spread() -> None:
    assert float(noise_batch(torch.zeros(20000), 0.5, gen()).std()) == pytest.approx(0.5, rel=0.05)


IMAGE_AUGMENTATIONS = [{"horizontalFlip": True}, {"randomCrop": 2}, {"rotation": 30.0}, {"colorJitter": 0.4},
                       {"gaussianNoise": 0.3}]


@pytest.mark.parametrize("augmentation", IMAGE_AUGMENTATIONS)
def test_batch_transform_changes_training_images_and_normalises_them(augmentation: dict) -> None:
    plain = load_data(DataSpec(source="builtin:digits"), for_architecture="cnn")
    augmented = load_data(DataSpec(source="builtin:digits", augmentation=augmentation), for_architecture="cnn")
    assert plain.train_transform is None and augmented.train_transform is not None
    out = augmented.train_transform(augmented.train.x[:64], gen())
    assert out.shape == plain.train.x[:64].shape and not torch.allclose(out, plain.train.x[:64])
    assert torch.equal(augmented.validation.x, plain.validation.x) and torch.equal(augmented.test.x, plain.test.x)


def test_a_tiny_rotation_is_normalised_like_the_unaugmented_split() -> None:
    plain = load_data(DataSpec(source="builtin:digits"), for_architecture="cnn")
    rotated = load_data(DataSpec(source="builtin:digits", augmentation={"rotation": 0.01}), for_architecture="cnn")
    assert torch.allclose(rotated.train_transform(rotated.train.x[:32], gen()), plain.train.x[:32], atol=1e-2)


def test_table_noise_is_a_batch_transform_too() -> None:
    noisy = load_data(DataSpec(source="builtin:iris", augmentation={"gaussianNoise": 0.5}))
    plain = load_data(DataSpec(source="builtin:iris"))
    assert torch.equal(noisy.train.x, plain.train.x)  # stored normalised; noise comes per batch
    assert not torch.allclose(noisy.train_transform(noisy.train.x, gen()), plain.train.x)


def trainer(tmp_path, name: str, augmentation: dict) -> ModelTrainer:
    spec = {"workers": {"replicas": 1}, "model": {"architecture": "cnn", "hiddenUnits": [4]},
            "data": {"augmentation": augmentation}}
    return ModelTrainer(job(name, spec), WorkerEnv(), RunPaths(str(tmp_path / name), str(tmp_path), None))


def test_the_training_loop_augments_its_batches_but_never_validation(tmp_path) -> None:
    plain = trainer(tmp_path, "plain", {})
    aug = trainer(tmp_path, "aug", {"horizontalFlip": True, "randomCrop": 1, "rotation": 10, "colorJitter": 0.2,
                                    "gaussianNoise": 0.05})
    order = shard_order(len(plain.data.train), world_size=1, rank=0, seed=0, epoch=0)
    bounds = batch_bounds(len(order), 64)
    (xp, yp), (xa, ya) = next(plain.feed.batches(order, bounds, 0)), next(aug.feed.batches(order, bounds, 0))
    assert torch.equal(yp, ya) and xp.shape == xa.shape and not torch.allclose(xp, xa)
    # Same seed, same initial weights: validation sees the very same inputs and gives the very same sums.
    assert torch.equal(plain.data.validation.x, aug.data.validation.x)
    assert plain.evaluate(plain.data.validation) == aug.evaluate(aug.data.validation)
    for t in (plain, aug):
        t.core.close()
