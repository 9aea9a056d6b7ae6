"""Progress events: one typed definition per kind, a versioned wire form, dispatch on the type."""

from __future__ import annotations

import dataclasses
import json

import pytest
from kiln_api.status import Phase
from kiln_trainer import events
from kiln_trainer.events import EVENT_SCHEMA_VERSION, EpochEnded, Finished, StepProgress, UnknownEvent, from_wire
from kiln_trainer.status_reducer import apply_event, initial_status

SAMPLES = [
    events.Started(epoch=1, step=10, total_epochs=5, message="hi", resumed_from="/c/epoch-000001",
                   history=[{"epoch": 1.0, "train_loss": 0.5}]),
    events.FirstStep(unix_time=1.5),
    events.StepProgress(epoch=1, step=11, batch=3, batches=9, loss=0.25),
    events.EpochEnded(epoch=2, step=20, metrics={"train_loss": 0.4}, epoch_seconds=1.0, samples_per_second=10.0,
                      checkpoint_stall_seconds=0.01, early_stopping={"metric": "val_loss", "wait": 1}),
    events.CheckpointSaved(epoch=2, location="/c/epoch-000002", seconds=0.2, unix_time=3.0,
                           best={"metric": "val_loss", "value": 0.3, "epoch": 2, "checkpoint": "/c/epoch-000002"}),
    events.GpuSampled(gpu={"0": {"utilization": 0.5, "memory_bytes": 1024}}),
    events.Finished(outcome="completed", epoch=5, metrics={"test_accuracy": 0.9}, model_path="/m.pt"),
    events.SpecInvalid(field="spec.data.target", message="no such column"),
    events.Superseded(message="generation 2 now owns the storage"),
    events.StatusSet(),
]


def test_every_registered_kind_has_a_sample():
    assert {type(e) for e in SAMPLES} == set(events.kinds().values())


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.KIND)
def test_wire_form_is_json_with_kind_and_version_and_round_trips(event):
    wire = json.loads(json.dumps(event.to_wire()))
    assert wire["kind"] == event.KIND and wire["v"] == EVENT_SCHEMA_VERSION
    assert from_wire(wire) == event


def test_an_event_from_another_schema_version_is_refused():
    wire = {**SAMPLES[2].to_wire(), "v": EVENT_SCHEMA_VERSION + 1}
    with pytest.raises(UnknownEvent, match="schema version"):
        from_wire(wire)


def test_an_unknown_kind_is_refused_by_name():
    with pytest.raises(UnknownEvent, match="'telepathy'"):
        from_wire({"kind": "telepathy", "v": EVENT_SCHEMA_VERSION})


def test_fields_a_newer_sender_adds_are_ignored():
    wire = {**SAMPLES[2].to_wire(), "future_field": 1}
    assert from_wire(wire) == SAMPLES[2]


def test_kinds_the_reducer_has_no_rule_for_leave_the_status_unchanged():
    status = initial_status(5)
    for event in (events.FirstStep(unix_time=1.0), events.GpuSampled(gpu={}), events.StatusSet()):
        assert apply_event(status, event, []) == status


def test_reducer_reads_typed_events_not_dicts():
    status = apply_event(initial_status(5), StepProgress(epoch=0, step=7, batch=1, batches=2), [])
    assert status.progress.step == 7
    epoch = EpochEnded(epoch=1, step=9, metrics={"val_loss": 0.5}, epoch_seconds=2.0)
    status = apply_event(status, epoch, [])
    assert status.phase == Phase.running and status.metrics == {"val_loss": 0.5}
    done = apply_event(status, dataclasses.replace(Finished(outcome="diverged", epoch=1), message="boom"), [])
    assert (done.phase, done.reason, done.message) == (Phase.failed, "Diverged", "boom")
