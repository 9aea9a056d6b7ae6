"""The monitoring stack of the dashboard test: all real processes on loopback.

- the emulated Kubernetes API (tests/support/k8s_emulator.py) and a fake kubelet that marks the
  job's pods Running on 127.0.0.1, so the head pod's IP is where the real driver listens;
- the real operator: `kiln operator` as a subprocess, against the emulated API;
- the real training driver: `kiln run` of a tiny job as a subprocess (its own Ray cluster);
- a real Prometheus scraping both every second.

The harness's own API requests are recorded, so the operator's requests can be told apart in the
emulator's request log (for the RBAC check).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kiln_operator.kube import KubeClient, load_configuration

from tests.support.fake_kubelet import FakeKubelet
from tests.support.k8s_emulator import EmulatedApiServer
from tests.support.k8s_semantics import parse_resource_path, verb_of
from tests.support.ports import free_port
from tests.support.prometheus import PrometheusServer, Target
from tests.support.waiting import wait_for

T = TypeVar("T")
KILN = str(Path(sys.executable).with_name("kiln"))
JOB_NAME, JOB_NAMESPACE = "dash", "ml"
FINISHED_JOB = "done"  # a second job, finished through its head pod's termination message
# Training rows: 20,000 steps of batch 4 an epoch, about 13 s here (0.6 ms a step); a machine twice
# as fast still has epochs well over the 4 s rate window of the mid-epoch check.
EPOCH_ROWS = 80_000
TRAININGJOBS = "kiln.dev/v1alpha1/trainingjobs"  # the emulator keys objects by group/version/plural




class RecordingKubeClient(KubeClient):
    """A KubeClient that remembers (method, path) of every request it sends."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.sent: list[tuple[str, str]] = []

    def request(self, method: str, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.sent.append((method, path))
        return super().request(method, path, *args, **kwargs)


def job_manifest(metrics_port: int, name: str = JOB_NAME) -> dict[str, Any]:
    """A small job that keeps training until stopped (the test ends it), checkpointing every epoch.

    Its epochs are thousands of tiny steps (a few seconds each here), so Prometheus scrapes it
    mid-epoch many times: the step counter must move between epoch ends. The CPU it takes is
    the same as with tiny epochs: either way it trains flat out until stopped."""
    return {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": JOB_NAMESPACE},
        "spec": {
            "workers": {"replicas": 1, "cpusPerWorker": 1},
            "model": {"architecture": "mlp", "hiddenUnits": [16]},
            "data": {"source": "synthetic:classification", "synthetic": {"samples": EPOCH_ROWS * 10 // 7, "features": 8}},
            "hyperparameters": {"epochs": 100000, "batchSize": 4, "learningRate": 0.01},
            "checkpoint": {"everyEpochs": 1, "keep": 2, "metric": "val_accuracy"},
            "earlyStopping": {"metric": "val_loss", "patience": 100000},
            "metrics": {"port": metrics_port},
        },
    }


class Process:
    """A subprocess in its own process group, stopped with `stop_signal` then SIGKILL."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str], stop_signal: int = signal.SIGTERM) -> None:
        self.log = log
        self.stop_signal = stop_signal
        with log.open("wb") as out:
            self.popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace: float) -> float:
        """Stop it; returns the seconds it took to exit after the polite signal."""
        started = time.monotonic()
        if self.alive():
            os.killpg(self.popen.pid, self.stop_signal)
            with suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        elapsed = time.monotonic() - started
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # anything it left in its group
        self.popen.wait(10)
        return elapsed


def kill_ray_processes(temp_dir: str) -> None:
    """Ray processes of the run that used `temp_dir` (ours alone: the path is unique to this run)."""
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            cmdline = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if temp_dir in cmdline:
            with suppress(ProcessLookupError):
                os.kill(int(pid_dir.name), signal.SIGKILL)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class MonitoringStack:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.stack = ExitStack()
        self.driver_port = free_port()
        self.operator_metrics_port = free_port()
        self.operator_health_port = free_port()
        self.ray_temp = tempfile.mkdtemp(prefix="kmon-", dir="/tmp")
        self.started = time.time()
        self.operator_stop_seconds: float | None = None

    def __enter__(self) -> MonitoringStack:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        self.api = self.stack.enter_context(EmulatedApiServer(workdir=self.workdir))
        self.kube = RecordingKubeClient(load_configuration(self.api.kubeconfig_path))
        self.kubelet = FakeKubelet(self.kube)
        self.stack.callback(self.kubelet.stop)
        self.kubelet.auto_run(JOB_NAMESPACE, f"kiln.dev/job-name={JOB_NAME}", ip="127.0.0.1")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.operator = Process(
            [KILN, "operator", "--kubeconfig", self.api.kubeconfig_path, "--timer-interval", "1",
             "--metrics-port", str(self.operator_metrics_port), "--health-port", str(self.operator_health_port),
             "--default-checkpoint-storage", "pvc://checkpoints/kiln"],
            self.workdir / "operator.log",
            {**env, "KILN_RESTART_BACKOFF_SECONDS": "1", "KILN_RESTART_BACKOFF_MAX_SECONDS": "2"},
        )
        self.stack.callback(self._stop_operator)
        manifest = self.workdir / "job.yaml"
        manifest.write_text(yaml.safe_dump(job_manifest(self.driver_port)))
        self.driver = Process(
            [KILN, "run", str(manifest), "--output", str(self.workdir / "runs")],
            self.workdir / "driver.log",
            {**env, "KILN_RAY_TEMP_DIR": self.ray_temp, "RAY_USAGE_STATS_ENABLED": "0"},
            # Not Ctrl-C (SIGINT), which stops at the end of the epoch in progress: these epochs are long.
            stop_signal=signal.SIGTERM,
        )
        self.stack.callback(self._stop_driver)
        self.prometheus = self.stack.enter_context(PrometheusServer(self.workdir / "prometheus", [
            Target("kiln-trainer", f"127.0.0.1:{self.driver_port}"),
            # As the chart's ServiceMonitor does: keep the operator's own `namespace` label.
            Target("kiln-operator", f"127.0.0.1:{self.operator_metrics_port}", honor_labels=True),
        ]))

    def _stop_operator(self) -> None:
        self.operator_stop_seconds = self.operator.stop(grace=10)

    def _stop_driver(self) -> None:
        self.driver.stop(grace=60)
        kill_ray_processes(self.ray_temp)
        shutil.rmtree(self.ray_temp, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    # ------------------------------------------------------------------ the scenario

    def job_status(self, name: str = JOB_NAME) -> dict[str, Any]:
        job = self.api.get(TRAININGJOBS, JOB_NAMESPACE, name) or {}
        return job.get("status") or {}

    def create_job(self) -> None:
        self.kube.create(job_manifest(self.driver_port))

    def finish_second_job(self, epochs: int = 3) -> None:
        """A second TrainingJob whose head pod runs, then exits 0 with the termination message the
        real driver writes for `epochs` epochs: the operator marks it Succeeded."""
        from tests.support.driver_report import driver_report

        self.kube.create(job_manifest(free_port(), FINISHED_JOB))
        head = f"{FINISHED_JOB}-head"
        wait_for(lambda: self.api.get("v1/pods", JOB_NAMESPACE, head) is not None, 60, f"the operator to create {head}")
        self.kubelet.run_pod(JOB_NAMESPACE, head)
        wait_for(lambda: self.job_status(FINISHED_JOB).get("phase"), 60, f"a phase for {FINISHED_JOB}")
        self.kubelet.terminate_pod(JOB_NAMESPACE, head, 0, driver_report(epochs))
        wait_for(lambda: self.job_status(FINISHED_JOB).get("phase") == "Succeeded", 60, f"{FINISHED_JOB} Succeeded")

    def phases(self) -> dict[str, int]:
        """Jobs per phase, as the API holds them."""
        phases = ((job.get("status") or {}).get("phase") for job in self.api.list(TRAININGJOBS, JOB_NAMESPACE))
        return dict(Counter(phase for phase in phases if phase))

    def restart_head(self, restarts: int) -> None:
        """Delete the head pod (a lost node); the operator recreates the cluster."""
        self.kube.delete("Pod", JOB_NAMESPACE, f"{JOB_NAME}-head")
        wait_for(lambda: int(self.job_status().get("restarts") or 0) >= restarts, 60, f"restart {restarts}")

    def operator_calls(self) -> set[tuple[str, str, str]]:
        """(apiGroup, resource[/subresource], verb) the operator requested: the log minus the harness's own."""
        everything = Counter((r.method, r.path, r.group, r.resource, r.verb) for r in self.api.requests)
        ours: Counter[tuple[str, str, str, str, str]] = Counter()
        for method, path in self.kube.sent:
            parsed = parse_resource_path(path)
            assert parsed is not None, path
            resource = parsed.plural + (f"/{parsed.subresource}" if parsed.subresource else "")
            # The harness never watches, so its verb follows from the method and path alone.
            ours[(method, path, parsed.group, resource, verb_of(method, parsed, {}))] += 1
        return {(group, resource, verb) for _, _, group, resource, verb in everything - ours}

    def diagnostics(self) -> str:
        return (f"--- operator log\n{self.operator.tail()}\n--- driver log\n{self.driver.tail()}\n"
                f"--- prometheus log\n{self.prometheus.log_tail(10)}\n--- job status\n{self.job_status()}")
