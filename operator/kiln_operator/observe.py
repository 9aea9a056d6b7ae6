"""Read what exists for a job: its pods, Secret, Service, NetworkPolicy and the driver's /status.

The I/O edge before `reconciler.decide`: everything here only reads.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import Any

from .kube import ApiError, KubeClient, concurrently
from .objects.labels import JOB_NAME_LABEL
from .objects.secret import TOKEN_KEY
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
    name = job["metadata"]["name"]
    head = pods.get(f"{name}-head")
    status = (head or {}).get("status") or {}
    if status.get("phase") != "Running" or not status.get("podIP"):
        return None
    port = ((job.get("spec") or {}).get("metrics") or {}).get("port", 8000)
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


def observe(kube: KubeClient, job: dict[str, Any]) -> tuple[Observation, str | None]:
    """Everything `decide` needs, and the stored Ray token (None when the Secret is missing)."""
    meta = job["metadata"]
    namespace, name, uid = meta.get("namespace") or "default", meta["name"], meta.get("uid", "")
    # Four independent reads: one round trip instead of four.
    listed, secret, service, policy = concurrently([
        lambda: kube.list("Pod", namespace, f"{JOB_NAME_LABEL}={name}"),
        lambda: _exists(kube, "Secret", namespace, f"{name}-ray-auth"),
        lambda: _exists(kube, "Service", namespace, f"{name}-head"),
        lambda: _exists(kube, "NetworkPolicy", namespace, name),
    ])
    pods = {p["metadata"]["name"]: p for p in listed if owned_by(p, uid)}
    trainer_status, error = fetch_trainer_status(head_status_url(job, pods))
    observation = Observation(
        pods=pods,
        secret_exists=secret is not None,
        service_exists=service is not None,
        network_policy_exists=policy is not None,
        trainer_status=trainer_status,
        trainer_status_error=error,
        now=datetime.now(timezone.utc),
    )
    return observation, read_token(secret)
