"""`inspect.png`: a grid of histograms drawn from a `kiln inspect` report with matplotlib's Agg backend.

Only the report is read (its histograms and value counts), so the picture shows exactly what the
report says, sample and all.
"""

from __future__ import annotations

from typing import Any

MAX_PANELS = 24
GRID_COLUMNS = 4


def panels(report: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(title, kind, data) per panel: kind `hist` (edges, counts) or `bars` ([label, count] pairs)."""
    out: list[tuple[str, str, Any]] = []
    target = report["target"]
    if "classes" in target:
        out.append((f"{target['column']} (classes)", "bars", [[k, v["count"]] for k, v in target["classes"].items()]))
    elif target.get("distribution"):
        out.append((f"{target['column']} (target)", "hist", target["distribution"]["histogram"]))
    images = report.get("images")
    if images:
        for name in ("width", "height"):
            if images[name]:
                out.append((f"image {name} (px)", "hist", images[name]["histogram"]))
    text = report.get("text")
    if text:
        for name in ("words", "characters"):
            if text[name]:
                out.append((f"{text['column']}: {name} per row", "hist", text[name]["histogram"]))
    for col in report.get("column_info") or []:
        if col["name"] == target["column"]:
            continue
        if col.get("numeric"):
            out.append((col["name"], "hist", col["numeric"]["histogram"]))
        elif col["values"]["top"] and (not text or col["name"] != text["column"]):
            out.append((col["name"], "bars", col["values"]["top"]))
    return out[:MAX_PANELS]


def plot_report(report: dict[str, Any], path: str) -> bool:
    """Draw the report's histograms into `path`; False (and no file) when there is nothing to draw."""
    shown = panels(report)
    if not shown:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(GRID_COLUMNS, len(shown))
    rows = (len(shown) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.8 * rows), squeeze=False)
    for ax, (title, kind, data) in zip(axes.flat, shown, strict=False):
        if kind == "hist":
            edges, counts = data["edges"], data["counts"]
            ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:], strict=True)], align="edge")
        else:
            labels = [str(label)[:12] for label, _ in data]
            ax.bar(range(len(data)), [count for _, count in data])
            ax.set_xticks(range(len(data)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(title[:40], fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    sampling = report["sampling"]
    note = f" (sample of {sampling['rows_analysed']:,} of {sampling['rows_total']:,})" if sampling.get("sampled") else ""
    fig.suptitle(f"{report['source']}{note}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
