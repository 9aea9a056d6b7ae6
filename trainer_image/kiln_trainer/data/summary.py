"""A short description of a data set, logged when training starts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class DataSummary:
    rows: int
    features: int
    classes: int | None
    class_balance: dict[str, float] = field(default_factory=dict)
    missing_values: int = 0
    task: str = "classification"
    source: str = ""

    def describe(self) -> str:
        lines = [
            f"data: {self.source} ({self.task})",
            f"  rows: {self.rows}, features: {self.features}, missing values: {self.missing_values}",
        ]
        if self.classes is not None:
            shown = sorted(self.class_balance.items(), key=lambda kv: -kv[1])[:10]
            balance = ", ".join(f"{name}: {share:.1%}" for name, share in shown)
            more = f" (+{len(self.class_balance) - len(shown)} more)" if len(self.class_balance) > len(shown) else ""
            lines.append(f"  classes: {self.classes} [{balance}{more}]")
        return "\n".join(lines)


def summarize(
    y: np.ndarray, *, features: int, task: str, class_names: list[str], missing_values: int, source: str
) -> DataSummary:
    """Counts and class shares over all rows that will be used."""
    rows = len(y)
    if task != "classification":
        return DataSummary(rows=rows, features=features, classes=None, missing_values=missing_values, task=task, source=source)
    counts = np.bincount(y, minlength=len(class_names))
    balance = {name: float(c) / max(rows, 1) for name, c in zip(class_names, counts[: len(class_names)], strict=True)}
    return DataSummary(
        rows=rows, features=features, classes=len(class_names), class_balance=balance,
        missing_values=missing_values, task=task, source=source,
    )
