"""The operator's Prometheus metrics (names fixed by docs/contracts.md §3; dashboards use them).

Each operator instance gets its own `CollectorRegistry`, so several can live in one process
(tests) without clashing in prometheus_client's global registry.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any

from kiln_api.status import Phase
from kiln_api.timefmt import parse_time
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

FINISHED = tuple(phase.value for phase in Phase if phase.is_finished)
PHASES = tuple(phase.value for phase in Phase)
# What `handlers` records for the API failures it retries (status 0: unreachable). Other
# reasons (an exception's class name) appear on first use.
KNOWN_ERROR_REASONS = tuple(f"ApiError{status}" for status in (0, 403, 404, 409, 422, 429, 500, 503))
# Training runs last minutes to days.
DURATION_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 259200, float("inf"))


class _JobsByPhase(Collector):
    """`kiln_trainingjobs{namespace,phase}`, computed at scrape time from the last phase seen per job.

    Every phase of every namespace seen so far is exported, 0 when it holds no job: a phase that
    empties reads 0 at once instead of vanishing (a dashboard would keep showing its last count)."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], str] = {}
        self._namespaces: set[str] = set()
        self._lock = threading.Lock()

    def set(self, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            self._namespaces.add(namespace)
            if phase is None:
                self._phases.pop((namespace, name), None)
            else:
                self._phases[(namespace, name)] = phase

    def count(self) -> int:
        with self._lock:
            return len(self._phases)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("kiln_trainingjobs", "TrainingJobs by namespace and phase.", labels=["namespace", "phase"])
        with self._lock:
            counts = Tally((namespace, phase) for (namespace, _), phase in self._phases.items())
            namespaces = set(self._namespaces)
        for namespace in namespaces:
            for phase in PHASES:
                counts.setdefault((namespace, phase), 0)
        for (namespace, phase), count in sorted(counts.items()):
            family.add_metric([namespace, phase], count)
        yield family


def _seconds_between(start: str | None, end: str | None) -> float | None:
    started, ended = parse_time(start), parse_time(end)
    if started is None or ended is None:
        return None
    return max((ended - started).total_seconds(), 0.0)


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = _JobsByPhase()
        self.registry.register(self.jobs)
        self.reconcile_duration = Histogram(
            "kiln_reconcile_duration_seconds", "Time one reconcile of one TrainingJob takes.", registry=self.registry
        )
        self.reconcile_errors = Counter(
            "kiln_reconcile_errors_total", "Reconciles that failed, by reason.", ["reason"], registry=self.registry
        )
        self.restarts = Counter(
            "kiln_trainingjob_restarts_total", "Ray cluster recreations after a head loss.", ["namespace"], registry=self.registry
        )
        self.job_duration = Histogram(
            "kiln_trainingjob_duration_seconds", "Start to completion of finished TrainingJobs.", ["phase"],
            buckets=DURATION_BUCKETS, registry=self.registry,
        )
        self.transitions = Counter(
            "kiln_trainingjob_phase_transitions_total", "Phase changes of TrainingJobs, by the phase entered.", ["phase"],
            registry=self.registry,
        )
        self._server: Any = None
        self._namespaces: set[str] = set()
        self._lock = threading.Lock()
        self._zero_known_series()

    def _zero_known_series(self) -> None:
        """Create the series whose labels are known up front at 0.

        A labelled series exists only once `.labels()` is called; until then Prometheus'
        `increase()` and `rate()` have no earlier sample to count the first event from.
        """
        for phase in PHASES:
            self.transitions.labels(phase=phase)
        for phase in FINISHED:
            self.job_duration.labels(phase=phase)
        for reason in KNOWN_ERROR_REASONS:
            self.reconcile_errors.labels(reason=reason)

    def _see_namespace(self, namespace: str) -> None:
        """Start the namespace's restart series at 0 the first time one of its jobs is seen."""
        with self._lock:
            if namespace in self._namespaces:
                return
            self._namespaces.add(namespace)
        self.restarts.labels(namespace=namespace)

    def record_status(self, namespace: str, name: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        """Account for one status change written by the operator."""
        old_phase, phase = old.get("phase"), new.get("phase")
        self._see_namespace(namespace)
        self.jobs.set(namespace, name, phase)
        if phase and phase != old_phase:
            self.transitions.labels(phase=phase).inc()
            if phase in FINISHED:
                seconds = _seconds_between(new.get("startTime"), new.get("completionTime"))
                if seconds is not None:
                    self.job_duration.labels(phase=phase).observe(seconds)
        added = int(new.get("restarts") or 0) - int(old.get("restarts") or 0)
        if added > 0:
            self.restarts.labels(namespace=namespace).inc(added)

    def forget(self, namespace: str, name: str) -> None:
        self.jobs.set(namespace, name, None)

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve /metrics on `port` (0 = a free one); returns the port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
