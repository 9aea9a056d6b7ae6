"""Train/validation/test by a seeded hash of each row's or file's identity, for streamed data.

Nothing is loaded to decide a split: a row's split is a function of (seed, its identity) only, so
every worker, every restart and every run with the same seed agree, and no data set has to be
read in full first. Identities:
- a table row: the hash of its values (pandas' `hash_pandas_object`, keyed by the seed). Identical
  rows land in the same split, so duplicates cannot leak from training into the test split.
- an image file: its path under the folder. Files are stratified: within each class folder they are
  ordered by hash and cut at the split fractions, so every split holds each class in proportion.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)


def hash_key(seed: int) -> str:
    """The 16-character key of pandas' row hash for a split seed."""
    return hashlib.sha256(f"kiln-split-{seed}".encode()).hexdigest()[:16]


def unit_interval(hashes: np.ndarray) -> np.ndarray:
    """uint64 hashes -> floats in [0, 1), uniformly."""
    return (hashes >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def row_positions(frame: pd.DataFrame, seed: int) -> np.ndarray:
    """Each row's place in [0, 1): a seeded hash of all its values (column order fixed by name)."""
    if frame.empty:
        return np.zeros(0, dtype=np.float64)
    ordered = frame[sorted(frame.columns)]
    hashes = pd.util.hash_pandas_object(ordered, index=False, hash_key=hash_key(seed)).to_numpy(dtype=np.uint64)
    return unit_interval(hashes)


def split_of_positions(positions: np.ndarray, validation: float, test: float) -> np.ndarray:
    """0 (train), 1 (validation) or 2 (test) per position: [0, validation) is validation,
    [validation, validation + test) is test, the rest training."""
    out = np.zeros(len(positions), dtype=np.int8)
    out[positions < validation + test] = 2
    out[positions < validation] = 1
    return out


def rows_in_split(frame: pd.DataFrame, split: str, *, seed: int, validation: float, test: float) -> np.ndarray:
    """Boolean mask of the rows of `frame` that belong to `split`."""
    return split_of_positions(row_positions(frame, seed), validation, test) == SPLITS.index(split)


def file_position(path: str, seed: int) -> int:
    """A file's stable sort key: sha256 of (seed, path relative to the data root)."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{path}".encode()).digest()[:8], "big")


def split_files(files: Sequence[str], *, seed: int, validation: float, test: float,
                root: str = "") -> dict[str, list[str]]:
    """One class's files, ordered by the hash of their path under `root` and cut at the fractions
    (validation first, then test). A non-zero fraction gets at least one file of three or more."""
    def key(path: str) -> tuple[int, str]:
        relative = path[len(root):].lstrip("/") if root and path.startswith(root) else path
        return file_position(relative, seed), relative

    ordered = sorted(files, key=key)
    n = len(ordered)
    n_val = _share(n, validation)
    n_test = _share(n, test) if n - n_val > 1 else 0
    if n - n_val - n_test < 1:
        n_val, n_test = 0, 0
    return {
        VALIDATION: ordered[:n_val],
        TEST: ordered[n_val : n_val + n_test],
        TRAIN: ordered[n_val + n_test :],
    }


def _share(n: int, fraction: float) -> int:
    if fraction <= 0 or n < 3:
        return 0
    return max(1, round(n * fraction))


def split_class_files(classes: Sequence[tuple[str, Sequence[str]]], *, seed: int, validation: float,
                      test: float, root: str = "") -> dict[str, list[tuple[str, int]]]:
    """(path, class index) per split for an image folder under `root`, stratified by class folder."""
    out: dict[str, list[tuple[str, int]]] = {name: [] for name in SPLITS}
    for label, (_, paths) in enumerate(classes):
        for split, chosen in split_files(paths, seed=seed, validation=validation, test=test, root=root).items():
            out[split].extend((path, label) for path in chosen)
    return out
