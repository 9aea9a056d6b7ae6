"""The Grafana dashboard shipped in the chart, and its queries as Grafana would send them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from tests.support.chart import CHART_DIR

DASHBOARD = CHART_DIR / "dashboards" / "kiln.json"


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref_id: str
    expr: str
    # What the series need besides Kiln: "cuda" (a job training on GPUs), "dcgm" (NVIDIA's DCGM
    # exporter), "cadvisor" (the kubelet's container metrics), "search" (a job with spec.search),
    # "evaluation" (a job that finished with an evaluation report);
    # None: Kiln's driver and operator.
    requires: str | None
    legend: str = ""
    instant: bool = False


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every non-row panel, rows' nested panels included."""
    found = []
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            found.extend(panel.get("panels") or [])
        else:
            found.append(panel)
    return found


def queries(dashboard: dict[str, Any]) -> list[PanelQuery]:
    return [
        PanelQuery(p["title"], t["refId"], t["expr"], p.get("kilnRequires"), t.get("legendFormat", ""), bool(t.get("instant")))
        for p in panels(dashboard)
        for t in p.get("targets") or []
    ]


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace `$name` / `${name}` as Grafana does; an unknown variable is an error."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise KeyError(f"dashboard variable ${name} has no value")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expr)
