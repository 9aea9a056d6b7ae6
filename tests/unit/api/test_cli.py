"""`kiln validate` and `kiln crd` as a user runs them: real subprocesses, real files."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kiln_api.validate_cli import validate_files

REPO = Path(__file__).resolve().parents[3]
CORPUS = Path(__file__).parent / "corpus"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
GOOD = """apiVersion: kiln.dev/v1alpha1
kind: TrainingJob
metadata: {name: good}
"""


def _kiln_command() -> list[str]:
    # The installed console script is what users run; fall back to the module in odd layouts.
    script = Path(sys.executable).with_name("kiln")
    return [str(script)] if script.exists() else [sys.executable, "-m", "kiln_cli.main"]


def kiln(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_kiln_command(), *args], cwd=REPO, input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_validate_accepts_every_example():
    assert EXAMPLES, "no examples/*.yaml found"
    result = kiln("validate", *map(str, EXAMPLES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("OK ") == len(EXAMPLES)


def test_validate_valid_corpus_exits_zero():
    files = sorted(str(p) for p in (CORPUS / "valid").glob("*.yaml"))
    result = kiln("validate", *files)
    assert result.returncode == 0, result.stdout
    assert "OK minimal (" in result.stdout


def test_validate_invalid_manifest_names_file_and_path(tmp_path: Path):
    bad = _write(tmp_path, "bad.yaml", GOOD + "spec:\n  hyperparameters: {epochs: 0}\n")
    result = kiln("validate", bad)
    assert result.returncode == 1
    assert f"{bad}: spec.hyperparameters.epochs: Invalid value: 0: must be greater than or equal to 1" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("syntax.yaml", "apiVersion: kiln.dev/v1alpha1\nspec: {a: [1,\n", "YAML syntax error at line"),
        ("empty.yaml", "", "empty file"),
        ("list.yaml", "- a\n- b\n", "not a mapping"),
        ("kind.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", 'kind: Unsupported value: "ConfigMap"'),
        ("dup.yaml", GOOD + "metadata: {name: again}\n", "duplicate key"),
    ],
)
def test_validate_reports_bad_files_without_traceback(tmp_path: Path, name: str, text: str, message: str):
    path = _write(tmp_path, name, text)
    result = kiln("validate", path)
    assert result.returncode == 1
    assert f"{path}: " in result.stdout and message in result.stdout, result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_validate_missing_file_is_an_error_not_a_traceback(tmp_path: Path):
    missing = str(tmp_path / "missing.yaml")
    result = kiln("validate", missing)
    assert result.returncode == 1
    assert f"{missing}: no such file" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_validate_labels_documents_of_a_multi_document_file(tmp_path: Path):
    path = _write(tmp_path, "multi.yaml", GOOD + "---\n" + GOOD.replace("good", "Bad_Name"))
    out = io.StringIO()
    assert validate_files([path], out=out) == 1
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"OK good ({path}:doc1)")
    assert lines[1].startswith(f"{path}:doc2: metadata.name: ")


def test_validate_reports_every_file_and_fails_if_any_fails(tmp_path: Path):
    good = _write(tmp_path, "good.yaml", GOOD)
    bad = _write(tmp_path, "bad.yaml", GOOD + "spec: {entrypoint: 'a:b', model: {}}\n")
    out = io.StringIO()
    assert validate_files([good, bad], out=out) == 1
    assert f"OK good ({good})" in out.getvalue()
    assert f"{bad}: spec.entrypoint: " in out.getvalue()


def test_crd_command_prints_the_committed_crd():
    result = kiln("crd")
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(result.stdout)
    assert document["kind"] == "CustomResourceDefinition"
    assert result.stdout == (REPO / "crds" / "trainingjobs.kiln.dev.yaml").read_text()


def test_validate_reads_standard_input_for_a_dash():
    result = kiln("validate", "-", stdin=GOOD + "---\n" + GOOD.replace("good", "x" * 41))
    assert result.returncode == 1
    assert "OK good (-:doc1)" in result.stdout
    assert "-:doc2: metadata.name: " in result.stdout


@pytest.mark.parametrize(
    ("argv", "workers", "use_ray"),
    [(["run", "job.yaml"], None, False), (["run", "job.yaml", "--workers", "3"], 3, False),
     (["run", "job.yaml", "--workers", "1", "--ray"], 1, True)],
)
def test_run_passes_workers_and_ray_to_the_trainer(monkeypatch, argv, workers, use_ray):
    import kiln_trainer.local
    from kiln_cli.main import main

    calls = []
    monkeypatch.setattr(kiln_trainer.local, "run_local_cli",
                        lambda file, output, workers, use_ray=False: calls.append((file, output, workers, use_ray)) or 0)
    assert main(argv) == 0
    assert calls == [("job.yaml", "kiln-runs", workers, use_ray)]


def test_run_help_names_the_ray_flag_and_the_local_default():
    result = kiln("run", "--help")
    assert result.returncode == 0
    assert "--ray" in result.stdout and "as many as this machine holds" in result.stdout
