"""The chart's `replicas: 2` runs two real operators (its args and env) against the emulated API:
exactly one must reconcile, and the other must take over when it dies.

kopf pauses *every* peer that shares its priority, so `kiln operator --peering` gives each replica
a random priority: one replica works, the other stands by and takes over when it dies.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import kiln_operator.main  # noqa: F401
import pytest
import yaml

from tests.support.chart import find, render_objects
from tests.support.k8s_emulator import EmulatedApiServer  # noqa: E402
from tests.support.monitoring_stack import TRAININGJOBS, Process, http_ok  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402

KILN = str(Path(sys.executable).with_name("kiln"))
ROOT = Path(__file__).resolve().parents[3]


def _reconciles(port: int) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith("kiln_reconcile_duration_seconds_count"))


@pytest.fixture()
def replicas(tmp_path: Path) -> Iterator[tuple[EmulatedApiServer, list[tuple[Process, int]]]]:
    objects = render_objects({"replicas": 2})
    container = find(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    peering = find(objects, "ClusterKopfPeering")[0]
    with EmulatedApiServer(workdir=tmp_path) as api:
        from kiln_operator.kube import KubeClient, load_configuration

        KubeClient(load_configuration(api.kubeconfig_path)).request(
            "POST", "/apis/kopf.dev/v1/clusterkopfpeerings", body={**peering, "metadata": {"name": peering["metadata"]["name"]}})
        started: list[tuple[Process, int]] = []
        try:
            for index in range(2):
                metrics, health = free_port(), free_port()
                env = {**os.environ, "POD_ID": f"kiln-{index}", "KILN_DEFAULT_CHECKPOINT_STORAGE": "pvc://c/kiln",
                       "KILN_METRICS_PORT": str(metrics), "KILN_HEALTH_PORT": str(health), "KILN_TIMER_INTERVAL_SECONDS": "1"}
                argv = [KILN, "operator", *container["args"], "--kubeconfig", api.kubeconfig_path]
                started.append((Process(argv, tmp_path / f"operator-{index}.log", env), metrics))
                wait_for(lambda h=health: http_ok(f"http://127.0.0.1:{h}/healthz"), 60, f"replica {index} healthy")
            yield api, started
        finally:
            for process, _ in started:
                process.stop(grace=5)


def test_two_replicas_one_active_and_the_other_takes_over(replicas: tuple[EmulatedApiServer, list]) -> None:
    api, started = replicas
    job = yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())
    job["metadata"]["namespace"] = "ml"
    from kiln_operator.kube import KubeClient, load_configuration

    KubeClient(load_configuration(api.kubeconfig_path)).create(job)
    wait_for(lambda: ((api.get(TRAININGJOBS, "ml", "digits") or {}).get("status") or {}).get("phase"), 30,
             "one replica to reconcile the job")
    active = [(p, port) for p, port in started if _reconciles(port) > 0]
    assert len(active) == 1, "exactly one replica may reconcile"
    standby = next((p, port) for p, port in started if (p, port) not in active)
    # A crashed node: no goodbye in the peering object, so kopf waits out the peer's lifetime (60 s).
    os.killpg(active[0][0].popen.pid, signal.SIGKILL)
    wait_for(lambda: _reconciles(standby[1]) > 0, 150, "the standby replica to take over")
