"""The process kubelet: watches Pods on the (emulated) API server and runs each as real
local processes in their own network and mount namespaces; plays kube-proxy for Services.

It runs in its own thread and event loop (like the emulated API server), so synchronous
tests can drive it, and talks to the API over plain HTTP only — it knows nothing of the
emulator's or the operator's internals. See `network.py` (addressing, Services),
`podinit.py` (volumes, /tmp, users), `podspec.py` (what is honoured or refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from .api import ApiFailure, KubeApi
from .network import PodNetwork
from .podstatus import hosts_file
from .podtask import PodTask
from .proxy import ServiceProxy

Obj = dict[str, Any]
TERMINAL = ("Succeeded", "Failed")


class ProcessKubelet:
    def __init__(self, api_url: str, workdir: Path, max_grace: float = 3.0, poll_seconds: float = 0.2) -> None:
        self.api_url = api_url
        self.workdir = Path(workdir)
        self.max_grace = max_grace
        self.poll_seconds = poll_seconds
        self.tasks: dict[str, PodTask] = {}  # by pod uid, including finished ones
        self.services: list[Obj] = []
        self.events: list[str] = []
        self.leaked: list[int] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ thread plumbing

    def __enter__(self) -> ProcessKubelet:
        self.network = PodNetwork()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="kubelet", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the process kubelet did not start within 30 s")
        if self._error:
            raise RuntimeError("the process kubelet failed to start") from self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(120)
        self.network.close()

    def _call(self, make: Callable[[], Coroutine[Any, Any, Any]], timeout: float = 60) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(make(), self._loop).result(timeout)

    def log(self, line: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {line}")

    # ------------------------------------------------------------------ the loop

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self.api, self.proxy = KubeApi(self.api_url), ServiceProxy(self.network.proxy_netns)
        await self.api.open()
        self._ready.set()
        try:
            while not self._stop.is_set():
                await self._tick()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.poll_seconds)
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            await self._shutdown()

    async def _tick(self) -> None:
        try:
            pods = await self.api.list("pods")
            services = await self.api.list("services")
        except ApiFailure as exc:
            self.log(f"list failed, retrying: {exc}")
            return
        if _service_key(services) != _service_key(self.services):
            self.services = services
            self._rewrite_hosts()
        self.services = services
        current = {p["metadata"]["uid"]: p for p in pods}
        for uid, pod in current.items():
            if uid in self.tasks or pod.get("metadata", {}).get("deletionTimestamp"):
                continue
            if (pod.get("status") or {}).get("phase") in TERMINAL:
                continue
            task = PodTask(self, pod)
            self.tasks[uid] = task
            asyncio.ensure_future(task.run()).add_done_callback(self._task_done)
        for uid, task in self.tasks.items():
            gone = uid not in current or current[uid]["metadata"].get("deletionTimestamp")
            if gone and not task.deleted.is_set():
                self.log(f"pod {task.namespace}/{task.name} deleted: terminating")
                task.deleted.set()
        try:
            await self.proxy.sync(services, pods)
        except OSError as exc:
            self.log(f"kube-proxy: {exc}")

    def _task_done(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.log(f"pod task crashed: {future.exception()!r}")

    def _rewrite_hosts(self) -> None:
        """Keep each running pod's /etc/hosts in line with the Services (in place: same inode)."""
        for task in self.tasks.values():
            path = task.process.root / "hosts"
            if not task.done and task.process.pod_ip and path.exists():
                with open(path, "r+") as handle:
                    handle.truncate(0)
                    handle.write(hosts_file(task.process.pod_ip, task.name, task.namespace, self.services))

    async def _shutdown(self) -> None:
        for task in self.tasks.values():
            task.deleted.set()
        deadline = time.monotonic() + self.max_grace + 30
        while any(not t.done for t in self.tasks.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await self.proxy.close()
        await self.api.close()
        self.leaked = sorted(p for t in self.tasks.values() for p in t.process.tree_pids())

    # ------------------------------------------------------------------ for tests

    def claim_dir(self, namespace: str, claim: str) -> Path:
        """The host directory behind a PersistentVolumeClaim (shared by every pod: ReadWriteMany)."""
        path = self.workdir / "pvc" / namespace / claim
        if not path.exists():
            path.mkdir(parents=True)
            path.chmod(0o2777)
        return path

    def _find(self, namespace: str, name: str) -> PodTask:
        live = [t for t in self.tasks.values() if t.namespace == namespace and t.name == name and not t.done]
        if not live:
            raise KeyError(f"no running pod {namespace}/{name} on the test node")
        return live[-1]

    def kill_pod(self, namespace: str, name: str, sig: int = signal.SIGKILL) -> int:
        """Send `sig` to every process of the pod's container (SIGKILL: the pod fails with 137)."""
        task = self._find(namespace, name)
        pid = task.process.pid or 0
        self.log(f"fault: signal {sig} to {namespace}/{name} (pid {pid})")
        task.kill(sig)
        return pid

    def lose_pod(self, namespace: str, name: str) -> None:
        """The pod vanishes with its node: processes SIGKILLed, object deleted, no final status."""
        task = self._find(namespace, name)
        self.log(f"fault: lose {namespace}/{name}")
        task.deleted.set()
        task.kill(signal.SIGKILL)
        self._call(lambda: self.api.delete_pod(namespace, name))

    def pod_ip(self, namespace: str, name: str) -> str:
        """The running pod's IP ("" if it is not running here)."""
        try:
            return self._find(namespace, name).process.pod_ip
        except KeyError:
            return ""

    def pod_pids(self, namespace: str, name: str) -> set[int]:
        """Live processes of the pod's container (empty if it is not running here)."""
        try:
            return self._find(namespace, name).process.tree_pids()
        except KeyError:
            return set()

    def pod_env(self, namespace: str, name: str) -> dict[str, str]:
        """The environment the running pod's container got ({} if it is not running here)."""
        try:
            plan = self._find(namespace, name).process.plan
        except KeyError:
            return {}
        return dict(plan.env) if plan and self._find(namespace, name).process.proc else {}

    def logs(self, namespace: str, name: str) -> str:
        """Every log of pods with this name (all incarnations), oldest first."""
        tasks = [t for t in self.tasks.values() if t.namespace == namespace and t.name == name]
        return "".join(t.log_path.read_text(errors="replace") for t in tasks if t.log_path.exists())

    def log_tails(self, limit: int = 3000) -> str:
        parts = ["--- kubelet events ---\n" + "\n".join(self.events[-60:])]
        for task in self.tasks.values():
            parts.append(f"--- {task.namespace}/{task.name} ({task.uid[:8]}) ---\n{task.process.log_tail(limit)}")
        return "\n".join(parts)

    def all_pids(self) -> set[int]:
        return {p for t in self.tasks.values() for p in t.process.tree_pids()}


def _service_key(services: list[Obj]) -> list[tuple[str, str, str]]:
    return sorted((s["metadata"].get("namespace", ""), s["metadata"]["name"], str((s.get("spec") or {}).get("clusterIP")))
                  for s in services)

