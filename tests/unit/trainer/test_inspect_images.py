"""`kiln inspect` on image folders written here with Pillow: classes, counts, sizes, channel means,
sampling, split sizes equal to the trainer's, and undecodable files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kiln_api import TrainingJob
from kiln_api.spec import DataFormat, DataSpec
from kiln_trainer.data import DataError, load_data
from kiln_trainer.data.hash_split import SPLITS
from kiln_trainer.data.stream_pipelines import open_source
from kiln_trainer.inspect_run import inspect_job
from PIL import Image

COLOURS = {"blue": (0, 0, 255), "red": (255, 0, 0)}


def job(**data: Any) -> TrainingJob:
    return TrainingJob.model_validate({"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob",
                                       "metadata": {"name": "inspect"}, "spec": {"data": data}})


def solid_folder(root: Path, counts: dict[str, int], sizes: list[tuple[int, int]]) -> Path:
    """Each class's images are one solid colour; image i of a class has size sizes[i % len(sizes)]."""
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", sizes[i % len(sizes)], COLOURS[name]).save(root / name / f"{i}.png")
    return root


def test_classes_counts_sizes_and_channel_means_are_those_of_the_files(tmp_path: Path) -> None:
    counts = {"blue": 4, "red": 8}
    sizes = [(10, 20), (30, 12)]
    root = solid_folder(tmp_path / "imgs", counts, sizes)
    report = inspect_job(job(source=str(root), imageSize=8))
    assert report["rows"] == 12
    assert {k: v["count"] for k, v in report["target"]["classes"].items()} == counts
    widths = [sizes[i % 2][0] for n in counts.values() for i in range(n)]
    assert report["images"]["width"]["quantiles"]["0.5"] == pytest.approx(np.median(widths))
    assert report["images"]["height"]["quantiles"]["1"] == max(h for _, h in sizes)
    pixels = report["images"]["pixels"]
    assert pixels["names"] == ["red", "green", "blue"]
    assert pixels["mean"] == pytest.approx([8 / 12, 0.0, 4 / 12])
    assert report["images"]["modes"] == {"RGB": 12}
    assert report["warnings"] == []


def test_images_beyond_the_cap_are_sampled_and_the_report_says_so(tmp_path: Path) -> None:
    root = solid_folder(tmp_path / "imgs", {"blue": 6, "red": 6}, [(9, 9)])
    report = inspect_job(job(source=str(root)), sample_images=5)
    sampling = report["sampling"]
    assert sampling["sampled"] and sampling["rows_analysed"] == 5 and sampling["rows_total"] == 12
    assert "5 of 12 images" in sampling["note"]
    assert report["images"]["width"]["count"] == 5
    assert sum(v["count"] for v in report["target"]["classes"].values()) == 12  # listing counts every file


def test_a_class_under_five_percent_is_flagged_by_its_folder(tmp_path: Path) -> None:
    root = solid_folder(tmp_path / "imgs", {"blue": 1, "red": 25}, [(9, 9)])
    warnings = inspect_job(job(source=str(root)))["warnings"]
    assert [(w["kind"], w["column"]) for w in warnings] == [("class_imbalance", "blue")]


def test_memory_split_sizes_equal_the_trainers(tmp_path: Path) -> None:
    root = solid_folder(tmp_path / "imgs", {"blue": 9, "red": 14}, [(9, 9)])
    data = {"source": str(root), "imageSize": 8, "split": {"train": 0.6, "validation": 0.2, "test": 0.2}}
    splits = inspect_job(job(**data))["splits"]
    bundle = load_data(DataSpec.model_validate(data), for_architecture="cnn")
    assert (splits["train"], splits["validation"], splits["test"]) == (len(bundle.train), len(bundle.validation), len(bundle.test))


def test_streamed_split_sizes_equal_the_stream_sources(tmp_path: Path) -> None:
    root = solid_folder(tmp_path / "imgs", {"blue": 9, "red": 14}, [(9, 9)])
    data = {"source": str(root), "loading": "stream", "split": {"train": 0.5, "validation": 0.3, "test": 0.2, "seed": 5}}
    splits = inspect_job(job(**data))["splits"]
    source = open_source(DataSpec.model_validate(data), str(root), DataFormat.imagefolder)
    files = source._split_files(source._classes())
    assert splits["loading"] == "stream"
    assert {name: splits[name] for name in SPLITS} == {name: len(files[name]) for name in SPLITS}


def test_an_undecodable_image_is_an_error_naming_the_file(tmp_path: Path) -> None:
    root = solid_folder(tmp_path / "imgs", {"blue": 2, "red": 2}, [(9, 9)])
    (root / "red" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"cannot decode image .*broken\.png"):
        inspect_job(job(source=str(root)))
