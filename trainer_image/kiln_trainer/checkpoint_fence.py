"""Who may write a checkpoint location: the job it belongs to, and one driver of it at a time.

`<storage>/owner.json` (written atomically, under an flock on `<storage>/.owner.lock` locally):

    {"format": 1,
     "job": {"namespace": "default", "name": "digits", "uid": "..."},   # uid: on a cluster only
     "fingerprint": {...},         # what must match to resume (see `model_fingerprint`)
     "generation": 3,              # +1 at every claim by a new driver run
     "run": "9f0c...",             # the claiming driver's run id (one per driver process)
     "claimedAt": "...", "host": "...",
     "superseded": [{"run": "...", "generation": 2}, ...]}   # the latest earlier claimants

A job's rank 0 claims the location as it starts (`Fence.claim`); the other ranks only read it
(`Fence.inspect`), so every rank refuses a foreign location identically. Then:

- The job (namespace/name, and uid where both sides have one) and the fingerprint must match the
  record, or the newest checkpoint's manifest when there is no record: else `CheckpointMismatch`,
  a SpecError (the job ends Failed/InvalidSpec) that names both jobs or what differs. It refuses
  even with `checkpoint.resume: false`: starting fresh would let retention delete the other
  job's checkpoints.
- A new run takes over with generation + 1 and lists the previous run as superseded; the same run
  claiming again (a Ray Train worker-group restart) keeps its generation; a run listed as
  superseded is a stale driver (its cluster was replaced) and gets `StaleWriter`.
- Every rename and every prune of the claimant first checks, holding the lock, that the record
  still names it (`Fence.guard`); a stale writer stops with `StaleWriter` naming both generations.

Why a counter in storage rather than the operator's restart count: the counter also orders runs
that the restart count does not tell apart (suspend and resume, two `kiln run`s of one job), and
a driver's run id in `superseded` fences an old cluster even when its Ray Train worker group
restarts after the new one claimed. Object stores have no lock: there the checks are best effort.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Optional

from kiln_api.timefmt import rfc3339

from .checkpoint_io import Storage, unavailable
from .data.errors import SpecError

log = logging.getLogger("kiln_trainer.checkpoints")

FENCE_FILE = "owner.json"
STORAGE_FIELD = "spec.checkpoint.storage"
MAX_SUPERSEDED = 32
MAX_LISTED_DIFFERENCES = 3


class StaleWriter(RuntimeError):
    """Another driver run of this job claimed the checkpoint location after this one."""


class CheckpointMismatch(SpecError):
    """The checkpoint location belongs to another job, or to this job with another model or data."""

    def __init__(self, message: str) -> None:
        super().__init__(STORAGE_FIELD, message)


@dataclass(frozen=True)
class JobIdentity:
    """Which job a checkpoint belongs to: namespace/name, and the uid on a cluster."""

    namespace: str
    name: str
    uid: Optional[str] = None

    @classmethod
    def from_json(cls, data: Any) -> Optional[JobIdentity]:
        if not isinstance(data, dict) or not data.get("name"):
            return None
        uid = data.get("uid")
        return cls(str(data.get("namespace") or "default"), str(data["name"]), str(uid) if uid else None)

    def to_json(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "uid": self.uid}

    def describe(self) -> str:
        return f"{self.namespace}/{self.name}" + (f" (uid {self.uid})" if self.uid else "")

    def same_job(self, other: JobIdentity) -> bool:
        # `kiln run` has no uid: a job run locally and then on a cluster is still one job.
        same_uid = not self.uid or not other.uid or self.uid == other.uid
        return (self.namespace, self.name) == (other.namespace, other.name) and same_uid


def model_fingerprint(state: dict[str, Any], input_shape: tuple[int, ...], outputs: int, task: str) -> dict[str, Any]:
    """What must match to resume a built-in model: its tensors' names and shapes, the data's shape and task."""
    return {
        "kind": "builtin",
        "task": task,
        "inputShape": [int(d) for d in input_shape],
        "outputs": int(outputs),
        "tensors": {name: [int(d) for d in value.shape] for name, value in state.items()},
    }


def entrypoint_fingerprint(entrypoint: Optional[str]) -> dict[str, Any]:
    """Custom code: Kiln cannot see its model, so only the entrypoint must match."""
    return {"kind": "entrypoint", "entrypoint": entrypoint or ""}


def fingerprint_differences(theirs: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """Readable differences between a stored fingerprint and this run's (empty when they match)."""
    out = [f"{key} is {theirs.get(key)!r} there, {ours.get(key)!r} now"
           for key in sorted((theirs.keys() | ours.keys()) - {"tensors"}) if theirs.get(key) != ours.get(key)]
    old, new = theirs.get("tensors") or {}, ours.get("tensors") or {}
    tensors = [f"model tensor {k!r} is {old[k]} there, {new[k]} now" for k in new if k in old and old[k] != new[k]]
    tensors += [f"model tensor {k!r} is new" for k in new if k not in old]
    tensors += [f"model tensor {k!r} is gone" for k in old if k not in new]
    if len(tensors) > MAX_LISTED_DIFFERENCES:
        tensors = [*tensors[:MAX_LISTED_DIFFERENCES], f"{len(tensors) - MAX_LISTED_DIFFERENCES} more tensor differences"]
    return out + tensors


def normalised(value: dict[str, Any]) -> dict[str, Any]:
    """The value as it reads back from JSON (tuples become lists), so comparisons are like for like."""
    return json.loads(json.dumps(value))


class Fence:
    """One run's claim on a checkpoint location (see the module docstring)."""

    def __init__(
        self,
        storage: Storage,
        job: JobIdentity,
        fingerprint: dict[str, Any],
        run_id: str,
        suggestion: str,
        newest_stamp: Callable[[], Optional[dict[str, Any]]] = lambda: None,
    ) -> None:
        self.storage, self.job, self.run_id = storage, job, run_id
        self.fingerprint = normalised(fingerprint)
        self.suggestion = suggestion  # a per-job location to propose when refusing
        self.newest_stamp = newest_stamp  # the newest checkpoint's {"job", "fingerprint"}, when there is no record
        self.generation: Optional[int] = None  # set by claim()

    # ------------------------------------------------------------------ the record

    def read_record(self) -> Optional[dict[str, Any]]:
        """owner.json, or None when absent or unreadable as JSON (an OSError is the storage failing)."""
        try:
            data = self.storage.read(self.storage.join(FENCE_FILE))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise unavailable(f"{self.storage.url(FENCE_FILE)}", exc) from exc
        try:
            record = json.loads(data)
        except ValueError:
            log.warning("%s is not valid JSON; treating the location as unclaimed", self.storage.url(FENCE_FILE))
            return None
        return record if isinstance(record, dict) else None

    def stamp(self) -> dict[str, Any]:
        """What every manifest written under this claim carries."""
        return {"job": self.job.to_json(), "fingerprint": self.fingerprint, "generation": self.generation or 0,
                "run": self.run_id}

    # ------------------------------------------------------------------ start of a run

    def inspect(self) -> None:
        """Every rank: refuse a location that belongs to another job, or to this job with another model."""
        record = self.read_record()
        self.check_belongs(record if record is not None else self.newest_stamp(), self.storage.location)

    def claim(self) -> int:
        """Rank 0: take the location over for this run (see the module docstring); returns the generation."""
        with self.storage.lock():
            record = self.read_record()
            self.check_belongs(record if record is not None else self.newest_stamp(), self.storage.location)
            if record is not None and record.get("run") == self.run_id:
                self.generation = int(record.get("generation", 0))
            else:
                self._take_over(record)
            # Nothing of another writer's can be in flight now (they are fenced): temp entries are debris.
            self.storage.reclaim_tmp()
        log.info("claimed %s for job %s: generation %d (run %s)", self.storage.location, self.job.describe(),
                 self.generation, self.run_id[:8])
        return int(self.generation or 0)

    def _take_over(self, record: Optional[dict[str, Any]]) -> None:
        superseded = list(record.get("superseded") or []) if record else []
        mine = next((s for s in superseded if isinstance(s, dict) and s.get("run") == self.run_id), None)
        if mine is not None:
            raise StaleWriter(self._stale_message(int(mine.get("generation", 0)), record, "start"))
        previous = int(record.get("generation", 0)) if record else 0
        if record and record.get("run"):
            superseded.append({"run": record["run"], "generation": previous})
        self.generation = previous + 1
        new = {"format": 1, "job": self.job.to_json(), "fingerprint": self.fingerprint, "generation": self.generation,
               "run": self.run_id, "claimedAt": rfc3339(), "host": socket.gethostname(),
               "superseded": superseded[-MAX_SUPERSEDED:]}
        self.storage.write_atomic(FENCE_FILE, json.dumps(new, indent=1).encode())

    def check_belongs(self, stamp: Optional[dict[str, Any]], where: str) -> None:
        """Raise CheckpointMismatch unless `stamp` (a record or a manifest) is this job's, same fingerprint."""
        if not stamp:
            return
        theirs = JobIdentity.from_json(stamp.get("job"))
        if theirs is not None and not theirs.same_job(self.job):
            raise CheckpointMismatch(
                f"{where} holds the checkpoints of job {theirs.describe()}, not of this job {self.job.describe()}; "
                f"a job never resumes (nor prunes) another job's checkpoints. Give every job a location of its own, "
                f"e.g. the per-job sub-path {self.suggestion}"
            )
        fingerprint = stamp.get("fingerprint")
        differences = fingerprint_differences(fingerprint, self.fingerprint) if isinstance(fingerprint, dict) else []
        if differences:
            raise CheckpointMismatch(
                f"{where} holds checkpoints of job {self.job.describe()} for another model or data "
                f"({'; '.join(differences)}); resuming needs the same model, input shape, outputs and task. "
                f"Train the changed job in a new location (e.g. {self.suggestion}-2) or delete the old checkpoints; "
                f"they are kept even with checkpoint.resume: false, which would otherwise prune them"
            )

    # ------------------------------------------------------------------ every write

    @contextlib.contextmanager
    def guard(self, action: str) -> Iterator[None]:
        """Hold the lock and make sure this run still owns the location while `action` runs."""
        if self.generation is None:
            raise RuntimeError("Fence.guard before Fence.claim")
        with self.storage.lock():
            self.check_current(action)
            yield

    def check_current(self, action: str) -> None:
        record = self.read_record()
        if record is None or record.get("run") != self.run_id or int(record.get("generation", -1)) != self.generation:
            raise StaleWriter(self._stale_message(int(self.generation or 0), record, action))

    def _stale_message(self, mine: int, record: Optional[dict[str, Any]], action: str) -> str:
        if record is None:
            theirs = f"{self.storage.url(FENCE_FILE)} is gone"
        else:
            theirs = (f"generation {record.get('generation')} (run {str(record.get('run'))[:8]}, claimed "
                      f"{record.get('claimedAt', '?')} on {record.get('host', '?')}) now owns it")
        return (f"checkpoint storage {self.storage.location}: this run of job {self.job.describe()} is generation {mine} "
                f"(run {self.run_id[:8]}) but {theirs}; another driver of this job took over, so this one stops "
                f"without touching the storage (refused: {action})")
