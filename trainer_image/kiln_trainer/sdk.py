"""The SDK for custom training code (`spec.entrypoint: "pkg.mod:fn"`).

The user's `fn(config)` runs on every worker. Inside it:

- `report(metrics, checkpoint_dir=None)` once per epoch: metrics are averaged across ranks
  (one all-reduce, so every rank sees the same values), early stopping is evaluated on them,
  rank 0's `checkpoint_dir` is saved as a Kiln checkpoint every `checkpoint.everyEpochs`
  (and when stopping), and the driver gets the epoch for /metrics and /status.
- `should_stop()` tells every rank, identically, whether to leave the loop (early stopping
  or a stop request such as Ctrl-C in `kiln run`).
- `get_checkpoint()` is the local directory of the newest valid checkpoint's files, or None.

Every rank must call `report` the same number of times with the same metric names,
exactly like any collective.
"""

from __future__ import annotations

import importlib
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any, Optional

from kiln_api import TrainingJob

from .checkpoints import BackgroundWriter, CheckpointInfo, CheckpointStore, is_better, serialize_state
from .data.errors import SpecError
from .early_stopping import Decision, EarlyStopping
from .evaluation import all_reduce_sum
from .training import early_stopping_state, monitored_value, outcome_of
from .worker import RunPaths, WorkerEnv

log = logging.getLogger("kiln_trainer.sdk")


class Session:
    """The SDK's per-worker state for one run of a custom entrypoint."""

    def __init__(self, job: TrainingJob, env: WorkerEnv, paths: RunPaths) -> None:
        self.job, self.env, self.paths = job, env, paths
        ck = job.spec.checkpoint
        self.store = CheckpointStore(paths.checkpoint_dir, keep=ck.keep, metric=ck.metric, mode=ck.effective_mode.value)
        self.stopper = EarlyStopping.from_spec(job.spec.early_stopping) if job.spec.early_stopping else None
        self.writer = BackgroundWriter(self.store, self._on_saved) if env.rank == 0 else None
        self.epoch = 0
        self.decision: Optional[Decision] = None
        self.interrupted = False
        self.best: Optional[dict[str, Any]] = None
        self.last_metrics: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self.resumed: Optional[CheckpointInfo] = None
        self._scratch = tempfile.mkdtemp(prefix="kiln-ckpt-")
        self._last_report = time.perf_counter()

    def resume(self) -> None:
        if not self.job.spec.checkpoint.resume:
            return
        self.resumed = self.store.latest_valid()
        if self.resumed is None:
            return
        saved = self.store.load_state(self.resumed)
        self.epoch, self.best, self.history = saved["epoch"], saved.get("best"), saved.get("history", [])
        if self.stopper is not None and saved.get("early_stopping"):
            self.stopper.load_state_dict(saved["early_stopping"])
        if self.writer is not None:
            self.writer.protected = frozenset({self.resumed.name})

    def report(self, metrics: dict[str, float], checkpoint_dir: Optional[str]) -> None:
        started = time.perf_counter()
        names = sorted(metrics)
        stop = 1.0 if self.env.stop_requested() else 0.0
        sums = all_reduce_sum([float(metrics[n]) for n in names] + [stop], self.env.device)
        world = float(self.env.world_size)
        reduced = {n: v / world for n, v in zip(names, sums[:-1], strict=True)}
        self.interrupted = sums[-1] > 0
        self.epoch += 1
        self.last_metrics = reduced
        self.history.append({"epoch": float(self.epoch), **reduced})
        if self.stopper is not None:
            self.decision = self.stopper.update(monitored_value(reduced, self.stopper.metric), self.epoch)
        stopping = self.should_stop()
        stall = 0.0
        if self.writer is not None and (self.epoch % self.job.spec.checkpoint.every_epochs == 0 or stopping):
            stall = self._checkpoint(reduced, checkpoint_dir)
        self.env.emit({"kind": "epoch", "epoch": self.epoch, "step": self.epoch, "metrics": reduced,
                       "samples_per_second": reduced.get("samples_per_second"),
                       "epoch_seconds": started - self._last_report, "checkpoint_stall_seconds": stall,
                       "early_stopping": early_stopping_state(self.stopper, self.decision)})
        self._last_report = time.perf_counter()

    def _checkpoint(self, metrics: dict[str, float], checkpoint_dir: Optional[str]) -> float:
        started = time.perf_counter()
        metric, mode = self.store.metric, self.store.mode
        value = metrics.get(metric)
        if value is not None and math.isfinite(value) and is_better(value, self.best["value"] if self.best else None, mode):
            self.best = {"metric": metric, "value": value, "epoch": self.epoch,
                         "checkpoint": f"{self.store.location}/epoch-{self.epoch:06d}"}
        state = {"epoch": self.epoch, "best": self.best, "history": self.history,
                 "early_stopping": self.stopper.state_dict() if self.stopper is not None else None}
        assert self.writer is not None
        self.writer.submit(self.epoch, serialize_state(state), step=self.epoch, metrics=metrics, user_dir=checkpoint_dir)
        return time.perf_counter() - started

    def _on_saved(self, info: CheckpointInfo, seconds: float) -> None:
        self.env.emit({"kind": "checkpoint", "epoch": info.epoch, "location": info.location, "seconds": seconds,
                       "unix_time": time.time(), "best": self.best})

    def should_stop(self) -> bool:
        return self.interrupted or bool(self.decision and self.decision.should_stop)

    def checkpoint_path(self) -> Optional[str]:
        info = self.store.latest_valid() if self.job.spec.checkpoint.resume or self.epoch > 0 else None
        if info is None:
            return None
        dest = tempfile.mkdtemp(prefix=f"epoch-{info.epoch:06d}-", dir=self._scratch)
        return self.store.fetch_user_dir(info, dest)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
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
        session.resume()
        env.emit({"kind": "started", "epoch": session.epoch, "step": session.epoch, "total_epochs": job.spec.hyperparameters.epochs,
                  "message": f"custom entrypoint {job.spec.entrypoint}", "resumed_from": session.resumed.location if session.resumed else None,
                  "history": session.history})
        fn(entrypoint_config(job, env, paths, session.epoch))
    finally:
        session.close()
        _session = None
    outcome = outcome_of(session.decision, session.interrupted)
    test_metrics = {k: v for k, v in session.last_metrics.items() if k.startswith("test_")}
    env.emit_final({"kind": "finished", "outcome": outcome, "metrics": test_metrics,
              "early_stopping": early_stopping_state(session.stopper, session.decision),
              "message": session.decision.reason if session.decision and session.decision.should_stop else None,
              "epoch": session.epoch})
