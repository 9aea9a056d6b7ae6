"""`kiln inspect`'s split sizes of streamed sources equal the plan Ray Data builds for training (the
shared local Ray cluster): rows with gaps, dropped rows and text columns, and image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from kiln_api import TrainingJob
from kiln_api.spec import DataFormat, DataSpec
from kiln_trainer.data.hash_split import SPLITS
from kiln_trainer.data.stream_pipelines import open_source
from kiln_trainer.inspect_run import inspect_job

from tests.support.datafiles import write_image_folder, write_table

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def inspected_and_planned(data: dict, data_format: DataFormat) -> tuple[dict, dict]:
    job = TrainingJob.model_validate({"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob",
                                      "metadata": {"name": "inspect"}, "spec": {"data": data}})
    splits = inspect_job(job)["splits"]
    plan, _ = open_source(DataSpec.model_validate(data), data["source"], data_format).build()
    return {name: splits[name] for name in SPLITS}, {name: plan.rows.get(name, 0) for name in SPLITS}


def test_streamed_table_split_sizes_equal_the_training_plans(ray_cluster, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    frame = write_table(path, rows=400, missing=20)
    frame["count"] = np.where(np.arange(400) % 7 == 0, np.nan, np.arange(400))  # integers with gaps
    frame.loc[[3, 8], "colour"] = None
    frame.loc[[5], "target"] = None
    frame.to_csv(path, index=False)
    data = {"source": str(path), "loading": "stream", "preprocessing": {"impute": "drop"},
            "split": {"train": 0.7, "validation": 0.2, "test": 0.1, "seed": 4}}
    inspected, planned = inspected_and_planned(data, DataFormat.csv)
    assert inspected == planned


def test_streamed_image_split_sizes_equal_the_training_plans(ray_cluster, tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=7, size=8)
    data = {"source": str(root), "loading": "stream", "imageSize": 8, "split": {"train": 0.6, "validation": 0.2, "test": 0.2}}
    inspected, planned = inspected_and_planned(data, DataFormat.imagefolder)
    assert inspected == planned
