"""The Kubernetes permissions the operator needs, declared once, each with the reason it is needed.

The Helm chart's Roles grant exactly these, and tests/charts derive the same set from the code (every
KubeApi call in the operator, plus what kopf itself does for the handlers registered), so an API call added
without its permission, or a permission that no code uses any more, fails a test rather than a cluster.

Deliberately not granted:
- namespaces list/watch: when it watches named namespaces, the operator turns kopf's namespace scanning
  off and uses the names it was given; granting it would show the operator every namespace.
- kopfpeerings: the chart runs one standalone replica (`--peering` is for multi-replica set-ups).
"""

from __future__ import annotations

from dataclasses import dataclass

from fusionrec.operator import consts

CRDS = consts.Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
                       namespaced=False)
EVENTS = consts.Resource("", "v1", "events", "Event")


@dataclass(frozen=True)
class Permission:
    """One RBAC rule: `verbs` on `resource` (a plural, or `plural/subresource`) in API group `group`.

    `cluster_scoped` rules are granted through a ClusterRole even when the operator watches only a few
    namespaces, because the object they address is not in any namespace.
    """

    group: str
    resource: str
    verbs: tuple[str, ...]
    why: str
    cluster_scoped: bool = False


def _on(resource: consts.Resource, verbs: tuple[str, ...], why: str, *, subresource: str | None = None
        ) -> Permission:
    name = f"{resource.plural}/{subresource}" if subresource else resource.plural
    return Permission(resource.group, name, verbs, why, cluster_scoped=not resource.namespaced)


PERMISSIONS: tuple[Permission, ...] = (
    _on(consts.FUSIONRECOMMENDERS, ("get", "list", "watch", "patch"),
        "kopf lists and watches them and patches its finalizer and annotations onto them; the controller reads "
        "each one fresh at the start of a reconcile"),
    _on(consts.FUSIONRECOMMENDERS, ("patch",), "the controller's status (phase, conditions, rollout) and kopf's "
        "handler progress are written through the status subresource", subresource="status"),
    _on(consts.FUSIONRECOMMENDERS, ("update",), "children are adopted with blockOwnerDeletion, which API servers "
        "running OwnerReferencesPermissionEnforcement allow only to who may update the owner's finalizers",
        subresource="finalizers"),
    _on(consts.RAYJOBS, ("get", "list", "create", "delete"),
        "training runs as a RayJob; a running job is never rewritten, and is deleted when its version is "
        "superseded or falls out of the kept versions (listed by label)"),
    _on(consts.RAYSERVICES, ("get", "create", "patch", "delete"),
        "serving is one RayService whose serveConfigV2 weights each rollout step patches; it goes with its owner, "
        "and one left by a deleted FusionRecommender of the same name is deleted"),
    _on(consts.CONFIGMAPS, ("get", "list", "create", "delete"),
        "the manifest a training job reads, written once per version, deleted with its version's RayJob"),
    _on(consts.SERVICES, ("get", "create", "patch", "delete"),
        "the serving metrics Service, created and removed with spec.monitoring.serviceMonitor"),
    _on(consts.SERVICE_MONITORS, ("get", "create", "patch", "delete"),
        "the ServiceMonitor on that Service, created and removed with spec.monitoring.serviceMonitor"),
    _on(consts.SECRETS, ("get",),
        "spec.storage.credentialsSecret is checked to exist before a RayJob needs it; only its metadata is asked "
        "for (the pods receive the Secret itself through envFrom, resolved by the kubelet)"),
    _on(EVENTS, ("create",), "training, rollout and spec problems are posted as Events on the FusionRecommender"),
    _on(CRDS, ("list", "watch"),
        "kopf watches CustomResourceDefinitions to notice its resource kinds being installed or removed"),
)


def grants(permissions: tuple[Permission, ...] = PERMISSIONS, *, cluster_scoped: bool | None = None
           ) -> set[tuple[str, str, str]]:
    """Every (group, resource, verb) granted; `cluster_scoped` picks one kind of rule, None takes all."""
    return {(p.group, p.resource, verb) for p in permissions
            if cluster_scoped is None or p.cluster_scoped == cluster_scoped for verb in p.verbs}
