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
OTHER_JOB = 'job_name="other",job_namespace="ml",instance="10.0.0.6:8000",job="kiln-trainers"'
ALERT_JOB_LABELS = {**JOB, "severity": "warning"}
RUNBOOKS = "https://github.com/kiln-dev/kiln/blob/main/docs/runbooks.md"
# Rule files: "default" as `prometheusRule.enabled` alone renders it, "scraped" with the operator's
# ServiceMonitor on too (the only setup in which KilnOperatorDown can be right).
RULE_VALUES = {"default": {}, "scraped": {"metrics": {"serviceMonitor": {"enabled": True}}}}


def series(name: str, labels: str, values: str) -> dict[str, str]:
    return {"series": f"{name}{{{labels}}}", "values": values}


def alert(name: str, at: str, expected: list[dict[str, Any]]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name, "exp_alerts": expected}


def training(labels: str, minutes: int, epoch: str = "3", progress: str | None = None, total: str = "10") -> list[dict[str, str]]:
    """The series a driver exports while training, one sample a minute for `minutes`: `epoch` is a
    value or a whole series; `progress` defaults to a step event every minute (the sample's own time)."""
    return [
        series("kiln_epoch", labels, epoch if "x" in epoch else f"{epoch}x{minutes}"),
        series("kiln_total_epochs", labels, f"{total}x{minutes}"),
        series("kiln_last_progress_timestamp_seconds", labels, progress or f"0+60x{minutes}"),
        series("kiln_training_start_timestamp_seconds", labels, f"0x{minutes}"),
        series("kiln_checkpoint_every_epochs", labels, f"1x{minutes}"),
    ]


def fired(name: str, at: str, labels: dict[str, str], summary: str, description: str, runbook: str) -> dict[str, Any]:
    return alert(name, at, [{"exp_labels": labels, "exp_annotations": {
        "summary": summary, "description": description, "runbook_url": f"{RUNBOOKS}#{runbook}"}}])


STALLED_DESCRIPTION = ("No optimizer step or epoch was reported; check the workers: kubectl logs -n ml digits-head, "
                       "and the data source.")
CHECKPOINT_DESCRIPTION = ("A restart would lose this much work; check the checkpoint storage (kubectl describe "
                          "trainingjob -n ml digits) and spec.checkpoint.everyEpochs.")

# name -> (interval, input series, alert checks[, rule file]). Every alert has a firing and a silent check.
CASES: dict[str, tuple[Any, ...]] = {
    "failed-job-fires-while-it-exists": (
        "1m",
        [series("kiln_trainingjobs", 'namespace="ml",phase="Failed"', "0 0 1x10"),
         series("kiln_trainingjobs", 'namespace="ml",phase="Running"', "3x12")],
        [
            alert("KilnTrainingJobFailed", "2m", []),  # pending: `for` has not elapsed
            fired("KilnTrainingJobFailed", "5m", {"namespace": "ml", "severity": "warning"},
                  "1 TrainingJob(s) failed in namespace ml",
                  "Run: kubectl get trainingjobs -n ml and kubectl describe the Failed ones for the reason.",
                  "kilntrainingjobfailed"),
        ],
    ),
    "healthy-or-emptied-failed-phase-does-not-fire": (
        "1m",
        [series("kiln_trainingjobs", 'namespace="ml",phase="Failed"', "0 0 1 1 0x7"),  # deleted: reads 0 again
         series("kiln_trainingjobs", 'namespace="ml",phase="Succeeded"', "0 1 2 3x7")],
        [alert("KilnTrainingJobFailed", "10m", [])],
    ),
    "three-restarts-in-an-hour-fire": (
        "5m",
        [series("kiln_trainingjob_restarts_total", 'namespace="ml",job="kiln-metrics"', "0 0 1 2 3")],
        [fired("KilnTrainingJobRestartingRepeatedly", "20m", {"namespace": "ml", "severity": "warning"},
               "3 TrainingJob restarts in namespace ml within 1h",
               "The operator keeps recreating Ray clusters after head losses in namespace ml; check node health "
               "and the head pods' logs.", "kilntrainingjobrestartingrepeatedly")],
    ),
    "one-restart-does-not-fire": (
        "5m",
        [series("kiln_trainingjob_restarts_total", 'namespace="ml",job="kiln-metrics"', "0 0 1 1 1")],
        [alert("KilnTrainingJobRestartingRepeatedly", "20m", [])],
    ),
    "no-step-progress-for-30m-fires-mid-epoch": (
        "1m",
        # Steps until minute 5, then nothing; still in its first epoch (no epoch duration yet).
        training(JOB_SELECTOR, 50, epoch="0", progress="0+60x5 300x45"),
        [
            alert("KilnTrainingStalled", "34m", []),  # 29 min without progress
            alert("KilnTrainingStalled", "38m", []),  # 33 min: pending for 5m
            fired("KilnTrainingStalled", "45m", ALERT_JOB_LABELS, "TrainingJob ml/digits made no training progress for 40m 0s",
                  STALLED_DESCRIPTION, "kilntrainingstalled"),
        ],
    ),
    "healthy-job-with-45-minute-epochs-does-not-stall": (
        "1m",
        [
            # Built-in trainer: step events all the time, an epoch every 45 minutes.
            *training(JOB_SELECTOR, 130, epoch="0x44 1x45 2x40"),
            series("kiln_last_epoch_duration_seconds", JOB_SELECTOR, "_x44 2700x85"),
            # Custom code reporting epochs only: progress every 45 minutes, after its first epoch.
            series("kiln_epoch", OTHER_JOB, "1x45 2x45 3x40"),
            series("kiln_total_epochs", OTHER_JOB, "10x130"),
            series("kiln_last_progress_timestamp_seconds", OTHER_JOB, "0x45 2700x45 5400x40"),
            series("kiln_last_epoch_duration_seconds", OTHER_JOB, "2700x130"),
        ],
        [alert("KilnTrainingStalled", "75m", []), alert("KilnTrainingStalled", "88m", []),
         alert("KilnTrainingStalled", "129m", [])],
    ),
    "finished-job-does-not-stall": (
        "1m",
        training(JOB_SELECTOR, 60, epoch="10", progress="0x60"),
        [alert("KilnTrainingStalled", "59m", [])],
    ),
    "no-checkpoint-after-the-limit-fires": (
        "1m",
        training(JOB_SELECTOR, 75, epoch="0"),  # a first epoch longer than the limit, nothing saved
        [
            alert("KilnCheckpointTooOld", "55m", []),
            alert("KilnCheckpointTooOld", "62m", []),  # over the limit, pending
            fired("KilnCheckpointTooOld", "70m", ALERT_JOB_LABELS,
                  "TrainingJob ml/digits has no checkpoint from the last 1h 10m 0s", CHECKPOINT_DESCRIPTION,
                  "kilncheckpointtooold"),
        ],
    ),
    "old-checkpoint-fires": (
        "1m",
        [*training(JOB_SELECTOR, 125), series("kiln_checkpoint_last_timestamp_seconds", JOB_SELECTOR, "60x125"),
         series("kiln_last_epoch_duration_seconds", JOB_SELECTOR, "600x125")],
        [
            alert("KilnCheckpointTooOld", "1h", []),  # 3540 s old
            fired("KilnCheckpointTooOld", "2h", ALERT_JOB_LABELS,
                  "TrainingJob ml/digits has no checkpoint from the last 1h 59m 0s", CHECKPOINT_DESCRIPTION,
                  "kilncheckpointtooold"),
        ],
    ),
    "checkpoint-limit-scales-with-every-epochs": (
        "1m",
        [
            # everyEpochs 10 of 10-minute epochs: a checkpoint every 100 min is on schedule (limit 200 min).
            *[s for s in training(JOB_SELECTOR, 215) if "every_epochs" not in s["series"]],
            series("kiln_checkpoint_every_epochs", JOB_SELECTOR, "10x215"),
            series("kiln_checkpoint_last_timestamp_seconds", JOB_SELECTOR, "0x215"),
            series("kiln_last_epoch_duration_seconds", JOB_SELECTOR, "600x215"),
        ],
        [
            alert("KilnCheckpointTooOld", "3h", []),
            fired("KilnCheckpointTooOld", "3h30m", ALERT_JOB_LABELS,
                  "TrainingJob ml/digits has no checkpoint from the last 3h 30m 0s", CHECKPOINT_DESCRIPTION,
                  "kilncheckpointtooold"),
        ],
    ),
    "fresh-checkpoint-or-restarted-head-does-not-fire": (
        "1m",
        [
            *training(JOB_SELECTOR, 125),
            series("kiln_checkpoint_last_timestamp_seconds", JOB_SELECTOR, "0x9 600x10 1200x10 1800x10 2400x10 3000x10 "
                   "3600x10 4200x10 4800x10 5400x10 6000x10 6600x10 7200x5"),  # one every 10 min
            # A head restarted at 1h50m: no checkpoint of its own yet, its training started 10 min ago.
            series("kiln_epoch", OTHER_JOB, "3x125"), series("kiln_total_epochs", OTHER_JOB, "10x125"),
            series("kiln_training_start_timestamp_seconds", OTHER_JOB, "_x109 6600x15"),
        ],
        [alert("KilnCheckpointTooOld", "2h", [])],
    ),
    "operator-target-down-fires": (
        "1m",
        [series("up", 'job="kiln-metrics",namespace="kiln-system",instance="10.0.0.2:8080"', "1 1 0x10")],
        [
            alert("KilnOperatorDown", "5m", []),  # down for 3m: pending
            fired("KilnOperatorDown", "10m", {"severity": "critical"}, "No Kiln operator is up in namespace kiln-system",
                  "TrainingJobs are not reconciled: new jobs do not start and lost heads are not restarted. Check: "
                  "kubectl get pods -n kiln-system -l app.kubernetes.io/component=operator.", "kilnoperatordown"),
        ],
        "scraped",
    ),
    "operator-target-up-does-not-fire": (
        "1m",
        [series("up", 'job="kiln-metrics",namespace="kiln-system",instance="10.0.0.2:8080"', "1x20"),
         series("up", 'job="other",namespace="kiln-system",instance="10.0.0.3:8080"', "0x20")],
        [alert("KilnOperatorDown", "20m", [])],
        "scraped",
    ),
    "operator-not-scraped-does-not-fire-without-the-service-monitor": (
        "1m",
        [series("up", 'job="other",namespace="kiln-system",instance="10.0.0.3:8080"', "1x30")],  # no operator target
        [alert("KilnOperatorDown", "30m", [])],
    ),
    "reconcile-errors-fire": (
        "1m",
        [series("kiln_reconcile_errors_total", 'reason="ApiError",job="kiln-metrics"', "0+1x20")],
        [fired("KilnReconcileErrors", "15m", {"reason": "ApiError", "severity": "warning", "namespace": "kiln-system"},
               "10 Kiln reconcile errors (ApiError) within 10m",
               "Check the operator logs: kubectl logs -n kiln-system -l app.kubernetes.io/component=operator.",
               "kilnreconcileerrors")],
    ),
    "search-trials-failed-beyond-the-limit-fire": (
        "1m",
        [series("kiln_search_trials", JOB_SELECTOR + ',state="Failed"', "0 1 2 3 4x10"),
         series("kiln_search_trials", JOB_SELECTOR + ',state="Succeeded"', "0+1x14"),
         series("kiln_search_max_failed_trials", JOB_SELECTOR, "3x14")],
        [alert("KilnSearchTrialsFailed", "4m", []),  # 4 > 3 just now: pending
         fired("KilnSearchTrialsFailed", "10m", ALERT_JOB_LABELS,
               "4 trials of the search TrainingJob ml/digits failed, more than spec.search.maxFailedTrials",
               "Read why in search.json beside the checkpoints or in the head log: kubectl logs -n ml digits-head.",
               "kilnsearchtrialsfailed")],
    ),
    "search-trials-failed-within-the-limit-do-not-fire": (
        "1m",
        [series("kiln_search_trials", JOB_SELECTOR + ',state="Failed"', "0 1 2 3x10"),
         series("kiln_search_max_failed_trials", JOB_SELECTOR, "3x13")],
        [alert("KilnSearchTrialsFailed", "12m", [])],
    ),
    "occasional-reconcile-errors-do-not-fire": (
        "1m",
        [series("kiln_reconcile_errors_total", 'reason="ApiError",job="kiln-metrics"', "0 0 1 1 2 2 2 2 2 2 2 2 2 2 2 2")],
        [alert("KilnReconcileErrors", "15m", [])],
    ),
}
ALERTS = {"KilnTrainingJobFailed", "KilnTrainingJobRestartingRepeatedly", "KilnTrainingStalled",
          "KilnCheckpointTooOld", "KilnOperatorDown", "KilnReconcileErrors", "KilnSearchTrialsFailed"}


def _alerts(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in spec["groups"] for r in g["rules"]}


@pytest.fixture(scope="module")
def rule_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("rules")
    files = {}
    for name, values in RULE_VALUES.items():
        files[name] = directory / f"kiln-rules-{name}.yaml"
        files[name].write_text(yaml.safe_dump(prometheus_rule_spec(values), sort_keys=False))
    return files


@pytest.fixture(scope="module")
def rule_file(rule_files: dict[str, Path]) -> Path:
    return rule_files["scraped"]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


def test_promtool_check_rules_accepts_the_rendered_rules(rule_files: dict[str, Path]) -> None:
    for name, count in (("scraped", 7), ("default", 6)):
        result = _promtool("check", "rules", str(rule_files[name]))
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"SUCCESS: {count} rules found" in result.stdout, name


def test_operator_down_is_absent_without_the_service_monitor() -> None:
    assert "KilnOperatorDown" not in _alerts(prometheus_rule_spec())
    assert "KilnOperatorDown" in _alerts(prometheus_rule_spec(RULE_VALUES["scraped"]))


def test_every_alert_has_for_summary_description_and_a_runbook_section() -> None:
    runbooks = (Path(__file__).resolve().parents[3] / "docs" / "runbooks.md").read_text()
    anchors = {line[3:].strip().lower() for line in runbooks.splitlines() if line.startswith("## ")}
    rules = _alerts(prometheus_rule_spec(RULE_VALUES["scraped"]))
    assert set(rules) == ALERTS
    for name, rule in rules.items():
        assert rule.get("for"), name
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name
        assert rule["annotations"]["runbook_url"] == f"{RUNBOOKS}#{name.lower()}"
        assert name.lower() in anchors, f"docs/runbooks.md has no section '## {name}'"


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    for name in ALERTS:
        checks = [c for case in CASES.values() for c in case[2] if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in checks) and any(not c["exp_alerts"] for c in checks), name


@pytest.mark.parametrize("case", sorted(CASES))
def test_promtool_unit_test(case: str, rule_files: dict[str, Path]) -> None:
    interval, input_series, alerts, *rules = CASES[case]
    rule_file = rule_files[rules[0] if rules else "default"]
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
        "stalledSeconds": 7200, "stalledEpochFactor": 4, "checkpointMaxAgeSeconds": 900, "checkpointEpochFactor": 3,
        "restartThreshold": 5, "reconcileErrorThreshold": 1, "stalledFor": "10m", "runbookBaseUrl": "https://wiki/rb/"}}})
    rules = _alerts(spec)
    exprs = {name: rule["expr"] for name, rule in rules.items()}
    assert "kiln_last_epoch_duration_seconds * 4, 7200" in exprs["KilnTrainingStalled"]
    assert rules["KilnTrainingStalled"]["for"] == "10m"
    assert "kiln_last_epoch_duration_seconds * 3, 900" in exprs["KilnCheckpointTooOld"]
    assert exprs["KilnTrainingJobRestartingRepeatedly"].endswith("> 5")
    assert exprs["KilnReconcileErrors"].endswith("> 1")
    assert rules["KilnTrainingStalled"]["annotations"]["runbook_url"] == "https://wiki/rb#kilntrainingstalled"
