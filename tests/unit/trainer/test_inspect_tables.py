"""`kiln inspect` on tables: counts over real CSV/Parquet files, builtin and synthetic sets, the
warnings, and split sizes that equal the trainer's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.csv as pacsv
import pytest
from kiln_api import TrainingJob
from kiln_api.spec import DataSpec
from kiln_trainer import inspect_run
from kiln_trainer.data import load_data
from kiln_trainer.data.hash_split import SPLITS, rows_in_split
from kiln_trainer.data.sources import load_digits_quickly
from kiln_trainer.inspect_run import inspect_job
from kiln_trainer.inspect_scan import scan_frames

from tests.support.datafiles import write_table


def job(**data: Any) -> TrainingJob:
    return TrainingJob.model_validate({"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob",
                                       "metadata": {"name": "inspect"}, "spec": {"data": data}})


def frame_report(frame: pd.DataFrame, **data: Any) -> dict[str, Any]:
    """The report of an in-memory frame, through the same scan and analysis a file gets."""
    spec = DataSpec.model_validate({"source": "table.csv", **data})
    scan = scan_frames(iter([frame]), spec, streamed=False, source="table.csv")
    return inspect_run.table_from_scan(scan, spec, streamed=False)


def kinds(report: dict[str, Any]) -> set[tuple[str, str]]:
    return {(w["kind"], w["column"]) for w in report["warnings"]}


def clean_frame(rows: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "a": rng.normal(size=rows), "b": rng.uniform(0, 10, rows), "colour": rng.choice(["red", "green", "blue"], rows),
        "target": rng.choice(["no", "yes"], rows),
    })


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_file_report_counts_rows_columns_missing_classes_and_duplicates(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"table{suffix}"
    frame = write_table(path, rows=80, missing=9)
    frame = pd.concat([frame, frame.iloc[:5]], ignore_index=True)  # five duplicate rows
    frame.to_parquet(path) if suffix == ".parquet" else frame.to_csv(path, index=False)
    report = inspect_job(job(source=str(path)))
    assert report["rows"] == len(frame) and report["columns"] == frame.shape[1]
    missing = {c["name"]: c["missing"] for c in report["column_info"]}
    assert missing == {str(k): int(v) for k, v in frame.isna().sum().items()}
    assert report["duplicates"]["rows"] == int(frame.duplicated().sum())
    classes = {k: v["count"] for k, v in report["target"]["classes"].items()}
    assert classes == {str(k): int(v) for k, v in frame["target"].value_counts().items()}
    types = {c["name"]: c["type"] for c in report["column_info"]}
    assert types["a"] == "float" and types["colour"] == "text"
    assert report["sampling"]["sampled"] is False


def test_numeric_column_quantiles_histogram_and_iqr_outliers_describe_its_values() -> None:
    frame = clean_frame()
    frame.loc[:3, "a"] = 50.0  # four far outliers
    report = frame_report(frame)
    stats = next(c for c in report["column_info"] if c["name"] == "a")["numeric"]
    values = frame["a"].to_numpy()
    q1, q3 = np.quantile(values, [0.25, 0.75])
    outside = ((values < q1 - 1.5 * (q3 - q1)) | (values > q3 + 1.5 * (q3 - q1))).sum()
    assert stats["outliers"]["count"] == outside >= 4
    assert stats["quantiles"]["0.5"] == pytest.approx(np.median(values))
    assert sum(stats["histogram"]["counts"]) == len(values)


def test_large_tables_are_sampled_but_counts_stay_exact(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    frame = write_table(path, rows=600, missing=40)
    report = inspect_job(job(source=str(path)), sample_rows=100)
    assert report["sampling"]["sampled"] and report["sampling"]["rows_analysed"] == 100
    assert "100 of 600 rows" in report["sampling"]["note"]
    assert report["rows"] == 600
    assert next(c for c in report["column_info"] if c["name"] == "b")["missing"] == frame["b"].isna().sum()
    assert sum(v["count"] for v in report["target"]["classes"].values()) == 600
    assert next(c for c in report["column_info"] if c["name"] == "a")["numeric"]["count"] == 100


def test_memory_split_sizes_equal_the_trainers(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    frame = write_table(path, rows=97, missing=11)
    frame.loc[[2, 5], "target"] = np.nan  # rows without a label are dropped by the trainer
    frame.to_csv(path, index=False)
    for impute in ("mean", "drop"):
        data = {"source": str(path), "preprocessing": {"impute": impute}, "split": {"train": 0.6, "validation": 0.25, "test": 0.15}}
        splits = inspect_job(job(**data))["splits"]
        bundle = load_data(DataSpec.model_validate(data))
        assert (splits["train"], splits["validation"], splits["test"]) == (
            len(bundle.train), len(bundle.validation), len(bundle.test)), impute


def test_streamed_split_sizes_equal_the_row_hash_split_of_the_rows_ray_data_reads(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    write_table(path, rows=300, missing=7)
    data = {"source": str(path), "loading": "stream", "split": {"train": 0.7, "validation": 0.2, "test": 0.1, "seed": 3}}
    splits = inspect_job(job(**data))["splits"]
    read = pacsv.read_csv(path).to_pandas()  # Ray Data's read_csv: pyarrow, then pandas batches
    expected = {name: int(rows_in_split(read, name, seed=3, validation=0.2, test=0.1).sum()) for name in SPLITS}
    assert splits["loading"] == "stream"
    assert {name: splits[name] for name in SPLITS} == expected


def test_builtin_digits_counts_match_the_data_set() -> None:
    digits = load_digits_quickly()
    assert digits is not None
    report = inspect_job(job(source="builtin:digits"))
    assert report["rows"] == len(digits["target"]) and report["columns"] == digits["data"].shape[1] + 1
    classes = {k: v["count"] for k, v in report["target"]["classes"].items()}
    assert classes == {str(c): int(n) for c, n in enumerate(np.bincount(digits["target"]))}
    constant = {w["column"] for w in report["warnings"] if w["kind"] == "constant"}
    assert constant == {name for name, col in zip(digits["feature_names"], digits["data"].T, strict=True) if np.ptp(col) == 0}


def test_synthetic_set_counts_follow_the_spec() -> None:
    report = inspect_job(job(source="synthetic:classification", synthetic={"samples": 300, "features": 6, "classes": 3}))
    assert report["rows"] == 300 and report["columns"] == 7 and len(report["target"]["classes"]) == 3
    assert report["splits"]["train"] + report["splits"]["validation"] + report["splits"]["test"] == 300


def test_a_synthetic_set_too_large_to_build_is_analysed_smaller_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inspect_run, "MAX_SYNTHETIC_VALUES", 1000)
    report = inspect_job(job(source="synthetic:regression", synthetic={"samples": 1000, "features": 10}))
    assert report["sampling"]["sampled"] and report["sampling"]["rows_analysed"] == 100
    assert report["rows"] == 1000 and sum(report["splits"][s] for s in SPLITS) == 1000


def _imbalanced(frame: pd.DataFrame) -> pd.DataFrame:
    frame["target"] = np.where(np.arange(len(frame)) < 12, "rare", frame["target"])  # 3 %
    return frame


def _constant(frame: pd.DataFrame) -> pd.DataFrame:
    frame["version"] = 7
    return frame


def _mostly_missing(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[frame.index[: int(len(frame) * 0.3)], "b"] = np.nan
    return frame


def _numeric_copy(frame: pd.DataFrame) -> pd.DataFrame:
    frame["leak"] = (frame["target"] == "yes") * 2.0 + np.random.default_rng(1).normal(0, 0.01, len(frame))
    return frame


def _categorical_copy(frame: pd.DataFrame) -> pd.DataFrame:
    frame["verdict"] = frame["target"].map({"no": "rejected", "yes": "approved"})
    return frame


def _many_words(frame: pd.DataFrame) -> pd.DataFrame:
    # Unique per row: too many values to one-hot encode, and an identifier is no copy of the label.
    frame["comment"] = [f"note {i}" for i in range(len(frame))]
    return frame


@pytest.mark.parametrize(("build", "expected"), [
    (_imbalanced, ("class_imbalance", "target")),
    (_many_words, ("unusable", "comment")),
    (_constant, ("constant", "version")),
    (_mostly_missing, ("missing", "b")),
    (_numeric_copy, ("leakage", "leak")),
    (_categorical_copy, ("leakage", "verdict")),
])
def test_each_warning_fires_on_data_built_to_trigger_it_naming_the_column(build: Any, expected: tuple[str, str]) -> None:
    report = frame_report(build(clean_frame()))
    assert kinds(report) == {expected}


def test_clean_data_gets_no_warning_even_with_an_id_column_or_a_merely_useful_feature() -> None:
    frame = clean_frame()
    frame["id"] = np.arange(len(frame))  # unique per row: no association with the label
    frame["useful"] = (frame["target"] == "yes") + np.random.default_rng(2).normal(0, 0.6, len(frame))
    report = frame_report(frame)
    assert report["warnings"] == []
    assert report["correlations"][0]["column"] == "useful"


def test_regression_leakage_fires_on_a_near_copy_of_the_target() -> None:
    frame = clean_frame().drop(columns=["target"])
    frame["target"] = frame["a"] * 3.0 + np.random.default_rng(3).normal(0, 2.0, len(frame))
    frame["copy"] = frame["target"] * 0.5 + 1.0
    report = frame_report(frame, task="regression")
    assert kinds(report) == {("leakage", "copy")}
    assert report["target"]["distribution"]["count"] == len(frame)


def test_infinite_values_leave_the_report_strict_json() -> None:
    frame = clean_frame()
    frame.loc[:5, "a"] = np.inf
    frame.loc[6:9, "b"] = np.nan
    report = frame_report(frame)
    json.dumps(inspect_run.json_safe(report), allow_nan=False)  # raises on NaN or infinity
    assert inspect_run.json_safe({"x": float("nan"), "y": [np.float32(np.inf)], "z": np.int64(3)}) == {"x": None, "y": [None], "z": 3}
    assert next(c for c in report["column_info"] if c["name"] == "a")["numeric"]["count"] == len(frame) - 6
