"""A search in the head pod: `python -m kiln_trainer.driver` of a job with spec.search.

The trials run on the job's Ray cluster (search_run.py); the driver serves /status with
`search` (the operator copies it into the resource), /metrics with `kiln_search_trials{state}`,
`kiln_search_best_metric` and each trial's training series (a `trial` label), and ends with the termination message, as a plain run does. search.json,
search.png and the best trial's model.pt are written beside the checkpoints.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Optional

from kiln_api import TrainingJob
from kiln_api.search import TrialState
from kiln_api.status import Phase, ProgressStatus, TrainingJobStatus
from prometheus_client import Gauge

from .driver import EXIT_FAILED, DriverOptions, short_error
from .metrics import JOB_LABELS, KilnMetrics, start_server
from .search_report import TrialRecord, best_status, best_value, search_status
from .search_run import SearchPlace, run_search
from .search_space import total_trials
from .status_json import compact_status, driver_status_json

log = logging.getLogger("kiln_trainer.search")


class SearchGauges:
    """The search's Prometheus series, in the job's own registry."""

    def __init__(self, metrics: KilnMetrics) -> None:
        self.labels = metrics.labels
        self.trials = Gauge("kiln_search_trials", "Trials of the hyperparameter search by state.",
                            (*JOB_LABELS, "state"), registry=metrics.registry)
        self.best = Gauge("kiln_search_best_metric", "Best value of the search metric over all trials.",
                          (*JOB_LABELS, "metric"), registry=metrics.registry)
        # The limit the KilnSearchTrialsFailed alert compares kiln_search_trials{state="Failed"} with.
        self.max_failed = Gauge("kiln_search_max_failed_trials", "Failed trials the search tolerates (spec.search.maxFailedTrials).",
                                JOB_LABELS, registry=metrics.registry)

    def update(self, records: list[TrialRecord], metric: str, mode: str, max_failed: int) -> None:
        self.max_failed.labels(**self.labels).set(max_failed)
        for state in TrialState:
            self.trials.labels(**self.labels, state=state.value).set(sum(r.state == state for r in records))
        values = [v for r in records if r.state != TrialState.failed and (v := best_value(r, metric, mode)) is not None]
        if values:
            self.best.labels(**self.labels, metric=metric).set(min(values) if mode == "min" else max(values))


class SearchProgress:
    """The status the driver serves while the search runs (and the final one after)."""

    def __init__(self, job: TrainingJob, gauges: SearchGauges, metrics: Optional[KilnMetrics] = None) -> None:
        search = job.spec.search
        assert search is not None
        self.search, self.gauges, self.metrics = search, gauges, metrics
        self._trial_metrics: dict[str, KilnMetrics] = {}
        self.total = total_trials(search)
        self._lock = threading.Lock()
        self._status = TrainingJobStatus(phase=Phase.running, reason="Searching", progress=ProgressStatus.of_search(),
                                         message=f"{search.algorithm.value} search of {self.total} trials")
        self.final: Optional[TrainingJobStatus] = None

    def on_change(self, records: list[TrialRecord]) -> None:
        status = search_status(self.search, records, self.total)
        best = best_status(self.search, records)
        self.gauges.update(records, self.search.metric, self.search.effective_mode, self.search.max_failed_trials)
        if self.metrics is not None:
            for record in records:
                if record.history:
                    if record.trial not in self._trial_metrics:
                        self._trial_metrics[record.trial] = self.metrics.for_trial(record.trial)
                    self._trial_metrics[record.trial].record_epoch(record.epochs, record.history[-1])
        with self._lock:
            self._status = self._status.model_copy(update={"search": status, "best": best})

    def finish(self, status: TrainingJobStatus) -> None:
        with self._lock:
            self.final = status

    def current(self) -> TrainingJobStatus:
        with self._lock:
            return self.final or self._status

    def status_json(self) -> dict[str, Any]:
        return driver_status_json(self.current())


def run_search_in_cluster(job: TrainingJob, options: DriverOptions) -> int:
    """The driver's search: trials on `options.ray_address`, outputs under `options.checkpoint_dir`."""
    # The training series carry `trial`: one set per trial, from the metrics each trial reports to Tune.
    metrics = KilnMetrics(job.name, job.namespace, per_trial=True)
    progress = SearchProgress(job, SearchGauges(metrics), metrics)
    server = None
    code = EXIT_FAILED
    try:
        server = start_server(metrics, progress.status_json, options.port, fallback=options.port_fallback)
        place = SearchPlace(ray_address=options.ray_address, checkpoint_root=options.checkpoint_dir, pvc_root=options.pvc_root)
        outcome = run_search(job, options.checkpoint_dir, place=place, on_change=progress.on_change, stream=sys.stderr,
                             python_path=options.python_path)
        progress.finish(outcome.status)
        code = outcome.code
    except Exception as exc:  # noqa: BLE001 - whatever broke, the job must end Failed with a reason
        log.exception("search driver error")
        progress.finish(progress.current().model_copy(update={
            "phase": Phase.failed, "reason": "DriverError", "message": f"search driver error: {short_error(exc)}"}))
    finally:
        if server is not None:
            server.stop()
        _write_termination_message(options.termination_message_path, progress.current())
    return code


def _write_termination_message(path: Optional[str], status: TrainingJobStatus) -> None:
    if not path:
        return
    try:
        with open(path, "w") as handle:
            handle.write(compact_status(status))
    except OSError as exc:
        log.warning("could not write the termination message to %s: %s", path, exc)
