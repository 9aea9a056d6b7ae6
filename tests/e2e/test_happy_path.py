"""Scenario 1: `examples/digits.yaml` (2 workers) trains end to end on real Ray pods."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.e2e.harness import REPO, epoch_of, load_manifest, operator_requests
from tests.support.e2e_pods import live_pids
from tests.support.waiting import wait_for

pytestmark = pytest.mark.ray
NAME = "digits"


def ray_status(head_ip: str, token: str | None) -> subprocess.CompletedProcess[str]:
    """`ray status` against the head's GCS from outside the cluster, with or without the token.

    HOME is an empty directory so a token file of the host (~/.ray/auth_token) never stands in."""
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        env.update(HOME=home, RAY_USAGE_STATS_ENABLED="0")
        if token:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
        ray = str(Path(sys.executable).with_name("ray"))
        return subprocess.run([ray, "status", f"--address={head_ip}:6379"], env=env, capture_output=True,
                              text=True, timeout=60)


def active_nodes(report: str) -> int:
    """Nodes listed under `Active:` in `ray status` output."""
    lines = report.split("Active:", 1)[-1].split("Pending:", 1)[0].splitlines()
    return sum(1 for line in lines if "node_" in line)


def test_digits_trains_to_success_on_a_three_node_ray_cluster(cluster) -> None:
    jobs, kubelet = cluster.jobs, cluster.kubelet
    # As shipped (2 workers, 20 epochs) but with 4x the steps per epoch: the example trains in ~2 s,
    # while the operator refreshes status about once a second, so progress would be seen once or twice.
    before = len(cluster.api.requests)
    jobs.create(load_manifest(REPO / "examples/digits.yaml", **{"hyperparameters.batchSize": 16}))
    pods = wait_for(lambda: len(jobs.pods(NAME)) == 3 and jobs.pods(NAME), 60, "head and 2 worker pods",
                    on_timeout=cluster.context)
    assert sorted(p["metadata"]["name"] for p in pods) == ["digits-head", "digits-worker-0", "digits-worker-1"]

    # Ray token auth: every pod got the job's token, and the head refuses requests without it.
    envs = {p["metadata"]["name"]: wait_for(lambda p=p: kubelet.pod_env("default", p["metadata"]["name"]), 60, "pod env")
            for p in pods}
    tokens = {env.get("RAY_AUTH_TOKEN") for env in envs.values()}
    assert len(tokens) == 1 and None not in tokens and all(e["RAY_AUTH_MODE"] == "token" for e in envs.values())
    token = tokens.pop()
    head_ip = kubelet.pod_ip("default", "digits-head")

    wait_for(lambda: active_nodes(ray_status(head_ip, token).stdout) == 3, 180, "a 3-node Ray cluster", interval=2,
             on_timeout=cluster.context)
    refused = ray_status(head_ip, None)
    assert refused.returncode != 0 and "InvalidAuthToken" in refused.stdout + refused.stderr

    epochs: list[int] = []

    def finished() -> bool:
        status = jobs.status(NAME)
        epoch = epoch_of(status)
        if status.get("phase") == "Running" and epoch and epoch not in epochs:
            epochs.append(epoch)
        return status.get("phase") in ("Succeeded", "Failed")

    wait_for(finished, 400, "the job to finish", interval=0.5, on_timeout=cluster.context)
    status = jobs.status(NAME)
    assert status["phase"] == "Succeeded", cluster.context()
    assert len(epochs) >= 2 and epochs == sorted(epochs), f"progress seen while running: {epochs}"
    assert status["best"]["checkpoint"] and status["best"]["metric"] == "val_accuracy"
    assert status["metrics"]["test_accuracy"] >= 0.95, status["metrics"]
    requests = operator_requests(cluster.api, before)
    print(f"\nthe operator's API requests for the job: {sum(requests.values())} {dict(requests.most_common())}")

    # Workers are cleaned up once the job is done; deleting the job collects everything else.
    wait_for(lambda: all("worker" not in p["metadata"]["name"] for p in jobs.pods(NAME)), 60, "workers removed")
    pids = kubelet.all_pids()
    jobs.delete(NAME)
    wait_for(lambda: not jobs.pods(NAME) and jobs.get(NAME) is None, 60, "job and pods garbage-collected",
             on_timeout=cluster.context)
    for plural in ("v1/services", "v1/secrets", "networking.k8s.io/v1/networkpolicies"):
        wait_for(lambda plural=plural: not cluster.api.list(plural, "default", f"kiln.dev/job-name={NAME}"), 30,
                 f"{plural} of the job garbage-collected")
    wait_for(lambda: not live_pids(pids), 30, "pod processes gone")
