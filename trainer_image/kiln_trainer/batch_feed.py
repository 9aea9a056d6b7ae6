"""Where the training split lives while a worker trains, and how each step's batch reaches the model.

Placement (`spec.data.placement`):
- `device`: the whole training split (and the validation split) is copied to the model's device
  once; every epoch one index tensor goes there, and each step is one gather on the device:
  nothing crosses the bus per step and the host never waits. On CPU this is where the data
  already is, so `auto` always picks it there.
- `host`: the split stays in host memory. On CUDA each step's rows are gathered into one of two
  pinned staging buffers and copied on a side stream while the previous batch computes (a
  prefetch of one batch); the compute stream waits for that copy on the GPU, not on the host.
  Only the two staging buffers are pinned, not the split: the gather has to copy the rows anyway,
  and pinning a split too large for the device would lock that much host memory for nothing.
- `auto` (the default): `device` when the training and validation splits take at most
  `spec.data.deviceMemoryFraction` of the device's free memory, otherwise `host`.

Order: each rank takes exactly the rows `DistributedSampler(shuffle=True, drop_last=False)` would
give it (the same seeded permutation per epoch, padded and strided alike), so the placement never
changes which samples a step sees, and metrics are the same as with the sampler. The permutation is
drawn on the CPU (bit-identical on every device) and moved to the device once per epoch.

Augmentation runs per batch on the device after the batch arrives (data/augmentation.py), with a
generator on that device seeded from (seed, epoch, rank): both placements see the same random
numbers, and a resumed run the same as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import Any, Optional

import torch

log = logging.getLogger("kiln_trainer.data")

DEVICE = "device"
HOST = "host"
AUTO = "auto"

Batch = tuple[torch.Tensor, torch.Tensor]
Bounds = list[tuple[int, int]]


def choose_placement(requested: str, *, device_type: str, data_bytes: int, free_bytes: Optional[int],
                     fraction: float) -> str:
    """`device` or `host` for data of `data_bytes`; `requested` other than auto wins.

    CPU counts as a device (the data is already where the model computes); on an accelerator
    the data must fit within `fraction` of the free memory (None: unknown, so host)."""
    if requested in (DEVICE, HOST):
        return requested
    if device_type == "cpu":
        return DEVICE
    if free_bytes is None:
        return HOST
    return DEVICE if data_bytes <= fraction * free_bytes else HOST


def free_device_memory(device: torch.device) -> Optional[int]:
    """Free memory of a CUDA device in bytes (None elsewhere)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def tensor_bytes(*tensors: Optional[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def shard_order(rows: int, *, world_size: int, rank: int, seed: int, epoch: int) -> torch.Tensor:
    """This rank's sample order for `epoch` (int64, on the CPU): the indices that
    `DistributedSampler(shuffle=True, drop_last=False, seed=seed)` yields after `set_epoch(epoch)`,
    computed with tensor operations instead of Python lists."""
    generator = torch.Generator()
    generator.manual_seed(seed + epoch)
    order = torch.randperm(rows, generator=generator)
    per_rank = math.ceil(rows / world_size)
    total = per_rank * world_size
    if total > rows:  # pad by repeating the permutation from its start, as the sampler does
        pad = total - rows
        order = torch.cat([order, order.repeat(math.ceil(pad / rows))[:pad]])
    return order[rank:total:world_size]


def batch_bounds(rows: int, batch_size: int, skip_single_tail: bool = True) -> Bounds:
    """(start, end) of each batch over `rows` shard positions. A last batch of one sample is dropped
    when asked (batch norm cannot train on it); every rank has as many rows, so all drop it alike."""
    bounds = [(start, min(start + batch_size, rows)) for start in range(0, rows, batch_size)]
    if skip_single_tail and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds.pop()
    return bounds


def augmentation_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one rank's augmentation generator for one epoch (a function of nothing else,
    so a resumed epoch draws what the uninterrupted one drew)."""
    return (seed * 1_000_003 + epoch * 10_007 + rank * 101 + 17) % (2**63 - 1)


def prefetched(issue: Callable[[int], Any], ready: Callable[[Any], Batch], count: int) -> Iterator[Batch]:
    """Batches 0..count-1 where batch i+1 is issued (its copy started) before batch i is handed out,
    so that copy overlaps batch i's compute: a prefetch of one batch."""
    if count <= 0:
        return
    pending = issue(0)
    for i in range(count):
        current = pending
        if i + 1 < count:
            pending = issue(i + 1)
        yield ready(current)


class BatchFeed:
    """The training split of one worker and the batches of one epoch; see the module docstring."""

    placement = DEVICE

    def __init__(self, x: torch.Tensor, y: torch.Tensor, device: torch.device, *,
                 transform: Optional[Any] = None, channels_last: bool = False, seed: int = 0, rank: int = 0) -> None:
        self.device = device
        self.rows = len(x)
        self.nbytes = tensor_bytes(x, y)
        self.transform = transform.to(device) if transform is not None else None
        self.channels_last = channels_last and x.dim() == 4
        self.seed, self.rank = seed, rank
        self._generator: Optional[torch.Generator] = None

    def batches(self, order: torch.Tensor, bounds: Bounds, epoch: int) -> Iterator[Batch]:
        raise NotImplementedError

    def _finish(self, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator]) -> Batch:
        """The batch as the model takes it: augmented (training only), in the model's memory format."""
        if self.transform is not None:
            x = self.transform(x, generator)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _epoch_generator(self, epoch: int) -> Optional[torch.Generator]:
        """The augmentation generator, seeded for `epoch` (at the start of every pass over it)."""
        if self.transform is None:
            return None
        if self._generator is None:
            self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(augmentation_seed(self.seed, epoch, self.rank))
        return self._generator


class DeviceFeed(BatchFeed):
    """The split on the device: per step one gather there."""

    placement = DEVICE

    def __init__(self, x: torch.Tensor, y: torch.Tensor, device: torch.device, **kwargs: Any) -> None:
        super().__init__(x, y, device, **kwargs)
        self.x, self.y = x.to(device), y.to(device)

    def batches(self, order: torch.Tensor, bounds: Bounds, epoch: int) -> Iterator[Batch]:
        order, generator = order.to(self.device), self._epoch_generator(epoch)
        x, y = self.x, self.y
        for start, end in bounds:
            index = order[start:end]
            yield self._finish(x.index_select(0, index), y.index_select(0, index), generator)


class HostFeed(BatchFeed):
    """The split in host memory. CUDA: gather into pinned staging, copy on a side stream, one ahead.
    CPU (or any device without streams): plain gathers, exactly what DeviceFeed does there."""

    placement = HOST
    STAGING_BUFFERS = 2

    def __init__(self, x: torch.Tensor, y: torch.Tensor, device: torch.device, *, batch_size: int, **kwargs: Any) -> None:
        super().__init__(x, y, device, **kwargs)
        self.x, self.y = x.cpu(), y.cpu()
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.stream = torch.cuda.Stream(device=device)
            rows = min(batch_size, max(self.rows, 1))
            self.staging = [(_pinned(self.x, rows), _pinned(self.y, rows)) for _ in range(self.STAGING_BUFFERS)]
            self.copied: list[Optional[torch.cuda.Event]] = [None] * self.STAGING_BUFFERS

    def batches(self, order: torch.Tensor, bounds: Bounds, epoch: int) -> Iterator[Batch]:
        generator = self._epoch_generator(epoch)
        if not self.cuda:
            for start, end in bounds:
                index = order[start:end]
                yield self._finish(self.x.index_select(0, index), self.y.index_select(0, index), generator)
            return
        for x, y in prefetched(lambda i: self._issue(order, bounds[i], i), self._ready, len(bounds)):
            yield self._finish(x, y, generator)

    def _issue(self, order: torch.Tensor, bound: tuple[int, int], i: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Gather batch `i` into a staging buffer and start its copy to the device on the side stream."""
        slot = i % self.STAGING_BUFFERS
        if self.copied[slot] is not None:
            self.copied[slot].synchronize()  # the copy out of this buffer two batches ago is done
        start, end = bound
        index = order[start:end]
        host_x, host_y = (buffer[: end - start] for buffer in self.staging[slot])
        torch.index_select(self.x, 0, index, out=host_x)
        torch.index_select(self.y, 0, index, out=host_y)
        with torch.cuda.stream(self.stream):
            x = host_x.to(self.device, non_blocking=True)
            y = host_y.to(self.device, non_blocking=True)
            event = self.stream.record_event()
        self.copied[slot] = event
        return x, y, event

    def _ready(self, issued: tuple[torch.Tensor, torch.Tensor, Any]) -> Batch:
        """Make the compute stream wait (on the GPU) for the batch's copy, and tell the allocator the
        batch is used there, so its memory is not reused while the compute stream still reads it."""
        x, y, event = issued
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(event)
        x.record_stream(compute)
        y.record_stream(compute)
        return x, y


def _pinned(like: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.empty((rows, *like.shape[1:]), dtype=like.dtype, pin_memory=True)


def make_feed(placement: str, x: torch.Tensor, y: torch.Tensor, device: torch.device, *, batch_size: int,
              **kwargs: Any) -> BatchFeed:
    if placement == DEVICE:
        return DeviceFeed(x, y, device, **kwargs)
    return HostFeed(x, y, device, batch_size=batch_size, **kwargs)
