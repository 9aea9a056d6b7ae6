"""What a cluster would say about the objects Kiln renders for a job, without a cluster.

`kubernetes_validate` checks the objects against Kubernetes' OpenAPI schemas, which know
types and required fields but none of the API server's Go-coded rules (label syntax, DNS
names, toleration rules, the annotation budget) nor what the kubelet and container
runtime refuse later (image references, oversized environment strings, ports Ray already
uses). `object_problems` adds those, written here from the Kubernetes sources
(apimachinery's validation constants, ValidatePodSpec, distribution/reference) and
independently of `kiln_api.k8s_syntax`, so that a mistake there is not repeated here.
"""

from __future__ import annotations

import functools
import posixpath
import re
from typing import Any

import kubernetes_validate
import kubernetes_validate.utils
from kiln_api import TrainingJob
from kiln_operator.render import render_objects
from kiln_operator.settings import OperatorSettings

KUBERNETES_VERSION = "1.30"
SETTINGS = OperatorSettings(default_checkpoint_storage="pvc://kiln-checkpoints")
TOKEN = "oracle-token"

# kubernetes_validate reads its (large) schema files from disk on every call; the contents
# never change, so read each once. The validation itself is still kubernetes_validate's.
if not hasattr(kubernetes_validate.utils.schema_contents, "cache_info"):
    kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(kubernetes_validate.utils.schema_contents)

# apimachinery/pkg/util/validation/validation.go
_QNAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(_DNS1123_LABEL + r"(\." + _DNS1123_LABEL + r")*")
_DNS1123_LABEL_RE = re.compile(_DNS1123_LABEL)
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_IANA_SVC_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
TOTAL_ANNOTATION_SIZE = 256 * 1024

# github.com/distribution/reference (regexp.go), and normalize.go's rule for the first component.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9a-fA-F]{32,}"
_REFERENCE = re.compile(rf"(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)(?::{_TAG})?(?:@{_DIGEST})?", re.ASCII)

# Linux's MAX_ARG_STRLEN: exec refuses a longer single "NAME=value" string (E2BIG).
MAX_ARG_STRLEN = 32 * 4096
# Where Ray listens in the pods (Ray's defaults, plus the flags Kiln passes to `ray start`).
RAY_PORTS = {6379, 8080, 8265, 10001, 52365, *range(10002, 20000)}
PVC_ROOT = "/mnt/kiln/pvc"


def qualified_name(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = value.split("/")
    if len(parts) > 2:
        return False
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix):
            return False
    name = parts[-1]
    return 0 < len(name) <= 63 and _QNAME.fullmatch(name) is not None


def label_value(value: Any) -> bool:
    return isinstance(value, str) and (value == "" or (len(value) <= 63 and _QNAME.fullmatch(value) is not None))


def dns_subdomain(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 253 and _DNS1123_SUBDOMAIN.fullmatch(value) is not None


def image_reference(value: Any) -> bool:
    if not isinstance(value, str) or value != value.strip():
        return False
    match = _REFERENCE.fullmatch(value)
    if match is None or len(match["name"]) > 255:
        return False
    first, slash, _ = match["name"].partition("/")
    # normalize.go: a first component without '.', ':' or `localhost` is a path component (lowercase).
    return not slash or "." in first or ":" in first or first == "localhost" or first == first.lower()


def _metadata_problems(kind: str, meta: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    name = meta.get("name", "")
    if kind == "Service":
        if not (len(name) <= 63 and _DNS1035_LABEL.fullmatch(name)):
            problems.append(f"Service name {name!r} is not a DNS-1035 label")
    elif not dns_subdomain(name):
        problems.append(f"{kind} name {name!r} is not a DNS subdomain")
    if not (len(meta.get("namespace", "")) <= 63 and _DNS1123_LABEL_RE.fullmatch(meta.get("namespace", ""))):
        problems.append(f"namespace {meta.get('namespace')!r} is not a DNS label")
    for key, value in (meta.get("labels") or {}).items():
        if not qualified_name(key) or not label_value(value):
            problems.append(f"label {key!r}: {value!r}")
    annotations = meta.get("annotations") or {}
    for key in annotations:
        if not qualified_name(key.lower()):
            problems.append(f"annotation key {key!r}")
    if sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items()) > TOTAL_ANNOTATION_SIZE:
        problems.append("annotations exceed 256 KiB")
    return problems


def _toleration_problems(toleration: dict[str, Any]) -> list[str]:
    key, operator, value = toleration.get("key", ""), toleration.get("operator", "Equal"), toleration.get("value", "")
    problems: list[str] = []
    if key and not qualified_name(key):
        problems.append(f"toleration key {key!r}")
    if not key and operator != "Exists":
        problems.append("toleration without a key must have operator Exists")
    if operator == "Exists" and value:
        problems.append("toleration with operator Exists must have no value")
    if operator == "Equal" and not label_value(value):
        problems.append(f"toleration value {value!r}")
    if "tolerationSeconds" in toleration and toleration.get("effect") != "NoExecute":
        problems.append("tolerationSeconds needs effect NoExecute")
    return problems


def _container_problems(container: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    if not image_reference(container.get("image")):
        problems.append(f"image {str(container.get('image'))[:80]!r} is not an image reference")
    for env in container.get("env", []):
        if not _ENV_NAME.fullmatch(env["name"]):
            problems.append(f"env name {env['name']!r}")
        value = env.get("value", "")
        if "\x00" in value:
            problems.append(f"env {env['name']} holds a NUL")
        if len(f"{env['name']}={value}".encode()) >= MAX_ARG_STRLEN:
            problems.append(f"env {env['name']} is longer than MAX_ARG_STRLEN ({len(value.encode())} bytes)")
        if env["name"] == "KILN_CHECKPOINT_DIR" and value.startswith("/") and not _inside_pvc_root(value):
            problems.append(f"checkpoint dir {value!r} leaves its claim's mount")
    ports = container.get("ports", [])
    names = [port["name"] for port in ports]
    numbers = [port["containerPort"] for port in ports]
    if len(set(names)) != len(names) or len(set(numbers)) != len(numbers):
        problems.append(f"duplicate container ports {ports}")
    if any(not (len(n) <= 15 and _IANA_SVC_NAME.fullmatch(n)) for n in names):
        problems.append(f"port names {names}")
    for mount in container.get("volumeMounts", []):
        path = mount["mountPath"]
        if posixpath.normpath(path) != path:
            problems.append(f"mount path {path!r} is not normalized")
    return problems


def _inside_pvc_root(path: str) -> bool:
    normal = posixpath.normpath(path)
    parts = normal.split("/")
    # /mnt/kiln/pvc/<claim>[/...]: the claim component must survive normalization.
    return normal.startswith(PVC_ROOT + "/") and len(parts) >= 5 and path.split("/")[4] == parts[4]


def _pod_problems(pod: dict[str, Any], metrics_port: int) -> list[str]:
    spec = pod["spec"]
    problems: list[str] = []
    for key, value in (spec.get("nodeSelector") or {}).items():
        if not qualified_name(key) or not label_value(value):
            problems.append(f"nodeSelector {key!r}: {value!r}")
    for toleration in spec.get("tolerations", []):
        problems.extend(_toleration_problems(toleration))
    if "priorityClassName" in spec and not dns_subdomain(spec["priorityClassName"]):
        problems.append(f"priorityClassName {spec['priorityClassName']!r}")
    for volume in spec.get("volumes", []):
        if not _DNS1123_LABEL_RE.fullmatch(volume["name"]):
            problems.append(f"volume name {volume['name']!r}")
        claim = volume.get("persistentVolumeClaim")
        if claim is not None and not claim.get("claimName"):
            problems.append("empty claimName")
    for container in spec["containers"]:
        problems.extend(_container_problems(container))
    if metrics_port in RAY_PORTS:
        problems.append(f"metrics port {metrics_port} is one Ray listens on")
    return problems


def object_problems(obj: dict[str, Any], job: TrainingJob) -> list[str]:
    """Everything a cluster would refuse about one rendered object (empty when it is fine)."""
    where = f"{obj['kind']} {obj['metadata'].get('name')}"
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{where}: kubernetes_validate: {exc}"]
    problems = _metadata_problems(obj["kind"], obj["metadata"])
    if obj["kind"] == "Pod":
        problems += _pod_problems(obj, job.spec.metrics.port)
    return [f"{where}: {problem}" for problem in problems]


def representatives(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every object but the workers between the first and the last (they differ only by index)."""
    workers = [o for o in objects if o["kind"] == "Pod" and "-worker-" in o["metadata"]["name"]]
    keep = {id(o) for o in workers[:1] + workers[-1:]}
    return [o for o in objects if o not in workers or id(o) in keep]


def render_problems(job: TrainingJob) -> list[str]:
    """Render `job` as the operator would and list what a cluster would refuse.

    A job the operator refuses before creating anything (`cluster_problem`: a local
    checkpoint path, say) is fine as long as the refusal names a spec field.
    """
    from kiln_operator.render import RenderError

    try:
        objects, _ = render_objects([job], SETTINGS, TOKEN, "job")
    except RenderError as exc:
        message = str(exc).removeprefix("job: ")
        return [] if message.startswith("spec.") else [f"operator refusal names no field: {message}"]
    problems = [problem for obj in representatives(objects) for problem in object_problems(obj, job)]
    return problems + _location_problems(job)


def _location_problems(job: TrainingJob) -> list[str]:
    """pvc:// locations the trainer opens (from KILN_JOB) must stay inside their claim's mount."""
    locations = [job.spec.data.source, job.spec.checkpoint.storage or ""]
    if job.spec.model is not None and job.spec.model.pretrained is not None:
        locations.append(job.spec.model.pretrained.path)
    problems = []
    for url in locations:
        if url.startswith("pvc://") and not _inside_pvc_root(f"{PVC_ROOT}/{url.removeprefix('pvc://')}"):
            problems.append(f"location {url!r} leaves its claim's mount")
    return problems
