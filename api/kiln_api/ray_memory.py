"""How a pod's memory limit is shared between Ray's object store and everything else.

Streamed data (Ray Data) passes through the object store, and the store lives in /dev/shm: a
tmpfs whose pages count against the container's memory limit. Left to itself, Ray sizes the
store from what it believes the machine has, and a /dev/shm as large as the whole limit lets the
store and the training process together go past it (the kernel then kills the pod). So each pod
gets an explicit `--object-store-memory` share of its limit and a /dev/shm that holds exactly that
plus room for PyTorch's shared-memory tensors; what does not fit spills to local disk (Ray's
default spill directory under /tmp). `kiln render` shows both figures in the pods it prints.
"""

from __future__ import annotations

import re
from typing import Any

# Share of a pod's memory limit given to the object store (Ray's own default share of a machine):
# enough for the prefetch window of a few blocks, leaving most of it to the training process.
STORE_FRACTION = 0.3
MIN_STORE_BYTES = 80 * 2**20  # Ray refuses an object store under 75 MiB
SHM_EXTRA_FRACTION = 0.1  # /dev/shm beyond the store: gloo and torch.multiprocessing buffers

_SUFFIX = {
    "": 1, "m": 1e-3, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity ("2Gi", "1500M", "1e9" is not one) in bytes."""
    match = _QUANTITY.match(quantity.strip())
    if match is None:
        raise ValueError(f"not a Kubernetes memory quantity: {quantity!r}")
    number, suffix = match.groups()
    return int(float(number) * _SUFFIX[suffix or ""])


def object_store_bytes(memory: str, fraction: float = STORE_FRACTION) -> int:
    """The object store's share of a pod with memory limit `memory` (never under Ray's minimum,
    never over half the limit)."""
    limit = quantity_bytes(memory)
    return int(min(max(limit * fraction, MIN_STORE_BYTES), max(limit // 2, MIN_STORE_BYTES)))


def local_object_store_bytes(spec: Any) -> int:
    """The object store of a local Ray cluster (`kiln run`) that stands for the job's worker pods:
    what they would hold together, so that streaming is bounded on a laptop as in the pods, rather
    than by Ray's default of 30 % of the machine."""
    from .search import cluster_replicas

    return cluster_replicas(spec) * object_store_bytes(spec.workers.memory_per_worker)


def shm_size(memory: str, fraction: float = STORE_FRACTION) -> str:
    """/dev/shm's sizeLimit for the pod: the object store plus a margin, in MiB."""
    limit = quantity_bytes(memory)
    store = object_store_bytes(memory, fraction)
    size = min(store + int(limit * SHM_EXTRA_FRACTION), limit)
    return f"{max(size // 2**20, 1)}Mi"
