"""Every dashboard panel shows the right values from a real run, the live /metrics pass `promtool
check metrics`, and the real operator's API calls fit the chart's RBAC.

One stack for the module (tests/support/monitoring_stack.py): the emulated API, a fake
kubelet, `kiln operator`, `kiln run` of a small job and a real Prometheus scraping both. The
scenario gives every panel something to show: the job trains (epochs of thousands of steps, so
Prometheus sees it mid-epoch) and checkpoints; its head pod is deleted twice (two restarts); the
API answers 500 for a few seconds (reconcile errors); a second job finishes.
"""

from __future__ import annotations

import math
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import suppress
from itertools import pairwise
from pathlib import Path

import kiln_operator.main  # noqa: F401
import kiln_trainer.local  # noqa: F401
import pytest

from tests.support.chart import find, render_objects
from tests.support.dashboard import load_dashboard, queries, substitute
from tests.support.prometheus import PROMETHEUS, PROMTOOL, SKIP_REASON, QueryError

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(PROMETHEUS is None, reason=SKIP_REASON),
]

from tests.support.monitoring_stack import FINISHED_JOB, JOB_NAME, JOB_NAMESPACE, MonitoringStack  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402

# Grafana's $__rate_interval is at least four scrape intervals; Prometheus scrapes every second here.
VARIABLES = {"namespace": JOB_NAMESPACE, "job": JOB_NAME, "__rate_interval": "4s"}
TRAINER = f'job_namespace="{JOB_NAMESPACE}", job_name="{JOB_NAME}"'


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
    wait_for(lambda: stack.driver.alive() and stack.prometheus.query('kiln_epoch{job_name="dash"} >= 1'), 300,
             "the driver's first epoch in Prometheus")
    stack.create_job()
    stack.finish_second_job()
    # The operator reads the real driver's /status through the head pod's IP (127.0.0.1).
    wait_for(lambda: stack.job_status().get("phase") == "Running", 120, "the TrainingJob to be Running")
    for restarts in (1, 2):
        stack.restart_head(restarts)
        wait_for(lambda: stack.job_status().get("phase") == "Running", 120, "Running again after a restart")
    operator_metrics = f"http://127.0.0.1:{stack.operator_metrics_port}/metrics"
    # A running job's reconciles read nothing from the API server (the operator's caches) but
    # write the trainer's progress into status: refusing those writes makes reconcile errors.
    stack.api.inject_faults(1.0, status=500, verbs={"patch"}, resources={"trainingjobs"})
    try:
        wait_for(lambda: _metric(operator_metrics, "kiln_reconcile_errors_total") >= 3, 60, "reconcile errors")
    finally:
        stack.api.clear_faults()
    # Three epoch ends (two whole epochs between them) for a measured epoch time; a panel still
    # empty then fails the panel test below, naming it.
    wait_for(lambda: stack.prometheus.query(f'kiln_epoch{{{TRAINER}}} >= 3'), 300, "three epochs in Prometheus")
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


def _kiln_queries() -> list:
    """The queries whose series Kiln's own driver and operator export (CUDA, DCGM and cAdvisor aside)."""
    return [q for q in queries(load_dashboard()) if q.requires is None]


def _run(stack: MonitoringStack, query) -> list[dict]:
    """A panel's query as Grafana sends it: instant for stat and bar-gauge panels, else over the run."""
    expr = substitute(query.expr, VARIABLES)
    if query.instant:
        return [{"metric": r["metric"], "values": [r["value"]]} for r in stack.prometheus.query(expr)]
    return stack.prometheus.query_range(expr, stack.started, time.time(), step=1)


def _empty_panels(stack: MonitoringStack) -> list[str]:
    """Panels whose queries return no finite point (now, for instant ones; over the run so far, else)."""
    return [f"{q.panel} ({q.ref_id}): {q.expr}" for q in _kiln_queries() if _finite_points(_run(stack, q)) == 0]


def test_every_panel_shows_data_from_the_real_driver_and_operator(stack: MonitoringStack) -> None:
    assert len(_kiln_queries()) >= 20
    missing = _empty_panels(stack)
    assert not missing, "panels without data:\n" + "\n".join(missing) + "\n" + stack.diagnostics()


def test_no_panel_ever_shows_nan(stack: MonitoringStack) -> None:
    bad = [f"{q.panel} ({q.ref_id}) at {t}: {v}" for q in _kiln_queries() for series in _run(stack, q)
           for t, v in series["values"] if not math.isfinite(float(v))]
    assert not bad, "non-finite points:\n" + "\n".join(bad[:20])


def _measured_epoch_seconds(stack: MonitoringStack) -> float:
    """The median time between epoch ends, read off the raw samples of `kiln_epoch` (±1 s a scrape)."""
    window = int(time.time() - stack.started) + 5
    result = stack.prometheus.query(f"kiln_epoch{{{TRAINER}}}[{window}s]")  # a range vector: every scrape's sample
    points = [(float(t), float(v)) for t, v in result[0]["values"]]
    ends = [t for (_, before), (t, after) in pairwise(points) if after > before]
    assert len(ends) >= 3, f"fewer than three epoch ends seen: {ends} in {[(t - stack.started, v) for t, v in points]}"
    return statistics.median(b - a for a, b in pairwise(ends))


def test_steps_per_second_is_above_zero_mid_epoch(stack: MonitoringStack) -> None:
    rate = next(q for q in queries(load_dashboard()) if q.panel == "Steps per second")
    # Times at which no epoch ended within the rate's window, and the panel's value there.
    mid_epoch = f"({substitute(rate.expr, VARIABLES)}) and on () (changes(kiln_epoch{{{TRAINER}}}[4s]) == 0)"
    result = stack.prometheus.query_range(mid_epoch, stack.started, time.time(), step=1)
    values = [float(v) for series in result for _, v in series["values"]]
    assert values, "no mid-epoch point at all: epochs shorter than the rate window?"
    assert max(values) > 0 and sum(v > 0 for v in values) > len(values) / 2, values


def test_duration_panels_are_finite_and_within_twice_the_measured_epoch_time(stack: MonitoringStack) -> None:
    epoch = _measured_epoch_seconds(stack)
    assert epoch >= 2, f"epochs of {epoch} s are too short for a mid-epoch check"
    for ref, values in _panel_values_by_target(stack, "Epoch duration").items():
        assert values and all(epoch / 2 <= v <= epoch * 2 for v in values[-3:]), (ref, epoch, values[-3:])
    for ref, values in _panel_values_by_target(stack, "Checkpoint duration").items():
        assert values and all(0 < v <= epoch * 2 for v in values[-3:]), (ref, epoch, values[-3:])


def _panel_values_by_target(stack: MonitoringStack, title: str) -> dict[str, list[float]]:
    found = {}
    for query in (q for q in queries(load_dashboard()) if q.panel == title):
        found[query.ref_id] = [float(v) for series in _run(stack, query) for _, v in series["values"]]
    return found


def _phase_panel(stack: MonitoringStack) -> dict[str, float]:
    query = next(q for q in queries(load_dashboard()) if q.panel == "TrainingJobs by phase")
    return {r["metric"]["phase"]: float(r["values"][0][1]) for r in _run(stack, query)}


def test_phase_counts_equal_the_jobs_phases_after_one_job_finishes(stack: MonitoringStack) -> None:
    def agree() -> bool:
        panel, api = _phase_panel(stack), stack.phases()
        return api.get("Succeeded") == 1 and panel == {p: float(api.get(p, 0)) for p in panel} and set(api) <= set(panel)

    wait_for(agree, 60, "the phase panel to equal the jobs' phases", interval=1)
    panel = _phase_panel(stack)
    assert panel["Succeeded"] == 1 and panel["Running"] == 1 and panel["Pending"] == 0  # emptied phases read 0
    assert stack.job_status(FINISHED_JOB)["phase"] == "Succeeded"


@pytest.mark.skipif(PROMTOOL is None, reason=SKIP_REASON)
@pytest.mark.parametrize("target", ["driver", "operator"])
def test_live_metrics_pass_promtool_check_metrics(stack: MonitoringStack, target: str) -> None:
    port = stack.driver_port if target == "driver" else stack.operator_metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read()
    assert b"kiln_" in text
    result = subprocess.run([str(PROMTOOL), "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result


def _panel_values(stack: MonitoringStack, title: str, labels: dict[str, str] | None = None) -> list[float]:
    query = next(q for q in queries(load_dashboard()) if q.panel == title)
    return [float(v) for series in _run(stack, query) if (labels or {}).items() <= series["metric"].items()
            for _, v in series["values"] if math.isfinite(float(v))]


def test_panels_show_what_the_scenario_did(stack: MonitoringStack) -> None:
    # Two head pods deleted. The panel is the counter's increase over an hour, which Prometheus
    # extrapolates a little past the samples it has (and counts from the first one it scraped).
    window = int(time.time() - stack.started) + 5
    raw = [float(v) for _, v in stack.prometheus.query(
        f'kiln_trainingjob_restarts_total{{namespace="{JOB_NAMESPACE}"}}[{window}s]')[0]["values"]]
    assert raw[-1] == 2
    restarts = _panel_values(stack, "Restarts (1h)", {"namespace": JOB_NAMESPACE})
    assert raw[-1] - raw[0] <= restarts[-1] <= (raw[-1] - raw[0]) * 1.5, (raw, restarts[-3:])
    assert max(_panel_values(stack, "Reconcile errors", {"reason": "ApiError500"})) > 0  # the injected 500s
    progress = _panel_values(stack, "Epoch progress")
    assert 0 < max(progress) <= 1
    assert max(_panel_values(stack, "Epoch")) >= 2
    assert max(_panel_values(stack, "Train loss")) > 0
    assert max(_panel_values(stack, "Learning rate")) == pytest.approx(0.01)  # constant: no schedule
    assert 0 <= min(_panel_values(stack, "Checkpoint age")) < 60  # a checkpoint every epoch
    assert max(_panel_values(stack, "Validation metrics", {"metric": "accuracy"})) > 0.5
    assert _panel_values(stack, "Finished job duration", {"phase": "Succeeded"})  # the second job


@pytest.mark.parametrize("needs", ["cuda", "dcgm", "cadvisor"])
def test_panels_needing_more_than_kiln_show_data_when_it_is_there(stack: MonitoringStack, needs: str) -> None:
    marked = [q for q in queries(load_dashboard()) if q.requires == needs]
    assert marked
    prefix = {"cuda": "kiln_gpu_.*", "dcgm": "DCGM_.*", "cadvisor": "container_.*"}[needs]
    if not stack.prometheus.query(f'{{__name__=~"{prefix}"}}'):
        pytest.skip(f"{needs} panels: no {prefix} series here (a CPU job, no DCGM exporter or kubelet to scrape)")
    for query in marked:
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
