"""What a checkpoint is to retention: its manifest's facts, and which checkpoints to keep."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

PREFIX = "epoch-"


@dataclass(frozen=True)
class CheckpointInfo:
    """One complete checkpoint, as described by its manifest."""

    name: str
    location: str
    epoch: int
    step: int
    metrics: dict[str, float]
    timestamp: str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    generation: int = 0  # of the run that wrote it (0: unfenced, or written before fences existed)
    # The generation whose fresh start (no checkpoint resumed) began the chain of runs that wrote it.
    lineage: int = 0
    run: Optional[str] = None
    job: Optional[dict[str, Any]] = None
    fingerprint: Optional[dict[str, Any]] = None

    def value(self, metric: str) -> Optional[float]:
        value = self.metrics.get(metric)
        return None if value is None or not math.isfinite(value) else float(value)

    @property
    def recency(self) -> tuple[int, int]:
        # A later generation wrote later: a fresh run (checkpoint.resume: false) outranks an older
        # run's higher epochs, so retention never deletes what the running job just saved.
        return (self.generation, self.epoch)

    @property
    def stamp(self) -> Optional[dict[str, Any]]:
        return {"job": self.job, "fingerprint": self.fingerprint} if self.job else None


def checkpoint_name(epoch: int) -> str:
    return f"{PREFIX}{epoch:06d}"


def is_better(a: Optional[float], b: Optional[float], mode: str) -> bool:
    """Whether metric value `a` beats `b` (None never beats anything)."""
    if a is None:
        return False
    if b is None:
        return True
    return a < b if mode == "min" else a > b


def best_of(infos: list[CheckpointInfo], metric: str, mode: str) -> Optional[CheckpointInfo]:
    """The checkpoint with the best `metric`; the earliest wins a tie."""
    best: Optional[CheckpointInfo] = None
    for info in sorted(infos, key=lambda i: i.recency):
        if is_better(info.value(metric), best.value(metric) if best else None, mode):
            best = info
    return best


def select_for_deletion(
    infos: list[CheckpointInfo],
    keep: int,
    metric: str,
    mode: str,
    protected: frozenset[str] = frozenset(),
    lineage: Optional[int] = None,
) -> list[str]:
    """Names to delete among `infos` (the verified checkpoints): everything except the newest `keep`,
    the best by `metric` (within `lineage`, when given: an earlier run that this one did not resume
    from has no say in what is best), and a `protected` one (resumed from) until a newer one exists.

    With only verified checkpoints counted, the resumed-from one is the newest until the next save,
    so `protected` no longer keeps anything beyond `keep`; it once kept it forever."""
    newest = sorted(infos, key=lambda i: i.recency, reverse=True)
    kept = {info.name for info in newest[:keep]}
    best = best_of([i for i in infos if lineage is None or i.lineage == lineage], metric, mode)
    if best is not None:
        kept.add(best.name)
    if newest:
        kept.update(name for name in protected if name == newest[0].name)
    return [info.name for info in newest if info.name not in kept]


def info_from_manifest(name: str, location: str, manifest: dict[str, Any]) -> CheckpointInfo:
    return CheckpointInfo(
        name=name,
        location=location,
        epoch=int(manifest["epoch"]),
        step=int(manifest.get("step", 0)),
        metrics={k: float(v) for k, v in manifest.get("metrics", {}).items()},
        timestamp=str(manifest.get("timestamp", "")),
        files=dict(manifest.get("files", {})),
        generation=int(manifest.get("generation") or 0),
        lineage=int(manifest.get("lineage") or 0),
        run=manifest.get("run"),
        job=manifest.get("job") if isinstance(manifest.get("job"), dict) else None,
        fingerprint=manifest.get("fingerprint") if isinstance(manifest.get("fingerprint"), dict) else None,
    )
