"""A training worker's GPU figures, sampled continuously while it trains.

A daemon thread reads the worker's device every `SAMPLE_INTERVAL_S` and sends one `GpuSampled`
event every `REPORT_INTERVAL_S`: NVML's utilisation averaged over the samples since the last
report, the device's used and total memory (what `nvidia-smi` shows: every process's memory and
the CUDA context, not only PyTorch's tensors), and beside them, named as such, the memory
PyTorch's caching allocator reserves and the memory its tensors take. A figure that cannot be
read (no NVML library, a MIG slice without utilisation, a driver error) is left out of the
report, so the driver exports no series for it rather than a 0 that reads as an idle GPU.

Nothing runs for a CPU worker, and a machine without NVML still reports PyTorch's figures.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, Optional

import torch

from .events import GpuSampled
from .worker import WorkerEnv

log = logging.getLogger("kiln_trainer.gpu_sampler")
SAMPLE_INTERVAL_S = 1.0
REPORT_INTERVAL_S = 5.0
Figures = dict[str, float]


def load_nvml() -> Any:
    """The initialised `pynvml` module, or None when the package or the driver's library is missing."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.info("NVML unavailable (%s): GPU utilisation and device memory are not reported", exc)
        return None
    return pynvml


def nvml_handle(nvml: Any, device_index: int, visible: Optional[str] = None) -> Any:
    """NVML's handle of torch's CUDA device `device_index`. NVML numbers every GPU of the machine,
    torch only those CUDA_VISIBLE_DEVICES lets it see (Ray sets it per worker): match by UUID,
    else by the visible entry (an index or a UUID), else by the index itself."""
    with contextlib.suppress(Exception):  # older torch has no uuid; NVML may not know it
        uuid = str(torch.cuda.get_device_properties(device_index).uuid)
        return nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
    entries = [e.strip() for e in (visible if visible is not None else os.environ.get("CUDA_VISIBLE_DEVICES", "")).split(",")]
    entry = entries[device_index] if device_index < len(entries) and entries[device_index] else str(device_index)
    if entry.isdigit():
        return nvml.nvmlDeviceGetHandleByIndex(int(entry))
    return nvml.nvmlDeviceGetHandleByUUID(entry)


def read_nvml(nvml: Any, handle: Any) -> Figures:
    """Utilisation (0..1) and device memory of `handle`; each figure only when NVML reads it."""
    figures: Figures = {}
    with contextlib.suppress(nvml.NVMLError):
        figures["utilization"] = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu) / 100.0
    with contextlib.suppress(nvml.NVMLError):
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        figures["memory_used_bytes"], figures["memory_total_bytes"] = float(memory.used), float(memory.total)
    return figures


def read_torch(device: torch.device) -> Figures:
    """PyTorch's own memory on `device` (nothing unless CUDA is initialised there)."""
    if device.type != "cuda" or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {"torch_reserved_bytes": float(torch.cuda.memory_reserved(device)),
            "torch_allocated_bytes": float(torch.cuda.memory_allocated(device))}


def summarise(samples: list[Figures]) -> Figures:
    """One report from the samples since the last: mean utilisation, the latest of everything else."""
    report: Figures = {}
    for sample in samples:
        report.update(sample)
    utilisation = [s["utilization"] for s in samples if "utilization" in s]
    if utilisation:
        report["utilization"] = sum(utilisation) / len(utilisation)
    return report


class GpuSampler:
    """Calls `read` every `sample_interval` seconds on a daemon thread and `send`s a summary of the
    readings every `report_interval` seconds, and once more when stopped."""

    def __init__(self, read: Callable[[], Figures], send: Callable[[Figures], None], *,
                 sample_interval: float = SAMPLE_INTERVAL_S, report_interval: float = REPORT_INTERVAL_S) -> None:
        self.read, self.send = read, send
        self.sample_interval, self.report_interval = sample_interval, report_interval
        self._stop = threading.Event()
        self._samples: list[Figures] = []
        self._thread = threading.Thread(target=self._run, name="kiln-gpu-sampler", daemon=True)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=max(self.sample_interval, 1.0) * 5)

    def _run(self) -> None:
        samples_per_report = max(1, round(self.report_interval / self.sample_interval))
        while not self._stop.is_set():
            self._sample()
            if len(self._samples) >= samples_per_report:
                self._report()
            self._stop.wait(self.sample_interval)
        self._report()

    def _sample(self) -> None:
        try:
            self._samples.append(self.read())
        except Exception as exc:  # noqa: BLE001 - a monitoring failure must never stop training
            log.warning("GPU sample failed: %s", exc)

    def _report(self) -> None:
        samples, self._samples = self._samples, []
        report = summarise(samples)
        if not report:
            return
        try:
            self.send(report)
        except Exception as exc:  # noqa: BLE001 - as above
            log.warning("GPU report failed: %s", exc)


def device_reader(device: torch.device, nvml: Any) -> Callable[[], Figures]:
    """What a CUDA worker samples: NVML's figures of its device (when NVML is there) and PyTorch's."""
    handle = None
    if nvml is not None:
        try:
            handle = nvml_handle(nvml, device.index if device.index is not None else torch.cuda.current_device())
        except Exception as exc:  # noqa: BLE001 - monitoring never stops training
            log.info("no NVML handle for %s (%s): only PyTorch's memory is reported", device, exc)

    def read() -> Figures:
        return {**(read_nvml(nvml, handle) if handle is not None else {}), **read_torch(device)}

    return read


@contextlib.contextmanager
def gpu_sampling(env: WorkerEnv, **intervals: float) -> Iterator[Optional[GpuSampler]]:
    """Sample this worker's GPU while the block runs (every rank: each has its own device);
    nothing for a CPU worker."""
    if env.device.type != "cuda":
        yield None
        return
    nvml = load_nvml()
    rank = str(env.rank)
    try:
        sampler = GpuSampler(device_reader(env.device, nvml), lambda figures: env.emit_any_rank(GpuSampled(gpu={rank: figures})),
                             **intervals)
        with sampler:
            yield sampler
    finally:
        if nvml is not None:
            with contextlib.suppress(nvml.NVMLError):
                nvml.nvmlShutdown()
