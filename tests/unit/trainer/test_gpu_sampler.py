"""The GPU sampler reports continuously from a background thread, leaves unreadable figures out,
and does nothing at all for a CPU worker or without NVML."""

from __future__ import annotations

import threading

import torch
from kiln_trainer.gpu_sampler import GpuSampler, gpu_sampling, load_nvml, nvml_handle, read_torch, summarise
from kiln_trainer.worker import WorkerEnv

from tests.support.waiting import wait_for


def test_summary_averages_utilisation_and_keeps_the_latest_memory() -> None:
    samples = [{"utilization": 0.2, "memory_used_bytes": 1.0}, {"memory_used_bytes": 2.0},
               {"utilization": 0.6, "memory_used_bytes": 3.0}]
    assert summarise(samples) == {"utilization": 0.4, "memory_used_bytes": 3.0}
    assert "utilization" not in summarise([{"memory_used_bytes": 1.0}])  # never read: left out, not 0
    assert summarise([]) == {}


def test_sampler_reports_repeatedly_while_running_and_once_more_when_stopped() -> None:
    reports: list[dict[str, float]] = []
    readings = iter(range(1_000_000))
    lock = threading.Lock()

    def send(report: dict[str, float]) -> None:
        with lock:
            reports.append(report)

    with GpuSampler(lambda: {"utilization": 0.5, "memory_used_bytes": float(next(readings))}, send,
                    sample_interval=0.01, report_interval=0.02):
        wait_for(lambda: len(reports) >= 3, 30, "three reports from the sampler thread")
    count = len(reports)
    assert all(r["utilization"] == 0.5 for r in reports)
    assert [r["memory_used_bytes"] for r in reports] == sorted(r["memory_used_bytes"] for r in reports)
    assert len(reports) == count  # stopped: no report after the block


def test_a_failing_read_or_send_never_stops_the_sampler() -> None:
    calls = {"read": 0, "sent": 0}

    def read() -> dict[str, float]:
        calls["read"] += 1
        if calls["read"] % 2:
            raise RuntimeError("NVML hiccup")
        return {"utilization": 0.1}

    def send(report: dict[str, float]) -> None:
        calls["sent"] += 1
        if calls["sent"] == 1:
            raise ConnectionError("driver busy")

    with GpuSampler(read, send, sample_interval=0.01, report_interval=0.01):
        wait_for(lambda: calls["sent"] >= 3, 30, "reports after failures")


def test_a_cpu_worker_samples_nothing() -> None:
    sent: list[dict] = []

    class Channel:
        def push(self, event: dict) -> None:
            sent.append(event)

    with gpu_sampling(WorkerEnv(device=torch.device("cpu"), channel=Channel())) as sampler:  # type: ignore[arg-type]
        assert sampler is None
    assert sent == [] and read_torch(torch.device("cpu")) == {}


def test_without_an_nvml_library_nvml_is_reported_unavailable() -> None:
    nvml = load_nvml()
    if nvml is not None:  # a machine with a GPU driver: the library is there
        nvml.nvmlShutdown()
        return
    assert nvml is None


class _Nvml:
    """Just the two NVML look-ups `nvml_handle` chooses between (there is no NVML on CPU machines)."""

    class NVMLError(Exception):
        pass

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:  # noqa: N802 - NVML's names
        return f"index:{index}"

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:  # noqa: N802
        return f"uuid:{uuid}"


def test_torch_device_maps_to_the_nvml_device_cuda_visible_devices_names() -> None:
    nvml = _Nvml()
    if torch.cuda.is_available():  # torch then answers with the device's UUID first
        return
    assert nvml_handle(nvml, 1, visible="4,6") == "index:6"
    assert nvml_handle(nvml, 0, visible="GPU-abc") == "uuid:GPU-abc"
    assert nvml_handle(nvml, 2, visible="") == "index:2"
