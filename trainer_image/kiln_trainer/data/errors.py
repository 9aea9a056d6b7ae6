"""Errors in a job's settings that the user must fix; printed as `field: message`, no traceback."""

from __future__ import annotations


class SpecError(ValueError):
    """A setting (named by its manifest path, e.g. `spec.data.target`) cannot be honoured."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class DataError(SpecError):
    """The data described by `spec.data` cannot be loaded or prepared."""
