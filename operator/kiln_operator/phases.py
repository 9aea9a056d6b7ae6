"""One function per situation a job can be in; each returns the Plan for it.

`decide` (reconciler.py) picks the situation; the order there is the priority.
"""

from __future__ import annotations

from datetime import timedelta

from kiln_api import Phase, TrainingJob
from kiln_api.timefmt import format_time, parse_time

from . import pod_state
from .objects.labels import HEAD, WORKER, head_pod_name, spec_hash
from .objects.table import CHILDREN, Child, Inputs, Scope, creation_wave
from .plan import Context, Plan
from .trainer_report import parse_report, report_phase, report_text, training_fields

RETRY_SECONDS = 2.0  # waiting for pods we deleted to go away
POLL_SECONDS = 5.0  # waiting for pods to start or the trainer to report


def keep(ctx: Context, **overrides: str) -> Plan:
    """A plan that leaves phase, reason and message as they were."""
    return Plan(
        phase=overrides.get("phase", ctx.prev_phase or Phase.pending),
        reason=overrides.get("reason", str(ctx.prev.get("reason") or "Created")),
        message=overrides.get("message", str(ctx.prev.get("message") or "")),
    )


def all_pods(ctx: Context) -> dict[str, dict]:
    return {**ctx.pods_of(HEAD), **ctx.pods_of(WORKER)}


def finished(ctx: Context, ttl: int | None) -> Plan:
    """Succeeded or Failed: release the workers, keep a finished head for its logs."""
    plan = keep(ctx)
    plan.delete_pods(ctx.pods_of(WORKER))
    # A head that still runs holds a node; an ended one costs nothing and keeps `kubectl logs`.
    plan.delete_pods({n: p for n, p in ctx.pods_of(HEAD).items() if pod_state.termination(p) is None})
    completed = parse_time(ctx.prev.get("completionTime"))
    if ttl is not None and completed is not None:
        remaining = (completed + timedelta(seconds=ttl) - ctx.now).total_seconds()
        if remaining <= 0:
            plan.delete_job = True
        else:
            plan.requeue(remaining)
    return plan


def fail(ctx: Context, reason: str, message: str, permanent: bool = False) -> Plan:
    """Failed: every pod still running goes; an ended head stays for its logs."""
    plan = Plan(Phase.failed, reason, message)
    plan.delete_pods(ctx.pods_of(WORKER))
    plan.delete_pods({n: p for n, p in ctx.pods_of(HEAD).items() if pod_state.termination(p) is None})
    if permanent:
        plan.permanent_error = message
    return plan


def suspended(ctx: Context) -> Plan:
    plan = Plan(
        Phase.suspended,
        "Suspended",
        "spec.suspend is true: the job's pods are deleted; it resumes from its latest checkpoint when suspend is false",
    )
    plan.delete_pods(all_pods(ctx))
    plan.updates["trainerUnreachableSince"] = None
    if any(pod_state.is_deleting(p) for p in all_pods(ctx).values()):
        plan.requeue(RETRY_SECONDS)
    return plan


def succeeded(ctx: Context, term: pod_state.Termination) -> Plan:
    report = parse_report(term.message)
    fields = training_fields(report)
    stopped = bool((fields.get("earlyStopping") or {}).get("stopped"))
    reason = "EarlyStopped" if stopped else "Completed"
    message = report_text(report, "message") or (
        "training stopped early: the monitored metric stopped improving" if stopped else "training completed"
    )
    plan = Plan(Phase.succeeded, reason, message)
    plan.updates.update(fields)
    plan.updates["trainerUnreachableSince"] = None
    if report_text(report, "completionTime"):
        plan.updates["completionTime"] = report_text(report, "completionTime")
    started = _earlier_start(report_text(report, "startTime"), ctx.prev.get("startTime"))
    if started is not None:
        plan.updates["startTime"] = started
    plan.delete_pods(ctx.pods_of(WORKER))
    return plan


def _earlier_start(reported: str | None, stored: str | None) -> str | None:
    """The driver's start time when it is before the stored one (RFC 3339), else None.

    The operator stamps startTime when it first sees Running, which for a short run (or one it
    was down for) can be after training ended: the driver's own start is the truer figure.
    """
    driver, seen = parse_time(reported), parse_time(stored)
    if driver is None or (seen is not None and seen <= driver):
        return None
    return format_time(driver)


def head_ended_badly(ctx: Context, term: pod_state.Termination) -> Plan:
    """The head's container failed. A verdict from the driver is final; anything else is a lost head."""
    report = parse_report(term.message)
    fields = training_fields(report)
    if term.exit_code == 2 or report_phase(report) == Phase.failed:
        # The driver judged the run itself failed (invalid job, divergence, bad data):
        # a new cluster would fail the same way.
        reason = report_text(report, "reason") or ("InvalidJob" if term.exit_code == 2 else "TrainingFailed")
        message = report_text(report, "message") or _exit_text(term)
        plan = fail(ctx, reason, message)
        plan.updates.update(fields)
        return plan
    plan = head_lost(ctx, f"the head pod {head_pod_name(ctx.job)} ended: {_exit_text(term)}")
    plan.updates.update(fields)
    return plan


def _exit_text(term: pod_state.Termination) -> str:
    code = "no exit code" if term.exit_code is None else f"exit code {term.exit_code}"
    detail = term.reason or "Error"
    message = term.message if term.message and parse_report(term.message) is None else ""
    tail = f": {message[-300:].strip()}" if message.strip() else ""
    return f"{detail} ({code}){tail}"


def head_lost(ctx: Context, why: str) -> Plan:
    """Tear the cluster down; rebuild it after a backoff, or give up past maxRestarts."""
    restarts = int(ctx.prev.get("restarts") or 0)
    limit = ctx.job.spec.failure_policy.max_restarts
    if restarts >= limit:
        return fail(
            ctx,
            "MaxRestartsExceeded",
            f"{why}; the Ray cluster was already recreated {restarts} time(s), failurePolicy.maxRestarts is {limit}",
        )
    restarts += 1
    wait = ctx.settings.backoff_seconds(restarts)
    plan = Plan(
        Phase.restarting,
        "HeadLost",
        f"{why}; recreating the Ray cluster in {wait:g}s (restart {restarts} of {limit}), resuming from the latest checkpoint",
    )
    plan.updates.update(restarts=restarts, lastRestartTime=ctx.stamp, trainerUnreachableSince=None)
    plan.delete_pods(all_pods(ctx))
    plan.requeue(wait)
    return plan


def restarting(ctx: Context) -> Plan | None:
    """Still tearing down or backing off: a Plan; ready to rebuild: None."""
    remaining = all_pods(ctx)
    if remaining:
        plan = keep(ctx)
        plan.delete_pods(remaining)
        plan.requeue(RETRY_SECONDS)
        return plan
    since = parse_time(ctx.prev.get("lastRestartTime"))
    restarts = int(ctx.prev.get("restarts") or 0)
    if since is not None:
        wait = (since + timedelta(seconds=ctx.settings.backoff_seconds(restarts)) - ctx.now).total_seconds()
        if wait > 0:
            plan = keep(ctx)
            plan.requeue(wait)
            return plan
    return None


def lost_head_reason(ctx: Context) -> str | None:
    """Why the head counts as lost (deleted, or /status silent too long while Running), else None."""
    if ctx.prev_phase not in (Phase.starting, Phase.running):
        return None
    name = head_pod_name(ctx.job)
    head = ctx.obs.pods.get(name)
    if head is None:
        return f"the head pod {name} disappeared"
    if pod_state.is_deleting(head):
        return f"the head pod {name} is being deleted"
    since = parse_time(ctx.prev.get("trainerUnreachableSince"))
    if ctx.prev_phase == Phase.running and ctx.obs.trainer_status is None and ctx.obs.trainer_status_error and since:
        silent = (ctx.now - since).total_seconds()
        if silent >= ctx.settings.status_unreachable_seconds:
            return f"the trainer's /status has not answered for {silent:.0f}s ({ctx.obs.trainer_status_error})"
    return None


def startup_timeout(ctx: Context) -> tuple[Plan | None, float | None]:
    """(a Failed plan if a pod stayed Pending past startupTimeoutSeconds, seconds to the next deadline)."""
    limit = ctx.job.spec.startup_timeout_seconds
    next_deadline: float | None = None
    for name, pod in all_pods(ctx).items():
        created = pod_state.created_at(pod)
        if pod_state.phase(pod) != pod_state.POD_PENDING or pod_state.is_deleting(pod) or created is None:
            continue
        left = (created + timedelta(seconds=limit) - ctx.now).total_seconds()
        if left > 0:
            next_deadline = left if next_deadline is None else min(next_deadline, left)
            continue
        scheduler = pod_state.unschedulable_message(pod)
        if scheduler is not None:
            plan = fail(ctx, "Unschedulable", f"pod {name} could not be scheduled within startupTimeoutSeconds={limit}s: {scheduler}")
            plan.unschedulable = scheduler
        else:
            plan = fail(ctx, "StartupTimeout", f"pod {name} did not start within startupTimeoutSeconds={limit}s")
        plan.delete_pods(ctx.pods_of(HEAD))  # release every pod, the head included
        return plan, None
    return None, next_deadline


def _source(ctx: Context, row: Child) -> TrainingJob:
    """Pods (and what only they read) run the accepted spec; the other objects follow the current one."""
    return (ctx.pods_job or ctx.job) if row.from_pods_spec else ctx.job


def _stale(ctx: Context) -> list[tuple[Child, tuple[str, str]]]:
    """Existing objects built from another spec than the pods' that a pod about to be created would read.

    Only per-job pods are considered: a replaced worker never reads them, and while the head
    runs, the spec the pods run cannot change (spec_change.py).
    """
    stale = []
    for row in CHILDREN:
        source = _source(ctx, row)
        key = (row.kind, row.name(source, 0))
        if not (row.replaced_when_stale and ctx.obs.has(*key)):
            continue
        recorded = ctx.obs.spec_hashes.get(key)
        readers_missing = any(
            later.wave > row.wave and later.scope is Scope.JOB and not ctx.obs.has(later.kind, later.name(source, 0))
            for later in CHILDREN
        )
        if recorded is not None and recorded != spec_hash(source) and readers_missing:
            stale.append((row, key))
    return stale


def ensure_objects(ctx: Context, plan: Plan) -> None:
    """Create what is missing, in the table's order; replace ended workers, drop surplus ones.

    Rows never read back (the Secret) are created whenever a pod is: 409 means they exist.
    An object left from an older accepted spec is deleted first; the pods wait for the next pass.
    """
    stale = _stale(ctx)
    hold_after = min((row.wave for row, _ in stale), default=None)
    for _row, key in stale:
        plan.delete.append(key)
    if stale:
        plan.requeue(RETRY_SECONDS)
    unread = []
    for row in CHILDREN:
        source = _source(ctx, row)
        if not row.wanted(source, ctx.settings) or (hold_after is not None and row.wave > hold_after):
            continue
        if not row.read_back:
            unread.append((row, source))
        elif row.scope is Scope.WORKER:
            _ensure_workers(ctx, plan, row, source)
        elif not ctx.obs.has(row.kind, row.name(source, 0)):
            plan.create.append(row.build(Inputs(source, ctx.settings, ctx.token), 0))
    for row, source in unread:
        if any(creation_wave(str(obj["kind"])) > row.wave for obj in plan.create):
            plan.create.extend(row.objects(Inputs(source, ctx.settings, ctx.token)))
    order = {}
    for index, row in enumerate(CHILDREN):
        order.setdefault(row.kind, index)
    plan.create.sort(key=lambda obj: order.get(str(obj["kind"]), len(CHILDREN)))


def _ensure_workers(ctx: Context, plan: Plan, row: Child, pods_job: TrainingJob) -> None:
    """One pod per worker index: create the missing, replace the ended, delete those beyond the count."""
    started = ctx.prev_phase in (Phase.starting, Phase.running)
    for index in row.indices(pods_job):
        name = row.name(pods_job, index)
        pod = ctx.obs.pods.get(name)
        if pod is None:
            plan.create.append(row.build(Inputs(pods_job, ctx.settings, ctx.token), index))
            if started:
                plan.events.append(("Normal", "WorkerRecreated", f"worker pod {name} was missing; recreated it"))
        elif pod_state.is_deleting(pod):
            plan.requeue(RETRY_SECONDS)
        elif (term := pod_state.termination(pod)) is not None:
            plan.delete_pods({name: pod})
            plan.requeue(RETRY_SECONDS)
            plan.events.append(("Warning", "WorkerFailed", f"worker pod {name} ended ({_exit_text(term)}); replacing it"))
    # Workers beyond the wanted count (left from an older spec) go.
    wanted = set(row.names(pods_job))
    plan.delete_pods({n: p for n, p in ctx.pods_of(WORKER).items() if n not in wanted})
