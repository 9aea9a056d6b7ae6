"""Small real data files for trainer tests: CSV/Parquet tables and PNG image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def write_table(path: Path, rows: int = 60, *, seed: int = 0, missing: int = 0, string_labels: bool = True) -> pd.DataFrame:
    """A two-class table (`target` is text or 0/1) whose label follows feature `a`; `missing` NaNs in `b`."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=rows)
    frame = pd.DataFrame({
        "a": a,
        "b": rng.normal(loc=5.0, size=rows),
        "colour": rng.choice(["red", "green", "blue"], size=rows),
        "target": np.where(a > 0, "yes", "no") if string_labels else (a > 0).astype(int),
    })
    if missing:
        frame.loc[rng.choice(rows, size=missing, replace=False), "b"] = np.nan
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return frame


def write_image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 6, size: int = 12, mode: str = "RGB") -> Path:
    """One sub-folder per class of PNGs; each class has its own mean brightness so it is learnable."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            level = 40 + 160 * k / max(1, len(classes) - 1)
            pixels = np.clip(rng.normal(level, 20, size=shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).convert(mode).save(folder / f"{i}.png")
    return root
