"""Ray Train's per-worker entry point: built-in model (builtin_run.py) or custom code (sdk.py)."""

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
from .worker import RunPaths, ray_worker_env

log = logging.getLogger("kiln_trainer.training")


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker: the job and paths come in `config`."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for entry in reversed(config.get("python_path") or []):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    job = TrainingJob.model_validate(config["job"])
    env = ray_worker_env(config.get("channel"))
    log.info("worker %d: torch threads %d (OMP_NUM_THREADS=%s)", env.rank, torch.get_num_threads(),
             os.environ.get("OMP_NUM_THREADS"))
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
        log.error("%s", exc)
    except SpecError as exc:
        # Every rank hits the same setting error; returning (not raising) keeps Ray Train from
        # retrying a job that cannot work, and the driver turns the event into exit code 2.
        env.emit(SpecInvalid(field=exc.field, message=str(exc)))
        log.error("%s", exc)
