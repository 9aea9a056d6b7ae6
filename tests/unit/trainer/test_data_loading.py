"""Every kind of data source loads into a DataBundle of the right shape."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from kiln_api.spec import DataFormat, DataSpec
from kiln_trainer.data import DataBundle, DataError, load_data
from kiln_trainer.data.sources import infer_format, load_digits_quickly

from tests.support.datafiles import write_image_folder, write_table


def spec(**fields: object) -> DataSpec:
    return DataSpec.model_validate(fields)


def first(bundle: DataBundle) -> tuple[torch.Tensor, torch.Tensor]:
    return bundle.train[0]


@pytest.mark.parametrize(
    ("source", "arch", "input_shape", "output_dim", "rows"),
    [
        ("builtin:digits", "mlp", (64,), 10, 1797),
        ("builtin:digits", "cnn", (1, 8, 8), 10, 1797),
        ("builtin:digits", "resnet18", (1, 8, 8), 10, 1797),
        ("builtin:iris", "mlp", (4,), 3, 150),
        ("builtin:wine", "mlp", (13,), 3, 178),
        ("builtin:breast_cancer", "mlp", (30,), 2, 569),
    ],
)
def test_builtin_sets_load_as_tables_or_images(source: str, arch: str, input_shape: tuple, output_dim: int, rows: int) -> None:
    bundle = load_data(spec(source=source), for_architecture=arch)
    x, y = first(bundle)
    assert bundle.input_shape == input_shape and tuple(x.shape) == input_shape
    assert bundle.output_dim == output_dim == len(bundle.class_names)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert bundle.task == "classification"
    assert bundle.summary.rows == rows
    assert len(bundle.train) + len(bundle.validation) + len(bundle.test) == rows


def test_digits_read_without_scikit_learn_equal_scikit_learns_loader() -> None:
    from sklearn.datasets import load_digits

    quick, reference = load_digits_quickly(), load_digits()
    assert quick is not None, "scikit-learn's digits file was not found"
    np.testing.assert_array_equal(quick["data"], reference.data)
    np.testing.assert_array_equal(quick["target"], reference.target)
    np.testing.assert_array_equal(quick["images"], reference.images)
    assert quick["feature_names"] == list(reference.feature_names)
    assert list(quick["target_names"]) == list(reference.target_names)


def test_synthetic_classification_follows_its_spec() -> None:
    bundle = load_data(spec(source="synthetic:classification", synthetic={"samples": 200, "features": 7, "classes": 4}))
    assert bundle.input_shape == (7,) and bundle.output_dim == 4 and bundle.summary.rows == 200
    assert set(bundle.train.y.tolist()) == {0, 1, 2, 3}


def test_synthetic_regression_yields_standardised_float_vectors() -> None:
    bundle = load_data(spec(source="synthetic:regression", synthetic={"samples": 300, "features": 5}))
    x, y = first(bundle)
    assert bundle.task == "regression" and bundle.output_dim == 1 and bundle.class_names == []
    assert y.dtype == torch.float32 and tuple(y.shape) == (1,)
    assert bundle.summary.classes is None
    assert abs(float(bundle.train.y.mean())) < 1e-4 and abs(float(bundle.train.y.std()) - 1) < 0.01
    assert bundle.target_std > 1.0  # make_regression targets span far more than one unit


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_synthetic_data_is_a_function_of_the_split_seed(kind: str) -> None:
    def rows(seed: int) -> torch.Tensor:
        b = load_data(spec(source=f"synthetic:{kind}", synthetic={"samples": 50, "features": 4}, split={"seed": seed}))
        return torch.sort(b.train.x.sum(dim=1)).values

    assert torch.equal(rows(3), rows(3))
    assert not torch.equal(rows(3), rows(4))


def test_csv_with_missing_values_and_string_labels(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    frame = write_table(path, rows=60, missing=5)
    bundle = load_data(spec(source=str(path), split={"train": 0.6, "validation": 0.2, "test": 0.2}))
    assert bundle.class_names == ["no", "yes"]
    # a, b and the three one-hot colour columns
    assert bundle.input_shape == (5,)
    assert bundle.summary.missing_values == 5 and bundle.summary.rows == 60
    assert not torch.isnan(bundle.train.x).any() and not torch.isnan(bundle.test.x).any()
    share_yes = float((frame["target"] == "yes").mean())
    assert bundle.summary.class_balance["yes"] == pytest.approx(share_yes)


def test_integer_target_is_classification_and_float_target_regression(tmp_path: Path) -> None:
    ints = tmp_path / "ints.csv"
    write_table(ints, string_labels=False)
    assert load_data(spec(source=str(ints))).task == "classification"
    floats = tmp_path / "floats.csv"
    frame = write_table(floats)
    frame.assign(target=frame["a"] * 2.5).to_csv(floats, index=False)
    bundle = load_data(spec(source=str(floats)))
    assert bundle.task == "regression" and bundle.output_dim == 1


def test_parquet_table_loads(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    write_table(path, rows=40, string_labels=False)
    bundle = load_data(spec(source=str(path)))
    assert bundle.input_shape == (5,) and bundle.class_names == ["0", "1"] and bundle.summary.rows == 40


@pytest.mark.parametrize(("mode", "channels"), [("RGB", 3), ("L", 1)])
def test_image_folder_is_resized_to_image_size(tmp_path: Path, mode: str, channels: int) -> None:
    write_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=5, size=12, mode=mode)
    bundle = load_data(spec(source=str(tmp_path / "imgs"), imageSize=16), for_architecture="cnn")
    assert bundle.input_shape == (channels, 16, 16)
    assert bundle.class_names == ["a", "b", "c"] and bundle.summary.rows == 15
    assert tuple(first(bundle)[0].shape) == (channels, 16, 16)


def test_pvc_source_resolves_under_the_pvc_root(tmp_path: Path) -> None:
    write_table(tmp_path / "pvc" / "datasets" / "sub" / "t.csv", rows=30)
    bundle = load_data(spec(source="pvc://datasets/sub/t.csv"), pvc_root=str(tmp_path / "pvc"))
    assert bundle.summary.rows == 30 and bundle.summary.source == "pvc://datasets/sub/t.csv"


def test_summary_describes_the_data() -> None:
    text = load_data(spec(source="builtin:iris")).summary.describe()
    assert "builtin:iris" in text and "rows: 150" in text and "classes: 3" in text and "setosa: 33.3%" in text


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"source": "/nonexistent/data.csv"}, "spec.data.source", "/nonexistent/data.csv"),
        ({"source": "pvc://claim/missing.csv"}, "spec.data.source", "missing.csv"),
        ({"source": "builtin:iris", "task": "regression"}, "spec.data.task", "classification"),
        ({"source": "synthetic:classification", "synthetic": {"features": 2, "classes": 10}}, "spec.data.synthetic.features", "10 classes"),
    ],
)
def test_bad_sources_name_the_field(fields: dict, field: str, words: str, tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_data(spec(**fields), pvc_root=str(tmp_path))
    assert info.value.field == field and words in str(info.value)


def test_missing_target_column_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    write_table(path)
    with pytest.raises(DataError) as info:
        load_data(spec(source=str(path), target="label"))
    assert info.value.field == "spec.data.target" and "'label'" in info.value.message and "colour" in info.value.message


def test_unknown_extension_asks_for_a_format(tmp_path: Path) -> None:
    path = tmp_path / "t.dat"
    path.write_text("a,target\n1,2\n")
    with pytest.raises(DataError) as info:
        load_data(spec(source=str(path)))
    assert info.value.field == "spec.data.format"


def test_image_architecture_on_a_table_is_refused() -> None:
    with pytest.raises(DataError) as info:
        load_data(spec(source="builtin:iris"), for_architecture="cnn")
    assert info.value.field == "spec.model.architecture"


def test_explicit_csv_format_reads_a_file_without_extension(tmp_path: Path) -> None:
    path = tmp_path / "table"
    write_table(path.with_suffix(".csv"), rows=20)
    path.with_suffix(".csv").rename(path)
    assert load_data(spec(source=str(path), format="csv")).summary.rows == 20
    assert np.isfinite(load_data(spec(source=str(path), format="csv")).train.x.numpy()).all()


def test_remote_tables_and_image_folders_load_through_fsspec(tmp_path: Path) -> None:
    """s3:// needs a network; fsspec's memory:// filesystem exercises the same remote code path."""
    import fsspec
    from kiln_trainer.data.images import load_image_folder
    from kiln_trainer.data.tables import load_table

    fs = fsspec.filesystem("memory")
    write_table(tmp_path / "t.parquet", rows=25)
    fs.pipe("/kiln-remote/t.parquet", (tmp_path / "t.parquet").read_bytes())
    table = load_table("memory://kiln-remote/t.parquet", "parquet", target="target", task=None, source="s3://b/t.parquet")
    assert table.x.shape == (25, 5) and table.class_names == ["no", "yes"]

    write_image_folder(tmp_path / "imgs", per_class=3, size=8)
    for path in (tmp_path / "imgs").rglob("*.png"):
        fs.pipe(f"/kiln-remote/imgs/{path.parent.name}/{path.name}", path.read_bytes())
    images = load_image_folder("memory://kiln-remote/imgs", 10, source="s3://b/imgs")
    assert images.x.shape == (6, 3, 10, 10) and images.class_names == ["cat", "dog"]
    assert images.y.tolist() == [0, 0, 0, 1, 1, 1]


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="with s3fs installed this would try the network")
def test_s3_source_without_its_backend_is_a_clear_error() -> None:
    with pytest.raises(DataError) as info:
        load_data(spec(source="s3://bucket/data.csv"))
    assert info.value.field == "spec.data.source" and "s3://bucket/data.csv" in info.value.message


@pytest.mark.parametrize(
    ("requested", "location", "is_dir", "expected"),
    [
        ("auto", "/d/t.csv", False, "csv"),
        ("auto", "/d/T.CSV.GZ", False, "csv"),
        ("auto", "/d/t.tsv", False, "csv"),
        ("auto", "/d/t.parquet", False, "parquet"),
        ("auto", "/d/t.pq", False, "parquet"),
        ("auto", "/d/images", True, "imagefolder"),
        ("parquet", "/d/blob", False, "parquet"),
        ("imagefolder", "/d/t.csv", False, None),
        ("csv", "/d/images", True, None),
    ],
)
def test_format_inference(requested: str, location: str, is_dir: bool, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(DataError, match="spec.data.format"):
            infer_format(DataFormat(requested), location, is_dir)
    else:
        assert infer_format(DataFormat(requested), location, is_dir) == DataFormat(expected)


def test_image_folder_with_a_single_class_is_refused(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "imgs", classes=("only",), per_class=3)
    with pytest.raises(DataError) as info:
        load_data(spec(source=str(tmp_path / "imgs")), for_architecture="cnn")
    assert info.value.field == "spec.data.source" and "at least 2" in info.value.message
