"""What a search found, as data: trial records, the best trial, search.json, status.search, the table.

Pure functions over `TrialRecord`s (search_run.py fills them in from Tune's callbacks), so that
`kiln run`, the driver and the tests read a search the same way.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from kiln_api.search import MAX_STATUS_TRIALS, SearchBestStatus, SearchSpec, SearchStatus, TrialState, TrialStatus
from kiln_api.status import BestStatus

# Keys of a Tune result that are a trial's training metrics (Tune adds its own bookkeeping keys).
METRIC_PREFIXES = ("train_", "val_", "test_")
PARAMETER_TEXT_MAX = 60


@dataclass
class TrialRecord:
    """One trial as the driver saw it: its values, its per-epoch metrics, how it ended."""

    trial: str
    parameters: dict[str, Any]
    state: TrialState = TrialState.pending
    history: list[dict[str, float]] = field(default_factory=list)
    error: Optional[str] = None

    @property
    def epochs(self) -> int:
        return int(self.history[-1]["epoch"]) if self.history else 0


def metrics_of(result: dict[str, Any], metric: str) -> dict[str, float]:
    """One epoch's record from a Tune result: the epoch and the training metrics."""
    keep = {k: float(v) for k, v in result.items()
            if (k.startswith(METRIC_PREFIXES) or k == metric) and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {"epoch": float(result.get("epoch", 0)), **keep}


def ended_state(last_epoch: int, epochs_total: int, stopped_by_kiln: bool) -> TrialState:
    """A trial that ended without an error: Succeeded when it trained all its epochs (or Kiln's own
    early stopping ended it), Pruned when Tune's scheduler stopped it before."""
    return TrialState.succeeded if stopped_by_kiln or last_epoch >= epochs_total else TrialState.pruned


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def best_value(record: TrialRecord, metric: str, mode: str) -> Optional[float]:
    """The trial's best value of `metric` over its epochs (the one its best checkpoint holds)."""
    values = [r[metric] for r in record.history if _finite(r.get(metric))]
    if not values:
        return None
    return min(values) if mode == "min" else max(values)


def best_trial(records: list[TrialRecord], metric: str, mode: str) -> Optional[TrialRecord]:
    """The trial with the best value; ties go to the trial that started first (the list's order)."""
    scored = [(value, index, r) for index, r in enumerate(records)
              if r.state != TrialState.failed and (value := best_value(r, metric, mode)) is not None]
    if not scored:
        return None
    sign = 1.0 if mode == "min" else -1.0
    return min(scored, key=lambda item: (sign * item[0], item[1]))[2]


def search_document(search: SearchSpec, records: list[TrialRecord]) -> dict[str, Any]:
    """search.json: `{algorithm, metric, mode, best: {trial, parameters, value}, trials: [...]}`."""
    metric, mode = search.metric, search.effective_mode
    best = best_trial(records, metric, mode)
    return {
        "algorithm": search.algorithm.value,
        "metric": metric,
        "mode": mode,
        "best": None if best is None else {"trial": best.trial, "parameters": best.parameters,
                                           "value": best_value(best, metric, mode)},
        "trials": [
            {"trial": r.trial, "parameters": r.parameters, "state": r.state.value,
             "metrics": r.history[-1] if r.history else {}, "epochs": r.epochs,
             **({"error": r.error} if r.error else {})}
            for r in records
        ],
    }


def _json_values(parameters: dict[str, Any]) -> dict[str, str]:
    return {path: json.dumps(value) for path, value in parameters.items()}


def search_status(search: SearchSpec, records: list[TrialRecord], total: int,
                  checkpoint_of: Optional[dict[str, str]] = None) -> SearchStatus:
    """status.search: counts by state, the best trial, and the best and running trials (capped)."""
    metric, mode = search.metric, search.effective_mode
    counts = {state: sum(r.state == state for r in records) for state in TrialState}
    best = best_trial(records, metric, mode)
    finished = counts[TrialState.succeeded] + counts[TrialState.pruned] + counts[TrialState.failed]
    sign = 1.0 if mode == "min" else -1.0
    ranked = sorted((r for r in records if best_value(r, metric, mode) is not None),
                    key=lambda r: sign * (best_value(r, metric, mode) or 0.0))
    running = [r for r in records if r.state == TrialState.running][:MAX_STATUS_TRIALS]
    shown = [r for r in ranked if r not in running][: MAX_STATUS_TRIALS - len(running)] + running
    return SearchStatus(
        metric=metric, total=total, running=counts[TrialState.running], succeeded=counts[TrialState.succeeded],
        pruned=counts[TrialState.pruned], failed=counts[TrialState.failed], summary=f"{finished}/{total}",
        best=None if best is None else SearchBestStatus(
            trial=best.trial, parameters=_json_values(best.parameters), value=best_value(best, metric, mode) or 0.0,
            checkpoint=(checkpoint_of or {}).get(best.trial)),
        trials=[TrialStatus(trial=r.trial, parameters=_json_values(r.parameters), state=r.state, epochs=r.epochs,
                            value=best_value(r, metric, mode)) for r in shown],
    )


def best_status(search: SearchSpec, records: list[TrialRecord], checkpoint_of: Optional[dict[str, str]] = None) -> Optional[BestStatus]:
    """status.best of a search (the BEST column): the best trial's best epoch and its checkpoint."""
    metric, mode = search.metric, search.effective_mode
    best = best_trial(records, metric, mode)
    if best is None:
        return None
    value = best_value(best, metric, mode)
    epoch = next(int(r["epoch"]) for r in best.history if r.get(metric) == value)
    return BestStatus(metric=metric, value=value, epoch=epoch, checkpoint=(checkpoint_of or {}).get(best.trial))


def _short(parameters: dict[str, Any]) -> str:
    text = " ".join(f"{path.rsplit('.', 1)[-1]}={json.dumps(v) if not isinstance(v, float) else f'{v:.3g}'}"
                    for path, v in parameters.items())
    return text if len(text) <= PARAMETER_TEXT_MAX else text[: PARAMETER_TEXT_MAX - 3] + "..."


def render_table(records: list[TrialRecord], metric: str) -> list[str]:
    """The live table of trials: id, parameters, epoch, latest metric, state."""
    rows = [("TRIAL", "PARAMETERS", "EPOCH", metric.upper(), "STATE")]
    for r in records:
        latest = r.history[-1].get(metric) if r.history else None
        rows.append((r.trial, _short(r.parameters), str(r.epochs),
                     f"{latest:.4f}" if _finite(latest) else "-", r.state.value))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
