"""Checkpoints are atomic, verified on load, and retained by recency plus quality."""

from __future__ import annotations

import logging
import os
import uuid

import pytest
import torch
from kiln_trainer.checkpoints import (
    BackgroundWriter,
    CheckpointInfo,
    CheckpointStore,
    best_of,
    checkpoint_name,
    select_for_deletion,
    serialize_state,
)


def info(epoch: int, value: float | None) -> CheckpointInfo:
    metrics = {} if value is None else {"val_loss": value}
    return CheckpointInfo(checkpoint_name(epoch), f"/x/{epoch}", epoch, epoch * 10, metrics, "t")


@pytest.mark.parametrize(
    ("values", "keep", "mode", "protected", "deleted"),
    [
        # newest 2 (epochs 5, 4) plus the best (epoch 2) survive
        ([0.9, 0.5, 0.1, 0.3, 0.4, 0.6], 2, "min", (), [3, 1, 0]),
        # best is among the newest: only `keep` survive
        ([0.9, 0.5, 0.4, 0.3], 2, "min", (), [1, 0]),
        # max mode keeps the largest value
        ([0.9, 0.5, 0.4, 0.3], 1, "max", (), [2, 1]),
        # a protected (resumed-from) checkpoint is kept only until a newer verified one exists
        ([0.9, 0.5, 0.4, 0.3, 0.2], 1, "min", (1,), [3, 2, 1, 0]),
        ([0.9, 0.5], 1, "min", (1,), [0]),
        # checkpoints without the metric are ranked by recency only
        ([None, None, None], 1, "min", (), [1, 0]),
        # ties: the earliest best wins
        ([0.1, 0.1, 0.5, 0.6], 1, "min", (), [2, 1]),
    ],
)
def test_retention_keeps_newest_and_best(values, keep, mode, protected, deleted):
    infos = [info(epoch, value) for epoch, value in enumerate(values)]
    names = select_for_deletion(infos, keep, "val_loss", mode, frozenset(checkpoint_name(p) for p in protected))
    assert names == [checkpoint_name(e) for e in deleted]


def test_best_of_ignores_non_finite_values():
    assert best_of([info(0, float("nan")), info(1, 0.5)], "val_loss", "min").epoch == 1


def state(epoch: int) -> dict:
    return {"epoch": epoch, "weights": torch.full((64,), float(epoch))}


def test_save_then_load_round_trips_state_and_metadata(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=2)
    saved = store.save(3, state(3), step=30, metrics={"val_loss": 0.25})
    latest = store.latest_valid()
    assert latest == saved and latest.step == 30 and latest.value("val_loss") == 0.25
    assert torch.equal(store.load_state(latest)["weights"], torch.full((64,), 3.0))
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]


def test_truncated_newest_checkpoint_is_skipped_with_warning(tmp_path, caplog):
    store = CheckpointStore(str(tmp_path), keep=5)
    store.save(1, state(1), metrics={"val_loss": 1.0})
    newest = store.save(2, state(2), metrics={"val_loss": 0.5})
    path = tmp_path / newest.name / "state.pt"
    path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="kiln_trainer.checkpoints"):
        chosen = store.latest_valid()
    assert chosen.epoch == 1
    assert "skipping corrupt checkpoint" in caplog.text and newest.name in caplog.text
    assert store.load_state(chosen)["epoch"] == 1


def test_corrupted_bytes_of_same_size_are_detected(tmp_path):
    store = CheckpointStore(str(tmp_path))
    store.save(1, state(1))
    newest = store.save(2, state(2))
    path = tmp_path / newest.name / "state.pt"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    assert store.latest_valid().epoch == 1


def test_directory_without_manifest_or_temp_dir_is_never_picked(tmp_path, caplog):
    store = CheckpointStore(str(tmp_path))
    store.save(1, state(1))
    half = tmp_path / checkpoint_name(2)
    half.mkdir()
    (half / "state.pt").write_bytes(serialize_state(state(2)))
    tmp = tmp_path / f".tmp-{checkpoint_name(3)}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    (tmp / "state.pt").write_bytes(b"partial")
    with caplog.at_level(logging.WARNING, logger="kiln_trainer.checkpoints"):
        assert store.latest_valid().epoch == 1
    assert "no readable manifest" in caplog.text


def test_saving_the_same_epoch_again_replaces_it(tmp_path):
    store = CheckpointStore(str(tmp_path))
    store.save(1, state(1), metrics={"val_loss": 2.0})
    store.save(1, state(7), metrics={"val_loss": 1.0})
    [only] = store.list()
    assert only.value("val_loss") == 1.0 and store.load_state(only)["epoch"] == 7


def test_prune_applies_retention_on_disk(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=2, metric="val_loss", mode="min")
    for epoch, loss in enumerate([0.9, 0.1, 0.5, 0.6, 0.7]):
        store.save(epoch, state(epoch), metrics={"val_loss": loss})
    # Epoch 0 was resumed from, but newer verified checkpoints exist: its protection has lapsed.
    deleted = store.prune(protected=frozenset({checkpoint_name(0)}))
    assert deleted == [checkpoint_name(2), checkpoint_name(0)]
    assert [i.epoch for i in store.list()] == [1, 3, 4]
    assert store.best().epoch == 1


def test_user_files_round_trip(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "model.bin").write_bytes(b"abc")
    (src / "sub" / "opt.bin").write_bytes(b"xyz")
    store = CheckpointStore(str(tmp_path / "store"))
    saved = store.save(4, None, user_dir=str(src))
    out = store.fetch_user_dir(store.latest_valid(), str(tmp_path / "out"))
    assert saved.epoch == 4
    assert (tmp_path / "out" / "model.bin").read_bytes() == b"abc"
    assert (tmp_path / "out" / "sub" / "opt.bin").read_bytes() == b"xyz"
    assert out == str(tmp_path / "out")


def test_remote_store_writes_manifest_last_and_skips_incomplete():
    location = f"memory://kiln-test-{uuid.uuid4().hex[:8]}/ckpts"
    store = CheckpointStore(location, keep=1)
    store.save(1, state(1), metrics={"val_loss": 0.3})
    store.save(2, state(2), metrics={"val_loss": 0.4})
    # An upload that died before its manifest: visible as files, never as a checkpoint.
    store.fs.pipe_file(store._join(checkpoint_name(3), "state.pt"), b"partial")
    latest = store.latest_valid()
    assert latest.epoch == 2 and latest.location == f"{location}/{checkpoint_name(2)}"
    assert store.prune() == []  # epoch 1 is the best, epoch 2 the newest
    assert store.load_state(latest)["epoch"] == 2


def test_background_writer_saves_in_order_and_reports(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=1)
    seen: list[tuple[int, float]] = []
    writer = BackgroundWriter(store, lambda i, seconds: seen.append((i.epoch, seconds)))
    for epoch in range(3):
        writer.submit(epoch, serialize_state(state(epoch)), step=epoch, metrics={"val_loss": 1.0 - epoch / 10})
    writer.close()
    assert [e for e, _ in seen] == [0, 1, 2]
    assert all(seconds >= 0 for _, seconds in seen)
    assert [i.epoch for i in store.list()] == [2]


def test_background_writer_surfaces_write_errors(tmp_path):
    store = CheckpointStore(str(tmp_path))
    writer = BackgroundWriter(store, lambda *_: None)
    writer.submit(1, b"data", step=1, metrics={}, user_dir=None)
    writer.wait()
    store.root = str(tmp_path / "file")
    (tmp_path / "file").write_text("not a directory")
    writer.submit(2, b"data", step=2, metrics={})
    with pytest.raises(OSError):
        writer.close()
