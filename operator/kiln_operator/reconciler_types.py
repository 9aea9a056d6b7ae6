"""The values `decide` takes and returns (re-exported by `kiln_operator.reconciler`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Observation:
    pods: Mapping[str, dict]  # this job's pods by name, as read from the API (status included)
    # (kind, name) of every child object of the job that exists (objects/table.py), pods included.
    existing: frozenset[tuple[str, str]]
    trainer_status: dict | None  # parsed JSON from the head's /status; None if not fetched or failed
    trainer_status_error: str | None
    now: datetime
    # (kind, name) -> the `kiln.dev/spec-hash` annotation of child objects read by name that carry one.
    spec_hashes: Mapping[tuple[str, str], str] = field(default_factory=dict)
    # The API server refused to create a child object as invalid (422): its message, for `decide`.
    refused: str | None = None

    def has(self, kind: str, name: str) -> bool:
        return (kind, name) in self.existing


@dataclass(frozen=True)
class Decision:
    status: dict  # the next full status (camelCase, TrainingJobStatus-shaped)
    create: list[dict]  # objects to create, in order (create-if-missing; 409 is fine)
    delete: list[tuple[str, str]]  # (kind, name) to delete (404 is fine)
    events: list[tuple[str, str, str]]  # (Normal|Warning, reason, message)
    requeue_after: float | None  # call again after this many seconds (waiting, backoff)
    delete_job: bool = False  # ttlSecondsAfterFinished elapsed
    permanent_error: str | None = None  # invalid spec etc.: Failed, with a condition and an Event, until the spec changes
