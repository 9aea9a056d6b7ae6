"""data.format sequence: windowing, series boundaries, time-ordered splits without leakage, scaling
fitted on the training split, and `sequence_inputs` for new rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kiln_api.spec import DataSpec
from kiln_trainer.data import DataError, load_data
from kiln_trainer.data.sequence import cut_windows, sequence_inputs, window_starts


def spec(source: str, **changes: object) -> DataSpec:
    base: dict = {"source": source, "format": "sequence", "target": "value", "task": "regression",
                  "preprocessing": {"normalize": "none"}, "sequence": {"length": 4, "features": ["t", "value"]}}
    base.update(changes)
    return DataSpec.model_validate(base)


def write(tmp_path: Path, frame: pd.DataFrame, name: str = "series.csv") -> str:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return str(path)


def ramp(groups: dict[str, int]) -> pd.DataFrame:
    """Per group, time t = 0, 1, ...; value = 1000 * group number + t (so a value names its row)."""
    parts = [pd.DataFrame({"station": name, "t": np.arange(n, dtype=float), "value": 1000.0 * g + np.arange(n)})
             for g, (name, n) in enumerate(groups.items())]
    return pd.concat(parts, ignore_index=True)


@pytest.mark.parametrize(("rows", "length", "stride", "lookahead", "starts"), [
    (10, 4, 1, 0, [0, 1, 2, 3, 4, 5, 6]),
    (10, 4, 3, 0, [0, 3, 6]),
    (10, 4, 1, 2, [0, 1, 2, 3, 4]),
    (10, 4, 2, 1, [0, 2, 4]),
    (5, 4, 1, 1, [0]),
    (4, 4, 1, 1, []),
    (3, 4, 1, 0, []),
])
def test_window_starts_leave_room_for_the_window_and_its_target(rows, length, stride, lookahead, starts):
    assert window_starts(rows, length, stride, lookahead).tolist() == starts


def test_cut_windows_copies_consecutive_rows_of_every_feature():
    values = np.arange(20, dtype=np.float64).reshape(10, 2)
    windows = cut_windows(values, np.array([0, 3]), 4)
    assert windows.shape == (2, 4, 2) and windows.dtype == np.float32
    np.testing.assert_array_equal(windows[1], values[3:7])


def _windows_of(bundle) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(d.x.numpy(), d.y.numpy() * bundle.target_std + bundle.target_mean) for d in (bundle.train, bundle.validation, bundle.test)]


@pytest.mark.parametrize(("length", "stride", "horizon"), [(4, 1, 1), (5, 2, 3), (3, 3, 1)])
def test_forecast_target_is_the_value_horizon_steps_after_each_window(tmp_path, length, stride, horizon):
    source = write(tmp_path, ramp({"a": 60}))
    bundle = load_data(spec(source, sequence={"length": length, "stride": stride, "horizon": horizon, "features": ["t", "value"]}))
    for x, y in _windows_of(bundle):
        t = x[:, :, 0]
        np.testing.assert_array_equal(np.diff(t, axis=1), 1.0)  # consecutive rows
        np.testing.assert_allclose(y[:, 0], x[:, -1, 1] + horizon, atol=1e-3)  # value(t_last + horizon)
        if len(t) > 1:
            assert set(np.diff(t[:, 0]).tolist()) == {float(stride)}


def test_windows_never_cross_a_group_and_each_group_is_split_in_time(tmp_path):
    source = write(tmp_path, ramp({"north": 50, "south": 70}))
    bundle = load_data(spec(source, sequence={"length": 4, "features": ["t", "value"], "groupBy": "station"}))
    splits = _windows_of(bundle)
    for x, y in splits:
        group = np.floor(x[:, :, 1] / 1000)
        assert (group == group[:, :1]).all(), "a window mixes two stations"
        assert (np.floor(y[:, 0] / 1000) == group[:, 0]).all(), "a target comes from another station"
    for g in (0, 1):  # per station: every train time < every validation time < every test time
        spans = []
        for x, y in splits:
            mine = np.floor(x[:, 0, 1] / 1000) == g
            spans.append((x[mine, 0, 0].min(), y[mine, 0].max() - 1000 * g))  # first row, target row
        assert spans[0][1] < spans[1][0] and spans[1][1] < spans[2][0], spans


def test_no_window_or_target_reaches_into_another_split(tmp_path):
    rows = 100
    source = write(tmp_path, ramp({"a": rows}))
    bundle = load_data(spec(source, split={"train": 0.6, "validation": 0.2, "test": 0.2}))
    bounds = [(0, 60), (60, 80), (80, 100)]  # the split is of rows, in time order
    for (x, y), (lo, hi) in zip(_windows_of(bundle), bounds, strict=True):
        assert x[:, :, 0].min() >= lo and y[:, 0].max() < hi
    assert len(bundle.train) == 60 - 4 - 1 + 1


def test_scaling_and_imputation_are_fitted_on_the_training_rows_only(tmp_path):
    frame = ramp({"a": 100})
    frame.loc[95, "t"] = np.nan  # a test row: its absence must not move the training mean
    source = write(tmp_path, frame)
    bundle = load_data(spec(source, preprocessing={"normalize": "standard", "impute": "mean"},
                            split={"train": 0.6, "validation": 0.2, "test": 0.2}))
    train_t = np.arange(60, dtype=float)
    assert bundle.inference["feature_center"][0] == pytest.approx(train_t.mean())
    assert bundle.inference["feature_scale"][0] == pytest.approx(train_t.std())
    assert bundle.inference["feature_fill"][0] == pytest.approx(train_t.mean())
    assert bundle.train.x[:, :, 0].mean().item() == pytest.approx(0.0, abs=0.05)


def test_classification_labels_each_window_with_its_last_row(tmp_path):
    n = 90
    frame = pd.DataFrame({"t": np.arange(n, dtype=float), "state": np.where(np.arange(n) % 10 < 5, "low", "high")})
    source = write(tmp_path, frame)
    bundle = load_data(spec(source, target="state", task="classification", sequence={"length": 3, "features": ["t"]}))
    assert bundle.task == "classification" and bundle.class_names == ["high", "low"]
    for d in (bundle.train, bundle.validation, bundle.test):
        last = d.x[:, -1, 0].numpy().astype(int)
        expected = np.where(last % 10 < 5, 1, 0)
        np.testing.assert_array_equal(d.y.numpy(), expected)


@pytest.mark.parametrize(("changes", "field", "words"), [
    ({"sequence": {"length": 4, "features": ["t", "missing"]}}, "spec.data.sequence.features", "'missing'"),
    ({"sequence": {"length": 4, "groupBy": "site"}}, "spec.data.sequence.groupBy", "'site'"),
    ({"target": "nope"}, "spec.data.target", "'nope'"),
    ({"sequence": {"length": 4, "features": ["station"]}}, "spec.data.sequence.features", "not numeric"),
    ({"sequence": {"length": 40}}, "spec.data.split", "validation"),
])
def test_bad_sequence_settings_name_the_field(tmp_path, changes, field, words):
    source = write(tmp_path, ramp({"a": 60}))
    with pytest.raises(DataError) as caught:
        load_data(spec(source, **changes))
    assert caught.value.field == field and words in caught.value.message


def test_default_features_are_the_numeric_columns_but_target_and_group(tmp_path):
    frame = ramp({"a": 40, "b": 40}).assign(temp=1.0, note="x")
    source = write(tmp_path, frame)
    bundle = load_data(spec(source, sequence={"length": 4, "groupBy": "station"}))
    assert bundle.inference["features"] == ["t", "temp"]


def test_sequence_inputs_gives_every_window_per_group_in_order(tmp_path):
    source = write(tmp_path, ramp({"a": 60}))
    bundle = load_data(spec(source, sequence={"length": 4, "stride": 2, "features": ["t", "value"], "groupBy": "station"}))
    new = ramp({"x": 9, "y": 6})
    x = sequence_inputs(bundle.inference, new).numpy()
    assert x.shape == (3 + 2, 4, 2)  # starts 0, 2, 4 of 9 rows; 0, 2 of 6
    np.testing.assert_array_equal(x[:, 0, 0], [0, 2, 4, 0, 2])
    np.testing.assert_array_equal(x[3, :, 1], 1000 + np.arange(4))


def test_sequence_inputs_name_missing_columns(tmp_path):
    source = write(tmp_path, ramp({"a": 60}))
    inference = load_data(spec(source)).inference
    with pytest.raises(DataError, match="'value'"):
        sequence_inputs(inference, pd.DataFrame({"t": [1.0, 2.0]}))


def test_synthetic_waveforms_are_deterministic_per_seed_and_stratified():
    def load(seed: int):
        return load_data(DataSpec.model_validate({"source": "synthetic:sequence", "synthetic": {"samples": 120, "features": 2, "classes": 3},
                                                  "sequence": {"length": 16}, "split": {"seed": seed}}), for_architecture="gru")
    a, b, c = load(1), load(1), load(2)
    assert a.input_shape == (16, 2) and a.class_names == ["sine", "square", "sawtooth"]
    assert np.array_equal(a.train.x.numpy(), b.train.x.numpy()) and not np.array_equal(a.train.x.numpy(), c.train.x.numpy())
    assert set(np.bincount(a.test.y.numpy()).tolist()) <= {5, 6, 7}  # 18 test windows, 3 classes


def test_synthetic_forecasting_series_is_split_in_time():
    bundle = load_data(DataSpec.model_validate({"source": "synthetic:sequence", "task": "regression", "synthetic": {"samples": 300},
                                                "sequence": {"length": 8}}), for_architecture="lstm")
    assert bundle.task == "regression" and bundle.input_shape == (8, 1) and bundle.inference["features"] == ["value"]
    assert len(bundle.train) == 210 - 8 and len(bundle.validation) == 45 - 8
