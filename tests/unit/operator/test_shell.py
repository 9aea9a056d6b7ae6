"""Pure parts of the operator's kopf shell: status diffs, Events, settings, metrics, observation helpers."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from kiln_operator.apply import event_object, merge_patch_diff
from kiln_operator.handlers import _owner_job
from kiln_operator.main import build_parser, connection_info, settings_from
from kiln_operator.metrics import OperatorMetrics
from kiln_operator.observe import head_status_url, owned_by
from kiln_operator.settings import SettingsError
from kubernetes import client as k8s_client


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        ({}, {}, None),
        ({"phase": "Running"}, {"phase": "Running"}, None),
        ({"phase": "Pending"}, {"phase": "Running"}, {"phase": "Running"}),
        ({"phase": "Running", "message": "x"}, {"phase": "Running"}, {"message": None}),
        ({"metrics": {"a": 1.0, "b": 2.0}}, {"metrics": {"a": 1.5}}, {"metrics": {"a": 1.5, "b": None}}),
        ({"conditions": [{"type": "Ready"}]}, {"conditions": []}, {"conditions": []}),
        ({}, {"best": {"metric": "val_loss"}}, {"best": {"metric": "val_loss"}}),
    ],
)
def test_merge_patch_diff_turns_old_into_new(old: dict[str, Any], new: dict[str, Any], patch: dict[str, Any] | None) -> None:
    assert merge_patch_diff(old, new) == patch


def test_event_object_points_at_the_job() -> None:
    job = {"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob",
           "metadata": {"name": "demo", "namespace": "ns", "uid": "u-1"}}
    event = event_object(job, "Warning", "HeadLost", "m" * 2000, datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    assert event["involvedObject"] == {"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "name": "demo",
                                       "namespace": "ns", "uid": "u-1"}
    assert event["metadata"] == {"generateName": "demo.", "namespace": "ns"}
    assert (event["type"], event["reason"], event["lastTimestamp"]) == ("Warning", "HeadLost", "2026-01-02T03:04:05Z")
    assert len(event["message"]) == 1024


def test_flags_override_environment_and_namespaces_repeat() -> None:
    args = build_parser().parse_args(["--namespace", "a", "--namespace", "b", "--namespace", "a", "--timer-interval", "2"])
    settings = settings_from(args, {"KILN_TIMER_INTERVAL_SECONDS": "30", "KILN_TRAINER_IMAGE": "img:1"})
    assert settings.namespaces == ("a", "b")
    assert settings.timer_interval_seconds == 2.0 and settings.trainer_image == "img:1"


def test_bad_flag_value_names_the_flag() -> None:
    args = build_parser().parse_args(["--health-port", "70000"])
    with pytest.raises(SettingsError, match="--health-port"):
        settings_from(args, {})


def test_metrics_count_transitions_restarts_and_finished_durations() -> None:
    metrics = OperatorMetrics()
    metrics.record_status("ns", "a", {}, {"phase": "Pending"})
    metrics.record_status("ns", "a", {"phase": "Pending"}, {"phase": "Running", "restarts": 0})
    metrics.record_status("ns", "a", {"phase": "Running"}, {"phase": "Running", "restarts": 2})
    metrics.record_status("ns", "a", {"phase": "Running", "restarts": 2},
                          {"phase": "Succeeded", "restarts": 2, "startTime": "2026-01-01T00:00:00Z",
                           "completionTime": "2026-01-01T00:10:00Z"})
    metrics.record_status("ns", "b", {}, {"phase": "Running"})
    value = metrics.registry.get_sample_value
    assert value("kiln_trainingjob_phase_transitions_total", {"phase": "Running"}) == 2.0
    assert value("kiln_trainingjob_restarts_total", {"namespace": "ns"}) == 2.0
    assert value("kiln_trainingjob_duration_seconds_sum", {"phase": "Succeeded"}) == 600.0
    assert value("kiln_trainingjobs", {"namespace": "ns", "phase": "Succeeded"}) == 1.0
    assert value("kiln_trainingjobs", {"namespace": "ns", "phase": "Running"}) == 1.0
    metrics.forget("ns", "b")
    assert value("kiln_trainingjobs", {"namespace": "ns", "phase": "Running"}) == 0.0  # emptied: 0, not gone


def _pod(phase: str, ip: str | None) -> dict[str, Any]:
    return {"status": {"phase": phase, **({"podIP": ip} if ip else {})}}


@pytest.mark.parametrize(
    ("pods", "url"),
    [
        ({}, None),
        ({"j-head": _pod("Pending", None)}, None),
        ({"j-head": _pod("Running", None)}, None),
        ({"j-head": _pod("Succeeded", "10.0.0.1")}, None),
        ({"j-head": _pod("Running", "10.0.0.1")}, "http://10.0.0.1:9000/status"),
        ({"j-head": _pod("Running", "fd00::1")}, "http://[fd00::1]:9000/status"),
    ],
)
def test_status_is_polled_only_from_a_running_head_with_an_ip(pods: dict[str, Any], url: str | None) -> None:
    job = {"metadata": {"name": "j"}, "spec": {"metrics": {"port": 9000}}}
    assert head_status_url(job, pods) == url


def test_only_pods_of_this_job_uid_count() -> None:
    assert owned_by({"metadata": {"ownerReferences": [{"uid": "a"}]}}, "a")
    assert not owned_by({"metadata": {"ownerReferences": [{"uid": "old"}]}}, "a")
    assert owned_by({"metadata": {}}, "a")


def test_pod_events_map_to_the_owning_job() -> None:
    pod = {"metadata": {"ownerReferences": [{"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "name": "j"}]}}
    assert _owner_job(pod) == "j"
    assert _owner_job({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "r"}]}}) is None


def test_kopf_login_uses_the_same_bearer_token() -> None:
    configuration = k8s_client.Configuration(host="https://k8s:6443", api_key={"authorization": "Bearer abc"})
    info = connection_info(configuration)
    assert (info.server, info.scheme, info.token) == ("https://k8s:6443", "Bearer", "abc")
