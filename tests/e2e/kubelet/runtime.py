"""One pod's process: host directories, launch through `podinit.py`, signals, teardown.

The container's process tree is its own session/process group *and* its own network
namespace; teardown signals the group and then every pid still in the namespace (Ray
daemons that outlived their parent, a process that called setsid), as the death of a
container's PID 1 takes its whole container with it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from .podspec import LaunchPlan, Mount

PODINIT = str(Path(__file__).with_name("podinit.py"))
LOG_TAIL_BYTES = 2048
# What the "image" consists of: the base interpreter's tree, the virtualenv, and this checkout
# (the virtualenv's editable install of kiln points into it).
REPO_ROOT = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
IMAGE_PATHS = sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), REPO_ROOT})


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class PodProcess:
    namespace: str
    name: str
    uid: str
    root: Path  # this pod's host directory
    log_path: Path
    netns: str = ""
    pod_ip: str = ""
    plan: LaunchPlan | None = None
    proc: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    killed_by_kubelet: str = ""  # why the kubelet killed it (liveness, deletion), for the status
    extra_pids: set[int] = field(default_factory=set)

    @property
    def termination_file(self) -> Path:
        return self.root / "termination-log"

    def prepare(self, plan: LaunchPlan, hosts: str) -> None:
        """Per-pod /tmp, termination file and /etc/hosts, owned by the pod's user."""
        self.plan = plan
        for sub in ("tmp",):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.termination_file.touch()
        (self.root / "hosts").write_text(hosts)
        owner = (plan.user if plan.user is not None else 0, plan.group if plan.group is not None else 0)
        for path in (self.root / "tmp", self.termination_file):
            os.chown(path, *owner)
        (self.root / "tmp").chmod(0o1777)
        plan.mounts.append(Mount(plan.termination_path, source=str(self.termination_file), is_file=True))
        plan.mounts.append(Mount("/etc/hosts", source=str(self.root / "hosts"), is_file=True, read_only=True))

    def start(self) -> None:
        assert self.plan is not None
        plan = self.plan
        spec = {
            "argv": plan.argv, "env": plan.env, "tmp": str(self.root / "tmp"),
            "mounts": [m.to_json() for m in plan.mounts], "user": plan.user, "group": plan.group,
            "groups": plan.groups, "noNewPrivs": plan.no_new_privs, "workingDir": plan.working_dir,
            "imagePaths": IMAGE_PATHS, "hostname": plan.env.get("HOSTNAME", self.name),
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, sys.executable, PODINIT, json.dumps(spec)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            )
        self.started_at = now()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def container_pid(self) -> int | None:
        """Host pid of the container's PID 1 (the child of podinit), None before it exists."""
        if self.proc is None:
            return None
        with contextlib.suppress(psutil.Error):
            children = psutil.Process(self.proc.pid).children()
            return children[0].pid if children else None
        return None

    def exit_code(self) -> int | None:
        """The container's exit code once it ended (128+N for death by signal N), else None.

        podinit already maps the container's own death by signal; a negative code here means
        podinit itself was killed (SIGKILL of the whole pod)."""
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is None:
            return None
        return 128 - code if code < 0 else code

    def signal_all(self, sig: int, namespace_pids: list[int]) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
        for pid in namespace_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def tree_pids(self) -> set[int]:
        """Every live process of this pod: its group, the group's descendants and `extra_pids`."""
        pids: set[int] = set()
        if self.proc is not None:
            for proc in psutil.process_iter(["pid"]):
                try:
                    if os.getpgid(proc.pid) == self.proc.pid:
                        pids.add(proc.pid)
                except (ProcessLookupError, psutil.Error):
                    continue
        return {p for p in pids | self.extra_pids if psutil.pid_exists(p) and not _zombie(p)}

    def read_termination(self) -> str:
        try:
            return self.termination_file.read_bytes()[:4096].decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, limit: int = LOG_TAIL_BYTES) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(max(0, self.log_path.stat().st_size - limit))
                return handle.read().decode(errors="replace")
        except OSError:
            return ""

    def remove_dirs(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def fill_key_volume(target: Path, obj: dict[str, Any] | None, kind: str, items: list[dict[str, Any]] | None) -> None:
    """A secret/configMap volume: one file per key (or per `items` entry)."""
    target.mkdir(parents=True, exist_ok=True)
    data: dict[str, bytes] = {}
    for key, value in ((obj or {}).get("data") or {}).items():
        data[key] = base64.b64decode(value) if kind == "Secret" else str(value).encode()
    for key, value in ((obj or {}).get("binaryData") or {}).items():
        data[key] = base64.b64decode(value)
    selected = [(i["key"], i.get("path", i["key"])) for i in items] if items else [(k, k) for k in data]
    for key, path in selected:
        if key in data:
            (target / path).parent.mkdir(parents=True, exist_ok=True)
            (target / path).write_bytes(data[key])


def wait_gone(pids: set[int], deadline: float) -> set[int]:
    """Pids still alive (and not zombies) after waiting up to `deadline` seconds."""
    end = time.monotonic() + deadline
    alive = set(pids)
    while alive and time.monotonic() < end:
        alive = {p for p in alive if psutil.pid_exists(p) and not _zombie(p)}
        if alive:
            time.sleep(0.05)
    return alive
