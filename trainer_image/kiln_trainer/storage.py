"""Where files live: local paths, PVC mounts and S3, behind one small interface.

`pvc://claim/path` is a volume the operator mounts at `{pvc_root}/claim`, so inside a
pod it is an ordinary path. `s3://` goes through fsspec (s3fs must be installed).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any
from urllib.parse import urlparse

from kiln_api.storage_paths import PVC_MOUNT_ROOT, is_pvc, pvc_local_path

REMOTE_SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "http", "https", "memory")


def resolve_location(uri: str, pvc_root: str = PVC_MOUNT_ROOT) -> str:
    """Turn a storage URL into something `open_file` can open.

    pvc://claim/a/b -> {pvc_root}/claim/a/b; file:///x -> /x; s3://... unchanged;
    a plain path gets `~` expanded.
    """
    if is_pvc(uri):
        return pvc_local_path(uri, pvc_root)
    if uri.startswith("file://"):
        return urlparse(uri).path or "/"
    if is_remote(uri):
        return uri
    return os.path.expanduser(uri)


def is_remote(location: str) -> bool:
    """True for object-store/HTTP URLs that must go through fsspec."""
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme.lower() in REMOTE_SCHEMES


@contextmanager
def open_file(location: str, mode: str = "rb") -> Iterator[IO[Any]]:
    """Open a resolved location for reading or writing; remote URLs go through fsspec."""
    if is_remote(location):
        import fsspec

        with fsspec.open(location, mode) as handle:
            yield handle
    else:
        with open(location, mode) as handle:
            yield handle


def filesystem(location: str) -> tuple[Any, str]:
    """(fsspec filesystem, path) for a resolved location: the local filesystem for a path. ValueError
    naming the location when this machine has no filesystem for its scheme (s3fs not installed)."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(location)
    except (ImportError, ValueError) as exc:
        raise ValueError(f"{location}: cannot open it here ({exc})") from None


def exists(location: str) -> bool:
    """Whether a resolved location (file or directory) exists."""
    if is_remote(location):
        import fsspec

        fs, path = fsspec.core.url_to_fs(location)
        return bool(fs.exists(path))
    return os.path.exists(location)
