"""Suite-wide settings. Tier fixtures live in each tier's conftest.py."""

from __future__ import annotations

import os

# Ray must never reach for a cluster it did not start in this test, nor phone home.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DISABLE_DOCKER_CPU_WARNING", "1")
