"""RBAC: the permissions declared in operator/rbac.py are the ones the code uses, and the chart
grants exactly those, in both watch modes.

The code side is derived by reading the operator's source: every `kube.<verb>(consts.<RESOURCE>, ...)` call
(what KubeApi sends for each verb is read from kube.py too), plus what kopf does for the handlers and helpers
the operator uses. A new API call without a declared permission, or a declared one no code needs, fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fusionrec.operator import consts, rbac

from _chart_helpers import FULLNAME, RELEASE_NAMESPACE, REPO, of_kind, render

OPERATOR = REPO / "operator"
HTTP_TO_VERB = {"GET": "get", "POST": "create", "PATCH": "patch", "DELETE": "delete"}
Grant = tuple[str, str, str]


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def kube_api_verbs() -> dict[str, set[str]]:
    """KubeApi method -> RBAC verbs it can use, read from kube.py (`self.request("GET", ...)`, and for methods
    built on others, e.g. ensure, the verbs of the methods they call)."""
    (cls,) = [node for node in _parse(OPERATOR / "kube.py").body
              if isinstance(node, ast.ClassDef) and node.name == "KubeApi"]
    direct: dict[str, set[str]] = {}
    calls: dict[str, set[str]] = {}
    for method in (n for n in cls.body if isinstance(n, ast.AsyncFunctionDef | ast.FunctionDef)):
        direct[method.name], calls[method.name] = set(), set()
        for node in ast.walk(method):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "self"):
                continue
            if node.func.attr == "request" and node.args and isinstance(node.args[0], ast.Constant):
                # A GET on a collection is RBAC's `list`; KubeApi.list is the one method that sends one.
                verb = HTTP_TO_VERB[node.args[0].value]
                direct[method.name].add("list" if method.name == "list" and verb == "get" else verb)
            else:
                calls[method.name].add(node.func.attr)
    verbs = {name: set(found) for name, found in direct.items()}
    for name in verbs:
        for callee in calls[name]:
            verbs[name] |= direct.get(callee, set())
    return {name: found for name, found in verbs.items() if found and name != "request"}


def _kube_calls(module: ast.Module) -> list[ast.Call]:
    """Calls of the form `<...>.kube.<method>(...)` or `kube.<method>(...)`."""
    found = []
    for node in ast.walk(module):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.attr if isinstance(owner, ast.Attribute) else owner.id if isinstance(owner, ast.Name) else ""
            if name == "kube":
                found.append(node)
    return found


def _resource(call: ast.Call, where: str) -> consts.Resource:
    first = call.args[0] if call.args else None
    if not (isinstance(first, ast.Attribute) and isinstance(first.value, ast.Name) and first.value.id == "consts"):
        raise AssertionError(f"{where}: kube.{call.func.attr}(...) must name its resource as consts.<NAME> so the "
                             "RBAC test can follow it; got " + ast.unparse(call))
    return getattr(consts, first.attr)


def _keyword(call: ast.Call, name: str) -> object:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else ...
    return None


def _calls_to(module: ast.Module, dotted: str) -> bool:
    return any(isinstance(node, ast.Attribute) and ast.unparse(node) == dotted for node in ast.walk(module))


def grants_used_by_the_code() -> set[Grant]:
    verbs_of = kube_api_verbs()
    used: set[Grant] = set()
    modules = {path.name: _parse(path) for path in sorted(OPERATOR.rglob("*.py"))}
    for filename, module in modules.items():
        kube_calls = _kube_calls(module)
        if filename != "rbac.py":  # a resource handed to anything but the client would escape this test
            for node in ast.walk(module):
                if (isinstance(node, ast.Call) and node.args and node not in kube_calls
                        and isinstance(node.args[0], ast.Attribute) and ast.unparse(node.args[0]).startswith("consts.")
                        and isinstance(getattr(consts, node.args[0].attr, None), consts.Resource)):
                    raise AssertionError(f"operator/{filename}:{node.lineno}: {ast.unparse(node)} addresses the API "
                                         "outside KubeApi; teach this test what it needs")
        for call in kube_calls:
            method, where = call.func.attr, f"operator/{filename}:{call.lineno}"
            if method in ("close",):
                continue
            assert method in verbs_of, f"{where}: KubeApi.{method} has no known HTTP verb; map it in this test"
            resource = _resource(call, where)
            subresource = _keyword(call, "subresource")
            assert subresource is not ..., f"{where}: subresource must be a literal"
            plural = f"{resource.plural}/{subresource}" if subresource else resource.plural
            verbs = set(verbs_of[method])
            if method == "ensure" and _keyword(call, "update") is False:
                verbs.discard("patch")  # update=False: an existing object is left as it is
            used |= {(resource.group, plural, verb) for verb in verbs}

    # What kopf does for the operator, from what the operator asks of kopf.
    handlers = modules["handlers.py"]
    fr = consts.FUSIONRECOMMENDERS
    if any(_calls_to(handlers, f"kopf.{kind}") for kind in ("on.create", "on.update", "timer")):
        # kopf lists and watches the resource, patches its annotations (and removes an old finalizer), writes its
        # handler progress through the status subresource; its resource observer watches CRDs.
        used |= {(fr.group, fr.plural, verb) for verb in ("list", "watch", "patch")}
        used.add((fr.group, f"{fr.plural}/status", "patch"))
        used |= {(rbac.CRDS.group, rbac.CRDS.plural, verb) for verb in ("list", "watch")}
    if any(_calls_to(module, "kopf.event") for module in modules.values()):
        used.add(("", "events", "create"))
    if any(_calls_to(module, "kopf.adopt") for module in modules.values()):
        # kopf.adopt sets blockOwnerDeletion: OwnerReferencesPermissionEnforcement wants update on finalizers.
        used.add((fr.group, f"{fr.plural}/finalizers", "update"))
    return used


def test_kube_api_verbs_are_read_from_the_client():
    verbs = kube_api_verbs()
    assert verbs["get"] == {"get"} and verbs["create"] == {"create"}
    assert verbs["patch"] == {"patch"} and verbs["delete"] == {"delete"}
    assert verbs["list"] == {"list"}
    # delete: a child left by a deleted namesake FusionRecommender is removed instead of refused.
    assert verbs["ensure"] == {"get", "create", "patch", "delete"}


def test_declared_permissions_are_exactly_what_the_code_uses():
    used, declared = grants_used_by_the_code(), rbac.grants()
    assert used - declared == set(), f"the code uses permissions rbac.PERMISSIONS lacks: {sorted(used - declared)}"
    assert declared - used == set(), f"rbac.PERMISSIONS grants what no code uses: {sorted(declared - used)}"


def test_every_permission_says_why_and_uses_no_wildcard():
    for permission in rbac.PERMISSIONS:
        assert len(permission.why) > 20, permission
        assert "*" not in (permission.group, permission.resource, *permission.verbs), permission
    assert rbac.grants(cluster_scoped=True) == {("apiextensions.k8s.io", "customresourcedefinitions", "list"),
                                                ("apiextensions.k8s.io", "customresourcedefinitions", "watch")}


def _rule_grants(rules: list[dict]) -> set[Grant]:
    out = set()
    for rule in rules:
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), f"wildcard in {rule}"
                    out.add((group, resource, verb))
    return out


def _bound_to_operator(bindings: list[dict], role_kind: str, role_name: str) -> bool:
    subject = {"kind": "ServiceAccount", "name": FULLNAME, "namespace": RELEASE_NAMESPACE}
    return any(b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role_name}
               and b["subjects"] == [subject] for b in bindings)


def test_watching_all_namespaces_grants_exactly_the_declared_set_cluster_wide(helm):
    docs = render(helm)
    assert of_kind(docs, "Role") == [] and of_kind(docs, "RoleBinding") == []
    cluster_roles = of_kind(docs, "ClusterRole")
    bindings = of_kind(docs, "ClusterRoleBinding")
    for role in cluster_roles:
        assert _bound_to_operator(bindings, "ClusterRole", role["metadata"]["name"]), role["metadata"]["name"]
    granted = set().union(*(_rule_grants(role["rules"]) for role in cluster_roles))
    assert granted == rbac.grants()


@pytest.mark.parametrize("namespaces", [["recs"], ["recs", "shop"]])
def test_watching_named_namespaces_grants_roles_there_and_only_crds_cluster_wide(helm, namespaces):
    docs = render(helm, "watchNamespaces={" + ",".join(namespaces) + "}")
    (cluster_role,) = of_kind(docs, "ClusterRole")
    assert _rule_grants(cluster_role["rules"]) == rbac.grants(cluster_scoped=True)
    assert _bound_to_operator(of_kind(docs, "ClusterRoleBinding"), "ClusterRole", cluster_role["metadata"]["name"])
    roles = of_kind(docs, "Role")
    assert sorted(role["metadata"]["namespace"] for role in roles) == sorted(namespaces)
    for role in roles:
        assert _rule_grants(role["rules"]) == rbac.grants(cluster_scoped=False)
        namespace = role["metadata"]["namespace"]
        bindings = [b for b in of_kind(docs, "RoleBinding") if b["metadata"]["namespace"] == namespace]
        assert _bound_to_operator(bindings, "Role", role["metadata"]["name"])


def test_rbac_create_false_renders_no_rbac(helm):
    docs = render(helm, "rbac.create=false")
    assert not [d for d in docs if d["apiVersion"].startswith("rbac.authorization.k8s.io")]


def test_cluster_scoped_names_carry_the_release_namespace(helm):
    for doc in render(helm):
        if doc["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["name"].startswith(f"{RELEASE_NAMESPACE}-{FULLNAME}"), doc["metadata"]["name"]


def test_an_existing_service_account_is_bound_instead(helm):
    docs = render(helm, "serviceAccount.create=false", "serviceAccount.name=recs-operator")
    assert of_kind(docs, "ServiceAccount") == []
    subjects = [s for b in of_kind(docs, "ClusterRoleBinding") for s in b["subjects"]]
    assert subjects and all(s["name"] == "recs-operator" for s in subjects)
    pod = of_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "recs-operator"
