"""Table-driven tests of the process kubelet's pure rules (no processes, no root needed)."""

from __future__ import annotations

import base64

import pytest

from tests.e2e.kubelet.envvars import (
    MissingReference,
    PodSpecError,
    container_env,
    expand,
    field_ref,
    parse_quantity,
    service_link_env,
)
from tests.e2e.kubelet.network import AddressPool, used_subnets
from tests.e2e.kubelet.podspec import identity, only_container, termination_message, unschedulable_reason
from tests.e2e.kubelet.probes import ProbeTracker, resolve_port
from tests.e2e.kubelet.proxy import endpoints


@pytest.mark.parametrize(("text", "expected"), [
    ("$(A)", "x"),
    ("pre-$(A)-post", "pre-x-post"),
    ("$$(A)", "$(A)"),
    ("$$$(A)", "$x"),
    ("$(MISSING)", "$(MISSING)"),
    ("$(A", "$(A"),
    ("$A", "$A"),
    ("cost: 5$", "cost: 5$"),
    ("$(A)$(B)", "xy"),
])
def test_expansion_follows_kubernetes_rules(text: str, expected: str) -> None:
    assert expand(text, {"A": "x", "B": "y"}) == expected


@pytest.mark.parametrize(("quantity", "value"), [("500m", 0.5), ("2", 2), ("2Gi", 2 * 2**30), ("1.5k", 1500), ("64Mi", 64 * 2**20)])
def test_quantities_parse_like_kubernetes(quantity: str, value: float) -> None:
    assert parse_quantity(quantity) == value


def test_bad_quantity_is_refused() -> None:
    with pytest.raises(PodSpecError, match="2 lots"):
        parse_quantity("2 lots")


def test_service_links_cover_named_ports_and_skip_headless() -> None:
    services = [
        {"metadata": {"name": "my-head"}, "spec": {"clusterIP": "127.1.0.4",
                                                     "ports": [{"name": "gcs", "port": 6379}, {"name": "dash-board", "port": 8265}]}},
        {"metadata": {"name": "headless"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}},
    ]
    env = service_link_env(services)
    assert env["MY_HEAD_SERVICE_HOST"] == "127.1.0.4"
    assert (env["MY_HEAD_SERVICE_PORT"], env["MY_HEAD_SERVICE_PORT_GCS"], env["MY_HEAD_SERVICE_PORT_DASH_BOARD"]) == ("6379", "6379", "8265")
    assert env["MY_HEAD_PORT"] == "tcp://127.1.0.4:6379" and env["MY_HEAD_PORT_8265_TCP_ADDR"] == "127.1.0.4"
    assert not any(key.startswith("HEADLESS") for key in env)


POD = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"a": "b"}},
       "spec": {"nodeName": "n"}, "status": {"podIP": "10.0.0.2"}}


@pytest.mark.parametrize(("path", "value"), [
    ("metadata.name", "p"), ("metadata.namespace", "ns"), ("metadata.uid", "u1"),
    ("status.podIP", "10.0.0.2"), ("spec.nodeName", "n"), ("metadata.labels['a']", "b"), ("metadata.labels['zz']", ""),
])
def test_downward_api_field_refs(path: str, value: str) -> None:
    assert field_ref(POD, path) == value


def test_unknown_field_ref_is_refused_with_the_path() -> None:
    with pytest.raises(PodSpecError, match="status.bogus"):
        field_ref(POD, "status.bogus")


def test_env_entries_expand_in_order_and_secrets_decode() -> None:
    secret = {"data": {"k": base64.b64encode(b"s3cret").decode()}}
    container = {"name": "c", "env": [
        {"name": "LATER_REF", "value": "$(FIRST)"},
        {"name": "FIRST", "value": "1"},
        {"name": "AFTER", "value": "$(FIRST)"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k", "optional": True}}},
    ]}
    env = container_env(POD, container, [], lambda kind, ns, name: secret if name == "s" else None)
    assert (env["LATER_REF"], env["AFTER"], env["TOKEN"]) == ("$(FIRST)", "1", "s3cret")
    assert "OPT" not in env


def test_missing_secret_key_waits_rather_than_fails() -> None:
    container = {"name": "c", "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nope"}}}]}
    with pytest.raises(MissingReference, match="nope"):
        container_env(POD, container, [], lambda *_: {"data": {}})


@pytest.mark.parametrize(("results", "threshold", "states"), [
    ([True, True], (1, 3), [True, True]),
    ([True, False, False, False], (1, 3), [True, True, True, False]),
    ([True, True, False, True], (2, 1), [False, True, False, False]),
])
def test_probe_thresholds(results: list[bool], threshold: tuple[int, int], states: list[bool]) -> None:
    tracker = ProbeTracker(*threshold)
    assert [tracker.record(r) for r in results] == states


def test_probe_port_by_name() -> None:
    container = {"name": "c", "ports": [{"name": "http", "containerPort": 8000}]}
    assert (resolve_port("http", container), resolve_port(81, container)) == (8000, 81)
    with pytest.raises(PodSpecError, match="'nope'"):
        resolve_port("nope", container)


def _pod(name: str, phase: str, ready: bool, labels: dict[str, str]) -> dict:
    return {"metadata": {"name": name, "namespace": "ns", "labels": labels},
            "spec": {"containers": [{"ports": [{"name": "web", "containerPort": 8080}]}]},
            "status": {"phase": phase, "podIP": f"10.0.0.{len(name)}",
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


@pytest.mark.parametrize(("publish_not_ready", "expected"), [(False, [("10.0.0.5", 8080)]), (True, [("10.0.0.4", 8080), ("10.0.0.5", 8080)])])
def test_endpoints_select_running_pods_ready_unless_published(publish_not_ready: bool, expected: list) -> None:
    service = {"metadata": {"name": "s", "namespace": "ns"},
               "spec": {"selector": {"app": "x"}, "publishNotReadyAddresses": publish_not_ready,
                        "ports": [{"port": 80, "targetPort": "web"}]}}
    pods = [_pod("abcd", "Running", False, {"app": "x"}), _pod("ready", "Running", True, {"app": "x"}),
            _pod("other", "Running", True, {"app": "y"}), _pod("done!", "Succeeded", True, {"app": "x"})]
    assert endpoints(service, pods) == {80: expected}


@pytest.mark.parametrize(("policy", "file_text", "code", "expected"), [
    ("File", "msg", 1, "msg"),
    ("File", "", 1, ""),
    ("FallbackToLogsOnError", "", 1, "log tail"),
    ("FallbackToLogsOnError", "", 0, ""),
    ("FallbackToLogsOnError", "msg", 1, "msg"),
])
def test_termination_message_policy(policy: str, file_text: str, code: int, expected: str) -> None:
    assert termination_message(policy, file_text, "log tail", code) == expected


def test_termination_message_is_capped_at_4096_bytes() -> None:
    assert len(termination_message("File", "x" * 5000, "", 1)) == 4096


@pytest.mark.parametrize(("spec", "field"), [
    ({"containers": [{"name": "a"}, {"name": "b"}], "restartPolicy": "Never"}, "spec.containers"),
    ({"containers": [{"name": "a"}], "restartPolicy": "Always"}, "spec.restartPolicy"),
    ({"containers": [{"name": "a"}], "restartPolicy": "Never", "hostNetwork": True}, "spec.hostNetwork"),
    ({"containers": [{"name": "a"}], "restartPolicy": "Never", "initContainers": [{}]}, "spec.initContainers"),
])
def test_unsupported_pods_are_refused_naming_the_field(spec: dict, field: str) -> None:
    with pytest.raises(PodSpecError, match=field.replace(".", r"\.")):
        only_container({"spec": spec})


def test_security_context_merges_pod_and_container() -> None:
    pod = {"spec": {"securityContext": {"runAsUser": 1000, "fsGroup": 2000, "runAsNonRoot": True}}}
    container = {"securityContext": {"runAsUser": 1001, "allowPrivilegeEscalation": False}}
    assert identity(pod, container) == (1001, 1001, [2000], True)


def test_node_selector_must_match_the_test_node() -> None:
    assert unschedulable_reason({"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}}}) is None
    assert "gpu" in (unschedulable_reason({"spec": {"nodeSelector": {"gpu": "a100"}}}) or "")


def test_address_pool_reuses_freed_addresses_last() -> None:
    pool = AddressPool(7)
    first, second = pool.take(), pool.take()
    pool.give_back(first)
    assert (first, second) == ("10.213.7.2", "10.213.7.3") and pool.free[-1] == 2


def test_used_subnets_read_from_the_route_table() -> None:
    table = "default via 192.0.2.1 dev eth0\n10.213.42.0/24 dev kb1 proto kernel\n10.213.7.0/24 dev kb2\n"
    assert used_subnets(table) == {42, 7}
