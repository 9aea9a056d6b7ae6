"""Timestamps as Kubernetes and the TrainingJob status write them: RFC 3339, UTC, whole seconds.

One format for the operator, the trainer and `kiln run`: a status field written by one and
compared or parsed by another must read the same.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_time(moment: datetime) -> str:
    """`moment` in UTC as RFC 3339; a naive datetime is taken to be UTC already."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return aware.astimezone(timezone.utc).strftime(TIME_FORMAT)


def rfc3339(unix: float | None = None) -> str:
    """A Unix time (default: now) as RFC 3339."""
    return format_time(datetime.fromtimestamp(time.time() if unix is None else unix, tz=timezone.utc))


def parse_time(value: str | None) -> datetime | None:
    """RFC 3339 -> aware datetime; None for missing or unparseable values."""
    if not value:
        return None
    try:
        # Python 3.10's fromisoformat does not read the "Z" suffix.
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


__all__ = ["TIME_FORMAT", "format_time", "parse_time", "rfc3339"]
