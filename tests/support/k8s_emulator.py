"""An emulated Kubernetes API server on loopback, for integration and e2e tests.

`KilnKubernetesEmulator` answers every request, synchronously, behind a small HTTP/1.1 server
of its own (`k8s_http`; it began as a kmock subclass behind aiohttp, which cost three times the
CPU per request). The objects and their write rules live in `k8s_store.ObjectStore`; selectors
and patches in `k8s_semantics`; JSON goes through orjson (`k8s_json`). What it does:

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
  immutable once stored) and encoded to JSON once per version (responses, list items and watch
  events share the bytes), JSON patches copying only the containers on their paths, watch
  events written from the change notification itself (no task per watch), TrainingJob
  validation memoised per part, by identity first (`k8s_validation`);
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
import random
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from kiln_api.validation import default_crd

from tests.support import k8s_json
from tests.support.k8s_discovery import Served, meta_response, served_resources
from tests.support.k8s_http import ChunkWriter, HttpRequest, HttpResponse, HttpServer, Stream
from tests.support.k8s_requests import FaultPlan, RequestRecord
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
from tests.support.k8s_store import BUILTIN_KINDS, TRAININGJOBS, ApiError, Kind, ObjectStore, WatchEvent
from tests.support.k8s_tables import table, wants_table

VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0", "gitCommit": "", "gitTreeState": "clean",
           "buildDate": "2024-12-11T00:00:00Z", "goVersion": "go1.23.3", "compiler": "gc", "platform": "linux/amd64"}


@attrs.define(kw_only=True)
class KilnKubernetesEmulator:
    """The emulated API server's request handler, with the semantics listed in the module docstring."""

    crd: dict[str, Any] = attrs.field(factory=default_crd)
    kinds: dict[str, Kind] = attrs.field(factory=lambda: dict(BUILTIN_KINDS))
    state: ObjectStore = attrs.field(init=False)
    log: list[RequestRecord] = attrs.field(factory=list)
    faults: FaultPlan | None = attrs.field(default=None)
    _watches: set[Watch] = attrs.field(factory=set)
    # the stored pod -> its container's log so far, or None before it started (set by a kubelet)
    log_source: Callable[[dict[str, Any]], str | None] | None = attrs.field(default=None)
    served: list[Served] = attrs.field(init=False)
    printer_columns: list[dict[str, Any]] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.state = ObjectStore(self.crd, self.kinds)
        self.served = served_resources(self.kinds, self.crd)
        self.printer_columns = self.crd["spec"]["versions"][0].get("additionalPrinterColumns", [])

    # ------------------------------------------------------------------ dispatch

    def __call__(self, request: HttpRequest) -> HttpResponse | Stream:
        accept = request.headers.get("accept", "")
        meta = meta_response(request.path, accept, self.served, self.crd)
        if meta is not None:
            body, content_type, code = meta
            return HttpResponse.json(body, code, content_type)
        path = parse_resource_path(request.path)
        if path is None or path.key not in self.kinds:
            if request.path == "/version":
                return HttpResponse.json(VERSION)
            return HttpResponse.json(status_object(404, "NotFound", "the server could not find the requested resource"), 404)
        params = request.query
        self.state.strict_fields = params.get("fieldValidation") == "Strict"
        verb = verb_of(request.method, path, params)
        fault = self._fault(verb, path)
        self.log.append(RequestRecord(request.method, request.path,
                                      path.plural + (f"/{path.subresource}" if path.subresource else ""),
                                      path.group, verb, path.namespace, path.name, fault,
                                      request.headers.get("user-agent", "")))
        try:
            if fault is not None:
                raise ApiError(fault, "InternalError" if fault == 500 else "Conflict", f"injected fault {fault}")
            if verb == "watch":
                return self._watch(path, params, wants_table(accept))
            if path.subresource == "log" and verb == "get":
                return self._pod_log(path, params)
            body, code = self._serve(verb, path, params, request)
            if verb in ("get", "list") and wants_table(accept):
                items = body["items"] if verb == "list" else [body]
                version = body["metadata"]["resourceVersion"] if verb == "list" else str(self.state.resource_version)
                body = self._table(path, items, version, params)
        except ApiError as exc:
            return HttpResponse.json(exc.body, exc.code)
        except SelectorError as exc:
            return HttpResponse.json(status_object(400, "BadRequest", str(exc)), 400)
        return HttpResponse(code, self.state.encode(body))

    def close_watches(self) -> None:
        for watch in list(self._watches):
            watch.finish()

    def _fault(self, verb: str, path: ResourcePath) -> int | None:
        if self.faults is not None and self.faults.hits(verb, path.plural):
            return self.faults.status
        return None

    @staticmethod
    def _body(request: HttpRequest) -> Any:
        """The decoded body: JSON unless the client sent YAML (server-side apply, kubectl create)."""
        if not request.body:
            return None
        try:
            if "yaml" in request.content_type:
                return parse_yaml_body(request.body.decode("utf-8", errors="replace"))
            return k8s_json.loads(request.body)
        except ValueError as exc:
            if "yaml" in request.content_type:
                raise ApiError(400, "BadRequest", str(exc)) from None
            return None

    def _serve(self, verb: str, path: ResourcePath, params: dict[str, str], request: HttpRequest) -> tuple[Any, int]:
        data = self._body(request)
        content_type = request.content_type or "application/merge-patch+json"
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

    def _pod_log(self, path: ResourcePath, params: dict[str, str]) -> HttpResponse:
        """`pods/NAME/log` from the kubelet's container log (`log_source`); 400 until it has one."""
        pod = self.state.get(ResourcePath(path.group, path.version, path.plural, path.namespace, path.name))
        text = self.log_source(pod) if self.log_source else None
        if text is None:
            container = ((pod.get("spec") or {}).get("containers") or [{}])[0].get("name", "")
            raise ApiError(400, "BadRequest", f'container "{container}" in pod "{path.name}" is waiting to start: ContainerCreating')
        return HttpResponse(200, log_slice(text, params).encode(), "text/plain; charset=utf-8")

    # ------------------------------------------------------------------ watch

    def _watch(self, path: ResourcePath, params: dict[str, str], as_table: bool) -> Watch:
        since = params.get("resourceVersion") or "0"
        matches = self.state.matcher(path, params)
        if since == "0":
            backlog: list[Any] = [WatchEvent(type="ADDED", object=obj) for key, obj in self.state.objects.items()
                                  if matches(key, obj)]
        else:
            replay = self.state.history_after(int(since), path.key)
            backlog = replay if replay is not None else [
                {"type": "ERROR", "object": status_object(410, "Expired", f"too old resource version: {since}")}]
        shape = self._table_event_shape(path, params) if as_table else None
        return Watch(self, path.key, matches, shape, backlog, float(params.get("timeoutSeconds") or 1800))

    def _table_event_shape(self, path: ResourcePath, params: dict[str, str]) -> Callable[[dict[str, Any]], Any]:
        """Events as one-row Tables, for kubectl's `get -w`."""
        return lambda event: {"type": event["type"], "object": self._table(
            path, [event["object"]], event["object"]["metadata"]["resourceVersion"], params)}


@attrs.define(eq=False)
class Watch:
    """One watch: its backlog, then each matching change as it happens, until its timeout or the
    client leaves. Events are written from the store's notification itself (no task per watch);
    what one loop iteration brings goes out as one chunk."""

    emulator: KilnKubernetesEmulator
    key: str
    matches: Callable[[tuple[Any, ...], dict[str, Any]], bool]
    shape: Callable[[dict[str, Any]], Any] | None
    backlog: list[Any]
    timeout: float
    _writer: ChunkWriter | None = None
    _pending: list[bytes] = attrs.field(factory=list)
    _timer: asyncio.TimerHandle | None = None
    _done: bool = False

    def start(self, writer: ChunkWriter) -> None:
        self._writer = writer
        writer.on_close = self.finish
        writer.write(b"".join(line for event in self.backlog if (line := self._line(self.key, event)) is not None))
        self.backlog = []
        self.emulator._watches.add(self)
        self.emulator.state.listen(self.key, self.on_event)
        self._timer = asyncio.get_running_loop().call_later(self.timeout, self.finish)

    def on_event(self, key: str, event: dict[str, Any]) -> None:
        line = self._line(key, event)
        if line is None:
            return
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append(line)

    def flush(self) -> None:
        if self._pending and self._writer is not None:
            chunk, self._pending = b"".join(self._pending), []
            self._writer.write(chunk)

    def finish(self) -> None:
        if self._done:
            return
        self._done = True
        self.emulator._watches.discard(self)
        self.emulator.state.unlisten(self.key, self.on_event)
        if self._timer is not None:
            self._timer.cancel()
        if self._writer is not None:
            self.flush()
            self._writer.end()

    def _line(self, key: str, event: dict[str, Any]) -> bytes | None:
        """The event as the watcher's JSON line, or None when the watcher's selectors exclude it."""
        obj = event["object"]
        if event["type"] != "ERROR":
            meta = obj.get("metadata", {})
            if not self.matches((key, meta.get("namespace"), meta.get("name")), obj):
                return None
            if self.shape is not None:
                return k8s_json.dumps(self.shape(event)) + b"\n"
        return self.emulator.state.event_line(event)


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed: its transports and loop are compiled, about a fifth of the
    emulator's CPU per request in pure-Python asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


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
        loop = _new_loop()  # by hand, not asyncio.Runner(loop_factory=...): that needs Python 3.11
        try:
            loop.run_until_complete(self._serve())
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            async with HttpServer(self.emulator) as server:
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

    def _call(self, fn: Callable[[], Any], *, fresh: bool = False) -> Any:
        """Run `fn` on the emulator's loop, so it never sees a half-applied change; its answer is
        copied unless `fresh` (built anew by `fn`, sharing nothing with the store)."""
        assert self._loop is not None

        async def call() -> Any:
            return fn() if fresh else copy.deepcopy(fn())

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
