"""Requests as the emulated API server sees them: the light parse, the log record, fault plans."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiohttp.web


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    resource: str  # plural, with `/subresource` when there is one
    group: str
    verb: str
    namespace: str | None
    name: str | None
    fault: int | None = None
    agent: str = ""  # the client's User-Agent: `kopf/...` is the operator, `kubectl/...` kubectl


@dataclass
class FaultPlan:
    rate: float
    status: int
    verbs: frozenset[str] | None
    resources: frozenset[str] | None
    rng: random.Random

    def hits(self, verb: str, plural: str) -> bool:
        if self.verbs is not None and verb not in self.verbs:
            return False
        if self.resources is not None and plural not in self.resources:
            return False
        return self.rng.random() < self.rate


@dataclass
class FastRequest:
    """The parts of a request `_handle` reads, without kmock's parsing (JSON decoded only if JSON)."""

    url: Any
    method: Any  # `.value` is the HTTP method, as on kmock's Request
    params: Any
    headers: Any
    data: Any
    text: str
    _raw_request: aiohttp.web.BaseRequest

    @classmethod
    async def read(cls, raw: aiohttp.web.BaseRequest) -> FastRequest:
        body = await raw.read()
        text = body.decode("utf-8", errors="replace") if body else ""
        data = None
        if text and "yaml" not in (raw.content_type or ""):
            try:
                data = json.loads(text)
            except ValueError:
                data = None
        return cls(raw.url, SimpleNamespace(value=raw.method), raw.query, raw.headers, data, text, raw)
