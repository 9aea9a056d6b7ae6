"""Exploratory analysis of an image folder (`kiln inspect`): classes, counts, sizes, channel means.

Classes and counts come from listing the folder (every file, nothing decoded); sizes, modes and
channel statistics from a seeded uniform sample of at most `sample_images` files, each decoded
and resized exactly as the trainer does (images.to_array), so the channel means are the ones its
normalisation would fit. A file of the sample that cannot be decoded is an error naming it.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

import fsspec
import numpy as np
from kiln_api.spec import DataSpec
from PIL import Image, UnidentifiedImageError

from .data.errors import DataError
from .data.hash_split import SPLITS, split_class_files
from .data.images import GRAYSCALE_MODES, list_class_files, to_array
from .data.split import split_sizes
from .inspect_data import class_warnings, numeric_summary

SAMPLE_IMAGES = 500


def decode(fs: fsspec.AbstractFileSystem, path: str, source: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(fs.cat_file(path)))
        img.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError("spec.data.source", f"{source}: cannot decode image {path}: {exc}") from exc
    return img


def sample_files(classes: list[tuple[str, list[str]]], limit: int, seed: int = 0) -> list[tuple[str, int]]:
    """A seeded uniform sample of (path, class index), in listing order."""
    files = [(path, label) for label, (_, paths) in enumerate(classes) for path in paths]
    if len(files) <= limit:
        return files
    chosen = np.sort(np.random.default_rng(seed).choice(len(files), size=limit, replace=False))
    return [files[i] for i in chosen]


def pixel_statistics(images: list[Image.Image], size: int) -> dict[str, Any]:
    """Per-channel mean and deviation of the sample at the training size, in [0, 1]."""
    channels = 1 if all(img.mode in GRAYSCALE_MODES for img in images) else 3
    pixels = np.stack([to_array(img, size, channels) for img in images])  # (N, C, size, size)
    per_channel = pixels.transpose(1, 0, 2, 3).reshape(channels, -1).astype(np.float64)
    names = ["grey"] if channels == 1 else ["red", "green", "blue"]
    return {"channels": channels, "names": names, "mean": per_channel.mean(axis=1).tolist(),
            "std": per_channel.std(axis=1).tolist()}


def image_splits(classes: list[tuple[str, list[str]]], spec: DataSpec, root: str, *, streamed: bool) -> dict[str, Any]:
    split = spec.split
    if streamed:
        files = split_class_files(classes, seed=split.seed, validation=split.validation, test=split.test, root=root)
        return {"loading": "stream", "method": "seeded hash of each file's path, per class folder (hash_split.py)",
                **{name: len(files[name]) for name in SPLITS}}
    total = sum(len(paths) for _, paths in classes)
    sizes = split_sizes(total, split.validation, split.test)
    return {"loading": "memory", "method": "seeded shuffle, stratified by class where possible (split.py)",
            **dict(zip(SPLITS, sizes, strict=True))}


def image_report(location: str, spec: DataSpec, *, streamed: bool, sample_images: int = SAMPLE_IMAGES) -> dict[str, Any]:
    fs, root = fsspec.core.url_to_fs(location)
    root = root.rstrip("/") or root
    classes = list_class_files(fs, root, spec.source)
    counts = {name: len(paths) for name, paths in classes}
    total = sum(counts.values())
    chosen = sample_files(classes, sample_images)
    images = [decode(fs, path, spec.source) for path, _ in chosen]
    widths = np.array([img.width for img in images], dtype=np.float64)
    heights = np.array([img.height for img in images], dtype=np.float64)
    note = (f"sizes, modes and channel statistics from {len(chosen)} of {total} images "
            + ("(every image)" if len(chosen) == total else f"(a uniform random sample, capped at {sample_images})")
            + f"; channel statistics after resizing to {spec.image_size}x{spec.image_size} as training does")
    warnings = class_warnings(counts, "class folder", name_class=True, unit="images")
    return {
        "kind": "image", "source": spec.source, "rows": total, "columns": None, "rows_used": total,
        "sampling": {"sampled": len(chosen) < total, "rows_analysed": len(chosen), "rows_total": total, "note": note},
        "task": "classification",
        "target": {"column": "class folder", "task": "classification",
                   "classes": {name: {"count": n, "share": n / total} for name, n in
                               sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}},
        "images": {"width": numeric_summary(widths), "height": numeric_summary(heights),
                   "modes": dict(Counter(img.mode for img in images).most_common()),
                   "pixels": pixel_statistics(images, spec.image_size)},
        "splits": image_splits(classes, spec, root, streamed=streamed),
        "warnings": warnings,
    }
