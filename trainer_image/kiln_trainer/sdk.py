"""The SDK for custom training code (`spec.entrypoint: "pkg.mod:fn"`).

The user's `fn(config)` runs on every worker. Inside it:

- `report(metrics, checkpoint_dir=None)` once per epoch: metrics are averaged across ranks
  (one all-reduce, so every rank sees the same values), early stopping is evaluated on them,
  rank 0's `checkpoint_dir` is saved as a Kiln checkpoint every `checkpoint.everyEpochs`
  (and when stopping), and the driver gets the epoch for /metrics and /status.
- `should_stop()` tells every rank, identically, whether to leave the loop (early stopping
  or a stop request such as Ctrl-C in `kiln run`).
- `get_checkpoint()` is the local directory of the newest valid checkpoint's files, or None.
- `save_model(state_dict)` writes the trained weights as the job's `model.pt` (rank 0).

Every rank must call `report` the same number of times with the same metric names,
exactly like any collective.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any, Optional

from kiln_api import TrainingJob

from .checkpoints import serialize_state
from .data.errors import SpecError
from .evaluation import all_reduce_sum
from .run_core import RunCore
from .worker import RunPaths, WorkerEnv, write_bytes

log = logging.getLogger("kiln_trainer.sdk")


class Session:
    """The SDK's per-worker state for one run of a custom entrypoint: the user's code trains,
    the `RunCore` keeps checkpoints, early stopping and progress as for built-in models."""

    def __init__(self, job: TrainingJob, env: WorkerEnv, paths: RunPaths) -> None:
        self.job, self.env, self.paths = job, env, paths
        self.core = RunCore.open(job, env, paths)
        self.last_metrics: dict[str, float] = {}
        self._scratch = tempfile.mkdtemp(prefix="kiln-ckpt-")
        self._last_report = time.perf_counter()

    @property
    def epoch(self) -> int:
        return self.core.state.epoch

    def report(self, metrics: dict[str, float], checkpoint_dir: Optional[str]) -> None:
        started = time.perf_counter()
        names = sorted(metrics)
        stop = 1.0 if self.env.stop_requested() else 0.0
        sums = all_reduce_sum([float(metrics[n]) for n in names] + [stop], self.env.device)
        world = float(self.env.world_size)
        reduced = {n: v / world for n, v in zip(names, sums[:-1], strict=True)}
        self.last_metrics = reduced
        self.core.end_epoch(reduced, interrupted=sums[-1] > 0)
        # Custom code has no optimizer-step counter of ours: a step is an epoch.
        self.core.state.step = self.core.state.epoch
        if self.core.checkpoint_due():
            self.core.checkpoint(reduced, {}, user_dir=checkpoint_dir)
        self.core.emit_epoch(reduced, started - self._last_report, reduced.get("samples_per_second"))
        self._last_report = time.perf_counter()

    def should_stop(self) -> bool:
        return self.core.should_stop()

    def checkpoint_path(self) -> Optional[str]:
        store = self.core.store
        info = store.latest_valid() if self.job.spec.checkpoint.resume or self.epoch > 0 else None
        if info is None:
            return None
        dest = tempfile.mkdtemp(prefix=f"epoch-{info.epoch:06d}-", dir=self._scratch)
        return store.fetch_user_dir(info, dest)

    def close(self) -> None:
        self.core.close()
        shutil.rmtree(self._scratch, ignore_errors=True)


_session: Optional[Session] = None


def _current() -> Session:
    if _session is None:
        raise RuntimeError("kiln_trainer SDK calls only work inside a Kiln job's entrypoint function")
    return _session


def report(metrics: dict[str, float], checkpoint_dir: Optional[str] = None) -> None:
    """Report one epoch's metrics (and, optionally, a directory to checkpoint). Call on every rank."""
    _current().report(metrics, checkpoint_dir)


def should_stop() -> bool:
    """True on every rank once early stopping (or a stop request) says to end training."""
    return _current().should_stop()


def get_checkpoint() -> Optional[str]:
    """Local directory holding the newest valid checkpoint's files, or None on a fresh start."""
    return _current().checkpoint_path()


def save_model(state_dict: dict[str, Any]) -> Optional[str]:
    """Save the trained weights as the job's model (`model.pt` beside the checkpoints, or in
    `kiln run`'s output). Call on every rank; rank 0 writes. Returns the path (rank 0), else None.

    The file stays a bare state dict, loaded as the user's code built the model: Kiln cannot describe
    an architecture it did not build, so `kiln predict` / `kiln export` (which need a built-in model's
    self-describing model.pt, model_artifact.py) refuse it with a message saying so."""
    session = _current()
    path = session.paths.model_path
    if session.env.rank != 0 or not path:
        return None
    session.core.fence.check_current("writing model.pt")
    write_bytes(path, serialize_state(state_dict))
    return path


def load_entrypoint(entrypoint: str) -> Callable[[dict[str, Any]], Any]:
    module_name, _, attr = entrypoint.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError("spec.entrypoint", f"cannot import {module_name!r}: {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise SpecError("spec.entrypoint", f"{module_name!r} has no function {attr!r}")
    return fn


def entrypoint_config(job: TrainingJob, env: WorkerEnv, paths: RunPaths, start_epoch: int) -> dict[str, Any]:
    hp = job.spec.hyperparameters
    return {
        "job_name": job.name,
        "rank": env.rank,
        "world_size": env.world_size,
        "device": str(env.device),
        "epochs": hp.epochs,
        "start_epoch": start_epoch,
        "global_batch_size": hp.batch_size,
        "batch_size": max(hp.batch_size // env.world_size, 1),
        "learning_rate": hp.learning_rate,
        "seed": hp.seed,
        "hyperparameters": hp.model_dump(mode="json"),
        "data": job.spec.data.model_dump(mode="json"),
        "pvc_root": paths.pvc_root,
    }


def run_entrypoint(job: TrainingJob, env: WorkerEnv, paths: RunPaths) -> None:
    """Run the user's function on this worker with an SDK session around it."""
    global _session
    assert job.spec.entrypoint is not None
    fn = load_entrypoint(job.spec.entrypoint)
    session = _session = Session(job, env, paths)
    try:
        session.core.resume()
        session.core.emit_started(f"custom entrypoint {job.spec.entrypoint}")
        fn(entrypoint_config(job, env, paths, session.epoch))
    finally:
        session.close()
        _session = None
    test_metrics = {k: v for k, v in session.last_metrics.items() if k.startswith("test_")}
    session.core.emit_finished(test_metrics)
