"""Image folders: one sub-folder per class, decoded with Pillow and resized to a square."""

from __future__ import annotations

import io
import posixpath

import fsspec
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError
from .raw import CLASSIFICATION, IMAGE, RawData

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")


def load_image_folder(location: str, image_size: int, *, source: str) -> RawData:
    """Decode every image under `location/<class>/` into (N, C, size, size) floats in [0, 1].

    All images are grey (one channel) only if every file is; otherwise all become RGB.
    Goes through fsspec, so local folders and s3:// prefixes take the same path.
    """
    fs, root = fsspec.core.url_to_fs(location)
    files = list_class_files(fs, root, source)
    images: list[Image.Image] = []
    labels: list[int] = []
    for label, (_, paths) in enumerate(files):
        for path in paths:
            images.append(_decode(fs.cat_file(path), path, source))
            labels.append(label)
    channels = 1 if all(img.mode in GRAYSCALE_MODES for img in images) else 3
    x = np.stack([to_array(img, image_size, channels) for img in images])
    return RawData(
        x=x, y=np.asarray(labels, dtype=np.int64), task=CLASSIFICATION, kind=IMAGE, source=source,
        class_names=[name for name, _ in files],
    )


def list_class_files(fs: fsspec.AbstractFileSystem, root: str, source: str) -> list[tuple[str, list[str]]]:
    """(class name, sorted image paths) for each sub-folder that holds images, sorted by name."""
    classes: list[tuple[str, list[str]]] = []
    for entry in sorted(fs.ls(root, detail=True), key=lambda e: e["name"]):
        if entry["type"] != "directory":
            continue
        paths = sorted(
            e["name"] for e in fs.ls(entry["name"], detail=True)
            if e["type"] == "file" and e["name"].lower().endswith(IMAGE_SUFFIXES)
        )
        if paths:
            classes.append((posixpath.basename(entry["name"].rstrip("/")), paths))
    if len(classes) < 2:
        raise DataError(
            "spec.data.source",
            f"{source}: an image folder needs one sub-folder of images per class (at least 2), found {len(classes)}",
        )
    return classes


def to_array(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """Resize to size x size and scale to float32 [0, 1], channels first."""
    img = img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.asarray(img, dtype=np.float32) / 255.0
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def _decode(data: bytes, path: str, source: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError("spec.data.source", f"{source}: cannot decode image {path}: {exc}") from exc
    return img
