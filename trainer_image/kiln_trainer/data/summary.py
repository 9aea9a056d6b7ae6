"""A short description of a data set, logged when training starts."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

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
    # Set by the trainer once it knows its device (batch_feed.py): where the training split lives.
    placement: str | None = None
    train_rows: int | None = None
    train_bytes: int | None = None
    device: str | None = None

    def placed(self, placement: str, *, train_rows: int, train_bytes: int | None, device: str) -> DataSummary:
        """This summary with the training split's placement."""
        return replace(self, placement=placement, train_rows=train_rows, train_bytes=train_bytes, device=device)

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
        if self.placement == "stream":
            lines.append(f"  placement: stream (training split of {self.train_rows} rows, streamed with Ray Data, "
                         f"each worker reading its share ahead onto {self.device})")
        elif self.placement is not None:
            where = f"on {self.device}" if self.placement == "device" else "in host memory"
            if self.placement != "device" and self.device != "cpu":
                where += f", each batch copied to {self.device} ahead of its step"
            size = f", {self.train_bytes / 2**20:.1f} MiB" if self.train_bytes is not None else ""
            lines.append(f"  placement: {self.placement} (training split of {self.train_rows} rows{size} {where})")
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
