"""A small HTTP/1.1 server on an asyncio Protocol, for the emulated API server.

The emulator answers every request synchronously on its event loop, so a request needs no task,
no middleware and no response object: the bytes come in, a handler returns the answer, and one
`transport.write` sends it. A GET costs about 0.08 ms of the server's CPU here; aiohttp's
server alone took about 0.22 ms, and the load benchmark is meant to measure the operator.

What the clients here need, and no more: keep-alive and pipelining, `Content-Length` and chunked
request bodies, `Expect: 100-continue`, `Connection: close`, and chunked streaming responses
(watches: the handler gets a `ChunkWriter` and writes lines to it until it ends the stream or
the client goes away). No TLS, no HTTP/2 (clients speak HTTP/1.1 to an `http://` server).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote

from tests.support import k8s_json

log = logging.getLogger("kiln.tests.k8s_http")

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024  # a real API server caps request bodies at 3 MiB; this only bounds memory
REASONS = {100: "Continue", 200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           409: "Conflict", 410: "Gone", 413: "Payload Too Large", 415: "Unsupported Media Type",
           422: "Unprocessable Entity", 500: "Internal Server Error"}


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class HttpRequest:
    method: str
    path: str  # percent-decoded, without the query
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    body: bytes = b""

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


@dataclass
class HttpResponse:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, payload: Any, status: int = 200, content_type: str = "application/json") -> HttpResponse:
        return cls(status, k8s_json.dumps(payload), content_type)


class Stream(Protocol):
    """A streamed answer: `start` is called once the response head is sent."""

    def start(self, writer: ChunkWriter) -> None: ...


Handler = Callable[[HttpRequest], "HttpResponse | Stream"]


@dataclass
class ChunkWriter:
    """The body of a streamed response, one chunk per `write`."""

    protocol: HttpProtocol
    keep_alive: bool
    on_close: Callable[[], None] | None = None
    closed: bool = False
    ended: bool = False

    def write(self, data: bytes) -> None:
        if data and not self.closed and not self.ended:
            self.protocol.write(b"%x\r\n%b\r\n" % (len(data), data))

    def end(self) -> None:
        """The last chunk; the connection then serves the client's next request (or closes)."""
        if self.ended:
            return
        self.ended = True
        if not self.closed:
            self.protocol.write(b"0\r\n\r\n")
            self.protocol.stream_ended(self.keep_alive)

    def client_gone(self) -> None:
        self.closed = True
        if self.on_close is not None:
            self.on_close()


def _head_bytes(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def encode_response(response: HttpResponse, keep_alive: bool) -> bytes:
    headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body)))]
    if not keep_alive:
        headers.append(("Connection", "close"))
    return _head_bytes(response.status, headers) + response.body


def _dechunk(data: bytearray | bytes, start: int) -> tuple[bytes, int] | None:
    """A chunked body from `start`: (body, end offset), or None while incomplete."""
    body, at = bytearray(), start
    while True:
        line_end = data.find(b"\r\n", at)
        if line_end < 0:
            return None
        try:
            size = int(bytes(data[at:line_end]).split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadRequest(400, "malformed chunk size") from None
        if size == 0:
            trailer_end = data.find(b"\r\n\r\n", line_end)
            if trailer_end == line_end:  # no trailers: the blank line follows at once
                return bytes(body), line_end + 4
            return (bytes(body), trailer_end + 4) if trailer_end >= 0 else None
        if len(body) + size > MAX_BODY_BYTES:
            raise BadRequest(413, "request body too large")
        chunk_start = line_end + 2
        if len(data) < chunk_start + size + 2:
            return None
        body += data[chunk_start:chunk_start + size]
        at = chunk_start + size + 2


def parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    """(method, target, version, headers) of a request head (without its blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise BadRequest(400, "malformed request line") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(400, "malformed header line")
        headers[name.strip().lower()] = value.strip()
    return method, target, version, headers


def parse_request(data: bytearray) -> tuple[HttpRequest | None, int, bool]:
    """(request, bytes used, keep-alive) for the first complete request in `data`; while it is
    incomplete, (None, 0, whether the client waits for `100 Continue`)."""
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        if len(data) > MAX_HEAD_BYTES:
            raise BadRequest(400, "request head too large")
        return None, 0, False
    method, target, version, headers = parse_head(bytes(data[:head_end]))
    body_start = head_end + 4
    if "chunked" in headers.get("transfer-encoding", "").lower():
        dechunked = _dechunk(data, body_start)
        if dechunked is None:
            return None, 0, headers.get("expect", "").lower() == "100-continue"
        body, end = dechunked
    else:
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise BadRequest(400, "malformed Content-Length") from None
        if length < 0 or length > MAX_BODY_BYTES:
            raise BadRequest(413, "request body too large")
        end = body_start + length
        if len(data) < end:
            return None, 0, headers.get("expect", "").lower() == "100-continue"
        body = bytes(data[body_start:end])
    path, _, query = target.partition("?")
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    request = HttpRequest(method.upper(), unquote(path), dict(parse_qsl(query, keep_blank_values=True)), headers, body)
    return request, end, keep_alive


class HttpProtocol(asyncio.Protocol):
    """One client connection: requests in order; a streamed answer holds the connection until it ends."""

    def __init__(self, handler: Handler, connections: set[HttpProtocol]) -> None:
        self.handler = handler
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.stream: ChunkWriter | None = None
        self.continued = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.transport = None
        if self.stream is not None:
            stream, self.stream = self.stream, None
            stream.client_gone()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.stream is None:
            self.serve_buffered()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def stream_ended(self, keep_alive: bool) -> None:
        self.stream = None
        if not keep_alive:
            self.close()
        elif self.buffer:
            asyncio.get_running_loop().call_soon(self.serve_buffered)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def serve_buffered(self) -> None:
        while self.stream is None and self.transport is not None and not self.transport.is_closing():
            try:
                request, used, flag = parse_request(self.buffer)
            except BadRequest as exc:
                self.write(encode_response(HttpResponse(exc.status, str(exc).encode(), "text/plain"), False))
                self.close()
                return
            if request is None:
                if flag and not self.continued:  # the client waits for leave to send its body
                    self.continued = True
                    self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return
            del self.buffer[:used]
            self.continued = False
            self._answer(request, keep_alive=flag)

    def _answer(self, request: HttpRequest, keep_alive: bool) -> None:
        try:
            answer = self.handler(request)
        except Exception:  # a bug in the emulator must show, but not kill the connection's client
            log.exception("the emulated API server failed on %s %s", request.method, request.path)
            answer = HttpResponse.json({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500,
                                        "reason": "InternalError", "message": "emulator error"}, 500)
        if isinstance(answer, HttpResponse):
            self.write(encode_response(answer, keep_alive))
            if not keep_alive:
                self.close()
            return
        self.stream = ChunkWriter(self, keep_alive)
        head = [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]
        self.write(_head_bytes(200, head + ([] if keep_alive else [("Connection", "close")])))
        answer.start(self.stream)


class HttpServer:
    """Serves `handler` on a free port of 127.0.0.1, on the running loop."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.port = 0
        self.connections: set[HttpProtocol] = set()
        self._server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> HttpServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: HttpProtocol(self.handler, self.connections),
                                                "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            for connection in list(self.connections):
                connection.close()
            await self._server.wait_closed()
