"""Operator metrics: series whose labels are known exist at 0 before their first event."""

from __future__ import annotations

import pytest
from kiln_operator.metrics import KNOWN_ERROR_REASONS, PHASES, OperatorMetrics


@pytest.fixture
def metrics() -> OperatorMetrics:
    return OperatorMetrics()


def test_every_phase_transition_series_starts_at_zero(metrics: OperatorMetrics) -> None:
    assert set(PHASES) == {"Pending", "Starting", "Running", "Restarting", "Succeeded", "Failed", "Suspended"}
    for phase in PHASES:
        assert metrics.registry.get_sample_value("kiln_trainingjob_phase_transitions_total", {"phase": phase}) == 0.0


def test_known_reconcile_error_reasons_and_finished_durations_start_at_zero(metrics: OperatorMetrics) -> None:
    value = metrics.registry.get_sample_value
    assert "ApiError409" in KNOWN_ERROR_REASONS and "ApiError0" in KNOWN_ERROR_REASONS
    for reason in KNOWN_ERROR_REASONS:
        assert value("kiln_reconcile_errors_total", {"reason": reason}) == 0.0
    for phase in ("Succeeded", "Failed"):
        assert value("kiln_trainingjob_duration_seconds_count", {"phase": phase}) == 0.0


def test_restarts_of_a_namespace_start_at_zero_when_its_first_job_is_seen(metrics: OperatorMetrics) -> None:
    value = metrics.registry.get_sample_value
    assert value("kiln_trainingjob_restarts_total", {"namespace": "team-a"}) is None
    metrics.record_status("team-a", "job", {}, {"phase": "Pending"})
    assert value("kiln_trainingjob_restarts_total", {"namespace": "team-a"}) == 0.0
    metrics.record_status("team-a", "job", {"phase": "Running"}, {"phase": "Restarting", "restarts": 1})
    assert value("kiln_trainingjob_restarts_total", {"namespace": "team-a"}) == 1.0
    assert value("kiln_trainingjob_phase_transitions_total", {"phase": "Restarting"}) == 1.0
    assert value("kiln_trainingjob_phase_transitions_total", {"phase": "Failed"}) == 0.0
    metrics.forget("team-a", "job")
    assert value("kiln_trainingjob_restarts_total", {"namespace": "team-a"}) == 1.0  # counters never vanish


def test_every_phase_of_a_seen_namespace_is_exported_and_reads_zero_once_emptied(metrics: OperatorMetrics) -> None:
    value = metrics.registry.get_sample_value
    assert value("kiln_trainingjobs", {"namespace": "team-a", "phase": "Running"}) is None  # namespace not seen yet
    metrics.record_status("team-a", "job", {}, {"phase": "Running"})
    assert {phase: value("kiln_trainingjobs", {"namespace": "team-a", "phase": phase}) for phase in PHASES} == {
        phase: (1.0 if phase == "Running" else 0.0) for phase in PHASES}
    metrics.record_status("team-a", "job", {"phase": "Running"}, {"phase": "Failed"})
    assert value("kiln_trainingjobs", {"namespace": "team-a", "phase": "Running"}) == 0.0
    assert value("kiln_trainingjobs", {"namespace": "team-a", "phase": "Failed"}) == 1.0
    metrics.forget("team-a", "job")
    assert value("kiln_trainingjobs", {"namespace": "team-a", "phase": "Failed"}) == 0.0
