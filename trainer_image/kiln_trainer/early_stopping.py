"""Early stopping with PyTorch Lightning's `EarlyStopping` semantics, as a pure object.

The checks run in Lightning's order, each strict (`<` for min, `>` for max):

1. `check_finite` and the value is NaN/inf -> stop (failure), best unchanged;
2. `stopping_threshold` reached -> stop (success);
3. `divergence_threshold` crossed -> stop (failure);
4. better than best by more than `min_delta` -> new best, wait reset to 0;
5. otherwise wait += 1 and stop once wait >= patience.

Values are plain Python floats (float64) rather than float32 tensors; the comparisons are
otherwise the same. Every rank calls `update` with the same all-reduced value, so every
rank reaches the same decision and no rank is left waiting in a collective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from kiln_api.spec import EarlyStoppingSpec, Mode

from .data.errors import SpecError

ORDER = {"min": "<", "max": ">"}


@dataclass(frozen=True)
class Decision:
    """The outcome of one check."""

    should_stop: bool
    improved: bool
    kind: Optional[str]  # "non_finite" | "threshold" | "divergence" | "patience" | None
    reason: Optional[str]

    @property
    def is_failure(self) -> bool:
        return self.kind in ("non_finite", "divergence")


class EarlyStopping:
    """Lightning's EarlyStopping decision logic, without a trainer."""

    def __init__(
        self,
        metric: str = "val_loss",
        mode: str = "min",
        patience: int = 3,
        min_delta: float = 0.0,
        stopping_threshold: Optional[float] = None,
        divergence_threshold: Optional[float] = None,
        check_finite: bool = True,
    ) -> None:
        if mode not in ORDER:
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.metric = metric
        self.mode = mode
        self.patience = patience
        # Lightning flips min_delta's sign so `monitor_op(current - min_delta, best)` works for both modes.
        self.min_delta = abs(min_delta) if mode == "max" else -abs(min_delta)
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.check_finite = check_finite
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = math.inf if mode == "min" else -math.inf
        self.current: Optional[float] = None

    @classmethod
    def from_spec(cls, spec: EarlyStoppingSpec) -> EarlyStopping:
        mode: Mode = spec.effective_mode
        return cls(
            metric=spec.metric,
            mode=mode.value,
            patience=spec.patience,
            min_delta=spec.min_delta,
            stopping_threshold=spec.stopping_threshold,
            divergence_threshold=spec.divergence_threshold,
            check_finite=spec.check_finite,
        )

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    def update(self, current: float, epoch: int) -> Decision:
        """Feed one monitored value; `epoch` is recorded as the stopped epoch on a stop."""
        current = float(current)
        self.current = current
        decision = self._evaluate(current)
        if decision.should_stop:
            self.stopped_epoch = epoch
        return decision

    def _evaluate(self, current: float) -> Decision:
        op = ORDER[self.mode]
        if self.check_finite and not math.isfinite(current):
            reason = (
                f"Monitored metric {self.metric} = {current} is not finite."
                f" Previous best value was {self.best_score:.3f}. Signaling Trainer to stop."
            )
            return Decision(True, False, "non_finite", reason)
        if self.stopping_threshold is not None and self._better(current, self.stopping_threshold):
            reason = (
                f"Stopping threshold reached: {self.metric} = {current} {op} {self.stopping_threshold}."
                " Signaling Trainer to stop."
            )
            return Decision(True, False, "threshold", reason)
        if self.divergence_threshold is not None and self._better(-current, -self.divergence_threshold):
            reason = (
                f"Divergence threshold reached: {self.metric} = {current} {op} {self.divergence_threshold}."
                " Signaling Trainer to stop."
            )
            return Decision(True, False, "divergence", reason)
        if self._better(current - self.min_delta, self.best_score):
            reason = self._improvement_message(current)
            self.best_score = current
            self.wait_count = 0
            return Decision(False, True, None, reason)
        self.wait_count += 1
        if self.wait_count >= self.patience:
            reason = (
                f"Monitored metric {self.metric} did not improve in the last {self.wait_count} records."
                f" Best score: {self.best_score:.3f}. Signaling Trainer to stop."
            )
            return Decision(True, False, "patience", reason)
        return Decision(False, False, None, None)

    def _improvement_message(self, current: float) -> str:
        if math.isfinite(self.best_score):
            return (
                f"Metric {self.metric} improved by {abs(self.best_score - current):.3f} >="
                f" min_delta = {abs(self.min_delta)}. New best score: {current:.3f}"
            )
        return f"Metric {self.metric} improved. New best score: {current:.3f}"

    @property
    def best(self) -> Optional[float]:
        return self.best_score if math.isfinite(self.best_score) else None

    def state_dict(self) -> dict[str, Any]:
        return {
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
            "best_score": self.best_score,
            "patience": self.patience,
            "current": self.current,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wait_count = int(state["wait_count"])
        self.stopped_epoch = int(state["stopped_epoch"])
        self.best_score = float(state["best_score"])
        self.patience = int(state["patience"])
        self.current = state.get("current")


OUTCOME_OF_STOP = {"non_finite": "non_finite", "divergence": "diverged"}


def outcome_of(decision: Optional[Decision], interrupted: bool) -> str:
    """The run's outcome after `decision` (the last check), or after a stop request."""
    if decision is not None and decision.should_stop:
        return OUTCOME_OF_STOP.get(decision.kind or "", "early_stopped")
    return "interrupted" if interrupted else "completed"


def monitored_value(metrics: dict[str, float], metric: str) -> float:
    """The monitored metric, or a SpecError naming the field when the run does not produce it."""
    if metric not in metrics:
        available = ", ".join(sorted(metrics)) or "none"
        raise SpecError("spec.earlyStopping.metric", f"{metric!r} is not a metric this run produces (available: {available})")
    return metrics[metric]


def early_stopping_state(stopper: Optional[EarlyStopping], decision: Optional[Decision]) -> Optional[dict[str, Any]]:
    """The early-stopping fields of the status, from an EarlyStopping and its last decision."""
    if stopper is None:
        return None
    stopped = bool(decision and decision.should_stop)
    return {
        "metric": stopper.metric,
        "current": stopper.current,
        "best": stopper.best,
        "wait": stopper.wait_count,
        "patience": stopper.patience,
        "stopped": stopped,
        "stopped_epoch": stopper.stopped_epoch if stopped else None,
        "reason": decision.reason if decision and stopped else None,
    }
