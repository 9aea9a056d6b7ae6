"""A small synchronous Kubernetes REST client that speaks plain dicts.

The official `kubernetes` package loads the credentials (kubeconfig, in-cluster token,
exec plugins); requests go through urllib3 with those credentials. Plain dicts in and out
keep the operator independent of the generated client's model classes, which change
between releases.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

import urllib3
from kiln_api import GROUP_VERSION, KIND, PLURAL
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from .objects.table import child_resources

try:  # several times faster than the standard library: the operator reads every watch event
    import orjson
except ImportError:  # pragma: no cover - the operator extra installs it
    orjson = None  # type: ignore[assignment]

USER_AGENT = "kiln-operator"

MERGE_PATCH = "application/merge-patch+json"
# Room for every reconcile thread's concurrent requests: a full urllib3 pool discards
# connections, and each request past it would pay for a new TCP (and TLS) handshake.
POOL_CONNECTIONS = 32
T = TypeVar("T")
# One pool per process for the requests of a reconcile that do not depend on each other.
_CONCURRENT = ThreadPoolExecutor(max_workers=16, thread_name_prefix="kiln-kube")

# kind -> (apiVersion, plural) for everything the operator reads or writes: the job's
# children (their table), the Events it posts, and TrainingJobs themselves.
RESOURCES: dict[str, tuple[str, str]] = {
    **child_resources(),
    "Event": ("v1", "events"),
    KIND: (GROUP_VERSION, PLURAL),
}


class ApiError(Exception):
    """The API server answered with an error status (or could not be reached: status 0)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


MAX_ERROR_TEXT = 500


def decode_json(data: bytes | str) -> Any:
    """JSON from the API server; ValueError when it is not JSON. The API server's numbers are
    int64 and float64, which orjson reads exactly (it would read a larger integer as a float)."""
    if orjson is not None:
        return orjson.loads(data)  # its JSONDecodeError is a ValueError
    return json.loads(data)


def encode_json(body: Any) -> bytes:
    """A request's JSON body. orjson refuses what the API server could not store either (an
    integer beyond 64 bits, a key that is not a string); the standard library then writes it as
    it always did, and the API server answers with its own error."""
    if orjson is not None:
        try:
            return orjson.dumps(body)
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            pass
    return json.dumps(body).encode()


def _api_error(status: int, body: bytes | None) -> ApiError:
    """The ApiError for an error answer: reason and message from the body when it is a Status
    object, else the HTTP status's reason (CamelCase, as the API server's are) and the first
    MAX_ERROR_TEXT characters of the text (a proxy's HTML page, say, or nothing)."""
    text = (body or b"").decode(errors="replace")
    try:
        payload = decode_json(text)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        return ApiError(status, str(payload.get("reason") or "Error"), str(payload.get("message") or ""))
    try:
        reason = "".join(ch for ch in HTTPStatus(status).phrase if ch.isalnum())
    except ValueError:
        reason = "Error"
    return ApiError(status, reason, text[:MAX_ERROR_TEXT].strip())


def load_configuration(kubeconfig: str | None = None) -> k8s_client.Configuration:
    """Credentials from `kubeconfig`, else the in-cluster service account, else the default kubeconfig."""
    configuration = k8s_client.Configuration()
    if kubeconfig:
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        return configuration
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(client_configuration=configuration)
    return configuration


def concurrently(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run independent requests at once; results in order, or the first call's error once all are done.

    Waiting for every call before raising keeps a reconcile from returning while requests it
    started are still changing the cluster.
    """
    if len(calls) <= 1:
        return [call() for call in calls]
    futures = [_CONCURRENT.submit(call) for call in calls]
    errors = [exc for future in futures if (exc := future.exception()) is not None]
    if errors:
        raise errors[0]
    return [future.result() for future in futures]


def resource_path(kind: str, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
    api_version, plural = RESOURCES[kind]
    root = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = root + (f"/namespaces/{quote(namespace)}" if namespace else "") + f"/{plural}"
    if name:
        path += f"/{quote(name)}"
    if subresource:
        path += f"/{subresource}"
    return path


@dataclass
class KubeClient:
    """JSON over HTTP to one API server; safe to share between threads."""

    configuration: k8s_client.Configuration
    timeout_seconds: float = 10.0
    user_agent: str = USER_AGENT

    def __post_init__(self) -> None:
        cfg = self.configuration
        kwargs: dict[str, Any] = {"maxsize": POOL_CONNECTIONS, "timeout": urllib3.Timeout(total=self.timeout_seconds), "retries": False}
        if cfg.host.startswith("https"):
            kwargs.update(
                cert_reqs="CERT_REQUIRED" if cfg.verify_ssl else "CERT_NONE",
                ca_certs=cfg.ssl_ca_cert,
                cert_file=cfg.cert_file,
                key_file=cfg.key_file,
            )
        # One API server: its connection pool directly, without a PoolManager's per-request
        # lookup of the pool for the URL's host (2-3 % of the operator's CPU under a burst).
        self._pool = urllib3.connection_from_url(cfg.host, **kwargs)
        self._prefix = urlsplit(cfg.host).path.rstrip("/")  # an API server behind a proxy's path

    def _headers(self, content_type: str | None) -> dict[str, str]:
        # Named in the API server's audit log and request metrics (urllib3's default names no one).
        headers = {"Accept": "application/json", "User-Agent": self.user_agent}
        if content_type:
            headers["Content-Type"] = content_type
        token = self.configuration.get_api_key_with_prefix("authorization")
        if token:
            headers["Authorization"] = token
        return headers

    def request(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None,
                content_type: str | None = None) -> dict[str, Any]:
        url = self._prefix + path + (f"?{urlencode(params)}" if params else "")
        data = encode_json(body) if body is not None else None
        if data is not None and content_type is None:
            content_type = "application/json"
        try:
            response = self._pool.request(method, url, body=data, headers=self._headers(content_type))
        except urllib3.exceptions.HTTPError as exc:
            raise ApiError(0, "Unreachable", f"{method} {path}: {exc}") from None
        if response.status >= 400:
            raise _api_error(response.status, response.data)
        try:
            payload = decode_json(response.data or b"{}")
        except ValueError:
            payload = {"message": response.data[:200].decode(errors="replace")}
        return payload

    def stream_lines(self, path: str, params: dict[str, str], read_timeout: float,
                     opened: Callable[[urllib3.BaseHTTPResponse], None] | None = None) -> Iterator[bytes]:
        """The lines of a streamed answer (a watch) as they arrive; ApiError for an error status.

        `opened` receives the response, whose `shutdown()` ends a read blocked in another thread."""
        url = self._prefix + path + f"?{urlencode(params)}"
        try:
            response = self._pool.request("GET", url, headers=self._headers(None), preload_content=False,
                                          timeout=urllib3.Timeout(connect=self.timeout_seconds, read=read_timeout))
        except urllib3.exceptions.HTTPError as exc:
            raise ApiError(0, "Unreachable", f"GET {path}: {exc}") from None
        if opened is not None:
            opened(response)
        try:
            if response.status >= 400:
                raise _api_error(response.status, response.read())
            pending = b""
            for chunk in response.stream(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                yield from lines
            if pending:
                yield pending
        except urllib3.exceptions.HTTPError as exc:
            raise ApiError(0, "Unreachable", f"GET {path}: {exc}") from None
        finally:
            response.release_conn()

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
        return self.request("GET", resource_path(kind, namespace, name))

    def list(self, kind: str, namespace: str | None, label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        return list(self.request("GET", resource_path(kind, namespace), params=params).get("items") or [])

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        namespace = obj.get("metadata", {}).get("namespace")
        return self.request("POST", resource_path(obj["kind"], namespace), body=obj)

    def delete(self, kind: str, namespace: str | None, name: str, propagation: str = "Background") -> dict[str, Any]:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        return self.request("DELETE", resource_path(kind, namespace, name), body=body)

    def patch(self, kind: str, namespace: str | None, name: str, patch: dict[str, Any],
              subresource: str | None = None) -> dict[str, Any]:
        return self.request("PATCH", resource_path(kind, namespace, name, subresource), body=patch, content_type=MERGE_PATCH)
