"""The operator decodes the API server's JSON with orjson, and refuses what is not JSON with a
ValueError, as the standard library does; it encodes request bodies with orjson, and what orjson
refuses with the standard library."""

from __future__ import annotations

import json

import pytest
from kiln_operator.kube import decode_json, encode_json


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


@pytest.mark.parametrize(
    "body",
    [
        {"metadata": {"name": "a", "labels": {"k": "v"}}, "spec": {"replicas": 2, "ratio": 0.25, "on": True, "x": None}},
        {"text": "été ✓"},
        {"big": 2**70},  # beyond orjson's 64 bits: the standard library writes it
        {1: "a"},  # a key that is not a string: the standard library turns it into one
    ],
    ids=["object", "unicode", "big-integer", "integer-key"],
)
def test_encode_json_writes_what_the_standard_library_would_read_back(body: dict) -> None:
    assert json.loads(encode_json(body)) == json.loads(json.dumps(body))
