"""The emulated API server's own HTTP/1.1 layer (tests/support/k8s_http.py), spoken to over raw
sockets, and the invariants its speed rests on: stored objects encoded once per version, JSON
patches that leave the stored object alone."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from tests.support.k8s_emulator import EmulatedApiServer
from tests.support.k8s_http import BadRequest, parse_request
from tests.support.k8s_semantics import apply_patch
from tests.support.waiting import wait_for

NS = "default"
PODS = f"/api/v1/namespaces/{NS}/pods"


class RawClient:
    """One keep-alive connection; reads answers by Content-Length or chunks."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> bytes:
        data = b"" if body is None else json.dumps(body).encode()
        head = {"Host": "x", "Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}
        return f"{method} {path} HTTP/1.1\r\n".encode() + "".join(f"{k}: {v}\r\n" for k, v in head.items()).encode() + b"\r\n" + data

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        status = int(self.file.readline().split()[1])
        headers: dict[str, str] = {}
        while (line := self.file.readline()) != b"\r\n":
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            return status, headers, b"".join(self.chunks())
        return status, headers, self.file.read(int(headers.get("content-length", "0")))

    def chunks(self) -> list[bytes]:
        found = []
        while (size := int(self.file.readline().strip(), 16)) != 0:
            found.append(self.file.read(size))
            self.file.readline()
        self.file.readline()
        return found

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
            "spec": {"containers": [{"name": "c", "image": "x"}]}}


@pytest.fixture()
def raw(k8s_api: EmulatedApiServer) -> Any:
    client = RawClient(k8s_api.url)
    yield client
    client.close()


def test_pipelined_requests_on_one_connection_are_answered_in_order(raw: RawClient) -> None:
    raw.send(raw.request("POST", PODS, pod("a")) + raw.request("POST", PODS, pod("b")) + raw.request("GET", f"{PODS}/a"))
    answers = [raw.answer() for _ in range(3)]
    assert [status for status, _, _ in answers] == [201, 201, 200]
    assert json.loads(answers[2][2])["metadata"]["name"] == "a"


def test_a_request_split_across_writes_and_a_chunked_body_are_read_whole(raw: RawClient) -> None:
    request = raw.request("POST", PODS, pod("split"))
    raw.send(request[:7])
    raw.send(request[7:40])
    raw.send(request[40:])
    assert raw.answer()[0] == 201
    body = json.dumps(pod("chunked")).encode()
    raw.send(f"POST {PODS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
             + b"%x\r\n%b\r\n" % (10, body[:10]) + b"%x;ext=1\r\n%b\r\n" % (len(body) - 10, body[10:]) + b"0\r\n\r\n")
    status, _, answer = raw.answer()
    assert status == 201 and json.loads(answer)["metadata"]["name"] == "chunked"


def test_expect_continue_gets_leave_to_send_the_body(raw: RawClient) -> None:
    body = json.dumps(pod("later")).encode()
    raw.send(f"POST {PODS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
             "Expect: 100-continue\r\n\r\n".encode())
    assert raw.file.readline().startswith(b"HTTP/1.1 100")
    assert raw.file.readline() == b"\r\n"
    raw.send(body)
    assert raw.answer()[0] == 201


def test_connection_close_is_honoured(raw: RawClient) -> None:
    raw.send(raw.request("GET", f"{PODS}/nope", headers={"Connection": "close"}))
    status, headers, _ = raw.answer()
    assert status == 404 and headers["connection"] == "close"
    assert raw.file.read() == b""  # the server closed its end


def test_a_malformed_request_answers_400_and_closes(raw: RawClient) -> None:
    raw.send(b"NONSENSE\r\n\r\n")
    assert raw.answer()[0] == 400
    assert raw.file.read() == b""


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\nbroken header\r\n\r\n", b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                                  b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])
def test_malformed_heads_and_bodies_are_refused(data: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_request(bytearray(data))


def test_a_watch_streams_chunks_ends_at_its_timeout_and_the_connection_serves_on(k8s_api: EmulatedApiServer,
                                                                                raw: RawClient) -> None:
    raw.send(raw.request("POST", PODS, pod("before")))
    assert raw.answer()[0] == 201
    raw.send(raw.request("GET", f"{PODS}?watch=true&timeoutSeconds=1"))
    status, headers, body = raw.answer()  # returns once the watch ends, after a second
    events = [json.loads(line) for line in body.splitlines()]
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "before")]
    raw.send(raw.request("GET", f"{PODS}/before"))
    assert raw.answer()[0] == 200


def test_a_client_leaving_mid_watch_is_forgotten(k8s_api: EmulatedApiServer) -> None:
    client = RawClient(k8s_api.url)
    client.send(client.request("GET", f"{PODS}?watch=true"))
    client.file.readline()
    assert k8s_api._call(lambda: len(k8s_api.emulator._watches)) == 1
    client.close()
    wait_for(lambda: k8s_api._call(lambda: len(k8s_api.emulator._watches)) == 0, timeout=30,
             what="the emulator forgetting the watch of a client that left")


def test_a_stored_object_is_encoded_once_per_version(k8s_api: EmulatedApiServer, raw: RawClient) -> None:
    raw.send(raw.request("POST", PODS, pod("p")))
    raw.answer()
    index = k8s_api.emulator.state.index
    stored = k8s_api._call(lambda: index.objects[("v1/pods", NS, "p")], fresh=True)
    first = k8s_api._call(lambda: index.encoded(stored), fresh=True)
    assert k8s_api._call(lambda: index.encoded(stored), fresh=True) is first  # cached
    raw.send(raw.request("PATCH", f"{PODS}/p", {"metadata": {"labels": {"x": "1"}}},
                         {"Content-Type": "application/merge-patch+json"}))
    assert json.loads(raw.answer()[2])["metadata"]["labels"] == {"x": "1"}
    raw.send(raw.request("GET", PODS))
    listed = json.loads(raw.answer()[2])
    assert listed["kind"] == "PodList" and listed["items"][0]["metadata"]["labels"] == {"x": "1"}
    assert k8s_api._call(lambda: id(stored) in index._encoded, fresh=True) is False  # the old version is dropped


def test_a_json_patch_leaves_the_stored_object_as_it_was() -> None:
    stored = {"metadata": {"name": "a", "finalizers": ["x"], "labels": {"k": "v"}}, "spec": {"items": [{"a": 1}, {"b": 2}]}}
    before = json.loads(json.dumps(stored))
    patched = apply_patch(stored, [
        {"op": "add", "path": "/metadata/finalizers/-", "value": "y"},
        {"op": "replace", "path": "/spec/items/1/b", "value": 3},
        {"op": "move", "from": "/metadata/labels/k", "path": "/metadata/labels/j"},
    ], "application/json-patch+json")
    assert stored == before
    assert patched["metadata"] == {"name": "a", "finalizers": ["x", "y"], "labels": {"j": "v"}}
    assert patched["spec"]["items"] == [{"a": 1}, {"b": 3}]
    assert patched["spec"]["items"][0] is stored["spec"]["items"][0]  # untouched parts are shared
    with pytest.raises(ValueError, match="cannot be applied"):
        apply_patch(stored, [{"op": "remove", "path": "/nope/x"}], "application/json-patch+json")
    assert stored == before


def test_bodies_with_nan_are_refused_as_a_real_api_server_does(raw: RawClient) -> None:
    body = json.dumps(pod("nan")).replace('"image": "x"', '"image": "x", "x": NaN').encode()
    raw.send(f"POST {PODS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
             + body)
    assert raw.answer()[0] == 400
