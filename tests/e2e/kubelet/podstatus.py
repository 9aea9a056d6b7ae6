"""Pure builders of the `status` a kubelet reports for a pod."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]


def conditions(ready: bool, scheduled: bool = True, unschedulable: str = "") -> list[Obj]:
    result: list[Obj] = [{"type": "PodScheduled", "status": "True" if scheduled else "False"}]
    if not scheduled:
        result[0].update(reason="Unschedulable", message=unschedulable)
        return result
    flag = "True" if ready else "False"
    result += [
        {"type": "Initialized", "status": "True"},
        {"type": "ContainersReady", "status": flag},
        {"type": "Ready", "status": flag},
    ]
    return result


def container_status(container: Obj, state: Obj, ready: bool, started: bool) -> Obj:
    return {
        "name": container.get("name", ""), "image": container.get("image", ""), "imageID": "",
        "ready": ready, "started": started, "restartCount": 0, "state": state,
    }


def pending_status(container: Obj, reason: str = "", message: str = "", scheduled: bool = True) -> Obj:
    """Pending; with `reason` the container is Waiting (CreateContainerConfigError, ...)."""
    status: Obj = {"phase": "Pending", "conditions": conditions(False, scheduled, message if not scheduled else "")}
    if reason and scheduled:
        waiting = {"waiting": {"reason": reason, "message": message}}
        status["containerStatuses"] = [container_status(container, waiting, False, False)]
    return status


def running_status(container: Obj, pod_ip: str, host_ip: str, started_at: str, ready: bool, started: bool = True) -> Obj:
    return {
        "phase": "Running", "podIP": pod_ip, "podIPs": [{"ip": pod_ip}], "hostIP": host_ip,
        "startTime": started_at, "conditions": conditions(ready),
        "containerStatuses": [container_status(container, {"running": {"startedAt": started_at}}, ready, started)],
    }


def terminated_status(container: Obj, exit_code: int, message: str, started_at: str, finished_at: str,
                      reason: str = "") -> Obj:
    terminated: Obj = {
        "exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        "startedAt": started_at, "finishedAt": finished_at,
    }
    if exit_code > 128:
        terminated["signal"] = exit_code - 128
    if message:
        terminated["message"] = message
    return {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "conditions": conditions(False),
        "containerStatuses": [container_status(container, {"terminated": terminated}, False, False)],
    }


def refused_status(reason: str, message: str) -> Obj:
    """A pod the test kubelet will not run: Failed at once, with the reason in plain sight."""
    return {"phase": "Failed", "reason": reason, "message": message, "conditions": conditions(False)}


def hosts_file(pod_ip: str, pod_name: str, pod_namespace: str, services: list[Obj]) -> str:
    """/etc/hosts of a pod: itself plus every Service's DNS names (standing in for cluster DNS)."""
    lines = ["127.0.0.1\tlocalhost", f"{pod_ip}\t{pod_name}"]
    for svc in sorted(services, key=lambda s: (s["metadata"].get("namespace", ""), s["metadata"]["name"])):
        ip = (svc.get("spec") or {}).get("clusterIP")
        if not ip or ip == "None":
            continue
        name, ns = svc["metadata"]["name"], svc["metadata"].get("namespace", "default")
        short = f" {name}" if ns == pod_namespace else ""
        lines.append(f"{ip}\t{name}.{ns}.svc.cluster.local {name}.{ns}.svc {name}.{ns}{short}")
    return "\n".join(lines) + "\n"
