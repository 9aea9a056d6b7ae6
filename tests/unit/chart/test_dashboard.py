"""The Grafana dashboard's structure: variables, data source, the panels the README promises."""

from __future__ import annotations

import re

import pytest

from tests.support.dashboard import load_dashboard, panels, queries, substitute

EXPECTED_PANELS = {
    "TrainingJobs by phase", "Phase transitions", "Restarts (1h)", "Train loss", "Validation loss",
    "Validation metrics", "Learning rate", "Steps per second", "Samples per second", "Epoch progress", "Epoch",
    "Best metric", "Epoch duration", "Time since progress", "Early stopping wait", "Checkpoint age",
    "Checkpoint duration", "GPU utilisation", "GPU memory", "GPU utilisation (DCGM)", "GPU framebuffer used (DCGM)",
    "Pod CPU", "Pod memory", "Reconcile latency", "Reconcile errors", "Finished job duration",
    "Search trials by state", "Search best metric", "Search: validation metrics per trial",
    "Evaluation on the test split", "Flagged slices",
}
# What a panel's series need besides Kiln's own processes, by the metric prefix that needs it.
REQUIRES = {"cuda": ("kiln_gpu_", "kiln_torch_cuda_"), "dcgm": ("DCGM_",), "cadvisor": ("container_",),
            "search": ("kiln_search_", 'trial!=""'),  # a job with spec.search
            "evaluation": ("kiln_evaluation_",)}  # a job that finished with an evaluation report
# Operator series that carry the TrainingJob's namespace as `namespace`.
OPERATOR_NAMESPACED = ("kiln_trainingjobs", "kiln_trainingjob_restarts_total")


def _variables() -> dict[str, dict]:
    return {v["name"]: v for v in load_dashboard()["templating"]["list"]}


def test_namespace_comes_from_the_operators_jobs_and_job_from_the_drivers() -> None:
    variables = _variables()
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    # Every namespace with a TrainingJob, in any phase: not only those with a driver running.
    assert variables["namespace"]["definition"] == "label_values(kiln_trainingjobs, namespace)"
    assert "job_name" in variables["job"]["definition"] and '$namespace' in variables["job"]["definition"]
    for name in ("namespace", "job"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"


def test_panels_are_the_documented_set_with_unique_ids_on_the_datasource_variable() -> None:
    dashboard = load_dashboard()
    found = panels(dashboard)
    assert {p["title"] for p in found} == EXPECTED_PANELS
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in found:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])


def test_every_query_filters_by_namespace_and_job_where_its_series_have_the_labels() -> None:
    for query in queries(load_dashboard()):
        names = set(re.findall(r"\b((?:kiln|DCGM|container)_[A-Za-z_]+)", query.expr))
        trainer = {n for n in names if n.startswith("kiln_") and not n.startswith(("kiln_trainingjob", "kiln_reconcile"))}
        if trainer:
            for name in trainer:  # every selector of a driver series, not only the first (more matchers may follow)
                selector = re.escape(name + '{job_namespace=~"$namespace", job_name=~"$job"') + "[,}]"
                assert len(re.findall(selector, query.expr)) == query.expr.count(name), query
        elif any(n.startswith(OPERATOR_NAMESPACED) for n in names):
            assert 'namespace=~"$namespace"' in query.expr, query
        elif any(n.startswith(("DCGM_", "container_")) for n in names):
            assert 'namespace=~"$namespace", pod=~"(${job})-(head|worker-[0-9]+)"' in query.expr, query


def test_panels_needing_more_than_kiln_are_marked_with_what_they_need() -> None:
    for query in queries(load_dashboard()):
        needs = {need for need, prefixes in REQUIRES.items() if any(p in query.expr for p in prefixes)}
        assert needs == ({query.requires} if query.requires else set()), query


def test_stat_and_bar_gauge_panels_are_instant_queries_and_time_series_are_ranges() -> None:
    for panel in panels(load_dashboard()):
        instant = panel["type"] in ("stat", "bargauge")
        for target in panel["targets"]:
            assert target.get("instant", False) == instant and target.get("range", False) == (not instant), panel["title"]


def test_every_panel_has_a_unit_and_every_query_a_legend_naming_what_varies() -> None:
    units = {p["title"]: p["fieldConfig"]["defaults"].get("unit") for p in panels(load_dashboard())}
    assert all(units.values()), units
    assert units["Steps per second"] == "suffix: steps/s" and units["Samples per second"] == "suffix: samples/s"
    for title in ("Epoch duration", "Checkpoint duration", "Checkpoint age", "Time since progress", "Reconcile latency"):
        assert units[title] == "s", title
    assert units["GPU memory"] == "bytes" and units["Pod memory"] == "bytes"
    labelled = {"kiln_validation_metric": "metric", "kiln_best_metric": "metric", "kiln_gpu_": "worker",
                "kiln_torch_cuda_": "worker"}
    for query in queries(load_dashboard()):
        assert query.legend, query
        varying = {label for b in re.findall(r"by \(([^)]*)\)", query.expr) for label in re.split(r",\s*", b)} - {"le"}
        varying |= {label for prefix, label in labelled.items() if prefix in query.expr and " by (" not in query.expr}
        for label in varying:
            assert f"{{{{{label}}}}}" in query.legend, query


def test_no_quantile_of_a_histogram_with_one_observation_per_epoch() -> None:
    # histogram_quantile over a short window of one observation per epoch or checkpoint is NaN mid-epoch.
    for query in queries(load_dashboard()):
        if "histogram_quantile" in query.expr:
            assert "kiln_reconcile_duration_seconds" in query.expr, query


def test_substitute_replaces_every_variable_and_refuses_unknown_ones() -> None:
    variables = {"namespace": "ml", "job": "digits", "__rate_interval": "1m"}
    for query in queries(load_dashboard()):
        assert "$" not in substitute(query.expr, variables)
    with pytest.raises(KeyError):
        substitute("up{x=~\"$nope\"}", variables)
