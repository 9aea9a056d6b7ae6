"""Kiln's own checkpoints: atomic, self-validating, fenced, retained by recency and quality.

Why not Ray Train's checkpoints: Ray registers a checkpoint through `ray.train.report`,
which is throttled (see shared/README.md), and resumes only when the run name matches.
Kiln writes checkpoints itself from rank 0 and every (re)start of the training function
reads the newest valid one, so a Ray worker-group restart, an operator head restart and a
`kiln run` rerun all resume the same way.

Layout under `checkpoint.storage` (a local/PVC directory or an fsspec URL such as s3://):

    owner.json                   the job, model fingerprint and generation that own the location
                                 (checkpoint_fence.py)
    epoch-000007/state.pt        torch.save of the training state: tensors and plain values only
    epoch-000007/user/...        files a custom entrypoint handed to `report(checkpoint_dir=...)`
    epoch-000007/manifest.json   written last: epoch, step, metrics, the writer's job, fingerprint,
                                 generation and lineage, size + sha256 of every file

Locally a checkpoint is assembled (every file fsynced) in `.tmp-epoch-000007-<id>/` and renamed
into place, holding the fence's lock, after checking that this run still owns the location; the
directory is fsynced after the rename. On object stores (no atomic rename) the manifest is written
last and a directory without a matching manifest is ignored. Loading verifies sizes and hashes:
a mismatch (or an unparsable manifest) is corruption, skipped with a warning; an OSError from the
storage is not, and fails the run so that it is retried (checkpoint_io.StorageUnavailable).
`state.pt` is read with `torch.load(weights_only=True)`: nothing in storage can run code.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import pickle
import re
import shutil
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Optional

import torch
from kiln_api.timefmt import rfc3339

from .checkpoint_fence import STORAGE_FIELD, Fence, JobIdentity, StaleWriter
from .checkpoint_info import (
    PREFIX,
    CheckpointInfo,
    best_of,
    checkpoint_name,
    info_from_manifest,
    is_better,
    select_for_deletion,
)
from .checkpoint_io import TMP_PREFIX, Storage, StorageUnavailable, unavailable
from .data.errors import SpecError

log = logging.getLogger("kiln_trainer.checkpoints")

MANIFEST = "manifest.json"
STATE = "state.pt"
USER_DIR = "user"

__all__ = ["BackgroundWriter", "CheckpointInfo", "CheckpointStore", "CorruptCheckpoint", "StaleWriter",
           "StorageUnavailable", "UnsafeCheckpoint", "best_of", "checkpoint_name", "is_better", "select_for_deletion",
           "serialize_state"]


class CorruptCheckpoint(Exception):
    """A checkpoint whose files do not match its manifest."""


class UnsafeCheckpoint(SpecError):
    """A checkpoint whose state holds objects that only a full unpickler (able to run code) could load."""


def serialize_state(state: dict[str, Any]) -> bytes:
    """torch.save into memory (the background writer does it, from a snapshot.Snapshot)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


class CheckpointStore:
    """Reads and writes checkpoints under one storage location (local path or fsspec URL).

    Unfenced until `attach_fence(...).claim()` (a tool or test reading a location needs no claim);
    RunCore claims before its first write."""

    def __init__(self, location: str, keep: int = 2, metric: str = "val_loss", mode: str = "min") -> None:
        self.io = Storage(location)
        self.location = self.io.location
        self.keep, self.metric, self.mode = keep, metric, mode
        self.remote = self.io.remote
        self.fence: Optional[Fence] = None
        # Set by RunCore once it knows whether it resumed: the lineage its checkpoints continue.
        # Retention's and restoreBestWeights' "best" look only within it. None: every checkpoint.
        self.lineage: Optional[int] = None
        self._verified: dict[str, bool] = {}  # verification results by manifest digest (see _checked)

    @property
    def fs(self) -> Any:
        return self.io.fs

    @property
    def root(self) -> str:
        return self.io.root

    @root.setter
    def root(self, value: str) -> None:
        self.io.root = value

    def _join(self, *parts: str) -> str:
        return self.io.join(*parts)

    def attach_fence(self, job: JobIdentity, fingerprint: dict[str, Any], run_id: str, suggestion: str) -> Fence:
        """The fence of one run; `claim()` it (rank 0) or `inspect()` it (the other ranks)."""
        self.fence = Fence(self.io, job, fingerprint, run_id, suggestion, newest_stamp=self._newest_stamp)
        return self.fence

    def _newest_stamp(self) -> Optional[dict[str, Any]]:
        return next((i.stamp for i in reversed(self.list()) if i.stamp), None)

    # ------------------------------------------------------------------ writing

    def save(
        self,
        epoch: int,
        state: bytes | dict[str, Any] | None,
        *,
        step: int = 0,
        metrics: Optional[dict[str, float]] = None,
        user_dir: Optional[str] = None,
        user_files: Optional[dict[str, bytes]] = None,
    ) -> CheckpointInfo:
        """Write one complete checkpoint; an older one for the same epoch is replaced."""
        files: dict[str, bytes] = {}
        if state is not None:
            files[STATE] = state if isinstance(state, bytes) else serialize_state(state)
        if user_dir:
            files.update(read_tree(user_dir, USER_DIR))
        files.update(user_files or {})
        name = checkpoint_name(epoch)
        manifest = {
            "format": 1,
            "epoch": epoch,
            "step": step,
            "metrics": {k: float(v) for k, v in (metrics or {}).items()},
            "timestamp": rfc3339(),
            "files": {rel: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for rel, data in files.items()},
            **(self.fence.stamp() if self.fence is not None else {}),
            **({"lineage": self.lineage} if self.lineage is not None else {}),
        }
        try:
            if self.remote:
                self._save_remote(name, files, manifest)
            else:
                self._save_local(name, files, manifest)
        except OSError as exc:
            # A write that failed because another driver took over (and reclaimed our temp
            # directory) is a stale writer, not a storage fault.
            if self.fence is not None and self.fence.generation is not None:
                self.fence.check_current(f"saving {name} failed: {exc}")
            raise
        info = info_from_manifest(name, self.io.url(name), json.loads(json.dumps(manifest)))
        self._verified[_digest(info)] = True  # just written and fsynced from these very bytes
        return info

    def _guard(self, action: str) -> Any:
        return self.fence.guard(action) if self.fence is not None else contextlib.nullcontext()

    def _save_local(self, name: str, files: dict[str, bytes], manifest: dict[str, Any]) -> None:
        tmp_name = f"{TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
        tmp, final = self.io.join(tmp_name), self.io.join(name)
        try:
            for rel, data in files.items():
                self.io.write(f"{tmp}/{rel}", data)
            self.io.write(f"{tmp}/{MANIFEST}", json.dumps(manifest).encode())
            with self._guard(f"renaming {name} into place"):
                if os.path.exists(final):
                    trash = self.io.join(f"{TMP_PREFIX}old-{name}-{uuid.uuid4().hex[:8]}")
                    self.io.rename(final, trash)
                    self.io.rename(tmp, final)
                    shutil.rmtree(trash, ignore_errors=True)
                else:
                    self.io.rename(tmp, final)
        finally:
            # After a failure (a full disk, a stale writer) nothing of this save may stay behind.
            shutil.rmtree(tmp, ignore_errors=True)

    def _save_remote(self, name: str, files: dict[str, bytes], manifest: dict[str, Any]) -> None:
        with self._guard(f"replacing {name}"):
            if name in self.io.names():
                self.io.remove(name)
        for rel, data in files.items():
            self.io.write(self.io.join(name, rel), data)
        with self._guard(f"committing {name}"):  # the manifest makes the checkpoint visible
            self.io.write(self.io.join(name, MANIFEST), json.dumps(manifest).encode())

    def prune(self, protected: frozenset[str] = frozenset()) -> list[str]:
        """Apply retention over the verified checkpoints and delete corrupt ones; returns the names deleted."""
        verified, corrupt = [], []
        for info in self.list():
            (verified if self._checked(info) else corrupt).append(info)
        doomed = select_for_deletion(verified, self.keep, self.metric, self.mode, protected, self.lineage)
        for info in corrupt:
            log.warning("deleting corrupt checkpoint %s: it can never be resumed from", info.location)
            doomed.append(info.name)
        if doomed:
            with self._guard(f"pruning {', '.join(doomed)}"):
                for name in doomed:
                    self.io.remove(name)
        return doomed

    # ------------------------------------------------------------------ reading

    def list(self) -> list[CheckpointInfo]:
        """Checkpoints with a readable manifest, oldest first (file contents not yet verified)."""
        infos = []
        for name in sorted(self.io.names()):
            if not name.startswith(PREFIX):
                continue
            try:
                manifest = json.loads(self.io.read(self.io.join(name, MANIFEST)))
                infos.append(info_from_manifest(name, self.io.url(name), manifest))
            except FileNotFoundError as exc:
                log.warning("skipping checkpoint %s: no readable manifest (%s)", self.io.url(name), exc)
            except OSError as exc:
                raise unavailable(f"reading {self.io.url(name)}/{MANIFEST}", exc) from exc
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("skipping checkpoint %s: no readable manifest (%s)", self.io.url(name), exc)
        return sorted(infos, key=lambda i: i.recency)

    def verify(self, info: CheckpointInfo) -> None:
        """Raise CorruptCheckpoint unless every file matches the manifest's size and hash;
        StorageUnavailable when the storage cannot say."""
        for rel, expected in info.files.items():
            try:
                data = self.io.read(self.io.join(info.name, rel))
            except FileNotFoundError as exc:
                raise CorruptCheckpoint(f"{rel} is missing") from exc
            except OSError as exc:
                raise unavailable(f"verifying {info.location}/{rel}", exc) from exc
            if len(data) != expected["size"]:
                raise CorruptCheckpoint(f"{rel} has {len(data)} bytes, manifest says {expected['size']}")
            if hashlib.sha256(data).hexdigest() != expected["sha256"]:
                raise CorruptCheckpoint(f"{rel} does not match its sha256")

    def _checked(self, info: CheckpointInfo) -> bool:
        """Whether `info` verifies, remembered per manifest so retention reads each checkpoint once."""
        key = _digest(info)
        if key not in self._verified:
            try:
                self.verify(info)
                self._verified[key] = True
            except CorruptCheckpoint as exc:
                log.warning("checkpoint %s is corrupt (%s)", info.location, exc)
                self._verified[key] = False
        return self._verified[key]

    def load_state(self, info: CheckpointInfo, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """The saved state, unpickled with torch's weights-only unpickler: tensors and plain values only."""
        try:
            data = self.io.read(self.io.join(info.name, STATE))
        except OSError as exc:
            raise unavailable(f"reading {info.location}/{STATE}", exc) from exc
        try:
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"WeightsUnpickler error: (.*?)(?: was not an allowed global|$)", str(exc), re.M)
            raise UnsafeCheckpoint(
                STORAGE_FIELD,
                f"{info.location}/{STATE} holds more than tensors and plain values "
                f"({found.group(1) if found else 'unsupported pickle content'}); Kiln never unpickles code from "
                "checkpoint storage. If this job did not write it, the storage was tampered with: remove that "
                "checkpoint (or use a clean location) and run again",
            ) from None

    def latest_valid(self) -> Optional[CheckpointInfo]:
        """The newest checkpoint that verifies; corrupt newer ones are skipped with a warning, while a
        storage error (StorageUnavailable) propagates: it says nothing about the checkpoint."""
        for info in reversed(self.list()):
            try:
                self.verify(info)
            except CorruptCheckpoint as exc:
                self._verified[_digest(info)] = False
                log.warning("skipping corrupt checkpoint %s (%s); trying the previous one", info.location, exc)
                continue
            self._verified[_digest(info)] = True
            return info
        return None

    def best(self) -> Optional[CheckpointInfo]:
        infos = [i for i in self.list() if self.lineage is None or i.lineage == self.lineage]
        return best_of([i for i in infos if self._checked(i)], self.metric, self.mode)

    def fetch_user_dir(self, info: CheckpointInfo, dest: str) -> str:
        """Copy a checkpoint's user files into `dest` (a local directory) and return it."""
        os.makedirs(dest, exist_ok=True)
        for rel in info.files:
            if rel.startswith(USER_DIR + "/"):
                target = os.path.join(dest, rel[len(USER_DIR) + 1 :])
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "wb") as handle:
                    handle.write(self.io.read(self.io.join(info.name, rel)))
        return dest


def read_tree(directory: str, prefix: str) -> dict[str, bytes]:
    files = {}
    for base, _dirs, names in os.walk(directory):
        for filename in names:
            path = os.path.join(base, filename)
            rel = os.path.relpath(path, directory).replace(os.sep, "/")
            with open(path, "rb") as handle:
                files[f"{prefix}/{rel}"] = handle.read()
    return files


def _digest(info: CheckpointInfo) -> str:
    return hashlib.sha256(json.dumps([info.name, info.timestamp, info.run, info.files], sort_keys=True).encode()).hexdigest()


class BackgroundWriter:
    """Serialises and writes checkpoints on one background thread, so the training loop only pays
    for copying its state (snapshot.Snapshotter).

    At most one write is in flight: `submit` first waits for the previous one, which bounds
    memory to one state and keeps checkpoints in epoch order. `state` is a Snapshot (serialised
    here, in the background), already serialised bytes, or None (user files only).
    """

    def __init__(self, store: CheckpointStore, on_saved: Callable[[CheckpointInfo, float], None]) -> None:
        self.store = store
        self.on_saved = on_saved
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kiln-ckpt")
        self._pending: Optional[Future[CheckpointInfo]] = None
        self.protected: frozenset[str] = frozenset()

    def submit(
        self, epoch: int, state: Any, *, step: int, metrics: dict[str, float], user_dir: Optional[str] = None
    ) -> None:
        self.wait()
        # User files are read now: the caller may delete its directory as soon as report() returns.
        user_files = read_tree(user_dir, USER_DIR) if user_dir else None
        self._pending = self._pool.submit(self._write, epoch, state, step, metrics, user_files)

    def _write(
        self, epoch: int, state: Any, step: int, metrics: dict[str, float], user_files: Optional[dict[str, bytes]]
    ) -> CheckpointInfo:
        started = time.perf_counter()
        if state is not None and not isinstance(state, bytes):
            with state.materialized() as plain:
                state = serialize_state(plain)
        info = self.store.save(epoch, state, step=step, metrics=metrics, user_files=user_files)
        self.store.prune(self.protected)
        self.on_saved(info, time.perf_counter() - started)
        return info

    def wait(self) -> Optional[CheckpointInfo]:
        """Block until the in-flight write (if any) is done; re-raises its error."""
        pending, self._pending = self._pending, None
        return pending.result() if pending is not None else None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
