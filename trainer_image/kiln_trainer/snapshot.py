"""A checkpoint's state, copied in the training thread so that serialising and writing it can run
in the background while training goes on (checkpoints.BackgroundWriter).

The training thread only copies tensors; everything else is rebuilt container by container, so
nothing in a snapshot is shared with what training mutates in place (parameters, optimizer state):
- CPU tensors are copied into buffers kept from one checkpoint to the next (one write is in flight
  at a time, and RunCore waits for it before the next snapshot, so a buffer is free again by then).
  Reusing them saves the page faults of fresh allocations: the copy runs at memory bandwidth.
- CUDA tensors are copied on the training stream, so stream order puts each copy before any later
  in-place update and the training thread never waits for the GPU: cloned on the device when the
  state takes at most CLONE_FRACTION of the device memory still available (a device-to-device copy
  takes a fraction of a millisecond), else copied into pinned host buffers kept between checkpoints
  (no device memory, the GPU spends the copy's time on it). One event marks the copies done; the
  background thread waits for it, then torch.save moves any clones to the host on a stream of its
  own, so that copy never queues behind (or in front of) training kernels.
"""

from __future__ import annotations

import contextlib
import copy
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Optional

import torch

Path = tuple[Any, ...]
CLONE_FRACTION = 0.25


def clone_on_device(state_bytes: int, available_bytes: int, fraction: float = CLONE_FRACTION) -> bool:
    """Whether CUDA tensors of `state_bytes` are cloned on the device (else copied to pinned host memory)."""
    return state_bytes <= fraction * available_bytes


def available_device_memory(device: torch.device) -> int:
    """Free device memory plus what PyTorch's caching allocator holds unused."""
    free, _total = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


class Snapshot:
    """A state dict of copies; `materialized()` gives it to the background thread when it is safe to read."""

    def __init__(self, state: dict[str, Any], event: Any = None, stream: Any = None) -> None:
        self.state = state
        self._event, self._stream = event, stream

    @contextlib.contextmanager
    def materialized(self) -> Iterator[dict[str, Any]]:
        """The state, once every copy is done, with CUDA clones readable on this thread's own stream."""
        if self._event is None:
            yield self.state
            return
        self._event.synchronize()  # pinned host copies are complete (and so are the clones)
        with torch.cuda.device(self._stream.device), torch.cuda.stream(self._stream):
            yield self.state
            # torch.save copied every clone to the host synchronously on this stream: nothing reads them after this.


class Snapshotter:
    """Takes snapshots for one writer (RunCore's, on rank 0), reusing host buffers between them."""

    def __init__(self) -> None:
        self._buffers: dict[Path, torch.Tensor] = {}
        self._streams: dict[torch.device, Any] = {}
        self._cuda_device: Optional[torch.device] = None
        self._clone = True

    def take(self, state: dict[str, Any]) -> Snapshot:
        """Copy `state` now. The caller must not take another snapshot before the previous one was
        written (its host buffers are reused)."""
        cuda = [t for t in _tensors(state) if t.is_cuda]
        self._cuda_device = cuda[0].device if cuda else None
        if self._cuda_device is not None:
            state_bytes = sum(t.numel() * t.element_size() for t in cuda)
            self._clone = clone_on_device(state_bytes, available_device_memory(self._cuda_device))
        copied = self._copy(state, ())
        if self._cuda_device is None:
            return Snapshot(copied)
        device = self._cuda_device
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        if device not in self._streams:
            self._streams[device] = torch.cuda.Stream(device=device)
        return Snapshot(copied, event, self._streams[device])

    def _copy(self, value: Any, path: Path) -> Any:
        if isinstance(value, torch.Tensor):
            return self._tensor(value, path)
        if isinstance(value, dict):
            out = type(value)() if type(value) in (dict, OrderedDict) else {}
            for key, item in value.items():
                out[key] = self._copy(item, (*path, key))
            if hasattr(value, "_metadata"):  # a module state_dict's versions, used by load_state_dict
                out._metadata = copy.deepcopy(value._metadata)  # type: ignore[attr-defined]
            return out
        if isinstance(value, list):
            return [self._copy(item, (*path, i)) for i, item in enumerate(value)]
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return tuple(self._copy(item, (*path, i)) for i, item in enumerate(value))
        return copy.deepcopy(value)

    def _tensor(self, tensor: torch.Tensor, path: Path) -> torch.Tensor:
        tensor = tensor.detach()
        if tensor.is_cuda and self._clone:
            return tensor.clone()
        if tensor.layout != torch.strided or tensor.device.type not in ("cpu", "cuda"):
            return tensor.clone()
        buffer = self._buffers.get(path)
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype or buffer.stride() != tensor.stride():
            buffer = self._buffers[path] = _host_buffer(tensor)
        return buffer.copy_(tensor, non_blocking=tensor.is_cuda)  # CUDA: async into pinned memory, on the stream


def _host_buffer(like: torch.Tensor) -> torch.Tensor:
    """A CPU tensor like `like` (its strides when dense); pinned when it receives copies from CUDA."""
    return torch.empty_like(like, device="cpu", pin_memory=like.is_cuda, memory_format=torch.preserve_format)


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
