"""`kiln predict`: raw rows in, predictions in the target's own labels or units out, through main()."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from kiln_cli.main import main

from tests.support.datafiles import write_image_folder, write_table
from tests.support.model_files import (
    CNN,
    MLP,
    SavedModel,
    expected_classes,
    regression_table,
    rewrite_metadata,
    save_model,
    split_test_rows,
)

TABLE = {"split": {"train": 0.6, "validation": 0.2, "test": 0.2, "seed": 3}}


@pytest.fixture
def classifier(tmp_path: Path) -> tuple[SavedModel, pd.DataFrame, dict]:
    frame = write_table(tmp_path / "t.csv", rows=80, missing=4)
    data = {"source": str(tmp_path / "t.csv"), **TABLE}
    return save_model(data, MLP, tmp_path / "model.pt"), frame, data


def predict(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["predict", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_predicts_original_labels_and_probabilities_whatever_the_column_order(classifier, tmp_path, capsys, suffix):
    saved, frame, data = classifier
    rows = split_test_rows(frame, data, "target", classification=True)
    # Columns shuffled, an id added and the target kept: only the model's columns are read, by name.
    shuffled = rows.assign(id=range(len(rows)))[["id", "colour", "target", "b", "a"]]
    source = tmp_path / f"new{suffix}"
    shuffled.to_parquet(source) if suffix == ".parquet" else shuffled.to_csv(source, index=False)
    code, _, err = predict(capsys, saved.path, source, "--output", tmp_path / "preds.csv", "--batch-size", 7)
    assert code == 0, err
    preds = pd.read_csv(tmp_path / "preds.csv", dtype={"prediction": str})
    labels, proba = expected_classes(saved)
    assert list(preds.columns) == ["prediction", "proba_no", "proba_yes"]
    assert preds["prediction"].tolist() == labels
    np.testing.assert_allclose(preds[["proba_no", "proba_yes"]].to_numpy(), proba, atol=1e-6)


def test_without_output_the_predictions_go_to_stdout_as_csv(classifier, tmp_path, capsys):
    saved, frame, _ = classifier
    code, out, err = predict(capsys, saved.path, tmp_path / "t.csv")
    assert code == 0 and f"{len(frame)} predictions" in err
    printed = pd.read_csv(io.StringIO(out))
    assert len(printed) == len(frame) and set(printed["prediction"]) <= {"no", "yes"}


def test_parquet_output_holds_the_same_predictions(classifier, tmp_path, capsys):
    saved, _, _ = classifier
    assert predict(capsys, saved.path, tmp_path / "t.csv", "--output", tmp_path / "p.csv")[0] == 0
    assert predict(capsys, saved.path, tmp_path / "t.csv", "--output", tmp_path / "p.parquet")[0] == 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "p.parquet"), pd.read_csv(tmp_path / "p.csv"), atol=1e-6,
                                  check_dtype=False)


def test_regression_predictions_are_in_the_targets_units(tmp_path, capsys):
    frame = regression_table(tmp_path / "houses.csv")
    data = {"source": str(tmp_path / "houses.csv"), "target": "price", **TABLE}
    saved = save_model(data, MLP, tmp_path / "model.pt")
    rows = split_test_rows(frame, data, "price", classification=False)
    rows.drop(columns=["price"]).to_csv(tmp_path / "new.csv", index=False)  # no target needed
    code, out, err = predict(capsys, saved.path, tmp_path / "new.csv")
    assert code == 0, err
    with torch.inference_mode():
        standardised = saved.net(saved.bundle.test.x)[:, 0].double().numpy()
    bundle = saved.bundle
    assert bundle.target_mean > 900  # the check below would not notice a missing rescaling otherwise
    np.testing.assert_allclose(pd.read_csv(io.StringIO(out))["prediction"],
                               standardised * bundle.target_std + bundle.target_mean, rtol=1e-6)


def test_an_image_folder_gets_one_prediction_per_image(tmp_path, capsys):
    folder = write_image_folder(tmp_path / "images", per_class=5, size=10)
    data = {"source": str(folder), "imageSize": 8, "split": {"train": 0.6, "validation": 0.2, "test": 0.2, "seed": 0}}
    saved = save_model(data, CNN, tmp_path / "model.pt")
    code, out, err = predict(capsys, saved.path, folder, "--batch-size", 3)
    assert code == 0, err
    preds = pd.read_csv(io.StringIO(out))
    assert sorted(preds["path"]) == sorted(f"{c}/{i}.png" for c in ("cat", "dog") for i in range(5))
    # The training pipeline's own inputs for the same files give the same probabilities.
    from kiln_trainer.data.images import load_image_folder

    raw = load_image_folder(str(folder), 8, source="t")
    x = torch.from_numpy(saved.bundle.preprocessor.transform(raw.x))
    with torch.inference_mode():
        proba = torch.softmax(saved.net(x), dim=1).numpy()
    order = [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(5)]
    got = preds.set_index("path").loc[order, ["proba_cat", "proba_dog"]].to_numpy()
    np.testing.assert_allclose(got, proba, atol=1e-6)
    assert predict(capsys, saved.path, folder / "dog" / "0.png")[0] == 0  # a single file too


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["colour"]), r"lacks 1 column\(s\) the model was trained on: 'colour'"),
        (lambda f: f.drop(columns=["a", "b"]), "'a', 'b'"),
        (lambda f: f.assign(b="many"), "column 'b' of .* holds numbers in training"),
        (lambda f: f.iloc[:0], "no rows to predict"),
    ],
)
def test_data_that_does_not_fit_is_refused_naming_the_column(classifier, tmp_path, capsys, change, message):
    saved, frame, _ = classifier
    change(frame).to_csv(tmp_path / "bad.csv", index=False)
    code, out, err = predict(capsys, saved.path, tmp_path / "bad.csv", "--output", tmp_path / "p.csv")
    assert code == 2 and out == "" and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "p.csv").exists()


def test_bad_arguments_are_refused_with_exit_code_2(classifier, tmp_path, capsys):
    saved, _, _ = classifier
    (tmp_path / "old.pt").write_bytes(b"")
    torch.save({"head.weight": torch.zeros(1)}, tmp_path / "bare.pt")
    cases = [
        ((tmp_path / "absent.pt", tmp_path / "t.csv"), "no such file"),
        ((tmp_path / "bare.pt", tmp_path / "t.csv"), "older Kiln"),
        ((tmp_path / "old.pt", tmp_path / "t.csv"), "not a Kiln model file"),
        ((saved.path, tmp_path / "absent.csv"), "absent.csv: no such file"),
        ((saved.path, tmp_path), "is a directory"),
        ((saved.path, tmp_path / "t.csv", "--device", "tpu:9"), "--device"),
        ((saved.path, tmp_path / "t.csv", "--device", "meta"), "runs on cpu or cuda"),
        ((saved.path, tmp_path / "t.csv", "--batch-size", "0"), "--batch-size"),
        ((saved.path, tmp_path / "t.csv", "--output", tmp_path / "no" / "dir.csv"), "--output"),
    ]
    (tmp_path / "junk.csv").write_bytes(b"\xff\xfe\x00garbage")
    cases.append(((saved.path, tmp_path / "junk.csv"), "junk.csv"))
    for args, message in cases:
        code, _, err = predict(capsys, *args)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda recipe: recipe.__setitem__("scale", [1.0]), "scale holds 1 values for 5 features"),
        (lambda recipe: recipe.pop("columns"), "lacks 'columns'"),
        (lambda recipe: recipe["columns"].__setitem__(0, {"name": "a", "kind": "date"}), "no valid kind"),
        (lambda recipe: recipe.__setitem__("format", "audio"), "format 'audio'"),
    ],
)
def test_a_damaged_input_recipe_is_refused_before_predicting(classifier, tmp_path, capsys, change, message):
    saved, _, _ = classifier
    rewrite_metadata(saved.path, lambda loaded, document: change(document["inference"]))
    code, _, err = predict(capsys, saved.path, tmp_path / "t.csv")
    assert code == 2 and message in err and "Traceback" not in err, err


@pytest.fixture
def object_store(tmp_path: Path):
    """fsspec's in-memory filesystem (a real fsspec implementation, as s3fs is one): `copy(local, key)`
    uploads a file or a folder and returns its memory:// URL."""
    import uuid

    import fsspec

    fs, root = fsspec.filesystem("memory"), f"/kiln-test-{uuid.uuid4().hex}"

    def copy(local: Path, key: str) -> str:
        if local.is_dir():
            for path in local.rglob("*"):
                if path.is_file():
                    fs.pipe_file(f"{root}/{key}/{path.relative_to(local).as_posix()}", path.read_bytes())
        else:
            fs.pipe_file(f"{root}/{key}", local.read_bytes())
        return f"memory://{root}/{key}"

    yield copy
    if fs.exists(root):
        fs.rm(root, recursive=True)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_model_and_a_table_in_an_object_store_predict_as_local_files_do(classifier, tmp_path, capsys, object_store, suffix):
    saved, frame, _ = classifier
    table = tmp_path / f"rows{suffix}"
    frame.to_parquet(table) if suffix == ".parquet" else frame.to_csv(table, index=False)
    local = predict(capsys, saved.path, table)
    remote = predict(capsys, object_store(saved.path, "job/model.pt"), object_store(table, f"new/rows{suffix}"))
    assert remote[0] == 0 and remote[1] == local[1] and f"{len(frame)} predictions" in remote[2], remote[2]


def test_an_image_folder_in_an_object_store_predicts_as_a_local_one(tmp_path, capsys, object_store):
    folder = write_image_folder(tmp_path / "images", per_class=3, size=10)
    data = {"source": str(folder), "imageSize": 8, "split": {"train": 0.6, "validation": 0.2, "test": 0.2, "seed": 0}}
    saved = save_model(data, CNN, tmp_path / "model.pt")
    local = predict(capsys, saved.path, folder)
    remote = predict(capsys, object_store(saved.path, "model.pt"), object_store(folder, "images"))
    assert remote[0] == 0 and remote[1] == local[1], remote[2]
    assert sorted(pd.read_csv(io.StringIO(remote[1]))["path"]) == sorted(f"{c}/{i}.png" for c in ("cat", "dog") for i in range(3))


def test_missing_objects_and_filesystems_are_named_without_a_traceback(classifier, tmp_path, capsys, object_store):
    saved, _, _ = classifier
    model = object_store(saved.path, "model.pt")
    cases = [((model.replace("model.pt", "absent.pt"), tmp_path / "t.csv"), "absent.pt: no such file"),
             ((model, model.replace("model.pt", "absent.csv")), "absent.csv: no such file")]
    try:
        import s3fs  # noqa: F401
    except ImportError:  # the S3 filesystem's package is an extra (kiln[s3]): say what is missing
        cases.append((("s3://bucket/model.pt", tmp_path / "t.csv"), "s3fs"))
    for args, message in cases:
        code, _, err = predict(capsys, *args)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)


def test_pvc_locations_resolve_under_kiln_pvc_root_as_kiln_run_does(classifier, tmp_path, capsys, monkeypatch):
    saved, frame, _ = classifier
    claim = tmp_path / "pvcs" / "models"
    claim.mkdir(parents=True)
    (claim / "model.pt").write_bytes(saved.path.read_bytes())
    frame.to_csv(claim / "rows.csv.gz", index=False)  # compressed, as pandas infers from the suffix
    monkeypatch.setenv("KILN_PVC_ROOT", str(tmp_path / "pvcs"))
    local = predict(capsys, saved.path, tmp_path / "t.csv")
    code, out, err = predict(capsys, "pvc://models/model.pt", "pvc://models/rows.csv.gz")
    assert code == 0 and out == local[1], err
    # kiln export writes beside a model on a mounted claim, and must be told where for an object store's.
    assert main(["export", "pvc://models/model.pt", "--format", "torchscript"]) == 0, capsys.readouterr().err
    assert (claim / "model.torchscript.pt").is_file()
    assert main(["export", "memory://nowhere/model.pt", "--format", "torchscript"]) == 2
    assert "name a local file" in capsys.readouterr().err
