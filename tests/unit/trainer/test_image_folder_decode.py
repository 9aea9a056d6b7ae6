"""An image folder decodes into the same floats as converting each image once the channel count is
known (images.to_array), whatever mix of modes and sizes it holds, without keeping the originals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from kiln_trainer.data.images import GRAYSCALE_MODES, load_image_folder, to_array
from PIL import Image


def write_folder(root: Path, modes: dict[str, list[str]], seed: int = 0) -> Path:
    """class -> the mode of each of its images; sizes differ from image to image."""
    rng = np.random.default_rng(seed)
    for name, class_modes in modes.items():
        (root / name).mkdir(parents=True)
        for i, mode in enumerate(class_modes):
            side = 9 + 3 * i
            rgb = Image.fromarray(rng.integers(0, 256, size=(side, side + 2, 3), dtype=np.uint8))
            img = rgb.convert("L").convert("I;16") if mode == "I;16" else rgb.convert(mode)
            img.save(root / name / f"{i}.png")
    return root


def stacked_one_by_one(root: Path, size: int) -> np.ndarray:
    """The reference: every original decoded first, then converted with the set's channel count."""
    images = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir()):
            with Image.open(path) as img:
                img.load()
                images.append(img.copy())
    channels = 1 if all(img.mode in GRAYSCALE_MODES for img in images) else 3
    return np.stack([to_array(img, size, channels) for img in images])


@pytest.mark.parametrize(
    "modes",
    [
        {"a": ["RGB", "RGB"], "b": ["RGB", "RGB", "RGB"]},
        {"a": ["L", "L"], "b": ["L", "I;16"]},
        {"a": ["L", "L"], "b": ["L", "RGB"]},  # grey until the last image
        {"a": ["RGB", "L"], "b": ["P", "RGBA"]},
    ],
    ids=["rgb", "grey", "grey-then-colour", "mixed-modes"],
)
def test_a_folder_decodes_to_what_converting_each_image_gives_to_the_bit(tmp_path: Path, modes: dict[str, list[str]]) -> None:
    root = write_folder(tmp_path / "images", modes)
    raw = load_image_folder(str(root), 8, source="t")
    expected = stacked_one_by_one(root, 8)
    assert raw.x.dtype == np.float32 and raw.x.flags.c_contiguous
    assert raw.x.shape == expected.shape and np.array_equal(raw.x, expected)
    assert raw.y.tolist() == [k for k, name in enumerate(sorted(modes)) for _ in modes[name]]
