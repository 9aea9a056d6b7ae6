"""Requests as the emulated API server records them, and the fault plans it follows."""

from __future__ import annotations

import random
from dataclasses import dataclass


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
