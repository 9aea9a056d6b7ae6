"""Free TCP ports for test servers."""

from __future__ import annotations

import socket

# Ray hands out worker ports in 10002-19999 by default: a test server there can collide with one.
RAY_WORKER_PORTS = range(10002, 20000)


def free_port() -> int:
    """A free loopback port outside Ray's worker port range."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in RAY_WORKER_PORTS:
            return port
