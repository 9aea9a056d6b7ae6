"""Pure parts of the driver: the status reducer, capacity check, metrics exposition, HTTP server, curves."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from kiln_api.status import Phase
from kiln_trainer.console import progress_line
from kiln_trainer.curves import plot_curves
from kiln_trainer.driver import (
    DriverOptions,
    JobRunner,
    capacity_message,
    log_epochs,
    main,
)
from kiln_trainer.events import CheckpointSaved, EpochEnded, Finished, Started, StepProgress
from kiln_trainer.job_file import MAX_JOB_FILE_BYTES, load_job_from_env
from kiln_trainer.local import LocalOutputs, load_manifest
from kiln_trainer.metrics import IDLE_TIMEOUT_S, MAX_CONNECTIONS, KilnMetrics, MetricsServer, start_server
from kiln_trainer.status_json import compact_status, driver_status_json
from kiln_trainer.status_reducer import apply_event, initial_status

from tests.support.ports import free_port
from tests.support.trainer_helpers import http_get, job, manifest
from tests.support.waiting import wait_for

EPOCH = EpochEnded(epoch=2, step=40, metrics={"train_loss": 0.5, "val_loss": 0.4, "val_accuracy": 0.9},
                   samples_per_second=1000.0, epoch_seconds=2.0, checkpoint_stall_seconds=0.01,
                   early_stopping={"metric": "val_loss", "current": 0.4, "best": 0.4, "wait": 0, "patience": 3})


def test_capacity_message_names_the_field_and_the_numbers():
    message = capacity_message(job("big", {"workers": {"replicas": 8, "gpusPerWorker": 1}}), 1, [{"CPU": 4.0, "GPU": 1.0}])
    assert message.startswith("spec.workers.replicas: 8 workers of 1 CPU + 1 GPU each")
    assert "can hold 1" in message and "4 CPU/1 GPU" in message


def test_capacity_message_gives_a_cpu_quantity_in_cores():
    message = capacity_message(job("big", {"workers": {"replicas": 4, "cpusPerWorker": "1500m"}}), 2, [{"CPU": 4.0}])
    assert message.startswith("spec.workers.replicas: 4 workers of 1.5 CPU each do not fit")


def test_capacity_message_counts_training_workers_when_a_pod_runs_one_per_gpu():
    message = capacity_message(job("big", {"workers": {"replicas": 2, "cpusPerWorker": 8, "gpusPerWorker": 4}}), 3,
                               [{"CPU": 16.0, "GPU": 3.0}])
    assert message.startswith("spec.workers.replicas: 2 workers of 8 CPU + 4 GPU each "
                              "(8 training workers of 2 CPU + 1 GPU, one per GPU) do not fit")
    assert "can hold 3 training workers (nodes: 16 CPU/3 GPU)" in message


def test_head_pod_logs_one_progress_line_per_epoch_and_nothing_else(caplog):
    status = apply_event(initial_status(10), EPOCH, [])
    with caplog.at_level(logging.INFO, logger="kiln_trainer.driver"):
        log_epochs(StepProgress(epoch=2, step=40, batch=1, batches=2, loss=0.5), status)
        log_epochs(EPOCH, status)
    assert [r.getMessage() for r in caplog.records] == [
        "epoch 2/10 [####################] step 40 loss 0.5000 val_loss 0.4000 val_accuracy 0.9000 ETA 16s"]


def fold(events):
    status, durations = initial_status(10), []
    for event in events:
        status = apply_event(status, event, durations)
    return status


def test_status_follows_events_from_start_to_success():
    started = Started(epoch=1, step=20, total_epochs=10, message="resuming")
    checkpoint = CheckpointSaved(epoch=2, location="/c/epoch-000002", seconds=0.1, unix_time=0,
                                 best={"metric": "val_loss", "value": 0.4, "epoch": 2, "checkpoint": "/c/epoch-000002"})
    status = fold([started, EPOCH, checkpoint])
    assert status.phase == Phase.running and status.progress.summary == "2/10"
    assert status.progress.eta_seconds == pytest.approx(16.0)
    assert status.checkpoint.latest == "/c/epoch-000002" and status.best.value == 0.4
    finished = Finished(outcome="early_stopped", epoch=2, metrics={"test_accuracy": 0.95}, message="patience",
                        early_stopping={**EPOCH.early_stopping, "stopped": True, "stopped_epoch": 2, "reason": "patience"})
    status = fold([started, EPOCH, checkpoint, finished])
    assert (status.phase, status.reason) == (Phase.succeeded, "EarlyStopped")
    assert status.metrics["test_accuracy"] == 0.95 and status.early_stopping.stopped_epoch == 2
    assert status.completion_time is not None


@pytest.mark.parametrize(
    ("outcome", "phase", "reason"),
    [("completed", Phase.succeeded, "Completed"), ("diverged", Phase.failed, "Diverged"),
     ("non_finite", Phase.failed, "NonFiniteMetric"), ("interrupted", Phase.suspended, "Interrupted")],
)
def test_outcomes_map_to_phases(outcome, phase, reason):
    status = fold([EPOCH, Finished(outcome=outcome, epoch=2)])
    assert (status.phase, status.reason) == (phase, reason)


def test_driver_status_is_the_camelcase_subset_and_compact_fits_4096_bytes():
    status = fold([EPOCH])
    data = driver_status_json(status)
    assert set(data) <= {"phase", "reason", "message", "progress", "metrics", "best", "checkpoint", "earlyStopping",
                         "startTime", "completionTime"}
    assert data["progress"]["samplesPerSecond"] == 1000.0 and data["earlyStopping"]["metric"] == "val_loss"
    status.metrics = {f"metric_{i}": float(i) for i in range(400)}
    text = compact_status(status)
    assert len(text.encode()) <= 4096 and json.loads(text)["phase"] == "Running"


def test_metrics_exposition_uses_the_contract_names_and_labels():
    metrics = KilnMetrics("j", "ns")
    metrics.on_start(10, 0, 0)
    metrics.on_epoch(EPOCH)
    metrics.on_gpu({"0": {"utilization": 0.5, "memory_used_bytes": 1024}})
    metrics.on_checkpoint(CheckpointSaved(epoch=2, location="/c", seconds=0.2, unix_time=1234.0,
                                          best={"metric": "val_loss", "value": 0.4}))
    text = metrics.exposition().decode()
    labels = 'job_name="j",job_namespace="ns"'
    for line in (f"kiln_train_loss{{{labels}}} 0.5", f"kiln_validation_loss{{{labels}}} 0.4",
                 f'kiln_validation_metric{{{labels},metric="accuracy"}} 0.9', f"kiln_epoch{{{labels}}} 2.0",
                 f"kiln_total_epochs{{{labels}}} 10.0", f"kiln_step_total{{{labels}}} 40.0",
                 f"kiln_samples_per_second{{{labels}}} 1000.0", f"kiln_epoch_duration_seconds_count{{{labels}}} 1.0",
                 f"kiln_checkpoint_duration_seconds_count{{{labels}}} 1.0",
                 f"kiln_checkpoint_last_timestamp_seconds{{{labels}}} 1234.0",
                 f'kiln_best_metric{{{labels},metric="val_loss"}} 0.4', f"kiln_early_stopping_wait{{{labels}}} 0.0",
                 f'kiln_gpu_utilization_ratio{{{labels},worker="0"}} 0.5',
                 f'kiln_gpu_memory_used_bytes{{{labels},worker="0"}} 1024.0'):
        assert line in text, line


def test_http_server_serves_metrics_status_healthz_and_404():
    metrics = KilnMetrics("j", "ns")
    server = MetricsServer(metrics, lambda: {"phase": "Running"}, free_port(), host="127.0.0.1").start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert http_get(base + "/healthz") == (200, "ok\n")
        assert json.loads(http_get(base + "/status")[1]) == {"phase": "Running"}
        assert "kiln_epoch" in http_get(base + "/metrics")[1]
        with pytest.raises(OSError, match="404"):
            http_get(base + "/nope")
    finally:
        server.stop()


@contextmanager
def idle_clients(port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections that never send a byte; closed on exit."""
    clients: list[socket.socket] = []
    try:
        for _ in range(count):
            client = socket.create_connection(("127.0.0.1", port), timeout=5)
            client.setblocking(True)  # MSG_DONTWAIT then tells "open, nothing to read" from "closed"
            clients.append(client)
        yield clients
    finally:
        for client in clients:
            client.close()


def closed_by_server(client: socket.socket) -> bool:
    try:
        return client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False  # open, nothing to read
    except OSError:
        return True  # reset


def handler_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name.startswith("Thread-") and "process_request" in thread.name)


def test_the_server_bounds_connections_by_default():
    assert (IDLE_TIMEOUT_S, MAX_CONNECTIONS) == (10.0, 32)
    server = start_server(KilnMetrics("j", "ns"), dict, 0, fallback=False, host="127.0.0.1")
    try:
        assert server.httpd.RequestHandlerClass.timeout == IDLE_TIMEOUT_S
    finally:
        server.stop()


def test_idle_connections_are_closed_within_the_timeout_and_their_threads_end():
    # 300 clients that connect and say nothing held 300 threads for as long as they liked.
    before = handler_threads()
    server = MetricsServer(KilnMetrics("j", "ns"), dict, 0, host="127.0.0.1", idle_timeout=1.0).start()
    try:
        with idle_clients(server.port, 300) as clients:
            assert handler_threads() - before <= MAX_CONNECTIONS
            wait_for(lambda: all(closed_by_server(c) for c in clients), 1.0 + 4.0, "every idle connection to be closed",
                     on_timeout=lambda: f"{sum(not closed_by_server(c) for c in clients)} still open")
            wait_for(lambda: handler_threads() <= before, 5.0, "the handler threads to end",
                     on_timeout=lambda: f"{handler_threads() - before} handler threads left")
        # Still serving once the idle clients are gone.
        assert http_get(f"http://127.0.0.1:{server.port}/healthz") == (200, "ok\n")
    finally:
        server.stop()


def test_connections_beyond_the_cap_are_closed_at_once():
    before = handler_threads()
    server = MetricsServer(KilnMetrics("j", "ns"), dict, 0, host="127.0.0.1", idle_timeout=60.0, max_connections=4).start()
    try:
        with idle_clients(server.port, 10) as clients:
            wait_for(lambda: sum(closed_by_server(c) for c in clients) == 6, 5.0, "the 6 connections over the cap to be closed")
            assert handler_threads() - before == 4
            assert not any(closed_by_server(c) for c in clients[:4])  # the first 4 are being served
        wait_for(lambda: handler_threads() <= before, 5.0, "the handler threads to end once their clients left")
        assert http_get(f"http://127.0.0.1:{server.port}/healthz") == (200, "ok\n")
    finally:
        server.stop()


def test_a_busy_port_in_the_pod_still_ends_with_a_failed_termination_message(tmp_path):
    # In the pod there is no fallback port: the driver must still say why it ends, for the operator.
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        message = tmp_path / "termination-log"
        options = DriverOptions(checkpoint_dir=str(tmp_path / "ckpt"), ray_address="auto", port=port,
                                port_fallback=False, termination_message_path=str(message))
        assert JobRunner(job("busy"), options).run() == 1
    report = json.loads(message.read_text())
    assert report["phase"] == "Failed" and report["reason"] == "MetricsPortUnavailable"
    assert f"port {port}" in report["message"] and report["message"].startswith("spec.metrics.port")


def _job_document(name: str = "filed") -> dict:
    return {**manifest(name), "metadata": {"name": name, "namespace": "team-a", "uid": "u-1"}}


def test_the_job_is_read_from_the_file_kiln_job_file_names(tmp_path):
    path = tmp_path / "job.json"
    path.write_text(json.dumps(_job_document()))
    assert load_job_from_env({"KILN_JOB_FILE": str(path)}).name == "filed"
    # The file wins over the variable; the variable alone still works (older operators).
    assert load_job_from_env({"KILN_JOB_FILE": str(path), "KILN_JOB": json.dumps(_job_document("env"))}).name == "filed"
    assert load_job_from_env({"KILN_JOB": json.dumps(_job_document("env"))}).name == "env"


def test_a_job_file_larger_than_exec_allows_for_one_variable_is_read(tmp_path):
    # Linux refuses an environment string over 128 KiB; a file has no such limit (a ConfigMap: 1 MiB).
    document = _job_document()
    document["metadata"]["annotations"] = {"example.com/notes": "x" * 140_000}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(document))
    assert path.stat().st_size > 128 * 1024
    assert load_job_from_env({"KILN_JOB_FILE": str(path)}).name == "filed"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"{" + b" " * MAX_JOB_FILE_BYTES + b"}", "larger than"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{not json", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested"),
        (None, "cannot read"),
    ],
    ids=["oversized", "not-utf8", "not-json", "deep", "missing"],
)
def test_a_bad_job_file_is_an_invalid_job(tmp_path, capsys, content, words):
    path = tmp_path / "job.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=words):
        load_job_from_env({"KILN_JOB_FILE": str(path)})
    assert main({"KILN_JOB_FILE": str(path)}) == 2  # refused before any Ray or port is touched
    assert "KILN_JOB_FILE" in capsys.readouterr().err


def test_busy_port_falls_back_only_when_allowed():
    metrics = KilnMetrics("j", "ns")
    first = MetricsServer(metrics, dict, 0, host="127.0.0.1").start()
    try:
        with pytest.raises(OSError):
            start_server(metrics, dict, first.port, fallback=False, host="127.0.0.1")
        second = start_server(metrics, dict, first.port, fallback=True, host="127.0.0.1")
        assert second.port != first.port
        second.stop()
    finally:
        first.stop()


def test_manifest_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps(manifest("bad", {"hyperparameters": {"batchSize": 0}})))
    with pytest.raises(ValueError, match="spec.hyperparameters.batchSize"):
        load_manifest(str(bad), None)
    good = tmp_path / "good.yaml"
    good.write_text(json.dumps(manifest("good")))
    assert load_manifest(str(good), 3).spec.workers.replicas == 3
    with pytest.raises(ValueError, match="--workers"):
        load_manifest(str(good), 0)
    with pytest.raises(ValueError, match="missing.yaml: no such file"):
        load_manifest(str(tmp_path / "missing.yaml"), None)


def test_local_outputs_rebuild_the_epoch_log_on_resume(tmp_path):
    outputs = LocalOutputs(str(tmp_path), io.StringIO())
    status = initial_status(10)
    for epoch in (1, 2, 3):
        outputs(dataclasses.replace(EPOCH, epoch=epoch), status)
    # Resumed from epoch 2's checkpoint, whose history also knows an epoch the log lost.
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 1.0}) + "\n")
    outputs(Started(epoch=2, step=0, total_epochs=10,
                    history=[{"epoch": 1.0, "train_loss": 9.0}, {"epoch": 2.0, "train_loss": 0.7}]), status)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["train_loss"]) for r in rows] == [(1, 1.0), (2, 0.7)]
    assert json.loads((tmp_path / "status.json").read_text())["phase"] == "Starting"


def test_progress_line_and_curves(tmp_path):
    status = fold([EPOCH])
    line = progress_line(status, 0.25, "val_accuracy 0.9000", batch=(5, 10))
    assert line.startswith("epoch 3/10 [##########..........] step 40 loss 0.2500 val_accuracy 0.9000 ETA")
    assert plot_curves([{"epoch": 1, "train_loss": 1.0, "val_loss": 0.9, "val_accuracy": 0.5},
                        {"epoch": 2, "train_loss": 0.5, "val_loss": 0.6, "val_accuracy": 0.7}], str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert not plot_curves([], str(tmp_path / "none.png"))


def test_status_documents_leave_out_non_finite_metrics():
    import math

    from kiln_api.status import TrainingJobStatus

    status = TrainingJobStatus(metrics={"train_loss": 0.5, "val_loss": math.nan, "val_accuracy": math.inf})
    assert driver_status_json(status)["metrics"] == {"train_loss": 0.5}
    assert json.loads(compact_status(status))["metrics"] == {"train_loss": 0.5}
