"""Building blocks of the training scenarios: small jobs and progress tracking."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.harness import REPO, Jobs, epoch_of, load_manifest
from tests.support.waiting import wait_for

Obj = dict[str, Any]
PVC_ROOT = "/mnt/kiln/pvc/"


def small_job(name: str, epochs: int = 8, workers: int = 1, batch_size: int = 64, **overrides: Any) -> Obj:
    """`examples/digits.yaml` renamed, with fewer epochs/workers and no early stop unless asked.

    A small `batch_size` makes epochs slower (more steps), so a fault lands mid-training."""
    manifest = load_manifest(REPO / "examples/digits.yaml", **{
        "hyperparameters.epochs": epochs, "hyperparameters.batchSize": batch_size, "workers.replicas": workers,
        "earlyStopping.patience": 1000, **overrides,
    })
    manifest["metadata"]["name"] = name
    return manifest


@dataclass
class Progress:
    """Every (phase, epoch) the job's status showed, in order, while we watched it."""

    jobs: Jobs
    name: str
    seen: list[tuple[str, int]] = field(default_factory=list)

    def poll(self) -> Obj:
        status = self.jobs.status(self.name)
        epoch = epoch_of(status)
        point = (str(status.get("phase")), int(epoch or 0))
        if not self.seen or self.seen[-1] != point:
            self.seen.append(point)
        return status

    def _at_timeout(self, context: Any) -> Callable[[], str]:
        """What the job showed, read when the wait gives up (not when it began), then `context`."""
        return lambda: f"{self.name} showed (phase, epoch): {self.seen[-8:]}\n" + (context() if context else "")

    def wait_epoch(self, epoch: int, timeout: float, context: Any = None) -> Obj:
        return wait_for(lambda: (s := self.poll()).get("phase") == "Running" and (epoch_of(s) or 0) >= epoch and s,
                        timeout, f"{self.name} running at epoch >= {epoch}", interval=0.3,
                        on_timeout=self._at_timeout(context))

    def wait_done(self, timeout: float, context: Any = None) -> Obj:
        return wait_for(lambda: (s := self.poll()).get("phase") in ("Succeeded", "Failed") and s, timeout,
                        f"{self.name} to finish", interval=0.3, on_timeout=self._at_timeout(context))


def host_path(claims_root: Path, location: str) -> Path:
    """A `/mnt/kiln/pvc/<claim>/...` location as seen inside pods -> the claim's host directory."""
    assert location.startswith(PVC_ROOT), location
    claim, _, rest = location[len(PVC_ROOT):].partition("/")
    return claims_root / claim / rest
