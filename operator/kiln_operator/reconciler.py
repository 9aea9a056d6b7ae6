"""The operator's decision function: (job, what was observed, now) -> what to do next.

Pure: no API calls, no environment, no clock (`now` is observed), no randomness (the Ray
token is passed in). The kopf shell observes, calls `decide` and applies the Decision:
creates (in order, 409 ignored), deletes (404 ignored), status (written only when it
differs), events, requeue. Deciding again on the applied result converges.

Priorities, first match wins: finished jobs stay finished; an invalid spec (or one whose
objects the API server refused as invalid) fails the job; a head that exited 0 succeeds it; suspend; restart backoff; a failed or lost head;
the startup timeout; otherwise ensure objects and report progress.
"""

from __future__ import annotations

from dataclasses import replace

from kiln_api import Phase, TrainingJob
from kiln_api.errors import pydantic_errors
from pydantic import ValidationError

from . import pod_state
from .objects import cluster_problem
from .objects.labels import head_pod_name
from .phases import (
    fail,
    finished,
    head_ended_badly,
    head_lost,
    lost_head_reason,
    restarting,
    startup_timeout,
    succeeded,
    suspended,
)
from .plan import Context, Plan, is_finished, stored_status, to_decision
from .progress import progress
from .reconciler_types import Decision, Observation
from .settings import OperatorSettings
from .spec_change import pods_spec

__all__ = ["Decision", "Observation", "decide"]


def _ttl(manifest: dict) -> int | None:
    value = (manifest.get("spec") or {}).get("ttlSecondsAfterFinished")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _validate(manifest: dict) -> TrainingJob | str:
    body = {k: v for k, v in manifest.items() if k != "status"}
    try:
        return TrainingJob.model_validate(body)
    except ValidationError as exc:
        return "; ".join(str(error) for error in pydantic_errors(exc))


def _running_plan(ctx: Context) -> Plan:
    job = ctx.job
    head = ctx.obs.pods.get(head_pod_name(job))
    term = pod_state.termination(head) if head is not None and not pod_state.is_deleting(head) else None
    if term is not None and term.exit_code == 0 and ctx.prev_phase != Phase.restarting:
        return succeeded(ctx, term)
    if job.spec.suspend:
        return suspended(ctx)
    if ctx.prev_phase == Phase.restarting:
        waiting = restarting(ctx)
        if waiting is not None:
            return waiting
    elif term is not None:
        return head_ended_badly(ctx, term)
    elif (why := lost_head_reason(ctx)) is not None:
        return head_lost(ctx, why)
    timed_out, next_deadline = startup_timeout(ctx)
    return timed_out if timed_out is not None else progress(ctx, next_deadline)


def decide(job_manifest: dict, observation: Observation, settings: OperatorSettings, token: str) -> Decision:
    raw = job_manifest.get("status")
    # A status someone else wrote (or an older operator) may not validate: keep what does.
    prev = stored_status(raw)
    base = Context(manifest=job_manifest, obs=observation, settings=settings, token=token, prev=prev)
    if is_finished(base.prev_phase):
        return to_decision(base, finished(base, _ttl(job_manifest)))
    job = _validate(job_manifest)
    if isinstance(job, str):
        return to_decision(base, fail(base, "InvalidSpec", job, permanent=True))
    problem = cluster_problem(job, settings)
    ctx = replace(base, job=job)
    if problem is not None:
        return to_decision(ctx, fail(ctx, problem[0], problem[1], permanent=True))
    pods_job, rejection = pods_spec(job, prev, observation.pods, base.prev_phase)
    ctx = replace(ctx, pods_job=pods_job, rejection=rejection)
    if observation.refused is not None:
        # The API server refused an object built from this spec as invalid: it always will.
        return to_decision(ctx, fail(ctx, "ObjectRejected", observation.refused, permanent=True))
    return to_decision(ctx, _running_plan(ctx))
