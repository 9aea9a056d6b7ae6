"""Run the real Kiln operator (kopf) in a background thread, and stand-ins for its neighbours.

`OperatorThread` runs `kiln_operator.main.serve` (the same code as `kiln operator`) with a
fresh kopf registry and its own metrics registry, on free ports. `StatusEndpoint` plays the
training driver's HTTP `/status` endpoint (docs/contracts.md §2) on a free loopback port.
`wait_for` polls a condition with a deadline (never a bare sleep); `free_port` avoids Ray's
worker port range.

    with OperatorThread(settings, k8s_api.kubeconfig_path) as operator:
        ...  # operator.metrics_port serves /metrics; settings.health_port serves /healthz
"""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from kiln_operator.main import serve
from kiln_operator.metrics import OperatorMetrics
from kiln_operator.settings import OperatorSettings

from tests.support.ports import free_port

T = TypeVar("T")




class OperatorThread:
    def __init__(self, settings: OperatorSettings, kubeconfig: str, peering: str | None = None) -> None:
        self.settings = settings
        self.kubeconfig = kubeconfig
        self.peering = peering
        self.metrics = OperatorMetrics()
        self.metrics_port = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kiln-operator", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(serve(self.settings, self.kubeconfig, peering=self.peering,
                              stop_flag=self._stop, ready_flag=self._ready, metrics=self.metrics))
        except BaseException as exc:  # reported by stop()
            self._error = exc
            self._ready.set()

    def __enter__(self) -> OperatorThread:
        self.metrics_port = self.metrics.serve(0, "127.0.0.1")
        self._thread.start()
        if not self._ready.wait(60) or self._error is not None:
            self.__exit__()
            raise RuntimeError(f"the operator did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        self.metrics.close()
        if self._thread.is_alive():
            raise RuntimeError("the operator did not stop within 60 s")
        if self._error is not None:
            raise RuntimeError(f"the operator crashed: {self._error!r}") from self._error

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


class StatusEndpoint:
    """The driver's `/status` as an HTTP server; set `.status` to what it should answer."""

    def __init__(self) -> None:
        self.status: dict[str, Any] = {"phase": "Starting"}
        self.hits = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.split("?")[0] not in ("/status", "/healthz"):
                    self.send_error(404)
                    return
                endpoint.hits += 1
                body = json.dumps(endpoint.status if self.path.startswith("/status") else {"ok": True}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="status-endpoint", daemon=True)

    def __enter__(self) -> StatusEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
