"""Pure translation of a Pod into what the process runtime needs (`LaunchPlan`).

Refuses, with a `PodSpecError` naming the field, anything the test kubelet cannot honour,
rather than running a pod that behaves differently from the cluster. Accepted but not
enforced (documented gaps): CPU/memory requests and limits (one shared host; the node is
deliberately overcommitted), GPU limits (CPU training with gloo), seccomp profiles,
`capabilities.drop` beyond what dropping root already drops, image and imagePullPolicy
(every "image" is this checkout's virtualenv).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .envvars import PodSpecError, container_argv, container_env, parse_quantity

Obj = dict[str, Any]
VENV_BIN = str(Path(sys.executable).parent)
IMAGE_PATH = f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SUPPORTED_VOLUMES = ("emptyDir", "persistentVolumeClaim", "secret", "configMap")
NODE_LABELS = {"kubernetes.io/hostname": "kiln-test-node", "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}


@dataclass
class Mount:
    target: str
    source: str | None = None  # host path; None for tmpfs
    tmpfs: str | None = None  # tmpfs mount options
    read_only: bool = False
    is_file: bool = False

    def to_json(self) -> Obj:
        return {"target": self.target, "source": self.source, "tmpfs": self.tmpfs,
                "readOnly": self.read_only, "file": self.is_file}


@dataclass
class LaunchPlan:
    argv: list[str]
    env: dict[str, str]
    mounts: list[Mount] = field(default_factory=list)
    user: int | None = None
    group: int | None = None
    groups: list[int] = field(default_factory=list)
    no_new_privs: bool = False
    working_dir: str | None = None
    termination_path: str = "/dev/termination-log"
    termination_policy: str = "File"
    grace_seconds: float = 30.0


def only_container(pod: Obj) -> Obj:
    spec = pod.get("spec") or {}
    if spec.get("initContainers"):
        raise PodSpecError("spec.initContainers are not supported by the test kubelet")
    if spec.get("ephemeralContainers"):
        raise PodSpecError("spec.ephemeralContainers are not supported by the test kubelet")
    containers = spec.get("containers") or []
    if len(containers) != 1:
        raise PodSpecError(f"spec.containers: the test kubelet runs exactly one container per pod, got {len(containers)}")
    if spec.get("restartPolicy", "Always") != "Never":
        raise PodSpecError(f"spec.restartPolicy {spec.get('restartPolicy', 'Always')!r}: only Never is supported by the test kubelet")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            raise PodSpecError(f"spec.{key} is not supported by the test kubelet")
    return containers[0]


def unschedulable_reason(pod: Obj) -> str | None:
    """Why the single test node cannot take the pod (None if it can)."""
    selector = (pod.get("spec") or {}).get("nodeSelector") or {}
    missing = {k: v for k, v in selector.items() if NODE_LABELS.get(k) != v}
    if missing:
        return f"0/1 nodes are available: node(s) didn't match Pod's node affinity/selector {missing}"
    return None


def identity(pod: Obj, container: Obj) -> tuple[int | None, int | None, list[int], bool]:
    """(uid, gid, supplementary groups, no_new_privs) from the pod and container security contexts."""
    pod_ctx = (pod.get("spec") or {}).get("securityContext") or {}
    ctx = {**pod_ctx, **(container.get("securityContext") or {})}
    if ctx.get("privileged"):
        raise PodSpecError(f"containers[{container.get('name')}].securityContext.privileged is not supported")
    user = ctx.get("runAsUser")
    if ctx.get("runAsNonRoot") and not user:
        raise PodSpecError("securityContext.runAsNonRoot needs runAsUser here (no image metadata to read the user from)")
    group = ctx.get("runAsGroup", user)
    groups = [int(g) for g in pod_ctx.get("supplementalGroups") or []]
    if pod_ctx.get("fsGroup") is not None:
        groups.append(int(pod_ctx["fsGroup"]))
    no_new_privs = ctx.get("allowPrivilegeEscalation") is False
    return (int(user) if user is not None else None), (int(group) if group is not None else None), groups, no_new_privs


def volume_mounts(pod: Obj, container: Obj, backing: dict[str, str]) -> list[Mount]:
    """The container's volumeMounts with their host directories (`backing`: volume name -> host dir)."""
    volumes = {v["name"]: v for v in (pod.get("spec") or {}).get("volumes") or []}
    mounts: list[Mount] = []
    for index, mount in enumerate(container.get("volumeMounts") or []):
        field_name = f"containers[{container.get('name')}].volumeMounts[{index}]"
        volume = volumes.get(mount.get("name"))
        if volume is None:
            raise PodSpecError(f"{field_name}.name: volume {mount.get('name')!r} is not in spec.volumes")
        if mount.get("subPath") or mount.get("subPathExpr"):
            raise PodSpecError(f"{field_name}.subPath is not supported by the test kubelet")
        empty = volume.get("emptyDir")
        if empty is not None and empty.get("medium") == "Memory":
            size = int(parse_quantity(empty.get("sizeLimit", "64Mi")))
            mounts.append(Mount(mount["mountPath"], tmpfs=f"size={size}"))
            continue
        read_only = bool(mount.get("readOnly")) or bool((volume.get("persistentVolumeClaim") or {}).get("readOnly"))
        mounts.append(Mount(mount["mountPath"], source=backing[volume["name"]], read_only=read_only))
    return mounts


def check_volumes(pod: Obj) -> None:
    for index, volume in enumerate((pod.get("spec") or {}).get("volumes") or []):
        kinds = [k for k in volume if k != "name"]
        if not kinds or kinds[0] not in SUPPORTED_VOLUMES:
            raise PodSpecError(f"spec.volumes[{index}] ({volume.get('name')}): volume type {kinds} is not supported by the test kubelet")


def launch_plan(pod: Obj, services: list[Obj], lookup: Any, backing: dict[str, str], max_grace: float) -> LaunchPlan:
    """Everything needed to start the pod's container, or PodSpecError."""
    container = only_container(pod)
    check_volumes(pod)
    env = {"PATH": IMAGE_PATH, "HOSTNAME": pod["metadata"]["name"], "HOME": "/tmp"}
    env.update(container_env(pod, container, services, lookup, (os.cpu_count() or 1, _host_memory())))
    argv = container_argv(container, env)
    user, group, groups, no_new_privs = identity(pod, container)
    grace = float((pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
    return LaunchPlan(
        argv=argv, env=env, mounts=volume_mounts(pod, container, backing), user=user, group=group,
        groups=groups, no_new_privs=no_new_privs, working_dir=container.get("workingDir"),
        termination_path=container.get("terminationMessagePath", "/dev/termination-log"),
        termination_policy=container.get("terminationMessagePolicy", "File"),
        grace_seconds=min(grace, max_grace),
    )


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def termination_message(policy: str, file_text: str, log_tail: str, exit_code: int) -> str:
    """What `containerStatuses[].state.terminated.message` shows (at most 4096 bytes)."""
    message = file_text
    if not message.strip() and policy == "FallbackToLogsOnError" and exit_code != 0:
        message = log_tail
    return message.encode()[-4096:].decode(errors="ignore")
