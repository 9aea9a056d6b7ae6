"""An error answer becomes one clean ApiError, whether its body is a Status object or not,
on the request path and the streamed (watch) path alike; an API server behind a proxy's path
is asked under that path."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kiln_operator.kube import ApiError, KubeClient
from kubernetes import client as k8s_client

PROXY_PAGE = b"<html><body>" + b"upstream connect error " * 100 + b"</body></html>"
STATUS = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
          "message": 'pods is forbidden: User "x" cannot list resource "pods"', "code": 403}

# path -> (status, content type, body)
ANSWERS: dict[str, tuple[int, str, bytes]] = {
    "/html": (503, "text/html", PROXY_PAGE),
    "/empty": (502, "text/plain", b""),
    "/status": (403, "application/json", json.dumps(STATUS).encode()),
    "/list": (500, "application/json", b"[1, 2]"),
    "/odd": (599, "text/plain", b"not json"),
    "/k8s/clusters/c-1/api/v1/namespaces/ns/pods/p": (200, "application/json", b'{"kind": "Pod"}'),
}


class Answer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        status, content_type, body = ANSWERS[self.path.split("?")[0]]
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def client_of(host: str) -> KubeClient:
    configuration = k8s_client.Configuration()
    configuration.host = host
    return KubeClient(configuration, timeout_seconds=5)


@pytest.fixture(scope="module")
def client(server_url: str) -> KubeClient:
    return client_of(server_url)


@pytest.mark.parametrize("suffix", ["", "/"])
def test_a_server_behind_a_proxy_path_is_asked_under_that_path(server_url: str, suffix: str) -> None:
    proxied = client_of(f"{server_url}/k8s/clusters/c-1{suffix}")
    assert proxied.get("Pod", "ns", "p") == {"kind": "Pod"}


def requested(client: KubeClient, path: str) -> ApiError:
    with pytest.raises(ApiError) as error:
        client.request("GET", path)
    return error.value


def streamed(client: KubeClient, path: str) -> ApiError:
    with pytest.raises(ApiError) as error:
        list(client.stream_lines(path, {"watch": "1"}, read_timeout=5))
    return error.value


@pytest.mark.parametrize("read", [requested, streamed], ids=["request", "stream_lines"])
def test_a_body_that_is_not_json_gives_the_http_status_and_the_start_of_the_text(client: KubeClient, read) -> None:
    error = read(client, "/html")
    assert (error.status, error.reason) == (503, "ServiceUnavailable")
    assert error.message.startswith("<html><body>upstream connect error") and len(error.message) <= 500


@pytest.mark.parametrize("read", [requested, streamed], ids=["request", "stream_lines"])
def test_an_empty_body_gives_the_http_status(client: KubeClient, read) -> None:
    error = read(client, "/empty")
    assert (error.status, error.reason, error.message) == (502, "BadGateway", "")


@pytest.mark.parametrize("read", [requested, streamed], ids=["request", "stream_lines"])
def test_a_status_object_gives_its_reason_and_message(client: KubeClient, read) -> None:
    error = read(client, "/status")
    assert (error.status, error.reason, error.message) == (403, "Forbidden", STATUS["message"])


@pytest.mark.parametrize("read", [requested, streamed], ids=["request", "stream_lines"])
def test_json_that_is_not_an_object_and_an_unknown_status_still_give_an_api_error(client: KubeClient, read) -> None:
    listed = read(client, "/list")
    assert (listed.status, listed.reason, listed.message) == (500, "InternalServerError", "[1, 2]")
    odd = read(client, "/odd")
    assert (odd.status, odd.reason, odd.message) == (599, "Error", "not json")
