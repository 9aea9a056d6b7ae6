"""Kiln's own checkpoints: atomic, self-validating, retained by recency and quality.

Why not Ray Train's checkpoints: Ray registers a checkpoint through `ray.train.report`,
which is throttled (see shared/README.md), and resumes only when the run name matches.
Kiln writes checkpoints itself from rank 0 and every (re)start of the training function
reads the newest valid one, so a Ray worker-group restart, an operator head restart and a
`kiln run` rerun all resume the same way.

Layout under `checkpoint.storage` (a local/PVC directory or an fsspec URL such as s3://):

    epoch-000007/state.pt        torch.save of the complete training state
    epoch-000007/user/...        files a custom entrypoint handed to `report(checkpoint_dir=...)`
    epoch-000007/manifest.json   written last: epoch, step, metrics, size + sha256 of every file

Locally a checkpoint is assembled in `.tmp-epoch-000007-<id>/` and renamed into place, so
a half-written one is never visible under its final name. On object stores (no atomic
rename) the manifest is written last and a directory without a matching manifest is
ignored. Loading verifies sizes and hashes; a truncated or corrupt newest checkpoint is
skipped with a warning and the previous one used.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from kiln_api.timefmt import rfc3339

from .storage import is_remote

log = logging.getLogger("kiln_trainer.checkpoints")

PREFIX = "epoch-"
TMP_PREFIX = ".tmp-"
MANIFEST = "manifest.json"
STATE = "state.pt"
USER_DIR = "user"


class CorruptCheckpoint(Exception):
    """A checkpoint whose files do not match its manifest."""


@dataclass(frozen=True)
class CheckpointInfo:
    """One complete checkpoint, as described by its manifest."""

    name: str
    location: str
    epoch: int
    step: int
    metrics: dict[str, float]
    timestamp: str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def value(self, metric: str) -> Optional[float]:
        value = self.metrics.get(metric)
        return None if value is None or not math.isfinite(value) else float(value)


def checkpoint_name(epoch: int) -> str:
    return f"{PREFIX}{epoch:06d}"


def is_better(a: Optional[float], b: Optional[float], mode: str) -> bool:
    """Whether metric value `a` beats `b` (None never beats anything)."""
    if a is None:
        return False
    if b is None:
        return True
    return a < b if mode == "min" else a > b


def best_of(infos: list[CheckpointInfo], metric: str, mode: str) -> Optional[CheckpointInfo]:
    """The checkpoint with the best `metric`; the earliest wins a tie."""
    best: Optional[CheckpointInfo] = None
    for info in sorted(infos, key=lambda i: i.epoch):
        if is_better(info.value(metric), best.value(metric) if best else None, mode):
            best = info
    return best


def select_for_deletion(
    infos: list[CheckpointInfo], keep: int, metric: str, mode: str, protected: frozenset[str] = frozenset()
) -> list[str]:
    """Names to delete: everything except the newest `keep`, the best by `metric`, and `protected`."""
    newest = sorted(infos, key=lambda i: i.epoch, reverse=True)
    kept = {info.name for info in newest[:keep]}
    best = best_of(infos, metric, mode)
    if best is not None:
        kept.add(best.name)
    return [info.name for info in newest if info.name not in kept and info.name not in protected]


def serialize_state(state: dict[str, Any]) -> bytes:
    """torch.save into memory: the only part of a checkpoint that must stop training."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


class CheckpointStore:
    """Reads and writes checkpoints under one storage location (local path or fsspec URL)."""

    def __init__(self, location: str, keep: int = 2, metric: str = "val_loss", mode: str = "min") -> None:
        self.location = location.rstrip("/") or "/"
        self.keep = keep
        self.metric = metric
        self.mode = mode
        self.remote = is_remote(location)
        if self.remote:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(location)
        else:
            self.fs, self.root = None, self.location
            os.makedirs(self.root, exist_ok=True)

    # ------------------------------------------------------------------ paths and raw I/O

    def _join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def _url(self, name: str) -> str:
        return f"{self.location}/{name}"

    def _read(self, path: str) -> bytes:
        if self.fs is not None:
            return self.fs.cat_file(path)
        with open(path, "rb") as handle:
            return handle.read()

    def _write(self, path: str, data: bytes) -> None:
        if self.fs is not None:
            self.fs.pipe_file(path, data)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    def _names(self) -> list[str]:
        if self.fs is not None:
            if not self.fs.exists(self.root):
                return []
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)]
        return os.listdir(self.root) if os.path.isdir(self.root) else []

    def _remove(self, name: str) -> None:
        if self.fs is not None:
            self.fs.rm(self._join(name), recursive=True)
        else:
            shutil.rmtree(self._join(name), ignore_errors=True)

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
        }
        if self.remote:
            self._save_remote(name, files, manifest)
        else:
            self._save_local(name, files, manifest)
        return _info_from_manifest(name, self._url(name), manifest)

    def _save_local(self, name: str, files: dict[str, bytes], manifest: dict[str, Any]) -> None:
        tmp = self._join(f"{TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}")
        for rel, data in files.items():
            self._write(f"{tmp}/{rel}", data)
        self._write(f"{tmp}/{MANIFEST}", json.dumps(manifest).encode())
        final = self._join(name)
        if os.path.exists(final):
            trash = self._join(f"{TMP_PREFIX}old-{name}-{uuid.uuid4().hex[:8]}")
            os.rename(final, trash)
            os.rename(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, final)

    def _save_remote(self, name: str, files: dict[str, bytes], manifest: dict[str, Any]) -> None:
        if name in self._names():
            self._remove(name)
        for rel, data in files.items():
            self._write(self._join(name, rel), data)
        self._write(self._join(name, MANIFEST), json.dumps(manifest).encode())

    def prune(self, protected: frozenset[str] = frozenset()) -> list[str]:
        """Apply retention; returns the names deleted."""
        doomed = select_for_deletion(self.list(), self.keep, self.metric, self.mode, protected)
        for name in doomed:
            self._remove(name)
        return doomed

    # ------------------------------------------------------------------ reading

    def list(self) -> list[CheckpointInfo]:
        """Checkpoints with a readable manifest, oldest first (file contents not yet verified)."""
        infos = []
        for name in sorted(self._names()):
            if not name.startswith(PREFIX):
                continue
            try:
                manifest = json.loads(self._read(self._join(name, MANIFEST)))
                infos.append(_info_from_manifest(name, self._url(name), manifest))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("skipping checkpoint %s: no readable manifest (%s)", self._url(name), exc)
        return sorted(infos, key=lambda i: i.epoch)

    def verify(self, info: CheckpointInfo) -> None:
        """Raise CorruptCheckpoint unless every file matches the manifest's size and hash."""
        for rel, expected in info.files.items():
            try:
                data = self._read(self._join(info.name, rel))
            except OSError as exc:
                raise CorruptCheckpoint(f"{rel} unreadable: {exc}") from exc
            if len(data) != expected["size"]:
                raise CorruptCheckpoint(f"{rel} has {len(data)} bytes, manifest says {expected['size']}")
            if hashlib.sha256(data).hexdigest() != expected["sha256"]:
                raise CorruptCheckpoint(f"{rel} does not match its sha256")

    def load_state(self, info: CheckpointInfo, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        data = self._read(self._join(info.name, STATE))
        # Our own files in the job's own storage: full unpickling is needed for scheduler states.
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)

    def latest_valid(self) -> Optional[CheckpointInfo]:
        """The newest checkpoint that verifies; broken newer ones are skipped with a warning."""
        for info in reversed(self.list()):
            try:
                self.verify(info)
                return info
            except CorruptCheckpoint as exc:
                log.warning("skipping corrupt checkpoint %s (%s); trying the previous one", info.location, exc)
        return None

    def best(self) -> Optional[CheckpointInfo]:
        return best_of(self.list(), self.metric, self.mode)

    def fetch_user_dir(self, info: CheckpointInfo, dest: str) -> str:
        """Copy a checkpoint's user files into `dest` (a local directory) and return it."""
        os.makedirs(dest, exist_ok=True)
        for rel in info.files:
            if rel.startswith(USER_DIR + "/"):
                target = os.path.join(dest, rel[len(USER_DIR) + 1 :])
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "wb") as handle:
                    handle.write(self._read(self._join(info.name, rel)))
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


def _info_from_manifest(name: str, location: str, manifest: dict[str, Any]) -> CheckpointInfo:
    return CheckpointInfo(
        name=name,
        location=location,
        epoch=int(manifest["epoch"]),
        step=int(manifest.get("step", 0)),
        metrics={k: float(v) for k, v in manifest.get("metrics", {}).items()},
        timestamp=str(manifest.get("timestamp", "")),
        files=dict(manifest.get("files", {})),
    )


class BackgroundWriter:
    """Writes checkpoints on one background thread so the training loop only pays for serialising.

    At most one write is in flight: `submit` first waits for the previous one, which bounds
    memory to one serialised state and keeps checkpoints in epoch order.
    """

    def __init__(self, store: CheckpointStore, on_saved: Callable[[CheckpointInfo, float], None]) -> None:
        self.store = store
        self.on_saved = on_saved
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kiln-ckpt")
        self._pending: Optional[Future[CheckpointInfo]] = None
        self.protected: frozenset[str] = frozenset()

    def submit(
        self, epoch: int, state: Optional[bytes], *, step: int, metrics: dict[str, float], user_dir: Optional[str] = None
    ) -> None:
        self.wait()
        # User files are read now: the caller may delete its directory as soon as report() returns.
        user_files = read_tree(user_dir, USER_DIR) if user_dir else None
        self._pending = self._pool.submit(self._write, epoch, state, step, metrics, user_files)

    def _write(
        self, epoch: int, state: Optional[bytes], step: int, metrics: dict[str, float], user_files: Optional[dict[str, bytes]]
    ) -> CheckpointInfo:
        started = time.perf_counter()
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
