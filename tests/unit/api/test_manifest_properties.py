"""Property: every manifest `kiln validate` accepts renders objects a cluster would take, and
every manifest it refuses gets messages naming fields, never an exception.

Manifests are generated from the CRD's own openAPIV3Schema (hypothesis-jsonschema), one spec
part at a time (a strategy for the whole schema is slow to build and draws mostly huge
objects), in three ways:

- whole specs: every part drawn from its schema, with drawn "repairs" of the cross-field
  rules random values rarely meet (split fractions summing to 1, model xor entrypoint, ...)
  and, in one case of four, a hostile value (wrong type, null, odd or huge string, huge
  number) at a random field;
- one part at a time, unrepaired, on a valid base manifest: each part's own cross-field
  rules (tolerations, early stopping thresholds, ...) decide;
- twisted strings: a schema-valid value of one string field (or map key) with a twist a
  schema drawn from the models would never produce (a `/..` segment, a newline, a space,
  upper case, 300 repetitions...), so that a pattern that is too lax is caught even though
  generation follows the schema.

Accepted jobs are rendered with the operator's own builders and checked by
`kubernetes_validate` (Kubernetes 1.30 OpenAPI, strict) plus the Go-coded rules it lacks
(tests/unit/api/cluster_oracle.py).
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from kiln_api.validate_cli import check_manifest
from kiln_api.validation import crd_schema

from tests.unit.api.cluster_oracle import render_problems

# 450 generated examples (plus the 340 deterministic twists below): about 20 s on two cores.
WHOLE_EXAMPLES = 150
PART_EXAMPLES = 150
TWIST_EXAMPLES = 150
INT_BOUNDS = {"int32": 31, "int64": 63}


def to_draft7(node: dict[str, Any]) -> dict[str, Any]:
    """A structural OpenAPI 3.0 schema as the JSON Schema hypothesis-jsonschema reads.

    Boolean exclusive bounds become numeric ones, integer formats become bounds, `$` in
    patterns becomes `\\Z` (Python's `$` would also allow a final newline, which Go's RE2,
    and so the API server, refuses), objects with properties allow no others, and
    Kubernetes' extensions (CEL included) are dropped: those are what the property tests.
    """
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes") or key in ("description", "default", "format", "exclusiveMinimum", "exclusiveMaximum"):
            continue
        if key == "properties":
            out[key] = {name: to_draft7(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_draft7(value)
        elif key == "pattern" and value.endswith("$"):
            out[key] = value[:-1] + r"\Z"
        else:
            out[key] = value
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if node.get(exclusive) is True:
            out[exclusive] = out.pop(bound)
    if node.get("type") == "integer":
        bits = INT_BOUNDS[node.get("format", "int64")]
        out.setdefault("minimum", -(2**bits))
        out.setdefault("maximum", 2**bits - 1)
    if node.get("type") == "object" and "properties" in node:
        out["additionalProperties"] = False
    return out


SPEC_SCHEMA = crd_schema()["properties"]["spec"]
SPEC_PARTS = {name: from_schema(to_draft7(sub)) for name, sub in SPEC_SCHEMA["properties"].items()}

DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
LABEL_KEY = rf"({DNS_LABEL}(\.{DNS_LABEL}){{0,2}}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?"
LABEL_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?"

node_selectors = st.dictionaries(st.from_regex(LABEL_KEY, fullmatch=True), st.from_regex(LABEL_VALUE, fullmatch=True), max_size=4)
_SEGMENT = r"[^/\x00-\x1f\x7f]{1,12}"
shared_sources = st.one_of(
    st.from_regex(rf"pvc://{DNS_LABEL}(\.{DNS_LABEL})?(/{_SEGMENT}){{1,4}}", fullmatch=True),
    st.from_regex(rf"s3://[a-z0-9][-a-z0-9.]{{1,20}}[a-z0-9](/{_SEGMENT}){{1,4}}", fullmatch=True),
)
metadata_strategy = st.fixed_dictionaries(
    {"name": st.from_regex(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?", fullmatch=True)},
    optional={
        "namespace": st.from_regex(DNS_LABEL, fullmatch=True),
        "labels": st.dictionaries(st.from_regex(LABEL_KEY, fullmatch=True), st.from_regex(LABEL_VALUE, fullmatch=True), max_size=4),
        "annotations": st.dictionaries(st.from_regex(LABEL_KEY, fullmatch=True), st.text(max_size=200), max_size=4),
    },
)
spec_strategy = st.fixed_dictionaries({}, optional=SPEC_PARTS)

odd_text = st.one_of(
    st.text(max_size=30),
    st.text(min_size=60, max_size=400),
    st.text(alphabet=st.sampled_from(" \t\n\r\x00/.:-_@%$\\'\"`;|&*?[]{}ÿ€😀"), max_size=40),
    st.sampled_from(["..", "pvc://c/..", "pvc://c/a/../../b", "s3://b/..", "-", ".", "a" * 64, "A", "ünïcödé", "😀" * 70]),
)
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    odd_text,
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(odd_text, st.one_of(odd_text, st.integers()), max_size=3),
)


def _leaf_paths(node: dict[str, Any], path: tuple[str, ...]) -> list[tuple[str, ...]]:
    paths = [path]
    for name, sub in node.get("properties", {}).items():
        paths.extend(_leaf_paths(sub, (*path, name)))
    return paths


MUTABLE_PATHS = _leaf_paths(SPEC_SCHEMA, ("spec",)) + [
    ("metadata", "name"),
    ("metadata", "namespace"),
    ("metadata", "labels"),
    ("metadata", "annotations"),
    ("spec", "workers", "nodeSelector", "key"),
    ("spec", "workers", "tolerations"),
]


@st.composite
def manifests(draw: st.DrawFn) -> dict[str, Any]:
    spec = draw(spec_strategy)
    manifest = {"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "metadata": draw(metadata_strategy), "spec": spec}
    if draw(st.booleans()):
        _repair(spec, draw)
    if draw(st.integers(0, 3)) == 0:
        path = draw(st.sampled_from(MUTABLE_PATHS))
        node = manifest
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = draw(junk)
    return manifest


def _repair(spec: dict[str, Any], draw: st.DrawFn) -> None:
    """Satisfy the cross-field rules that random values rarely do."""
    data = spec.get("data")
    if isinstance(data, dict) and "split" in data:
        validation, test = draw(st.sampled_from([(0.15, 0.15), (0.0, 0.2), (0.25, 0.0), (0.5, 0.25)]))
        data["split"].update(train=1.0 - validation - test, validation=validation, test=test)
    if "model" in spec and "entrypoint" in spec:
        del spec[draw(st.sampled_from(["model", "entrypoint"]))]
    workers = spec.get("workers")
    if isinstance(workers, dict) and "nodeSelector" in workers:  # the schema cannot say what a key is
        workers["nodeSelector"] = draw(node_selectors)
    if isinstance(data, dict) and draw(st.booleans()):
        data["source"] = draw(shared_sources)
    hyper = spec.setdefault("hyperparameters", {})
    if isinstance(hyper, dict):
        hyper["batchSize"] = max(hyper.get("batchSize", 64), 1024)
        schedule = hyper.get("lrSchedule")
        if isinstance(schedule, dict) and schedule.get("warmupEpochs", 0) >= hyper.get("epochs", 10):
            schedule["warmupEpochs"] = 0
    stopping = spec.get("earlyStopping")
    if isinstance(stopping, dict):
        stopping.pop("divergenceThreshold", None)
        stopping["metric"] = "train_loss"
    for toleration in (spec.get("workers") or {}).get("tolerations", []):
        toleration.update(operator="Exists")
        toleration.pop("value", None)
        if "tolerationSeconds" in toleration:
            toleration["effect"] = "NoExecute"
    metrics = spec.get("metrics")
    if isinstance(metrics, dict):
        metrics["port"] = 20000 + metrics.get("port", 0) % 30000


BASE: dict[str, Any] = {
    "apiVersion": "kiln.dev/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "prop"},
    "spec": {"checkpoint": {"storage": "pvc://checkpoints/prop"}},
}
SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


def check_property(manifest: dict[str, Any], outcomes: Counter[str]) -> None:
    errors, job = check_manifest(copy.deepcopy(manifest))
    if job is not None:
        outcomes["accepted"] += 1
        problems = render_problems(job)
        assert problems == [], problems
        return
    outcomes["refused"] += 1
    assert errors, "refused without a message"
    assert any(error.path for error in errors), [str(e) for e in errors]
    for error in errors:
        assert error.reason, str(error)
        assert len(str(error)) < 2000, str(error)[:300]


def test_whole_specs():
    outcomes: Counter[str] = Counter()

    @settings(SETTINGS, max_examples=WHOLE_EXAMPLES)
    @given(manifests())
    def run(manifest: dict[str, Any]) -> None:
        check_property(manifest, outcomes)

    run()
    # Both outcomes must be common, or the property says little.
    assert outcomes["accepted"] >= WHOLE_EXAMPLES // 4 and outcomes["refused"] >= WHOLE_EXAMPLES // 8, outcomes


@st.composite
def one_part(draw: st.DrawFn) -> dict[str, Any]:
    manifest = copy.deepcopy(BASE)
    name = draw(st.sampled_from(sorted(SPEC_PARTS)))
    manifest["spec"][name] = draw(SPEC_PARTS[name])
    if name == "workers":  # keep the default batch size (64) big enough; the schema's replicas go to 1024
        manifest["spec"]["hyperparameters"] = {"batchSize": 1024}
    return manifest


def test_one_part_at_a_time():
    outcomes: Counter[str] = Counter()

    @settings(SETTINGS, max_examples=PART_EXAMPLES)
    @given(one_part())
    def run(manifest: dict[str, Any]) -> None:
        check_property(manifest, outcomes)

    run()
    assert outcomes["accepted"] >= PART_EXAMPLES // 4 and outcomes["refused"] >= PART_EXAMPLES // 10, outcomes


def _string_leaves(node: dict[str, Any], path: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    if node.get("type") == "string" and "enum" not in node:
        return [(path, node)]
    found = []
    for name, sub in node.get("properties", {}).items():
        found.extend(_string_leaves(sub, (*path, name)))
    if isinstance(node.get("items"), dict):
        found.extend(_string_leaves(node["items"], (*path, 0)))
    if isinstance(node.get("additionalProperties"), dict):
        found.extend(_string_leaves(node["additionalProperties"], (*path, "zone")))
    return found


STRING_LEAVES = _string_leaves(SPEC_SCHEMA, ("spec",))
VALUE_STRATEGIES = {path: from_schema(to_draft7(leaf)) for path, leaf in STRING_LEAVES}
KEY_FIELDS = {  # where a string is a map key (the schema cannot generate those) or metadata
    ("spec", "workers", "nodeSelector", "<key>"): st.from_regex(LABEL_KEY, fullmatch=True),
    ("metadata", "labels", "<key>"): st.from_regex(LABEL_KEY, fullmatch=True),
    ("metadata", "labels", "team"): st.from_regex(LABEL_VALUE, fullmatch=True),
    ("metadata", "annotations", "<key>"): st.from_regex(LABEL_KEY, fullmatch=True),
    ("metadata", "namespace"): st.from_regex(DNS_LABEL, fullmatch=True),
    ("metadata", "name"): st.from_regex(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?", fullmatch=True),
}
# A valid value of every string field (and map key), for the twists to start from even where a
# (too lax) schema would rarely draw a value of the dangerous kind.
SEEDS: dict[tuple[Any, ...], str] = {
    ("spec", "image"): "ghcr.io/kiln-dev/kiln-trainer:0.1.0",
    ("spec", "workers", "memoryPerWorker"): "4Gi",
    ("spec", "workers", "nodeSelector", "zone"): "NVIDIA-H100_80GB",
    ("spec", "workers", "nodeSelector", "<key>"): "nvidia.com/gpu.product",
    ("spec", "workers", "tolerations", 0, "key"): "nvidia.com/gpu",
    ("spec", "workers", "tolerations", 0, "value"): "present",
    ("spec", "workers", "priorityClassName"): "high-priority",
    ("spec", "head", "memory"): "4Gi",
    ("spec", "model", "pretrained", "path"): "pvc://models/resnet18/weights.pt",
    ("spec", "entrypoint"): "my_project.training:train",
    ("spec", "data", "source"): "pvc://datasets/tables/train.csv",
    ("spec", "data", "target"): "label",
    ("spec", "data", "sequence", "features", 0): "temperature",
    ("spec", "data", "sequence", "groupBy"): "station",
    ("spec", "data", "text", "column"): "review",
    ("spec", "evaluation", "sliceBy", 0): "region",
    ("spec", "evaluation", "excludeFromFeatures", 0): "region",
    ("spec", "checkpoint", "storage"): "pvc://checkpoints/runs/prop",
    ("spec", "checkpoint", "metric"): "val_loss",
    ("spec", "earlyStopping", "metric"): "val_loss",
    ("spec", "search", "metric"): "val_loss",
    ("spec", "network", "egress", 0, "cidr"): "10.20.0.0/16",
    ("metadata", "labels", "<key>"): "example.com/team",
    ("metadata", "labels", "team"): "vision",
    ("metadata", "annotations", "<key>"): "example.com/note",
    ("metadata", "namespace"): "ml-team",
    ("metadata", "name"): "prop",
}
TWISTS = {
    "newline": lambda v: v + "\n",
    "leading-space": lambda v: " " + v,
    "inner-space": lambda v: v[: len(v) // 2] + " " + v[len(v) // 2 :],
    "dotdot-segment": lambda v: v.rstrip("/") + "/../escape",
    "dotdot-inside": lambda v: v.replace("/", "/../", 1) if "/" in v else "../" + v,
    "dotdot-only": lambda v: v.rstrip("/") + "/..",
    "nul": lambda v: v + "\x00",
    "tab": lambda v: "\t" + v,
    "upper": lambda v: v.upper(),
    "emoji": lambda v: v + "😀",
    "slash": lambda v: v + "/x/y",
    "colon": lambda v: v + ":",
    "dash-edges": lambda v: "-" + v + "-",
    "repeated": lambda v: (v or "x") * 300,
    "empty": lambda v: "",
    "dot-edges": lambda v: "." + v + ".",
    "at": lambda v: v + "@latest",
}
TWIST_TARGETS = [*[path for path, _ in STRING_LEAVES], *KEY_FIELDS]


@st.composite
def twisted(draw: st.DrawFn) -> dict[str, Any]:
    path = draw(st.sampled_from(TWIST_TARGETS))
    value = draw(st.one_of(st.just(SEEDS[path]), KEY_FIELDS[path] if path in KEY_FIELDS else VALUE_STRATEGIES[path]))
    return with_string(path, TWISTS[draw(st.sampled_from(sorted(TWISTS)))](value))


def with_string(path: tuple[Any, ...], value: str) -> dict[str, Any]:
    """BASE with `value` at `path` (`<key>`: as a map key), plus what the field's object needs."""
    manifest = copy.deepcopy(BASE)
    node: Any = manifest
    for part, following in zip(path[:-1], path[1:], strict=True):
        if isinstance(part, int):
            continue
        default: Any = [{}] if isinstance(following, int) else {}
        node = node.setdefault(part, default)
        if isinstance(node, list):
            node = node[0]
    if path[-1] == "<key>":
        node[value] = "v"
    else:
        node[path[-1]] = value
    if path[:2] == ("spec", "search") and "parameters" not in node:
        node["parameters"] = {"model.dropout": {"uniform": [0.0, 0.5]}}
    if path[:3] == ("spec", "model", "pretrained") and "path" not in node:
        node["path"] = "pvc://models/w.pt"
    if path[:3] in (("spec", "data", "sequence"), ("spec", "data", "text")):  # only read with that format
        manifest["spec"]["data"]["format"] = path[2]
        manifest["spec"]["model"] = {"architecture": "lstm"}
    if isinstance(path[-1], int):  # a list of strings: the value is its only item
        parent = manifest
        for part in path[:-2]:
            parent = parent[part]
        parent[path[-2]] = [value]
    if path[:2] == ("spec", "evaluation"):  # slices need a table; an excluded column must be sliced too
        manifest["spec"].setdefault("data", {})["source"] = "pvc://datasets/tables/train.csv"
        if path[2] == "excludeFromFeatures":
            manifest["spec"]["evaluation"]["sliceBy"] = [value]
    if path[:3] == ("spec", "workers", "tolerations"):
        node.setdefault("operator", "Exists") if path[-1] != "value" else node.setdefault("key", "gpu")
    if path == ("spec", "model") or path[:2] == ("spec", "entrypoint"):
        manifest["spec"].pop("model" if path[1] == "entrypoint" else "entrypoint", None)
    return manifest


def test_twisted_strings():
    outcomes: Counter[str] = Counter()

    @settings(SETTINGS, max_examples=TWIST_EXAMPLES)
    @given(twisted())
    def run(manifest: dict[str, Any]) -> None:
        check_property(manifest, outcomes)

    run()
    # Both outcomes must be exercised; about one twist in ten leaves a value valid.
    assert outcomes["accepted"] >= 5 and outcomes["refused"] >= TWIST_EXAMPLES // 2, outcomes


def test_every_string_field_has_a_seed():
    assert len(STRING_LEAVES) >= 14, [p for p, _ in STRING_LEAVES]
    assert set(TWIST_TARGETS) == set(SEEDS), set(TWIST_TARGETS) ^ set(SEEDS)
    for path, seed in SEEDS.items():
        errors, job = check_manifest(with_string(path, seed))
        assert job is not None, (path, [str(e) for e in errors])


@pytest.mark.parametrize("twist", sorted(TWISTS))
@pytest.mark.parametrize("path", sorted(SEEDS, key=str), ids=lambda p: ".".join(map(str, p)))
def test_twisted_seed(path: tuple[Any, ...], twist: str):
    """Every twist of every field's valid seed, deterministically: refused at a field, or harmless."""
    check_property(with_string(path, TWISTS[twist](SEEDS[path])), Counter())
