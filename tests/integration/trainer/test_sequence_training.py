"""Each sequence architecture learns a task it must be able to learn, trained by 2 DDP workers
(gloo) on the shared local Ray cluster: an LSTM forecasts sines, a Transformer classifies the
generated reviews (which need word order), a GRU tells generated waveforms apart."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from kiln_trainer.local import run_local

from tests.support.trainer_helpers import job

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

BASE: dict[str, Any] = {
    "workers": {"replicas": 2, "cpusPerWorker": 1},
    "hyperparameters": {"epochs": 12, "batchSize": 32, "learningRate": 0.005, "optimizer": "adam", "seed": 1},
    "checkpoint": {"everyEpochs": 1, "keep": 1, "metric": "val_loss"},
}


def train(name: str, spec: dict[str, Any], out: Path) -> dict[str, Any]:
    code, _ = run_local(job(name, spec, base=BASE), str(out), manifest_dir=str(out), stream=io.StringIO())
    status = json.loads((out / name / "status.json").read_text())
    assert code == 0 and status["phase"] == "Succeeded", status
    assert torch.load(out / name / "model.pt", weights_only=True)
    return status["metrics"]


def sines(path: Path) -> None:
    """Two stations, each a sine (period 25 steps, amplitude 1, offset 3) with its own phase."""
    t = np.arange(400)
    frame = pd.concat([pd.DataFrame({"station": s, "value": 3 + np.sin(2 * np.pi * t / 25 + phase)})
                       for s, phase in (("a", 0.0), ("b", 2.0))], ignore_index=True)
    frame.to_csv(path, index=False)


def test_lstm_forecasts_a_sine_within_a_tenth_in_original_units(ray_cluster, tmp_path):
    sines(tmp_path / "sines.csv")
    metrics = train("lstm-sine", {
        "model": {"architecture": "lstm", "layers": 1, "hiddenSize": 32},
        "data": {"source": str(tmp_path / "sines.csv"), "format": "sequence", "target": "value", "task": "regression",
                 "sequence": {"length": 16, "features": ["value"], "groupBy": "station"}},
        "checkpoint": {"metric": "val_rmse"},
        "earlyStopping": {"metric": "val_rmse", "stoppingThreshold": 0.04, "patience": 12},
    }, tmp_path)
    assert metrics["test_rmse"] < 0.1, metrics


def test_transformer_classifies_generated_reviews(ray_cluster, tmp_path):
    metrics = train("transformer-text", {
        "model": {"architecture": "transformer", "layers": 2, "hiddenSize": 32, "heads": 4, "feedForward": 64},
        "data": {"source": "synthetic:text", "synthetic": {"samples": 2000, "noise": 0.0},
                 "text": {"maxLength": 24, "vocabSize": 500}},
        "hyperparameters": {"epochs": 15, "learningRate": 0.003, "batchSize": 64},
        "earlyStopping": {"metric": "val_accuracy", "stoppingThreshold": 0.97, "patience": 15},
    }, tmp_path)
    assert metrics["test_accuracy"] >= 0.9, metrics


def test_gru_tells_waveforms_apart(ray_cluster, tmp_path):
    metrics = train("gru-waves", {
        "model": {"architecture": "gru", "layers": 1, "hiddenSize": 32, "bidirectional": True},
        "data": {"source": "synthetic:sequence", "synthetic": {"samples": 900, "features": 1, "classes": 3, "noise": 0.1},
                 "sequence": {"length": 32}},
        "hyperparameters": {"epochs": 10},
        "earlyStopping": {"metric": "val_accuracy", "stoppingThreshold": 0.97, "patience": 10},
    }, tmp_path)
    assert metrics["test_accuracy"] >= 0.9, metrics
