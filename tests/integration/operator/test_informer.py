"""The operator's informers against the emulated API server: a list, then a watch that follows
every change, resumes after the server ends it, and stops at once when told."""

from __future__ import annotations

from typing import Any

from kiln_operator.informer import Informer
from kiln_operator.kube import KubeClient

from tests.support.k8s_emulator import EmulatedApiServer
from tests.support.waiting import wait_for

NS = "default"
SELECTOR = "app.kubernetes.io/managed-by=kiln-operator"


def config_map(name: str, job: str, value: str = "1", managed: bool = True) -> dict[str, Any]:
    labels = {"kiln.dev/job-name": job, **({"app.kubernetes.io/managed-by": "kiln-operator"} if managed else {})}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NS, "labels": labels},
            "data": {"v": value}}


def names(informer: Informer, job: str) -> list[str]:
    return sorted(o["metadata"]["name"] for o in informer.group(NS, job))


def test_an_informer_lists_then_follows_creates_changes_and_deletions(k8s_api: EmulatedApiServer, kube: KubeClient) -> None:
    kube.create(config_map("before", "a"))
    kube.create(config_map("unmanaged", "a", managed=False))  # outside the selector
    informer = Informer(kube, "ConfigMap", NS, SELECTOR, "kiln.dev/job-name").start()
    try:
        assert informer.wait_synced(30)
        assert names(informer, "a") == ["before"]
        assert informer.group(NS, "a")[0]["kind"] == "ConfigMap"  # a list's items get their kind
        kube.create(config_map("after", "a"))
        kube.patch("ConfigMap", NS, "before", {"data": {"v": "2"}})
        kube.delete("ConfigMap", NS, "after")
        kube.create(config_map("other", "b"))
        wait_for(lambda: names(informer, "b") == ["other"], 30, "the watch to bring the last create")
        assert names(informer, "a") == ["before"]
        assert informer.get(NS, "before")["data"] == {"v": "2"}  # type: ignore[index]
    finally:
        informer.stop()
    informer._thread.join(10)
    assert not informer._thread.is_alive()  # stop ends a watch blocked in its read


def test_an_informer_resumes_after_the_server_ends_its_watch(k8s_api: EmulatedApiServer, kube: KubeClient) -> None:
    informer = Informer(kube, "ConfigMap", NS, SELECTOR, "kiln.dev/job-name").start()
    try:
        assert informer.wait_synced(30)
        k8s_api._call(k8s_api.emulator.close_watches)  # as an API server ends watches on a restart
        kube.create(config_map("later", "a"))
        wait_for(lambda: names(informer, "a") == ["later"], 30, "the resumed watch to bring the create")
        assert informer.synced
    finally:
        informer.stop()
