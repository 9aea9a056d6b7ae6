"""The shape every data source is loaded into before splitting and preprocessing."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TABLE = "table"
IMAGE = "image"
CLASSIFICATION = "classification"
REGRESSION = "regression"


@dataclass
class RawData:
    """Unsplit, unscaled data.

    `x` is float32: (rows, features) for tables, NaN where a value is missing, or
    (rows, channels, height, width) in [0, 1] for images. `y` is int64 class indices
    or float32 (rows, targets).
    """

    x: np.ndarray
    y: np.ndarray
    task: str
    kind: str
    source: str
    class_names: list[str] = field(default_factory=list)
    feature_names: list[str] = field(default_factory=list)
    # Text columns one-hot encoded into `name=value` features: name -> its values (for predicting).
    categories: dict[str, list[str]] = field(default_factory=dict)
    # spec.evaluation.sliceBy columns: name -> each row's raw value (None where missing), row-aligned.
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task == REGRESSION and self.y.ndim == 1:
            self.y = self.y.reshape(-1, 1)
