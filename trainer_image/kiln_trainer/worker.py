"""What a training worker knows about where it runs: rank, device, the driver's channel, paths."""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .channel import ChannelClient, RayChannelClient
from .checkpoint_io import fsync_dir
from .events import Event
from .storage import is_remote


@dataclass
class RunPaths:
    """Resolved locations a worker reads and writes."""

    checkpoint_dir: str
    pvc_root: str
    model_path: Optional[str] = None
    # The driver run this worker belongs to (one per driver process, from train_setup.build_trainer): the
    # claimant of the checkpoint location's generation fence. None: a fresh one per RunCore.
    run_id: Optional[str] = None


@dataclass
class WorkerEnv:
    """Rank, world size, device and the (optional) client of the driver's ProgressChannel:
    `RayChannelClient` in a Ray Train worker, `InProcessClient` when `kiln run` trains in its
    own process (channel.py)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    channel: Optional[ChannelClient] = None
    # A streamed run's plan and dataset shards (stream_feed.StreamInputs); None: data in memory.
    stream: Optional[Any] = None

    def emit(self, event: Event) -> None:
        """Rank 0 sends an event to the driver without waiting for it to be received."""
        if self.rank == 0 and self.channel is not None:
            self.channel.push(event.to_wire())

    def emit_final(self, event: Event) -> None:
        """Rank 0 sends its last event and waits until the driver's channel holds it."""
        if self.rank == 0 and self.channel is not None:
            self.channel.push_final(event.to_wire())

    def emit_any_rank(self, event: Event) -> None:
        if self.channel is not None:
            self.channel.push(event.to_wire())

    def stop_requested(self) -> bool:
        """Rank 0 asks the driver whether a stop was requested (one small round trip per epoch)."""
        if self.rank != 0 or self.channel is None:
            return False
        return self.channel.stop_requested()


def ray_worker_env(actor: Any) -> WorkerEnv:
    """The environment inside a Ray Train worker (the process group is already set up); `actor`
    is the driver's ProgressChannel actor, or None."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    channel = RayChannelClient(actor) if actor is not None else None
    return WorkerEnv(rank=context.get_world_rank(), world_size=context.get_world_size(), device=device, channel=channel)


def in_process_env(channel: Optional[ChannelClient], use_gpu: bool, cpus: Optional[float] = None) -> WorkerEnv:
    """The one training worker `kiln run` runs in its own process: rank 0 of 1, on the first
    CUDA device torch sees when the job asks for a GPU, with as many torch threads as the
    worker's CPUs (as Ray gives its workers through OMP_NUM_THREADS, unless that is set)."""
    if cpus and not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, int(cpus)))
    device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return WorkerEnv(rank=0, world_size=1, device=device, channel=channel)


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (other threads write files too)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(location: str, data: bytes, *, durable: bool = True) -> None:
    """Write a file atomically (temp file, rename) and, when `durable`, durably (fsync of the file
    and of its directory) locally, or through fsspec for URLs. The file gets the permissions the
    umask gives a new file, as `open()` would, not the temp file's private 0600."""
    if is_remote(location):
        import fsspec

        with fsspec.open(location, "wb") as handle:
            handle.write(data)
        return
    directory = os.path.dirname(os.path.abspath(location))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())  # the bytes before the name: a crash never leaves an empty model.pt
        os.replace(tmp, location)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(directory)

