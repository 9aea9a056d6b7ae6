"""How a driver run is set up (`DriverOptions`): where it checkpoints, which Ray it uses, how it
reports. `kiln run` and the head pod's entry point (driver.main) fill it in differently."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

from kiln_api.status import TrainingJobStatus
from kiln_api.storage_paths import PVC_MOUNT_ROOT
from kiln_api.topology import GPU

from .events import Event

Listener = Callable[[Event, TrainingJobStatus], None]


@dataclass
class DriverOptions:
    checkpoint_dir: str
    ray_address: Optional[str] = None  # None: start a local Ray cluster
    pvc_root: str = PVC_MOUNT_ROOT
    model_path: Optional[str] = None
    port: int = 8000
    port_fallback: bool = False
    ray_temp_dir: Optional[str] = None
    local_num_cpus: Optional[int] = None
    local_num_gpus: Optional[int] = None  # None: the CUDA devices torch sees
    local_object_store_bytes: Optional[int] = None  # None: Ray's default (30 % of the machine)
    # Train in this process, without Ray (`kiln run` with one training worker).
    in_process: bool = False
    # The Ray resource a training worker's GPU is: Ray's own `GPU` in the product; a test on a
    # machine without GPUs names a custom resource instead (then without CUDA, kiln_api.topology).
    gpu_resource: str = GPU
    python_path: list[str] = field(default_factory=list)
    termination_message_path: Optional[str] = None
    startup_timeout_s: float = 600.0
    listeners: list[Listener] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)
