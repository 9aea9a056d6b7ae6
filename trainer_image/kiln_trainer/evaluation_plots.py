"""The evaluation report's picture: confusion_matrix.png (classification) or residuals.png (regression),
drawn with matplotlib's Agg backend into bytes (the caller writes them where the model lives)."""

from __future__ import annotations

import io
from typing import Any, Optional

import numpy as np

CONFUSION_MATRIX_PNG = "confusion_matrix.png"
RESIDUALS_PNG = "residuals.png"
# Beyond this many classes the cells are too small to carry their counts or tick labels.
ANNOTATED_CLASSES = 20
MAX_SCATTER_POINTS = 20_000  # a larger test split is drawn from an evenly spaced sample of it


def report_plot(report: dict[str, Any], y_true: np.ndarray, y_pred: np.ndarray) -> Optional[tuple[str, bytes]]:
    """(file name, PNG bytes) for a report, or None when there is nothing to draw (no test rows)."""
    if not report.get("rows"):
        return None
    if report["task"] == "classification":
        return CONFUSION_MATRIX_PNG, confusion_matrix_png(report["confusion_matrix"], report["labels"])
    return RESIDUALS_PNG, residuals_png(np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    _pyplot().close(fig)
    return buffer.getvalue()


def confusion_matrix_png(matrix: list[list[int]], labels: list[str]) -> bytes:
    """Rows: true class, columns: predicted; each row shaded by its share, so rare classes show too."""
    plt = _pyplot()
    counts = np.asarray(matrix, dtype=np.float64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    size = min(4 + 0.4 * len(labels), 16)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if len(labels) <= ANNOTATED_CLASSES:
        ticks = range(len(labels))
        ax.set_xticks(ticks, [str(label)[:16] for label in labels], rotation=45, ha="right")
        ax.set_yticks(ticks, [str(label)[:16] for label in labels])
        for (i, j), value in np.ndenumerate(counts):
            ax.text(j, i, f"{int(value)}", ha="center", va="center", color="white" if shares[i, j] > 0.5 else "black",
                    fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (test split)")
    return _png(fig)


def residuals_png(y_true: np.ndarray, y_pred: np.ndarray) -> bytes:
    """Residuals (true - predicted) against the prediction, and their histogram."""
    plt = _pyplot()
    predicted, residuals = y_pred.ravel(), (y_true - y_pred).ravel()
    step = max(1, len(residuals) // MAX_SCATTER_POINTS)
    fig, (scatter, histogram) = plt.subplots(1, 2, figsize=(11, 4))
    scatter.scatter(predicted[::step], residuals[::step], s=6, alpha=0.5)
    scatter.axhline(0.0, color="black", linewidth=1)
    scatter.set(xlabel="predicted", ylabel="true - predicted", title="residuals (test split)")
    histogram.hist(residuals, bins=min(50, max(5, len(residuals) // 5)))
    histogram.axvline(0.0, color="black", linewidth=1)
    histogram.set(xlabel="true - predicted", ylabel="rows", title="residual distribution")
    return _png(fig)
