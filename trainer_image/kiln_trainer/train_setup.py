"""What the driver starts training with: Ray (connected or started locally), the workers'
config, and Ray Train's `TorchTrainer` (with the streamed data sets), or the one in-process
worker of `kiln run`."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from kiln_api import TrainingJob
from kiln_api.topology import TrainingTopology, training_topology

from .channel import InProcessClient, ProgressChannel
from .data.errors import SpecError
from .driver_options import DriverOptions

LOCAL_HEALTH_CHECK_INTERVAL_S = "0.5"


def connect_ray(options: DriverOptions) -> bool:
    """Connect to the given cluster or start a local one; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if options.ray_address:
        ray.init(address=options.ray_address, logging_level=logging.WARNING, log_to_driver=True)
        return True
    # Ray Train's controller polls its workers at this interval (default 2 s); a local run is
    # dominated by start-up and teardown, and 0.5 s cut a 2-epoch `kiln run` from ~31 s to
    # ~23 s on 2 cores (the workers' Ray processes inherit this environment).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", LOCAL_HEALTH_CHECK_INTERVAL_S)
    ray.init(
        num_cpus=options.local_num_cpus or os.cpu_count() or 1,
        num_gpus=local_gpu_count() if options.local_num_gpus is None else options.local_num_gpus,
        include_dashboard=False,
        _temp_dir=options.ray_temp_dir,
        object_store_memory=options.local_object_store_bytes,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    return True


def local_gpu_count() -> int:
    """The CUDA devices torch sees on this machine (0 with a CPU build of torch)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_config(job: TrainingJob, options: DriverOptions) -> dict[str, Any]:
    """What every training worker gets: the job and the paths (worker_main.run_worker)."""
    import uuid

    return {
        "job": job.model_dump(by_alias=True, exclude_none=True, mode="json"),
        "checkpoint_dir": options.checkpoint_dir,
        "pvc_root": options.pvc_root,
        "model_path": options.model_path,
        "python_path": options.python_path,
        # This driver's claim on the checkpoint location (checkpoint_fence.py): every restart of the
        # worker group is the same run; a driver that replaces this one gets another id and fences it.
        "run_id": uuid.uuid4().hex,
    }


def in_process_training(job: TrainingJob, options: DriverOptions, channel: ProgressChannel,
                        topology: TrainingTopology) -> Callable[[], None]:
    """The one training worker, to run on a thread of this process (`kiln run`, no Ray)."""
    from .worker import in_process_env
    from .worker_main import train_in_process

    config = worker_config(job, options)

    def train() -> None:
        # On the training thread: CUDA's current device is a per-thread setting.
        train_in_process(config, in_process_env(InProcessClient(channel), topology.use_gpu, topology.cpus_per_worker))

    return train


def scaling_config(topology: TrainingTopology) -> Any:
    """Ray Train's ScalingConfig for the topology: one worker per GPU (NCCL when use_gpu)."""
    from ray.train import ScalingConfig

    return ScalingConfig(num_workers=topology.num_workers, use_gpu=topology.use_gpu,
                         resources_per_worker=dict(topology.resources_per_worker))


def stream_datasets(job: TrainingJob, options: DriverOptions, config: dict[str, Any]) -> dict[str, Any]:
    """TorchTrainer's `datasets` and `dataset_config` when the job streams its data (stream_driver.py),
    with the plan added to the workers' `config`; nothing for data in memory."""
    from .stream_driver import every_row_data_config, load_or_build_plan, streaming_source

    source = None if job.spec.entrypoint else streaming_source(job.spec.data, options.pvc_root)
    if source is None:
        return {}
    if job.spec.evaluation.slice_by:  # loading auto chose to stream (an explicit stream is refused by the spec)
        raise SpecError("spec.evaluation.sliceBy", "slices need the test split's columns in memory, but this data set is "
                        "streamed (larger than data.stream.thresholdMiB): set data.loading: memory, or drop sliceBy")
    plan, datasets = load_or_build_plan(source, options.checkpoint_dir)
    config.update(stream_plan=plan.to_json(), stream_splits=sorted(datasets))
    return {"datasets": datasets, "dataset_config": every_row_data_config()}


def build_trainer(job: TrainingJob, options: DriverOptions, channel: Any) -> Any:
    """The TorchTrainer of the job; `channel` is the driver's ProgressChannel actor (or None)."""
    from ray.train import FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from .worker_main import train_worker

    config = {**worker_config(job, options), "channel": channel}
    storage = os.path.join(options.ray_temp_dir or "/tmp", "kiln-train")
    streamed = stream_datasets(job, options, config)
    return TorchTrainer(
        train_worker,
        train_loop_config=config,
        **streamed,
        scaling_config=scaling_config(training_topology(job.spec.workers, options.gpu_resource)),
        run_config=RunConfig(
            name=f"{job.name}-{int(time.time())}",
            storage_path=storage,
            failure_config=FailureConfig(max_failures=job.spec.failure_policy.max_worker_failures),
        ),
    )
