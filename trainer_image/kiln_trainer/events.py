"""The progress events that travel from the training workers to the driver, defined once.

Rank 0 (and, for `GpuSampled`, every rank) sends events to the driver's `ProgressChannel`
(channel.py). On the wire an event is a JSON-ready dict `{"kind": ..., "v": EVENT_SCHEMA_VERSION,
...fields}` (docs/contracts.md), so a driver never unpickles a class it was not built with, and a
driver and workers from different builds fail loudly instead of misreading each other. In the
driver every event is one of the dataclasses below, and handlers dispatch on the type.

Adding a kind: a dataclass here with `@event_kind("name")`, then its handlers (the status
reducer, the driver's metrics, `kiln run`'s outputs) where it matters; a handler that does not
know a kind ignores it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, TypeVar

EVENT_SCHEMA_VERSION = 1


class UnknownEvent(ValueError):
    """A wire event of a kind or schema version this build does not know."""


@dataclass(frozen=True)
class Event:
    """Base of every progress event; `KIND` is its name on the wire."""

    KIND: ClassVar[str] = ""

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.KIND, "v": EVENT_SCHEMA_VERSION, **dataclasses.asdict(self)}


EventT = TypeVar("EventT", bound=Event)
_KINDS: dict[str, type[Event]] = {}


def event_kind(name: str) -> Callable[[type[EventT]], type[EventT]]:
    """Register an Event subclass under its wire name."""

    def register(cls: type[EventT]) -> type[EventT]:
        cls.KIND = name
        _KINDS[name] = cls
        return cls

    return register


def from_wire(data: dict[str, Any]) -> Event:
    """The typed event for a wire dict; UnknownEvent for another version or kind."""
    version, kind = data.get("v"), data.get("kind")
    if version != EVENT_SCHEMA_VERSION:
        raise UnknownEvent(f"event schema version {version!r}, this driver reads {EVENT_SCHEMA_VERSION}")
    cls = _KINDS.get(str(kind))
    if cls is None:
        raise UnknownEvent(f"unknown event kind {kind!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def kinds() -> dict[str, type[Event]]:
    return dict(_KINDS)


@event_kind("started")
@dataclass(frozen=True)
class Started(Event):
    """Training begins (or resumes) on every rank; `history` is what the checkpoint remembers."""

    epoch: int
    step: int
    total_epochs: int
    message: str = ""
    resumed_from: Optional[str] = None
    history: list[dict[str, float]] = field(default_factory=list)
    # Where the built-in trainer keeps the training split (batch_feed.py) and how many rows it has.
    data_placement: Optional[str] = None
    train_rows: Optional[int] = None


@event_kind("first_step")
@dataclass(frozen=True)
class FirstStep(Event):
    """The first optimizer step of this run finished (start-up latency)."""

    unix_time: float


@event_kind("step")
@dataclass(frozen=True)
class StepProgress(Event):
    """Mid-epoch progress, at most every STEP_EVENT_INTERVAL_S."""

    epoch: int
    step: int
    batch: int
    batches: int
    loss: Optional[float] = None
    lr: Optional[float] = None  # the first parameter group's learning rate (optional: older workers omit it)


@event_kind("epoch")
@dataclass(frozen=True)
class EpochEnded(Event):
    """An epoch's all-reduced metrics; `epoch` counts completed epochs."""

    epoch: int
    step: int
    metrics: dict[str, float]
    epoch_seconds: float
    samples_per_second: Optional[float] = None
    checkpoint_stall_seconds: float = 0.0
    early_stopping: Optional[dict[str, Any]] = None
    lr: Optional[float] = None  # the learning rate after the epoch's schedule step (optional: older workers omit it)


@event_kind("checkpoint")
@dataclass(frozen=True)
class CheckpointSaved(Event):
    """A checkpoint is complete in storage (sent from the background writer)."""

    epoch: int
    location: str
    seconds: float
    unix_time: float
    best: Optional[dict[str, Any]] = None


@event_kind("gpu")
@dataclass(frozen=True)
class GpuSampled(Event):
    """One worker's GPU figures, keyed by its rank (gpu_sampler.py): `utilization` (0..1),
    `memory_used_bytes` and `memory_total_bytes` of the device (NVML), `torch_reserved_bytes` and
    `torch_allocated_bytes`; a figure that could not be read is left out."""

    gpu: dict[str, dict[str, float]]


@event_kind("finished")
@dataclass(frozen=True)
class Finished(Event):
    """The run's outcome: completed | early_stopped | interrupted | diverged | non_finite."""

    outcome: str
    epoch: int
    metrics: dict[str, float] = field(default_factory=dict)
    early_stopping: Optional[dict[str, Any]] = None
    message: Optional[str] = None
    model_path: Optional[str] = None
    # The evaluation report's headline (evaluation_report.status_summary; optional: custom code and
    # older workers send none).
    evaluation: Optional[dict[str, Any]] = None


@event_kind("error")
@dataclass(frozen=True)
class SpecInvalid(Event):
    """A setting cannot work (every rank finds the same); the driver exits with code 2."""

    field: str
    message: str


@event_kind("superseded")
@dataclass(frozen=True)
class Superseded(Event):
    """Another driver of this job claimed the checkpoint storage: this run stops writing and ends."""

    message: str


@event_kind("status")
@dataclass(frozen=True)
class StatusSet(Event):
    """Not sent by workers: the driver set the status itself (a failure before or after training)."""
