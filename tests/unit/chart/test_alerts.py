"""The chart's alerts pass `promtool check rules`, and `promtool test rules` shows each one firing
on a bad series and staying silent on a healthy one."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import helm_python  # noqa: F401
import pytest
import yaml

from tests.support.chart import prometheus_rule_spec
from tests.support.prometheus import PROMTOOL, SKIP_REASON

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason=SKIP_REASON)

JOB = {"job_name": "digits", "job_namespace": "ml", "instance": "10.0.0.5:8000", "job": "kiln-trainers"}
JOB_SELECTOR = 'job_name="digits",job_namespace="ml",instance="10.0.0.5:8000",job="kiln-trainers"'
ALERT_JOB_LABELS = {**JOB, "severity": "warning"}


def series(name: str, labels: str, values: str) -> dict[str, str]:
    return {"series": f"{name}{{{labels}}}", "values": values}


def alert(name: str, at: str, expected: list[dict[str, Any]]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name, "exp_alerts": expected}


# name -> (interval, input series, alert checks). Each case has a firing and a silent check.
CASES: dict[str, tuple[str, list[dict[str, str]], list[dict[str, Any]]]] = {
    "failed-job-fires-while-it-exists": (
        "1m",
        [series("kiln_trainingjobs", 'namespace="ml",phase="Failed"', "0 0 1x10"),
         series("kiln_trainingjobs", 'namespace="ml",phase="Running"', "3x12")],
        [
            alert("KilnTrainingJobFailed", "2m", []),  # pending: `for` has not elapsed
            alert("KilnTrainingJobFailed", "5m", [{
                "exp_labels": {"namespace": "ml", "severity": "warning"},
                "exp_annotations": {
                    "summary": "1 TrainingJob(s) failed in namespace ml",
                    "description": "Run: kubectl get trainingjobs -n ml and kubectl describe the Failed ones for the reason.",
                },
            }]),
        ],
    ),
    "healthy-jobs-do-not-fire-failed": (
        "1m",
        [series("kiln_trainingjobs", 'namespace="ml",phase="Failed"', "0x10"),
         series("kiln_trainingjobs", 'namespace="ml",phase="Succeeded"', "0 1 2 3x7")],
        [alert("KilnTrainingJobFailed", "10m", [])],
    ),
    "three-restarts-in-an-hour-fire": (
        "5m",
        [series("kiln_trainingjob_restarts_total", 'namespace="ml",job="kiln-metrics"', "0 0 1 2 3")],
        [alert("KilnTrainingJobRestartingRepeatedly", "20m", [{
            "exp_labels": {"namespace": "ml", "severity": "warning"},
            "exp_annotations": {
                "summary": "3 TrainingJob restarts in namespace ml within 1h",
                "description": "The operator keeps recreating Ray clusters after head losses; check node health and the head pods' logs.",
            },
        }])],
    ),
    "one-restart-does-not-fire": (
        "5m",
        [series("kiln_trainingjob_restarts_total", 'namespace="ml",job="kiln-metrics"', "0 0 1 1 1")],
        [alert("KilnTrainingJobRestartingRepeatedly", "20m", [])],
    ),
    "epoch-stuck-for-30m-fires": (
        "1m",
        [series("kiln_epoch", JOB_SELECTOR, "1 2 3 4 5x40"), series("kiln_total_epochs", JOB_SELECTOR, "10x44")],
        [
            alert("KilnTrainingStalled", "30m", []),  # progress at 4m is still inside the window
            alert("KilnTrainingStalled", "40m", [{
                "exp_labels": ALERT_JOB_LABELS,
                "exp_annotations": {
                    "summary": "TrainingJob ml/digits made no epoch progress for 30m",
                    "description": "Stuck at epoch 5; check the workers (kubectl logs) and the data source.",
                },
            }]),
        ],
    ),
    "progressing-finished-or-new-jobs-do-not-stall": (
        "1m",
        [
            series("kiln_epoch", JOB_SELECTOR, "0+1x9 10x50"),  # finished: epoch == total
            series("kiln_total_epochs", JOB_SELECTOR, "10x60"),
            series("kiln_epoch", 'job_name="slow",job_namespace="ml"', "0+0.05x60"),  # one epoch per 20m
            series("kiln_total_epochs", 'job_name="slow",job_namespace="ml"', "10x60"),
        ],
        [alert("KilnTrainingStalled", "59m", [])],
    ),
    "just-started-job-does-not-stall": (
        "1m",
        [series("kiln_epoch", JOB_SELECTOR, "0x20"), series("kiln_total_epochs", JOB_SELECTOR, "10x20")],
        [alert("KilnTrainingStalled", "20m", [])],  # no sample from 30m ago yet
    ),
    "old-checkpoint-fires": (
        "10m",
        [
            series("kiln_checkpoint_last_timestamp_seconds", JOB_SELECTOR, "60x12"),
            series("kiln_epoch", JOB_SELECTOR, "3x12"),
            series("kiln_total_epochs", JOB_SELECTOR, "10x12"),
        ],
        [
            alert("KilnCheckpointTooOld", "1h", []),  # 3540 s old
            alert("KilnCheckpointTooOld", "2h", [{
                "exp_labels": ALERT_JOB_LABELS,
                "exp_annotations": {
                    "summary": "TrainingJob ml/digits has not checkpointed for 1h 59m 0s",
                    "description": "A restart would lose this much work; check the checkpoint storage and spec.checkpoint.everyEpochs.",
                },
            }]),
        ],
    ),
    "fresh-or-absent-checkpoint-does-not-fire": (
        "10m",
        [
            series("kiln_checkpoint_last_timestamp_seconds", JOB_SELECTOR, "0+600x12"),  # one per 10 min
            series("kiln_epoch", JOB_SELECTOR, "3x12"),
            series("kiln_total_epochs", JOB_SELECTOR, "10x12"),
            series("kiln_checkpoint_last_timestamp_seconds", 'job_name="new",job_namespace="ml"', "0x12"),  # none yet
            series("kiln_epoch", 'job_name="new",job_namespace="ml"', "0x12"),
            series("kiln_total_epochs", 'job_name="new",job_namespace="ml"', "10x12"),
        ],
        [alert("KilnCheckpointTooOld", "2h", [])],
    ),
    "operator-target-down-fires": (
        "1m",
        [series("up", 'job="kiln-metrics",namespace="kiln-system",instance="10.0.0.2:8080"', "1 1 0x10")],
        [
            alert("KilnOperatorDown", "5m", []),  # down for 3m: pending
            alert("KilnOperatorDown", "10m", [{
                "exp_labels": {"severity": "critical"},
                "exp_annotations": {
                    "summary": "No Kiln operator is up in namespace kiln-system",
                    "description": "TrainingJobs are not reconciled: new jobs do not start and lost heads are not restarted.",
                },
            }]),
        ],
    ),
    "operator-target-up-does-not-fire": (
        "1m",
        [series("up", 'job="kiln-metrics",namespace="kiln-system",instance="10.0.0.2:8080"', "1x20"),
         series("up", 'job="other",namespace="kiln-system",instance="10.0.0.3:8080"', "0x20")],
        [alert("KilnOperatorDown", "20m", [])],
    ),
    "reconcile-errors-fire": (
        "1m",
        [series("kiln_reconcile_errors_total", 'reason="ApiError",job="kiln-metrics"', "0+1x20")],
        [alert("KilnReconcileErrors", "15m", [{
            "exp_labels": {"reason": "ApiError", "severity": "warning"},
            "exp_annotations": {
                "summary": "10 Kiln reconcile errors (ApiError) within 10m",
                "description": "Check the operator logs: kubectl logs -l app.kubernetes.io/component=operator.",
            },
        }])],
    ),
    "occasional-reconcile-errors-do-not-fire": (
        "1m",
        [series("kiln_reconcile_errors_total", 'reason="ApiError",job="kiln-metrics"', "0 0 1 1 2 2 2 2 2 2 2 2 2 2 2 2")],
        [alert("KilnReconcileErrors", "15m", [])],
    ),
}


@pytest.fixture(scope="module")
def rule_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "kiln-rules.yaml"
    path.write_text(yaml.safe_dump(prometheus_rule_spec(), sort_keys=False))
    return path


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


def test_promtool_check_rules_accepts_the_rendered_rules(rule_file: Path) -> None:
    result = _promtool("check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    alerts = {r["alert"] for g in prometheus_rule_spec()["groups"] for r in g["rules"]}
    assert alerts == {
        "KilnTrainingJobFailed", "KilnTrainingJobRestartingRepeatedly", "KilnTrainingStalled",
        "KilnCheckpointTooOld", "KilnOperatorDown", "KilnReconcileErrors",
    }
    for name in alerts:
        checks = [c for _, _, cs in CASES.values() for c in cs if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in checks) and any(not c["exp_alerts"] for c in checks), name


@pytest.mark.parametrize("case", sorted(CASES))
def test_promtool_unit_test(case: str, rule_file: Path) -> None:
    interval, input_series, alerts = CASES[case]
    test_file = rule_file.with_name(f"test-{case}.yaml")
    test_file.write_text(yaml.safe_dump({
        "rule_files": [rule_file.name],
        "evaluation_interval": "1m",
        "tests": [{"name": case, "interval": interval, "input_series": input_series, "alert_rule_test": alerts}],
    }, sort_keys=False))
    result = _promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_test_fails_on_a_wrong_expectation(rule_file: Path) -> None:
    # The harness can fail: expecting silence where the alert fires is reported by promtool.
    interval, input_series, _ = CASES["reconcile-errors-fire"]
    test_file = rule_file.with_name("test-wrong.yaml")
    test_file.write_text(yaml.safe_dump({
        "rule_files": [rule_file.name],
        "tests": [{"interval": interval, "input_series": input_series,
                   "alert_rule_test": [alert("KilnReconcileErrors", "15m", [])]}],
    }))
    assert _promtool("test", "rules", str(test_file)).returncode != 0


def test_thresholds_come_from_values() -> None:
    spec = prometheus_rule_spec({"metrics": {"prometheusRule": {
        "stalledFor": "2h", "checkpointMaxAgeSeconds": 900, "restartThreshold": 5, "reconcileErrorThreshold": 1}}})
    exprs = {r["alert"]: r["expr"] for g in spec["groups"] for r in g["rules"]}
    assert "changes(kiln_epoch[2h]) == 0" in exprs["KilnTrainingStalled"]
    assert "> 900" in exprs["KilnCheckpointTooOld"]
    assert exprs["KilnTrainingJobRestartingRepeatedly"].endswith("> 5")
    assert exprs["KilnReconcileErrors"].endswith("> 1")
