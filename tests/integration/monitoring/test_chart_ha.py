"""The chart's `replicas: 2` runs two real operators (its args and env) against the emulated API:
exactly one must reconcile, and the other must take over when it dies.

kopf pauses *every* peer that shares its priority, so `kiln operator --peering` gives each replica
a random priority: one replica works, the other stands by and takes over when it dies.

kopf's peering is not a lock: a replica that starts with the higher priority resumes as soon as
it reads the peering object, and the one working until then pauses only when it reads the new
peer's entry, a few milliseconds later. A job created in between is reconciled by both. The test
creates its job once the replicas have settled, which is what it checks; a rolling update can
see that window too (both create the same children by name; the second create of each is refused).
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
CLUSTER_PEERINGS = "kopf.dev/v1/clusterkopfpeerings"
PEER_IDS = ("kiln-0", "kiln-1")
PEERING_LOGGER = "kopf._core.engines.peering"
ROOT = Path(__file__).resolve().parents[3]


def _working(process: Process) -> bool:
    """kopf's last word on this replica's peering: resumed (working) rather than paused. A replica
    starts paused and says nothing while it stays so."""
    said = [line for line in process.log.read_text(errors="replace").splitlines() if PEERING_LOGGER in line]
    return bool(said) and "Resuming operations" in said[-1]


def _settled(api: EmulatedApiServer, peering: str, started: list[tuple[Process, int]]) -> bool:
    """Every replica is in the peering object, the one of highest priority works and the other
    does not (a lower replica never resumes, so this cannot change until one of them goes)."""
    peers = (api.get(CLUSTER_PEERINGS, None, peering) or {}).get("status") or {}
    if not set(PEER_IDS) <= set(peers):
        return False
    top = max(PEER_IDS, key=lambda peer: int(peers[peer].get("priority") or 0))
    return all(_working(process) == (peer == top) for (process, _), peer in zip(started, PEER_IDS, strict=True))


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
            "POST", f"/apis/{CLUSTER_PEERINGS}", body={**peering, "metadata": {"name": peering["metadata"]["name"]}})
        started: list[tuple[Process, int]] = []
        try:
            for index in range(2):
                metrics, health = free_port(), free_port()
                env = {**os.environ, "POD_ID": PEER_IDS[index], "KILN_DEFAULT_CHECKPOINT_STORAGE": "pvc://c/kiln",
                       "KILN_METRICS_PORT": str(metrics), "KILN_HEALTH_PORT": str(health), "KILN_TIMER_INTERVAL_SECONDS": "1"}
                argv = [KILN, "operator", *container["args"], "--kubeconfig", api.kubeconfig_path]
                started.append((Process(argv, tmp_path / f"operator-{index}.log", env), metrics))
                wait_for(lambda h=health: http_ok(f"http://127.0.0.1:{h}/healthz"), 60, f"replica {index} healthy")
            name = peering["metadata"]["name"]
            wait_for(lambda: _settled(api, name, started), 60, "the replica of highest priority alone to work",
                     on_timeout=lambda: "\n".join(process.tail(10) for process, _ in started))
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
