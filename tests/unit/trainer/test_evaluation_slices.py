"""The sliceBy columns come from the data loader, row-aligned with the test split; a column that is
not there, or data without columns, is a DataError naming spec.evaluation.sliceBy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from kiln_api.spec import DataSpec
from kiln_trainer.data import DataError, load_data
from kiln_trainer.data.slice_columns import ColumnRequest

SPLIT = {"train": 0.5, "validation": 0.2, "test": 0.3, "seed": 3}


def _table(path, rows: int = 90, missing: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "row": np.arange(rows),  # a feature that is also a slice: each row its own value
        "a": rng.normal(size=rows),
        "region": rng.choice(["north", "south", "east"], size=rows),
        "target": rng.choice(["yes", "no"], size=rows),
    })
    if missing:
        frame.loc[rng.choice(rows, size=missing, replace=False), "a"] = np.nan
    frame.to_csv(path, index=False)
    return frame


@pytest.mark.parametrize("impute", ["mean", "drop"])
def test_slice_values_line_up_with_the_test_rows_and_excluded_columns_are_not_features(tmp_path, impute):
    frame = _table(tmp_path / "t.csv", missing=7)
    spec = DataSpec(source=str(tmp_path / "t.csv"), split=SPLIT, preprocessing={"impute": impute})
    bundle = load_data(spec, columns=ColumnRequest(keep=("row", "region"), drop=("region",)))
    assert bundle.input_shape == (2,)  # row and a: region is read for the report only
    test_x = bundle.test.x.numpy()
    # The test rows' own `row` feature, unscaled, names the source row each slice value must come from.
    rows = np.rint(test_x[:, 0] * bundle.preprocessor.scale[0] + bundle.preprocessor.center[0]).astype(int)
    assert [int(v) for v in bundle.test_columns["row"]] == rows.tolist()
    assert list(bundle.test_columns["region"]) == frame["region"].to_numpy()[rows].tolist()
    if impute == "drop":
        assert not set(rows) & set(np.flatnonzero(frame["a"].isna()))


def test_without_slices_nothing_extra_is_kept(tmp_path):
    _table(tmp_path / "t.csv")
    bundle = load_data(DataSpec(source=str(tmp_path / "t.csv"), split=SPLIT))
    assert bundle.test_columns == {} and bundle.input_shape == (5,)  # row, a and region one-hot (3 values)


def test_a_slice_column_missing_from_the_table_is_named(tmp_path):
    _table(tmp_path / "t.csv")
    spec = DataSpec(source=str(tmp_path / "t.csv"), split=SPLIT)
    with pytest.raises(DataError, match=r"spec\.evaluation\.sliceBy: column 'county' not found in .*t\.csv \(columns: row, a, region, target\)"):
        load_data(spec, columns=ColumnRequest(keep=("region", "county")))


def test_builtin_data_has_no_columns_to_slice_by():
    with pytest.raises(DataError, match=r"spec\.evaluation\.sliceBy: builtin:iris has no column 'region' to slice by"):
        load_data(DataSpec(source="builtin:iris"), columns=ColumnRequest(keep=("region",)))


def test_a_column_of_too_many_values_is_refused(tmp_path):
    _table(tmp_path / "t.csv", rows=150)
    with pytest.raises(DataError, match=r"spec\.evaluation\.sliceBy: column 'row' of .* has 150 distinct values; at most 100"):
        load_data(DataSpec(source=str(tmp_path / "t.csv"), split=SPLIT), columns=ColumnRequest(keep=("row",)))


def test_a_table_that_loading_auto_streams_is_refused_with_slices_before_training(tmp_path):
    from kiln_trainer.data.errors import SpecError
    from kiln_trainer.driver_options import DriverOptions
    from kiln_trainer.train_setup import stream_datasets

    from tests.support.trainer_helpers import job

    _table(tmp_path / "t.csv")
    streamed = job("s", {"data": {"source": str(tmp_path / "t.csv"), "stream": {"thresholdMiB": 0}},
                         "evaluation": {"sliceBy": ["region"]}})
    with pytest.raises(SpecError, match=r"spec\.evaluation\.sliceBy: .* streamed .* set data\.loading: memory"):
        stream_datasets(streamed, DriverOptions(checkpoint_dir=str(tmp_path / "c"), pvc_root=str(tmp_path)), {})
