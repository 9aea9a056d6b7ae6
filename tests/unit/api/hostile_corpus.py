"""Hostile and malformed TrainingJob manifests, and what must become of each.

Every case is a manifest (a Python value, so that it can hold what YAML files cannot
comfortably spell: NaN, 10 MB strings, lone surrogates, integer keys) and an expectation:
either the spec path `kiln validate` must name when it refuses it, or ACCEPT: it passes and
every object the operator renders for it is one a cluster would take.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

ACCEPT = "<accept>"
BASE: dict[str, Any] = {"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "hostile"}}


@dataclass(frozen=True)
class Case:
    name: str
    manifest: dict[str, Any]
    expect: str  # a field path, or ACCEPT


def _set(manifest: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node = manifest
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return manifest


def case(name: str, expect: str, **paths: Any) -> Case:
    """A case built from BASE; `paths` maps dotted paths (`__` for `.`) to values."""
    manifest = copy.deepcopy(BASE)
    for path, value in paths.items():
        _set(manifest, path.replace("__", "."), value)
    return Case(name, manifest, expect)


def _raw(name: str, expect: str, manifest: dict[str, Any]) -> Case:
    return Case(name, manifest, expect)


LONG_PREFIX = ".".join(["a" * 63] * 4) + "b"  # 256 characters: a DNS subdomain longer than 253
PREFIX_253 = ".".join(["a" * 63] * 3) + "." + "b" * 61
ANNOTATIONS_MAX = 256 * 1024

CASES: list[Case] = [
    # ----------------------------------------------------------------- metadata
    case("annotations-10mb", "metadata.annotations", metadata__annotations={"note": "x" * 10_000_000}),
    case("annotations-total-over-256k", "metadata.annotations", metadata__annotations={"a": "x" * 131_072, "b": "y" * 131_072}),
    case("annotations-exactly-256k", ACCEPT, metadata__annotations={"note": "x" * (ANNOTATIONS_MAX - 4)}),
    case("annotation-key-with-space", "metadata.annotations", metadata__annotations={"bad key": "x"}),
    case("annotation-key-uppercase-prefix", ACCEPT, metadata__annotations={"Example.COM/Note": "x"}),
    case("label-key-leading-dash", "metadata.labels", metadata__labels={"-team": "vision"}),
    case("label-value-64-chars", "metadata.labels", metadata__labels={"team": "v" * 64}),
    case("label-value-with-space", "metadata.labels", metadata__labels={"team": "computer vision"}),
    case("label-value-emoji", "metadata.labels", metadata__labels={"team": "🔥"}),
    case("label-value-not-a-string", "metadata.labels", metadata__labels={"team": 5}),
    case("kueue-queue-label-invalid", "metadata.labels", metadata__labels={"kueue.x-k8s.io/queue-name": "team queue"}),
    case("kueue-queue-label-valid", ACCEPT, metadata__labels={"kueue.x-k8s.io/queue-name": "team-queue"}),
    case("namespace-uppercase", "metadata.namespace", metadata__namespace="ML"),
    case("namespace-64-chars", "metadata.namespace", metadata__namespace="n" * 64),
    case("name-empty", "metadata.name", metadata__name=""),
    case("name-64-chars", "metadata.name", metadata__name="a" * 64),
    case("name-41-chars", "metadata.name", metadata__name="a" * 41),
    case("name-uppercase", "metadata.name", metadata__name="Digits"),
    case("name-unicode", "metadata.name", metadata__name="jöb"),
    case("name-null", "metadata.name", metadata__name=None),
    case("name-a-number", "metadata.name", metadata__name=123),
    _raw("metadata-a-list", "metadata", {**BASE, "metadata": []}),
    # ----------------------------------------------------------------- data, locations
    case("target-140kb", "spec.data.target", spec__data__target="t" * 140_000),
    case("target-257-chars", "spec.data.target", spec__data__target="t" * 257),
    case("target-newline", "spec.data.target", spec__data__target="price\n"),
    case("target-empty", "spec.data.target", spec__data__target=""),
    case("target-lone-surrogate", "spec.data.target", spec__data__target="\ud800"),
    case("target-unicode", ACCEPT, spec__data__target="étiquette_价格"),
    case("source-2000-chars", "spec.data.source", spec__data__source="data/" + "d" * 2000 + ".csv"),
    case("source-pvc-dotdot", "spec.data.source", spec__data__source="pvc://data/../secrets/x.csv"),
    case("source-pvc-only-dotdot", "spec.data.source", spec__data__source="pvc://data/.."),
    case("source-pvc-dotdot-hidden-name", ACCEPT, spec__data__source="pvc://data/..hidden/x.csv"),
    case("source-pvc-uppercase-claim", "spec.data.source", spec__data__source="pvc://Data/x.csv"),
    case("source-nul", "spec.data.source", spec__data__source="data/x\x00.csv"),
    case("checkpoint-pvc-dotdot", "spec.checkpoint.storage", spec__checkpoint__storage="pvc://ckpt/runs/../../etc"),
    case("checkpoint-pvc-only-dotdot", "spec.checkpoint.storage", spec__checkpoint__storage="pvc://ckpt/.."),
    case("checkpoint-pvc-trailing-dotdot", "spec.checkpoint.storage", spec__checkpoint__storage="pvc://ckpt/a/b/.."),
    case("checkpoint-s3-newline", "spec.checkpoint.storage", spec__checkpoint__storage="s3://bucket/a\nb"),
    case("checkpoint-pvc-nested", ACCEPT, spec__checkpoint__storage="pvc://ckpt/runs/./hostile/"),
    case("pretrained-pvc-dotdot", "spec.model.pretrained.path", spec__model__pretrained={"path": "pvc://models/../other/w.pt"}),
    # ----------------------------------------------------------------- image
    case("image-with-space", "spec.image", spec__image="kiln trainer:1.0"),
    case("image-with-newline", "spec.image", spec__image="kiln-trainer:1.0\n"),
    case("image-leading-space", "spec.image", spec__image=" kiln-trainer:1.0"),
    case("image-uppercase-path", "spec.image", spec__image="Team/Trainer:1.0"),
    case("image-600-chars", "spec.image", spec__image="r.io/" + "a" * 595),
    case("image-name-over-255", "spec.image", spec__image="r.io/" + "a" * 300 + ":1.0"),
    case("image-empty", "spec.image", spec__image=""),
    case("image-shell", "spec.image", spec__image="x;rm -rf /"),
    case("image-digest", ACCEPT, spec__image="ghcr.io/kiln-dev/kiln-trainer@sha256:" + "0123456789abcdef" * 4),
    case("image-registry-port", ACCEPT, spec__image="localhost:5000/team/kiln-trainer:1.0-cuda"),
    # ----------------------------------------------------------------- scheduling
    case("node-selector-key-space", "spec.workers.nodeSelector", spec__workers__nodeSelector={"bad key": "x"}),
    case("node-selector-key-prefix-256", "spec.workers.nodeSelector", spec__workers__nodeSelector={f"{LONG_PREFIX}/zone": "a"}),
    case("node-selector-key-prefix-253", ACCEPT, spec__workers__nodeSelector={f"{PREFIX_253}/zone": "a"}),
    case("node-selector-key-name-64", "spec.workers.nodeSelector", spec__workers__nodeSelector={"z" * 64: "a"}),
    case("node-selector-key-two-slashes", "spec.workers.nodeSelector", spec__workers__nodeSelector={"a/b/c": "a"}),
    case("node-selector-key-integer", "spec.workers.nodeSelector", spec__workers__nodeSelector={1: "a"}),
    case("node-selector-value-64", "spec.workers.nodeSelector", spec__workers__nodeSelector={"zone": "a" * 64}),
    case("node-selector-value-slash", "spec.workers.nodeSelector", spec__workers__nodeSelector={"zone": "a/b"}),
    case("node-selector-65-entries", "spec.workers.nodeSelector", spec__workers__nodeSelector={f"k{i}": "v" for i in range(65)}),
    case("node-selector-prefixed", ACCEPT, spec__workers__nodeSelector={"nvidia.com/gpu.product": "NVIDIA-H100_80GB", "empty": ""}),
    case("priority-class-uppercase", "spec.workers.priorityClassName", spec__workers__priorityClassName="High"),
    case("priority-class-254-chars", "spec.workers.priorityClassName", spec__workers__priorityClassName="p" * 254),
    case("toleration-key-318-chars", "spec.workers.tolerations[0].key", spec__workers__tolerations=[{"key": "k" * 318, "operator": "Exists"}]),
    case("toleration-key-prefix-256", "spec.workers.tolerations[0].key", spec__workers__tolerations=[{"key": f"{LONG_PREFIX}/t", "operator": "Exists"}]),
    case("toleration-empty-key-equal", "spec.workers.tolerations[0].operator", spec__workers__tolerations=[{}]),
    case("toleration-exists-with-value", "spec.workers.tolerations[0].value", spec__workers__tolerations=[{"key": "gpu", "operator": "Exists", "value": "x"}]),
    case("toleration-seconds-without-noexecute", "spec.workers.tolerations[0].tolerationSeconds",
         spec__workers__tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 5}]),
    case("toleration-value-with-space", "spec.workers.tolerations[0].value", spec__workers__tolerations=[{"key": "gpu", "value": "a b"}]),
    case("tolerations-33", "spec.workers.tolerations", spec__workers__tolerations=[{"key": f"t{i}", "operator": "Exists"} for i in range(33)]),
    case("toleration-match-all", ACCEPT, spec__workers__tolerations=[{"operator": "Exists"}]),
    # ----------------------------------------------------------------- ports
    *[case(f"metrics-port-{port}", "spec.metrics.port", spec__metrics={"port": port}) for port in (6379, 8080, 8265, 10001, 10002, 15000, 19999, 52365)],
    case("metrics-port-1023", "spec.metrics.port", spec__metrics={"port": 1023}),
    case("metrics-port-20000", ACCEPT, spec__metrics={"port": 20000}),
    # ----------------------------------------------------------------- numbers and types
    case("replicas-negative", "spec.workers.replicas", spec__workers__replicas=-1),
    case("replicas-a-string", "spec.workers.replicas", spec__workers__replicas="2"),
    case("replicas-fractional", "spec.workers.replicas", spec__workers__replicas=2.5),
    case("replicas-a-bool", "spec.workers.replicas", spec__workers__replicas=True),
    case("epochs-10e30", "spec.hyperparameters.epochs", spec__hyperparameters__epochs=10**30),
    case("seed-2-to-the-63", "spec.hyperparameters.seed", spec__hyperparameters__seed=2**63),
    case("seed-2-to-the-53", "spec.hyperparameters.seed", spec__hyperparameters__seed=2**53),
    case("seed-exact-max", ACCEPT, spec__hyperparameters__seed=2**53 - 1),
    case("learning-rate-nan", "spec.hyperparameters.learningRate", spec__hyperparameters__learningRate=float("nan")),
    case("learning-rate-infinite", "spec.hyperparameters.learningRate", spec__hyperparameters__learningRate=float("inf")),
    case("hidden-unit-negative", "spec.model.hiddenUnits[0]", spec__model__hiddenUnits=[-1]),
    case("memory-40-digits", "spec.workers.memoryPerWorker", spec__workers__memoryPerWorker="9" * 40 + "Gi"),
    case("memory-fullwidth-digits", "spec.head.memory", spec__head__memory="２Gi"),
    case("entrypoint-300-chars", "spec.entrypoint", spec__entrypoint="m" * 290 + ":train"),
    case("metric-unicode", "spec.checkpoint.metric", spec__checkpoint__metric="val_lößs"),
    case("unknown-field-300-chars", "spec", spec__data__split={"x" * 300: 1}),
    _raw("spec-null", ACCEPT, {**BASE, "spec": None}),
    _raw("spec-a-list", "spec", {**BASE, "spec": []}),
    case("workers-null", ACCEPT, spec__workers=None),
    case("workers-a-string", "spec.workers", spec__workers="2"),
]
