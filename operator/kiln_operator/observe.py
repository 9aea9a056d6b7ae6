"""Read what exists for a job: its child objects (objects/table.py) and the driver's /status.

The I/O edge before `reconciler.decide`: everything here only reads.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import Any

from kiln_api.spec import MetricsSpec

from . import pod_state
from .kube import ApiError, KubeClient, concurrently
from .objects.labels import JobRef, head_pod_name, job_selector, label_selector
from .objects.secret import TOKEN_KEY
from .objects.table import AUTH_SECRET, CHILDREN, HEAD_POD
from .reconciler import Observation

STATUS_TIMEOUT_SECONDS = 2.0
# Pod IPs are reached directly: an HTTP(S)_PROXY in the operator's environment must not reroute them.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


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


def read_token(secret: dict[str, Any] | None) -> str | None:
    """The Ray auth token stored in the job's Secret, if there is one."""
    if not secret:
        return None
    encoded = (secret.get("data") or {}).get(TOKEN_KEY)
    if encoded:
        try:
            return base64.b64decode(encoded).decode()
        except (ValueError, UnicodeDecodeError):
            return None
    return (secret.get("stringData") or {}).get(TOKEN_KEY)


def head_status_url(job: dict[str, Any], pods: dict[str, dict[str, Any]]) -> str | None:
    """Where the driver serves /status: the running head pod's IP and `spec.metrics.port`."""
    head = pods.get(head_pod_name(JobRef(job["metadata"]["name"])))
    status = (head or {}).get("status") or {}
    if status.get("phase") != pod_state.POD_RUNNING or not status.get("podIP"):
        return None
    default_port = MetricsSpec.model_fields["port"].default
    port = ((job.get("spec") or {}).get("metrics") or {}).get("port", default_port)
    return f"http://{status['podIP']}:{port}/status"


def fetch_trainer_status(url: str | None, timeout: float = STATUS_TIMEOUT_SECONDS) -> tuple[dict[str, Any] | None, str | None]:
    """(status JSON, None) or (None, why it failed); (None, None) when there is no head to ask."""
    if url is None:
        return None, None
    try:
        with _DIRECT.open(url, timeout=timeout) as response:
            body = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return None, f"GET {url}: {exc}"
    if not isinstance(body, dict):
        return None, f"GET {url}: expected a JSON object"
    return body, None


def read_children(kube: KubeClient, namespace: str, job: JobRef, uid: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every child object of the job that exists, by (kind, name), in one round trip.

    Listed kinds (pods) come from one label-selected LIST, keeping only those `uid` owns;
    the others from a GET by name each. Only per-job rows can be read by name: the
    manifest may not validate, so its worker count is unknown here.
    """
    listed = sorted({row.kind for row in CHILDREN if row.listed})
    named = [(row.kind, row.name(job, 0)) for row in CHILDREN if not row.listed]
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


def observe(kube: KubeClient, job: dict[str, Any]) -> tuple[Observation, str | None]:
    """Everything `decide` needs, and the stored Ray token (None when the Secret is missing)."""
    meta = job["metadata"]
    ref = JobRef(meta["name"])
    found = read_children(kube, meta.get("namespace") or "default", ref, meta.get("uid", ""))
    pods = {name: obj for (kind, name), obj in found.items() if kind == HEAD_POD.kind}
    trainer_status, error = fetch_trainer_status(head_status_url(job, pods))
    observation = Observation(
        pods=pods,
        existing=frozenset(found),
        trainer_status=trainer_status,
        trainer_status_error=error,
        now=datetime.now(timezone.utc),
    )
    return observation, read_token(found.get((AUTH_SECRET.kind, AUTH_SECRET.name(ref, 0))))
