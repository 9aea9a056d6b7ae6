"""The builders: valid Kubernetes objects, restricted pods, owned and labelled, deterministic."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import kubernetes_validate
import pytest
from kiln_api import TrainingJob
from kiln_operator.objects import (
    PLACEHOLDER_UID,
    build_all,
    build_head_pod,
    build_job_config,
    build_network_policy,
    build_worker_pod,
    cluster_problem,
    owner_reference,
    spec_hash,
)
from kiln_operator.objects.pod_common import cpu_quantity
from kiln_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(default_checkpoint_storage="pvc://shared-ckpt/runs")
NEWEST = ".".join(kubernetes_validate.latest_version().split(".")[:2])
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"


def make_job(labels: dict | None = None, **spec: object) -> TrainingJob:
    return TrainingJob.model_validate(
        {
            "apiVersion": "kiln.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "demo", "namespace": "team-a", "uid": "1b2c", "labels": labels or {}},
            "spec": spec,
        }
    )


VARIANTS = {
    "defaults": make_job(),
    "gpu": make_job(
        workers={
            "replicas": 3,
            "gpusPerWorker": 2,
            "cpusPerWorker": 8,
            "memoryPerWorker": "32Gi",
            "nodeSelector": {"nvidia.com/gpu.product": "H100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "training",
        }
    ),
    "pvc": make_job(
        checkpoint={"storage": "pvc://ckpt/exp1"},
        data={"source": "pvc://datasets/tables/train.csv"},
        model={"pretrained": {"path": "pvc://weights/mlp.pt"}},
    ),
    "s3": make_job(checkpoint={"storage": "s3://bucket/ckpt"}, data={"source": "s3://bucket/data.parquet"}),
    "kueue": make_job(labels={KUEUE_QUEUE: "team-a-queue"}, workers={"replicas": 4}),
    "fractional-entrypoint": make_job(
        workers={"replicas": 1, "cpusPerWorker": "500m"}, head={"cpus": "0.25", "memory": "512Mi"}, entrypoint="my_pkg.train:main"
    ),
}


def pods_of(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] == "Pod"]


@pytest.mark.parametrize("version", ["1.30", NEWEST])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_object_validates_strictly(variant: str, version: str):
    for obj in build_all(VARIANTS[variant], SETTINGS, "token"):
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_pods_meet_the_restricted_pod_security_standard(variant: str):
    for pod in pods_of(build_all(VARIANTS[variant], SETTINGS, "token")):
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        assert spec["restartPolicy"] == "Never"
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
        for volume in spec["volumes"]:
            assert set(volume) - {"name"} <= {"emptyDir", "persistentVolumeClaim", "secret", "configMap"}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["runAsNonRoot"] is True and context["runAsUser"] != 0
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            assert "privileged" not in context
            assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
            assert all("hostPort" not in port for port in container.get("ports", []))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_object_is_owned_by_the_job_and_labelled(variant: str):
    job = VARIANTS[variant]
    for obj in build_all(job, SETTINGS, "token"):
        meta = obj["metadata"]
        assert meta["namespace"] == "team-a"
        assert meta["ownerReferences"] == [
            {"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "name": "demo", "uid": "1b2c", "controller": True, "blockOwnerDeletion": True}
        ]
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "kiln"
        assert labels["app.kubernetes.io/instance"] == "demo"
        assert labels["app.kubernetes.io/managed-by"] == "kiln-operator"
        assert labels["app.kubernetes.io/part-of"] == "kiln"
        assert labels["kiln.dev/job-name"] == "demo"
        if obj["kind"] == "Pod":
            assert labels["kiln.dev/role"] == labels["app.kubernetes.io/component"]


def test_names_are_deterministic_and_follow_the_contract():
    job = VARIANTS["gpu"]
    first, second = build_all(job, SETTINGS, "t"), build_all(job, SETTINGS, "t")
    assert first == second
    assert [f"{o['kind']}/{o['metadata']['name']}" for o in first] == [
        "Secret/demo-ray-auth", "ConfigMap/demo-job", "Service/demo-head", "NetworkPolicy/demo", "Pod/demo-head",
        "Pod/demo-worker-0", "Pod/demo-worker-1", "Pod/demo-worker-2",
    ]  # fmt: skip


def test_owner_reference_needs_a_uid():
    job = make_job()
    job.metadata.uid = None
    with pytest.raises(ValueError, match="metadata.uid"):
        owner_reference(job)
    job.metadata.uid = PLACEHOLDER_UID
    assert owner_reference(job)["uid"] == PLACEHOLDER_UID


def _env(container: dict) -> dict:
    return {var["name"]: var.get("value", var.get("valueFrom")) for var in container["env"]}


@pytest.mark.parametrize(
    ("variant", "gpus", "cpu", "ray_cpus"),
    [("defaults", None, "1", 1), ("gpu", "2", "8", 8), ("fractional-entrypoint", None, "500m", 1)],
)
def test_worker_resources_and_ray_flags(variant: str, gpus: str | None, cpu: str, ray_cpus: int):
    worker = build_worker_pod(VARIANTS[variant], SETTINGS, 0)["spec"]["containers"][0]
    assert worker["resources"]["requests"]["cpu"] == cpu
    assert worker["resources"]["limits"]["memory"] == worker["resources"]["requests"]["memory"]
    assert worker["resources"]["limits"].get("nvidia.com/gpu") == gpus
    script = worker["command"][2]
    assert f"--num-cpus={ray_cpus}" in script and f"--num-gpus={gpus or 0}" in script


def test_scheduling_constraints_reach_every_pod():
    for pod in pods_of(build_all(VARIANTS["gpu"], SETTINGS, "t")):
        assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
        assert pod["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert pod["spec"]["priorityClassName"] == "training"


def test_head_environment_follows_the_contract():
    job = VARIANTS["pvc"]
    env = _env(build_head_pod(job, SETTINGS)["spec"]["containers"][0])
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN"] == {"secretKeyRef": {"name": "demo-ray-auth", "key": "token"}}
    assert env["KILN_RAY_ADDRESS"] == "auto"
    assert env["KILN_CHECKPOINT_DIR"] == "/mnt/kiln/pvc/ckpt/exp1"
    assert env["KILN_PVC_ROOT"] == "/mnt/kiln/pvc"
    assert env["KILN_TERMINATION_MESSAGE_PATH"] == "/dev/termination-log"
    assert "KILN_JOB" not in env  # a long job would exceed exec's 128 KiB per string: it comes as a file
    pod = build_head_pod(job, SETTINGS)
    config = build_job_config(job, SETTINGS)
    mount = next(m for m in pod["spec"]["containers"][0]["volumeMounts"] if env["KILN_JOB_FILE"].startswith(m["mountPath"] + "/"))
    assert mount["readOnly"] is True
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == config["metadata"]["name"] == "demo-job"
    key = env["KILN_JOB_FILE"][len(mount["mountPath"]) + 1:]
    assert [item["key"] for item in volume["configMap"]["items"]] == [key]
    recorded = TrainingJob.model_validate(json.loads(config["data"][key]))
    assert recorded.spec == job.spec and recorded.name == "demo" and recorded.namespace == "team-a"
    assert config["immutable"] is True
    assert config["metadata"]["annotations"]["kiln.dev/spec-hash"] == spec_hash(job)


@pytest.mark.parametrize(
    ("storage", "expected"),
    [("s3://bucket/ckpt", "s3://bucket/ckpt"), (None, "/mnt/kiln/pvc/shared-ckpt/runs/team-a/demo")],
)
def test_checkpoint_dir_resolution(storage: str | None, expected: str):
    job = make_job(checkpoint={"storage": storage} if storage else {})
    assert _env(build_head_pod(job, SETTINGS)["spec"]["containers"][0])["KILN_CHECKPOINT_DIR"] == expected


def test_pvc_claims_are_mounted_once_each_inputs_read_only():
    pod = build_head_pod(VARIANTS["pvc"], SETTINGS)
    claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"ckpt": False, "datasets": True, "weights": True}
    mounts = {m["mountPath"]: m.get("readOnly") for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["/mnt/kiln/pvc/ckpt"] is False and mounts["/mnt/kiln/pvc/weights"] is True
    assert "/dev/shm" in mounts


def test_kueue_pod_group_metadata_on_every_pod_only_when_queued():
    for pod in pods_of(build_all(VARIANTS["kueue"], SETTINGS, "t")):
        assert pod["metadata"]["labels"][KUEUE_QUEUE] == "team-a-queue"
        assert pod["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] == "demo"
        assert pod["metadata"]["annotations"]["kueue.x-k8s.io/pod-group-total-count"] == "5"
    for pod in pods_of(build_all(VARIANTS["defaults"], SETTINGS, "t")):
        assert not any(k.startswith("kueue.x-k8s.io") for k in {**pod["metadata"]["labels"], **pod["metadata"]["annotations"]})


@pytest.mark.parametrize(("variant", "https"), [("s3", True), ("pvc", False), ("defaults", False)])
def test_network_policy_limits_ray_to_the_jobs_pods(variant: str, https: bool):
    policy = build_network_policy(VARIANTS[variant], SETTINGS)["spec"]
    own = {"podSelector": {"matchLabels": {"kiln.dev/job-name": "demo"}}}
    assert policy["podSelector"] == own["podSelector"]
    assert policy["ingress"][0] == {"from": [own]}
    scrape = policy["ingress"][1]
    assert scrape["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in scrape["from"]} == {"kiln-system", "monitoring"}
    ports = [p for rule in policy["egress"] for p in rule.get("ports", [])]
    assert {"protocol": "UDP", "port": 53} in ports
    assert ({"protocol": "TCP", "port": 443} in ports) is https
    # Port 53 only towards the cluster DNS pods, not to any address (a DNS tunnel out of the cluster).
    dns = [rule for rule in policy["egress"] if {"protocol": "UDP", "port": 53} in rule.get("ports", [])]
    assert dns == [{
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }]  # fmt: skip
    assert all(rule.get("to") for rule in policy["egress"] if rule.get("ports") != [{"protocol": "TCP", "port": 443}])


def test_dns_egress_follows_the_operator_settings():
    settings = OperatorSettings.from_env({"KILN_DNS_NAMESPACE": "dns", "KILN_DNS_POD_LABELS": "app=coredns,tier=dns",
                                          "KILN_DEFAULT_CHECKPOINT_STORAGE": "pvc://c"})
    policy = build_network_policy(make_job(), settings)
    kubernetes_validate.validate(policy, "1.30", strict=True)
    peers = [peer for rule in policy["spec"]["egress"] for peer in rule.get("to", []) if "namespaceSelector" in peer]
    assert peers == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dns"}},
                      "podSelector": {"matchLabels": {"app": "coredns", "tier": "dns"}}}]


def test_the_head_service_publishes_only_what_workers_need_gcs():
    # Workers join through the link variables of the `gcs` port; Ray then talks pod to pod, the
    # operator and Prometheus reach the pod's IP. The dashboard and metrics ports stay unpublished.
    from kiln_operator.objects import build_head_service

    service = build_head_service(make_job(), SETTINGS)
    assert service["spec"]["ports"] == [{"name": "gcs", "port": 6379, "targetPort": 6379, "protocol": "TCP"}]
    head = build_head_pod(make_job(), SETTINGS)["spec"]["containers"][0]
    assert "metrics" in {port["name"] for port in head["ports"]}  # what the chart's PodMonitor scrapes


@pytest.mark.parametrize("role", ["head", "worker"])
def test_pod_scripts_are_valid_shell(role: str):
    job = VARIANTS["gpu"]
    pod = build_head_pod(job, SETTINGS) if role == "head" else build_worker_pod(job, SETTINGS, 0)
    command = pod["spec"]["containers"][0]["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    subprocess.run(["/bin/sh", "-n", "-c", command[2]], check=True)


def test_workers_reach_the_head_through_the_service_link_variables():
    script = build_worker_pod(make_job(), SETTINGS, 0)["spec"]["containers"][0]["command"][2]
    assert "${DEMO_HEAD_SERVICE_HOST}:${DEMO_HEAD_SERVICE_PORT_GCS}" in script


def test_spec_hash_ignores_only_the_mutable_fields():
    base = spec_hash(make_job())
    assert spec_hash(make_job(suspend=True, ttlSecondsAfterFinished=5)) == base
    assert spec_hash(make_job(hyperparameters={"epochs": 11})) != base


def test_spec_hash_of_every_new_model_is_its_own():
    # Each model is dropped after its hash: their ids are reused once the kept answers move on.
    hashes = [spec_hash(make_job(hyperparameters={"epochs": epochs})) for epochs in range(1, 301)]
    assert len(set(hashes)) == 300
    assert hashes[0] == spec_hash(make_job(hyperparameters={"epochs": 1}))


@pytest.mark.parametrize(
    ("spec", "settings", "reason"),
    [
        ({}, OperatorSettings(), "NoCheckpointStorage"),
        ({"checkpoint": {"storage": "/tmp/ckpt"}}, SETTINGS, "CheckpointStorageNotShared"),
        ({"checkpoint": {"storage": "s3://b/p"}}, OperatorSettings(), None),
        ({}, SETTINGS, None),
    ],
)
def test_cluster_problems(spec: dict, settings: OperatorSettings, reason: str | None):
    problem = cluster_problem(make_job(**spec), settings)
    assert (problem[0] if problem else None) == reason
    if problem:
        assert problem[1].startswith("spec.")


@pytest.mark.parametrize(
    ("cores", "quantity"),
    [(1.0, "1"), (0.5, "500m"), (2.25, "2250m"), (16, "16"), ("6", "6"), ("1.5", "1500m"), ("500m", "500m"), ("2000m", "2")],
)
def test_cpu_quantity(cores: float | str, quantity: str):
    assert cpu_quantity(cores) == quantity


# cpusPerWorker / head.cpus as written -> the pod's cpu request (canonical quantity) and `ray start --num-cpus`.
CPU_FORMS = [
    (6, "6", 6),
    ("6", "6", 6),
    ("500m", "500m", 1),
    ("1.5", "1500m", 2),
    ("1500m", "1500m", 2),
    ("0.25", "250m", 1),
    ("2000m", "2", 2),
    ("512", "512", 512),
    (2.0, "2", 2),  # what YAML 2.0 is after kubectl: the integer 2
]


@pytest.mark.parametrize(("given", "request_cpu", "num_cpus"), CPU_FORMS, ids=[repr(f[0]) for f in CPU_FORMS])
def test_worker_pod_cpu_request_and_ray_cpus_follow_the_quantity_as_written(given, request_cpu: str, num_cpus: int):
    job = make_job(workers={"replicas": 1, "cpusPerWorker": given})
    container = build_worker_pod(job, SETTINGS, 0)["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"] == request_cpu
    assert f"--num-cpus={num_cpus} " in container["command"][2]
    # The stored spec keeps the value as given (an integral float is the integer, as in JSON).
    assert job.to_api()["spec"]["workers"]["cpusPerWorker"] == (int(given) if isinstance(given, float) else given)


@pytest.mark.parametrize(("given", "request_cpu", "_num_cpus"), CPU_FORMS, ids=[repr(f[0]) for f in CPU_FORMS])
def test_head_pod_cpu_request_follows_the_quantity_as_written(given, request_cpu: str, _num_cpus: int):
    job = make_job(head={"cpus": given})
    container = build_head_pod(job, SETTINGS)["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"] == request_cpu
    assert "--num-cpus=0 " in container["command"][2]  # the head never hosts training workers


@pytest.mark.parametrize("version", ["1.30", NEWEST])
def test_pods_with_quantity_strings_are_valid_kubernetes_objects(version: str):
    job = make_job(workers={"replicas": 1, "cpusPerWorker": "1.5"}, head={"cpus": "500m"})
    for pod in pods_of(build_all(job, SETTINGS, "t")):
        kubernetes_validate.validate(pod, version, strict=True)


def test_worker_probe_reports_whether_the_head_accepts_connections():
    probe = build_worker_pod(make_job(), SETTINGS, 0)["spec"]["containers"][0]["readinessProbe"]["exec"]["command"]
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        env = {**os.environ, "DEMO_HEAD_SERVICE_HOST": "127.0.0.1", "DEMO_HEAD_SERVICE_PORT_GCS": str(server.getsockname()[1])}
        command = [sys.executable, *probe[1:]]  # the image's `python`, here this interpreter
        assert subprocess.run(command, env=env, capture_output=True, timeout=30).returncode == 0
    assert subprocess.run(command, env=env, capture_output=True, timeout=30).returncode != 0


def test_network_policy_adds_the_egress_the_job_allows_and_nothing_else():
    job = make_job(network={"egress": [{"cidr": "10.20.0.0/16", "ports": [443, 8443]}, {"cidr": "2001:db8::/32"}]})
    policy = build_network_policy(job, SETTINGS)
    kubernetes_validate.validate(policy, NEWEST, strict=True)
    extra = [rule for rule in policy["spec"]["egress"] if any("ipBlock" in peer for peer in rule.get("to", []))]
    assert extra == [
        {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 8443}]},
        {"to": [{"ipBlock": {"cidr": "2001:db8::/32"}}]},
    ]
    default = build_network_policy(make_job(), SETTINGS)["spec"]["egress"]
    assert policy["spec"]["egress"][: len(default)] == default
