"""Train for real (`kiln run`, one worker in this process), then `kiln predict` the test split's raw rows:
the metrics of those predictions are the run's test metrics and its evaluation report's, and the
ONNX / TorchScript exports of the saved model give PyTorch's outputs on that split."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from kiln_api.spec import DataSpec
from kiln_cli.main import main
from kiln_trainer.data import load_data
from kiln_trainer.evaluation_report import build_report
from kiln_trainer.export import TOLERANCE, run_export
from kiln_trainer.local import run_local
from kiln_trainer.model_artifact import read_artifact

from tests.support.datafiles import write_table
from tests.support.model_files import regression_table, split_test_rows
from tests.support.ports import free_port
from tests.support.trainer_helpers import job

SPLIT = {"train": 0.6, "validation": 0.2, "test": 0.2, "seed": 4}


def train(tmp_path: Path, name: str, data: dict) -> Path:
    """A short real run; returns its output directory (model.pt, status.json, evaluation.json)."""
    training_job = job(name, {
        "workers": {"replicas": 1, "cpusPerWorker": 1}, "metrics": {"port": free_port()}, "data": data,
        "model": {"architecture": "mlp", "hiddenUnits": [16], "batchNorm": True},
        "hyperparameters": {"epochs": 3, "batchSize": 16, "learningRate": 0.01, "optimizer": "adamw", "seed": 1},
    })
    code, runner = run_local(training_job, str(tmp_path / "runs"), manifest_dir=str(tmp_path), stream=io.StringIO())
    assert code == 0, runner.status.message
    return tmp_path / "runs" / name


def predict_rows(out: Path, rows: pd.DataFrame, tmp_path: Path, labels: bool = True) -> pd.DataFrame:
    rows.to_csv(tmp_path / "rows.csv", index=False)
    assert main(["predict", str(out / "model.pt"), str(tmp_path / "rows.csv"), "--output", str(tmp_path / "p.csv")]) == 0
    return pd.read_csv(tmp_path / "p.csv", dtype={"prediction": str} if labels else None)


def exports_match_pytorch(out: Path, data: dict) -> None:
    artifact = read_artifact(str(out / "model.pt"))
    test_x = load_data(DataSpec.model_validate(data)).test.x
    with torch.inference_mode():
        expected = artifact.build()(test_x).numpy()
    for fmt in ("onnx", "torchscript"):
        target = out / f"model.{fmt}"
        assert main(["export", str(out / "model.pt"), "--format", fmt, "--output", str(target)]) == 0
        assert np.abs(run_export(str(target), fmt, test_x) - expected).max() <= TOLERANCE


@pytest.mark.timeout(300)
def test_predictions_of_a_trained_classifier_reproduce_its_test_metrics(tmp_path):
    pytest.importorskip("onnxruntime")
    frame = write_table(tmp_path / "t.csv", rows=150, missing=6)
    data = {"source": str(tmp_path / "t.csv"), "split": SPLIT}
    out = train(tmp_path, "cls", data)
    status = json.loads((out / "status.json").read_text())
    rows = split_test_rows(frame, data, "target", classification=True)
    preds = predict_rows(out, rows.sample(frac=1.0, axis=1, random_state=0), tmp_path)  # columns in another order
    truth = rows["target"].to_numpy()
    assert (preds["prediction"].to_numpy() == truth).mean() == pytest.approx(status["metrics"]["test_accuracy"], abs=1e-12)
    proba = preds[["proba_no", "proba_yes"]].to_numpy()
    labels = ["no", "yes"]
    y_true = np.array([labels.index(t) for t in truth])
    cross_entropy = -np.log(proba[np.arange(len(rows)), y_true]).mean()
    assert cross_entropy == pytest.approx(status["metrics"]["test_loss"], rel=1e-4)
    y_pred = np.array([labels.index(p) for p in preds["prediction"]])
    report = build_report("classification", y_true, y_pred, proba, labels)
    assert report["metrics"] == pytest.approx(json.loads((out / "evaluation.json").read_text())["metrics"], rel=1e-4)
    exports_match_pytorch(out, data)


@pytest.mark.timeout(300)
def test_predictions_of_a_trained_regressor_are_in_the_targets_units(tmp_path):
    frame = regression_table(tmp_path / "houses.csv", rows=120)
    data = {"source": str(tmp_path / "houses.csv"), "target": "price", "split": SPLIT}
    out = train(tmp_path, "reg", data)
    status = json.loads((out / "status.json").read_text())
    rows = split_test_rows(frame, data, "price", classification=False)
    preds = predict_rows(out, rows.assign(id=range(len(rows))), tmp_path, labels=False)
    errors = preds["prediction"].to_numpy() - rows["price"].to_numpy()
    assert np.abs(errors).mean() == pytest.approx(status["metrics"]["test_mae"], rel=1e-4)
    assert np.sqrt((errors**2).mean()) == pytest.approx(status["metrics"]["test_rmse"], rel=1e-4)
    report = build_report("regression", rows["price"].to_numpy(), preds["prediction"].to_numpy(), None, [])
    assert report["metrics"] == pytest.approx(json.loads((out / "evaluation.json").read_text())["metrics"], rel=1e-4)
