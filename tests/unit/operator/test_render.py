"""`kiln render`: the whole object set as YAML, or field-named errors and exit 1."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import yaml
from kiln_operator.objects import PLACEHOLDER_UID
from kiln_operator.render import render_cli

ROOT = Path(__file__).resolve().parents[3]
_SCRIPT = Path(sys.executable).with_name("kiln")
# The installed `kiln` console script, as a user runs it; the module if it is not installed.
KILN = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "kiln_cli.main"]


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    environ.update(env or {})
    return subprocess.run([*KILN, "render", *args], cwd=ROOT, capture_output=True, text=True, env=environ, timeout=120)


def test_render_digits_prints_every_object_valid():
    result = _run("examples/digits.yaml")
    assert result.returncode == 0, result.stderr
    objects = list(yaml.safe_load_all(result.stdout))
    assert [f"{o['kind']}/{o['metadata']['name']}" for o in objects] == [
        "Secret/digits-ray-auth", "ConfigMap/digits-job", "Service/digits-head", "NetworkPolicy/digits",
        "Pod/digits-head", "Pod/digits-worker-0", "Pod/digits-worker-1",
    ]  # fmt: skip
    for obj in objects:
        kubernetes_validate.validate(obj, "1.30", strict=True)
        assert obj["metadata"]["ownerReferences"][0]["uid"] == PLACEHOLDER_UID
    assert "pvc://kiln-checkpoints" in result.stderr  # the note on the stand-in storage


def test_render_uses_the_configured_default_storage(tmp_path: Path):
    out = io.StringIO()
    err = io.StringIO()
    code = render_cli(str(ROOT / "examples/digits.yaml"), out, environ={"KILN_DEFAULT_CHECKPOINT_STORAGE": "s3://b/ckpt"}, err=err)
    assert code == 0 and err.getvalue() == ""
    head = [o for o in yaml.safe_load_all(out.getvalue()) if o["metadata"]["name"] == "digits-head" and o["kind"] == "Pod"][0]
    env = {v["name"]: v.get("value") for v in head["spec"]["containers"][0]["env"]}
    assert env["KILN_CHECKPOINT_DIR"] == "s3://b/ckpt/default/digits"


def test_render_tokens_are_random():
    tokens = set()
    for _ in range(2):
        out = io.StringIO()
        render_cli(str(ROOT / "examples/digits.yaml"), out, environ={}, err=io.StringIO())
        tokens.add(next(yaml.safe_load_all(out.getvalue()))["stringData"]["token"])
    assert len(tokens) == 2


def test_invalid_manifest_prints_field_errors_without_traceback(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: kiln.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: bad}\n"
        "spec:\n  workers: {replicas: 0}\n  checkpoint: {storage: /local/dir}\n"
    )
    result = _run(str(bad))
    assert result.returncode == 1
    assert "spec.workers.replicas: Invalid value: 0" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_local_checkpoint_path_is_refused_with_the_reason(tmp_path: Path):
    bad = tmp_path / "local.yaml"
    bad.write_text("apiVersion: kiln.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: x}\nspec:\n  checkpoint: {storage: /local/dir}\n")
    result = _run(str(bad))
    assert result.returncode == 1
    assert "spec.checkpoint.storage: Invalid value: '/local/dir'" in result.stderr


def test_missing_file_and_bad_settings_are_one_line_errors(tmp_path: Path):
    missing = _run(str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
    settings = _run("examples/digits.yaml", env={"KILN_METRICS_PORT": "x"})
    assert settings.returncode == 1 and "KILN_METRICS_PORT" in settings.stderr
