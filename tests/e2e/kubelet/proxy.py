"""kube-proxy for the test kubelet: each Service port listens on clusterIP:port (in the proxy namespace)
and forwards TCP to a ready endpoint (`podIP:targetPort` of a pod matching the selector).

`endpoints` is the pure part (what the EndpointSlice controller would compute);
`ServiceProxy` keeps asyncio listeners in line with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

from .network import listen_in_netns

Obj = dict[str, Any]
Key = tuple[str, int]  # (clusterIP, port)


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_ready(pod: Obj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def target_port(port: Obj, pod: Obj) -> int | None:
    target = port.get("targetPort", port["port"])
    if isinstance(target, int) or str(target).isdigit():
        return int(target)
    for container in pod["spec"].get("containers", []):
        for entry in container.get("ports") or []:
            if entry.get("name") == target:
                return int(entry["containerPort"])
    return None


def endpoints(service: Obj, pods: list[Obj]) -> dict[int, list[tuple[str, int]]]:
    """Service port -> [(podIP, targetPort)] of running (and ready, unless publishNotReadyAddresses) pods."""
    spec = service.get("spec") or {}
    namespace = service["metadata"].get("namespace")
    not_ready_ok = bool(spec.get("publishNotReadyAddresses"))
    table: dict[int, list[tuple[str, int]]] = {}
    for port in spec.get("ports") or []:
        if port.get("protocol", "TCP") != "TCP":
            continue
        table[int(port["port"])] = []
        for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
            status = pod.get("status") or {}
            if pod["metadata"].get("namespace") != namespace or pod["metadata"].get("deletionTimestamp"):
                continue
            if not selector_matches(spec.get("selector") or {}, pod["metadata"].get("labels") or {}):
                continue
            if status.get("phase") != "Running" or not status.get("podIP"):
                continue
            if not (not_ready_ok or pod_ready(pod)):
                continue
            number = target_port(port, pod)
            if number is not None:
                table[int(port["port"])].append((status["podIP"], number))
    return table


class ServiceProxy:
    """Listeners per (clusterIP, port) with a live endpoint table; listeners live in `netns`."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.servers: dict[Key, asyncio.base_events.Server] = {}
        self.table: dict[Key, list[tuple[str, int]]] = {}
        self.counter = itertools.count()
        self.tasks: set[asyncio.Task[None]] = set()

    async def sync(self, services: list[Obj], pods: list[Obj]) -> None:
        table: dict[Key, list[tuple[str, int]]] = {}
        for service in services:
            ip = (service.get("spec") or {}).get("clusterIP")
            if not ip or ip == "None":
                continue
            for port, targets in endpoints(service, pods).items():
                table[(ip, port)] = targets
        self.table = table
        for key in [k for k in self.servers if k not in table]:
            self.servers.pop(key).close()
        for key in [k for k in table if k not in self.servers]:
            sock = await asyncio.to_thread(listen_in_netns, self.netns, key[0], key[1])
            self.servers[key] = await asyncio.start_server(lambda r, w, key=key: self._accept(key, r, w), sock=sock)

    def _accept(self, key: Key, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._forward(key, reader, writer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _forward(self, key: Key, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        targets = self.table.get(key) or []
        if not targets:
            writer.close()  # no endpoint: the connection is refused, as with kube-proxy's REJECT
            return
        host, port = targets[next(self.counter) % len(targets)]
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except (OSError, asyncio.TimeoutError):
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def close(self) -> None:
        for server in self.servers.values():
            server.close()
        self.servers.clear()
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(BaseException):
                await task


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()
