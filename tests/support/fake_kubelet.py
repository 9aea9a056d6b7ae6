"""A fake kubelet for integration tests: sets pod phases, IPs, conditions and exit codes.

It writes only through the status subresource, as a real kubelet does, and runs no
containers (tests/e2e has a kubelet that runs real processes). `auto_run` keeps marking
new pods of a selector Running, so recreated pods come up without the test's help.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Any

from kiln_operator.kube import ApiError, KubeClient


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _conditions(ready: bool, scheduled: bool = True, message: str = "") -> list[dict[str, Any]]:
    stamp = _now()
    if not scheduled:
        return [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                 "lastTransitionTime": stamp}]
    value = "True" if ready else "False"
    return [{"type": kind, "status": status, "lastTransitionTime": stamp}
            for kind, status in (("PodScheduled", "True"), ("Initialized", "True"),
                                 ("ContainersReady", value), ("Ready", value))]


class FakeKubelet:
    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _containers(self, namespace: str, name: str) -> list[str]:
        pod = self.kube.get("Pod", namespace, name)
        return [c["name"] for c in pod["spec"].get("containers", [])]

    def _write(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.kube.patch("Pod", namespace, name, {"status": status}, subresource="status")

    def run_pod(self, namespace: str, name: str, ip: str = "127.0.0.1", ready: bool = True) -> None:
        """Running (and Ready unless told otherwise) on `ip`."""
        started = _now()
        statuses = [{"name": c, "ready": ready, "started": True, "restartCount": 0, "image": "kiln", "imageID": "",
                     "state": {"running": {"startedAt": started}}} for c in self._containers(namespace, name)]
        self._write(namespace, name, {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": ip,
                                      "startTime": started, "conditions": _conditions(ready),
                                      "containerStatuses": statuses})

    def terminate_pod(self, namespace: str, name: str, exit_code: int, message: str = "") -> None:
        """The main container exited: Succeeded on 0, Failed otherwise, with its termination message."""
        stamp = _now()
        terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                      "message": message, "startedAt": stamp, "finishedAt": stamp}
        statuses = [{"name": c, "ready": False, "started": False, "restartCount": 0, "image": "kiln", "imageID": "",
                     "state": {"terminated": terminated}} for c in self._containers(namespace, name)]
        self._write(namespace, name, {"phase": "Succeeded" if exit_code == 0 else "Failed",
                                      "conditions": _conditions(False), "containerStatuses": statuses})

    def unschedulable(self, namespace: str, name: str, message: str) -> None:
        self._write(namespace, name, {"phase": "Pending", "conditions": _conditions(False, scheduled=False, message=message)})

    def run_pending(self, namespace: str, selector: str, ip: str = "127.0.0.1") -> list[str]:
        """Mark every Pending pod matching `selector` Running; returns their names."""
        started = []
        for pod in self.kube.list("Pod", namespace, selector):
            if (pod.get("status") or {}).get("phase", "Pending") == "Pending" and not pod["metadata"].get("deletionTimestamp"):
                try:
                    self.run_pod(namespace, pod["metadata"]["name"], ip)
                    started.append(pod["metadata"]["name"])
                except ApiError as exc:
                    if exc.status not in (404, 409, 500):  # gone, raced, or an injected fault: next round
                        raise
        return started

    def auto_run(self, namespace: str, selector: str, ip: str = "127.0.0.1", period: float = 0.1) -> None:
        """Keep starting new pods of `selector` in the background until `stop()`."""

        def loop() -> None:
            while not self._stop.wait(period):
                try:
                    self.run_pending(namespace, selector, ip)
                except ApiError:
                    continue

        thread = threading.Thread(target=loop, name="fake-kubelet", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
