"""The chart's crds/ is an identical copy of the generated crds/ (scripts/sync-chart-crds.sh)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.chart import CHART_DIR, ROOT

SOURCE = ROOT / "crds"
SCRIPT = ROOT / "scripts" / "sync-chart-crds.sh"


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.yaml"))}


def test_chart_crds_are_identical_to_the_generated_crds() -> None:
    source, chart = _files(SOURCE), _files(CHART_DIR / "crds")
    assert source, "crds/ holds no CRD: run `make crd`"
    stale = sorted(name for name in source.keys() | chart.keys() if source.get(name) != chart.get(name))
    assert not stale, f"charts/kiln/crds is stale for {stale}: run scripts/sync-chart-crds.sh"


def test_sync_script_replaces_stale_and_removes_orphaned_copies(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts")
    shutil.copytree(SOURCE, tmp_path / "crds")
    chart_crds = tmp_path / "charts" / "kiln" / "crds"
    chart_crds.mkdir(parents=True)
    name = next(iter(_files(SOURCE)))
    (chart_crds / name).write_text("stale: true\n")
    (chart_crds / "removed.kiln.dev.yaml").write_text("orphan: true\n")

    subprocess.run(["bash", str(tmp_path / "scripts" / "sync-chart-crds.sh")], check=True, capture_output=True)

    assert _files(chart_crds) == _files(SOURCE)
