"""`workers.cpusPerWorker` and `head.cpus` are Kubernetes CPU quantities (int-or-string), kept as
written; pydantic and the CRD (as the API server checks it) accept and refuse the same values."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import yaml
from kiln_api import TrainingJob
from kiln_api.cpu import (
    CPU_QUANTITY_PATTERN,
    CPU_RANGE_CEL,
    CPU_RANGE_MESSAGE,
    cpu_cores,
    cpu_millicores,
    cpu_quantity_text,
    ray_cpus,
)
from kiln_api.errors import FieldError, pydantic_errors
from kiln_api.spec import HeadSpec, WorkersSpec
from kiln_api.topology import training_topology
from kiln_api.validate_cli import check_manifest
from kiln_api.validation import RULES_NOT_CHECKED, crd_schema, validate_object
from pydantic import ValidationError

FIELDS = {"spec.workers.cpusPerWorker": ("workers", "cpusPerWorker"), "spec.head.cpus": ("head", "cpus")}


def _manifest(section: str, key: str, value: Any) -> dict[str, Any]:
    return {"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "cpu"},
            "spec": {section: {key: value}}}


def _pydantic_errors(obj: dict[str, Any]) -> list[FieldError]:
    try:
        TrainingJob.model_validate(obj)
    except ValidationError as exc:
        return pydantic_errors(exc, crd_schema())
    return []


# value as written -> (cores, canonical pod quantity, ray --num-cpus)
ACCEPTED = [
    (6, 6.0, "6", 6),
    ("6", 6.0, "6", 6),
    ("500m", 0.5, "500m", 1),
    ("1.5", 1.5, "1500m", 2),
    ("1500m", 1.5, "1500m", 2),
    ("0.25", 0.25, "250m", 1),
    ("0.001", 0.001, "1m", 1),
    ("1m", 0.001, "1m", 1),
    ("2.50", 2.5, "2500m", 3),
    ("2000m", 2.0, "2", 2),
    (1, 1.0, "1", 1),
    (512, 512.0, "512", 512),
    ("512", 512.0, "512", 512),
    ("512.000", 512.0, "512", 512),
    ("512000m", 512.0, "512", 512),
    ("511.999", 511.999, "511999m", 512),
]


@pytest.mark.parametrize("field", sorted(FIELDS))
@pytest.mark.parametrize(("given", "cores", "text", "num_cpus"), ACCEPTED, ids=[repr(a[0]) for a in ACCEPTED])
def test_accepted_quantities_are_kept_as_written(field: str, given: Any, cores: float, text: str, num_cpus: int):
    section, key = FIELDS[field]
    obj = _manifest(section, key, given)
    result = validate_object(obj)
    assert result.ok, [str(e) for e in result.errors]
    assert result.obj["spec"][section][key] == given  # stored as given: 6 stays 6, "500m" stays "500m"
    job = TrainingJob.model_validate(result.obj)
    value = getattr(job.spec.workers if section == "workers" else job.spec.head, "cpus_per_worker" if section == "workers" else "cpus")
    assert value == given and type(value) is type(given)
    assert job.to_api()["spec"][section][key] == given  # model_dump by alias round-trips it
    assert TrainingJob.model_validate(job.to_api()).spec == job.spec
    assert math.isclose(cpu_cores(value), cores) and cpu_quantity_text(value) == text and ray_cpus(value) == num_cpus


def test_an_integral_yaml_float_is_the_integer_as_kubectl_sends_it():
    # kubectl turns YAML into JSON: 2.0 is sent as 2, an integer, which an int-or-string takes.
    obj = yaml.safe_load("apiVersion: kiln.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: a}\n"
                         "spec: {workers: {cpusPerWorker: 2.0}, head: {cpus: 4.0}}\n")
    errors, job = check_manifest(obj)
    assert errors == [] and job is not None
    assert job.spec.workers.cpus_per_worker == 2 and type(job.spec.workers.cpus_per_worker) is int
    assert job.to_api()["spec"]["head"]["cpus"] == 4


def test_defaults_are_one_core_as_an_integer():
    stored = validate_object(_manifest("workers", "replicas", 1)).obj["spec"]
    assert stored["workers"]["cpusPerWorker"] == 1 and stored["head"]["cpus"] == 1
    assert WorkersSpec().cpus_per_worker == 1 and HeadSpec().cpus == 1


# value -> what the CRD validator's message says (pydantic names the same field, in its own words)
REFUSED = [
    (1.5, "must be of type integer,string"),  # a YAML number with a fraction: not an int-or-string
    (0.5, "must be of type integer,string"),
    (True, "must be of type integer,string"),
    ([1], "must be of type integer,string"),
    ({"cores": 1}, "must be of type integer,string"),
    ("abc", "should match"),
    ("-1", "should match"),
    ("1Gi", "should match"),  # a quantity, but 1Gi cores is no CPU amount
    ("1k", "should match"),
    ("1e3", "should match"),
    ("500u", "should match"),
    ("0.0005", "should match"),  # finer than the millicore Kubernetes rounds CPU to
    ("1.5m", "should match"),
    ("05", "should match"),
    (" 1", "should match"),
    ("1\n", "should match"),
    ("", "should match"),
    ("1" * 17, "Too long: may not be longer than 16"),
    (0, CPU_RANGE_MESSAGE),
    (-1, CPU_RANGE_MESSAGE),
    ("0", CPU_RANGE_MESSAGE),
    ("0.000", CPU_RANGE_MESSAGE),
    ("0m", CPU_RANGE_MESSAGE),
    (513, CPU_RANGE_MESSAGE),
    ("513", CPU_RANGE_MESSAGE),
    ("512.001", CPU_RANGE_MESSAGE),
    ("512001m", CPU_RANGE_MESSAGE),
    ("9999999m", CPU_RANGE_MESSAGE),
    (2**40, CPU_RANGE_MESSAGE),
]


@pytest.mark.parametrize("field", sorted(FIELDS))
@pytest.mark.parametrize(("given", "reason"), REFUSED, ids=[repr(r[0])[:24] for r in REFUSED])
def test_refused_quantities_name_the_field_in_both_validators(field: str, given: Any, reason: str):
    section, key = FIELDS[field]
    obj = _manifest(section, key, given)
    crd_errors = validate_object(obj).errors
    at_field = [e for e in crd_errors if e.path == field]
    assert any(reason in e.reason for e in at_field), [str(e) for e in crd_errors]
    pyd = _pydantic_errors(obj)
    assert pyd and all(e.path == field for e in pyd), [str(e) for e in pyd]


def test_a_fraction_as_a_number_is_a_type_error_that_stops_the_rules_as_in_the_api_server():
    errors = validate_object(_manifest("workers", "cpusPerWorker", 1.5)).errors
    assert [str(e) for e in errors] == [
        "spec.workers.cpusPerWorker: Invalid value: 1.5: must be of type integer,string",
        f'<root>: Invalid value: "object": {RULES_NOT_CHECKED}',
    ]
    # pydantic (kiln run's models, Python callers) says what to write instead.
    pyd, = _pydantic_errors(_manifest("workers", "cpusPerWorker", 1.5))
    assert pyd.path == "spec.workers.cpusPerWorker" and '"1.5"' in pyd.reason and '"1500m"' in pyd.reason


def test_a_failed_range_rule_quotes_the_empty_type_of_an_int_or_string():
    # The API server quotes the schema's type in a failed rule's message; an int-or-string has none.
    errors = validate_object(_manifest("head", "cpus", "0m")).errors
    assert [str(e) for e in errors] == [f'spec.head.cpus: Invalid value: "": {CPU_RANGE_MESSAGE}']


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_crd_declares_an_int_or_string_with_the_quantity_grammar_and_the_range_rule(field: str):
    section, key = FIELDS[field]
    node = crd_schema()["properties"]["spec"]["properties"][section]["properties"][key]
    assert node["x-kubernetes-int-or-string"] is True and "type" not in node
    assert node["pattern"] == CPU_QUANTITY_PATTERN and node["maxLength"] == 16 and node["default"] == 1
    assert node["x-kubernetes-validations"] == [{"rule": CPU_RANGE_CEL, "message": CPU_RANGE_MESSAGE}]
    assert '"500m"' in node["description"] and '"1.5"' in node["description"]


def test_the_range_rule_stays_cheap_for_the_api_servers_cost_estimate():
    # CEL sees an int-or-string as dyn sized like the whole request (3 MiB); `matches` costs
    # ceil(0.1 x size) x ceil(0.25 x regex length). The API server refuses a rule over 10 million.
    size = 3 * 1024 * 1024 - 2
    regexes = re.findall(r"\.matches\('([^']*)'\)", CPU_RANGE_CEL)
    cost = sum(math.ceil(0.1 * size) * math.ceil(0.25 * len(regex.replace("\\\\", "\\"))) for regex in regexes)
    assert len(regexes) == 1 and cost < 2_000_000


def test_topology_shares_a_quantity_strings_cores():
    topology = training_topology(WorkersSpec(replicas=2, cpus_per_worker="500m"))
    assert topology.resources_per_worker == {"CPU": 0.5}
    gpu = training_topology(WorkersSpec(replicas=1, cpus_per_worker="1.5", gpus_per_worker=2))
    assert gpu.resources_per_worker == {"CPU": 0.75, "GPU": 1.0}


@pytest.mark.parametrize(("value", "millis"), [(2, 2000), ("2", 2000), ("1.5", 1500), ("500m", 500), (0.5, 500), (0.0004, 1)])
def test_millicores_are_exact_and_sub_millicore_python_floats_round_up(value: Any, millis: int):
    assert cpu_millicores(value) == millis
