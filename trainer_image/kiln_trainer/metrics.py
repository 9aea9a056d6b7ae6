"""The driver's Prometheus metrics and its HTTP endpoint (/metrics, /status, /healthz).

Names and labels are a contract (docs/contracts.md): the Grafana dashboard and the alerts
are written against them. Every series carries `job_name` and `job_namespace`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .events import CheckpointSaved, EpochEnded, Finished, Started, StepProgress

log = logging.getLogger("kiln_trainer.metrics")

JOB_LABELS = ("job_name", "job_namespace")
EPOCH_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
CHECKPOINT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
# GpuSampled figure -> (series attribute); a figure missing from a reading removes its series.
GPU_FIGURES = {
    "utilization": "gpu_utilization",
    "memory_used_bytes": "gpu_memory",
    "memory_total_bytes": "gpu_memory_total",
    "torch_reserved_bytes": "torch_reserved",
    "torch_allocated_bytes": "torch_allocated",
}


class KilnMetrics:
    """One job's training metrics in their own registry (no process-wide globals).

    Progress moves within an epoch: `kiln_step_total` (a counter of the optimizer steps this
    driver saw taken) and `kiln_last_progress_timestamp_seconds` follow rank 0's step events
    (a few a second), so `rate()` and the stall alert are right mid-epoch."""

    def __init__(self, job_name: str, job_namespace: str, clock: Callable[[], float] = time.time,
                 per_trial: bool = False) -> None:
        self.registry = CollectorRegistry()
        self.labels = {"job_name": job_name, "job_namespace": job_namespace}
        self._clock = clock
        self._last_step: Optional[int] = None
        # A search's driver: every series also carries `trial`, one set per trial (see for_trial).
        labels = JOB_LABELS + (("trial",) if per_trial else ())

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, labels + extra, registry=self.registry)

        self.train_loss = gauge("kiln_train_loss", "Mean training loss of the last epoch.")
        self.validation_loss = gauge("kiln_validation_loss", "Validation loss of the last epoch (all workers).")
        self.validation_metric = gauge("kiln_validation_metric", "Validation metrics of the last epoch.", ("metric",))
        self.epoch = gauge("kiln_epoch", "Epochs completed.")
        self.total_epochs = gauge("kiln_total_epochs", "Epochs requested.")
        self.step = Counter("kiln_step", "Optimizer steps taken while this driver ran (rank 0's step events).",
                            labels, registry=self.registry)
        self.last_progress = gauge("kiln_last_progress_timestamp_seconds",
                                   "Unix time of the last training progress (a step, an epoch, or the start).")
        self.learning_rate = gauge("kiln_learning_rate", "Learning rate of the first parameter group.")
        self.samples_per_second = gauge("kiln_samples_per_second", "Training throughput of the last epoch, all workers.")
        self.epoch_duration = Histogram(
            "kiln_epoch_duration_seconds", "Wall time of each epoch.", labels, buckets=EPOCH_BUCKETS, registry=self.registry
        )
        self.last_epoch_duration = gauge("kiln_last_epoch_duration_seconds", "Wall time of the last epoch.")
        self.checkpoint_duration = Histogram(
            "kiln_checkpoint_duration_seconds",
            "Time to write each checkpoint (off the training path).",
            labels,
            buckets=CHECKPOINT_BUCKETS,
            registry=self.registry,
        )
        self.last_checkpoint_duration = gauge("kiln_last_checkpoint_duration_seconds", "Time to write the last checkpoint.")
        self.checkpoint_last = gauge("kiln_checkpoint_last_timestamp_seconds", "Unix time of the newest complete checkpoint.")
        self.checkpoint_every = gauge("kiln_checkpoint_every_epochs", "spec.checkpoint.everyEpochs: epochs between checkpoints.")
        self.training_start = gauge("kiln_training_start_timestamp_seconds", "Unix time this driver started training the job.")
        self.best_metric = gauge("kiln_best_metric", "Best value of checkpoint.metric so far.", ("metric",))
        self.early_stopping_wait = gauge("kiln_early_stopping_wait", "Epochs since the monitored metric last improved.")
        self.gpu_utilization = gauge("kiln_gpu_utilization_ratio",
                                     "Utilisation of each training worker's GPU (0..1, NVML, averaged between reports).",
                                     ("worker",))
        self.gpu_memory = gauge("kiln_gpu_memory_used_bytes", "Memory in use on each training worker's GPU (NVML).",
                                ("worker",))
        self.gpu_memory_total = gauge("kiln_gpu_memory_total_bytes", "Memory of each training worker's GPU (NVML).",
                                      ("worker",))
        self.torch_reserved = gauge("kiln_torch_cuda_memory_reserved_bytes",
                                    "GPU memory PyTorch's caching allocator holds, per training worker.", ("worker",))
        self.torch_allocated = gauge("kiln_torch_cuda_memory_allocated_bytes",
                                     "GPU memory in PyTorch tensors, per training worker.", ("worker",))
        self.evaluation_metric = gauge("kiln_evaluation_metric",
                                       "Headline metrics of the evaluation report on the test split, after training.",
                                       ("metric",))
        self.evaluation_flagged = gauge("kiln_evaluation_flagged_slices",
                                        "Slices worse than the whole test split by more than spec.evaluation.sliceTolerance.")
        self.evaluation_worst_gap = gauge("kiln_evaluation_worst_slice_gap",
                                          "How much worse the worst slice is than the whole test split (accuracy points, "
                                          "or RMSE as a fraction of the whole's).", ("column", "slice"))
        if not per_trial:
            self._zero_counters()

    def _zero_counters(self) -> None:
        # Counters and histograms exist at 0 from the start: increase() and rate() then count the first
        # step, epoch and checkpoint instead of taking their first sample as the baseline.
        for series in (self.step, self.epoch_duration, self.checkpoint_duration):
            self._l(series)

    def for_trial(self, trial: str) -> KilnMetrics:
        """The series of one trial of a search (a KilnMetrics made with per_trial=True)."""
        view = copy.copy(self)
        view.labels = {**self.labels, "trial": trial}
        view._last_step = None
        view._zero_counters()
        return view

    def _l(self, series: Any, **extra: str) -> Any:
        return series.labels(**self.labels, **extra)

    def on_start(self, total_epochs: int, epoch: int, step: int, checkpoint_every_epochs: Optional[int] = None) -> None:
        """The driver starts (before any event), or training (re)starts at `epoch`/`step`."""
        now = self._clock()
        self._l(self.total_epochs).set(total_epochs)
        self._l(self.epoch).set(epoch)
        self._l(self.training_start).set(now)
        self._l(self.last_progress).set(now)
        if checkpoint_every_epochs is not None:
            self._l(self.checkpoint_every).set(checkpoint_every_epochs)
        self._last_step = step  # a resumed run's earlier steps were taken by another driver

    def on_started(self, event: Started) -> None:
        self.on_start(event.total_epochs, event.epoch, event.step)

    def _advance(self, step: int, lr: Optional[float]) -> None:
        """Count the steps taken since the last event; a worker group restarted from a checkpoint
        goes back, and the steps it takes again are counted again (they are work done)."""
        last = self._last_step if self._last_step is not None else step
        if step > last:
            self._l(self.step).inc(step - last)
        self._last_step = step
        self._l(self.last_progress).set(self._clock())
        if lr is not None:
            self._l(self.learning_rate).set(lr)

    def on_step(self, event: StepProgress) -> None:
        self._advance(event.step, event.lr)

    def on_epoch(self, event: EpochEnded) -> None:
        self._advance(event.step, event.lr)
        self.record_epoch(event.epoch, event.metrics)
        if event.samples_per_second is not None:
            self._l(self.samples_per_second).set(event.samples_per_second)
        self._l(self.epoch_duration).observe(event.epoch_seconds)
        self._l(self.last_epoch_duration).set(event.epoch_seconds)
        if event.early_stopping:
            self._l(self.early_stopping_wait).set(event.early_stopping.get("wait", 0))

    def record_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """The epoch count and the loss and validation series of an epoch's metrics."""
        self._l(self.epoch).set(epoch)
        if "train_loss" in metrics:
            self._l(self.train_loss).set(metrics["train_loss"])
        if "val_loss" in metrics:
            self._l(self.validation_loss).set(metrics["val_loss"])
        for name, value in metrics.items():
            if name.startswith("val_") and name != "val_loss":
                self._l(self.validation_metric, metric=name[len("val_") :]).set(value)

    def on_gpu(self, gpu: dict[str, dict[str, float]]) -> None:
        """Set each worker's GPU figures; a figure its reading lacks (unreadable) is removed, so a
        dashboard shows a gap rather than a 0 that reads as an idle GPU."""
        for worker, figures in gpu.items():
            figures = dict(figures)
            if "memory_bytes" in figures:  # a worker of an earlier build: torch.cuda.memory_allocated()
                figures.setdefault("torch_allocated_bytes", figures.pop("memory_bytes"))
            for key, attribute in GPU_FIGURES.items():
                series = getattr(self, attribute)
                value = figures.get(key)
                if value is None:
                    with contextlib.suppress(KeyError):
                        series.remove(*self.labels.values(), str(worker))
                else:
                    self._l(series, worker=str(worker)).set(value)

    def on_checkpoint(self, event: CheckpointSaved) -> None:
        self._l(self.checkpoint_duration).observe(event.seconds)
        self._l(self.last_checkpoint_duration).set(event.seconds)
        self._l(self.checkpoint_last).set(event.unix_time)
        best = event.best
        if best:
            self._l(self.best_metric, metric=best["metric"]).set(best["value"])

    def on_finished(self, event: Finished) -> None:
        """The evaluation report's headline (status.evaluation), when the run made one."""
        summary = event.evaluation
        if not summary:
            return
        for name, value in (summary.get("metrics") or {}).items():
            if isinstance(value, (int, float)):
                self._l(self.evaluation_metric, metric=str(name)).set(value)
        self._l(self.evaluation_flagged).set(int(summary.get("flagged_slices") or 0))
        worst = summary.get("worst_slice")
        if isinstance(worst, dict) and isinstance(worst.get("gap"), (int, float)):
            self._l(self.evaluation_worst_gap, column=str(worst.get("column")), slice=str(worst.get("value"))).set(worst["gap"])

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


IDLE_TIMEOUT_S = 10.0  # a connection that sends no complete request within this is closed
MAX_CONNECTIONS = 32  # connections served at once (one thread each); more are closed at once


class _BoundedHTTPServer(ThreadingHTTPServer):
    """One thread per connection, at most `max_connections` of them: a connection beyond is closed
    unanswered instead of holding another thread (and its stack) for as long as its client likes."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: socketserver's 5 makes a burst of clients wait on SYN retries
    block_on_close = False  # stopping never waits on a client; handler threads end within the idle timeout

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.debug("refusing %s: %d connections are being served", client_address, MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MetricsServer:
    """A tiny threaded HTTP server: /metrics (Prometheus), /status (JSON), /healthz.

    Bounded, because anything in the pod network that may reach the port can connect: each
    connection has `idle_timeout` seconds per read, and at most `max_connections` are served at once.
    """

    def __init__(self, metrics: KilnMetrics, status: Callable[[], dict[str, Any]], port: int, host: str = "0.0.0.0",
                 *, idle_timeout: float = IDLE_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS) -> None:
        handler = _make_handler(metrics, status, idle_timeout)
        self.httpd = _BoundedHTTPServer((host, port), handler, max_connections)
        self.port = int(self.httpd.server_address[1])
        self._thread: Optional[threading.Thread] = None

    def start(self) -> MetricsServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="kiln-metrics", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _make_handler(metrics: KilnMetrics, status: Callable[[], dict[str, Any]], idle_timeout: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = idle_timeout  # socketserver sets it on the connection: a silent client is dropped

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, metrics.exposition())
            elif path == "/status":
                self._send(200, "application/json", json.dumps(status()).encode())
            elif path == "/healthz":
                self._send(200, "text/plain", b"ok\n")
            else:
                self._send(404, "text/plain", b"not found: try /metrics, /status or /healthz\n")

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature from http.server
            log.debug("%s %s", self.address_string(), format % args)

    return Handler


def start_server(
    metrics: KilnMetrics, status: Callable[[], dict[str, Any]], port: int, *, fallback: bool, host: str = "0.0.0.0"
) -> MetricsServer:
    """Serve on `port`; with `fallback` (local runs) a busy port falls back to a free one."""
    try:
        return MetricsServer(metrics, status, port, host=host).start()
    except OSError as exc:
        if not fallback:
            raise
        server = MetricsServer(metrics, status, 0, host="127.0.0.1").start()
        log.warning("port %d is busy (%s); serving /metrics and /status on port %d instead", port, exc, server.port)
        return server
