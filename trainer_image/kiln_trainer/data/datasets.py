"""In-memory datasets yielding (features, target) pairs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset


class ArrayDataset(Dataset):
    """Rows of `x` and `y`, with an optional per-sample transform of x (training augmentation).

    `x` and `y` are public so that callers can evaluate a whole split at once.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        self.x = x
        self.y = y
        self.transform = transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[index]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.y[index]
