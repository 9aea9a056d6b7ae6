"""Saved models for predict/export tests: real data files, a real DataBundle, a built-in model with
seeded weights, written as model.pt exactly as the trainer writes it (no training needed)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from kiln_api.spec import DataSpec, ModelSpec
from kiln_trainer.data import DataBundle, load_data
from kiln_trainer.data.split import split_indices
from kiln_trainer.data.tables import encode_labels
from kiln_trainer.model_artifact import METADATA_KEY, artifact_bytes, model_metadata
from kiln_trainer.models import KilnModel, build_model

MLP = {"architecture": "mlp", "hiddenUnits": [16, 8], "batchNorm": True}
CNN = {"architecture": "cnn", "hiddenUnits": [4, 8], "batchNorm": True}


@dataclass
class SavedModel:
    path: Path
    bundle: DataBundle
    net: KilnModel


def save_model(data: dict[str, Any], model: dict[str, Any], path: Path, seed: int = 0) -> SavedModel:
    """Load `data` (a DataSpec as YAML fields), build `model` for it and write model.pt to `path`."""
    spec = ModelSpec.model_validate(model)
    bundle = load_data(DataSpec.model_validate(data), for_architecture=spec.architecture.value)
    torch.manual_seed(seed)
    net = build_model(spec, bundle.input_shape, bundle.output_dim, vocab_size=int(bundle.inference.get("vocab_size", 0)))
    _randomise_batch_norm(net)
    net.eval()
    path.write_bytes(artifact_bytes(net.state_dict(), model_metadata(model_spec=spec, data=bundle, job="test")))
    return SavedModel(path, bundle, net)


def _randomise_batch_norm(net: torch.nn.Module) -> None:
    # Fresh running statistics (0 and 1) would hide a mistake in saving or loading them.
    generator = torch.Generator().manual_seed(1)
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)


def regression_table(path: Path, rows: int = 80, seed: int = 0) -> pd.DataFrame:
    """`price` in large units (mean ~ 1000) from two numbers and a category."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"size": rng.normal(50, 10, rows), "rooms": rng.integers(1, 6, rows).astype(float),
                          "town": rng.choice(["north", "south"], rows)})
    frame["price"] = 1000 + 8 * frame["size"] + 30 * frame["rooms"] + np.where(frame["town"] == "north", 50, -50)
    frame.to_csv(path, index=False)
    return frame


def split_test_rows(frame: pd.DataFrame, data: dict[str, Any], target: str, classification: bool) -> pd.DataFrame:
    """The raw rows of the test split load_data made of `frame` (a table without missing targets)."""
    split = DataSpec.model_validate(data).split
    labels = encode_labels(frame[target])[0] if classification else None
    _, _, test_idx = split_indices(len(frame), split.validation, split.test, split.seed, labels)
    return frame.iloc[test_idx]


def expected_classes(saved: SavedModel) -> tuple[list[str], np.ndarray]:
    """Labels and probabilities the network gives on the bundle's (already preprocessed) test split."""
    with torch.inference_mode():
        proba = torch.softmax(saved.net(saved.bundle.test.x), dim=1).numpy()
    return [saved.bundle.class_names[i] for i in proba.argmax(axis=1)], proba


def rewrite_metadata(path: Path, change: Callable[[dict[str, Any], dict[str, Any]], Any]) -> None:
    """Edit a saved model.pt in place: `change(loaded file, metadata document)`."""
    loaded = torch.load(path, weights_only=True)
    document = json.loads(bytes(loaded[METADATA_KEY].tolist()).decode())
    change(loaded, document)
    loaded[METADATA_KEY] = torch.tensor(list(json.dumps(document).encode()), dtype=torch.uint8)
    torch.save(loaded, path)
