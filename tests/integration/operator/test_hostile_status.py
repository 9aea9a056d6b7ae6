"""A job's head answering /status in hostile ways must neither stall nor crash the operator.

Each answer comes from a real HTTP server on loopback: a huge body, one that trickles a byte
every half second, 100,000-deep JSON nesting, invalid UTF-8, a JSON array, wrong types. The
operator must give up within its one deadline and treat every one as "trainer unreachable".
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from kiln_operator.kube import KubeClient
from kiln_operator.observe import STATUS_DEADLINE_SECONDS, STATUS_MAX_BODY_BYTES, fetch_trainer_status, observe

from tests.support.fake_kubelet import FakeKubelet
from tests.support.kopf_runner import OperatorThread
from tests.support.operator_reads import NS, job_manifest, job_status, sample, scrape, wait_phase
from tests.support.ports import free_port
from tests.support.waiting import wait_for

SLACK_SECONDS = 1.0
GOOD = b'{"phase": "Running", "progress": {"epoch": 1, "totalEpochs": 3, "step": 10}}'


def _answer(body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % size + body


class HostileHead:
    """A TCP server on a free loopback port that answers every connection as `mode` says.

    Modes: good, huge (a 150 MiB body), endless (a body without length that never ends), headers
    (headers that never end), trickle (one byte every 0.5 s), silent (accepts, never answers),
    deep, utf8, array, types, notjson, error (HTTP 500).
    """

    def __init__(self) -> None:
        self.mode = "good"
        self.sent = 0  # bytes the last connection got through
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", free_port()))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="hostile-head", daemon=True)

    def __enter__(self) -> HostileHead:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._acceptor.join(10)
        for thread in self._threads:
            thread.join(10)
        self._sock.close()
        assert not any(t.is_alive() for t in [self._acceptor, *self._threads])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/status"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        self.sent += len(data)

    def _serve(self, conn: socket.socket) -> None:
        self.sent = 0
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(4096)  # the request
                self._respond(conn)
            except OSError:
                pass  # the operator gave up on us: what this test wants

    def _respond(self, conn: socket.socket) -> None:
        mode = self.mode
        if mode == "good":
            self._send(conn, _answer(GOOD))
        elif mode in ("huge", "endless"):
            self._send(conn, _answer(b"", 150 * 1024 * 1024) if mode == "huge" else b"HTTP/1.0 200 OK\r\n\r\n")
            chunk = b'{"a": "' + b"x" * 65536
            while not self._stop.is_set() and self.sent < 150 * 1024 * 1024:
                self._send(conn, chunk)
        elif mode == "trickle":
            for byte in _answer(GOOD):
                if self._stop.wait(0.5):  # paces the answer; stops at once at the end of the test
                    return
                self._send(conn, bytes([byte]))
        elif mode == "headers":
            self._send(conn, b"HTTP/1.0 200 OK\r\n")
            while not self._stop.is_set() and self.sent < 150 * 1024 * 1024:
                self._send(conn, b"X-Filler: " + b"y" * 1000 + b"\r\n")
        elif mode == "error":
            self._send(conn, b"HTTP/1.0 500 Oops\r\nContent-Length: 2\r\n\r\n{}")
        elif mode == "silent":
            self._stop.wait(30)
        else:
            body = {
                "deep": b"[" * 100_000 + b"]" * 100_000,
                "utf8": b'{"phase": "Running", "message": "\xff\xfe"}',
                "array": b'[{"phase": "Running"}]',
                "types": b'{"phase": 5, "progress": "all of it"}',
                "notjson": b"<html>hello</html>",
            }[mode]
            self._send(conn, _answer(body))


@pytest.fixture()
def head() -> Iterator[HostileHead]:
    with HostileHead() as server:
        yield server


HOSTILE = ["huge", "endless", "headers", "trickle", "silent", "deep", "utf8", "array", "types", "notjson", "error"]


@pytest.mark.parametrize("mode", HOSTILE)
def test_every_hostile_answer_is_an_unreachable_trainer_within_the_deadline(head: HostileHead, mode: str) -> None:
    assert fetch_trainer_status(head.url) == (
        {"phase": "Running", "progress": {"epoch": 1, "totalEpochs": 3, "step": 10}}, None)
    head.mode = mode
    started = time.monotonic()
    status, error = fetch_trainer_status(head.url)
    took = time.monotonic() - started
    assert status is None and error and error.startswith(f"GET {head.url}: "), error
    assert took < STATUS_DEADLINE_SECONDS + SLACK_SECONDS, f"{mode}: {took:.1f}s"
    if mode in ("huge", "endless", "headers"):
        # Read no further than the cap: the rest stays in socket buffers or is never sent.
        assert head.sent < 32 * 1024 * 1024, head.sent
        assert "limit" in error
    if mode in ("trickle", "silent"):
        assert "within" in error


def test_the_deadline_is_one_for_the_whole_call() -> None:
    assert STATUS_DEADLINE_SECONDS <= 3.0 and STATUS_MAX_BODY_BYTES == 1 << 20


class _Kube:
    """The job's head pod, running at 127.0.0.1; nothing else exists."""

    def __init__(self, port: int) -> None:
        self.pod = {"metadata": {"name": "j-head", "labels": {"kiln.dev/role": "head"}, "ownerReferences": [{"uid": "u"}]},
                    "status": {"phase": "Running", "podIP": "127.0.0.1"}}

    def list(self, kind: str, namespace: str, selector: str | None = None) -> list[dict]:
        return [self.pod] if kind == "Pod" else []

    def get(self, kind: str, namespace: str, name: str) -> dict:
        from kiln_operator.kube import ApiError

        raise ApiError(404, "NotFound", name)


@pytest.mark.parametrize("mode", HOSTILE)
def test_observe_reports_a_hostile_head_as_an_error_and_decide_goes_on(head: HostileHead, mode: str) -> None:
    from kiln_operator.reconciler import decide
    from kiln_operator.settings import OperatorSettings

    head.mode = mode
    job = job_manifest("j", head.port)
    job["metadata"].update(uid="u", namespace=NS, generation=1)
    job["status"] = {"phase": "Running", "reason": "Training", "message": "", "startTime": "2026-01-01T00:00:00Z"}
    started = time.monotonic()
    observation = observe(_Kube(head.port), job)  # type: ignore[arg-type]
    assert time.monotonic() - started < STATUS_DEADLINE_SECONDS + SLACK_SECONDS
    assert observation.trainer_status is None and observation.trainer_status_error
    decision = decide(job, observation, OperatorSettings(default_checkpoint_storage="pvc://ckpt"), "token")
    assert decision.status["phase"] == "Running" and decision.status["trainerUnreachableSince"]


def test_the_operator_outlives_a_hostile_head_and_reads_it_again_once_it_behaves(
    head: HostileHead, kube: KubeClient, start_operator: Callable[..., OperatorThread], kubelet: FakeKubelet
) -> None:
    operator = start_operator()
    kube.create(job_manifest("demo", head.port))
    kubelet.auto_run(NS, "kiln.dev/job-name=demo")
    wait_phase(kube, "demo", "Running")
    for mode in ("deep", "huge", "trickle"):
        head.mode = mode
        wait_for(lambda: job_status(kube, "demo").get("trainerUnreachableSince"), 30, f"{mode}: the trainer counted unreachable")
        head.mode = "good"
        wait_for(lambda: not job_status(kube, "demo").get("trainerUnreachableSince"), 30, f"{mode}: the trainer read again")
    assert operator.alive and job_status(kube, "demo")["phase"] == "Running"
    errors = scrape(operator.metrics_port)
    for reason in ("RecursionError", "MemoryError", "UnicodeDecodeError", "JSONDecodeError", "TimeoutError"):
        assert not sample(errors, "kiln_reconcile_errors_total", reason=reason), reason
