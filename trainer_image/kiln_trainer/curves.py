"""Training curves (loss and validation metrics per epoch) drawn with matplotlib's Agg backend."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any


def read_jsonl(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def plot_curves(records: Iterable[dict[str, Any]], path: str, title: str = "") -> bool:
    """Draw loss and validation-metric curves; False (and no file) when there is nothing to draw."""
    rows = [r for r in records if "epoch" in r]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    metric_names = sorted({k for r in rows for k in r if k.startswith("val_") and k != "val_loss"})
    fig, axes = plt.subplots(1, 2 if metric_names else 1, figsize=(11 if metric_names else 6, 4), squeeze=False)
    loss_ax = axes[0][0]
    for name in ("train_loss", "val_loss"):
        if any(name in r for r in rows):
            loss_ax.plot(epochs, [r.get(name) for r in rows], marker="o", label=name)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    loss_ax.legend()
    if metric_names:
        ax = axes[0][1]
        for name in metric_names:
            ax.plot(epochs, [r.get(name) for r in rows], marker="o", label=name)
        ax.set(xlabel="epoch", title="validation metrics")
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
