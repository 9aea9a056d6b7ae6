"""Every phase change is announced by an Event; a finished job's conditions stay as they ended."""

from __future__ import annotations

import pytest

from tests.support.in_memory_cluster import Cluster, condition, job_manifest, running_cluster

SCHEDULER = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."


def phase_events(events: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The phase Events: their message starts with the phase entered."""
    phases = ("Pending", "Starting", "Running", "Restarting", "Succeeded", "Failed", "Suspended")
    return [e for e in events if e[2].split(":", 1)[0] in phases]


@pytest.mark.parametrize(
    "stored",
    [None, {}, {"kopf": {"progress": {}}}, {"restarts": 0}],
    ids=["no status", "empty status", "only kopf's bookkeeping", "status without a phase"],
)
def test_the_first_pending_phase_posts_an_event(stored: dict | None):
    manifest = job_manifest()
    if stored is not None:
        manifest["status"] = stored
    decision = Cluster(manifest).decide()
    assert decision.status["phase"] == "Pending"
    assert phase_events(decision.events) == [("Normal", "Creating", decision.events[0][2])]
    assert decision.events[0][2].startswith("Pending: ")


def test_every_phase_transition_posts_exactly_one_event():
    cluster = Cluster(job_manifest())
    seen: list[tuple[str, str]] = []

    def step() -> None:
        before = (cluster.job.get("status") or {}).get("phase")
        decision = cluster.step()
        announced = phase_events(decision.events)
        if decision.status["phase"] != before:
            assert len(announced) == 1, (before, decision.status["phase"], decision.events)
            assert announced[0][2].startswith(f"{decision.status['phase']}: ")
            seen.append((before or "", decision.status["phase"]))
        else:
            assert announced == []

    step()  # -> Pending
    cluster.run_all()
    step()  # -> Starting
    cluster.trainer_status = {"phase": "Running", "progress": {"epoch": 1, "totalEpochs": 5, "step": 3}}
    step()  # -> Running
    cluster.remove("demo-head")
    step()  # -> Restarting
    for _ in range(10):
        cluster.tick(cluster.last.requeue_after or 1)
        step()
        if cluster.job["status"]["phase"] != "Restarting":
            break
    cluster.run_all()
    step()  # Pending -> Running (trainer reports)
    cluster.terminate("demo-head", 0)
    step()  # -> Succeeded
    assert [after for _, after in seen] == ["Pending", "Starting", "Running", "Restarting", "Pending", "Running", "Succeeded"]


def unschedulable_failure() -> Cluster:
    cluster = Cluster(job_manifest(startupTimeoutSeconds=60))
    cluster.step()
    cluster.run_pod("demo-head")
    cluster.unschedulable("demo-worker-0", SCHEDULER)
    cluster.tick(61)
    assert cluster.step().status["reason"] == "Unschedulable"
    return cluster


def test_an_unschedulable_failure_keeps_its_conditions_on_later_reconciles():
    cluster = unschedulable_failure()
    ended = cluster.job["status"]["conditions"]
    assert condition(cluster.job["status"], "Unschedulable")["status"] == "True"
    assert condition(cluster.job["status"], "Unschedulable")["message"] == SCHEDULER
    for _ in range(3):
        cluster.tick(30)
        later = cluster.step()
        assert later.status["conditions"] == ended
        assert later.events == []
    assert later.status["reason"] == "Unschedulable" and SCHEDULER in later.status["message"]


def test_a_succeeded_job_keeps_its_conditions_while_its_workers_are_released():
    cluster = running_cluster()
    cluster.terminate("demo-head", 0)
    ended = cluster.step()
    assert ended.status["phase"] == "Succeeded" and ended.delete
    conditions = ended.status["conditions"]
    cluster.tick(30)
    later = cluster.step()
    assert later.status["workers"]["ready"] == 0  # the workers went; the conditions did not change
    assert later.status["conditions"] == conditions
    cluster.job["metadata"]["generation"] = 7  # an edit after the end changes nothing either
    assert cluster.step().status["conditions"] == conditions
