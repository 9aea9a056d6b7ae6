"""The generation fence: one driver run writes a checkpoint location at a time, and only its own job's."""

from __future__ import annotations

import json
import os
import threading
import uuid

import pytest
import torch
from kiln_trainer.checkpoint_fence import (
    FENCE_FILE,
    CheckpointMismatch,
    JobIdentity,
    StaleWriter,
    entrypoint_fingerprint,
    model_fingerprint,
)
from kiln_trainer.checkpoints import BackgroundWriter, CheckpointStore, checkpoint_name, serialize_state

JOB = JobIdentity("default", "digits")
MODEL = model_fingerprint({"w": torch.zeros(4, 8), "b": torch.zeros(4)}, (8,), 4, "classification")


def store_for(path, job: JobIdentity = JOB, fingerprint=None, run: str | None = None, keep: int = 2) -> CheckpointStore:
    store = CheckpointStore(str(path), keep=keep, metric="val_loss", mode="min")
    store.attach_fence(job, fingerprint or MODEL, run or uuid.uuid4().hex, suggestion=f"{path}/{job.namespace}/{job.name}")
    return store


def state(epoch: int) -> bytes:
    return serialize_state({"epoch": epoch, "w": torch.full((8,), float(epoch))})


def record(path) -> dict:
    return json.loads((path / FENCE_FILE).read_text())


def leftovers(path) -> list[str]:
    return [n for n in os.listdir(path) if n.startswith(".tmp-")]


def test_claim_writes_the_identity_record_and_each_new_run_is_a_newer_generation(tmp_path):
    first = store_for(tmp_path, JobIdentity("team-a", "digits", "uid-1"))
    assert first.fence.claim() == 1
    saved = record(tmp_path)
    assert saved["job"] == {"namespace": "team-a", "name": "digits", "uid": "uid-1"}
    assert saved["generation"] == 1 and saved["run"] == first.fence.run_id and saved["fingerprint"] == json.loads(json.dumps(MODEL))
    info = first.save(1, state(1), metrics={"val_loss": 0.5})
    assert (info.generation, info.run, info.job["name"]) == (1, first.fence.run_id, "digits")
    second = store_for(tmp_path, JobIdentity("team-a", "digits", "uid-1"))
    assert second.fence.claim() == 2
    assert record(tmp_path)["superseded"] == [{"run": first.fence.run_id, "generation": 1}]


def test_the_same_run_claiming_again_keeps_its_generation(tmp_path):
    # A Ray Train worker-group restart: a new rank 0 of the same driver run.
    run = uuid.uuid4().hex
    assert store_for(tmp_path, run=run).fence.claim() == 1
    again = store_for(tmp_path, run=run)
    assert again.fence.claim() == 1
    again.save(1, state(1))


def test_old_writer_after_the_new_one_claimed_is_refused_before_renaming_or_pruning(tmp_path):
    old, new = store_for(tmp_path), store_for(tmp_path)
    old.fence.claim()
    old.save(1, state(1))
    new.fence.claim()
    with pytest.raises(StaleWriter, match=r"is generation 1 .* but generation 2 .*now owns it"):
        old.save(2, state(2))
    with pytest.raises(StaleWriter, match="refused: pruning"):
        old.keep = 0
        old.prune()
    assert [i.epoch for i in new.list()] == [1]
    assert not (tmp_path / checkpoint_name(2)).exists() and leftovers(tmp_path) == []


def test_new_writer_claiming_while_the_old_one_is_mid_save_wins(tmp_path, monkeypatch):
    old, new = store_for(tmp_path), store_for(tmp_path)
    old.fence.claim()
    old.save(1, state(1))
    write = old.io.write

    def write_then_get_replaced(path: str, data: bytes) -> None:
        write(path, data)
        if path.endswith("manifest.json"):  # the last file before the rename: the new driver claims now
            new.fence.claim()

    monkeypatch.setattr(old.io, "write", write_then_get_replaced)
    with pytest.raises(StaleWriter, match="refused: renaming epoch-000002"):
        old.save(2, state(2))
    assert not (tmp_path / checkpoint_name(2)).exists() and leftovers(tmp_path) == []
    new.save(2, state(20))
    assert new.load_state(new.latest_valid())["epoch"] == 20


def test_a_superseded_driver_whose_worker_group_restarts_cannot_claim_back(tmp_path):
    old_run = uuid.uuid4().hex
    store_for(tmp_path, run=old_run).fence.claim()
    store_for(tmp_path).fence.claim()
    restarted = store_for(tmp_path, run=old_run)
    with pytest.raises(StaleWriter, match="is generation 1"):
        restarted.fence.claim()
    assert record(tmp_path)["generation"] == 2


def test_stale_temporary_entries_are_reclaimed_at_claim(tmp_path):
    (tmp_path / f".tmp-{checkpoint_name(3)}-deadbeef").mkdir()
    (tmp_path / f".tmp-{checkpoint_name(3)}-deadbeef" / "state.pt").write_bytes(b"x" * 1000)
    (tmp_path / ".tmp-old-epoch-000002-cafe").mkdir()
    (tmp_path / ".tmp-status").write_bytes(b"partial")
    store_for(tmp_path).fence.claim()
    assert leftovers(tmp_path) == []


def test_two_threads_one_location_only_the_newest_claim_writes(tmp_path):
    old, new = store_for(tmp_path, keep=2), store_for(tmp_path, keep=2)
    old.fence.claim()
    old_started, new_claimed = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def old_driver() -> None:
        writer = BackgroundWriter(old, lambda *_: None)
        try:
            for epoch in range(1, 10_000):
                writer.submit(epoch, state(epoch), step=epoch, metrics={})
                writer.wait()
                old_started.set()
                if new_claimed.is_set() and epoch > 50:
                    break  # never reached: the first save after the claim must be refused
        except StaleWriter as exc:
            outcome["old"] = exc
        finally:
            old_started.set()
            writer.close()  # the refused write was already collected: nothing left to re-raise

    def new_driver() -> None:
        assert old_started.wait(timeout=60)
        new.fence.claim()
        new_claimed.set()
        writer = BackgroundWriter(new, lambda *_: None)
        for epoch in range(3, 7):
            writer.submit(epoch, state(100 + epoch), step=epoch, metrics={})
        writer.close()

    threads = [threading.Thread(target=old_driver), threading.Thread(target=new_driver)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert isinstance(outcome.get("old"), StaleWriter)
    remaining = new.list()
    assert [(i.epoch, i.generation) for i in remaining] == [(5, 2), (6, 2)]
    assert all(new.load_state(i)["epoch"] == 100 + i.epoch for i in remaining)
    assert leftovers(tmp_path) == []


def test_a_second_job_on_the_same_location_is_refused_with_both_names_and_a_per_job_path(tmp_path):
    first = store_for(tmp_path, JobIdentity("default", "digits"))
    first.fence.claim()
    first.save(1, state(1))
    other = store_for(tmp_path, JobIdentity("default", "tabular"))
    with pytest.raises(CheckpointMismatch) as refused:
        other.fence.claim()
    message = str(refused.value)
    assert message.startswith("spec.checkpoint.storage: ")
    assert "job default/digits" in message and "this job default/tabular" in message
    assert f"{tmp_path}/default/tabular" in message
    assert record(tmp_path)["job"]["name"] == "digits"  # the record was not taken over
    with pytest.raises(CheckpointMismatch):
        other.fence.inspect()  # the other ranks refuse alike


def test_a_recreated_job_of_the_same_name_is_another_job_but_a_local_run_is_not(tmp_path):
    store_for(tmp_path, JobIdentity("default", "digits", "uid-1")).fence.claim()
    with pytest.raises(CheckpointMismatch, match=r"default/digits \(uid uid-1\).*default/digits \(uid uid-2\)"):
        store_for(tmp_path, JobIdentity("default", "digits", "uid-2")).fence.claim()
    assert store_for(tmp_path, JobIdentity("default", "digits")).fence.claim() == 2


def test_checkpoints_without_a_record_still_name_their_job(tmp_path):
    first = store_for(tmp_path, JobIdentity("default", "digits"))
    first.fence.claim()
    first.save(1, state(1))
    (tmp_path / FENCE_FILE).unlink()
    with pytest.raises(CheckpointMismatch, match="job default/digits"):
        store_for(tmp_path, JobIdentity("default", "other")).fence.claim()


def test_a_changed_model_under_the_same_name_is_refused_naming_what_differs(tmp_path):
    store_for(tmp_path).fence.claim()
    wider = model_fingerprint({"w": torch.zeros(16, 8), "b": torch.zeros(16)}, (8,), 4, "classification")
    with pytest.raises(CheckpointMismatch) as refused:
        store_for(tmp_path, fingerprint=wider).fence.claim()
    message = str(refused.value)
    assert "model tensor 'w' is [4, 8] there, [16, 8] now" in message and "'b' is [4] there, [16] now" in message
    other_task = model_fingerprint({"w": torch.zeros(4, 8), "b": torch.zeros(4)}, (8,), 4, "regression")
    with pytest.raises(CheckpointMismatch, match="task is 'classification' there, 'regression' now"):
        store_for(tmp_path, fingerprint=other_task).fence.claim()
    with pytest.raises(CheckpointMismatch, match="entrypoint"):
        store_for(tmp_path, fingerprint=entrypoint_fingerprint("pkg.mod:train")).fence.claim()
