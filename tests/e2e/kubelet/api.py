"""The few Kubernetes API calls the kubelet makes, over plain aiohttp (no client library state).

Every call goes through `request`, which retries 5xx, 409 and connection errors with a short
backoff until a deadline: the e2e suite injects API faults on purpose, and a real kubelet
retries its status updates the same way.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

Obj = dict[str, Any]
RETRYABLE = {409, 429, 500, 502, 503, 504}


class ApiFailure(RuntimeError):
    pass


class KubeApi:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                      deadline: float = 30.0, missing_ok: bool = False) -> Obj | None:
        assert self.session is not None
        loop = asyncio.get_running_loop()
        end, delay = loop.time() + deadline, 0.05
        while True:
            try:
                data = None if body is None else json.dumps(body)
                headers = {"Content-Type": content_type} if body is not None else {}
                async with self.session.request(method, self.base_url + path, data=data, headers=headers) as response:
                    if response.status == 404 and missing_ok:
                        return None
                    if response.status < 300:
                        return await response.json(content_type=None)
                    text = await response.text()
                    if response.status not in RETRYABLE:
                        raise ApiFailure(f"{method} {path}: {response.status} {text[:300]}")
                    problem = f"{response.status} {text[:200]}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                problem = repr(exc)
            if loop.time() > end:
                raise ApiFailure(f"{method} {path}: gave up after {deadline:.0f} s: {problem}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def list(self, plural: str, namespace: str | None = None) -> list[Obj]:
        scope = f"/namespaces/{namespace}" if namespace else ""
        result = await self.request("GET", f"/api/v1{scope}/{plural}", deadline=5.0)
        return list((result or {}).get("items") or [])

    async def get(self, plural: str, namespace: str, name: str) -> Obj | None:
        return await self.request("GET", f"/api/v1/namespaces/{namespace}/{plural}/{name}", missing_ok=True)

    async def patch_pod_status(self, pod: Obj, status: Obj) -> None:
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        await self.request("PATCH", path, {"status": status}, "application/merge-patch+json", missing_ok=True)

    async def delete_pod(self, namespace: str, name: str) -> None:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0}
        await self.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body, missing_ok=True)
