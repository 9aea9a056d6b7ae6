"""Storage faults: corruption is skipped and not counted, storage errors fail the run, nothing is left behind."""

from __future__ import annotations

import errno
import os
import stat

import pytest
import torch
from kiln_trainer import checkpoint_io
from kiln_trainer.checkpoints import (
    BackgroundWriter,
    CheckpointStore,
    StorageUnavailable,
    checkpoint_name,
    serialize_state,
)
from kiln_trainer.worker import write_bytes


def state(epoch: int) -> bytes:
    return serialize_state({"epoch": epoch, "w": torch.full((256,), float(epoch))})


def truncate(path) -> None:
    path.write_bytes(path.read_bytes()[:50])


def failing_reads(monkeypatch, store: CheckpointStore, needle: str, code: int) -> None:
    """Reads of any path containing `needle` fail with OSError(code), as a flaky NFS or disk would."""
    read = store.io.read

    def flaky(path: str) -> bytes:
        if needle in path:
            raise OSError(code, os.strerror(code), path)
        return read(path)

    monkeypatch.setattr(store.io, "read", flaky)


def test_retention_counts_only_verified_checkpoints(tmp_path):
    # Two truncated checkpoints newer than the one a restart resumes from used to count toward
    # `keep`: pruning then deleted every new checkpoint and nothing was left to resume from.
    store = CheckpointStore(str(tmp_path), keep=2)
    for epoch in range(1, 5):
        store.save(epoch, state(epoch))
    for epoch in (3, 4):
        truncate(tmp_path / checkpoint_name(epoch) / "state.pt")
    restarted = CheckpointStore(str(tmp_path), keep=2)
    resumed = restarted.latest_valid()
    assert resumed.epoch == 2
    writer = BackgroundWriter(restarted, lambda *_: None)
    writer.protected = frozenset({resumed.name})
    writer.submit(3, state(30), step=3, metrics={})
    writer.close()
    assert [i.epoch for i in restarted.list()] == [2, 3]
    assert restarted.load_state(restarted.latest_valid())["epoch"] == 30
    # Epoch 4 was corrupt: deleted rather than counted, and epoch 3 is the newest valid one.
    assert not (tmp_path / checkpoint_name(4)).exists()


def test_resumed_from_checkpoint_is_pruned_once_a_newer_verified_one_exists(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=1, metric="absent")
    store.save(1, state(1))
    writer = BackgroundWriter(store, lambda *_: None)
    writer.protected = frozenset({checkpoint_name(1)})
    writer.submit(2, state(2), step=2, metrics={})
    writer.submit(3, state(3), step=3, metrics={})
    writer.close()
    assert [i.epoch for i in store.list()] == [3]


@pytest.mark.parametrize("code", [errno.EIO, errno.ESTALE])
def test_a_storage_error_while_verifying_fails_instead_of_skipping(tmp_path, monkeypatch, code):
    writer = CheckpointStore(str(tmp_path), keep=1)
    writer.save(1, state(1))
    newest = writer.save(2, state(2))
    store = CheckpointStore(str(tmp_path), keep=1)  # a restarted run, which has verified nothing yet
    failing_reads(monkeypatch, store, f"{newest.name}/state.pt", code)
    with pytest.raises(StorageUnavailable) as failed:
        store.latest_valid()
    assert failed.value.errno == code and newest.location in str(failed.value)
    with pytest.raises(StorageUnavailable):
        store.prune()  # nor is it counted as corrupt (and deleted) by retention
    assert (tmp_path / newest.name).exists()


def test_a_storage_error_reading_a_manifest_fails_instead_of_skipping(tmp_path, monkeypatch):
    store = CheckpointStore(str(tmp_path))
    store.save(1, state(1))
    store.save(2, state(2))
    failing_reads(monkeypatch, store, f"{checkpoint_name(2)}/manifest.json", errno.EIO)
    with pytest.raises(StorageUnavailable, match="manifest.json"):
        store.latest_valid()


def test_an_unparsable_manifest_is_corruption_and_skipped(tmp_path):
    store = CheckpointStore(str(tmp_path))
    store.save(1, state(1))
    store.save(2, state(2))
    (tmp_path / checkpoint_name(2) / "manifest.json").write_text("{not json")
    assert store.latest_valid().epoch == 1


def test_a_full_disk_mid_save_leaves_no_temporary_directory(tmp_path, monkeypatch):
    store = CheckpointStore(str(tmp_path))
    store.save(1, state(1))
    write = store.io.write

    def disk_full(path: str, data: bytes) -> None:
        if path.endswith("manifest.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        write(path, data)

    monkeypatch.setattr(store.io, "write", disk_full)
    with pytest.raises(OSError) as failed:
        store.save(2, state(2))
    assert failed.value.errno == errno.ENOSPC
    assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")] == []
    assert [i.epoch for i in store.list()] == [1]


def test_a_failed_rename_leaves_no_temporary_directory(tmp_path, monkeypatch):
    store = CheckpointStore(str(tmp_path))

    def no_rename(src: str, dst: str) -> None:
        raise OSError(errno.EIO, "I/O error", src)

    monkeypatch.setattr(store.io, "rename", no_rename)
    with pytest.raises(OSError):
        store.save(1, state(1))
    assert os.listdir(tmp_path) == []


def record_fsyncs(monkeypatch) -> list[tuple[str, bool]]:
    """(path, is a directory) of every fsync from here on."""
    seen: list[tuple[str, bool]] = []
    fsync = os.fsync

    def spy(fd: int) -> None:
        seen.append((os.readlink(f"/proc/self/fd/{fd}"), stat.S_ISDIR(os.fstat(fd).st_mode)))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


def test_checkpoint_files_and_the_directory_holding_the_rename_are_fsynced(tmp_path, monkeypatch):
    store = CheckpointStore(str(tmp_path))
    seen = record_fsyncs(monkeypatch)
    store.save(1, state(1))
    files = {os.path.basename(path) for path, is_dir in seen if not is_dir}
    assert {"state.pt", "manifest.json"} <= files
    assert (str(tmp_path), True) in seen
    # The directory fsync comes after the rename that made the checkpoint visible.
    assert seen[-1] == (str(tmp_path), True)


def test_model_file_is_fsynced_before_its_rename_and_its_directory_after(tmp_path, monkeypatch):
    seen = record_fsyncs(monkeypatch)
    replaced: list[str] = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (replaced.append(dst), replace(src, dst)))
    write_bytes(str(tmp_path / "model.pt"), b"weights")
    assert (tmp_path / "model.pt").read_bytes() == b"weights"
    assert len(seen) == 2 and not seen[0][1] and os.path.basename(seen[0][0]).startswith(".tmp-")
    assert seen[1] == (str(tmp_path), True) and replaced == [str(tmp_path / "model.pt")]


def test_a_failing_fsync_fails_the_save(tmp_path, monkeypatch):
    store = CheckpointStore(str(tmp_path))

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError):
        store.save(1, state(1))
    monkeypatch.undo()
    assert store.list() == [] and os.listdir(tmp_path) == []


def test_storage_unavailable_is_an_os_error_and_keeps_the_errno():
    error = checkpoint_io.unavailable("verifying x", OSError(errno.ESTALE, "Stale file handle"))
    assert isinstance(error, OSError) and error.errno == errno.ESTALE and "verifying x" in str(error)
