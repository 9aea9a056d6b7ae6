"""The Grafana dashboard's structure: variables, data source, the panels the README promises."""

from __future__ import annotations

import re

import pytest

from tests.support.dashboard import load_dashboard, panels, queries, substitute

EXPECTED_PANELS = {
    "TrainingJobs by phase", "Phase transitions", "Restarts", "Train loss", "Validation loss",
    "Validation metrics", "Epoch progress", "Epoch", "Best metric", "Samples per second", "Steps per second",
    "Epoch duration (p50)", "Early stopping wait", "Checkpoint age", "Checkpoint duration", "GPU utilisation",
    "GPU memory used", "Reconcile latency", "Reconcile errors",
}


def _variables() -> dict[str, dict]:
    return {v["name"]: v for v in load_dashboard()["templating"]["list"]}


def test_template_variables_map_namespace_and_job_to_the_trainer_labels() -> None:
    variables = _variables()
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert "job_namespace" in variables["namespace"]["definition"]
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


def test_trainer_panels_filter_by_namespace_and_job_and_operator_panels_by_namespace() -> None:
    for query in queries(load_dashboard()):
        names = set(re.findall(r"\b(kiln_[a-z_]+)", query.expr))
        trainer = {n for n in names if not n.startswith(("kiln_trainingjob", "kiln_reconcile"))}
        if trainer:
            assert 'job_namespace=~"$namespace"' in query.expr and 'job_name=~"$job"' in query.expr, query
        elif any(n.startswith(("kiln_trainingjobs", "kiln_trainingjob_restarts")) for n in names):
            assert 'namespace=~"$namespace"' in query.expr, query


def test_only_gpu_panels_are_marked_cuda_only() -> None:
    marked = {q.panel for q in queries(load_dashboard()) if q.requires == "cuda"}
    assert marked == {"GPU utilisation", "GPU memory used"}
    for query in queries(load_dashboard()):
        assert ("kiln_gpu_" in query.expr) == (query.requires == "cuda")


def test_substitute_replaces_every_variable_and_refuses_unknown_ones() -> None:
    variables = {"namespace": "ml", "job": "digits", "__rate_interval": "1m"}
    for query in queries(load_dashboard()):
        assert "$" not in substitute(query.expr, variables)
    with pytest.raises(KeyError):
        substitute("up{x=~\"$nope\"}", variables)
