"""The kopf shell: one level-based `reconcile` behind every trigger.

create, update (spec changes only), resume and a timer all call the same `reconcile`:
observe -> `decide` -> apply. Pod events of the job's pods call it as well, directly, so that a
finished or lost head is noticed at once rather than at the next timer tick (the timer is the
safety net, pod events are the fast path; both are cheap and idempotent).

kopf runs these synchronous handlers in its thread pool; a per-job lock keeps the timer, pod
events and change handlers of one job from reconciling it at the same time.
A pod event whose pod version the job's last reconcile already observed starts no reconcile:
under a burst of new jobs, the operator's own pod creations would otherwise cost one more
full reconcile per pod.

Waiting: change handlers raise `kopf.TemporaryError(delay=requeue_after)` only when the decision
wants to be called back sooner than the timer would; otherwise the timer comes back anyway.
Retrying change handlers forever would double the timer's work and churn kopf's annotations.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import kopf
from kiln_api import API_GROUP, API_VERSION, KIND, PLURAL

from .apply import ObjectRejected, apply_decision
from .caches import CachingKube, OperatorCaches
from .kube import ApiError, KubeClient
from .metrics import OperatorMetrics
from .objects.labels import MANAGED_BY_LABEL, MANAGER
from .observe import observe
from .reconciler import Decision, decide
from .settings import OperatorSettings

RESOURCE = (API_GROUP, API_VERSION, PLURAL)  # what kopf watches: (group, version, plural)
MANAGED_BY = {MANAGED_BY_LABEL: MANAGER}
API_RETRY_SECONDS = 2.0
log = logging.getLogger("kiln.operator")


@dataclass
class JobGate:
    """Serialises the reconciles of one job and lets bursts of pod events share one queued reconcile."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    guard: threading.Lock = field(default_factory=threading.Lock)
    queued: bool = False
    # Pod name -> resourceVersion as the last completed reconcile observed it.
    seen: dict[str, str] = field(default_factory=dict)

    def is_news(self, pod_name: str, resource_version: str | None, event_type: str | None) -> bool:
        """False when a reconcile has already acted on exactly this version of the pod.

        The operator's own creations come back as one ADDED event per pod; the first starts a
        reconcile that lists every pod, and the others then carry nothing it has not seen.
        Deletions always count: the pod is gone whatever version was seen.
        """
        if event_type == "DELETED" or not resource_version:
            return True
        with self.guard:
            return self.seen.get(pod_name) != resource_version

    def remember(self, pods: dict[str, dict[str, Any]]) -> None:
        versions = {name: str(pod["metadata"].get("resourceVersion") or "") for name, pod in pods.items()}
        with self.guard:
            self.seen = versions

    def claim_queue_slot(self) -> bool:
        """True if the caller should reconcile; False if a queued reconcile will see its change anyway."""
        with self.guard:
            if self.queued:
                return False
            self.queued = True
            return True

    def release_queue_slot(self) -> None:
        with self.guard:
            self.queued = False


@dataclass
class Runtime:
    """What every handler shares: settings, the API client, metrics, per-job gates."""

    settings: OperatorSettings
    kube: KubeClient
    metrics: OperatorMetrics
    _gates: dict[str, JobGate] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    @property
    def caches(self) -> OperatorCaches | None:
        """Watch-fed reads, those the client's writes also feed; None: every read goes to the API server."""
        return self.kube.caches if isinstance(self.kube, CachingKube) else None

    def gate_for(self, namespace: str, name: str) -> JobGate:
        with self._guard:
            return self._gates.setdefault(f"{namespace}/{name}", JobGate())

    def forget(self, namespace: str, name: str) -> None:
        with self._guard:
            self._gates.pop(f"{namespace}/{name}", None)
        self.metrics.forget(namespace, name)


def reconcile(runtime: Runtime, namespace: str, name: str) -> Decision | None:
    """Bring one job one step closer to its spec; None when the job no longer exists."""
    with runtime.gate_for(namespace, name).lock:
        return _reconcile_locked(runtime, namespace, name)


def _reconcile_locked(runtime: Runtime, namespace: str, name: str) -> Decision | None:
    """Time and count one reconcile; the caller holds the job's lock."""
    started = time.perf_counter()
    try:
        return _observe_decide_apply(runtime, namespace, name)
    except ApiError as exc:
        runtime.metrics.reconcile_errors.labels(reason=f"ApiError{exc.status}").inc()
        raise
    except Exception as exc:
        runtime.metrics.reconcile_errors.labels(reason=type(exc).__name__).inc()
        raise
    finally:
        runtime.metrics.reconcile_duration.observe(time.perf_counter() - started)


def _observe_decide_apply(runtime: Runtime, namespace: str, name: str) -> Decision | None:
    """One observe -> decide -> apply pass; the caller holds the job's lock."""
    job = _current_job(runtime, namespace, name)
    if job is None:
        return None
    if job["metadata"].get("deletionTimestamp"):
        return None  # going away: recreating children now would only feed the garbage collector
    caches = runtime.caches
    observation = observe(runtime.kube, job, caches.children(namespace, name) if caches is not None else None)
    # The token is used only if the Secret is missing: it is immutable, and a create that finds
    # it answers 409, so a running cluster keeps the token it has (and it is never read back).
    token = secrets.token_urlsafe(32)
    decision = decide(job, observation, runtime.settings, token)
    try:
        apply_decision(runtime.kube, job, decision, observation.now)
    except ObjectRejected as exc:
        # The API server finds an object the job needs invalid: the same request would be refused
        # forever. Decide again knowing it, which fails the job with the API's message.
        log.warning("%s/%s: %s", namespace, name, exc.message)
        observation = dataclasses.replace(observation, refused=exc.message)
        decision = decide(job, observation, runtime.settings, token)
        apply_decision(runtime.kube, job, decision, observation.now)
    # Only after the decision is applied: a failed reconcile must not hide the pods' events.
    runtime.gate_for(namespace, name).remember(observation.pods)
    runtime.metrics.record_status(namespace, name, job.get("status") or {}, decision.status)
    return decision


def _current_job(runtime: Runtime, namespace: str, name: str) -> dict[str, Any] | None:
    """The job as the operator's informer last showed it (with its own writes), else as the API
    server has it; None when it no longer exists. Not kopf's handler body, which may be older."""
    if runtime.caches is not None and (job := runtime.caches.job(namespace, name)) is not None:
        return job
    try:
        return runtime.kube.get(KIND, namespace, name)
    except ApiError as exc:
        if exc.status == 404:
            runtime.forget(namespace, name)
            return None
        raise


def _run(runtime: Runtime, namespace: str, name: str, *, requeue: bool) -> None:
    """reconcile, translated into kopf's retry vocabulary."""
    try:
        decision = reconcile(runtime, namespace, name)
    except ApiError as exc:
        # 409/500/unreachable: kopf retries; the operator itself never crashes on them.
        delay = min(API_RETRY_SECONDS, runtime.settings.timer_interval_seconds)
        raise kopf.TemporaryError(f"Kubernetes API: {exc}", delay=delay) from None
    if decision is None:
        return
    if decision.permanent_error:
        if requeue:  # change handlers: kopf records the failure and waits for the next spec change
            raise kopf.PermanentError(decision.permanent_error)
        return
    wait = decision.requeue_after
    if requeue and wait is not None and wait < runtime.settings.timer_interval_seconds:
        raise kopf.TemporaryError("waiting", delay=max(wait, 0.1))


def _owner_job(body: Any) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{API_GROUP}/"):
            return str(ref.get("name"))
    return None


def register(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    """Attach every handler to `registry` (a fresh one per operator, so tests stay isolated)."""
    @kopf.on.create(*RESOURCE, registry=registry)
    @kopf.on.update(*RESOURCE, field="spec", registry=registry)
    @kopf.on.resume(*RESOURCE, registry=registry)
    def on_change(body: Any, namespace: str, name: str, **_: Any) -> None:
        if runtime.caches is not None:  # the change kopf saw, even if the informer has not yet
            runtime.caches.observed({**body, "kind": KIND, "apiVersion": f"{API_GROUP}/{API_VERSION}"})
        _run(runtime, namespace, name, requeue=True)

    # The first tick waits a full interval: create and resume already reconcile a job at once,
    # and an immediate tick would only queue a second, identical reconcile behind theirs.
    interval = runtime.settings.timer_interval_seconds

    @kopf.timer(*RESOURCE, interval=interval, initial_delay=interval, registry=registry)
    def on_timer(namespace: str, name: str, **_: Any) -> None:
        _run(runtime, namespace, name, requeue=False)

    @kopf.on.event("", "v1", "pods", labels=MANAGED_BY, registry=registry)
    def on_pod_event(body: Any, namespace: str, type: str | None = None, **_: Any) -> None:  # noqa: A002  (kopf's name)
        job_name = _owner_job(body)
        if job_name is None:
            return
        gate = runtime.gate_for(namespace, job_name)
        meta = body.get("metadata", {})
        pod_name, version = str(meta.get("name")), meta.get("resourceVersion")
        if not gate.is_news(pod_name, version, type):
            return  # the last reconcile already saw this very version of the pod
        if type == "ADDED" and runtime.caches is not None and runtime.caches.written_by_operator("Pod", namespace, pod_name, version):
            return  # the operator's own create: the reconcile that made it knew
        if runtime.caches is not None:
            # kopf's watch can deliver this version before the informer's does: the reconcile must
            # read it, or it would remember the older version as seen and wait for the timer.
            runtime.caches.observed({**body, "kind": "Pod", "apiVersion": "v1"}, deleted=type == "DELETED")
        if not gate.claim_queue_slot():
            return  # a reconcile is already waiting for the lock; it will read this change
        try:
            with gate.lock:
                gate.release_queue_slot()  # from here on, newer events queue a new reconcile
                _reconcile_locked(runtime, namespace, job_name)
        except Exception as exc:  # event handlers are not retried: the timer is the safety net
            log.warning("reconcile of %s/%s after a pod event failed: %s", namespace, job_name, exc)

    @kopf.on.probe(id=PLURAL, registry=registry)
    def jobs_tracked(**_: Any) -> int:
        # kopf answers /healthz only while its event loop runs; this adds what the operator tracks.
        return runtime.metrics.jobs.count()
