"""Readiness/liveness probes, run for real (HTTP GET, TCP connect, exec in the pod).

`ProbeTracker` is the pure part: Kubernetes' thresholds (initialDelaySeconds,
successThreshold, failureThreshold) over a stream of results. `run_probe` does the I/O.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp

from .envvars import PodSpecError

Obj = dict[str, Any]


@dataclass
class ProbeTracker:
    """Result of a probe after Kubernetes' thresholds: `ok` flips only after enough in a row."""

    success_threshold: int = 1
    failure_threshold: int = 3
    ok: bool = False
    successes: int = 0
    failures: int = 0

    @classmethod
    def for_probe(cls, probe: Obj, initially_ok: bool) -> ProbeTracker:
        return cls(int(probe.get("successThreshold", 1)), int(probe.get("failureThreshold", 3)), ok=initially_ok)

    def record(self, passed: bool) -> bool:
        """Feed one result; returns the (possibly new) state."""
        if passed:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= self.success_threshold:
                self.ok = True
        else:
            self.successes, self.failures = 0, self.failures + 1
            if self.failures >= self.failure_threshold:
                self.ok = False
        return self.ok


def resolve_port(port: int | str, container: Obj) -> int:
    """A probe port is a number or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for entry in container.get("ports") or []:
        if entry.get("name") == port:
            return int(entry["containerPort"])
    raise PodSpecError(f"probe port {port!r} names no port of container {container.get('name')!r}")


def probe_timing(probe: Obj) -> tuple[float, float, float]:
    """(initial delay, period, timeout) in seconds, with Kubernetes' defaults."""
    return (
        float(probe.get("initialDelaySeconds", 0)),
        float(probe.get("periodSeconds", 10)),
        float(probe.get("timeoutSeconds", 1)),
    )


def check_supported(probe: Obj, field: str) -> None:
    handlers = [k for k in ("httpGet", "tcpSocket", "exec", "grpc") if k in probe]
    if len(handlers) != 1:
        raise PodSpecError(f"{field}: exactly one of httpGet, tcpSocket, exec, grpc is required")
    if handlers[0] == "grpc":
        raise PodSpecError(f"{field}.grpc is not supported by the test kubelet")


async def run_probe(probe: Obj, container: Obj, pod_ip: str, exec_prefix: list[str], env: dict[str, str]) -> bool:
    """One probe attempt; any error or timeout is a failure, as for the kubelet."""
    _, _, timeout = probe_timing(probe)
    try:
        return await asyncio.wait_for(_attempt(probe, container, pod_ip, exec_prefix, env), timeout)
    except (OSError, asyncio.TimeoutError, aiohttp.ClientError):
        return False


async def _attempt(probe: Obj, container: Obj, pod_ip: str, exec_prefix: list[str], env: dict[str, str]) -> bool:
    if "httpGet" in probe:
        get = probe["httpGet"]
        scheme = str(get.get("scheme", "HTTP")).lower()
        url = f"{scheme}://{get.get('host') or pod_ip}:{resolve_port(get['port'], container)}{get.get('path', '/')}"
        headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
        async with aiohttp.ClientSession() as session, session.get(url, headers=headers, ssl=False) as response:
            return 200 <= response.status < 400
    if "tcpSocket" in probe:
        sock = probe["tcpSocket"]
        _, writer = await asyncio.open_connection(sock.get("host") or pod_ip, resolve_port(sock["port"], container))
        writer.close()
        return True
    command = probe["exec"].get("command") or []
    proc = await asyncio.create_subprocess_exec(
        *exec_prefix, *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        return await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
