"""Rank 0's evaluation report after training (builtin_run.finish): the kept model's predictions over
the test split, evaluation.json and its plot beside model.pt, and the summary for status.evaluation.

The figures are evaluation_report.py's (scikit-learn's); this module only feeds it and writes what
it returns, through worker.write_bytes (atomic, and s3:// or a mounted pvc:// like model.pt).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Optional

import numpy as np
import torch
from kiln_api.status import StatusEvaluation
from pydantic import ValidationError

from .checkpoint_fence import StaleWriter
from .evaluation import CLASSIFICATION
from .evaluation_plots import CONFUSION_MATRIX_PNG, RESIDUALS_PNG
from .worker import write_bytes

log = logging.getLogger("kiln_trainer.evaluation")
REPORT_FILE = "evaluation.json"
REPORT_FILES = (REPORT_FILE, CONFUSION_MATRIX_PNG, RESIDUALS_PNG)  # what a report writes beside model.pt
MAX_REPORT_BYTES = 64 << 20  # 1000 classes' confusion matrix and 16 x 100 slices fit easily


class SplitPredictions:
    """The model's outputs over the test split in its order, gathered by the pass that computes the
    test metrics (builtin_run.finish: `split_sums(..., collect=add)`), so the split is read once."""

    def __init__(self, task: str) -> None:
        self.task = task
        self._truths: list[torch.Tensor] = []
        self._outputs: list[torch.Tensor] = []

    def add(self, out: torch.Tensor, y: torch.Tensor) -> None:
        self._outputs.append((torch.softmax(out, dim=1) if self.task == CLASSIFICATION else out).float().cpu())
        self._truths.append(y.cpu())

    def arrays(self, target_mean: float = 0.0, target_std: float = 1.0) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """(y_true, y_pred, probabilities): class indices and softmax probabilities for classification,
        values in the target's units for regression (no probabilities)."""
        y_true, out = torch.cat(self._truths).numpy(), torch.cat(self._outputs).numpy()
        if self.task == CLASSIFICATION:
            return y_true.astype(np.int64), out.argmax(axis=1), out
        # The model learnt standardised targets (data/loaders.py): back to the target's units.
        y_true, y_pred = y_true * target_std + target_mean, out * target_std + target_mean
        if y_pred.ndim == 2 and y_pred.shape[1] == 1:
            y_true, y_pred = y_true.reshape(-1), y_pred.reshape(-1)
        return y_true.astype(np.float64), y_pred.astype(np.float64), None


def beside(model_path: str, name: str) -> str:
    """A file next to model.pt (a local path, or an s3:// URL)."""
    head, sep, _ = model_path.rpartition("/")
    return f"{head}{sep}{name}" if sep else name


def write_report(report: dict[str, Any], y_true: np.ndarray, y_pred: np.ndarray, model_path: str) -> str:
    """evaluation.json and confusion_matrix.png or residuals.png beside model.pt; returns the JSON's location."""
    from .evaluation_plots import report_plot

    location = beside(model_path, REPORT_FILE)
    write_bytes(location, json.dumps(report, indent=1, allow_nan=False).encode())
    plot = report_plot(report, y_true, y_pred)
    if plot is not None:
        write_bytes(beside(model_path, plot[0]), plot[1])
    return location


def summary_line(summary: dict[str, Any]) -> str:
    """One line for a log or the terminal: headline metrics and the worst slice."""
    figures = ", ".join(f"{k}={v:.4f}" for k, v in summary.get("metrics", {}).items())
    worst = summary.get("worst_slice")
    text = f"evaluation: {figures}" if figures else "evaluation: no test rows"
    if worst:
        flag = "FLAGGED" if worst.get("flagged") else "within tolerance"
        score = worst.get("score")
        text += (f"; worst slice {worst['column']}={worst['value']} ({worst['rows']} rows): {worst['metric']}="
                 + (f"{score:.4f}" if score is not None else "n/a") + f", {flag}")
        if summary.get("flagged_slices"):
            text += f"; {summary['flagged_slices']} slice(s) flagged"
    return text


def evaluate_test_split(trainer: Any, test: SplitPredictions) -> Optional[dict[str, Any]]:
    """Rank 0, after model.pt is written: the report of the kept weights' predictions on the test
    split (`test`), written beside the model; returns status.evaluation's content, or None without
    a test split.

    A report that cannot be made is logged, not raised: the trained model is already saved, and a
    long run must not end Failed over its report."""
    data = trainer.data
    if data.test is None:
        return None
    try:
        return _evaluate(trainer, test)
    except StaleWriter:  # another driver owns the storage now: stop as model.pt's write would
        raise
    except Exception:  # noqa: BLE001 - see the docstring
        log.exception("could not write the evaluation report")
        return None


def _evaluate(trainer: Any, test: SplitPredictions) -> Optional[dict[str, Any]]:
    from .evaluation_report import build_report, status_summary

    data, spec = trainer.data, trainer.job.spec.evaluation
    y_true, y_pred, proba = test.arrays(target_mean=data.target_mean, target_std=data.target_std)
    if not np.isfinite(y_pred if proba is None else proba).all():  # a diverged model: nothing to measure
        log.warning("no evaluation report: the model's test predictions are not finite")
        return None
    report = build_report(data.task, y_true, y_pred, proba, list(data.class_names), slices=data.test_columns or None,
                          tolerance=spec.slice_tolerance)
    summary = status_summary(report)
    model_path = trainer.paths.model_path
    if model_path:
        trainer.core.fence.check_current(f"writing {REPORT_FILE}")
        summary["report"] = write_report(report, y_true, y_pred, model_path)
    log.info("%s", summary_line(summary))
    return summary


def report_status(location: str) -> Optional[StatusEvaluation]:
    """status.evaluation from an evaluation.json on this machine (a search's best trial); None when
    there is none or it cannot be read as a report."""
    from .evaluation_report import status_summary

    try:
        with open(location, "rb") as handle:
            text = handle.read(MAX_REPORT_BYTES + 1)
        if len(text) > MAX_REPORT_BYTES:
            raise ValueError(f"larger than {MAX_REPORT_BYTES} bytes")
        summary = status_summary(json.loads(text))
        return StatusEvaluation.model_validate({**summary, "report": location})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ValidationError) as exc:
        log.warning("ignoring the evaluation report %s: %s", location, exc)
        return None
