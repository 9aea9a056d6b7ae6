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
    labelled = [(label, path) for label, (_, paths) in enumerate(files) for path in paths]
    resized = ResizedImages(len(labelled), image_size)
    for index, (_, path) in enumerate(labelled):
        resized.put(index, _decode(fs.cat_file(path), path, source))
    return RawData(
        x=resized.to_float(), y=np.asarray([label for label, _ in labelled], dtype=np.int64), task=CLASSIFICATION,
        kind=IMAGE, source=source, class_names=[name for name, _ in files],
    )


class ResizedImages:
    """A folder's images resized as they are decoded, into uint8 buffers sized up front.

    Holding every decoded original until the channel count was known, then a float copy of each,
    then their stack, took 8.3 GiB per worker at 5,000 images; this holds a byte per pixel and the
    final array. Every image is kept as RGB, and also as grey while all so far are grey: the same
    conversions `to_array` makes once the channel count is known, so the result is the same to the bit."""

    def __init__(self, count: int, size: int) -> None:
        self.size = size
        self.rgb = np.empty((count, 3, size, size), dtype=np.uint8)
        self.grey: np.ndarray | None = np.empty((count, 1, size, size), dtype=np.uint8)

    def put(self, index: int, img: Image.Image) -> None:
        if self.grey is not None and img.mode in GRAYSCALE_MODES:
            self.grey[index, 0] = np.asarray(_resized(img, "L", self.size))
        else:
            self.grey = None  # a colour image: the set is RGB
        self.rgb[index] = np.asarray(_resized(img, "RGB", self.size)).transpose(2, 0, 1)

    def to_float(self) -> np.ndarray:
        """(N, C, size, size) float32 in [0, 1]."""
        pixels = (self.grey if self.grey is not None else self.rgb).astype(np.float32)
        pixels /= 255.0
        return pixels


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


def _resized(img: Image.Image, mode: str, size: int) -> Image.Image:
    return img.convert(mode).resize((size, size), Image.Resampling.BILINEAR)


def to_array(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """Resize to size x size and scale to float32 [0, 1], channels first."""
    pixels = np.asarray(_resized(img, "L" if channels == 1 else "RGB", size), dtype=np.float32) / 255.0
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def _decode(data: bytes, path: str, source: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError("spec.data.source", f"{source}: cannot decode image {path}: {exc}") from exc
    return img
