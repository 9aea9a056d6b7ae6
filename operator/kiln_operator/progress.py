"""The normal path: objects exist or are being created, the cluster starts and trains."""

from __future__ import annotations

from kiln_api import Phase
from kiln_api.status import ProgressStatus

from . import pod_state
from .objects.labels import HEAD, WORKER
from .phases import POLL_SECONDS, ensure_objects
from .plan import Context, Plan
from .trainer_report import report_phase, training_fields


def _phase(ctx: Context, plan: Plan) -> tuple[Phase, str, str]:
    heads = ctx.pods_of(HEAD)
    workers = ctx.pods_of(WORKER)
    trainer = report_phase(ctx.obs.trainer_status)
    head_running = any(pod_state.phase(p) == pod_state.POD_RUNNING and not pod_state.is_deleting(p) for p in heads.values())
    if head_running and (trainer in (Phase.running, Phase.succeeded, Phase.failed) or ctx.prev_phase == Phase.running):
        return Phase.running, "Training", "the trainer reports training in progress"
    everything_running = (
        not plan.create
        and bool(heads)
        and all(pod_state.phase(p) == pod_state.POD_RUNNING for p in [*heads.values(), *workers.values()])
    )
    if everything_running or (ctx.prev_phase == Phase.starting and head_running):
        return Phase.starting, "WaitingForTrainer", "the Ray cluster's pods run; waiting for the trainer to report Running"
    if plan.create:
        return Phase.pending, "Creating", f"creating {len(plan.create)} object(s)"
    return Phase.pending, "PodsPending", "waiting for the job's pods to be scheduled and started"


def _unschedulable(ctx: Context) -> str | None:
    for name, pod in sorted({**ctx.pods_of(HEAD), **ctx.pods_of(WORKER)}.items()):
        message = pod_state.unschedulable_message(pod)
        if message is not None:
            return f"pod {name}: {message}"
    return None


def _trainer_fields(ctx: Context, plan: Plan) -> None:
    """Copy the trainer's report; keep the last known values when the poll failed."""
    spec = (ctx.pods_job or ctx.job).spec
    if spec.search is not None:
        plan.updates["progress"] = ProgressStatus.of_search().to_api()  # TRIALS, not EPOCH, tells how far it is
    elif not (ctx.prev.get("progress") or {}).get("totalEpochs"):
        # Until the trainer reports, `kubectl get` shows 0/<epochs> rather than 0/0.
        epochs = spec.hyperparameters.epochs
        plan.updates["progress"] = {"epoch": 0, "totalEpochs": epochs, "step": 0, "summary": f"0/{epochs}"}
    if ctx.obs.trainer_status is not None:
        plan.updates.update(training_fields(ctx.obs.trainer_status))
        plan.updates["trainerUnreachableSince"] = None
    elif ctx.obs.trainer_status_error and plan.phase is Phase.running and not ctx.prev.get("trainerUnreachableSince"):
        plan.updates["trainerUnreachableSince"] = ctx.stamp


def progress(ctx: Context, next_deadline: float | None) -> Plan:
    plan = Plan(Phase.pending, "", "")
    ensure_objects(ctx, plan)
    plan.phase, plan.reason, plan.message = _phase(ctx, plan)
    if plan.phase is not Phase.running:
        plan.unschedulable = _unschedulable(ctx)
    _trainer_fields(ctx, plan)
    if plan.phase is not Phase.running and ctx.prev.get("trainerUnreachableSince"):
        plan.updates["trainerUnreachableSince"] = None
    if plan.phase is Phase.starting:  # the trainer's first report comes over HTTP, not as an event
        plan.requeue(POLL_SECONDS if next_deadline is None else min(POLL_SECONDS, next_deadline))
    elif plan.phase is Phase.pending:
        # Every change of a pending pod (scheduled, started, failed) is a pod event, which wakes
        # the job's loop at once; polling meanwhile would only add reconciles that find nothing
        # new (it once cost kopf an annotation patch each: most of the operator's requests
        # while a thousand jobs waited for their pods).
        if next_deadline is not None:
            plan.requeue(next_deadline)
    elif ctx.prev.get("trainerUnreachableSince") or plan.updates.get("trainerUnreachableSince"):
        plan.requeue(POLL_SECONDS)
    return plan
