"""The kopf shell: one level-based `reconcile`, run by one loop per job.

Each TrainingJob this replica handles has a loop (a kopf daemon) that reconciles it at once
(creation and operator start alike), then again when woken or when its time is up: the
decision's `requeue_after`, else the timer interval, else `API_RETRY_SECONDS` after an API
error. The informers wake a job's loop from their watch events: a pod of the job changed (a
finished or lost head is noticed at once, not at the next tick), or the job's spec did (a new
`metadata.generation`). A wake-up during a reconcile starts another pass after it; any number
of wake-ups before the loop looks again count as one (client-go's work queue, per job).

Why not kopf's change handlers, timer and pod watch: they were half of the operator's CPU per
new job (a deep copy of every body kopf processed, to diff; a patch of kopf's annotations and the
event it brought back; kopf's processing of every pod event beside the informer's) and held a
burst of new jobs to ~60 a second. kopf still decides which jobs this replica handles: its
peering stops every loop while another replica leads, and a job's deletion stops its loop
before kopf releases the finalizer.

A pod event whose pod version the job's last reconcile already observed, or that the operator's
own create left, wakes nothing: under a burst of new jobs each of its pods' ADDED events would
otherwise cost one more full reconcile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import threading
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import kopf
from kiln_api import API_GROUP, API_VERSION, KIND, PLURAL

from .apply import ObjectRejected, apply_decision
from .caches import CachingKube, OperatorCaches
from .kube import ApiError, KubeClient
from .metrics import OperatorMetrics
from .observe import observe
from .reconciler import Decision, decide
from .settings import OperatorSettings

RESOURCE = (API_GROUP, API_VERSION, PLURAL)  # what kopf watches: (group, version, plural)
API_RETRY_SECONDS = 2.0
MIN_REQUEUE_SECONDS = 0.1
# Reconciles mostly wait on the API server: a burst of new jobs must not queue behind a handful.
RECONCILE_THREADS = 32
log = logging.getLogger("kiln.operator")


@dataclass
class JobGate:
    """Serialises the reconciles of one job and remembers what its last reconcile observed."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    guard: threading.Lock = field(default_factory=threading.Lock)
    # Pod name -> resourceVersion as the last completed reconcile observed it.
    seen: dict[str, str] = field(default_factory=dict)
    generation: int | None = None  # the job's metadata.generation the last pass read
    heard: int | None = None  # the highest generation any event has shown

    def is_news(self, pod_name: str, resource_version: str | None, event_type: str | None) -> bool:
        """False when a reconcile has already acted on exactly this version of the pod.

        A reconcile that lists a job's pods records every version it saw: an event for one of
        them (a relist repeats them all) tells the job's loop nothing. Deletions always count:
        the pod is gone whatever version was seen.
        """
        if event_type == "DELETED" or not resource_version:
            return True
        with self.guard:
            return self.seen.get(pod_name) != resource_version

    def hear_generation(self, generation: Any) -> bool:
        """An event showed the job at `generation`: True when a pass has read an older one.

        Status writes (the operator's own, kopf's finalizer) leave the generation as it was.
        Before any pass has read the job the loop's first pass is still to read it; should that
        pass read an older generation than this, `read_generation` says so.
        """
        if not isinstance(generation, int):
            return False
        with self.guard:
            self.heard = max(self.heard or 0, generation)
            return self.generation is not None and generation > self.generation

    def read_generation(self, generation: Any) -> bool:
        """A pass has read the job at `generation`: True when an event has already shown a newer
        one (the pass read an older copy than the cache now holds), so another pass is due."""
        with self.guard:
            self.generation = generation if isinstance(generation, int) else None
            return self.generation is not None and (self.heard or 0) > self.generation

    def remember(self, pods: dict[str, dict[str, Any]]) -> None:
        versions = {name: str(pod["metadata"].get("resourceVersion") or "") for name, pod in pods.items()}
        with self.guard:
            self.seen = versions


class JobLoops:
    """The wake-up flag of every job loop running in this replica, settable from any thread."""

    def __init__(self) -> None:
        self._flags: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}
        self._guard = threading.Lock()

    def start(self, namespace: str, name: str) -> asyncio.Event:
        flag = asyncio.Event()
        with self._guard:
            self._flags[f"{namespace}/{name}"] = (asyncio.get_running_loop(), flag)
        return flag

    def stop(self, namespace: str, name: str, flag: asyncio.Event) -> None:
        with self._guard:
            if self._flags.get(f"{namespace}/{name}", (None, None))[1] is flag:
                del self._flags[f"{namespace}/{name}"]

    def running(self, namespace: str, name: str) -> bool:
        with self._guard:
            return f"{namespace}/{name}" in self._flags

    def wake(self, namespace: str, name: str) -> bool:
        """Ask the job's loop for another pass; False when no loop runs it here (another
        replica leads, or the job is gone)."""
        with self._guard:
            entry = self._flags.get(f"{namespace}/{name}")
        if entry is None:
            return False
        loop, flag = entry
        try:
            loop.call_soon_threadsafe(flag.set)
        except RuntimeError:  # the loop has closed: the operator is exiting
            return False
        return True


@dataclass
class Runtime:
    """What every handler shares: settings, the API client, metrics, per-job gates and loops."""

    settings: OperatorSettings
    kube: KubeClient
    metrics: OperatorMetrics
    loops: JobLoops = field(default_factory=JobLoops)
    executor: Executor = field(default_factory=lambda: ThreadPoolExecutor(RECONCILE_THREADS, thread_name_prefix="kiln-reconcile"))
    _gates: dict[str, JobGate] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    @property
    def caches(self) -> OperatorCaches | None:
        """Watch-fed reads, those the client's writes also feed; None: every read goes to the API server."""
        return self.kube.caches if isinstance(self.kube, CachingKube) else None

    def gate_for(self, namespace: str, name: str) -> JobGate:
        with self._guard:
            return self._gates.setdefault(f"{namespace}/{name}", JobGate())

    def gate_if_any(self, namespace: str, name: str) -> JobGate | None:
        """The job's gate if one exists: a watch event must not bring back a forgotten job's."""
        with self._guard:
            return self._gates.get(f"{namespace}/{name}")

    def forget(self, namespace: str, name: str) -> None:
        with self._guard:
            self._gates.pop(f"{namespace}/{name}", None)
        self.metrics.forget(namespace, name)


def reconcile(runtime: Runtime, namespace: str, name: str) -> Decision | None:
    """Bring one job one step closer to its spec; None when the job no longer exists."""
    started = time.perf_counter()
    try:
        with runtime.gate_for(namespace, name).lock:
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
    gate = runtime.gate_for(namespace, name)
    # From here on an event of this generation (this pass's own status write, kopf's finalizer)
    # has nothing to tell, and a newer one wakes the loop; one heard already wakes it now.
    if gate.read_generation(job["metadata"].get("generation")):
        runtime.loops.wake(namespace, name)
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
    gate.remember(observation.pods)
    runtime.metrics.record_status(namespace, name, job.get("status") or {}, decision.status)
    return decision


def _current_job(runtime: Runtime, namespace: str, name: str) -> dict[str, Any] | None:
    """The job as the operator's informer last showed it (with its own writes), else as the API
    server has it; None when it no longer exists."""
    if runtime.caches is not None and (job := runtime.caches.job(namespace, name)) is not None:
        return job
    try:
        return runtime.kube.get(KIND, namespace, name)
    except ApiError as exc:
        if exc.status == 404:
            runtime.forget(namespace, name)
            return None
        raise


def next_pass_in(runtime: Runtime, namespace: str, name: str) -> float:
    """Reconcile once; the seconds until the job's loop should reconcile it again unwoken."""
    interval = runtime.settings.timer_interval_seconds
    try:
        decision = reconcile(runtime, namespace, name)
    except ApiError as exc:  # 409/500/unreachable: try again soon; the operator never crashes on them
        log.warning("reconcile of %s/%s: Kubernetes API: %s", namespace, name, exc)
        return min(API_RETRY_SECONDS, interval)
    except Exception:  # a bug must not end the job's loop: log it and try again at the next tick
        log.exception("reconcile of %s/%s failed", namespace, name)
        return interval
    if decision is None or decision.permanent_error or decision.requeue_after is None:
        return interval  # a bad spec is Failed with a condition and an Event; a new spec wakes the loop
    return min(max(decision.requeue_after, MIN_REQUEUE_SECONDS), interval)


async def run_job_loop(runtime: Runtime, namespace: str, name: str, stopped: Any) -> None:
    """Reconcile the job until kopf stops its loop (deletion, peering's pause, exit)."""
    loop = asyncio.get_running_loop()
    runtime.gate_for(namespace, name)  # before the loop is known to run: its events need the gate
    woken = runtime.loops.start(namespace, name)
    try:
        while not stopped:
            woken.clear()  # a change from now on calls for another pass after this one
            delay = await loop.run_in_executor(runtime.executor, next_pass_in, runtime, namespace, name)
            await _first_of(woken.wait(), stopped.wait(), timeout=delay)
    finally:
        # Deleted, or handed to another replica: what this one knew of the job goes, and so do
        # its metric series (the replica that leads now reports the job).
        runtime.loops.stop(namespace, name, woken)
        runtime.forget(namespace, name)


async def _first_of(*waits: Any, timeout: float) -> None:
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def on_watch_event(runtime: Runtime, event_type: str, obj: dict[str, Any]) -> None:
    """An informer's event: wake the loop of the job it concerns if its last reconcile could not
    have seen it (called on the informer's thread; cheap, and never raises into it)."""
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    if obj.get("kind") == KIND:
        name = str(meta.get("name"))
        if event_type == "DELETED" or not runtime.loops.running(namespace, name):
            return  # kopf stops a deleted job's loop; a standby replica runs none
        gate = runtime.gate_if_any(namespace, name)  # None: the loop is ending
        if gate is not None and gate.hear_generation(meta.get("generation")):
            runtime.loops.wake(namespace, name)
        return
    job_name = _owner_job(obj)
    if job_name is None or not runtime.loops.running(namespace, job_name):
        return
    pod_name, version = str(meta.get("name")), meta.get("resourceVersion")
    gate = runtime.gate_if_any(namespace, job_name)
    if gate is None or not gate.is_news(pod_name, version, event_type):
        return  # the loop is ending, or its last pass already saw this very version of the pod
    if event_type == "ADDED" and runtime.caches is not None \
            and runtime.caches.written_by_operator("Pod", namespace, pod_name, version):
        return  # the operator's own create: the reconcile that made it knew
    runtime.loops.wake(namespace, job_name)


def _owner_job(body: Any) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{API_GROUP}/"):
            return str(ref.get("name"))
    return None


def register(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    """Attach every handler to `registry` (a fresh one per operator, so tests stay isolated)."""
    @kopf.daemon(*RESOURCE, registry=registry)
    async def job_loop(namespace: str, name: str, stopped: Any, **_: Any) -> None:
        await run_job_loop(runtime, namespace, name, stopped)

    @kopf.on.probe(id=PLURAL, registry=registry)
    def jobs_tracked(**_: Any) -> int:
        # kopf answers /healthz only while its event loop runs; this adds what the operator tracks.
        return runtime.metrics.jobs.count()
