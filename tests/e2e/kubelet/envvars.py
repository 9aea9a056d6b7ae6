"""Pure rules for a container's environment, as the real kubelet computes it.

* `$(VAR)` references expand against the variables defined so far (env entries are
  processed in order, service links come first); `$$` escapes a `$`; an undefined
  reference is left verbatim — the same rules as `k8s.io/kubernetes/third_party/forked/golang/expansion`.
* Service links (`enableServiceLinks`, default true): for every Service of the namespace
  that has a clusterIP, the docker-link variables `{SVC}_SERVICE_HOST`, `{SVC}_SERVICE_PORT`,
  `{SVC}_SERVICE_PORT_{PORT}`, `{SVC}_PORT*`.
* `valueFrom`: fieldRef, resourceFieldRef, secretKeyRef and configMapKeyRef; anything else
  raises `PodSpecError` so the pod fails loudly instead of running with a wrong environment.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

Obj = dict[str, Any]
# (kind, namespace, name) -> object or None; the shell reads Secrets/ConfigMaps from the API.
Lookup = Callable[[str, str, str], Obj | None]

_SUFFIXES = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$")


class PodSpecError(ValueError):
    """Something in the pod this kubelet cannot honour; the message names the field."""


class MissingReference(PodSpecError):
    """A Secret/ConfigMap/key the pod needs does not exist (yet): the pod waits, as on a cluster."""


def parse_quantity(text: str | int | float) -> float:
    """`500m` -> 0.5, `2Gi` -> 2147483648 (Kubernetes resource quantities)."""
    match = _QUANTITY.match(str(text).strip())
    if not match or match.group(2) not in _SUFFIXES:
        raise PodSpecError(f"invalid quantity {text!r}")
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined refs replaced, `$$` -> `$`, the rest verbatim."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 >= len(text):
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close < 0:
                out.append(text[i:])
                break
            name = text[i + 2:close]
            out.append(env[name] if name in env else text[i:close + 1])
            i = close + 1
        else:
            out.append(char)
            i += 1
    return "".join(out)


def link_name(name: str) -> str:
    return name.upper().replace("-", "_")


def service_link_env(services: list[Obj]) -> dict[str, str]:
    """Docker-link variables for Services with a clusterIP, sorted by name like the kubelet."""
    env: dict[str, str] = {}
    for svc in sorted(services, key=lambda s: s["metadata"]["name"]):
        spec = svc.get("spec") or {}
        ip = spec.get("clusterIP")
        ports = spec.get("ports") or []
        if not ip or ip == "None" or not ports:
            continue
        prefix = link_name(svc["metadata"]["name"])
        env[f"{prefix}_SERVICE_HOST"] = ip
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
        for port in ports:
            if port.get("name"):
                env[f"{prefix}_SERVICE_PORT_{link_name(port['name'])}"] = str(port["port"])
            proto = port.get("protocol", "TCP")
            url = f"{proto.lower()}://{ip}:{port['port']}"
            base = f"{prefix}_PORT_{port['port']}_{proto}"
            env.update({base: url, f"{base}_PROTO": proto.lower(), f"{base}_PORT": str(port["port"]), f"{base}_ADDR": ip})
        first = ports[0]
        env[f"{prefix}_PORT"] = f"{first.get('protocol', 'TCP').lower()}://{ip}:{first['port']}"
    return env


def field_ref(pod: Obj, path: str) -> str:
    """The downward API's `fieldRef.fieldPath` of a running pod."""
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
        "status.podIPs": ",".join(p["ip"] for p in status.get("podIPs", [])),
    }
    if path in simple:
        return str(simple[path] or "")
    match = re.match(r"^metadata\.(labels|annotations)\['([^']+)'\]$", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise PodSpecError(f"fieldRef.fieldPath {path!r} is not supported")


def resource_field_ref(container: Obj, ref: Obj, node_cpus: int, node_memory: int) -> str:
    """requests/limits of cpu/memory divided by `divisor`, rounded up (node capacity if unset)."""
    resource = ref.get("resource", "")
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or name not in ("cpu", "memory", "ephemeral-storage"):
        raise PodSpecError(f"resourceFieldRef.resource {resource!r} is not supported")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(name)
    if value is None and kind == "requests":
        value = (resources.get("limits") or {}).get(name)
    amount = parse_quantity(value) if value is not None else float(node_cpus if name == "cpu" else node_memory)
    divisor = parse_quantity(ref.get("divisor", "1"))
    return str(max(1, math.ceil(amount / divisor)) if name == "cpu" else math.ceil(amount / divisor))


def key_ref(lookup: Lookup, kind: str, namespace: str, ref: Obj, field: str) -> str | None:
    """secretKeyRef / configMapKeyRef; None when optional and missing."""
    obj = lookup(kind, namespace, ref.get("name", ""))
    optional = bool(ref.get("optional"))
    if obj is None:
        if optional:
            return None
        raise MissingReference(f"{field}: {kind} {ref.get('name')!r} not found")
    key = ref.get("key", "")
    if kind == "Secret" and key in (obj.get("data") or {}):
        return base64.b64decode(obj["data"][key]).decode()
    if key in (obj.get("stringData") or {}):
        return str(obj["stringData"][key])
    if kind == "ConfigMap" and key in (obj.get("data") or {}):
        return str(obj["data"][key])
    if optional:
        return None
    raise MissingReference(f"{field}: key {key!r} not found in {kind} {ref.get('name')!r}")


def _value_from(pod: Obj, container: Obj, source: Obj, lookup: Lookup, field: str, node: tuple[int, int]) -> str | None:
    namespace = pod["metadata"].get("namespace", "default")
    if "fieldRef" in source:
        return field_ref(pod, source["fieldRef"].get("fieldPath", ""))
    if "resourceFieldRef" in source:
        return resource_field_ref(container, source["resourceFieldRef"], *node)
    if "secretKeyRef" in source:
        return key_ref(lookup, "Secret", namespace, source["secretKeyRef"], f"{field}.secretKeyRef")
    if "configMapKeyRef" in source:
        return key_ref(lookup, "ConfigMap", namespace, source["configMapKeyRef"], f"{field}.configMapKeyRef")
    raise PodSpecError(f"{field}: unsupported valueFrom {sorted(source)}")


def container_env(
    pod: Obj, container: Obj, services: list[Obj], lookup: Lookup, node: tuple[int, int] = (2, 2**33)
) -> dict[str, str]:
    """The container's environment: service links first, then `env` in order with expansion."""
    env: dict[str, str] = {}
    if (pod.get("spec") or {}).get("enableServiceLinks", True):
        env.update(service_link_env(services))
    if container.get("envFrom"):
        raise PodSpecError(f"containers[{container.get('name')}].envFrom is not supported by the test kubelet")
    for index, entry in enumerate(container.get("env") or []):
        field = f"containers[{container.get('name')}].env[{index}]"
        if "valueFrom" in entry:
            value = _value_from(pod, container, entry["valueFrom"], lookup, f"{field}.valueFrom", node)
            if value is None:
                continue
        else:
            value = expand(str(entry.get("value", "")), env)
        env[entry["name"]] = value
    return env


def container_argv(container: Obj, env: Mapping[str, str]) -> list[str]:
    """command + args with `$(VAR)` expanded; a container without a command is refused (no image entrypoint here)."""
    command = container.get("command") or []
    if not command:
        raise PodSpecError(f"containers[{container.get('name')}].command is required: the test kubelet has no image entrypoint")
    return [expand(str(part), env) for part in [*command, *(container.get("args") or [])]]
