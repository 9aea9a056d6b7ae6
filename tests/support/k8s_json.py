"""JSON for the emulated API server: orjson (several times faster both ways). `dumps` falls back to
the standard library where orjson refuses (integers beyond 64 bits); `loads` reads such an integer
as a float, as orjson does (Kubernetes' typed fields are int64). NaN and the infinities are not
JSON, and a real API server refuses them: so does `loads`."""

from __future__ import annotations

import json
from typing import Any

import orjson

# Only what JSON has: orjson would otherwise write datetimes, dataclasses and str/int subclasses,
# which the standard library (and so the emulator before it) refuses.
PLAIN = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS


def _refuse(constant: str) -> Any:
    raise ValueError(f"{constant} is not valid JSON")


def dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=PLAIN)
    except TypeError:
        return json.dumps(value).encode()


def loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data, parse_constant=_refuse)


def canonical(value: Any) -> bytes:
    """`value` with sorted keys, a memo key; raises ValueError for what is not plain JSON."""
    try:
        return orjson.dumps(value, option=PLAIN | orjson.OPT_SORT_KEYS)
    except TypeError:
        try:
            return json.dumps(value, sort_keys=True, allow_nan=False).encode()
        except TypeError as exc:
            raise ValueError(str(exc)) from None
