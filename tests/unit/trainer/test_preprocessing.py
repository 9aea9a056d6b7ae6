"""Imputation and scaling are fitted on the training split only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from kiln_api.spec import DataSpec, PreprocessingSpec
from kiln_trainer.data import DataError, load_data
from kiln_trainer.data.preprocessing import fit_preprocessor

from tests.support.datafiles import write_table

NAN = np.nan


@pytest.mark.parametrize(
    ("impute", "normalize", "expected"),
    [
        # column values in train: 1, 2, NaN, 9
        ("mean", "none", [1, 2, 4, 9]),
        ("median", "none", [1, 2, 2, 9]),
        ("mean", "minmax", [0, 0.125, 0.375, 1]),
    ],
)
def test_fill_and_scale_tables(impute: str, normalize: str, expected: list[float]) -> None:
    x = np.array([[1.0], [2.0], [NAN], [9.0]], dtype=np.float32)
    pre = fit_preprocessor(x, PreprocessingSpec(impute=impute, normalize=normalize))
    assert pre.transform(x)[:, 0].tolist() == pytest.approx(expected)


def test_standard_scaling_centres_train_but_not_other_rows() -> None:
    train = np.array([[0.0, 10.0], [2.0, 10.0], [4.0, 10.0]], dtype=np.float32)
    pre = fit_preprocessor(train, PreprocessingSpec(normalize="standard"))
    out = pre.transform(train)
    assert out.mean(axis=0) == pytest.approx([0, 0], abs=1e-6)
    assert out[:, 0].std() == pytest.approx(1.0)
    assert out[:, 1].tolist() == [0, 0, 0]  # constant column: centred, not divided by zero
    assert pre.transform(np.array([[100.0, 10.0]], dtype=np.float32))[0, 0] > 10


def test_images_are_scaled_per_channel() -> None:
    x = np.zeros((4, 2, 3, 3), dtype=np.float32)
    x[:, 1] = np.arange(4, dtype=np.float32)[:, None, None]
    pre = fit_preprocessor(x, PreprocessingSpec(normalize="standard"))
    assert pre.center.tolist() == pytest.approx([0.0, 1.5])
    out = pre.transform(x)
    assert out.shape == x.shape and out[:, 1].mean() == pytest.approx(0, abs=1e-6) and out[:, 0].max() == 0


def test_statistics_come_from_the_training_rows_only() -> None:
    bundle = load_data(DataSpec(source="builtin:wine"))
    train_mean = bundle.train.x.mean(dim=0)
    assert torch.allclose(train_mean, torch.zeros_like(train_mean), atol=1e-4)
    assert torch.allclose(bundle.train.x.std(dim=0, unbiased=False), torch.ones(13), atol=1e-3)
    # Fitted on train alone, held-out rows are not exactly centred; fitted on all rows they would be jointly.
    everything = torch.cat([bundle.train.x, bundle.validation.x, bundle.test.x])
    assert everything.mean(dim=0).abs().max() > 1e-3
    held_out = torch.cat([bundle.validation.x, bundle.test.x]).mean(dim=0)
    assert held_out.abs().max() > 0.05


@pytest.mark.parametrize(("impute", "rows"), [("mean", 60), ("median", 60), ("drop", 54)])
def test_each_impute_mode_leaves_no_missing_values(tmp_path: Path, impute: str, rows: int) -> None:
    path = tmp_path / "t.csv"
    write_table(path, rows=60, missing=6)
    bundle = load_data(DataSpec(source=str(path), preprocessing={"impute": impute}))
    splits = [bundle.train, bundle.validation, bundle.test]
    assert sum(len(s) for s in splits) == rows
    assert all(not torch.isnan(s.x).any() for s in splits)


def test_impute_fill_value_is_the_training_statistic(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    frame = write_table(path, rows=60, missing=6)
    bundle = load_data(DataSpec(source=str(path), preprocessing={"impute": "median", "normalize": "none"}))
    # With normalize none, column `a` is unchanged and identifies which table rows went to train.
    train_rows = frame[frame["a"].astype(np.float32).isin(bundle.train.x[:, 0].numpy())]
    assert len(train_rows) == len(bundle.train)
    fill = float(bundle.preprocessor.fill[1])
    assert fill == pytest.approx(float(train_rows["b"].median()), abs=1e-5)
    assert fill != pytest.approx(float(frame["b"].median()), abs=1e-5)


def test_impute_none_with_missing_values_names_the_field_and_column(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    write_table(path, rows=30, missing=3)
    with pytest.raises(DataError) as info:
        load_data(DataSpec(source=str(path), preprocessing={"impute": "none"}))
    assert info.value.field == "spec.data.preprocessing.impute"
    assert "3 missing values" in info.value.message and "'b'" in info.value.message


def test_missing_category_counts_as_missing(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    frame = write_table(path, rows=40)
    frame.loc[[0, 1], "colour"] = None
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="colour="):
        load_data(DataSpec(source=str(path), preprocessing={"impute": "none"}))
    assert load_data(DataSpec(source=str(path))).summary.missing_values == 2 * 3  # one per indicator column
