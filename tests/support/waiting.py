"""The one way tests wait: poll a condition with a generous deadline, never a bare sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 60.0, what: str = "condition", interval: float = 0.05,
             on_timeout: Callable[[], str] | None = None) -> T:
    """Poll `condition` until it returns something truthy and return that; after `timeout` seconds
    fail naming `what`, the last value and, from `on_timeout`, whatever else explains the wait."""
    deadline = time.monotonic() + timeout
    last: Any = condition()
    while not last:
        if time.monotonic() > deadline:
            extra = f"\n{on_timeout()}" if on_timeout else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last value: {last!r}){extra}")
        time.sleep(interval)
        last = condition()
    return last
