"""Fixtures of the operator integration tests: the emulated API server, the real operator
(kopf, in a thread), a fake kubelet and a stand-in for the driver's /status endpoint."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import pytest
from kiln_operator.kube import KubeClient, load_configuration
from kiln_operator.settings import OperatorSettings

from tests.support.fake_kubelet import FakeKubelet
from tests.support.k8s_emulator import EmulatedApiServer, k8s_api  # noqa: F401  (fixture)
from tests.support.kopf_runner import OperatorThread, StatusEndpoint
from tests.support.ports import free_port


@pytest.fixture()
def kube(k8s_api: EmulatedApiServer) -> KubeClient:  # noqa: F811
    # Its own User-Agent: the request log tells the tests' (and the fake kubelet's) requests from the operator's.
    return KubeClient(load_configuration(k8s_api.kubeconfig_path), user_agent="kiln-tests")


@pytest.fixture()
def settings() -> OperatorSettings:
    """Fast settings for tests: a short timer, a default checkpoint location, tiny backoffs."""
    return OperatorSettings(
        timer_interval_seconds=0.5,
        metrics_port=0,
        health_port=free_port(),
        default_checkpoint_storage="pvc://checkpoints/kiln",
        restart_backoff_seconds=1.0,
        restart_backoff_max_seconds=2.0,
        status_unreachable_seconds=60.0,  # a slow CI machine must not look like a lost head
    )


@pytest.fixture()
def start_operator(k8s_api: EmulatedApiServer, settings: OperatorSettings) -> Iterator[Callable[..., OperatorThread]]:  # noqa: F811
    """Start the operator (several times in one test if needed); all are stopped at the end."""
    with ExitStack() as stack:

        def start(**changes: Any) -> OperatorThread:
            operator = OperatorThread(replace(settings, **changes), k8s_api.kubeconfig_path)
            return stack.enter_context(operator)

        yield start


@pytest.fixture()
def operator(start_operator: Callable[..., OperatorThread]) -> OperatorThread:
    return start_operator()


@pytest.fixture()
def kubelet(kube: KubeClient) -> Iterator[FakeKubelet]:
    fake = FakeKubelet(kube)
    yield fake
    fake.stop()


@pytest.fixture()
def trainer() -> Iterator[StatusEndpoint]:
    with StatusEndpoint() as endpoint:
        yield endpoint
