"""The real `kubectl`, pinned to one minor version, run as a subprocess against the emulator.

Where no kubectl of that version exists the tests that need it skip with the reason; in CI
(`CI=true`) they fail instead, since a skip there would hide the whole scenario.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

KUBECTL_VERSION = "1.32"  # the client the kubectl scenarios are written against
CANDIDATES = ("kubectl", f"/usr/lib/google-cloud-sdk/bin/kubectl.{KUBECTL_VERSION}",
              f"/usr/lib/google-cloud-sdk/bin/kubectl.{KUBECTL_VERSION.replace('.', '_')}")


def client_version(binary: str) -> str | None:
    """`major.minor` of a kubectl binary, None when it cannot run."""
    try:
        out = subprocess.run([binary, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30)
        info = json.loads(out.stdout)["clientVersion"]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        return None
    return f'{info["major"]}.{info["minor"].rstrip("+")}'


def find_kubectl() -> str | None:
    """$KILN_KUBECTL, else the first kubectl of the pinned version on the PATH or in the Cloud SDK."""
    explicit = os.environ.get("KILN_KUBECTL")
    for candidate in ([explicit] if explicit else []) + list(CANDIDATES):
        path = shutil.which(candidate) if "/" not in candidate else (candidate if Path(candidate).exists() else None)
        if path and client_version(path) == KUBECTL_VERSION:
            return path
    return None


def require_kubectl() -> str:
    path = find_kubectl()
    if path is None:
        reason = (f"kubectl {KUBECTL_VERSION} not found (PATH, /usr/lib/google-cloud-sdk/bin, $KILN_KUBECTL): "
                  "the kubectl scenarios need the real client")
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@dataclass
class Kubectl:
    """`kubectl` with a kubeconfig of its own and a private HOME (its discovery cache lives there)."""

    binary: str
    kubeconfig: str
    home: Path
    transcript: list[str]
    last: str = ""

    def run(self, *args: str, stdin: str | None = None, timeout: float = 120,
            record: bool = True) -> subprocess.CompletedProcess[str]:
        """Run kubectl; `record=False` keeps polls out of the transcript."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home), "KUBECONFIG": self.kubeconfig}
        done = subprocess.run([self.binary, *args], input=stdin, capture_output=True, text=True, timeout=timeout, env=env)
        self.last = f"$ kubectl {' '.join(args)}\n{done.stdout}{done.stderr}"
        if record:
            self.transcript.append(self.last)
        return done

    def ok(self, *args: str, stdin: str | None = None, timeout: float = 120, record: bool = True) -> str:
        """stdout of a command that must succeed (its stderr in the assertion message otherwise)."""
        done = self.run(*args, stdin=stdin, timeout=timeout, record=record)
        assert done.returncode == 0, f"kubectl {' '.join(args)} exited {done.returncode}: {done.stderr}"
        return done.stdout


def table_rows(output: str) -> list[dict[str, str]]:
    """`kubectl get` output as one dict per row, keyed by header (columns split on 2+ spaces)."""
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        return []
    header = lines[0]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    names = header.split()
    rows = []
    for line in lines[1:]:
        bounds = [*starts[1:], None]
        rows.append({name: line[start:end].strip() for name, start, end in zip(names, starts, bounds, strict=True)})
    return rows
