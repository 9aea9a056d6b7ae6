"""The per-job NetworkPolicy.

Ray's ports (GCS, raylets, object managers, and the worker processes' random gRPC ports)
are reachable only from the job's own pods: Ray's `/metrics` and the dashboard stay
unauthenticated even with token auth. The driver's metrics/status port is also open to
the operator's namespace (it polls /status) and the Prometheus namespace (it scrapes).

Egress is limited to the job's own pods and the cluster DNS pods (port 53 of the pods
labelled `KILN_DNS_POD_LABELS`, default `k8s-app=kube-dns`, in `KILN_DNS_NAMESPACE`, default
`kube-system`), plus HTTPS (443, any destination) when any of the job's locations is on S3
(S3 endpoints have no stable addresses to list), plus what the job allows in `spec.network.egress`.
"""

from __future__ import annotations

from kiln_api import TrainingJob

from ..settings import OperatorSettings
from .labels import job_selector, network_policy_name
from .owner import object_meta
from .storage import uses_s3

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def _namespace_peer(namespace: str) -> dict:
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}}}


def _ingress(job: TrainingJob, settings: OperatorSettings) -> list[dict]:
    own_pods = {"podSelector": {"matchLabels": job_selector(job)}}
    scrapers = sorted({settings.operator_namespace, settings.prometheus_namespace})
    return [
        {"from": [own_pods]},
        {
            "from": [_namespace_peer(ns) for ns in scrapers],
            "ports": [{"protocol": "TCP", "port": job.spec.metrics.port}],
        },
    ]


def _egress(job: TrainingJob, settings: OperatorSettings) -> list[dict]:
    rules: list[dict] = [
        {"to": [{"podSelector": {"matchLabels": job_selector(job)}}]},
        {
            "to": [{**_namespace_peer(settings.dns_namespace), "podSelector": {"matchLabels": dict(settings.dns_pod_labels)}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        },
    ]
    if uses_s3(job, settings):
        rules.append({"ports": [{"protocol": "TCP", "port": 443}]})
    return rules + _allowed_egress(job)


def _allowed_egress(job: TrainingJob) -> list[dict]:
    """The job's own `spec.network.egress`: a destination CIDR, and its TCP ports (none listed: all)."""
    extra = job.spec.network.egress if job.spec.network else []
    rules = []
    for allowed in extra:
        rule: dict = {"to": [{"ipBlock": {"cidr": allowed.cidr}}]}
        if allowed.ports:
            rule["ports"] = [{"protocol": "TCP", "port": port} for port in allowed.ports]
        rules.append(rule)
    return rules


def build_network_policy(job: TrainingJob, settings: OperatorSettings) -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(job, network_policy_name(job), "network"),
        "spec": {
            "podSelector": {"matchLabels": job_selector(job)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": _ingress(job, settings),
            "egress": _egress(job, settings),
        },
    }
