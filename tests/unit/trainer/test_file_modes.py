"""Files Kiln writes get the permissions the user's umask gives, like any file `open()` creates."""

from __future__ import annotations

import os
import stat

import pytest
from kiln_trainer.worker import write_bytes


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
@pytest.mark.parametrize("durable", [True, False])
def test_written_files_follow_the_umask(tmp_path, umask, mode, durable):
    previous = os.umask(umask)
    try:
        write_bytes(str(tmp_path / "status.json"), b"{}", durable=durable)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "status.json").stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temp file left behind
