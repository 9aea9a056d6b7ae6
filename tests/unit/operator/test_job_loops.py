"""The operator's loop per job: what wakes it, how wake-ups coalesce, when it reconciles unwoken,
and what its end forgets."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import kopf
import pytest
from kiln_operator import handlers
from kiln_operator.handlers import JobGate, JobLoops, Runtime, on_watch_event, run_job_loop
from kiln_operator.metrics import OperatorMetrics
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
        (None, "ADDED", 1, True, False),  # no pass has read the job yet: the first one reads this
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


@pytest.mark.parametrize(
    ("reason", "forgotten"),
    [(kopf.DaemonStoppingReason.RESOURCE_DELETED, True), (kopf.DaemonStoppingReason.OPERATOR_PAUSING, False)],
)
def test_a_deleted_jobs_loop_forgets_it_and_a_paused_ones_does_not(
        monkeypatch: pytest.MonkeyPatch, reason: kopf.DaemonStoppingReason, forgotten: bool) -> None:
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
    assert (runtime.gate_for("ns", "j") is not gate) is forgotten


def test_a_gate_reads_a_new_spec_only_after_a_pass_has_read_one() -> None:
    gate = JobGate()
    assert not gate.is_new_spec(1)
    gate.read_generation(1)
    assert not gate.is_new_spec(1) and gate.is_new_spec(2)


async def _until(condition: Any, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not condition():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
