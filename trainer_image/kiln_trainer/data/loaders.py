"""`load_data`: source -> split -> preprocessing fitted on train -> datasets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from kiln_api.spec import SEQUENCE_ARCHITECTURES, DataSpec, Impute, is_sequence_data, is_text_data
from kiln_api.storage_paths import PVC_MOUNT_ROOT
from torch.utils.data import Dataset

from .augmentation import BatchTrainTransform, ChannelNormalize, batch_train_transform, train_transform
from .datasets import ArrayDataset
from .errors import DataError
from .inference import describe_inputs
from .preprocessing import Preprocessor, check_missing, complete_rows, fit_preprocessor
from .raw import CLASSIFICATION, IMAGE, RawData
from .slice_columns import NO_COLUMNS, ColumnRequest, check_columns, rows_of
from .sources import IMAGE_ARCHITECTURES, load_raw
from .split import split_indices
from .summary import DataSummary, summarize


@dataclass
class DataBundle:
    """Everything the training loop needs to know about its data.

    Samples are (x float32, y) with y an int64 class index for classification and a
    float32 vector of shape (output_dim,) for regression, standardised with the training
    split's `target_mean`/`target_std` (predictions * std + mean give original units).
    """

    train: Dataset
    validation: Dataset | None
    test: Dataset | None
    task: str
    output_dim: int
    input_shape: tuple[int, ...]
    class_names: list[str]
    summary: DataSummary
    target_mean: float = 0.0
    target_std: float = 1.0
    preprocessor: Preprocessor | None = field(default=None, repr=False)
    # The training loop's augmentation of whole batches on the device (None: nothing random). With
    # it, training images are stored in pixel space ([0, 1]) and normalised per batch after it.
    train_transform: BatchTrainTransform | None = field(default=None, repr=False)
    # JSON only: how NEW raw rows become model inputs ({"format": "table" | "image" | ...}); saved in
    # model.pt so that `kiln predict` never needs the training data (data/inference.py).
    inference: dict[str, Any] = field(default_factory=dict)
    # The test rows' values of the spec.evaluation.sliceBy columns, in the test split's order.
    test_columns: dict[str, np.ndarray] = field(default_factory=dict)


def load_data(spec: DataSpec, *, pvc_root: str = PVC_MOUNT_ROOT, for_architecture: str = "mlp",
              columns: ColumnRequest = NO_COLUMNS) -> DataBundle:
    """Load, split, preprocess and wrap the data that `spec` describes (with `columns`: the sliceBy
    columns' test rows too)."""
    if is_sequence_data(spec) or is_text_data(spec):
        check_columns(columns, {}, spec.source)
        return _sequence_or_text(spec, pvc_root, for_architecture)
    raw = load_raw(spec, pvc_root=pvc_root, for_architecture=for_architecture, columns=columns)
    check_columns(columns, raw.columns, raw.source)
    if for_architecture in IMAGE_ARCHITECTURES and raw.kind != IMAGE:
        raise DataError("spec.model.architecture", f"{for_architecture} needs image data, but {raw.source} is a table; use mlp")
    missing = check_missing(raw.x, spec.preprocessing.impute, raw.source, raw.feature_names)
    if missing and spec.preprocessing.impute == Impute.drop:
        keep = complete_rows(raw.x)
        if not keep.any():
            raise DataError("spec.data.preprocessing.impute", f"every row of {raw.source} has a missing value; nothing is left after drop")
        raw.x, raw.y, raw.columns = raw.x[keep], raw.y[keep], rows_of(raw.columns, keep)
    split = spec.split
    labels = raw.y if raw.task == CLASSIFICATION else None
    train_idx, val_idx, test_idx = split_indices(len(raw.y), split.validation, split.test, split.seed, labels)
    pre = fit_preprocessor(raw.x[train_idx], spec.preprocessing)
    y, target_mean, target_std = _targets(raw, train_idx)
    image = raw.kind == IMAGE
    transform = train_transform(spec.augmentation, image=image, normalize=_image_normalizer(pre))
    # With a pixel-space transform the training images stay raw; it normalises each sample itself.
    train_x = raw.x[train_idx] if transform is not None and raw.kind == IMAGE else pre.transform(raw.x[train_idx])
    train = ArrayDataset(torch.from_numpy(np.ascontiguousarray(train_x)), y[train_idx], transform)
    return DataBundle(
        train=train,
        validation=_plain_split(raw, pre, y, val_idx),
        test=_plain_split(raw, pre, y, test_idx),
        task=raw.task,
        output_dim=len(raw.class_names) if raw.task == CLASSIFICATION else int(raw.y.shape[1]),
        input_shape=tuple(int(d) for d in raw.x.shape[1:]),
        class_names=list(raw.class_names),
        summary=summarize(
            raw.y if raw.task == CLASSIFICATION else raw.y[:, 0], features=int(np.prod(raw.x.shape[1:])), task=raw.task,
            class_names=raw.class_names, missing_values=missing, source=raw.source,
        ),
        target_mean=target_mean,
        target_std=target_std,
        preprocessor=pre,
        train_transform=batch_train_transform(spec.augmentation, image=image, normalize=_image_normalizer(pre)),
        inference=describe_inputs(raw, pre, spec, target_mean, target_std),
        test_columns=rows_of(raw.columns, test_idx),
    )


def _sequence_or_text(spec: DataSpec, pvc_root: str, for_architecture: str) -> DataBundle:
    # Imported here: those modules build DataBundles, defined above.
    from . import sequence, text
    from .sources import load_frame

    if for_architecture in IMAGE_ARCHITECTURES:
        raise DataError("spec.model.architecture", f"{for_architecture} needs image data; sequence and text data take "
                        "lstm, gru or transformer")
    if is_text_data(spec):
        if for_architecture not in SEQUENCE_ARCHITECTURES:
            raise DataError("spec.model.architecture", f"{for_architecture} cannot read text (token ids); use lstm, gru or transformer")
        if spec.source == "synthetic:text":
            return text.synthetic_bundle(spec)
        return text.frame_bundle(spec, load_frame(spec, pvc_root), spec.source)
    if spec.source == "synthetic:sequence":
        return sequence.synthetic_bundle(spec)
    return sequence.frame_bundle(spec, load_frame(spec, pvc_root), spec.source)


def _targets(raw: RawData, train_idx: np.ndarray) -> tuple[torch.Tensor, float, float]:
    if raw.task == CLASSIFICATION:
        return torch.from_numpy(raw.y.astype(np.int64)), 0.0, 1.0
    # Standardised targets keep the MSE near 1 whatever the units, so default learning rates work.
    mean = float(raw.y[train_idx].mean())
    std = float(raw.y[train_idx].std()) or 1.0
    return torch.from_numpy(((raw.y - mean) / std).astype(np.float32)), mean, std


def _plain_split(raw: RawData, pre: Preprocessor, y: torch.Tensor, idx: np.ndarray) -> ArrayDataset | None:
    if len(idx) == 0:
        return None
    return ArrayDataset(torch.from_numpy(np.ascontiguousarray(pre.transform(raw.x[idx]))), y[idx])


def _image_normalizer(pre: Preprocessor) -> ChannelNormalize:
    return ChannelNormalize(torch.from_numpy(pre.center), torch.from_numpy(pre.scale))
