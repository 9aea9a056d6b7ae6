"""The decision under construction (`Plan`) and its assembly into a full status.

Phase functions fill a Plan; `to_decision` turns it into the Decision: the complete next
status (conditions, workers, training fields), and an Event when the phase changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kiln_api import Phase, TrainingJob, TrainingJobStatus
from kiln_api.search import cluster_workers
from kiln_api.status import WorkersStatus
from kiln_api.timefmt import format_time
from kiln_api.topology import training_topology, workers_status
from pydantic import ValidationError

from . import pod_state
from .conditions import SPEC_CHANGE_REJECTED, Want, find, merge_conditions
from .objects.labels import HEAD, ROLE_LABEL, WORKER
from .reconciler_types import Decision, Observation
from .settings import OperatorSettings
from .spec_change import accepted_fields

WARNING_PHASES = (Phase.failed, Phase.restarting)


def is_finished(phase: str | None) -> bool:
    """`Phase.is_finished` for a stored phase string ("" or None: no phase yet, so not finished)."""
    try:
        return Phase(phase).is_finished
    except ValueError:
        return False


@dataclass(frozen=True)
class Context:
    """Everything `decide` knows, read once."""

    manifest: dict
    obs: Observation
    settings: OperatorSettings
    token: str
    prev: dict  # previous status, camelCase
    job: TrainingJob | None = None  # None when the manifest is invalid
    pods_job: TrainingJob | None = None  # the job the running pods were built from
    rejection: str | None = None  # why a spec change is refused, if one is

    @property
    def now(self) -> datetime:
        return self.obs.now

    @property
    def stamp(self) -> str:
        return format_time(self.obs.now)

    @property
    def prev_phase(self) -> str:
        return str(self.prev.get("phase") or "")

    @property
    def generation(self) -> int | None:
        value = (self.manifest.get("metadata") or {}).get("generation")
        return value if isinstance(value, int) else None

    def pods_of(self, role: str) -> dict[str, dict]:
        return {
            name: pod
            for name, pod in sorted(self.obs.pods.items())
            if ((pod.get("metadata") or {}).get("labels") or {}).get(ROLE_LABEL) == role
        }


@dataclass
class Plan:
    phase: Phase  # a phase name is accepted too: it is read as the Phase it names
    reason: str
    message: str
    create: list[dict] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    requeue_after: float | None = None
    delete_job: bool = False
    permanent_error: str | None = None
    updates: dict[str, Any] = field(default_factory=dict)  # status fields to set (None removes)
    unschedulable: str | None = None  # the scheduler's message, when a pod cannot be placed

    def __post_init__(self) -> None:
        self.phase = Phase(self.phase)

    def delete_pods(self, pods: dict[str, dict]) -> None:
        """Delete these pods unless they are already going."""
        for name, pod in pods.items():
            if not pod_state.is_deleting(pod) and ("Pod", name) not in self.delete:
                self.delete.append(("Pod", name))

    def requeue(self, seconds: float) -> None:
        seconds = max(float(seconds), 1.0)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


def _workers(ctx: Context) -> dict:
    """Worker pods wanted and ready, and the training workers they run (one per GPU)."""
    job = ctx.pods_job or ctx.job
    ready = sum(1 for pod in ctx.pods_of(WORKER).values() if pod_state.is_ready(pod))
    if job is None:
        return WorkersStatus(ready=ready, summary=f"{ready}/0").model_dump(by_alias=True, mode="json")
    return workers_status(training_topology(cluster_workers(job.spec)), ready).model_dump(by_alias=True, mode="json")


def _wanted_conditions(ctx: Context, plan: Plan, status: dict) -> list[Want]:
    # Plain strings: they become condition reasons (Phase formats as "Phase.running").
    phase, reason, message = plan.phase.value, plan.reason, plan.message
    workers = status["workers"]
    heads = ctx.pods_of(HEAD)
    pods_ready = bool(heads) and all(pod_state.is_ready(p) for p in heads.values()) and workers["ready"] == workers["desired"]
    ready = phase == Phase.running and pods_ready
    early = status.get("earlyStopping") or {}
    stopped = bool(early.get("stopped"))
    resumed = ctx.prev_phase == Phase.suspended or _was_true(ctx, "Suspended")

    def phase_is(name: str, otherwise: str) -> Want:
        """Condition `name` is True exactly in phase `name`, carrying the phase's reason and message."""
        return Want(name, phase == name, reason if phase == name else otherwise, message if phase == name else "")

    return [
        Want("Ready", ready, "AllPodsReady" if ready else ("PodsNotReady" if phase == Phase.running else reason),
             f"{workers['ready']}/{workers['desired']} worker pods ready"),
        phase_is("Running", phase),
        phase_is("Succeeded", "NotSucceeded"),
        phase_is("Failed", "NotFailed"),
        Want("EarlyStopped", stopped, "EarlyStopped" if stopped else "NotStopped", str(early.get("reason") or "") if stopped else ""),
        phase_is("Suspended", "Resumed" if resumed else "NotSuspended"),
        Want("Unschedulable", plan.unschedulable is not None, "Unschedulable" if plan.unschedulable is not None else "Schedulable",
             plan.unschedulable or ""),
    ]  # fmt: skip


def _conditions(ctx: Context, plan: Plan, status: dict) -> list[dict]:
    previous = ctx.prev.get("conditions") or []
    if is_finished(ctx.prev_phase) and plan.phase == ctx.prev_phase and previous:
        # A finished job's conditions tell how it ended (the scheduler's message included):
        # later reconciles only release pods and must not rewrite that account.
        return previous
    wanted = _wanted_conditions(ctx, plan, status) + _spec_condition(ctx)
    return merge_conditions(previous, wanted, ctx.generation, ctx.stamp)


def _was_true(ctx: Context, kind: str) -> bool:
    old = find(ctx.prev.get("conditions") or [], kind)
    return bool(old) and old.get("status") == "True"


def _spec_condition(ctx: Context) -> list[Want]:
    if ctx.rejection is not None:
        return [Want(SPEC_CHANGE_REJECTED, True, "ImmutableFieldChanged", ctx.rejection)]
    if find(ctx.prev.get("conditions") or [], SPEC_CHANGE_REJECTED) is not None:
        return [Want(SPEC_CHANGE_REJECTED, False, "SpecMatchesPods", "")]
    return []


def clean_status(status: dict) -> dict:
    try:
        return TrainingJobStatus.model_validate(status).to_api()
    except ValidationError:
        # A field the trainer or an old operator wrote badly: keep what validates.
        return {k: v for k, v in status.items() if _field_ok(k, v)}


def stored_status(raw: object) -> dict:
    """The previous status as stored: fields that validate, and no defaults filled in.

    A stored `status: {}` must read as "no phase yet", not as the model's default Pending,
    or the job's first phase would go unannounced.
    """
    if not isinstance(raw, dict):
        return {}
    cleaned = clean_status(json.loads(json.dumps(raw)))
    return {key: value for key, value in cleaned.items() if key in raw}


def _field_ok(name: str, value: Any) -> bool:
    try:
        TrainingJobStatus.model_validate({name: value})
    except ValidationError:
        return False
    return True


def _events(ctx: Context, plan: Plan, status: dict) -> list[tuple[str, str, str]]:
    events = list(plan.events)
    if plan.phase != ctx.prev_phase:
        kind = "Warning" if plan.phase in WARNING_PHASES else "Normal"
        events.append((kind, plan.reason, f"{plan.phase.value}: {plan.message}"))
    new = find(status["conditions"], SPEC_CHANGE_REJECTED)
    old = find(ctx.prev.get("conditions") or [], SPEC_CHANGE_REJECTED)
    if new and new["status"] == "True" and (not old or old.get("status") != "True" or old.get("message") != new["message"]):
        events.append(("Warning", "SpecChangeRejected", new["message"]))
    return events


def to_decision(ctx: Context, plan: Plan) -> Decision:
    status: dict[str, Any] = {k: v for k, v in ctx.prev.items() if k != "conditions"}
    status.update(phase=plan.phase.value, reason=plan.reason, message=plan.message)
    for key, value in plan.updates.items():
        if value is None:
            status.pop(key, None)
        else:
            status[key] = value
    if ctx.generation is not None:
        status["observedGeneration"] = ctx.generation
    status["workers"] = _workers(ctx)
    if plan.phase is Phase.running and not status.get("startTime"):
        status["startTime"] = ctx.stamp
    if plan.phase.is_finished and not status.get("completionTime"):
        status["completionTime"] = ctx.stamp
    if ctx.job is not None:
        status.update(accepted_fields(ctx.pods_job or ctx.job))
    status["conditions"] = _conditions(ctx, plan, status)
    status = clean_status(status)
    return Decision(
        status=status,
        create=plan.create,
        delete=plan.delete,
        events=_events(ctx, plan, status),
        requeue_after=plan.requeue_after,
        delete_job=plan.delete_job,
        permanent_error=plan.permanent_error,
    )


__all__ = ["Context", "Plan", "clean_status", "is_finished", "stored_status", "to_decision"]
