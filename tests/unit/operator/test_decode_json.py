"""The operator decodes the API server's JSON with orjson, and refuses what is not JSON with a
ValueError, as the standard library does."""

from __future__ import annotations

import pytest
from kiln_operator.kube import decode_json


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"metadata": {"name": "a", "resourceVersion": "7"}}', {"metadata": {"name": "a", "resourceVersion": "7"}}),
        ('{"items": [], "kind": "PodList"}', {"items": [], "kind": "PodList"}),
        (b'{"text": "\\u00e9t\\u00e9", "n": 1.5, "ok": true, "none": null}', {"text": "été", "n": 1.5, "ok": True, "none": None}),
    ],
    ids=["bytes", "str", "escapes-and-scalars"],
)
def test_decode_json_reads_what_the_api_server_sends(data: bytes | str, expected: object) -> None:
    assert decode_json(data) == expected


@pytest.mark.parametrize("data", [b"", b"<html>502</html>", b'{"a": ', b"\xff\xfe"], ids=["empty", "html", "truncated", "not-utf8"])
def test_decode_json_raises_value_error_for_what_is_not_json(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_json(data)
