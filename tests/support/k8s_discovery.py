"""What the emulated API server tells kubectl about itself: discovery and OpenAPI v3 documents.

Pure functions over the served kinds and the Kiln CRD, so each document has a plain test:

- legacy discovery (`/api`, `/apis`, `/apis/G`, `/api/v1`, `/apis/G/V`) and the aggregated
  format (`apidiscovery.k8s.io/v2`, answered when the `Accept` header asks for it, as kubectl
  1.26+ does), both with singular names, short names, categories, verbs and subresources;
- OpenAPI v3: the index (`/openapi/v3`) and one document per group version whose paths carry
  `x-kubernetes-group-version-kind` and the `fieldValidation` parameter (so kubectl knows the
  server validates fields itself), and whose schemas are the CRD's own for the TrainingJob
  (`kubectl explain` prints our descriptions) and open objects for the built-in kinds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
SUBRESOURCE_VERBS = {"status": ["get", "patch", "update"], "log": ["get"]}
AGGREGATED_V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"

# Short names, categories and subresources of the built-in kinds, as a 1.32 API server lists them.
BUILTIN_NAMES: dict[str, tuple[list[str], list[str]]] = {
    "pods": (["po"], ["all"]),
    "services": (["svc"], ["all"]),
    "configmaps": (["cm"], []),
    "namespaces": (["ns"], []),
    "persistentvolumeclaims": (["pvc"], []),
    "serviceaccounts": (["sa"], []),
    "events": (["ev"], []),
    "networkpolicies": (["netpol"], []),
    "deployments": (["deploy"], ["all"]),
    "customresourcedefinitions": (["crd", "crds"], ["api-extensions"]),
    "poddisruptionbudgets": (["pdb"], []),
}
EXTRA_SUBRESOURCES = {"pods": ["log"]}


@dataclass(frozen=True)
class Served:
    """One served resource as discovery describes it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    subresources: tuple[str, ...]
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()


def served_resources(kinds: dict[str, Any], crd: dict[str, Any]) -> list[Served]:
    """Every served resource: `kinds` maps `group/version/plural` to a `k8s_store.Kind`."""
    names = crd["spec"]["names"]
    crd_key = f'{crd["spec"]["group"]}/{crd["spec"]["versions"][0]["name"]}/{names["plural"]}'
    result = []
    for key, kind in kinds.items():
        parts = key.split("/")
        group, version, plural = ("", *parts) if len(parts) == 2 else parts
        subresources = (["status"] if kind.status_subresource else []) + EXTRA_SUBRESOURCES.get(plural, [])
        if key == crd_key:
            shorts, categories = names.get("shortNames", []), names.get("categories", [])
        else:
            shorts, categories = BUILTIN_NAMES.get(plural, ([], []))
        result.append(Served(group, version, plural, kind.kind, kind.namespaced, tuple(subresources),
                             tuple(shorts), tuple(categories)))
    return result


# --------------------------------------------------------------------------- legacy discovery


def api_versions() -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}


def _group_versions(served: list[Served]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for res in served:
        if res.group and res.version not in groups.setdefault(res.group, []):
            groups[res.group].append(res.version)
    return groups


def _api_group(name: str, versions: list[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": entries, "preferredVersion": entries[0]}


def api_group_list(served: list[Served]) -> dict[str, Any]:
    groups = _group_versions(served)
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [_api_group(name, versions) for name, versions in sorted(groups.items())]}


def api_group(served: list[Served], group: str) -> dict[str, Any] | None:
    versions = _group_versions(served).get(group)
    if not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_api_group(group, versions)}


def api_resource_list(served: list[Served], group: str, version: str) -> dict[str, Any] | None:
    mine = [r for r in served if r.group == group and r.version == version]
    if not mine:
        return None
    resources = []
    for res in mine:
        resources.append({"name": res.plural, "singularName": res.singular, "namespaced": res.namespaced,
                          "kind": res.kind, "verbs": VERBS, "shortNames": list(res.short_names),
                          "categories": list(res.categories)})
        for sub in res.subresources:
            resources.append({"name": f"{res.plural}/{sub}", "singularName": "", "namespaced": res.namespaced,
                              "kind": res.kind, "verbs": SUBRESOURCE_VERBS.get(sub, ["get"])})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": mine[0].group_version,
            "resources": resources}


# --------------------------------------------------------------------------- aggregated discovery


def _discovery_resource(res: Served) -> dict[str, Any]:
    kind = {"group": res.group, "version": res.version, "kind": res.kind}
    entry: dict[str, Any] = {
        "resource": res.plural, "responseKind": kind, "scope": "Namespaced" if res.namespaced else "Cluster",
        "singularResource": res.singular, "verbs": VERBS,
        "subresources": [{"subresource": sub, "responseKind": kind, "verbs": SUBRESOURCE_VERBS.get(sub, ["get"])}
                         for sub in res.subresources],
    }
    if res.short_names:
        entry["shortNames"] = list(res.short_names)
    if res.categories:
        entry["categories"] = list(res.categories)
    return entry


def aggregated_discovery(served: list[Served], core: bool) -> dict[str, Any]:
    """`/api` (core=True) or `/apis` in the `apidiscovery.k8s.io/v2` format."""
    groups: dict[str, dict[str, list[Served]]] = {}
    for res in served:
        if (res.group == "") == core:
            groups.setdefault(res.group, {}).setdefault(res.version, []).append(res)
    items = []
    for name, versions in sorted(groups.items()):
        metadata = {"name": name} if name else {}
        items.append({"metadata": metadata, "versions": [
            {"version": version, "freshness": "Current", "resources": [_discovery_resource(r) for r in resources]}
            for version, resources in versions.items()]})
    return {"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items}


def wants_aggregated(accept: str) -> bool:
    """kubectl lists the aggregated format first in `Accept` when it can read it."""
    first = accept.split(",")[0]
    return "as=APIGroupDiscoveryList" in first and "v=v2;" in first + ";"


# --------------------------------------------------------------------------- OpenAPI v3

OBJECT_META = {
    "description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects users must create.",
    "type": "object",
    "properties": {
        "name": {"description": "Name must be unique within a namespace.", "type": "string"},
        "namespace": {"description": "Namespace defines the space within which each name must be unique.", "type": "string"},
        "labels": {"description": "Map of string keys and values that can be used to organize and categorize objects.",
                   "type": "object", "additionalProperties": {"type": "string", "default": ""}},
        "annotations": {"description": "Annotations is an unstructured key value map stored with a resource.",
                        "type": "object", "additionalProperties": {"type": "string", "default": ""}},
    },
    "x-kubernetes-preserve-unknown-fields": True,
}
META_REF = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def _schema_name(res: Served) -> str:
    if res.group.endswith(".k8s.io") or res.group == "":
        short = res.group.removesuffix(".k8s.io").replace(".", "_") or "core"
        return f"io.k8s.api.{short}.{res.version}.{res.kind}"
    return ".".join(reversed(res.group.split("."))) + f".{res.version}.{res.kind}"


def _kind_schema(res: Served, crd: dict[str, Any]) -> dict[str, Any]:
    gvk = [{"group": res.group, "version": res.version, "kind": res.kind}]
    names = crd["spec"]["names"]
    if res.group == crd["spec"]["group"] and res.plural == names["plural"]:
        schema = json.loads(json.dumps(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]))
        properties = schema.setdefault("properties", {})
        properties["metadata"] = {"allOf": [{"$ref": f"#/components/schemas/{META_REF}"}],
                                  "description": "Standard object's metadata."}
        properties.setdefault("apiVersion", {"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."})
        properties.setdefault("kind", {"type": "string", "description": "Kind is a string value representing the REST resource this object represents."})
        return {**schema, "x-kubernetes-group-version-kind": gvk}
    return {"description": f"{res.kind} (the emulator checks no fields of built-in kinds).", "type": "object",
            "properties": {"metadata": {"allOf": [{"$ref": f"#/components/schemas/{META_REF}"}]}},
            "x-kubernetes-preserve-unknown-fields": True, "x-kubernetes-group-version-kind": gvk}


def _paths(res: Served, schema: str) -> dict[str, Any]:
    base = f"/apis/{res.group_version}" if res.group else f"/api/{res.version}"
    scoped = f"{base}/namespaces/{{namespace}}/{res.plural}" if res.namespaced else f"{base}/{res.plural}"
    gvk = {"group": res.group, "version": res.version, "kind": res.kind}
    body = {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}
    validation = [{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True},
                   "description": "Ignore, Warn or Strict: what the server does with unknown or duplicate fields."},
                  {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
                  {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": True}}]

    def op(action: str, params: list[dict[str, Any]]) -> dict[str, Any]:
        return {"operationId": f"{action}{res.kind}", "parameters": params, "requestBody": body,
                "responses": {"200": body}, "x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk}

    item = {"get": op("get", []), "put": op("put", validation), "patch": op("patch", validation + [
        {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": True}}]), "delete": op("delete", [])}
    return {scoped: {"get": op("list", []), "post": op("post", validation)}, f"{scoped}/{{name}}": item}


def openapi_v3_index(served: list[Served], crd: dict[str, Any]) -> dict[str, Any]:
    """`/openapi/v3`: one entry per group version, its URL carrying a hash of the document."""
    paths = {}
    for gv in sorted({r.group_version for r in served}):
        key = f"apis/{gv}" if "/" in gv else f"api/{gv}"
        digest = hashlib.sha256(json.dumps(openapi_v3_document(served, crd, gv), sort_keys=True).encode()).hexdigest()
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest[:32].upper()}"}
    return {"paths": paths}


def openapi_v3_document(served: list[Served], crd: dict[str, Any], group_version: str) -> dict[str, Any] | None:
    """`/openapi/v3/apis/G/V` (or `/api/v1`): paths and schemas of that group version."""
    mine = [r for r in served if r.group_version == group_version]
    if not mine:
        return None
    schemas: dict[str, Any] = {META_REF: OBJECT_META}
    paths: dict[str, Any] = {}
    for res in mine:
        name = _schema_name(res)
        schemas[name] = _kind_schema(res, crd)
        paths.update(_paths(res, name))
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
            "paths": paths, "components": {"schemas": schemas}}


# --------------------------------------------------------------------------- routing

Answer = tuple[dict[str, Any], str, int]
JSON = "application/json"


def _not_found(path: str) -> Answer:
    return ({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
             "message": f"the server could not find the requested resource ({path})", "reason": "NotFound",
             "code": 404}, JSON, 404)


def _found(body: dict[str, Any] | None, path: str) -> Answer:
    return (body, JSON, 200) if body is not None else _not_found(path)


def meta_response(path: str, accept: str, served: list[Served], crd: dict[str, Any]) -> Answer | None:
    """The answer to a discovery or OpenAPI request, or None when `path` is not one."""
    parts = [p for p in path.strip("/").split("/") if p]
    if parts in (["api"], ["apis"]):
        if wants_aggregated(accept):
            return aggregated_discovery(served, core=parts == ["api"]), AGGREGATED_V2, 200
        return (api_versions() if parts == ["api"] else api_group_list(served)), JSON, 200
    if len(parts) == 2 and parts[0] == "api":
        return _found(api_resource_list(served, "", parts[1]), path)
    if len(parts) == 2 and parts[0] == "apis":
        return _found(api_group(served, parts[1]), path)
    if len(parts) == 3 and parts[0] == "apis":
        return _found(api_resource_list(served, parts[1], parts[2]), path)
    if parts == ["openapi", "v3"]:
        return openapi_v3_index(served, crd), JSON, 200
    if parts[:2] == ["openapi", "v3"]:
        rest = parts[2:]
        group_version = "/".join(rest[1:]) if rest and rest[0] in ("api", "apis") else ""
        return _found(openapi_v3_document(served, crd, group_version) if group_version else None, path)
    if parts[:1] == ["openapi"]:
        return _not_found(path)  # v2 is not served: kubectl uses v3
    return None
