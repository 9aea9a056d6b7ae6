"""OperatorSettings from KILN_* variables, and the restart backoff."""

from __future__ import annotations

import pytest
from kiln_operator.settings import OperatorSettings, SettingsError


def test_no_variables_give_the_defaults():
    assert OperatorSettings.from_env({}) == OperatorSettings()


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"KILN_NAMESPACES": "a, b,,c"}, "namespaces", ("a", "b", "c")),
        ({"KILN_NAMESPACES": ""}, "namespaces", ()),
        ({"KILN_TRAINER_IMAGE": "reg/img:1"}, "trainer_image", "reg/img:1"),
        ({"KILN_IMAGE_PULL_POLICY": "Always"}, "image_pull_policy", "Always"),
        ({"KILN_TIMER_INTERVAL_SECONDS": "2.5"}, "timer_interval_seconds", 2.5),
        ({"KILN_METRICS_PORT": "9090"}, "metrics_port", 9090),
        ({"KILN_DEFAULT_CHECKPOINT_STORAGE": "s3://b/ckpt"}, "default_checkpoint_storage", "s3://b/ckpt"),
        ({"KILN_STATUS_UNREACHABLE_SECONDS": "30"}, "status_unreachable_seconds", 30.0),
        ({"KILN_KUBERNETES_VERSION": "1.33"}, "kubernetes_version", "1.33"),
        ({"UNRELATED": "x"}, "metrics_port", 8080),
        ({}, "dns_namespace", "kube-system"),
        ({}, "dns_pod_labels", (("k8s-app", "kube-dns"),)),
        ({"KILN_DNS_NAMESPACE": "dns"}, "dns_namespace", "dns"),
        ({"KILN_DNS_POD_LABELS": "k8s-app=coredns, app.kubernetes.io/name=coredns"}, "dns_pod_labels",
         (("app.kubernetes.io/name", "coredns"), ("k8s-app", "coredns"))),
    ],
)
def test_variables_set_their_field(env: dict, field: str, value: object):
    assert getattr(OperatorSettings.from_env(env), field) == value


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KILN_METRICS_PORT": "http"}, "KILN_METRICS_PORT: invalid value 'http': must be an integer"),
        ({"KILN_HEALTH_PORT": "70000"}, "KILN_HEALTH_PORT: invalid value '70000': must be a port number"),
        ({"KILN_TIMER_INTERVAL_SECONDS": "0"}, "KILN_TIMER_INTERVAL_SECONDS: invalid value '0': must be greater than 0"),
        ({"KILN_RESTART_BACKOFF_SECONDS": "soon"}, "KILN_RESTART_BACKOFF_SECONDS: invalid value 'soon': must be a number"),
        ({"KILN_IMAGE_PULL_POLICY": "Sometimes"}, "KILN_IMAGE_PULL_POLICY: invalid value 'Sometimes': must be one of"),
        ({"KILN_DEFAULT_CHECKPOINT_STORAGE": "/tmp/x"}, "KILN_DEFAULT_CHECKPOINT_STORAGE: invalid value '/tmp/x': must be shared storage"),
        ({"KILN_DNS_NAMESPACE": "Kube_System"}, "KILN_DNS_NAMESPACE: invalid value 'Kube_System': must be a namespace name"),
        ({"KILN_DNS_POD_LABELS": "k8s-app"}, "KILN_DNS_POD_LABELS: invalid value 'k8s-app': 'k8s-app' is not a label"),
        ({"KILN_DNS_POD_LABELS": ","}, "KILN_DNS_POD_LABELS: invalid value ',': must name at least one label"),
        ({"KILN_DNS_POD_LABELS": "a=b c"}, "KILN_DNS_POD_LABELS: invalid value 'a=b c'"),
    ],
)
def test_bad_values_name_the_variable_and_the_reason(env: dict, message: str):
    with pytest.raises(SettingsError) as caught:
        OperatorSettings.from_env(env)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(("restarts", "seconds"), [(0, 0.0), (1, 10.0), (2, 20.0), (3, 40.0), (6, 300.0), (500, 300.0)])
def test_backoff_doubles_per_restart_and_is_capped(restarts: int, seconds: float):
    assert OperatorSettings().backoff_seconds(restarts) == seconds


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, {"kubeconfig": None, "peering": None, "priority": None, "verbose": False}),
        ([], {"KILN_KUBECONFIG": "/k", "KILN_PEERING": "kiln", "KILN_PRIORITY": "7", "KILN_VERBOSE": "true"},
         {"kubeconfig": "/k", "peering": "kiln", "priority": 7, "verbose": True}),
        (["--kubeconfig", "/flag", "--peering", "p", "--priority", "3"], {"KILN_KUBECONFIG": "/env", "KILN_PRIORITY": "9"},
         {"kubeconfig": "/flag", "peering": "p", "priority": 3, "verbose": False}),
        ([], {"KILN_VERBOSE": "0"}, {"verbose": False}),
    ],
)
def test_every_process_flag_has_a_kiln_variable_and_the_flag_wins(argv, env, expected):
    from kiln_operator.main import build_parser, process_flags

    flags = process_flags(build_parser().parse_args(argv), env)
    assert {k: getattr(flags, k) for k in expected} == expected


def test_a_bad_priority_variable_is_named():
    from kiln_operator.main import build_parser, process_flags

    with pytest.raises(SettingsError, match="KILN_PRIORITY"):
        process_flags(build_parser().parse_args([]), {"KILN_PRIORITY": "high"})
