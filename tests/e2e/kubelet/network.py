"""Pod networking for the test kubelet: one Linux network namespace per pod.

Why namespaces and not just one 127.x address per pod: Ray 2.60 binds several ports on the
wildcard address whatever `--node-ip-address` says (GCS `*:6379`, raylet `*:<random>`, the
dashboard `127.0.0.1:8265`, the dashboard agent `*:52365`), so two Ray pods on one host's
network would collide, and the kube-proxy could not listen on `clusterIP:6379` next to a GCS
bound to `*:6379`. With a namespace per pod every pod binds what it likes, exactly as on a
cluster, and the product needs no test hook.

Layout (needs root and iproute2):
* a bridge `kb<id>` with `10.213.<n>.1/24` on the host; each pod gets a veth into it and the
  address `10.213.<n>.<k>` (its `status.podIP`), default route via the bridge, so the test
  process (operator, probes) reaches pods directly and pods reach each other;
* Service clusterIPs come from 127.1.0.0/16 (the emulated API server allocates them). The
  kube-proxy's listeners live in one more namespace of their own (`10.213.<n>.254`), not on
  the host: anything on the host bound to `*:6379` (another Ray, another test run) would
  otherwise swallow connections meant for a Service. Inside a pod 127.0.0.0/8 would be the
  pod's own loopback, so the pod's `local` route is narrowed to 127.0.0.0/16 and
  127.1.0.0/16 is routed to the proxy namespace over the bridge; `route_localnet=1` on both
  ends lets the kernel carry those addresses over a real link. As on a cluster, Services
  are reached from pods; the test process talks to pods by their pod IPs.
"""

from __future__ import annotations

import ctypes
import ipaddress
import itertools
import os
import random
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass, field

SUBNET_BASE = "10.213"
SERVICE_CIDR = "127.1.0.0/16"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetworkUnavailable(RuntimeError):
    """Per-pod network namespaces need root and `ip`; the reason says which is missing."""


def availability_problem() -> str | None:
    """None when this host can run pod namespaces, else why not (for a skip reason)."""
    if os.geteuid() != 0:
        return "the process kubelet needs root (network and mount namespaces per pod)"
    if shutil.which("ip") is None:
        return "the process kubelet needs iproute2 (`ip`)"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise NetworkUnavailable(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def used_subnets(route_table: str) -> set[int]:
    """Third octets of 10.213.x.0/24 routes already on the host (other kubelets, leftovers)."""
    used: set[int] = set()
    for line in route_table.splitlines():
        dest = line.split(" ", 1)[0]
        if dest.startswith(SUBNET_BASE + "."):
            used.add(int(dest.split(".")[2]))
    return used


@dataclass
class AddressPool:
    """Pod addresses .2-.254 of one /24; freed ones are reused last (least recently used)."""

    subnet: int
    free: list[int] = field(default_factory=lambda: list(range(2, 255)))

    def take(self) -> str:
        if not self.free:
            raise NetworkUnavailable("no pod address left in the kubelet's /24")
        return f"{SUBNET_BASE}.{self.subnet}.{self.free.pop(0)}"

    def give_back(self, address: str) -> None:
        last = int(address.rsplit(".", 1)[1])
        if last not in self.free:
            self.free.append(last)


class PodNetwork:
    """The bridge of one kubelet and the namespaces of its pods."""

    def __init__(self) -> None:
        problem = availability_problem()
        if problem:
            raise NetworkUnavailable(problem)
        taken = used_subnets(_ip("route", "show").stdout)
        choices = [n for n in range(10, 250) if n not in taken]
        if not choices:
            raise NetworkUnavailable("no free 10.213.x.0/24 subnet")
        self.subnet = random.choice(choices)
        self.tag = f"{os.getpid() % 10000:04d}{self.subnet:03d}"
        self.bridge = f"kb{self.tag}"
        self.gateway = f"{SUBNET_BASE}.{self.subnet}.1"
        self.pool = AddressPool(self.subnet)
        self.namespaces: dict[str, str] = {}
        self._counter = itertools.count()
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        _sysctl(None, f"net.ipv4.conf.{self.bridge}.route_localnet", "1")
        self.proxy_ip = f"{SUBNET_BASE}.{self.subnet}.254"
        self.proxy_netns = f"kx{self.tag}"
        self._attach(self.proxy_netns, "kxh" + self.tag, "kxc" + self.tag, self.proxy_ip)

    def create(self, uid: str) -> tuple[str, str]:
        """A namespace for a pod: (namespace name, pod IP)."""
        index = next(self._counter)
        netns = f"kp{self.tag}-{index}"
        host_if, pod_if = f"kv{self.tag}{index}", f"kc{self.tag}{index}"
        address = self.pool.take()
        self.namespaces[uid] = netns
        self._attach(netns, host_if, pod_if, address)
        # Service addresses live in the proxy namespace: see the module docstring.
        _ip("-n", netns, "route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local")
        _ip("-n", netns, "route", "add", "local", "127.0.0.0/16", "dev", "lo", "table", "local")
        _ip("-n", netns, "route", "add", SERVICE_CIDR, "via", self.proxy_ip, "dev", pod_if)
        return netns, address

    def _attach(self, netns: str, host_if: str, inner_if: str, address: str) -> None:
        """A namespace with a veth into the bridge, `address`/24, default route via the host."""
        _ip("netns", "add", netns)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", inner_if)
        _ip("link", "set", inner_if, "netns", netns)
        _ip("link", "set", host_if, "master", self.bridge, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "addr", "add", f"{address}/24", "dev", inner_if)
        _ip("-n", netns, "link", "set", inner_if, "up")
        _ip("-n", netns, "route", "add", "default", "via", self.gateway)
        for key in ("all", inner_if):
            _sysctl(netns, f"net.ipv4.conf.{key}.route_localnet", "1")

    def pids(self, netns: str) -> list[int]:
        out = _ip("netns", "pids", netns, check=False).stdout
        return [int(p) for p in out.split()]

    def delete(self, uid: str, address: str | None) -> None:
        netns = self.namespaces.pop(uid, None)
        if netns:
            _ip("netns", "del", netns, check=False)
        if address:
            self.pool.give_back(address)

    def close(self) -> None:
        for uid in list(self.namespaces):
            self.delete(uid, None)
        _ip("netns", "del", self.proxy_netns, check=False)
        _ip("link", "del", self.bridge, check=False)


def _sysctl(netns: str | None, key: str, value: str) -> None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    path = "/proc/sys/" + key.replace(".", "/")
    result = subprocess.run([*prefix, "sh", "-c", f"echo {value} > {path}"], capture_output=True, text=True)
    if result.returncode != 0:
        raise NetworkUnavailable(f"sysctl {key}: {result.stderr.strip()}")


def listen_in_netns(netns: str, host: str, port: int) -> socket.socket:
    """A listening TCP socket created inside `netns` (a socket keeps the namespace it was made in)."""
    result: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({netns})")
            finally:
                os.close(fd)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
            result.append(sock)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            result.append(exc)

    # setns changes only the calling thread, so a short-lived thread does it.
    worker = threading.Thread(target=make, name=f"netns-{netns}")
    worker.start()
    worker.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def is_service_ip(address: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(SERVICE_CIDR)
