"""`kiln operator` as a real process against the emulated API server's kubeconfig."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kiln_operator.kube import KubeClient

from tests.support.k8s_emulator import EmulatedApiServer
from tests.support.operator_reads import job_manifest, job_status, pod_names, sample, scrape
from tests.support.ports import free_port
from tests.support.waiting import wait_for


def _kiln(*args: str) -> list[str]:
    return [sys.executable, "-m", "kiln_cli.main", "operator", *args]


@pytest.fixture()
def operator_process(k8s_api: EmulatedApiServer, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    metrics_port, health_port = free_port(), free_port()
    log = (tmp_path / "operator.log").open("wb")
    process = subprocess.Popen(
        _kiln("--kubeconfig", k8s_api.kubeconfig_path, "--metrics-port", str(metrics_port),
              "--health-port", str(health_port), "--timer-interval", "0.5",
              "--default-checkpoint-storage", "pvc://checkpoints/kiln"),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "KILN_TRAINER_IMAGE": "example.com/kiln-trainer:test"},
    )
    try:
        yield process, metrics_port, health_port
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
        log.close()


def _get(url: str) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except OSError:
        return None


def test_kiln_operator_reconciles_serves_metrics_and_health_and_stops_on_sigterm(
    kube: KubeClient, operator_process: tuple[subprocess.Popen[bytes], int, int]
) -> None:
    process, metrics_port, health_port = operator_process
    kube.create(job_manifest("demo", 8000))
    wait_for(lambda: len(pod_names(kube, "demo")) == 3, 60, "pods created by the operator process")
    head = kube.get("Pod", "default", "demo-head")
    assert head["spec"]["containers"][0]["image"] == "example.com/kiln-trainer:test"  # from KILN_TRAINER_IMAGE
    wait_for(lambda: job_status(kube, "demo").get("phase"), 60, "a status written")
    health = wait_for(lambda: _get(f"http://127.0.0.1:{health_port}/healthz"), 30, "liveness endpoint")
    assert health[0] == 200
    text = wait_for(lambda: t if sample(t := scrape(metrics_port), "kiln_trainingjobs", namespace="default",
                                        phase=job_status(kube, "demo")["phase"]) == 1.0 else None, 30, "jobs gauge")
    assert "kiln_reconcile_duration_seconds_count" in text
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--metrics-port", "http"], {}, "--metrics-port"),
        (["--default-checkpoint-storage", "/tmp/x"], {}, "--default-checkpoint-storage"),
        ([], {"KILN_TIMER_INTERVAL_SECONDS": "-1"}, "KILN_TIMER_INTERVAL_SECONDS"),
        (["--kubeconfig", "/nonexistent/kubeconfig"], {}, "credentials"),
    ],
)
def test_bad_settings_exit_2_naming_the_flag_or_variable(args: list[str], env: dict[str, str], named: str) -> None:
    result = subprocess.run(_kiln(*args), capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert result.returncode == 2
    assert named in result.stderr and "Traceback" not in result.stderr
