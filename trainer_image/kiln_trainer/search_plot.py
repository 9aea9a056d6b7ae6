"""search.png: the search metric per trial over epochs, and parameter-vs-metric scatters (matplotlib Agg)."""

from __future__ import annotations

import json
import math
from typing import Any

from .search_report import TrialRecord, best_value


def _axis_values(values: list[Any]) -> tuple[list[float], list[str] | None]:
    """Numbers plot as they are; anything else (optimizer names, layer lists) as categories."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values], None
    labels = list(dict.fromkeys(json.dumps(v) for v in values))
    return [float(labels.index(json.dumps(v))) for v in values], labels


def plot_search(records: list[TrialRecord], metric: str, mode: str, path: str, title: str = "") -> bool:
    """Draw search.png; False (and no file) when no trial reported an epoch."""
    curves = [r for r in records if r.history]
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parameters = list(curves[0].parameters)
    fig, axes = plt.subplots(1, 1 + len(parameters), figsize=(5 * (1 + len(parameters)), 4), squeeze=False)
    ax = axes[0][0]
    for r in curves:
        points = [(row["epoch"], row[metric]) for row in r.history if metric in row]
        if points:
            ax.plot(*zip(*points, strict=True), marker=".", label=f"{r.trial} ({r.state.value})")
    ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} per trial")
    if len(curves) <= 12:
        ax.legend(fontsize="x-small")
    scored = [(r, best_value(r, metric, mode)) for r in curves]
    scored = [(r, v) for r, v in scored if v is not None and math.isfinite(v)]
    for ax, name in zip(axes[0][1:], parameters, strict=True):
        xs, labels = _axis_values([r.parameters[name] for r, _ in scored])
        ax.scatter(xs, [v for _, v in scored])
        if labels is not None:
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize="small")
        elif "learningRate" in name and xs and min(xs) > 0:
            ax.set_xscale("log")
        ax.set(xlabel=name, ylabel=f"best {metric}", title=name)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
