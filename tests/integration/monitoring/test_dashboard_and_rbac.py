"""Every dashboard panel shows data from a real run, and the real operator's API calls fit the chart's RBAC.

One stack for the module (tests/support/monitoring_stack.py): the emulated API, a fake
kubelet, `kiln operator`, `kiln run` of a tiny job and a real Prometheus scraping both. The
scenario gives every panel something to show: the job trains and checkpoints; its head pod is
deleted twice (two restarts); the API answers 500 for a few seconds (reconcile errors).
"""

from __future__ import annotations

import math
import time
import urllib.request
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import kiln_operator.main  # noqa: F401
import kiln_trainer.local  # noqa: F401
import pytest

from tests.support.chart import find, render_objects
from tests.support.dashboard import load_dashboard, queries, substitute
from tests.support.prometheus import PROMETHEUS, SKIP_REASON, QueryError

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(PROMETHEUS is None, reason=SKIP_REASON),
]

from tests.support.monitoring_stack import JOB_NAME, JOB_NAMESPACE, MonitoringStack  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402

# Grafana's $__rate_interval is at least four scrape intervals; Prometheus scrapes every second here.
VARIABLES = {"namespace": JOB_NAMESPACE, "job": JOB_NAME, "__rate_interval": "10s"}


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MonitoringStack]:
    workdir: Path = tmp_path_factory.mktemp("mon")
    with MonitoringStack(workdir) as running:
        try:
            _play_scenario(running)
        except BaseException as exc:
            raise AssertionError(f"{exc}\n{running.diagnostics()}") from exc
        yield running


def _play_scenario(stack: MonitoringStack) -> None:
    wait_for(lambda: stack.driver.alive() and stack.prometheus.query('kiln_epoch{job_name="dash"} >= 1'), 240,
             "the driver's first epoch in Prometheus")
    stack.create_job()
    # The operator reads the real driver's /status through the head pod's IP (127.0.0.1).
    wait_for(lambda: stack.job_status().get("phase") == "Running", 120, "the TrainingJob to be Running")
    for restarts in (1, 2):
        stack.restart_head(restarts)
        wait_for(lambda: stack.job_status().get("phase") == "Running", 120, "Running again after a restart")
    operator_metrics = f"http://127.0.0.1:{stack.operator_metrics_port}/metrics"
    stack.api.inject_faults(1.0, status=500, verbs={"get"}, resources={"services"})
    try:
        wait_for(lambda: _metric(operator_metrics, "kiln_reconcile_errors_total") >= 3, 60, "reconcile errors")
    finally:
        stack.api.clear_faults()
    # Prometheus needs a few scrapes for rates over 10 s windows; a panel still empty after a
    # minute fails the panel test below, naming it.
    with suppress(AssertionError):
        wait_for(lambda: not _empty_panels(stack), 60, "every panel to have data", interval=2)


def _finite_points(result: list[dict]) -> int:
    return sum(1 for series in result for _, value in series["values"] if math.isfinite(float(value)))


def test_every_dashboard_query_is_valid_promql(stack: MonitoringStack) -> None:
    for query in queries(load_dashboard()):
        try:
            stack.prometheus.query(substitute(query.expr, VARIABLES))
        except QueryError as exc:
            pytest.fail(f"panel {query.panel!r} {query.ref_id}: {exc}")


def test_prometheus_rejects_invalid_promql(stack: MonitoringStack) -> None:
    with pytest.raises(QueryError):
        stack.prometheus.query("sum by (le (kiln_epoch")


def _empty_panels(stack: MonitoringStack) -> list[str]:
    """Panels (CUDA-only ones aside) whose queries return no finite point over the run so far."""
    end, missing = time.time(), []
    for query in (q for q in queries(load_dashboard()) if q.requires != "cuda"):
        result = stack.prometheus.query_range(substitute(query.expr, VARIABLES), stack.started, end, step=1)
        if _finite_points(result) == 0:
            missing.append(f"{query.panel} ({query.ref_id}): {query.expr}")
    return missing


def test_every_panel_shows_data_from_the_real_driver_and_operator(stack: MonitoringStack) -> None:
    assert len([q for q in queries(load_dashboard()) if q.requires != "cuda"]) >= 15
    missing = _empty_panels(stack)
    assert not missing, "panels without data:\n" + "\n".join(missing) + "\n" + stack.diagnostics()


def _panel_values(stack: MonitoringStack, title: str, labels: dict[str, str] | None = None) -> list[float]:
    query = next(q for q in queries(load_dashboard()) if q.panel == title)
    result = stack.prometheus.query_range(substitute(query.expr, VARIABLES), stack.started, time.time(), step=1)
    return [float(v) for series in result if (labels or {}).items() <= series["metric"].items()
            for _, v in series["values"] if math.isfinite(float(v))]


def test_panels_show_what_the_scenario_did(stack: MonitoringStack) -> None:
    assert max(_panel_values(stack, "Restarts", {"namespace": JOB_NAMESPACE})) == 2  # two head pods deleted
    assert max(_panel_values(stack, "Reconcile errors", {"reason": "ApiError500"})) > 0  # the injected 500s
    assert max(_panel_values(stack, "TrainingJobs by phase", {"phase": "Running"})) == 1
    progress = _panel_values(stack, "Epoch progress")
    assert 0 < max(progress) <= 1
    assert max(_panel_values(stack, "Epoch")) >= 2
    assert max(_panel_values(stack, "Train loss")) > 0
    assert 0 <= min(_panel_values(stack, "Checkpoint age")) < 60  # a checkpoint every epoch
    assert max(_panel_values(stack, "Validation metrics", {"metric": "accuracy"})) > 0.5


def test_gpu_panels_need_a_cuda_job(stack: MonitoringStack) -> None:
    gpu = [q for q in queries(load_dashboard()) if q.requires == "cuda"]
    assert gpu
    result = stack.prometheus.query('{__name__=~"kiln_gpu_.*"}')
    if not result:
        pytest.skip("GPU panels: kiln_gpu_* series exist only when a job trains on CUDA; this job trains on CPU")
    for query in gpu:
        assert stack.prometheus.query(substitute(query.expr, VARIABLES)), query.panel


def test_operator_health_endpoint_answers_where_the_chart_probes_it(stack: MonitoringStack) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.operator_health_port}/healthz", timeout=5) as response:
        assert response.status == 200


def test_every_api_call_of_the_real_operator_is_allowed_by_the_chart(stack: MonitoringStack) -> None:
    calls = stack.operator_calls()
    assert ("kiln.dev", "trainingjobs/status", "patch") in calls and ("", "pods", "create") in calls
    cluster_role = find(render_objects({}), "ClusterRole")[0]
    allowed = {(g, r, v) for rule in cluster_role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    assert calls - allowed == set(), f"the chart's ClusterRole misses {sorted(calls - allowed)}"
