"""Fixtures of the end-to-end tier: the emulated API server and the process kubelet.

Every e2e test needs root (network and mount namespaces per pod, see
tests/e2e/kubelet/network.py); without it the tier is skipped with that reason.
On failure the tail of every pod's log is printed: it is where a failure is explained.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Jobs, OperatorProcess
from tests.e2e.kubelet import ProcessKubelet, availability_problem
from tests.support.k8s_emulator import EmulatedApiServer, k8s_api  # noqa: F401  (fixture)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture()
def kubelet(k8s_api, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ProcessKubelet]:  # noqa: F811
    problem = availability_problem()
    if problem:
        # CI runs as root on a machine that has what the kubelet needs: a skip there would hide
        # the whole tier, so it fails instead.
        if os.environ.get("CI"):
            pytest.fail(f"e2e tier cannot run in CI: {problem}")
        pytest.skip(problem)
    node = ProcessKubelet(k8s_api.url, tmp_path / "node")
    k8s_api.emulator.log_source = lambda pod: container_log(node, pod)  # `kubectl logs` reads the kubelet's
    with node:
        yield node
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            print(node.log_tails())
    assert not node.leaked, f"pod processes survived the kubelet: {node.leaked}"


def container_log(node: ProcessKubelet, pod: dict) -> str | None:
    """The log of this incarnation of the pod (matched by uid), None before its container started."""
    task = node.tasks.get(pod["metadata"]["uid"])
    if task is None or not task.log_path.exists():
        return None
    return task.log_path.read_text(errors="replace")


class Cluster:
    """The whole stack of one scenario: API server, kubelet, operator subprocess, job helpers."""

    def __init__(self, api: EmulatedApiServer, node: ProcessKubelet, operator: OperatorProcess, jobs: Jobs) -> None:
        self.api, self.kubelet, self.operator, self.jobs = api, node, operator, jobs

    def context(self) -> str:
        """Everything worth reading when a scenario fails: operator log, pod logs, job status."""
        statuses = {j["metadata"]["name"]: j.get("status") for j in self.api.list("kiln.dev/v1alpha1/trainingjobs")}
        return (f"--- operator ---\n{self.operator.log_tail()}\n{self.kubelet.log_tails()}\n"
                f"--- jobs ---\n{statuses}")


@pytest.fixture()
def cluster(k8s_api, kubelet: ProcessKubelet, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:  # noqa: F811
    jobs = Jobs(k8s_api.client())
    jobs.create_claim()
    operator = OperatorProcess(k8s_api.kubeconfig_path, tmp_path / "operator.log")
    with operator:
        world = Cluster(k8s_api, kubelet, operator, jobs)
        yield world
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            print(f"--- operator ---\n{operator.log_tail()}")
