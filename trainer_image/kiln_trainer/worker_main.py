"""A training worker's entry point: built-in model (builtin_run.py) or custom code (sdk.py).

`train_worker` is Ray Train's train_loop_per_worker; `train_in_process` runs the same worker
in the driver's own process (`kiln run` with one training worker, no Ray).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import torch
from kiln_api import TrainingJob

from .checkpoint_fence import StaleWriter
from .data.errors import SpecError
from .events import SpecInvalid, Superseded
from .worker import RunPaths, WorkerEnv, ray_worker_env

log = logging.getLogger("kiln_trainer.training")


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker: the job and paths come in `config`."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    env = ray_worker_env(config.get("channel"))
    env.stream = stream_inputs(config)
    log.info("worker %d: torch threads %d (OMP_NUM_THREADS=%s)", env.rank, torch.get_num_threads(),
             os.environ.get("OMP_NUM_THREADS"))
    run_worker(config, env)


def stream_inputs(config: dict[str, Any]) -> Any:
    """The plan and dataset shards of a streamed run (train_setup.build_trainer), else None."""
    if not config.get("stream_plan"):
        return None
    import ray.train

    from .data.stream_plan import StreamPlan
    from .stream_feed import StreamInputs

    splits = set(config.get("stream_splits") or ())
    return StreamInputs(StreamPlan.from_json(config["stream_plan"]),
                        lambda name: ray.train.get_dataset_shard(name) if name in splits else None)


def train_in_process(config: dict[str, Any], env: WorkerEnv) -> None:
    """The one training worker of `kiln run`, in its own process (the driver's `env` holds an
    in-process channel client). The process's logging is the command's, left as it is, and the
    driver prints a setting error itself: the worker does not log it again."""
    run_worker(config, env, log_errors=False)


def run_worker(config: dict[str, Any], env: WorkerEnv, *, log_errors: bool = True) -> None:
    """Train on this worker: `config` holds the job and paths (train_setup.worker_config)."""
    for entry in reversed(config.get("python_path") or []):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    job = TrainingJob.model_validate(config["job"])
    paths = RunPaths(checkpoint_dir=config["checkpoint_dir"], pvc_root=config["pvc_root"], model_path=config.get("model_path"),
                     run_id=config.get("run_id"))
    try:
        if job.spec.entrypoint:
            from .sdk import run_entrypoint

            run_entrypoint(job, env, paths)
        else:
            from .builtin_run import run_training

            run_training(job, env, paths)
    except StaleWriter as exc:
        # Retrying cannot help: the storage belongs to the newer driver now. Returning ends the run.
        env.emit(Superseded(message=str(exc)))
        if log_errors:
            log.error("%s", exc)
    except SpecError as exc:
        # Every rank hits the same setting error; returning (not raising) keeps Ray Train from
        # retrying a job that cannot work, and the driver turns the event into exit code 2.
        env.emit(SpecInvalid(field=exc.field, message=str(exc)))
        if log_errors:
            log.error("%s", exc)
