"""The life of one pod on the test node: wait for its references, start it, probe it,
report it, and tear it down on exit or deletion."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import podstatus
from .envvars import MissingReference, PodSpecError
from .podspec import launch_plan, only_container, termination_message, unschedulable_reason
from .probes import ProbeTracker, check_supported, probe_timing, run_probe
from .runtime import PodProcess, fill_key_volume, now, wait_gone

if TYPE_CHECKING:
    from .kubelet import ProcessKubelet

Obj = dict[str, Any]
HOST_IP = "10.213.0.1"


class PodTask:
    def __init__(self, kubelet: ProcessKubelet, pod: Obj) -> None:
        self.kubelet = kubelet
        self.pod = pod
        meta = pod["metadata"]
        self.namespace, self.name, self.uid = meta.get("namespace", "default"), meta["name"], meta["uid"]
        root = kubelet.workdir / "pods" / self.uid[:8]
        log = kubelet.workdir / "logs" / f"{self.namespace}.{self.name}.{self.uid[:8]}.log"
        self.process = PodProcess(self.namespace, self.name, self.uid, root, log)
        self.deleted = asyncio.Event()
        self.started = asyncio.Event()  # the startup probe passed (or there is none)
        self.ready = False
        self.done = False
        self.container: Obj = {}
        self._secrets: dict[tuple[str, str], Obj | None] = {}

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        try:
            await self._run()
        except PodSpecError as exc:
            await self._report(podstatus.refused_status("UnsupportedByTestKubelet", str(exc)))
        except Exception as exc:  # noqa: BLE001 - a kubelet bug must show up in the pod, not vanish
            await self._report(podstatus.refused_status("TestKubeletError", f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            await self._teardown()
            self.done = True

    async def _run(self) -> None:
        self.container = only_container(self.pod)
        backing = await self._wait_for_references()
        if backing is None:
            return
        plan = launch_plan(self.pod, self.kubelet.services, self._lookup, backing, self.kubelet.max_grace)
        netns, ip = await asyncio.to_thread(self.kubelet.network.create, self.uid)
        self.process.netns, self.process.pod_ip = netns, ip
        self.pod.setdefault("status", {})["podIP"] = ip
        # The downward API needs the pod IP: recompute the env now that there is one.
        plan = launch_plan(self.pod, self.kubelet.services, self._lookup, backing, self.kubelet.max_grace)
        hosts = podstatus.hosts_file(ip, self.name, self.namespace, self.kubelet.services)
        await asyncio.to_thread(self.process.prepare, plan, hosts)
        if self.deleted.is_set():
            return
        self.process.start()
        self.kubelet.log(f"started {self.namespace}/{self.name} ip={ip} pid={self.process.pid}")
        readiness = self.container.get("readinessProbe")
        self.ready = readiness is None
        if not self.container.get("startupProbe"):
            self.started.set()
        await self._report(self._running())
        kinds = ("startup", "readiness", "liveness")
        probes = [asyncio.ensure_future(self._probe_loop(self.container[f"{kind}Probe"], kind))
                  for kind in kinds if self.container.get(f"{kind}Probe")]
        try:
            await self._wait_exit()
        finally:
            for task in probes:
                task.cancel()
            await asyncio.gather(*probes, return_exceptions=True)

    async def _wait_for_references(self) -> dict[str, str] | None:
        """Host dirs per volume once every Secret/ConfigMap/PVC exists; None if deleted first."""
        reported = ""
        while not self.deleted.is_set():
            problem = unschedulable_reason(self.pod)
            try:
                if problem:
                    raise MissingReference(problem)
                backing = await self._backing_dirs()
                self._secrets = await self._fetch_refs()
                launch_plan(self.pod, self.kubelet.services, self._lookup, backing, self.kubelet.max_grace)
                return backing
            except MissingReference as exc:
                if str(exc) != reported:
                    reported = str(exc)
                    status = podstatus.pending_status(self.container, "CreateContainerConfigError", reported,
                                                      scheduled=not problem)
                    await self._report(status)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.deleted.wait(), 0.5)
        return None

    async def _backing_dirs(self) -> dict[str, str]:
        backing: dict[str, str] = {}
        api = self.kubelet.api
        for volume in (self.pod.get("spec") or {}).get("volumes") or []:
            name = volume["name"]
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                if await api.get("persistentvolumeclaims", self.namespace, claim) is None:
                    raise MissingReference(f'persistentvolumeclaim "{claim}" not found')
                backing[name] = str(self.kubelet.claim_dir(self.namespace, claim))
            elif "secret" in volume or "configMap" in volume:
                kind, ref = ("Secret", volume["secret"]) if "secret" in volume else ("ConfigMap", volume["configMap"])
                plural = "secrets" if kind == "Secret" else "configmaps"
                obj_name = ref.get("secretName") or ref.get("name", "")
                obj = await api.get(plural, self.namespace, obj_name)
                if obj is None and not ref.get("optional"):
                    raise MissingReference(f'{kind.lower()} "{obj_name}" not found')
                target = self.process.root / "volumes" / name
                await asyncio.to_thread(fill_key_volume, target, obj, kind, ref.get("items"))
                backing[name] = str(target)
            else:
                target = self.process.root / "volumes" / name
                target.mkdir(parents=True, exist_ok=True)
                target.chmod(0o777)
                backing[name] = str(target)
        return backing

    async def _fetch_refs(self) -> dict[tuple[str, str], Obj | None]:
        refs: dict[tuple[str, str], Obj | None] = {}
        for entry in self.container.get("env") or []:
            source = entry.get("valueFrom") or {}
            for key, kind, plural in (("secretKeyRef", "Secret", "secrets"), ("configMapKeyRef", "ConfigMap", "configmaps")):
                if key in source and (kind, source[key].get("name", "")) not in refs:
                    name = source[key].get("name", "")
                    refs[(kind, name)] = await self.kubelet.api.get(plural, self.namespace, name)
        return refs

    def _lookup(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self._secrets.get((kind, name))

    # ------------------------------------------------------------------ running

    def _running(self) -> Obj:
        return podstatus.running_status(self.container, self.process.pod_ip, HOST_IP, self.process.started_at,
                                        self.ready and self.started.is_set(), self.started.is_set())

    async def _probe_loop(self, probe: Obj, kind: str) -> None:
        check_supported(probe, f"containers[{self.container.get('name')}].{kind}Probe")
        delay, period, _ = probe_timing(probe)
        tracker = ProbeTracker.for_probe(probe, initially_ok=kind == "liveness")
        if kind == "startup":
            tracker.success_threshold = 1
        else:
            await self.started.wait()  # liveness and readiness start once the startup probe passed
        target = self.process.container_pid() or self.process.pid
        prefix = ["nsenter", f"--target={target}", "--net", "--mount", "--pid"]
        await asyncio.sleep(delay)
        while self.process.exit_code() is None and not self.deleted.is_set():
            passed = await run_probe(probe, self.container, self.process.pod_ip, prefix, self.process.plan.env)
            before = tracker.ok
            state = tracker.record(passed)
            if kind == "startup" and state:
                self.started.set()
                await self._report(self._running())
                return
            if kind == "readiness" and state != before:
                self.ready = state
                await self._report(self._running())
            if kind != "readiness" and not state and tracker.failures >= tracker.failure_threshold:
                self.process.killed_by_kubelet = f"{kind} probe failed"
                self.kubelet.log(f"{kind} probe failed {tracker.failures} times: killing {self.namespace}/{self.name}")
                await self._terminate()
                return
            await asyncio.sleep(period)

    async def _wait_exit(self) -> None:
        while self.process.exit_code() is None:
            if self.deleted.is_set():
                await self._terminate()
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.deleted.wait(), 0.1)
        if self.deleted.is_set():
            return
        code = self.process.exit_code()
        assert code is not None and self.process.plan is not None
        await self._kill_leftovers()
        plan = self.process.plan
        message = termination_message(plan.termination_policy, self.process.read_termination(),
                                      self.process.log_tail(), code)
        self.kubelet.log(f"{self.namespace}/{self.name} exited with {code}")
        await self._report(podstatus.terminated_status(self.container, code, message, self.process.started_at, now()))

    async def _terminate(self) -> None:
        """SIGTERM to the container, SIGKILL after its grace period (capped for tests)."""
        grace = self.process.plan.grace_seconds if self.process.plan else 0.0
        pids = await self._pids()
        self.process.signal_all(signal.SIGTERM, list(pids))
        alive = await asyncio.to_thread(wait_gone, pids, grace)
        if alive:
            self.process.signal_all(signal.SIGKILL, list(alive))
        await self._kill_leftovers()

    async def _kill_leftovers(self) -> None:
        """When a container's main process ends, everything else in it dies too."""
        pids = await self._pids()
        if pids:
            self.process.signal_all(signal.SIGKILL, list(pids))
            alive = await asyncio.to_thread(wait_gone, pids, 10.0)
            if alive:
                self.kubelet.log(f"{self.namespace}/{self.name}: pids {sorted(alive)} survived SIGKILL")
        if self.process.proc is not None:
            await asyncio.to_thread(self.process.proc.wait)

    async def _pids(self) -> set[int]:
        in_netns = await asyncio.to_thread(self.kubelet.network.pids, self.process.netns) if self.process.netns else []
        group: set[int] = set()
        if self.process.proc is not None and self.process.proc.poll() is None:
            group.add(self.process.proc.pid)
        return group | set(in_netns) | self.process.tree_pids()

    async def _teardown(self) -> None:
        if self.process.proc is not None and self.process.proc.poll() is None:
            await self._terminate()
        if self.process.netns:
            await self._kill_leftovers()
        await asyncio.to_thread(self.kubelet.network.delete, self.uid, self.process.pod_ip or None)
        # Finish a graceful deletion (the emulator deletes at once, a real API server waits for us).
        if self.deleted.is_set() and await self._still_mine():
            await self.kubelet.api.delete_pod(self.namespace, self.name)

    # ------------------------------------------------------------------ reporting

    async def _still_mine(self) -> bool:
        current = await self.kubelet.api.get("pods", self.namespace, self.name)
        return current is not None and current["metadata"].get("uid") == self.uid

    async def _report(self, status: Obj) -> None:
        """Patch the pod's status, unless the pod is gone or replaced by a namesake."""
        if self.deleted.is_set() or not await self._still_mine():
            return
        await self.kubelet.api.patch_pod_status(self.pod, status)

    def kill(self, sig: int) -> None:
        if self.process.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.proc.pid, sig)

    @property
    def log_path(self) -> Path:
        return self.process.log_path
