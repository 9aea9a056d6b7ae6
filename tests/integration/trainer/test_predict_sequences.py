"""Sequence and text models: `kiln predict` builds their inputs with data/sequence.py and data/text.py
(one prediction per window, per text), and their ONNX / TorchScript exports match PyTorch."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from kiln_cli.main import main
from kiln_trainer.data.sequence import sequence_inputs
from kiln_trainer.data.text import text_inputs
from kiln_trainer.export import TOLERANCE, run_export

from tests.support.model_files import SavedModel, save_model

SPLIT = {"train": 0.6, "validation": 0.2, "test": 0.2, "seed": 0}
WORDS = {"yes": ["good", "great", "fine", "lovely"], "no": ["bad", "awful", "poor", "sad"]}


def series_csv(path: Path, rows: int = 90) -> pd.DataFrame:
    steps = np.arange(rows)
    frame = pd.DataFrame({"value": np.sin(steps / 5.0) * 20 + 100, "other": np.cos(steps / 7.0)})
    frame.to_csv(path, index=False)
    return frame


def texts_csv(path: Path, rows: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    labels = rng.choice(["yes", "no"], rows)
    # Texts of different lengths: padding differs from row to row, as the masks must handle.
    texts = [" ".join(rng.choice(WORDS[label], rng.integers(2, 12))) for label in labels]
    frame = pd.DataFrame({"text": texts, "target": labels})
    frame.to_csv(path, index=False)
    return frame


def sequence_model(tmp_path: Path, arch: str) -> tuple[SavedModel, pd.DataFrame]:
    frame = series_csv(tmp_path / "series.csv")
    data = {"source": str(tmp_path / "series.csv"), "format": "sequence", "target": "value", "task": "regression",
            "sequence": {"length": 8, "features": ["value", "other"]}, "split": SPLIT}
    model = {"architecture": arch, "hiddenSize": 8, "layers": 1, "heads": 2, "feedForward": 16}
    return save_model(data, model, tmp_path / "model.pt"), frame


def text_model(tmp_path: Path, arch: str, **model_fields: object) -> tuple[SavedModel, pd.DataFrame]:
    frame = texts_csv(tmp_path / "texts.csv")
    data = {"source": str(tmp_path / "texts.csv"), "format": "text", "split": SPLIT,
            "text": {"vocabSize": 64, "maxLength": 12}}
    model = {"architecture": arch, "hiddenSize": 8, "layers": 2, "heads": 2, "feedForward": 16, **model_fields}
    return save_model(data, model, tmp_path / "model.pt"), frame


def test_a_sequence_model_predicts_one_row_per_window_in_the_targets_units(tmp_path, capsys):
    saved, frame = sequence_model(tmp_path, "lstm")
    assert main(["predict", str(saved.path), str(tmp_path / "series.csv")]) == 0
    preds = pd.read_csv(io.StringIO(capsys.readouterr().out))
    windows = sequence_inputs(saved.bundle.inference, frame)
    assert len(preds) == len(windows) == len(frame) - 8 + 1
    assert preds["row"].tolist() == list(range(7, len(frame)))  # the row each window ends at
    with torch.inference_mode():
        expected = saved.net(windows)[:, 0].double().numpy() * saved.bundle.target_std + saved.bundle.target_mean
    np.testing.assert_allclose(preds["prediction"], expected, rtol=1e-6)


def test_a_text_model_predicts_original_labels_per_text(tmp_path, capsys):
    saved, frame = text_model(tmp_path, "transformer")
    assert main(["predict", str(saved.path), str(tmp_path / "texts.csv"), "--batch-size", "7"]) == 0
    preds = pd.read_csv(io.StringIO(capsys.readouterr().out))
    with torch.inference_mode():
        proba = torch.softmax(saved.net(text_inputs(saved.bundle.inference, frame)), dim=1).numpy()
    assert len(preds) == len(frame)
    assert preds["prediction"].tolist() == [saved.bundle.class_names[i] for i in proba.argmax(axis=1)]
    np.testing.assert_allclose(preds[[f"proba_{c}" for c in saved.bundle.class_names]], proba, atol=1e-6)


def test_a_missing_text_column_is_refused_naming_it(tmp_path, capsys):
    saved, frame = text_model(tmp_path, "lstm")
    frame.rename(columns={"text": "body"}).to_csv(tmp_path / "other.csv", index=False)
    assert main(["predict", str(saved.path), str(tmp_path / "other.csv")]) == 2
    err = capsys.readouterr().err
    assert "'text'" in err and "Traceback" not in err


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize(("make", "arch"), [(sequence_model, "lstm"), (sequence_model, "transformer"),
                                            (text_model, "lstm"), (text_model, "transformer")])
def test_sequence_and_text_exports_match_pytorch_on_the_test_split(tmp_path, capsys, fmt, make, arch):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    saved, _ = make(tmp_path, arch)
    target = tmp_path / f"net.{fmt}"
    assert main(["export", str(saved.path), "--format", fmt, "--output", str(target)]) == 0, capsys.readouterr().err
    test_x = saved.bundle.test.x
    with torch.inference_mode():
        expected = saved.net(test_x).numpy()
    assert np.abs(run_export(str(target), fmt, test_x) - expected).max() <= TOLERANCE


@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_a_single_layer_text_rnn_exports_to_onnx_and_matches_pytorch(tmp_path, capsys, arch, pooling):
    # torch's ONNX exporter fails on a packed single-layer RNN: the export runs it over the padding.
    pytest.importorskip("onnxruntime")
    saved, _ = text_model(tmp_path, arch, layers=1, pooling=pooling)
    target = tmp_path / "net.onnx"
    assert main(["export", str(saved.path), "--format", "onnx", "--output", str(target)]) == 0, capsys.readouterr().err
    with torch.inference_mode():
        expected = saved.net(saved.bundle.test.x).numpy()
    assert np.abs(run_export(str(target), "onnx", saved.bundle.test.x) - expected).max() <= TOLERANCE


def test_a_bidirectional_single_layer_rnn_names_torchscript_when_onnx_cannot_export_it(tmp_path, capsys):
    saved, _ = text_model(tmp_path, "lstm", layers=1, bidirectional=True)
    assert main(["export", str(saved.path), "--format", "onnx", "--output", str(tmp_path / "net.onnx")]) == 2
    assert "--format torchscript can" in capsys.readouterr().err


def test_windows_of_grouped_series_name_their_series_and_last_row(tmp_path, capsys):
    steps = np.arange(40)
    frame = pd.DataFrame({"station": np.repeat(["north", "south"], 40), "value": np.tile(np.sin(steps / 4.0), 2)})
    frame = frame.iloc[np.argsort(np.tile(steps, 2), kind="stable")]  # the two series interleaved in time
    frame.to_csv(tmp_path / "stations.csv", index=False)
    data = {"source": str(tmp_path / "stations.csv"), "format": "sequence", "target": "value", "task": "regression",
            "sequence": {"length": 5, "stride": 3, "features": ["value"], "groupBy": "station"}, "split": SPLIT}
    saved = save_model(data, {"architecture": "gru", "hiddenSize": 4, "layers": 1}, tmp_path / "model.pt")
    assert main(["predict", str(saved.path), str(tmp_path / "stations.csv")]) == 0
    preds = pd.read_csv(io.StringIO(capsys.readouterr().out))
    ends = [2 * (start + 4) for start in range(0, 36, 3)]  # north's rows are the even file rows
    assert preds["station"].tolist() == ["north"] * len(ends) + ["south"] * len(ends)
    assert preds["row"].tolist() == ends + [end + 1 for end in ends]
