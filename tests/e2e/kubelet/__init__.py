"""A process "kubelet" (and kube-proxy) for end-to-end tests: see `kubelet.py`."""

from .kubelet import ProcessKubelet
from .network import availability_problem

__all__ = ["ProcessKubelet", "availability_problem"]
