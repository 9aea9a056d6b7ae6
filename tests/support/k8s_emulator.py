"""An emulated Kubernetes API server on loopback, for integration and e2e tests.

`KilnKubernetesEmulator` subclasses `kmock.KubernetesEmulator` (which keeps serving discovery:
/api, /apis, /version) and takes over every request for a declared resource. The objects and
their write rules live in `k8s_store.ObjectStore`; selectors and patches in `k8s_semantics`.
Together they add what a real API server does and kmock 0.8 lacks:

- uid, monotonic resourceVersion, creationTimestamp, generation (bumped on spec changes only),
  `generateName`, 201 on create, 409 AlreadyExists / Conflict (stale resourceVersion on PUT/PATCH);
- label selectors (=, ==, !=, in, notin, exists, !exists) and field selectors on list/watch;
- the status subresource kept apart from the rest (PATCH/PUT `/status` changes only status;
  writes to the main resource keep the stored status) for pods, services and TrainingJobs;
- PUT (replace), merge / strategic-merge (keyed lists merged, directives honoured; refused with
  415 for TrainingJobs, as for any custom resource) / JSON patch, and server-side apply
  (`application/apply-patch+yaml`: create or merge, `managedFields` per manager; simplified:
  no field removal by ownership, no conflicts);
- finalizers and deletionTimestamp; ownerReference garbage collection by an owner-uid index
  (background: dependents whose owners are all gone are deleted, recursively; `Foreground`
  deletes them first; `Orphan` keeps them);
- what kubectl needs (`k8s_discovery`, `k8s_tables`): legacy and aggregated discovery with
  short names and categories, OpenAPI v3 (the CRD's schema, so `kubectl explain` shows our
  descriptions, and the `fieldValidation` parameter, so `kubectl apply` validates strictly:
  unknown fields answer 400 as a strict decode error), `meta.k8s.io/v1` Tables from the CRD's
  `additionalPrinterColumns` (also in watches, for `get -w`), and `pods/NAME/log` from
  `log_source` (the e2e kubelet's container log; `tailLines`/`limitBytes`, no `follow`);
- cheap hot paths: per-kind, per-label and per-owner indexes (`k8s_index`), lists in
  (namespace, name) order without a sort per list, stored objects never copied (they are
  immutable once stored), watch events encoded once, TrainingJob validation memoised per
  part (`k8s_validation`);
- watches that honour `resourceVersion` (replay only what came after it; 410 Gone if too old)
  and `timeoutSeconds`; lists carry the current resourceVersion;
- Services get `spec.clusterIP` from 127.1.0.0/16 (the e2e kubelet plays kube-proxy there);
  Pods start with `status.phase: Pending`;
- TrainingJobs validated against the Kiln CRD with `kiln_api.validation` on create/update/patch
  (422 Invalid, a Status whose message names every field), CRD defaults applied, unknown fields
  pruned (an error only with `?fieldValidation=Strict`, as kubectl sends); status writes
  are validated and pruned too (unknown status fields are dropped, as for a structural schema);
- fault injection: `inject_faults(rate, status=500|409, verbs=..., resources=..., seed=...)`;
- a request log: `requests` is a list of `RequestRecord(method, path, resource, verb, ...)`.

Not emulated: namespaces need not exist, pod deletion is immediate (no grace period),
no admission, no RBAC enforcement, no paging (`limit` is ignored), no OpenAPI v2.

Use from pytest (import the fixture into a conftest.py)::

    from tests.support.k8s_emulator import k8s_api  # noqa: F401  (fixture)

    def test_x(k8s_api):
        k8s_api.url               # "http://127.0.0.1:PORT"
        k8s_api.kubeconfig_path   # a kubeconfig file pointing at it (no auth)
        api = k8s_api.client()    # kubernetes.client.ApiClient, configured explicitly
        k8s_api.get("v1/pods", "default", "name")          # stored object or None
        k8s_api.list("v1/pods", "default", "app=x")        # stored objects (label selector)
        k8s_api.inject_faults(0.2, status=500, verbs={"patch"}, seed=1); k8s_api.clear_faults()
        k8s_api.requests          # [RequestRecord(...)] for RBAC checks

Outside pytest: `with EmulatedApiServer() as api: ...`. The server runs in its own thread and
event loop, so synchronous clients in the test thread never block it.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import random
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import pytest
from kiln_api.validation import default_crd

from tests.support.k8s_discovery import Served, is_meta_path, meta_response, served_resources
from tests.support.k8s_requests import FastRequest, FaultPlan, RequestRecord
from tests.support.k8s_semantics import (
    ResourcePath,
    SelectorError,
    label_matcher,
    log_slice,
    parse_resource_path,
    parse_yaml_body,
    status_object,
    verb_of,
)
from tests.support.k8s_store import BUILTIN_KINDS, TRAININGJOBS, ApiError, Kind, ObjectStore
from tests.support.k8s_tables import table, wants_table


@attrs.define(kw_only=True)
class KilnKubernetesEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the API-server semantics listed in the module docstring."""

    crd: dict[str, Any] = attrs.field(factory=default_crd)
    kinds: dict[str, Kind] = attrs.field(factory=lambda: dict(BUILTIN_KINDS))
    state: ObjectStore = attrs.field(init=False)
    log: list[RequestRecord] = attrs.field(factory=list)
    faults: FaultPlan | None = attrs.field(default=None)
    _watchers: set[asyncio.Queue[Any]] = attrs.field(factory=set)
    # the stored pod -> its container's log so far, or None before it started (set by a kubelet)
    log_source: Callable[[dict[str, Any]], str | None] | None = attrs.field(default=None)
    served: list[Served] = attrs.field(init=False)
    printer_columns: list[dict[str, Any]] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for key, kind in self.kinds.items():
            self.resources[key] = kmock.ResourceInfo(
                kind=kind.kind,
                namespaced=kind.namespaced,
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                subresources={"status"} if kind.status_subresource else set(),
            )
        self.state = ObjectStore(self.crd, self.kinds)
        self.served = served_resources(self.kinds, self.crd)
        self.printer_columns = self.crd["spec"]["versions"][0].get("additionalPrinterColumns", [])

    # ------------------------------------------------------------------ dispatch

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Resource and discovery requests skip kmock's parsing and its request log (which keeps
        every body for the server's lifetime); the rest (/version, /) stay kmock's."""
        path = parse_resource_path(raw_request.path)
        if (path is not None and path.key in self.kinds) or is_meta_path(raw_request.path):
            return await self._handle(await FastRequest.read(raw_request))  # type: ignore[arg-type]
        return await super().__call__(raw_request)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        meta = meta_response(request.url.path, request.headers.get("Accept", ""), self.served, self.crd)
        if meta is not None:
            body, content_type, code = meta
            return aiohttp.web.Response(body=json.dumps(body).encode(), status=code, headers={"Content-Type": content_type})
        path = parse_resource_path(request.url.path)
        if path is None or path.key not in self.kinds:
            # /version and the root stay kmock's.
            return await super(kmock.KubernetesEmulator, self)._handle(request)
        params = dict(request.params)
        self.state.strict_fields = params.get("fieldValidation") == "Strict"
        verb = verb_of(str(request.method.value), path, params)
        fault = self._fault(verb, path)
        self.log.append(RequestRecord(str(request.method.value), request.url.path,
                                      path.plural + (f"/{path.subresource}" if path.subresource else ""),
                                      path.group, verb, path.namespace, path.name, fault,
                                      str(request.headers.get("User-Agent", ""))))
        try:
            if fault is not None:
                raise ApiError(fault, "InternalError" if fault == 500 else "Conflict", f"injected fault {fault}")
            if verb == "watch":
                return await self._watch(request, path, params)
            if path.subresource == "log" and verb == "get":
                return self._pod_log(path, params)
            body, code = self._serve(verb, path, params, request)
            if verb in ("get", "list") and wants_table(request.headers.get("Accept", "")):
                items = body["items"] if verb == "list" else [body]
                version = body["metadata"]["resourceVersion"] if verb == "list" else str(self.state.resource_version)
                body = self._table(path, items, version, params)
        except ApiError as exc:
            return aiohttp.web.json_response(exc.body, status=exc.code)
        except SelectorError as exc:
            return aiohttp.web.json_response(status_object(400, "BadRequest", str(exc)), status=400)
        return aiohttp.web.json_response(body, status=code)

    def close_watches(self) -> None:
        for queue in self._watchers:
            queue.put_nowait(None)

    def _fault(self, verb: str, path: ResourcePath) -> int | None:
        if self.faults is not None and self.faults.hits(verb, path.plural):
            return self.faults.status
        return None

    def _serve(self, verb: str, path: ResourcePath, params: dict[str, str], request: kmock.Request) -> tuple[Any, int]:
        data = request.data
        content_type = request.headers.get("Content-Type", "application/merge-patch+json")
        if data is None and "yaml" in content_type:
            try:
                data = parse_yaml_body(request.text)
            except ValueError as exc:
                raise ApiError(400, "BadRequest", str(exc)) from None
        if verb in ("create", "update", "patch") and not isinstance(data, (dict, list)):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        if verb == "get":
            return self.state.get(path), 200
        if verb == "list":
            return self.state.list_objects(path, params), 200
        if verb == "create":
            return self.state.create(path, data), 201
        if verb == "update":
            return self.state.write(path, lambda _old: data), 200
        if verb == "patch" and "apply-patch" in content_type:
            return self.state.apply(path, data, params.get("fieldManager", ""), params.get("force") == "true")
        if verb == "patch":
            return self.state.patch(path, data, content_type), 200
        if verb == "delete":
            options = dict(data) if isinstance(data, dict) else {}
            if "propagationPolicy" in params:
                options["propagationPolicy"] = params["propagationPolicy"]
            return self.state.delete(path, options), 200
        raise ApiError(405, "MethodNotAllowed", f"{verb} is not supported by the emulator")

    def _table(self, path: ResourcePath, items: list[dict[str, Any]], version: str, params: dict[str, str]) -> dict[str, Any]:
        columns = self.printer_columns if path.key == TRAININGJOBS else None
        return table(self.kinds[path.key].kind, items, columns, version, params.get("includeObject", "Metadata"))

    def _pod_log(self, path: ResourcePath, params: dict[str, str]) -> aiohttp.web.Response:
        """`pods/NAME/log` from the kubelet's container log (`log_source`); 400 until it has one."""
        pod = self.state.get(ResourcePath(path.group, path.version, path.plural, path.namespace, path.name))
        text = self.log_source(pod) if self.log_source else None
        if text is None:
            container = ((pod.get("spec") or {}).get("containers") or [{}])[0].get("name", "")
            raise ApiError(400, "BadRequest", f'container "{container}" in pod "{path.name}" is waiting to start: ContainerCreating')
        return aiohttp.web.Response(text=log_slice(text, params), content_type="text/plain")

    # ------------------------------------------------------------------ watch

    async def _watch(self, request: kmock.Request, path: ResourcePath, params: dict[str, str]) -> aiohttp.web.StreamResponse:
        matches = self.state.matcher(path, params)
        since = params.get("resourceVersion") or "0"
        queue: asyncio.Queue[Any] = asyncio.Queue()
        replay = self.state.history_after(int(since), path.key) if since != "0" else []
        if since == "0":
            backlog = [{"type": "ADDED", "object": obj} for key, obj in self.state.objects.items() if matches(key, obj)]
        elif replay is None:
            backlog = [{"type": "ERROR", "object": status_object(410, "Expired", f"too old resource version: {since}")}]
        else:
            backlog = replay
        listener = lambda key, event: queue.put_nowait((key, event))  # noqa: E731
        self._watchers.add(queue)
        self.state.listeners.add(listener)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)
        timeout = float(params.get("timeoutSeconds") or 1800)
        try:
            shape = self._event_shape(request, path, params)
            await self._send(response, [self._line(shape, matches, path.key, event) for event in backlog])
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            raw = request._raw_request
            while (left := deadline - loop.time()) > 0:
                # aiohttp does not cancel a handler whose client went away: look every second.
                if raw is None or raw.transport is None or raw.transport.is_closing():
                    break
                try:
                    items = [await asyncio.wait_for(queue.get(), timeout=min(left, 1.0))]
                except asyncio.TimeoutError:
                    continue
                # Whatever else is queued goes out in the same write: under a burst of changes one
                # chunk (and one system call) carries many events instead of one each.
                while not queue.empty():
                    items.append(queue.get_nowait())
                await self._send(response, [self._line(shape, matches, *item) for item in items if item is not None])
                if None in items:  # the server is shutting down
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers.discard(queue)
            self.state.listeners.discard(listener)
        return response

    def _event_shape(self, request: kmock.Request, path: ResourcePath, params: dict[str, str]) -> Callable[[dict[str, Any]], Any]:
        """Events as stored, or as one-row Tables when kubectl asked for Tables (`get -w`)."""
        if not wants_table(request.headers.get("Accept", "")):
            return lambda event: event
        return lambda event: {"type": event["type"], "object": self._table(
            path, [event["object"]], event["object"]["metadata"]["resourceVersion"], params)}

    @staticmethod
    def _line(shape: Callable[[dict[str, Any]], Any], matches: Any, key: str, event: dict[str, Any]) -> bytes | None:
        """The event as the watcher's JSON line, or None when the watcher's selectors exclude it."""
        obj = event["object"]
        if event["type"] != "ERROR":
            meta = obj.get("metadata", {})
            if not matches((key, meta.get("namespace"), meta.get("name")), obj):
                return None
            shaped = shape(event)
            if shaped is not event:
                return json.dumps(shaped).encode() + b"\n"
        return event.line() if hasattr(event, "line") else json.dumps(event).encode() + b"\n"

    @staticmethod
    async def _send(response: aiohttp.web.StreamResponse, lines: list[bytes | None]) -> None:
        chunk = b"".join(line for line in lines if line is not None)
        if chunk:
            await response.write(chunk)


class EmulatedApiServer:
    """Runs a `KilnKubernetesEmulator` on a free loopback port in a background thread."""

    def __init__(self, workdir: Path | None = None, crd: dict[str, Any] | None = None) -> None:
        self.emulator = KilnKubernetesEmulator(crd=crd or default_crd())
        self._workdir = workdir
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.url = ""
        self.kubeconfig_path = ""

    def __enter__(self) -> EmulatedApiServer:
        self._thread = threading.Thread(target=self._run, name="k8s-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or not self.url:
            raise RuntimeError("the emulated API server did not start within 30 s")
        self.kubeconfig_path = str(self._write_kubeconfig())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        # One line per request drowns the test output; the request log keeps them instead.
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            async with self.emulator, kmock.Server(self.emulator) as server:
                self.url = f"http://127.0.0.1:{server.port}"
                self._ready.set()
                await self._stop.wait()
                self.emulator.close_watches()
        finally:
            self._ready.set()

    def _write_kubeconfig(self) -> Path:
        directory = self._workdir or Path(tempfile.mkdtemp(prefix="kiln-k8s-"))
        path = directory / "kubeconfig"
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator", "namespace": "default"}}],
        }
        path.write_text(json.dumps(config))  # JSON is YAML
        return path

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the emulator's loop, so it never sees a half-applied change."""
        assert self._loop is not None

        async def call() -> Any:
            return copy.deepcopy(fn())

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(30)

    def client(self) -> Any:
        """An official `kubernetes` ApiClient pointed at this server (not at $KUBECONFIG)."""
        from kubernetes import client

        configuration = client.Configuration(host=self.url)
        return client.ApiClient(configuration)

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self._call(lambda: self.emulator.state.objects.get((resource, namespace, name)))

    def list(self, resource: str, namespace: str | None = None, label_selector: str | None = None) -> list[dict[str, Any]]:
        labels = label_matcher(label_selector)

        def pick() -> list[dict[str, Any]]:
            return [obj for (key, ns, _), obj in self.emulator.state.objects.items()
                    if key == resource and (namespace is None or ns == namespace)
                    and labels(obj["metadata"].get("labels"))]

        return self._call(pick)

    def inject_faults(self, rate: float, status: int = 500, verbs: set[str] | None = None,
                      resources: set[str] | None = None, seed: int = 0) -> None:
        """Answer `rate` of matching requests (verb, plural) with `status` (500 or 409)."""
        plan = FaultPlan(rate, status, frozenset(verbs) if verbs else None,
                         frozenset(resources) if resources else None, random.Random(seed))
        self._call(lambda: setattr(self.emulator, "faults", plan))

    def clear_faults(self) -> None:
        self._call(lambda: setattr(self.emulator, "faults", None))

    @property
    def requests(self) -> list[RequestRecord]:
        return self._call(lambda: list(self.emulator.log))


@pytest.fixture()
def k8s_api(tmp_path: Path) -> Iterator[EmulatedApiServer]:
    """A fresh emulated API server per test (see the module docstring)."""
    with EmulatedApiServer(workdir=tmp_path) as server:
        yield server


__all__ = ["EmulatedApiServer", "KilnKubernetesEmulator", "RequestRecord", "k8s_api"]
