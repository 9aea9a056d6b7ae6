"""Small readers shared by the operator integration tests."""

from __future__ import annotations

import re
import urllib.request
from typing import Any

from kiln_operator.kube import ApiError, KubeClient

from tests.support.waiting import wait_for

NS = "default"
DEADLINE = 60.0


def job_status(kube: KubeClient, name: str) -> dict[str, Any]:
    try:
        return kube.get("TrainingJob", NS, name).get("status") or {}
    except ApiError:
        return {}


def wait_phase(kube: KubeClient, name: str, phase: str, timeout: float = DEADLINE) -> dict[str, Any]:
    return wait_for(lambda: (s := job_status(kube, name)).get("phase") == phase and s, timeout, f"{name} to be {phase}")


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def pod_names(kube: KubeClient, name: str, role: str | None = None) -> list[str]:
    selector = f"kiln.dev/job-name={name}" + (f",kiln.dev/role={role}" if role else "")
    return sorted(p["metadata"]["name"] for p in kube.list("Pod", NS, selector))


def events_for(kube: KubeClient, name: str) -> list[dict[str, Any]]:
    return [e for e in kube.list("Event", NS) if e.get("involvedObject", {}).get("name") == name
            and e.get("involvedObject", {}).get("kind") == "TrainingJob"]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format (labels must match exactly)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = ",".join(sorted((match.group(3) or "").split(","))) if match.group(3) else ""
        if found == wanted:
            return float(match.group(4))
    return None


def job_manifest(name: str, port: int, **spec: Any) -> dict[str, Any]:
    """A small, valid TrainingJob whose driver endpoint is `port` on the (fake) head pod IP."""
    return {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"workers": {"replicas": 2}, "hyperparameters": {"epochs": 3}, "metrics": {"port": port}, **spec},
    }


def start_running_job(kube: KubeClient, kubelet: Any, trainer: Any, name: str) -> dict[str, Any]:
    """Create a job whose pods the fake kubelet runs and whose trainer reports epoch 1 of 3."""
    trainer.status = {"phase": "Running", "progress": {"epoch": 1, "totalEpochs": 3}}
    kube.create(job_manifest(name, trainer.port))
    kubelet.auto_run(NS, f"kiln.dev/job-name={name}")
    return wait_phase(kube, name, "Running")
