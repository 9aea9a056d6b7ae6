"""A hyperparameter search as a TrainingJob, end to end: the operator sizes one Ray cluster for the
concurrent trials, the head pod's driver runs them with Ray Tune, and `kubectl get tj` follows them.

Two trials of one worker at a time over a 4-point grid: two worker pods that stay up for the whole
search (no pod churn per trial), TRIALS and BEST in the table mid-search and at the end.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.e2e.harness import REPO, load_manifest, operator_requests
from tests.support.kubectl import Kubectl, require_kubectl, table_rows
from tests.support.waiting import wait_for

pytestmark = pytest.mark.ray
NAME = "search-digits"
RATES = [0.0001, 0.001, 0.01, 0.1]


@pytest.fixture()
def kubectl(k8s_api, tmp_path: Path) -> Kubectl:
    home = tmp_path / "kubectl-home"
    home.mkdir()
    return Kubectl(require_kubectl(), k8s_api.kubeconfig_path, home, [])


def search_manifest() -> dict:
    """examples/search-digits.yaml: a 4-point grid, 2 trials of 1 worker at a time; 2 epochs a trial."""
    manifest = load_manifest(REPO / "examples/search-digits.yaml", **{
        "hyperparameters.epochs": 2, "search.parameters": {"hyperparameters.learningRate": {"choice": RATES}}})
    manifest["metadata"]["name"] = NAME
    return manifest


def get_row(kubectl: Kubectl, record: bool = False) -> dict[str, str]:
    rows = table_rows(kubectl.ok("get", "tj", record=record))
    return next((row for row in rows if row["NAME"] == NAME), {})


def search_status(kubectl: Kubectl) -> dict:
    return json.loads(kubectl.ok("get", "tj", NAME, "-o", "jsonpath={.status.search}", record=False) or "{}")


def worker_pods(kubectl: Kubectl) -> dict[str, str]:
    """name -> uid of the job's worker pods."""
    pods = json.loads(kubectl.ok("get", "pods", "-l", f"kiln.dev/job-name={NAME}", "-o", "json", record=False))["items"]
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods if "-worker-" in p["metadata"]["name"]}


def test_a_search_job_runs_its_trials_on_one_cluster_and_kubectl_shows_them(cluster, kubectl: Kubectl, tmp_path: Path) -> None:
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(search_manifest()))
    before = len(cluster.api.requests)
    assert kubectl.ok("apply", "-f", str(tmp_path / "search.yaml")).strip() == f"trainingjob.kiln.dev/{NAME} created"

    mid = wait_for(lambda: search_status(kubectl).get("running") and (row := get_row(kubectl)).get("PHASE") == "Running"
                   and row.get("TRIALS") and row, 420, "the search running a trial", interval=0.5, on_timeout=cluster.context)
    kubectl.transcript.append(kubectl.last)
    assert re.fullmatch(r"[0-3]/4", mid["TRIALS"]) and mid["EPOCH"] == "", mid  # trials count their own epochs
    pods = worker_pods(kubectl)
    assert sorted(pods) == [f"{NAME}-worker-0", f"{NAME}-worker-1"]  # maxConcurrentTrials x replicas
    # Later trials run on the same pods: the cluster stays up for the whole search.
    later = wait_for(lambda: (s := search_status(kubectl)).get("succeeded", 0) >= 2 and s, 420, "two trials finished",
                     interval=0.5, on_timeout=cluster.context)
    if later.get("succeeded", 0) < 4:
        assert worker_pods(kubectl) == pods

    waited = kubectl.run("wait", "--for=condition=Succeeded", f"tj/{NAME}", "--timeout=480s", timeout=500)
    assert waited.returncode == 0, f"{waited.stderr}\n{cluster.context()}"
    done = get_row(kubectl, record=True)
    assert done["PHASE"] == "Succeeded" and done["TRIALS"] == "4/4" and done["EPOCH"] == "" and 0.5 < float(done["BEST"]) <= 1, done
    status = yaml.safe_load(kubectl.ok("get", "tj", NAME, "-o", "yaml", record=False))["status"]
    search = status["search"]
    assert (search["total"], search["succeeded"], search["failed"]) == (4, 4, 0), search
    assert json.loads(search["best"]["parameters"]["hyperparameters.learningRate"]) in RATES
    assert status["best"]["value"] == search["best"]["value"]
    requests = operator_requests(cluster.api, before)
    kubectl.transcript.append(f"# the operator's API requests for the search: {sum(requests.values())} "
                              f"{dict(requests.most_common())}")
    print("\n".join(kubectl.transcript))
