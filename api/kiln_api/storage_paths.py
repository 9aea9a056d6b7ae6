"""Where a `pvc://claim/sub/path` location is inside a pod (docs/contracts.md).

The operator mounts each claim a job names at `{PVC_MOUNT_ROOT}/<claim>` and tells the
trainer the root through `KILN_PVC_ROOT`; the trainer turns the same URLs back into
paths. Both sides parse here, so a location always means the same file.
"""

from __future__ import annotations

import posixpath

PVC_MOUNT_ROOT = "/mnt/kiln/pvc"
PVC_SCHEME = "pvc://"


def is_pvc(location: str) -> bool:
    return location.startswith(PVC_SCHEME)


def split_pvc(url: str) -> tuple[str, str]:
    """`pvc://claim/a/b/` -> (`claim`, `a/b`); raises ValueError without a claim name."""
    if not is_pvc(url):
        raise ValueError(f"{url!r}: not a {PVC_SCHEME} location")
    claim, _, path = url[len(PVC_SCHEME):].partition("/")
    if not claim:
        raise ValueError(f"{url!r}: a {PVC_SCHEME} location needs a claim name ({PVC_SCHEME}claim/path)")
    return claim, path.strip("/")


def pvc_mount_path(claim: str, root: str = PVC_MOUNT_ROOT) -> str:
    """Where the claim is mounted in the job's pods."""
    return posixpath.join(root, claim)


def pvc_local_path(url: str, root: str = PVC_MOUNT_ROOT) -> str:
    """`pvc://claim/a/b` -> `{root}/claim/a/b` (`{root}/claim` for the claim itself)."""
    claim, path = split_pvc(url)
    mount = pvc_mount_path(claim, root)
    return posixpath.join(mount, path) if path else mount


__all__ = ["PVC_MOUNT_ROOT", "PVC_SCHEME", "is_pvc", "pvc_local_path", "pvc_mount_path", "split_pvc"]
