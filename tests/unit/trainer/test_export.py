"""`kiln export`: ONNX (run by onnxruntime) and TorchScript give PyTorch's outputs on the test split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from kiln_cli.main import main
from kiln_trainer.export import TOLERANCE, run_export
from kiln_trainer.model_artifact import read_artifact

from tests.support.datafiles import write_image_folder, write_table
from tests.support.model_files import CNN, MLP, SavedModel, save_model

pytest.importorskip("onnxruntime")


def table_model(tmp_path: Path) -> SavedModel:
    write_table(tmp_path / "t.csv", rows=60, missing=2)
    return save_model({"source": str(tmp_path / "t.csv")}, MLP, tmp_path / "model.pt")


def image_model(tmp_path: Path) -> SavedModel:
    folder = write_image_folder(tmp_path / "images", per_class=6, size=10)
    split = {"train": 0.5, "validation": 0.2, "test": 0.3, "seed": 0}
    return save_model({"source": str(folder), "imageSize": 8, "split": split}, CNN, tmp_path / "model.pt")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("make", [table_model, image_model], ids=["mlp", "cnn"])
def test_the_export_matches_pytorch_on_the_test_split(tmp_path, capsys, fmt, make):
    saved = make(tmp_path)
    target = tmp_path / f"net.{fmt}"
    assert main(["export", str(saved.path), "--format", fmt, "--output", str(target)]) == 0, capsys.readouterr().err
    test_x = saved.bundle.test.x  # a batch size the export never saw: the batch dimension is dynamic
    with torch.inference_mode():
        expected = saved.net(test_x).numpy()
    got = run_export(str(target), fmt, test_x)
    assert got.shape == expected.shape and len(got) not in (2, 5)
    assert np.abs(got - expected).max() <= TOLERANCE
    recipe = json.loads((tmp_path / f"net.{fmt}.kiln.json").read_text())
    assert recipe["inference"] == saved.bundle.inference and recipe["class_names"] == saved.bundle.class_names
    assert recipe["input"]["shape"] == ["batch", *saved.bundle.input_shape]


def test_the_default_output_sits_beside_the_model(tmp_path, capsys):
    saved = table_model(tmp_path)
    assert main(["export", str(saved.path), "--format", "torchscript"]) == 0
    assert "max difference from PyTorch" in capsys.readouterr().out
    assert (tmp_path / "model.torchscript.pt").is_file() and (tmp_path / "model.torchscript.pt.kiln.json").is_file()


def test_bad_input_to_export_is_refused_with_exit_code_2(tmp_path, capsys):
    saved = table_model(tmp_path)
    torch.save({"w": torch.zeros(1)}, tmp_path / "bare.pt")
    cases = [
        (["export", str(tmp_path / "absent.pt"), "--format", "onnx"], "no such file"),
        (["export", str(tmp_path / "bare.pt"), "--format", "onnx"], "older Kiln"),
        (["export", str(saved.path), "--format", "onnx", "--output", str(tmp_path / "no" / "x.onnx")], "--output"),
        (["export", str(saved.path), "--format", "torchscript", "--output", str(saved.path)], "is the model itself"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert read_artifact(str(saved.path)).metadata.task == "classification"  # still there, unchanged
    with pytest.raises(SystemExit) as stopped:
        main(["export", str(saved.path), "--format", "tflite"])
    assert stopped.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
