"""Raw, durable I/O under one checkpoint location: a local/PVC directory or an fsspec URL.

Durability (local): every file is fsynced before it is renamed into place, and the directory
that holds a renamed entry is fsynced after the rename, so a power loss or a node crash never
leaves a checkpoint whose name is visible but whose bytes or directory entry are not on disk.

Errors: an OSError from the storage (EIO, ESTALE, ENOSPC, ...) is not a corrupt checkpoint and
is never treated as one; callers let it propagate (or wrap it as `StorageUnavailable`) so the
run fails and is retried (Ray Train's worker-group restart, the operator's cluster restart)
rather than silently starting over from epoch 0.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import uuid
from collections.abc import Iterator

from .storage import is_remote

log = logging.getLogger("kiln_trainer.checkpoints")

TMP_PREFIX = ".tmp-"
LOCK_FILE = ".owner.lock"


class StorageUnavailable(OSError):
    """The storage failed to answer (EIO, ESTALE, ...) while reading a checkpoint.

    Retryable: the run fails and is restarted, instead of mistaking the checkpoint for a corrupt
    one and training again from an older one (or from scratch)."""


def unavailable(what: str, exc: OSError) -> StorageUnavailable:
    code = exc.errno if exc.errno is not None else errno.EIO
    return StorageUnavailable(code, f"{what}: the checkpoint storage failed ({exc}); retrying the run later may succeed")


class Storage:
    """Files under one location; local paths get fsync and an advisory lock, URLs go through fsspec."""

    def __init__(self, location: str) -> None:
        self.location = location.rstrip("/") or "/"
        self.remote = is_remote(location)
        if self.remote:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(location)
        else:
            self.fs, self.root = None, self.location
            os.makedirs(self.root, exist_ok=True)

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def url(self, name: str) -> str:
        return f"{self.location}/{name}"

    def read(self, path: str) -> bytes:
        if self.fs is not None:
            return self.fs.cat_file(path)
        with open(path, "rb") as handle:
            return handle.read()

    def write(self, path: str, data: bytes) -> None:
        """Write a file (fsynced locally); its directory entry is made durable by the rename that follows."""
        if self.fs is not None:
            self.fs.pipe_file(path, data)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    def write_atomic(self, name: str, data: bytes) -> None:
        """Replace the file `name` at the root at once (temp file + rename + directory fsync)."""
        if self.fs is not None:
            self.fs.pipe_file(self.join(name), data)  # one object PUT: atomic on object stores
            return
        tmp = self.join(f"{TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}")
        try:
            self.write(tmp, data)
            self.rename(tmp, self.join(name))
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def rename(self, src: str, dst: str) -> None:
        """Local only: rename, then fsync the parent so the new name survives a crash."""
        os.rename(src, dst)
        fsync_dir(os.path.dirname(dst))

    def exists(self, name: str) -> bool:
        path = self.join(name)
        return bool(self.fs.exists(path)) if self.fs is not None else os.path.exists(path)

    def names(self) -> list[str]:
        if self.fs is not None:
            if not self.fs.exists(self.root):
                return []
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)]
        return os.listdir(self.root) if os.path.isdir(self.root) else []

    def remove(self, name: str) -> None:
        if self.fs is not None:
            self.fs.rm(self.join(name), recursive=True)
            return
        path = self.join(name)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def reclaim_tmp(self, keep: frozenset[str] = frozenset()) -> list[str]:
        """Delete leftover `.tmp-*` entries (a writer that died or hit a full disk mid-save)."""
        if self.fs is not None:
            return []  # object stores are written in place: no temp entries exist there
        doomed = [n for n in self.names() if n.startswith(TMP_PREFIX) and n not in keep]
        for name in doomed:
            log.warning("removing the leftover temporary checkpoint entry %s", self.join(name))
            self.remove(name)
        return doomed

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive advisory lock over the location (flock on `.owner.lock`, released when the
        process dies). Object stores have no such lock: their fence is a check, not a lock."""
        if self.fs is not None:
            yield
            return
        fd = os.open(self.join(LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:  # e.g. ENOLCK on an NFS mount without a lock manager
                log.warning("cannot lock %s (%s); the generation fence falls back to checks only", self.location, exc)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock


def fsync_dir(path: str) -> None:
    """Make a directory's entries (a rename into it) durable."""
    fd = os.open(path or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        # A few filesystems (some FUSE mounts) cannot fsync a directory at all; any other error is real.
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)
