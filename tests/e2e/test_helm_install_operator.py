"""The Helm install as a platform team runs it, then one job trained through kubectl.

The chart is rendered with its CRD by the Helm SDK, every object goes to the emulated API server
through `kubectl apply --server-side`, and the operator runs with the rendered Deployment's own
environment and the image's entrypoint (read from the Dockerfile, not retyped). Only the two
listening ports change: on one shared host, 8080/8081 may be taken.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kiln_api.validation import default_crd

from tests.e2e.harness import CHECKPOINT_CLAIM, REPO, Jobs, OperatorProcess
from tests.e2e.scenario import small_job
from tests.support.chart import NAMESPACE, only, render_objects
from tests.support.kubectl import Kubectl, require_kubectl
from tests.support.ports import free_port

pytestmark = pytest.mark.ray
VALUES = {"crds": {"install": True}, "defaultCheckpointStorage": f"pvc://{CHECKPOINT_CLAIM}/kiln"}
POD_NAME = "kiln-5d8f7c9b6-x2x7q"  # the operator pod's name, as the downward API would give it
CRD_KEY = "apiextensions.k8s.io/v1/customresourcedefinitions"


def image_entrypoint() -> list[str]:
    """The operator image's ENTRYPOINT (exec form) from the Dockerfile the image is built from."""
    match = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert match, "the Dockerfile has no exec-form ENTRYPOINT"
    return json.loads(match.group(1))


def container_env(container: dict[str, Any], pod: dict[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet computes it (values and downward-API fieldRefs)."""
    env = {}
    for entry in container.get("env") or []:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        field = entry["valueFrom"]["fieldRef"]["fieldPath"]
        assert field in pod, f"env {entry['name']}: fieldRef {field} is not emulated here"
        env[entry["name"]] = pod[field]
    return env


class ChartOperator(OperatorProcess):
    """The operator as the rendered Deployment runs it: entrypoint, args and env from the chart."""

    def __init__(self, kubeconfig: str, log_path: Path, deployment: dict[str, Any]) -> None:
        super().__init__(kubeconfig, log_path)
        self.container = deployment["spec"]["template"]["spec"]["containers"][0]

    def start(self) -> None:
        entrypoint = self.container.get("command") or image_entrypoint()
        assert entrypoint[0] == "kiln", entrypoint  # the console script of kiln_cli.main
        argv = [sys.executable, "-m", "kiln_cli.main", *entrypoint[1:], *(self.container.get("args") or [])]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
        env.update(container_env(self.container, {"metadata.name": POD_NAME, "metadata.namespace": NAMESPACE}))
        self.metrics_port = free_port()
        env.update(KILN_METRICS_PORT=str(self.metrics_port), KILN_HEALTH_PORT=str(free_port()),
                   KILN_KUBECONFIG=self.kubeconfig)  # in a pod: the service account's in-cluster config
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
        self.starts += 1


@pytest.fixture()
def kubectl(k8s_api, tmp_path: Path) -> Kubectl:
    home = tmp_path / "kubectl-home"
    home.mkdir()
    return Kubectl(require_kubectl(), k8s_api.kubeconfig_path, home, [])


@pytest.fixture()
def installed(k8s_api, kubelet, kubectl: Kubectl, tmp_path: Path) -> Iterator[ChartOperator]:
    objects = render_objects(VALUES)
    (tmp_path / "kiln.yaml").write_text(yaml.safe_dump_all(objects))
    applied = kubectl.ok("apply", "--server-side", "-f", str(tmp_path / "kiln.yaml")).splitlines()
    assert len(applied) == len(objects) and all(line.endswith(" serverside-applied") for line in applied), applied
    Jobs(k8s_api.client()).create_claim()
    with ChartOperator(k8s_api.kubeconfig_path, tmp_path / "operator.log", only(objects, "Deployment")) as operator:
        yield operator


def test_helm_install_applies_the_chart_and_its_operator_trains_a_job(k8s_api, kubelet, kubectl: Kubectl,
                                                                      installed: ChartOperator, tmp_path: Path) -> None:
    # The CRD the chart installs is the one the emulator enforces (crds/ is generated from kiln_api).
    stored = k8s_api.get(CRD_KEY, None, "trainingjobs.kiln.dev")
    assert stored is not None and stored["spec"] == default_crd()["spec"]
    assert stored["metadata"]["managedFields"][0]["manager"] == "kubectl"
    assert kubectl.ok("get", "deploy", "-n", NAMESPACE, "-o", "name").split() == ["deployment.apps/kiln"]

    def context() -> str:
        return f"--- operator ---\n{installed.log_tail()}\n{kubelet.log_tails()}"

    job = small_job("charted", epochs=2, workers=1)
    kubectl.ok("apply", "-f", "-", stdin=yaml.safe_dump(job))
    waited = kubectl.run("wait", "--for=condition=Succeeded", "tj/charted", "--timeout=300s", timeout=320)
    assert waited.returncode == 0, f"{waited.stderr}\n{context()}"
    assert installed.alive(), context()
    status = yaml.safe_load(kubectl.ok("get", "tj", "charted", "-o", "yaml"))["status"]
    assert status["phase"] == "Succeeded" and status["progress"]["epoch"] == 2, status
