"""The spec's `model` section: the built-in architectures and their sizes (spec.py re-exports it)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

from pydantic import Field

from .base import ApiModel, CrossFieldRule
from .spec_common import (
    LOCATION_MAX_LENGTH,
    STORAGE_PATTERN,
)

# --------------------------------------------------------------------------- model


class Architecture(str, Enum):
    mlp = "mlp"
    cnn = "cnn"
    resnet18 = "resnet18"
    resnet34 = "resnet34"
    resnet50 = "resnet50"
    lstm = "lstm"
    gru = "gru"
    transformer = "transformer"


SEQUENCE_ARCHITECTURES = ("lstm", "gru", "transformer")
IMAGE_ARCHITECTURES = ("cnn", "resnet18", "resnet34", "resnet50")


class Pooling(str, Enum):
    last = "last"
    mean = "mean"


class PositionalEncoding(str, Enum):
    learned = "learned"
    sinusoidal = "sinusoidal"


class Activation(str, Enum):
    relu = "relu"
    leaky_relu = "leaky_relu"
    gelu = "gelu"
    silu = "silu"
    tanh = "tanh"
    sigmoid = "sigmoid"


class PretrainedSpec(ApiModel):
    """Transfer learning: start from saved weights instead of a random initialisation."""

    path: str = Field(..., min_length=1, max_length=LOCATION_MAX_LENGTH, pattern=STORAGE_PATTERN, description="State dict to load: a local/PVC path (`pvc://claim/path`) or `s3://bucket/key`. The classification head is replaced to fit the task.")
    freeze_backbone: bool = Field(False, description="Train only the new head; every other parameter keeps its loaded value.")


class ModelSpec(ApiModel):
    """A built-in model. Exclusive with `entrypoint`."""

    architecture: Architecture = Field(Architecture.mlp, description="mlp for tabular data; cnn or resnet18/34/50 (torchvision, no weight download) for images; lstm, gru or transformer for data.format sequence or text.")
    hidden_units: list[Annotated[int, Field(ge=1, le=65536)]] = Field(default_factory=lambda: [128, 64], max_length=32, description="Width of each hidden layer (mlp) or channels of each conv block (cnn).")
    activation: Activation = Field(Activation.relu, description="Non-linearity between layers.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout probability after each hidden layer (0 disables it).")
    batch_norm: bool = Field(False, description="Batch normalisation after each hidden layer.")
    pretrained: Optional[PretrainedSpec] = Field(None, description="Start from saved weights (transfer learning).")
    layers: int = Field(2, ge=1, le=64, description="lstm/gru: stacked recurrent layers; transformer: encoder layers.")
    hidden_size: int = Field(64, ge=1, le=16384, description="lstm/gru: hidden state size (per direction); transformer: model width (embedding size), a multiple of heads.")
    bidirectional: bool = Field(False, description="lstm/gru: also read each sequence backwards (the head sees both directions).")
    pooling: Pooling = Field(Pooling.last, description="lstm/gru: what reaches the head, the last hidden state (of the unpadded tokens) or the mean over time. The transformer always takes the mean over unpadded positions.")
    heads: int = Field(4, ge=1, le=256, description="transformer: attention heads; must divide hiddenSize.")
    feed_forward: int = Field(256, ge=1, le=65536, description="transformer: width of each encoder layer's feed-forward block.")
    positional_encoding: PositionalEncoding = Field(PositionalEncoding.learned, description="transformer: learned position embeddings or fixed sinusoidal ones.")

    cross_field_rules = (
        CrossFieldRule(
            cel="self.architecture != 'transformer' || self.hiddenSize % self.heads == 0",
            message="heads must divide hiddenSize (the transformer's width is split evenly across its heads)",
            field_path=".heads",
            check=lambda m: m.architecture != Architecture.transformer or m.hidden_size % m.heads == 0,
        ),
    )
