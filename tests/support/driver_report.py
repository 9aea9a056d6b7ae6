"""Termination messages as the real driver writes them: its own reducer and `compact_status`.

The operator must accept whatever the driver can write, so tests build the message from the
driver's code (`kiln_trainer.status_reducer`) folding a run's events, not from a hand-written dict.
"""

from __future__ import annotations

import json
import math

from kiln_trainer.events import CheckpointSaved, EpochEnded, Finished, Started
from kiln_trainer.status_json import compact_status
from kiln_trainer.status_reducer import apply_event, initial_status

CHECKPOINTS = "/mnt/kiln/pvc/checkpoints/kiln/default/demo"


def _epoch_event(epoch: int, steps: int, val_loss: float, patience: int) -> EpochEnded:
    return EpochEnded(
        epoch=epoch, step=epoch * steps, epoch_seconds=0.2, samples_per_second=41891.0,
        metrics={"train_loss": 0.5 / epoch, "val_loss": val_loss, "val_accuracy": 0.9},
        early_stopping={"metric": "val_loss", "current": val_loss, "best": 0.068, "wait": 1, "patience": patience,
                        "stopped": not math.isfinite(val_loss), "stopped_epoch": epoch if not math.isfinite(val_loss) else None,
                        "reason": None if math.isfinite(val_loss) else f"Monitored metric val_loss = {val_loss} is not finite."},
    )  # fmt: skip


def driver_report(epochs: int, diverge_at: int | None = None, steps: int = 20, patience: int = 1000) -> str:
    """The termination message of a run of `epochs` epochs; with `diverge_at`, val_loss turns NaN there."""
    status = initial_status(epochs)
    durations: list[float] = []
    status = apply_event(status, Started(epoch=0, step=0, total_epochs=epochs), durations)
    last = diverge_at or epochs
    for epoch in range(1, last + 1):
        val_loss = math.nan if epoch == diverge_at else 0.07 + 0.001 * epoch
        status = apply_event(status, _epoch_event(epoch, steps, val_loss, patience), durations)
        best = {"metric": "val_accuracy", "value": 0.98, "epoch": 1, "checkpoint": f"{CHECKPOINTS}/epoch-000001"}
        saved = CheckpointSaved(location=f"{CHECKPOINTS}/epoch-{epoch:06d}", epoch=epoch, seconds=0.1,
                                unix_time=1_790_000_000.0 + epoch, best=best)
        status = apply_event(status, saved, durations)
    outcome = "non_finite" if diverge_at else "completed"
    final_metrics = {} if diverge_at else {"test_loss": 0.067, "test_accuracy": 0.974}
    status = apply_event(status, Finished(outcome=outcome, epoch=last, metrics=final_metrics), durations)
    return compact_status(status)


def with_nan_metric(report: str, metric: str = "val_loss") -> str:
    """`report` as a trainer that does not filter non-finite figures would write it (plain
    `json.dumps` spells NaN `NaN`, which JSON proper lacks and the API server refuses)."""
    data = json.loads(report)
    data.setdefault("metrics", {})[metric] = math.nan
    return json.dumps(data, separators=(",", ":"))
