"""A real Prometheus server (Debian's `prometheus`) on loopback, for monitoring tests.

It scrapes any list of targets every second, keeps its TSDB in its own directory and is
queried over its HTTP API. Tests skip with a reason when the binary is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.ports import free_port

SYSTEM_DEPS = Path(__file__).resolve().parents[2] / "scripts" / "system-deps.sh"


def ensure_installed() -> tuple[str | None, str | None]:
    """(prometheus, promtool) paths, installing Debian's package first when missing and root."""
    if not (shutil.which("prometheus") and shutil.which("promtool")) and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["bash", str(SYSTEM_DEPS)], capture_output=True, timeout=600)
    return shutil.which("prometheus"), shutil.which("promtool")


PROMETHEUS, PROMTOOL = ensure_installed()
SKIP_REASON = "prometheus/promtool missing and not installable here (needs root and apt-get: scripts/system-deps.sh)"




@dataclass(frozen=True)
class Target:
    """One scrape job: Prometheus's `job` label, `host:port`, and extra target labels."""

    job: str
    address: str
    labels: dict[str, str] = field(default_factory=dict)
    honor_labels: bool = False


class QueryError(Exception):
    """Prometheus answered a query with an error (bad PromQL, unknown function...)."""


def scrape_config(targets: list[Target], interval: str = "1s") -> dict[str, Any]:
    """The prometheus.yml for `targets` (pure, so tests can check it)."""
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "scrape_configs": [
            {
                "job_name": t.job,
                "honor_labels": t.honor_labels,
                "static_configs": [{"targets": [t.address], "labels": dict(t.labels)}],
            }
            for t in targets
        ],
    }


class PrometheusServer:
    def __init__(self, workdir: Path, targets: list[Target]) -> None:
        if PROMETHEUS is None:
            raise RuntimeError("prometheus is not installed (Debian package prometheus; scripts/system-deps.sh)")
        self.workdir = workdir
        self.targets = targets
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log = workdir / "prometheus.log"

    def __enter__(self) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(self.targets)))
        (self.workdir / "tsdb").mkdir(exist_ok=True)
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                [
                    str(PROMETHEUS),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready(60.0)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)
        self._process = None

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:]) if self._log.exists() else ""

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self._process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"prometheus not ready after {timeout} s:\n{self.log_tail()}")

    def _api(self, path: str, params: dict[str, Any]) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise QueryError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query: the result vector (raises QueryError on bad PromQL)."""
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return list(self._api("query", params)["result"])

    def query_range(self, promql: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        """Range query, as a dashboard panel runs it: the result matrix."""
        params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        return list(self._api("query_range", params)["result"])

    def targets_up(self) -> dict[str, bool]:
        """job -> whether its last scrape succeeded."""
        return {r["metric"]["job"]: r["value"][1] == "1" for r in self.query("up")}
