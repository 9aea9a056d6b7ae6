"""Read what exists for a job: its child objects (objects/table.py) and the driver's /status.

The I/O edge before `reconciler.decide`: everything here only reads.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from kiln_api.spec import MetricsSpec

from . import pod_state
from .kube import ApiError, KubeClient, concurrently
from .objects.labels import SPEC_HASH_ANNOTATION, JobRef, head_pod_name, job_selector, label_selector
from .objects.table import CHILDREN, HEAD_POD
from .reconciler import Observation

# The head is the job's own program: whatever it answers, one bad head must neither stall nor
# exhaust the operator that serves every job. One deadline covers the whole call (connect, a
# slowly trickling answer), the answer is capped, and anything else than a plausible status
# object counts as "trainer unreachable".
STATUS_DEADLINE_SECONDS = 3.0
STATUS_MAX_BODY_BYTES = 1 << 20
STATUS_MAX_HEADER_BYTES = 64 << 10
STATUS_MAX_DEPTH = 32  # the driver's /status nests 3 levels; deeper is not a status
# What the driver's /status fields may be (docs/contracts.md §2); None is "not reported".
STATUS_FIELD_TYPES: dict[str, type] = {
    "phase": str, "reason": str, "message": str, "startTime": str, "completionTime": str,
    "progress": dict, "metrics": dict, "best": dict, "checkpoint": dict, "earlyStopping": dict, "search": dict,
    "evaluation": dict,
}  # fmt: skip


class BadAnswer(ValueError):
    """The head answered, but not with something the operator will read."""


def _exists(kube: KubeClient, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return kube.get(kind, namespace, name)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    """True unless the object names a different owner (a leftover of an earlier job of the same name)."""
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return not refs or any(ref.get("uid") == uid for ref in refs)


def head_status_url(job: dict[str, Any], pods: dict[str, dict[str, Any]]) -> str | None:
    """Where the driver serves /status: the running head pod's IP and `spec.metrics.port`."""
    head = pods.get(head_pod_name(JobRef(job["metadata"]["name"])))
    status = (head or {}).get("status") or {}
    if status.get("phase") != pod_state.POD_RUNNING or not status.get("podIP"):
        return None
    default_port = MetricsSpec.model_fields["port"].default
    port = ((job.get("spec") or {}).get("metrics") or {}).get("port", default_port)
    host = status["podIP"]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/status"


def _split_answer(raw: bytes) -> tuple[int, dict[str, str], bytes] | None:
    """(status code, lower-cased headers, body so far) once the header block is complete, else None."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        if len(raw) > STATUS_MAX_HEADER_BYTES:
            raise BadAnswer(f"headers over the {STATUS_MAX_HEADER_BYTES}-byte limit")
        return None
    lines = raw[:end].decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/") or not status_line[1].isdigit():
        raise BadAnswer(f"not an HTTP answer: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line[1]), headers, raw[end + 4:]


def _content_length(headers: dict[str, str]) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    if not value.isdigit():
        raise BadAnswer(f"bad Content-Length {value[:40]!r}")
    length = int(value)
    if length > STATUS_MAX_BODY_BYTES:
        raise BadAnswer(f"answer of {length} bytes is over the {STATUS_MAX_BODY_BYTES}-byte limit")
    return length


def http_get(url: str, deadline_seconds: float = STATUS_DEADLINE_SECONDS) -> bytes:
    """The body of a 200 answer to GET `url`, read within one overall deadline and size cap.

    HTTP/1.0 over a plain socket, so that every wait (connect, each read) is bounded by the
    time left rather than by a per-read timeout a trickling server can renew forever. The
    operator reaches pod IPs directly: no proxy from its environment applies.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise BadAnswer(f"unsupported URL {url!r}")
    deadline = time.monotonic() + deadline_seconds

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete answer within {deadline_seconds:g}s")
        return remaining

    request = (
        f"GET {parts.path or '/'} HTTP/1.0\r\nHost: {parts.netloc}\r\n"
        "Accept: application/json\r\nConnection: close\r\n\r\n"
    )
    try:
        return _read_answer(parts.hostname, parts.port or 80, request, left)
    except TimeoutError:
        raise TimeoutError(f"no complete answer within {deadline_seconds:g}s") from None


def _read_answer(host: str, port: int, request: str, left: Callable[[], float]) -> bytes:
    """Send `request`, read the answer's body; every wait is bounded by `left()`."""
    raw = bytearray()
    answer: tuple[int, dict[str, str], bytes] | None = None
    length: int | None = None
    with socket.create_connection((host, port), timeout=left()) as sock:
        sock.settimeout(left())
        sock.sendall(request.encode("ascii"))
        while True:
            sock.settimeout(left())
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
            if answer is None and (answer := _split_answer(bytes(raw))) is not None:
                if answer[0] != 200:
                    raise BadAnswer(f"HTTP {answer[0]}")
                if "chunked" in answer[1].get("transfer-encoding", "").lower():
                    raise BadAnswer("chunked answers are not read")
                length = _content_length(answer[1])
                raw = bytearray(answer[2])  # from here on, `raw` is the body
            if answer is not None:
                if len(raw) > STATUS_MAX_BODY_BYTES:
                    raise BadAnswer(f"answer over the {STATUS_MAX_BODY_BYTES}-byte limit")
                if length is not None and len(raw) >= length:
                    break
    if answer is None:
        raise BadAnswer("the connection closed before a complete answer")
    if length is not None and len(raw) < length:
        raise BadAnswer(f"the connection closed after {len(raw)} of {length} bytes")
    return bytes(raw[:length] if length is not None else raw)


def _too_deep(value: Any, limit: int) -> bool:
    """True when `value` nests lists/objects more than `limit` levels (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def parse_status(body: bytes) -> dict[str, Any]:
    """The driver's /status answer as a dict of the contract's shape, or BadAnswer."""
    try:
        value = json.loads(body.decode("utf-8"))
    except RecursionError:
        raise BadAnswer(f"JSON nested deeper than {STATUS_MAX_DEPTH} levels") from None
    except ValueError as exc:  # invalid UTF-8 or invalid JSON
        raise BadAnswer(f"not JSON: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise BadAnswer(f"expected a JSON object, got {type(value).__name__}")
    if _too_deep(value, STATUS_MAX_DEPTH):
        raise BadAnswer(f"JSON nested deeper than {STATUS_MAX_DEPTH} levels")
    for key, expected in STATUS_FIELD_TYPES.items():
        item = value.get(key)
        if item is not None and not isinstance(item, expected):
            raise BadAnswer(f"{key}: expected {'an object' if expected is dict else 'a string'}, got {type(item).__name__}")
    return value


def fetch_trainer_status(
    url: str | None, deadline_seconds: float = STATUS_DEADLINE_SECONDS
) -> tuple[dict[str, Any] | None, str | None]:
    """(status JSON, None) or (None, why it failed); (None, None) when there is no head to ask.

    Never raises for anything the head does: a bad answer is an unreachable trainer.
    """
    if url is None:
        return None, None
    try:
        return parse_status(http_get(url, deadline_seconds)), None
    except (OSError, ValueError, RecursionError, MemoryError) as exc:
        return None, f"GET {url}: {str(exc)[:300] or type(exc).__name__}"


def _child_reads(job: JobRef) -> tuple[list[str], list[tuple[str, str]]]:
    """How the job's children are read, from the child-object table: the kinds listed by label
    (sorted, once each) and the (kind, name) of those fetched by name (rows never read back, the
    Secret, left out)."""
    listed = sorted({row.kind for row in CHILDREN if row.listed})
    named = [(row.kind, row.name(job, 0)) for row in CHILDREN if not row.listed and row.read_back]
    return listed, named


def read_children(kube: KubeClient, namespace: str, job: JobRef, uid: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every child object of the job that exists, by (kind, name), in one round trip.

    Listed kinds (pods) come from one label-selected LIST, keeping only those `uid` owns;
    the others from a GET by name each, except rows never read back (the Secret: the operator
    has no `get` on Secrets). Only per-job rows can be read by name: the manifest may not
    validate, so its worker count is unknown here.
    """
    listed, named = _child_reads(job)
    selector = label_selector(job_selector(job))
    results = concurrently([
        *[lambda kind=kind: kube.list(kind, namespace, selector) for kind in listed],
        *[lambda kind=kind, name=name: _exists(kube, kind, namespace, name) for kind, name in named],
    ])
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for kind, items in zip(listed, results[: len(listed)], strict=True):
        found.update({(kind, obj["metadata"]["name"]): obj for obj in items if owned_by(obj, uid)})
    for key, obj in zip(named, results[len(listed):], strict=True):
        if obj is not None:
            found[key] = obj
    return found


def children_from_cache(cached: list[tuple[str, dict[str, Any]]], job: JobRef, uid: str) -> dict[tuple[str, str], dict[str, Any]]:
    """What `read_children` would find, picked from an informer's cached (kind, object) pairs."""
    listed, named = _child_reads(job)
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for kind, obj in cached:
        key = (kind, obj["metadata"]["name"])
        if (kind in listed and owned_by(obj, uid)) or key in named:
            found[key] = obj
    return found


def spec_hashes(found: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], str]:
    """The spec hash each non-pod child object was built from, where it records one."""
    hashes = {}
    for key, obj in found.items():
        value = ((obj.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
        if key[0] != HEAD_POD.kind and isinstance(value, str):
            hashes[key] = value
    return hashes


def observe(kube: KubeClient, job: dict[str, Any], cached: list[tuple[str, dict[str, Any]]] | None = None) -> Observation:
    """Everything `decide` needs; the children from `cached` (an informer's) when given, else the API."""
    meta = job["metadata"]
    namespace, ref, uid = meta.get("namespace") or "default", JobRef(meta["name"]), meta.get("uid", "")
    found = children_from_cache(cached, ref, uid) if cached is not None else read_children(kube, namespace, ref, uid)
    pods = {name: obj for (kind, name), obj in found.items() if kind == HEAD_POD.kind}
    trainer_status, error = fetch_trainer_status(head_status_url(job, pods))
    return Observation(
        pods=pods,
        existing=frozenset(found),
        trainer_status=trainer_status,
        trainer_status_error=error,
        now=datetime.now(timezone.utc),
        spec_hashes=spec_hashes(found),
    )
