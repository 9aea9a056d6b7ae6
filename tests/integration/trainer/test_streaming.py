"""Streamed file sources on the shared local Ray cluster: Ray Data pipelines, shards, statistics,
the stored plan, and one streamed two-worker training run."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from kiln_api.spec import DataFormat, DataSpec
from kiln_trainer.data.errors import DataError
from kiln_trainer.data.hash_split import TRAIN, rows_in_split
from kiln_trainer.data.preprocessing import fit_preprocessor
from kiln_trainer.data.stream_pipelines import open_source
from kiln_trainer.data.tables import encode_features
from kiln_trainer.local import run_local
from kiln_trainer.stream_driver import every_row_data_config, load_or_build_plan
from PIL import Image

from tests.support.datafiles import write_image_folder, write_table
from tests.support.trainer_helpers import job

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def shard_rows(datasets: dict, name: str, world_size: int) -> list[np.ndarray]:
    """Every rank's rows of `name`, the ranks reading at the same time (as training workers do)."""
    shards = every_row_data_config().configure(datasets, world_size=world_size, worker_handles=None, worker_node_ids=None)
    out: list[list[np.ndarray]] = [[] for _ in range(world_size)]

    def read(rank: int) -> None:
        for batch in shards[rank][name].iter_batches(batch_size=16):
            out[rank].append(batch["x"])

    threads = [threading.Thread(target=read, args=(rank,)) for rank in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a shard never ended"
    return [np.concatenate(parts) if parts else np.zeros((0, 0)) for parts in out]


def test_shards_of_a_table_read_through_fsspec_hold_every_training_row_once_preprocessed_as_in_memory(
        ray_cluster, tmp_path: Path) -> None:
    frame = write_table(tmp_path / "data" / "table.csv", rows=300, missing=15)
    spec = DataSpec(source="s3://bucket/table.csv", loading="stream")
    # A filesystem that is not the local one, as s3:// would be: every read goes through fsspec.
    remote_like = DirFileSystem(path=str(tmp_path / "data"), fs=LocalFileSystem())
    plan, datasets = open_source(spec, "table.csv", DataFormat.csv, fs=remote_like).build()
    train = frame[rows_in_split(frame, TRAIN, seed=spec.split.seed, validation=spec.split.validation, test=spec.split.test)]
    features = encode_features(train.drop(columns=["target"]), "table.csv")[plan.feature_names].to_numpy(np.float32)
    reference = fit_preprocessor(features, spec.preprocessing)
    np.testing.assert_allclose(plan.center, reference.center, rtol=1e-5)
    np.testing.assert_allclose(plan.scale, reference.scale, rtol=1e-5)
    assert plan.rows[TRAIN] == len(train)

    ranks = shard_rows(datasets, TRAIN, world_size=2)
    assert all(len(rows) > 0 for rows in ranks), [len(r) for r in ranks]
    seen = np.concatenate(ranks)
    expected = reference.transform(features)
    order = np.lexsort(seen.T[::-1])
    np.testing.assert_allclose(seen[order], expected[np.lexsort(expected.T[::-1])], rtol=1e-5, atol=1e-6)


def test_streamed_images_stay_uint8_and_their_channel_statistics_equal_a_full_pass(ray_cluster, tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", per_class=12, size=16)
    spec = DataSpec(source=str(root), loading="stream", image_size=16)
    plan, datasets = open_source(spec, str(root), DataFormat.imagefolder).build()
    assert plan.kind == "image" and plan.input_shape == [3, 16, 16] and plan.class_names == ["cat", "dog"]
    batch = next(iter(datasets[TRAIN].iter_batches(batch_size=4)))
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (4, 16, 16, 3)

    labels = {name: i for i, name in enumerate(plan.class_names)}
    images, seen_labels = [], []
    for batch in datasets[TRAIN].iter_batches(batch_size=64):
        images.append(batch["image"])
        seen_labels.extend(batch["y"].tolist())
    assert len(seen_labels) == plan.rows[TRAIN]
    files = sorted(root.glob("*/*.png"))
    decoded = {f: np.asarray(Image.open(f).convert("RGB")) for f in files}
    # Each training image is one of the files, with its folder's label.
    by_bytes = {d.tobytes(): labels[f.parent.name] for f, d in decoded.items()}
    streamed = np.concatenate(images)
    assert [by_bytes[img.tobytes()] for img in streamed] == seen_labels
    pixels = streamed.reshape(-1, 3).astype(np.float64) / 255.0
    np.testing.assert_allclose(plan.center, pixels.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(plan.scale, pixels.std(axis=0), rtol=1e-5)


@pytest.mark.parametrize("cache_fraction", [0.0, 0.4], ids=["decoded-every-epoch", "decoded-once-in-the-store"])
def test_two_shards_of_a_streamed_image_split_hold_every_training_image_once_with_its_label_every_epoch(
        ray_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_fraction: float) -> None:
    from kiln_trainer.data import stream_pipelines

    monkeypatch.setattr(stream_pipelines, "CACHE_STORE_FRACTION", cache_fraction)
    root = write_image_folder(tmp_path / "images", classes=("a", "b", "c"), per_class=20, size=8, mode="L")
    spec = DataSpec(source=str(root), loading="stream", image_size=8)
    plan, datasets = open_source(spec, str(root), DataFormat.imagefolder).build()
    assert plan.input_shape == [1, 8, 8]
    files = {f: plan.class_names.index(f.parent.name) for f in root.glob("*/*.png")}
    label_of = {np.asarray(Image.open(f))[..., None].tobytes(): label for f, label in files.items()}
    shards = every_row_data_config().configure({TRAIN: datasets[TRAIN]}, world_size=2, worker_handles=None,
                                               worker_node_ids=None)
    orders = []
    for _ in range(2):  # epochs
        out: list[list[tuple[bytes, int]]] = [[], []]

        def read(rank: int, out: list[list[tuple[bytes, int]]]) -> None:
            for batch in shards[rank][TRAIN].iter_batches(batch_size=7):
                assert batch["image"].dtype == np.uint8 and batch["image"].shape[1:] == (8, 8, 1)
                out[rank].extend(zip((img.tobytes() for img in batch["image"]), batch["y"].tolist(), strict=True))

        threads = [threading.Thread(target=read, args=(rank, out)) for rank in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        seen = out[0] + out[1]
        assert all(out), "a shard got no rows"
        assert len(seen) == plan.rows[TRAIN] and len({img for img, _ in seen}) == len(seen)
        assert all(label_of[img] == label for img, label in seen)
        orders.append([img for img, _ in seen])
    assert sorted(orders[0]) == sorted(orders[1])


def test_a_setting_error_found_in_a_ray_data_task_names_the_field_without_a_traceback(ray_cluster, tmp_path: Path) -> None:
    write_table(tmp_path / "table.csv", rows=50)
    spec = DataSpec(source=str(tmp_path / "table.csv"), loading="stream", target="label")
    with pytest.raises(DataError) as caught:
        open_source(spec, str(tmp_path / "table.csv"), DataFormat.csv).build()
    assert caught.value.field == "spec.data.target"
    assert "not found" in str(caught.value) and "Traceback" not in str(caught.value)


def test_a_restarted_driver_keeps_the_stored_split_and_statistics_even_when_rows_were_added(
        ray_cluster, tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    write_table(path, rows=200)
    spec = DataSpec(source=str(path), loading="stream")
    first, _ = load_or_build_plan(open_source(spec, str(path), DataFormat.csv), str(tmp_path / "ckpt"))
    write_table(path, rows=400, seed=7)  # the file changed under a running job
    again, _ = load_or_build_plan(open_source(spec, str(path), DataFormat.csv), str(tmp_path / "ckpt"))
    assert again == first
    reseeded = spec.model_copy(update={"split": spec.split.model_copy(update={"seed": 9})})
    other, _ = load_or_build_plan(open_source(reseeded, str(path), DataFormat.csv), str(tmp_path / "ckpt"))
    assert other.data_key != first.data_key and other.center != first.center


def test_two_workers_train_on_a_streamed_image_folder_with_augmentation_on_the_device(ray_cluster, tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", per_class=16, size=16)
    training_job = job("streamed-images", {
        "data": {"source": str(root), "loading": "stream", "imageSize": 16, "augmentation": {"horizontalFlip": True}},
        "model": {"architecture": "cnn"}, "workers": {"replicas": 2}, "hyperparameters": {"epochs": 2, "batchSize": 8},
    })
    out = io.StringIO()
    code, runner = run_local(training_job, str(tmp_path / "out"), manifest_dir=str(tmp_path), stream=out)
    assert code == 0, out.getvalue()[-2000:]
    status = json.loads((tmp_path / "out" / "streamed-images" / "status.json").read_text())
    assert status["phase"] == "Succeeded"
    assert status["progress"]["dataPlacement"] == "stream"
    assert status["progress"]["trainRows"] == 24
    assert "test_accuracy" in status["metrics"]
    assert "placement: stream" in out.getvalue()
    assert (tmp_path / "out" / "streamed-images" / "checkpoints" / "stream_plan.json").is_file()


def test_two_workers_train_on_a_streamed_parquet_table_while_they_hold_every_cpu(ray_cluster, tmp_path: Path) -> None:
    # The shared cluster has 2 CPUs and the two training workers take both: every Ray Data task
    # (file listing included) must run without asking for one.
    write_table(tmp_path / "table.parquet", rows=240)
    training_job = job("streamed-table", {
        "data": {"source": str(tmp_path / "table.parquet"), "loading": "stream"}, "workers": {"replicas": 2},
        "model": {"architecture": "mlp", "hiddenUnits": [8]}, "hyperparameters": {"epochs": 1, "batchSize": 16},
    })
    out = io.StringIO()
    code, _ = run_local(training_job, str(tmp_path / "out"), manifest_dir=str(tmp_path), stream=out)
    assert code == 0, out.getvalue()[-2000:]
    status = json.loads((tmp_path / "out" / "streamed-table" / "status.json").read_text())
    assert (status["phase"], status["progress"]["dataPlacement"]) == ("Succeeded", "stream")
