"""Free TCP ports for test servers."""

from __future__ import annotations

import socket

from kiln_api.spec import RAY_RESERVED_PORTS

# Ray hands out worker ports in 10002-19999 by default: a test server there can collide with one.
RAY_WORKER_PORTS = range(10002, 20000)


def free_port() -> int:
    """A free loopback port outside Ray's worker port range and its fixed ports (also refused as a metrics port)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in RAY_WORKER_PORTS and port not in RAY_RESERVED_PORTS:
            return port
