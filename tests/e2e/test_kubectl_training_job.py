"""A TrainingJob's life as users drive it, through the real kubectl against the emulated API server.

One training run (one worker, real Ray pods on the process kubelet) serves every command:
explain, refused applies, apply, patch to suspend and resume, get mid-training, wait, logs,
get at the end and as YAML, delete with the children collected. The transcript is printed,
so the README's kubectl examples can be pasted from a run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from kiln_api.validation import default_crd

from tests.e2e.harness import REPO
from tests.e2e.scenario import small_job
from tests.support.kubectl import Kubectl, require_kubectl, table_rows
from tests.support.waiting import wait_for

pytestmark = pytest.mark.ray
NAME = "digits"
EPOCHS = 20
COLUMNS = ["NAME", "PHASE", "EPOCH", "METRIC", "BEST", "WORKERS", "RESTARTS", "TRIALS", "AGE"]


@pytest.fixture()
def kubectl(k8s_api, tmp_path: Path) -> Kubectl:
    home = tmp_path / "kubectl-home"
    home.mkdir()
    return Kubectl(require_kubectl(), k8s_api.kubeconfig_path, home, [])


def get_row(kubectl: Kubectl, record: bool = False) -> dict[str, str]:
    rows = table_rows(kubectl.ok("get", "tj", record=record))
    return next((row for row in rows if row["NAME"] == NAME), {})


def job_pods(kubectl: Kubectl) -> list[str]:
    return kubectl.ok("get", "pods", "-l", f"kiln.dev/job-name={NAME}", "-o", "name", record=False).split()


def readme_columns() -> list[str]:
    """The header of the README's `kubectl get tj` example."""
    text = (REPO / "README.md").read_text()
    block = text.split("$ kubectl get tj\n", 1)[1]
    return block.splitlines()[0].split()


def explain_and_refuse(kubectl: Kubectl, tmp_path: Path) -> None:
    hyper = default_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["hyperparameters"]
    explained = kubectl.ok("explain", "trainingjob.spec.hyperparameters")
    assert hyper["description"] in explained
    assert "epochs\t<integer>" in explained and hyper["properties"]["epochs"]["description"] in explained

    bad = small_job("bad", **{"workers.replicas": 0})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    refused = kubectl.run("apply", "-f", str(tmp_path / "bad.yaml"))
    assert refused.returncode != 0
    assert 'The TrainingJob "bad" is invalid: spec.workers.replicas: Invalid value: 0' in refused.stderr, refused.stderr
    unknown = small_job("bad", **{"workers.bogusField": 1})
    refused = kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump(unknown))
    assert refused.returncode != 0 and 'unknown field "spec.workers.bogusField"' in refused.stderr, refused.stderr
    assert kubectl.run("get", "tj", "bad").returncode != 0


def suspend_and_resume(kubectl: Kubectl, context: object) -> None:
    assert kubectl.ok("patch", "tj", NAME, "--type=merge", "-p", '{"spec":{"suspend":true}}').strip() == \
        f"trainingjob.kiln.dev/{NAME} patched"
    wait_for(lambda: not job_pods(kubectl) and get_row(kubectl).get("PHASE") == "Suspended", 120,
             "suspended with no pods", interval=0.5, on_timeout=context)
    kubectl.transcript.append(kubectl.last)
    kubectl.ok("patch", "tj", NAME, "--type=merge", "-p", '{"spec":{"suspend":false}}')


def test_kubectl_drives_a_training_job_from_apply_to_delete(cluster, kubectl: Kubectl, tmp_path: Path) -> None:
    explain_and_refuse(kubectl, tmp_path)

    # batchSize 16: enough steps per epoch that `get tj` sees the job between epochs.
    manifest = small_job(NAME, epochs=EPOCHS, workers=1, batch_size=16)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(manifest))
    assert kubectl.ok("apply", "-f", str(tmp_path / "job.yaml")).strip() == f"trainingjob.kiln.dev/{NAME} created"
    # Suspended before it trains (so it cannot finish first), then resumed.
    suspend_and_resume(kubectl, cluster.context)

    running = wait_for(lambda: (row := get_row(kubectl)).get("PHASE") == "Running" and "/" in row["EPOCH"] and row,
                       300, "kubectl get tj showing an epoch while running", interval=0.5, on_timeout=cluster.context)
    kubectl.transcript.append(kubectl.last)  # the poll that saw it
    assert re.fullmatch(rf"\d+/{EPOCHS}", running["EPOCH"]) and re.fullmatch(r"\d/1", running["WORKERS"]), running
    assert list(running) == COLUMNS == readme_columns()

    waited = kubectl.run("wait", "--for=condition=Succeeded", f"tj/{NAME}", "--timeout=400s", timeout=420)
    assert waited.returncode == 0 and waited.stdout.strip() == f"trainingjob.kiln.dev/{NAME} condition met", \
        f"{waited.stderr}\n{cluster.context()}"

    done = get_row(kubectl, record=True)
    assert done["PHASE"] == "Succeeded" and done["EPOCH"] == f"{EPOCHS}/{EPOCHS}" and float(done["BEST"]) > 0.5, done
    as_yaml = yaml.safe_load(kubectl.ok("get", "tj", NAME, "-o", "yaml"))
    assert as_yaml["spec"]["hyperparameters"]["epochs"] == EPOCHS and as_yaml["status"]["phase"] == "Succeeded"
    applied = json.loads(as_yaml["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"])
    assert applied["spec"] == manifest["spec"]

    head_log = kubectl.ok("logs", f"{NAME}-head")
    epochs = re.findall(rf"kiln_trainer\.driver epoch (\d+)/{EPOCHS} ", head_log)
    assert epochs and epochs[-1] == str(EPOCHS), head_log[-3000:]

    assert kubectl.ok("delete", "tj", NAME).strip() == f'trainingjob.kiln.dev "{NAME}" deleted'
    wait_for(lambda: not job_pods(kubectl) and not kubectl.ok("get", "svc,secret,netpol", "-l", f"kiln.dev/job-name={NAME}",
                                                               "-o", "name", record=False).strip(),
             60, "the job's children garbage-collected", interval=1, on_timeout=cluster.context)
    print("\n".join(kubectl.transcript))
