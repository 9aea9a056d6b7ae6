"""The spec's `data` section: sources, formats, splits, preprocessing, streaming (spec.py re-exports it)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

from pydantic import Field

from .base import ApiModel, CrossFieldRule
from .spec_common import (
    COLUMN_MAX_LENGTH,
    COLUMN_PATTERN,
    DATA_SOURCE_PATTERN,
    INT_EXACT_MAX,
    LOCATION_MAX_LENGTH,
)

# --------------------------------------------------------------------------- data


class DataFormat(str, Enum):
    auto = "auto"
    csv = "csv"
    parquet = "parquet"
    imagefolder = "imagefolder"
    sequence = "sequence"
    text = "text"


class Tokenizer(str, Enum):
    bpe = "bpe"
    wordpiece = "wordpiece"


class SequenceSpec(ApiModel):
    """data.format sequence: a time series (csv/parquet, one row per time step, in time order) cut into windows."""

    length: int = Field(32, ge=1, le=4096, description="Time steps (rows) per window.")
    stride: int = Field(1, ge=1, le=100_000, description="Steps between the starts of consecutive windows.")
    horizon: int = Field(1, ge=1, le=100_000, description="Forecasting (regression): the target is its column's value this many steps after a window's last row.")
    features: Annotated[list[Annotated[str, Field(min_length=1, max_length=COLUMN_MAX_LENGTH, pattern=COLUMN_PATTERN)]], Field(max_length=1024)] = Field(
        default_factory=list,
        description="Columns fed to the model at each step; empty: every numeric column but the target and groupBy. For forecasting list the target here too to feed its past values.",
    )
    group_by: Optional[str] = Field(
        None, min_length=1, max_length=COLUMN_MAX_LENGTH, pattern=COLUMN_PATTERN,
        description="Column naming the series each row belongs to (e.g. a station); windows never cross series, and each series is split in time on its own.",
    )


class TextSpec(ApiModel):
    """data.format text: a text column and a label column (data.target), tokenised by a tokenizer trained on the training split."""

    column: str = Field("text", min_length=1, max_length=COLUMN_MAX_LENGTH, pattern=COLUMN_PATTERN, description="Column holding the text.")
    tokenizer: Tokenizer = Field(Tokenizer.bpe, description="bpe or wordpiece (Hugging Face tokenizers), trained on the training split only.")
    vocab_size: int = Field(8000, ge=16, le=1_000_000, description="Largest vocabulary the tokenizer learns (including [PAD]=0 and [UNK]).")
    max_length: int = Field(256, ge=1, le=8192, description="Tokens per text: longer texts are truncated, shorter ones padded with id 0.")
    lowercase: bool = Field(True, description="Lower-case (and strip accents from) text before tokenising.")


class Task(str, Enum):
    auto = "auto"
    classification = "classification"
    regression = "regression"


class SplitSpec(ApiModel):
    """Seeded train/validation/test split; the fractions must sum to 1."""

    train: float = Field(0.70, gt=0.0, le=1.0, description="Fraction of rows used for training.")
    validation: float = Field(0.15, ge=0.0, lt=1.0, description="Fraction used for validation (early stopping and checkpoint ranking).")
    test: float = Field(0.15, ge=0.0, lt=1.0, description="Fraction held out and evaluated once on the final model.")
    seed: int = Field(0, ge=0, le=INT_EXACT_MAX, description="Seed of the shuffle before splitting, so every worker and every resume sees the same split.")

    cross_field_rules = (
        CrossFieldRule(
            cel="self.train + self.validation + self.test > 0.999999 && self.train + self.validation + self.test < 1.000001",
            message="train + validation + test must sum to 1",
            check=lambda s: abs(s.train + s.validation + s.test - 1.0) < 1e-6,
        ),
    )


class Normalize(str, Enum):
    standard = "standard"
    minmax = "minmax"
    none = "none"


class Impute(str, Enum):
    mean = "mean"
    median = "median"
    drop = "drop"
    none = "none"


class PreprocessingSpec(ApiModel):
    """Feature preprocessing, fitted on the training split only."""

    normalize: Normalize = Field(Normalize.standard, description="Scale features: standard (zero mean, unit variance), minmax (0..1) or none.")
    impute: Impute = Field(Impute.mean, description="Missing values: replace with the training mean or median, drop the row, or none (fail if any are missing).")


class AugmentationSpec(ApiModel):
    """Random augmentation of the training split only (validation and test are never augmented)."""

    horizontal_flip: bool = Field(False, description="Images: flip left-right with probability 0.5.")
    random_crop: int = Field(0, ge=0, le=64, description="Images: pad by this many pixels and crop back at a random offset (0 disables).")
    rotation: float = Field(0.0, ge=0.0, le=180.0, description="Images: rotate by a random angle in [-rotation, rotation] degrees.")
    color_jitter: float = Field(0.0, ge=0.0, le=1.0, description="Images: random brightness/contrast change of up to this fraction.")
    gaussian_noise: float = Field(0.0, ge=0.0, le=10.0, description="Images and tables: add noise with this standard deviation (after normalisation).")


class DataPlacement(str, Enum):
    auto = "auto"
    device = "device"
    host = "host"


class DataLoading(str, Enum):
    auto = "auto"
    memory = "memory"
    stream = "stream"


class StreamSpec(ApiModel):
    """How file sources are streamed with Ray Data (data.loading: stream, or auto above the threshold)."""

    threshold_mib: int = Field(
        256, ge=0, le=2**53 - 1, alias="thresholdMiB",
        description="loading auto: file sources (csv, parquet, imagefolder) larger than this many MiB on disk are "
        "streamed; smaller ones, and builtin and synthetic sets, are loaded into memory.",
    )
    shuffle_buffer_rows: int = Field(
        2048, ge=0, le=10_000_000,
        description="Each worker shuffles its stream in a buffer of this many rows (0: no local shuffle), on top "
        "of a new file order every epoch. The buffer costs its rows in memory; it is not a global shuffle.",
    )
    prefetch_batches: int = Field(2, ge=0, le=64, description="Batches each worker reads ahead of the one it trains on.")


class SyntheticSpec(ApiModel):
    """Size of a `synthetic:*` data set (generated deterministically from `split.seed`)."""

    samples: int = Field(2000, ge=10, le=10_000_000, description="Rows to generate.")
    features: int = Field(20, ge=1, le=10_000, description="Feature columns to generate.")
    classes: int = Field(2, ge=2, le=1000, description="Classes (synthetic:classification only).")
    noise: float = Field(0.1, ge=0.0, le=100.0, description="Label noise: flipped fraction (classification) or noise std (regression).")


def is_sequence_data(data: DataSpec) -> bool:
    return data.format == DataFormat.sequence or data.source == "synthetic:sequence"


def is_text_data(data: DataSpec) -> bool:
    return data.format == DataFormat.text or data.source == "synthetic:text"


def cel_is_sequence_data(d: str) -> str:
    """CEL for is_sequence_data, on the DataSpec at the CEL path `d` (rules of the whole spec use it too)."""
    return f"({d}.format == 'sequence' || {d}.source == 'synthetic:sequence')"


def cel_is_text_data(d: str) -> str:
    """CEL for is_text_data, on the DataSpec at the CEL path `d`."""
    return f"({d}.format == 'text' || {d}.source == 'synthetic:text')"


SEQUENCE_DATA_RULES = (
    CrossFieldRule(
        cel="self.format != 'sequence' || has(self.sequence)",
        message="format sequence needs sequence (at least {length: ...}; features and groupBy as the series has them)",
        field_path=".sequence",
        check=lambda d: d.format != DataFormat.sequence or d.sequence is not None,
    ),
    CrossFieldRule(
        cel="self.format != 'text' || has(self.text)",
        message="format text needs text (at least {column: ...}, the column holding the text)",
        field_path=".text",
        check=lambda d: d.format != DataFormat.text or d.text is not None,
    ),
    CrossFieldRule(
        cel=f"!has(self.sequence) || {cel_is_sequence_data('self')}",
        message="sequence is only used with format sequence (or source synthetic:sequence); set format: sequence",
        field_path=".format",
        check=lambda d: d.sequence is None or is_sequence_data(d),
    ),
    CrossFieldRule(
        cel=f"!has(self.text) || {cel_is_text_data('self')}",
        message="text is only used with format text (or source synthetic:text); set format: text",
        field_path=".format",
        check=lambda d: d.text is None or is_text_data(d),
    ),
    CrossFieldRule(
        cel="!(self.source in ['synthetic:sequence', 'synthetic:text']) || self.format == 'auto' "
        "|| 'synthetic:' + self.format == self.source",
        message="synthetic:sequence takes format auto or sequence, synthetic:text format auto or text",
        field_path=".format",
        check=lambda d: d.source not in ("synthetic:sequence", "synthetic:text") or d.format == DataFormat.auto
        or f"synthetic:{d.format.value}" == d.source,
    ),
    CrossFieldRule(
        cel="self.loading != 'stream' || !(self.format in ['sequence', 'text'])",
        message="loading stream is not supported for format sequence or text (windows and the tokenizer need the "
        "whole training split in memory); use loading memory or auto",
        field_path=".loading",
        check=lambda d: d.loading != DataLoading.stream or d.format not in (DataFormat.sequence, DataFormat.text),
    ),
)


class DataSpec(ApiModel):
    """Where the data comes from and how it is split, preprocessed and augmented."""

    source: str = Field("builtin:digits", max_length=LOCATION_MAX_LENGTH, pattern=DATA_SOURCE_PATTERN, description="builtin:digits|iris|wine|breast_cancer (shipped with scikit-learn), synthetic:classification|regression|sequence|text (generated), a file or directory path, pvc://claim/path or s3://bucket/key.")
    format: DataFormat = Field(DataFormat.auto, description="auto infers csv/parquet from the file extension and imagefolder from a directory. sequence: a csv/parquet time series cut into windows (see sequence); text: a csv/parquet text column with labels (see text).")
    target: str = Field("target", min_length=1, max_length=COLUMN_MAX_LENGTH, pattern=COLUMN_PATTERN, description="Column holding the label (csv/parquet).")
    task: Task = Field(Task.auto, description="auto: classification for integer/string targets, regression for float targets.")
    split: SplitSpec = Field(default_factory=SplitSpec, description="Train/validation/test fractions and their seed.")
    preprocessing: PreprocessingSpec = Field(default_factory=PreprocessingSpec, description="Scaling and imputation, fitted on the training split.")
    augmentation: AugmentationSpec = Field(default_factory=AugmentationSpec, description="Random augmentation of the training split.")
    synthetic: SyntheticSpec = Field(default_factory=SyntheticSpec, description="Size of a synthetic data set; ignored for other sources.")
    sequence: Optional[SequenceSpec] = Field(None, description="Windowing of a time series (format sequence, or synthetic:sequence where it defaults to length 32).")
    text: Optional[TextSpec] = Field(None, description="Text column and tokenizer (format text, or synthetic:text where the defaults fit).")
    image_size: int = Field(32, ge=8, le=1024, description="Images are resized to image_size x image_size (imagefolder).")
    placement: DataPlacement = Field(
        DataPlacement.auto,
        description="Where each worker keeps the training (and validation) split while it trains. device: on the "
        "model's device (GPU memory; on CPU, where the data already is): batches are shuffled and cut there, nothing "
        "is copied per step. host: in host memory; on a GPU each batch is copied on a side stream while the previous "
        "one computes. auto: device when both splits take at most deviceMemoryFraction of the device's free memory "
        "(always on CPU), host otherwise. The choice is reported in the data summary and in status.progress.dataPlacement.",
    )
    loading: DataLoading = Field(
        DataLoading.auto,
        description="memory: every worker loads its split into memory (builtin, synthetic and small files). stream: "
        "Ray Data reads file sources shard by shard, each worker iterating only its share, images kept as uint8 until "
        "the device, so memory is bounded by the prefetch window. auto: stream file sources above "
        "stream.thresholdMiB. The choice is reported in the data summary and status.progress.dataPlacement.",
    )
    stream: StreamSpec = Field(default_factory=StreamSpec, description="Streaming settings (file sources only).")
    device_memory_fraction: float = Field(
        0.5, gt=0.0, le=1.0,
        description="placement auto: the largest share of the device's free memory (measured after the model is "
        "placed) that the training and validation splits may take to be kept on the device; the rest is left for "
        "activations, gradients and optimizer state.",
    )

    cross_field_rules = (
        CrossFieldRule(
            cel="!has(self.loading) || self.loading != 'stream' || !has(self.source) "
            "|| !(self.source.startsWith('builtin:') || self.source.startsWith('synthetic:'))",
            message="stream reads files (csv, parquet, imagefolder); builtin and synthetic sets are loaded into memory",
            field_path=".loading",
            check=lambda d: d.loading != DataLoading.stream or not d.source.startswith(("builtin:", "synthetic:")),
        ),
        CrossFieldRule(
            cel="!has(self.loading) || self.loading != 'stream' || !has(self.preprocessing) "
            "|| !has(self.preprocessing.impute) || self.preprocessing.impute != 'median'",
            message="median imputation needs whole columns in memory; with loading stream use mean or drop",
            field_path=".preprocessing.impute",
            check=lambda d: d.loading != DataLoading.stream or d.preprocessing.impute != Impute.median,
        ),
    ) + SEQUENCE_DATA_RULES
