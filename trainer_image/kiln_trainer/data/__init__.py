"""Data for the built-in trainer: sources, split, preprocessing, augmentation, summary."""

from .datasets import ArrayDataset
from .errors import DataError, SpecError
from .loaders import DataBundle, load_data
from .summary import DataSummary

__all__ = ["ArrayDataset", "DataBundle", "DataError", "DataSummary", "SpecError", "load_data"]
