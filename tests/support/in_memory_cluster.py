"""A tiny in-memory cluster for driving `decide`: apply its Decisions, play the kubelet.

Only bookkeeping lives here (objects by kind and name, pod status fields as the
kubelet writes them); every decision under test comes from the real `decide`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from kiln_api.validation import validate_object
from kiln_operator.objects.labels import SPEC_HASH_ANNOTATION
from kiln_operator.reconciler import Decision, Observation, decide
from kiln_operator.settings import OperatorSettings

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
TOKEN = "test-token"


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def job_manifest(name: str = "demo", **spec: object) -> dict:
    body: dict = {"workers": {"replicas": 2}, "hyperparameters": {"epochs": 5}}
    body.update(spec)
    return {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "ns", "uid": "uid-1", "generation": 1},
        "spec": body,
    }


@dataclass
class Cluster:
    """Objects by (kind, name), the job manifest, and a clock."""

    job: dict
    settings: OperatorSettings = field(default_factory=lambda: OperatorSettings(default_checkpoint_storage="pvc://ckpt"))
    now: datetime = T0
    objects: dict[tuple[str, str], dict] = field(default_factory=dict)
    trainer_status: dict | None = None
    trainer_status_error: str | None = None
    last: Decision | None = None

    def pods(self) -> dict[str, dict]:
        return {name: obj for (kind, name), obj in self.objects.items() if kind == "Pod"}

    def pod(self, name: str) -> dict:
        return self.objects[("Pod", name)]

    def observe(self) -> Observation:
        return Observation(
            pods=copy.deepcopy(self.pods()),
            existing=frozenset(self.objects),
            trainer_status=copy.deepcopy(self.trainer_status),
            trainer_status_error=self.trainer_status_error,
            now=self.now,
            # What observe.spec_hashes reads: the spec hash non-pod objects were built from.
            spec_hashes={key: obj["metadata"]["annotations"][SPEC_HASH_ANNOTATION] for key, obj in self.objects.items()
                         if key[0] != "Pod" and SPEC_HASH_ANNOTATION in (obj["metadata"].get("annotations") or {})},
        )

    def decide(self) -> Decision:
        self.last = decide(copy.deepcopy(self.job), self.observe(), self.settings, TOKEN)
        return self.last

    def apply(self, decision: Decision) -> None:
        """What the shell does: create if missing, delete, write the status."""
        for obj in decision.create:
            key = (obj["kind"], obj["metadata"]["name"])
            if key not in self.objects:
                created = json.loads(json.dumps(obj))
                created["metadata"]["creationTimestamp"] = stamp(self.now)
                self.objects[key] = created
        for key in decision.delete:
            self.objects.pop(key, None)
        check_status_against_crd(decision.status)
        self.job["status"] = copy.deepcopy(decision.status)

    def step(self) -> Decision:
        decision = self.decide()
        self.apply(decision)
        return decision

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    # ------------------------------------------------------------------ the kubelet's part

    def run_pod(self, name: str, ready: bool = True, ip: str = "10.0.0.1") -> None:
        pod = self.pod(name)
        pod["status"] = {
            "phase": "Running",
            "podIP": ip,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True" if ready else "False"},
            ],
            "containerStatuses": [{"name": pod["spec"]["containers"][0]["name"], "ready": ready, "state": {"running": {}}}],
        }

    def run_all(self) -> None:
        for name in self.pods():
            self.run_pod(name)

    def unschedulable(self, name: str, message: str) -> None:
        self.pod(name)["status"] = {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}],
        }

    def terminate(self, name: str, exit_code: int, message: str = "", reason: str = "") -> None:
        pod = self.pod(name)
        pod["status"] = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": pod["spec"]["containers"][0]["name"],
                    "ready": False,
                    "state": {"terminated": {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error"), "message": message}},
                }
            ],
        }

    def evict(self, name: str) -> None:
        self.pod(name)["status"] = {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}

    def remove(self, name: str) -> None:
        del self.objects[("Pod", name)]


def check_status_against_crd(status: dict) -> None:
    """The API server would store this status unchanged: the CRD schema accepts it, nothing is pruned."""
    manifest = {"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "x"}, "spec": {}, "status": status}
    result = validate_object(manifest)
    assert result.ok, [str(e) for e in result.errors]
    assert result.obj["status"] == status


def condition(status: dict, kind: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == kind)


def running_cluster(**spec: object) -> Cluster:
    """A job whose cluster is up and whose trainer reports Running."""
    cluster = Cluster(job_manifest(**spec))
    cluster.step()
    cluster.run_all()
    cluster.trainer_status = {"phase": "Running", "progress": {"epoch": 1, "totalEpochs": 5, "step": 40}}
    cluster.tick(5)
    decision = cluster.step()
    assert decision.status["phase"] == "Running", decision.status
    return cluster
