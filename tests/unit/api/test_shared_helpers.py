"""kiln_api's shared helpers as the operator uses them: timestamps, PVC paths, phase names."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from kiln_api import Phase
from kiln_api.storage_paths import PVC_MOUNT_ROOT, is_pvc, pvc_local_path, pvc_mount_path, split_pvc
from kiln_api.timefmt import format_time, parse_time, rfc3339
from kiln_operator.plan import Plan, is_finished
from kiln_operator.settings import OperatorSettings, SettingsError


def test_times_round_trip_in_utc_whole_seconds() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(moment) == "2026-01-02T01:04:05Z"
    assert format_time(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05Z"  # naive counts as UTC
    assert parse_time("2026-01-02T01:04:05Z") == moment
    assert parse_time("2026-01-02T01:04:05") == moment  # no offset: UTC
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert parse_time(rfc3339()) is not None


@pytest.mark.parametrize("value", [None, "", "yesterday", "2026-13-01T00:00:00Z"])
def test_unreadable_times_are_none(value: str | None) -> None:
    assert parse_time(value) is None


@pytest.mark.parametrize(
    ("url", "claim", "path", "local"),
    [
        ("pvc://ckpt", "ckpt", "", f"{PVC_MOUNT_ROOT}/ckpt"),
        ("pvc://ckpt/", "ckpt", "", f"{PVC_MOUNT_ROOT}/ckpt"),
        ("pvc://ckpt/runs/a/", "ckpt", "runs/a", f"{PVC_MOUNT_ROOT}/ckpt/runs/a"),
    ],
)
def test_pvc_urls_split_and_resolve(url: str, claim: str, path: str, local: str) -> None:
    assert is_pvc(url)
    assert split_pvc(url) == (claim, path)
    assert pvc_local_path(url) == local
    assert pvc_local_path(url, "/other/") == local.replace(PVC_MOUNT_ROOT, "/other")
    assert pvc_mount_path(claim) == f"{PVC_MOUNT_ROOT}/{claim}"


@pytest.mark.parametrize("url", ["pvc://", "pvc:///runs", "s3://bucket/x", "/local"])
def test_only_pvc_urls_with_a_claim_split(url: str) -> None:
    with pytest.raises(ValueError):
        split_pvc(url)


def test_default_storage_must_name_a_claim() -> None:
    assert OperatorSettings.from_env({"KILN_DEFAULT_CHECKPOINT_STORAGE": "pvc://ckpt"}).default_checkpoint_storage == "pvc://ckpt"
    with pytest.raises(SettingsError, match="claim"):
        OperatorSettings.from_env({"KILN_DEFAULT_CHECKPOINT_STORAGE": "pvc://"})


def test_finished_phases_are_the_apis() -> None:
    assert {phase.value for phase in Phase if is_finished(phase.value)} == {"Succeeded", "Failed"}
    assert not is_finished("") and not is_finished(None) and not is_finished("Unknown")


def test_plans_hold_phases_and_write_plain_strings() -> None:
    plan = Plan("Running", "Training", "")
    assert plan.phase is Phase.running and plan.phase.value == "Running"
    with pytest.raises(ValueError):
        Plan("Bogus", "", "")
