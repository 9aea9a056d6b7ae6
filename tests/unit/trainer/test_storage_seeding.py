"""Storage location resolution and RNG seeding/state capture."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from kiln_trainer.seeding import rng_state, seed_everything, set_rng_state
from kiln_trainer.storage import exists, is_remote, open_file, resolve_location


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("pvc://claim/a/b", "/root/pvc/claim/a/b"),
        ("pvc://claim", "/root/pvc/claim"),
        ("pvc://my-claim/dir/", "/root/pvc/my-claim/dir"),
        ("s3://bucket/key/x.csv", "s3://bucket/key/x.csv"),
        ("file:///data/x.csv", "/data/x.csv"),
        ("/data/x.csv", "/data/x.csv"),
        ("relative/x.csv", "relative/x.csv"),
    ],
)
def test_resolve_location(uri: str, expected: str) -> None:
    assert resolve_location(uri, pvc_root="/root/pvc") == expected


def test_home_is_expanded_in_plain_paths() -> None:
    assert resolve_location("~/x") == str(Path.home() / "x")


def test_pvc_without_claim_is_refused() -> None:
    with pytest.raises(ValueError, match="claim"):
        resolve_location("pvc://")


@pytest.mark.parametrize(
    ("location", "remote"),
    [("s3://b/k", True), ("S3://b/k", True), ("gs://b/k", True), ("/x/y", False), ("x", False), ("file:///x", False)],
)
def test_is_remote(location: str, remote: bool) -> None:
    assert is_remote(location) is remote


def test_open_file_writes_and_reads_local_files(tmp_path: Path) -> None:
    path = str(tmp_path / "f.bin")
    with open_file(path, "wb") as handle:
        handle.write(b"kiln")
    with open_file(path) as handle:
        assert handle.read() == b"kiln"
    assert exists(path) and not exists(str(tmp_path / "missing"))


def test_remote_locations_go_through_fsspec() -> None:
    # fsspec's in-memory filesystem takes the same code path as s3:// without a network.
    with open_file("memory://kiln-test/f.txt", "wb") as handle:
        handle.write(b"remote")
    assert exists("memory://kiln-test/f.txt")
    with open_file("memory://kiln-test/f.txt") as handle:
        assert handle.read() == b"remote"


def draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_seed_everything_repeats_every_generator() -> None:
    seed_everything(123)
    first = draws()
    seed_everything(123)
    assert draws() == first
    seed_everything(124)
    assert draws() != first


def test_rng_state_survives_a_weights_only_checkpoint() -> None:
    seed_everything(7)
    draws()
    buffer = io.BytesIO()
    torch.save(rng_state(), buffer)
    expected = [draws() for _ in range(3)]
    seed_everything(99)
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True))
    assert [draws() for _ in range(3)] == expected
