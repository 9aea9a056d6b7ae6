"""Where files live: local paths, PVC mounts and S3, behind one small interface.

`pvc://claim/path` is a volume the operator mounts at `{pvc_root}/claim`, so inside a
pod it is an ordinary path. `s3://` goes through fsspec (s3fs must be installed).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any
from urllib.parse import urlparse

from kiln_api.storage_paths import PVC_MOUNT_ROOT, is_pvc, pvc_local_path

REMOTE_SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "http", "https", "memory")


def pvc_root_from(environ: Mapping[str, str]) -> str:
    """Where pvc:// claims are mounted: $KILN_PVC_ROOT (kiln run, kiln predict on a laptop), else
    where the operator mounts them in a pod."""
    return environ.get("KILN_PVC_ROOT", PVC_MOUNT_ROOT)


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


def file_size(location: str) -> int | None:
    """The size of the file at a resolved location; None when there is no file there (a folder is
    none). ImportError or OSError when its object store cannot be reached (s3fs not installed, no
    credentials, access denied): not the same as a missing file."""
    if not is_remote(location):
        return os.path.getsize(location) if os.path.isfile(location) else None
    import fsspec

    fs, path = fsspec.core.url_to_fs(location)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    return int(info.get("size") or 0) if info.get("type") == "file" else None


def is_dir(location: str) -> bool:
    """Whether a resolved location is a folder (an object store's prefix)."""
    if is_remote(location):
        import fsspec

        fs, path = fsspec.core.url_to_fs(location)
        return bool(fs.isdir(path))
    return os.path.isdir(location)


def files_under(location: str) -> list[str]:
    """Every file under a resolved folder, recursively, sorted, as locations `open_file` opens."""
    if not is_remote(location):
        return sorted(os.path.join(root, name) for root, _, names in os.walk(location) for name in names)
    import fsspec

    fs, path = fsspec.core.url_to_fs(location)
    return sorted(fs.unstrip_protocol(found) for found in fs.find(path))


def exists(location: str) -> bool:
    """Whether a resolved location (file or directory) exists."""
    if is_remote(location):
        import fsspec

        fs, path = fsspec.core.url_to_fs(location)
        return bool(fs.exists(path))
    return os.path.exists(location)
