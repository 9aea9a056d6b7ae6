"""The operator's loop per job: what wakes it, how wake-ups coalesce, when it reconciles unwoken,
and what its end forgets."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import kopf
import pytest
from kiln_operator import handlers
from kiln_operator.handlers import (
    API_RETRY_SECONDS,
    MIN_REQUEUE_SECONDS,
    JobGate,
    JobLoops,
    Runtime,
    next_pass_in,
    on_watch_event,
    run_job_loop,
)
from kiln_operator.kube import ApiError
from kiln_operator.metrics import OperatorMetrics
from kiln_operator.reconciler import Decision
from kiln_operator.settings import OperatorSettings

OWNER = [{"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "name": "j"}]


class Stopped:
    """kopf's `stopped` flag as a daemon sees it: falsy until set, awaitable, with a reason."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.reason: kopf.DaemonStoppingReason | None = None

    def __bool__(self) -> bool:
        return self.event.is_set()

    def wait(self) -> Any:
        return self.event.wait()

    def stop(self, reason: kopf.DaemonStoppingReason) -> None:
        self.reason = reason
        self.event.set()


class RecordingLoops(JobLoops):
    def __init__(self, running: bool) -> None:
        super().__init__()
        self.is_running, self.woken = running, 0

    def running(self, namespace: str, name: str) -> bool:
        return self.is_running

    def wake(self, namespace: str, name: str) -> bool:
        self.woken += 1
        return True


def runtime_with(loops: JobLoops, timer_interval: float = 30.0) -> Runtime:
    settings = OperatorSettings(timer_interval_seconds=timer_interval)
    return Runtime(settings=settings, kube=None, metrics=OperatorMetrics(), loops=loops)  # type: ignore[arg-type]


def job_event(generation: int) -> dict[str, Any]:
    return {"kind": "TrainingJob", "metadata": {"namespace": "ns", "name": "j", "generation": generation}}


def pod_event(version: str, owners: list[dict[str, str]] = OWNER) -> dict[str, Any]:
    return {"kind": "Pod", "metadata": {"namespace": "ns", "name": "j-head", "resourceVersion": version,
                                        "ownerReferences": owners}}


@pytest.mark.parametrize(
    ("read", "event_type", "generation", "running", "wakes"),
    [
        (1, "MODIFIED", 2, True, True),  # a new spec
        (1, "MODIFIED", 1, True, False),  # a status write: the generation the last pass read
        (2, "MODIFIED", 1, True, False),  # an older event than the pass's read (a GET overtook it)
        (None, "ADDED", 1, True, False),  # no pass has read the job yet: the first one will
        (1, "DELETED", 1, True, False),  # kopf stops the loop of a deleted job
        (1, "MODIFIED", 2, False, False),  # another replica leads: no loop here to wake
    ],
)
def test_job_events_wake_the_loop_only_for_a_spec_its_last_pass_did_not_read(
        read: int | None, event_type: str, generation: int, running: bool, wakes: bool) -> None:
    loops = RecordingLoops(running)
    runtime = runtime_with(loops)
    runtime.gate_for("ns", "j").read_generation(read)
    on_watch_event(runtime, event_type, job_event(generation))
    assert loops.woken == int(wakes)


def test_a_new_spec_heard_before_the_first_pass_read_an_older_one_calls_for_another_pass() -> None:
    gate = JobGate()
    assert not gate.hear_generation(2)  # no pass has read the job yet
    assert gate.read_generation(1)  # the pass read an older copy (a GET): another pass is due
    assert not gate.read_generation(2)


def test_events_of_a_job_whose_loop_is_ending_bring_back_no_gate() -> None:
    loops = RecordingLoops(running=True)
    runtime = runtime_with(loops)  # the loop has forgotten the job's gate on its way out
    on_watch_event(runtime, "MODIFIED", job_event(2))
    on_watch_event(runtime, "MODIFIED", pod_event("6"))
    assert loops.woken == 0 and runtime.gate_if_any("ns", "j") is None


@pytest.mark.parametrize(
    ("event_type", "version", "seen", "owners", "wakes"),
    [
        ("MODIFIED", "6", "5", OWNER, True),  # the head changed since the last pass
        ("MODIFIED", "5", "5", OWNER, False),  # the very version the last pass observed
        ("DELETED", "5", "5", OWNER, True),  # gone, whatever was seen
        ("MODIFIED", "6", "5", [], False),  # not a job's pod
    ],
)
def test_pod_events_wake_the_owning_jobs_loop_with_what_it_has_not_seen(
        event_type: str, version: str, seen: str, owners: list[dict[str, str]], wakes: bool) -> None:
    loops = RecordingLoops(running=True)
    runtime = runtime_with(loops)
    runtime.gate_for("ns", "j").remember({"j-head": {"metadata": {"resourceVersion": seen}}})
    on_watch_event(runtime, event_type, pod_event(version, owners))
    assert loops.woken == int(wakes)


def test_wakes_during_a_pass_bring_one_more_pass_and_the_timer_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = runtime_with(JobLoops())
    passes: list[float] = []  # one entry per pass
    in_first_pass, release_first_pass = threading.Event(), threading.Event()

    def next_pass_in(_runtime: Runtime, namespace: str, name: str) -> float:
        passes.append(0.0)
        if len(passes) == 1:
            in_first_pass.set()
            release_first_pass.wait(10)
        return 0.2 if len(passes) == 2 else 30.0  # the second pass asks to be called back soon

    monkeypatch.setattr(handlers, "next_pass_in", next_pass_in)

    async def scenario() -> None:
        stopped = Stopped()
        loop_task = asyncio.ensure_future(run_job_loop(runtime, "ns", "j", stopped))
        await asyncio.to_thread(in_first_pass.wait, 10)
        woken = await asyncio.to_thread(lambda: [runtime.loops.wake("ns", "j") for _ in range(5)])
        assert all(woken)  # from another thread, as the informers do
        release_first_pass.set()
        await _until(lambda: len(passes) >= 3, deadline=10)
        await asyncio.sleep(0.5)  # time enough for a sixth pass, were wake-ups counted one by one
        assert len(passes) == 3  # the first; one for the five wake-ups; the one the second asked for
        stopped.stop(kopf.DaemonStoppingReason.OPERATOR_PAUSING)
        await asyncio.wait_for(loop_task, 10)
        assert not runtime.loops.running("ns", "j") and not runtime.loops.wake("ns", "j")

    asyncio.run(scenario())
    runtime.executor.shutdown()


@pytest.mark.parametrize("reason", [kopf.DaemonStoppingReason.RESOURCE_DELETED, kopf.DaemonStoppingReason.OPERATOR_PAUSING])
def test_a_loop_forgets_its_job_when_it_ends(monkeypatch: pytest.MonkeyPatch, reason: kopf.DaemonStoppingReason) -> None:
    runtime = runtime_with(JobLoops())
    monkeypatch.setattr(handlers, "next_pass_in", lambda *_: 30.0)
    gate = runtime.gate_for("ns", "j")

    async def scenario() -> None:
        stopped = Stopped()
        loop_task = asyncio.ensure_future(run_job_loop(runtime, "ns", "j", stopped))
        await _until(lambda: runtime.loops.running("ns", "j"), deadline=10)
        stopped.stop(reason)
        await asyncio.wait_for(loop_task, 10)

    asyncio.run(scenario())
    runtime.executor.shutdown()
    assert runtime.gate_if_any("ns", "j") is None and gate is not None


def decision(requeue_after: float | None, permanent_error: str | None = None) -> Decision:
    return Decision(status={}, create=[], delete=[], events=[], requeue_after=requeue_after, permanent_error=permanent_error)


def _raise(exc: Exception) -> Any:
    raise exc


@pytest.mark.parametrize(
    ("outcome", "seconds"),
    [
        (lambda: None, 30.0),  # the job is gone: kopf stops the loop soon
        (lambda: decision(None), 30.0),  # nothing to wait for: the timer
        (lambda: decision(5.0), 5.0),
        (lambda: decision(0.0), MIN_REQUEUE_SECONDS),  # never a busy loop
        (lambda: decision(300.0), 30.0),  # the timer comes first
        (lambda: decision(1.0, permanent_error="bad spec"), 30.0),
        (lambda: _raise(ApiError(500, "InternalError", "etcd")), API_RETRY_SECONDS),
        (lambda: _raise(RuntimeError("a bug")), 30.0),  # logged; the loop goes on
    ],
    ids=["gone", "settled", "requeue", "requeue-now", "requeue-later", "bad-spec", "api-error", "bug"],
)
def test_the_next_pass_comes_when_the_decision_asks_or_the_timer_ticks(
        monkeypatch: pytest.MonkeyPatch, outcome: Any, seconds: float) -> None:
    monkeypatch.setattr(handlers, "reconcile", lambda *_: outcome())
    assert next_pass_in(runtime_with(JobLoops(), timer_interval=30.0), "ns", "j") == seconds


async def _until(condition: Any, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not condition():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
