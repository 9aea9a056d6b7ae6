"""Terminal text: the progress bar of `kiln run` and the per-epoch line the head pod logs too."""

from __future__ import annotations

from typing import Any, Optional

from kiln_api.status import TrainingJobStatus

from .events import EpochEnded

BAR_WIDTH = 20


def progress_line(status: TrainingJobStatus, loss: Optional[float], val: str, *, batch: tuple[int, int] | None = None,
                  final: bool = False) -> str:
    p = status.progress
    epoch = p.epoch if final else p.epoch + 1
    done = batch[0] / max(batch[1], 1) if batch else 1.0
    filled = int(done * BAR_WIDTH)
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    eta = f" ETA {p.eta_seconds:.0f}s" if p.eta_seconds is not None else ""
    loss_text = f" loss {loss:.4f}" if loss is not None else ""
    return f"epoch {epoch}/{p.total_epochs} [{bar}] step {p.step}{loss_text} {val}{eta}".rstrip()


def validation_text(metrics: dict[str, Any]) -> str:
    return " ".join(f"{name} {value:.4f}" for name, value in metrics.items() if name.startswith("val_"))


def epoch_line(event: EpochEnded, status: TrainingJobStatus) -> str:
    """The line for a finished epoch: printed by `kiln run`, logged by the head pod's driver."""
    return progress_line(status, event.metrics.get("train_loss"), validation_text(event.metrics), final=True)
