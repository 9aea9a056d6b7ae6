"""The chart grants exactly the API calls the operator makes: each one allowed, nothing more.

The calls are derived from the operator's code (AST): every `KubeClient` call (`kube.get("Pod", ...)`,
`kube.patch(KIND, ..., subresource="status")`, ...), with the kinds of `kube.create(obj)` taken from the
child-object table (objects/table.py) and the object literals, those of `kube.delete(kind, ...)` from
the `("Kind", name)` targets the code plans, and those of calls whose kind comes from iterating the
table (observe GETs the rows it reads by name, LISTs the listed ones) from the table; plus what kopf does for the handlers the operator registers (list/watch every handled
resource, patch its finalizer/progress annotations on resources with change handlers or timers,
post Events) and for peering, and the list and watch of the operator's informers (caches.py).
tests/integration/monitoring checks a real run's request log too.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kiln_api
import kiln_operator.kube as kube_module
import pytest
from kiln_api import API_GROUP, PLURAL
from kiln_operator.caches import CACHED_KINDS
from kiln_operator.objects.table import CHILDREN, HEAD_SERVICE, Child

from tests.support.chart import ROOT, find, render_objects

OPERATOR_DIR = ROOT / "operator" / "kiln_operator"
CLIENT_VERBS = {"get", "list", "create", "delete", "patch"}
KOPF_CHANGE_DECORATORS = {"create", "update", "resume", "delete", "timer", "daemon"}
Call = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)
# The operator names kinds by kiln_api's constants (`KIND`) as well as by literals.
API_CONSTANTS = {name: value for name, value in vars(kiln_api).items() if name.isupper() and isinstance(value, str)}


def _group_plural(kind: str) -> tuple[str, str]:
    api_version, plural = kube_module.RESOURCES[kind]
    return (api_version.split("/")[0] if "/" in api_version else "", plural)


def _trees() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text(), str(path)) for path in sorted(OPERATOR_DIR.rglob("*.py"))}


def _const(node: ast.AST | None) -> Any:
    return node.value if isinstance(node, ast.Constant) else None


def _kind(node: ast.AST | None) -> str | None:
    """A kind the client knows, given as a literal or a kiln_api constant."""
    value = API_CONSTANTS.get(node.id) if isinstance(node, ast.Name) else _const(node)
    return value if value in kube_module.RESOURCES else None


def table_kinds(table: Sequence[Child], verb: str) -> set[str]:
    """Kinds the operator handles by iterating its child table: it creates every row's objects,
    LISTs the kinds of listed rows, GETs the others by name unless they are never read back
    (observe.read_children), and deletes those it replaces when stale (phases.ensure_objects)."""
    if verb == "create":
        return {row.kind for row in table}
    if verb == "list":
        return {row.kind for row in table if row.listed}
    if verb == "get":
        return {row.kind for row in table if not row.listed and row.read_back}
    if verb == "delete":
        return {row.kind for row in table if row.replaced_when_stale}
    return set()


def built_kinds(trees: dict[Path, ast.Module]) -> set[str]:
    """Kinds of the objects the code builds: dict literals with a literal "kind" the client knows.

    Only literals: `"kind": KIND` sits in ownerReferences, which point at a job and build none.
    """
    kinds = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if _const(key) == "kind" and _const(value) in kube_module.RESOURCES:
                        kinds.add(_const(value))
    return kinds


def planned_deletions(trees: dict[Path, ast.Module]) -> set[str]:
    """Kinds in ("Kind", name) tuples: the targets `ensure_deleted` is given."""
    kinds = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Tuple) and len(node.elts) == 2 and (kind := _kind(node.elts[0])) is not None:
                kinds.add(kind)
    return kinds


def passed_kinds(trees: dict[Path, ast.Module], function: str, index: int) -> set[str]:
    """Literal kinds given as argument `index` wherever `function` is called (helpers like `_exists`)."""
    kinds = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == function
                    and len(node.args) > index and (kind := _kind(node.args[index])) is not None):
                kinds.add(kind)
    return kinds


def _kinds_of(call: ast.Call, function: ast.FunctionDef | None, trees: dict[Path, ast.Module],
              table: Sequence[Child]) -> set[str]:
    literal = _kind(call.args[0]) if call.args else None
    if literal is not None:
        return {literal}
    params = [a.arg for a in function.args.args] if function else []
    if call.args and isinstance(call.args[0], ast.Name) and call.args[0].id in params:
        kinds = passed_kinds(trees, function.name, params.index(call.args[0].id))
        if kinds:
            return kinds
    kinds = table_kinds(table, call.func.attr)
    if call.func.attr == "create":
        kinds |= built_kinds(trees)
    if call.func.attr == "delete":
        kinds |= planned_deletions(trees)
    if kinds:
        return kinds
    raise AssertionError(f"cannot tell which resource {ast.unparse(call)} calls: give it a literal kind")


def _kube_calls(tree: ast.Module) -> list[tuple[ast.Call, ast.FunctionDef | None]]:
    """KubeClient calls (receiver `kube`, `runtime.kube`...) with the function they sit in."""
    found = []
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in CLIENT_VERBS \
                and ast.unparse(node.func.value).endswith("kube"):
            owner = [f for f in functions if f.lineno <= node.lineno <= (f.end_lineno or f.lineno)]
            found.append((node, owner[-1] if owner else None))
    return found


def client_calls(trees: dict[Path, ast.Module], table: Sequence[Child] = ()) -> set[Call]:
    calls: set[Call] = set()
    for tree in trees.values():
        for node, function in _kube_calls(tree):
            verb = node.func.attr
            kinds = _kinds_of(node, function, trees, table)
            subresource = next((_const(k.value) for k in node.keywords if k.arg == "subresource"), None)
            for kind in kinds:
                group, plural = _group_plural(kind)
                calls.add((group, f"{plural}/{subresource}" if subresource else plural, verb))
    return calls


def _kopf_resource(decorator: ast.Call, path: Path) -> tuple[str, str] | None:
    if any(isinstance(a, ast.Starred) for a in decorator.args):
        # `*RESOURCE`: the module's (group, version, plural); read it from the imported module.
        module = importlib.import_module("kiln_operator." + ".".join(path.relative_to(OPERATOR_DIR).with_suffix("").parts))
        assert hasattr(module, "RESOURCE"), f"{path}: cannot resolve {ast.unparse(decorator)}"
        group, _version, plural = module.RESOURCE
        return (group, plural)
    args = [_const(a) for a in decorator.args]
    if len(args) == 3 and all(isinstance(a, str) for a in args):
        return (args[0], args[2])  # (group, version, plural); the core group is ""
    return None


def kopf_calls(trees: dict[Path, ast.Module]) -> set[Call]:
    """What kopf itself requests for the handlers the operator registers."""
    calls: set[Call] = set()
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name = ast.unparse(node.func)
            if not (name.startswith("kopf.on.") or name in ("kopf.timer", "kopf.daemon")) or node.func.attr == "probe":
                continue
            resource = _kopf_resource(node, path)
            if resource is None:
                continue
            group, plural = resource
            calls |= {(group, plural, "list"), (group, plural, "watch")}
            if node.func.attr in KOPF_CHANGE_DECORATORS:
                calls.add((group, plural, "patch"))  # finalizer and progress annotations
            calls.add(("", "events", "create"))  # kopf posts handler failures as Events
    return calls


def owner_reference_calls(trees: dict[Path, ast.Module]) -> set[Call]:
    """blockOwnerDeletion on a child needs update on the owner's finalizers subresource."""
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                pairs = {_const(k): _const(v) for k, v in zip(node.keys, node.values, strict=True)}
                if pairs.get("blockOwnerDeletion") is True and pairs.get("kind") is None:
                    return {(API_GROUP, f"{PLURAL}/finalizers", "update")}
    return set()


def informer_calls() -> set[Call]:
    """The operator's own informers (caches.py) list and watch every child kind it reads back."""
    return {(*_group_plural(kind), verb) for kind in CACHED_KINDS for verb in ("list", "watch")}


def operator_calls(peering: str | None = None) -> set[Call]:
    trees = _trees()
    calls = client_calls(trees, CHILDREN) | kopf_calls(trees) | owner_reference_calls(trees) | informer_calls()
    if peering:
        # kopf's peering: it watches the peering object and patches its own entry in it.
        calls |= {("kopf.dev", peering, verb) for verb in ("list", "watch", "patch")}
    return calls


def granted(rules: list[dict[str, Any]]) -> set[Call]:
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field}: {rule}"
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_derivation_finds_the_calls_a_real_run_makes() -> None:
    # Seen in the emulator's request log of a real operator run (without a kubelet); the AST
    # derivation must find at least these, or it is not reading the code it claims to.
    observed = {
        ("", "events", "create"), ("", "pods", "create"), ("", "pods", "list"), ("", "pods", "watch"),
        ("", "secrets", "create"), ("", "services", "create"), ("", "services", "get"),
        ("", "configmaps", "create"), ("", "configmaps", "get"),
        ("kiln.dev", "trainingjobs", "get"), ("kiln.dev", "trainingjobs", "list"), ("kiln.dev", "trainingjobs", "patch"),
        ("kiln.dev", "trainingjobs", "watch"), ("kiln.dev", "trainingjobs/status", "patch"),
        ("networking.k8s.io", "networkpolicies", "create"), ("networking.k8s.io", "networkpolicies", "get"),
    }
    assert observed <= operator_calls()


def test_cluster_wide_role_grants_exactly_the_operators_calls() -> None:
    objects = render_objects({})
    assert not find(objects, "Role")
    assert granted(find(objects, "ClusterRole")[0]["rules"]) == operator_calls()


def test_cluster_wide_ha_adds_only_cluster_peering() -> None:
    rules = find(render_objects({"replicas": 2}), "ClusterRole")[0]["rules"]
    assert granted(rules) == operator_calls(peering="clusterkopfpeerings")


@pytest.mark.parametrize("replicas", [1, 2])
def test_watch_namespaces_grants_the_same_calls_per_namespace_and_nothing_cluster_wide(replicas: int) -> None:
    objects = render_objects({"watchNamespaces": ["team-a", "team-b"], "replicas": replicas})
    assert not find(objects, "ClusterRole") and not find(objects, "ClusterRoleBinding")
    roles = find(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    expected = operator_calls(peering="kopfpeerings" if replicas > 1 else None)
    for role in roles:
        assert granted(role["rules"]) == expected
    bindings = find(objects, "RoleBinding")
    assert {(b["metadata"]["namespace"], b["roleRef"]["name"], b["subjects"][0]["name"]) for b in bindings} == {
        ("team-a", "kiln", "kiln"), ("team-b", "kiln", "kiln")}


def test_secrets_are_only_ever_created_never_read() -> None:
    # The operator needs no token back: the Secret is created with the pods, 409 means it exists.
    for values in ({}, {"watchNamespaces": ["team-a"]}):
        objects = render_objects(values)
        for role in find(objects, "ClusterRole") + find(objects, "Role"):
            verbs = {v for g, r, v in granted(role["rules"]) if r == "secrets"}
            assert verbs == {"create"}, role["metadata"]["name"]
    assert ("", "secrets", "get") not in operator_calls()


def test_client_call_derivation_reads_literal_and_planned_kinds() -> None:
    source = (
        'def f(kube, runtime, obj):\n'
        '    kube.get("Secret", "ns", "n")\n'
        '    runtime.kube.patch("TrainingJob", "ns", "n", {}, subresource="status")\n'
        '    kube.create(obj)\n'
        '    kube.delete(kind, "ns", "n")\n'
        '    targets = [("Pod", "x")]\n'
        '    return {"kind": "Service", "apiVersion": "v1"}\n'
    )
    calls = client_calls({Path("x.py"): ast.parse(source)})
    assert calls == {
        ("", "secrets", "get"), ("kiln.dev", "trainingjobs/status", "patch"),
        ("", "services", "create"), ("", "pods", "delete"),
    }


def test_client_call_derivation_follows_kinds_through_helper_parameters() -> None:
    source = (
        'def _exists(kube, kind, name):\n'
        '    return kube.get(kind, "ns", name)\n'
        'def observe(kube):\n'
        '    _exists(kube, "NetworkPolicy", "n")\n'
    )
    assert client_calls({Path("x.py"): ast.parse(source)}) == {("networking.k8s.io", "networkpolicies", "get")}


def test_client_call_derivation_reads_constant_kinds_and_the_child_table() -> None:
    source = (
        'def read(kube, kind, obj):\n'
        '    kube.patch(KIND, "ns", "n", {})\n'
        '    kube.get(kind, "ns", "n")\n'
        '    kube.list(kind, "ns")\n'
        '    kube.create(obj)\n'
    )
    # The Secret (never read back), the Service (by name), pods (listed).
    table = [CHILDREN[0], HEAD_SERVICE, *[row for row in CHILDREN if row.listed][:1]]
    assert {row.kind for row in table} == {"Secret", "Service", "Pod"} and not CHILDREN[0].read_back
    assert client_calls({Path("x.py"): ast.parse(source)}, table) == {
        ("kiln.dev", "trainingjobs", "patch"), ("", "services", "get"), ("", "pods", "list"),
        ("", "secrets", "create"), ("", "services", "create"), ("", "pods", "create"),
    }


def test_every_child_kind_is_created_and_observed() -> None:
    calls = operator_calls()
    for row in CHILDREN:
        group, plural = _group_plural(row.kind)
        assert (group, plural, "create") in calls
        if row.read_back:
            assert (group, plural, "list" if row.listed else "get") in calls
        if row.replaced_when_stale:
            assert (group, plural, "delete") in calls
