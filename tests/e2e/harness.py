"""The operator as a real subprocess (`kiln operator`) plus TrainingJob helpers for scenarios.

A subprocess is what a cluster runs, and it makes "the operator restarts" a plain
SIGTERM and start again. Settings go through `KILN_*` variables, as in the Helm chart.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import yaml
from kiln_operator.kube import USER_AGENT
from kubernetes import client

from tests.support.ports import free_port
from tests.support.waiting import wait_for

Obj = dict[str, Any]
REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "kiln.dev", "v1alpha1", "trainingjobs"
CHECKPOINT_CLAIM = "checkpoints"




class OperatorProcess:
    """`kiln operator` against the emulated API; `restart()` stops it and starts a new one."""

    def __init__(self, kubeconfig: str, log_path: Path, **settings: Any) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.settings = {
            "timer_interval_seconds": 1, "default_checkpoint_storage": f"pvc://{CHECKPOINT_CLAIM}/kiln",
            "restart_backoff_seconds": 1, "restart_backoff_max_seconds": 2, "status_unreachable_seconds": 20,
            **settings,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self.starts = 0
        self.peak_rss = 0

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
        env.update({f"KILN_{k.upper()}": str(v) for k, v in self.settings.items()})
        self.metrics_port = free_port()
        env.update(KILN_METRICS_PORT=str(self.metrics_port), KILN_HEALTH_PORT=str(free_port()))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"==== operator start #{self.starts + 1} ====\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kiln_cli.main", "operator", "--kubeconfig", self.kubeconfig],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
            )
        self.starts += 1

    def stop(self, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def sample_rss(self) -> int:
        if self.alive():
            assert self.proc is not None
            self.peak_rss = max(self.peak_rss, psutil.Process(self.proc.pid).memory_info().rss)
        return self.peak_rss

    def log_tail(self, limit: int = 6000) -> str:
        try:
            return self.log_path.read_bytes()[-limit:].decode(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> OperatorProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def operator_requests(api: Any, since: int) -> Counter[str]:
    """The operator's API requests (kopf's and its own client's) after the `since`-th, watches left
    out: what one job costs the API server while it is the only one."""
    return Counter(f"{r.verb} {r.resource}" for r in api.requests[since:]
                   if r.agent.startswith(("kopf/", USER_AGENT)) and r.verb != "watch")


def load_manifest(path: Path | str, **overrides: Any) -> Obj:
    """A TrainingJob manifest with `spec` overrides merged in (dotted keys for nested fields)."""
    manifest = yaml.safe_load(Path(path).read_text())
    manifest.setdefault("metadata", {}).setdefault("namespace", "default")
    for dotted, value in overrides.items():
        target = manifest["spec"]
        parts = dotted.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = copy.deepcopy(value)
    return manifest


class Jobs:
    """TrainingJob calls through the official client (what kubectl does)."""

    def __init__(self, api_client: client.ApiClient, namespace: str = "default") -> None:
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace

    def create(self, manifest: Obj) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, manifest)

    def get(self, name: str) -> Obj | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def status(self, name: str) -> Obj:
        return (self.get(name) or {}).get("status") or {}

    def patch_spec(self, name: str, spec: Obj) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec})

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def pods(self, job: str) -> list[Obj]:
        items = self.core.list_namespaced_pod(self.namespace, label_selector=f"kiln.dev/job-name={job}").items
        return [self.core.api_client.sanitize_for_serialization(p) for p in items]

    def create_claim(self, name: str = CHECKPOINT_CLAIM) -> None:
        self.core.create_namespaced_persistent_volume_claim(self.namespace, {
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
        })

    def wait_phase(self, name: str, phases: set[str], timeout: float, context: Any = None) -> Obj:
        return wait_for(lambda: self.status(name).get("phase") in phases and self.status(name), timeout,
                        f"TrainingJob {name} phase in {sorted(phases)} (now {self.status(name).get('phase')})",
                        interval=0.5, on_timeout=context)


def condition(status: Obj, kind: str) -> Obj | None:
    for entry in status.get("conditions") or []:
        if entry.get("type") == kind:
            return entry
    return None


def epoch_of(status: Obj) -> int | None:
    progress = status.get("progress") or {}
    return progress.get("epoch")


def sleep_briefly() -> None:
    """A pause between observations (not synchronisation: every assertion waits on a condition)."""
    time.sleep(0.5)
