"""Istio's facts about a control plane, in one place.

A control plane is one istiod revision in the Istio namespace: its Deployment
`istiod` (or `istiod-REV`), its mesh config in ConfigMap `istio` (`istio-REV`,
key `mesh`) and its injector settings in ConfigMap `istio-sidecar-injector`
(`istio-sidecar-injector-REV`). Istio's charts give every object of a revision
the same `-REV` suffix and the label `istio.io/rev: REV` (`default` for the
unnamed one). The mesh root namespace, where mesh-wide policies such as the
PeerAuthentication without a selector live, is `rootNamespace` of the mesh
config, and the istiod namespace when it is not set.

`find_control_planes` is the one lookup of the istiod Deployments that every
command uses; `planned_control_plane` is the one an `install` is about to make,
from the istiod chart's values. The PeerAuthentication facts (served API
version, the mesh-wide policies and the mode Istio applies) are here too, so
that the patch step and `status` judge mTLS the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from kymamesh.adapters import yamlfast
from kymamesh.adapters.cluster import Cluster, Obj, Ref
from kymamesh.errors import PreconditionError, UsageError
from kymamesh.istio.versions import Version, image_version

ISTIOD = "istiod"
ISTIOD_SELECTOR = "app=istiod"
DISCOVERY_CONTAINER = "discovery"
REVISION_LABEL = "istio.io/rev"
DEFAULT_REVISION = "default"
MESH_CONFIGMAP = "istio"
INJECTOR_CONFIGMAP = "istio-sidecar-injector"
MESH_KEY = "mesh"

# Labels and annotations of injection, as Istio's injector reads and writes them.
INJECTION_LABEL = "istio-injection"  # on a namespace: enabled (default revision) or disabled
INJECT_LABEL = "sidecar.istio.io/inject"  # on a Pod: "true" opts in
STATUS_ANNOTATION = "sidecar.istio.io/status"  # on an injected Pod: JSON, with its revision
TEMPLATES_ANNOTATION = "inject.istio.io/templates"  # "gateway" for gateway Pods

PEER_AUTHENTICATION = "PeerAuthentication"
SECURITY_API_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")

_APPS = "apps/v1"
_REVISION = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class ControlPlane:
    """One istiod revision: the names of its objects and its mesh root namespace.

    `suffix` is what Istio appends to every name of the revision: "" for the
    default one, "-REV" otherwise. `deployment` is the live istiod Deployment, None
    for a control plane that is only planned (an `install` before phase 1).
    """

    namespace: str
    revision: str = DEFAULT_REVISION
    root_namespace: str = ""
    suffix: str = ""
    deployment: Obj | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.root_namespace:
            object.__setattr__(self, "root_namespace", self.namespace)

    @classmethod
    def named(cls, namespace: str, revision: str, root_namespace: str = "") -> ControlPlane:
        """The control plane of a revision as Istio's charts name it."""
        return cls(namespace, revision, root_namespace, suffix_of(revision))

    @property
    def installed(self) -> bool:
        return self.deployment is not None

    @property
    def istiod(self) -> str:
        return ISTIOD + self.suffix

    @property
    def mesh_configmap(self) -> str:
        return MESH_CONFIGMAP + self.suffix

    @property
    def injector_configmap(self) -> str:
        return INJECTOR_CONFIGMAP + self.suffix

    def configmap(self, base: str) -> Ref:
        """The Ref of this revision's ConfigMap `base` (`istio`, `istio-sidecar-injector`)."""
        return Ref("v1", "ConfigMap", base + self.suffix, self.namespace)

    @property
    def istiod_ref(self) -> Ref:
        return Ref(_APPS, "Deployment", self.istiod, self.namespace)

    def describe(self) -> str:
        return f"revision {self.revision} (Deployment {self.namespace}/{self.istiod})"

    def to_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "namespace": self.namespace,
            "rootNamespace": self.root_namespace,
            "meshConfigMap": self.mesh_configmap,
            "injectorConfigMap": self.injector_configmap,
        }


def suffix_of(revision: str) -> str:
    return "" if revision in ("", DEFAULT_REVISION) else f"-{revision}"


def check_revision(revision: str, origin: str) -> None:
    """A revision becomes part of object names and label values: a DNS label."""
    if revision and (len(revision) > 63 or not _REVISION.match(revision)):
        raise UsageError(
            f"istiod revision {revision!r} (from {origin}) is not a valid revision name",
            hint="use lower-case letters, digits and '-', e.g. canary or 1-30-3 (at most 63)",
        )


def istiod_deployments(cluster: Cluster, namespace: str) -> list[Obj]:
    """Every istiod Deployment in the namespace, of any revision."""
    return cluster.list(_APPS, "Deployment", namespace, label_selector=ISTIOD_SELECTOR)


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def revision_of(deployment: Mapping[str, Any]) -> str:
    return labels_of(deployment).get(REVISION_LABEL) or DEFAULT_REVISION


def _suffix_of_deployment(deployment: Mapping[str, Any], revision: str) -> str:
    """The name suffix, read from the Deployment's name (`istiod-canary` -> `-canary`)."""
    name = str((deployment.get("metadata") or {}).get("name") or "")
    if name == ISTIOD or name.startswith(ISTIOD + "-"):
        return name[len(ISTIOD) :]
    return suffix_of(revision)


def parse_mesh(text: str | None) -> dict[str, Any] | None:
    """The mesh config of a ConfigMap's `mesh` key; None when it is not a YAML map."""
    if not text:
        return {}
    try:
        mesh = yamlfast.load(text)
    except yaml.YAMLError:
        return None
    if mesh is None:
        return {}
    return mesh if isinstance(mesh, dict) else None


def root_namespace_of(mesh: Mapping[str, Any] | None, namespace: str) -> str:
    root = (mesh or {}).get("rootNamespace")
    return str(root) if isinstance(root, str) and root else namespace


def control_plane_of(cluster: Cluster, deployment: Obj) -> ControlPlane:
    """The control plane of a live istiod Deployment, with the root namespace of its mesh config."""
    namespace = str(deployment["metadata"].get("namespace") or "")
    revision = revision_of(deployment)
    suffix = _suffix_of_deployment(deployment, revision)
    cm = cluster.get(Ref("v1", "ConfigMap", MESH_CONFIGMAP + suffix, namespace))
    mesh = parse_mesh(((cm or {}).get("data") or {}).get(MESH_KEY))
    return ControlPlane(
        namespace=namespace,
        revision=revision,
        root_namespace=root_namespace_of(mesh, namespace),
        suffix=suffix,
        deployment=deployment,
    )


def find_control_planes(cluster: Cluster, namespace: str) -> list[ControlPlane]:
    """Every control plane revision in the namespace: the default one first, then by name."""
    planes = [control_plane_of(cluster, d) for d in istiod_deployments(cluster, namespace)]
    return sorted(planes, key=lambda p: (p.suffix != "", p.revision, p.istiod))


def planned_control_plane(namespace: str, istiod_values: Mapping[str, Any]) -> ControlPlane:
    """The control plane the istiod chart makes from these values (`revision`,
    `meshConfig.rootNamespace`, `global.istioNamespace`), as Istio's chart names it."""
    revision = istiod_values.get("revision") or ""
    if not isinstance(revision, str):
        raise UsageError(
            f"istiod.revision must be a name (found {revision!r})",
            hint="e.g. --set istiod.revision=canary",
        )
    check_revision(revision, "istiod.revision")
    mesh = istiod_values.get("meshConfig")
    glob = istiod_values.get("global")
    default_root = namespace
    if isinstance(glob, Mapping) and isinstance(glob.get("istioNamespace"), str):
        default_root = str(glob["istioNamespace"]) or namespace
    root = root_namespace_of(mesh if isinstance(mesh, Mapping) else None, default_root)
    return ControlPlane(
        namespace=namespace,
        revision=revision or DEFAULT_REVISION,
        root_namespace=root,
        suffix=suffix_of(revision),
    )


def injection_probe_pod(namespace: str, revision: str) -> Obj:
    """A Pod that the injector webhooks of `revision` are called for, to be created as a
    dry run only: opted in with sidecar.istio.io/inject (which an injector with `policy:
    disabled` needs), and for a named revision labelled istio.io/rev. Make it in a
    namespace `probe_namespace` chose, where those labels decide."""
    labels = {INJECT_LABEL: "true"}
    if revision != DEFAULT_REVISION:
        labels[REVISION_LABEL] = revision
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "kymamesh-injection-probe-",
            "namespace": namespace,
            "labels": labels,
        },
        "spec": {"containers": [{"name": "probe", "image": "kymamesh.invalid/probe:1"}]},
    }


# Namespaces whose Pods Istio's injector never injects, whatever their labels.
INJECTOR_IGNORES = frozenset(
    {"kube-system", "kube-public", "kube-node-lease", "local-path-storage"}
)


def probe_suits(labels: Mapping[str, str], revision: str) -> bool:
    """Whether a probe Pod for `revision` in a namespace with these labels reaches that
    revision's webhooks (for `default`: the default tag's, or the unnamed revision's): a
    namespace label `istio-injection` would send it to the default revision's namespace
    webhook (or, `disabled`, to none), and an `istio.io/rev` label to that revision's."""
    if INJECTION_LABEL in labels:
        return False
    found = labels.get(REVISION_LABEL)
    return found is None or (revision != DEFAULT_REVISION and found == revision)


def probe_namespace(namespaces: Iterable[Mapping[str, Any]], revision: str, preferred: str) -> str:
    """The namespace to make the probe Pod of `revision` in: `preferred` (the Istio
    namespace), then `default`, then any other by name, the first whose labels let the
    answer prove something (`probe_suits`), leaving out the namespaces Istio's injector
    ignores and those being deleted. PreconditionError when none does."""
    usable = [
        n
        for n in namespaces
        if (n.get("status") or {}).get("phase") != "Terminating"  # refuses new Pods
        and str((n.get("metadata") or {}).get("name")) not in INJECTOR_IGNORES
    ]
    metas = [n.get("metadata") or {} for n in usable]
    by_name = {str(m.get("name")): dict(m.get("labels") or {}) for m in metas}
    order = [preferred, "default", *sorted(by_name)]
    for name in order:
        if name in by_name and probe_suits(by_name[name], revision):
            return name
    raise PreconditionError(
        f"no namespace where a test Pod would be sent to revision {revision}'s injector: "
        "every namespace carries an istio-injection or istio.io/rev label",
        hint="remove the istio-injection label from one namespace (e.g. default), then re-run",
    )


def root_namespaces(planes: Iterable[ControlPlane]) -> list[str]:
    """The distinct mesh root namespaces of these control planes, in their order."""
    return list(dict.fromkeys(p.root_namespace for p in planes))


def _containers(deployment: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    spec = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    return list(spec.get("containers") or [])


def discovery_image(deployment: Mapping[str, Any]) -> str | None:
    """The image of istiod's `discovery` container; None when there is none."""
    for container in _containers(deployment):
        if container.get("name") == DISCOVERY_CONTAINER and container.get("image"):
            return str(container["image"])
    return None


def older_istiod_pods(
    deployment: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]
) -> list[str]:
    """The Pods of an istiod Deployment that run another istiod image than its template
    (an older version, during a rollout or while terminating). They watch the same
    injection ConfigMap and may still answer the webhook, rendering a newer template
    with an older istiod."""
    wanted = discovery_image(deployment)
    if wanted is None:
        return []
    older = []
    for pod in pods:
        spec = pod.get("spec") or {}
        images = {
            str(c.get("image"))
            for c in spec.get("containers") or []
            if c.get("name") == DISCOVERY_CONTAINER
        }
        if images and wanted not in images:
            older.append(str((pod.get("metadata") or {}).get("name") or "?"))
    return sorted(older)


def istiod_image(deployment: Mapping[str, Any]) -> str:
    """The image that tells istiod's version: its `discovery` container's, else the first
    container's ("" when none)."""
    image = discovery_image(deployment)
    if image:
        return image
    containers = _containers(deployment)
    return str(containers[0].get("image") or "") if containers else ""


def istiod_version(deployment: Mapping[str, Any]) -> Version | None:
    """istiod's Istio version from its image; None when the image does not tell it."""
    image = istiod_image(deployment)
    if not image:
        return None
    try:
        return image_version(image)
    except PreconditionError:
        return None


# -- PeerAuthentication --------------------------------------------------------------


def served_peer_authentication(cluster: Cluster) -> str | None:
    """The newest served PeerAuthentication version, or None when the CRD is not served."""
    for api_version in SECURITY_API_VERSIONS:
        if cluster.serves(api_version, PEER_AUTHENTICATION):
            return api_version
    return None


def mtls_mode_of(policy: Mapping[str, Any]) -> str:
    """The policy's mesh-level mode as written (UNSET when it has none)."""
    mtls = (policy.get("spec") or {}).get("mtls") or {}
    return str(mtls.get("mode") or "UNSET").upper()


def is_mesh_wide(policy: Mapping[str, Any]) -> bool:
    """No selector (or one that selects nothing in particular): applies to the whole mesh."""
    selector = (policy.get("spec") or {}).get("selector") or {}
    return not (isinstance(selector, Mapping) and selector.get("matchLabels"))


def mesh_wide_policies(cluster: Cluster, api_version: str, root_namespace: str) -> list[Obj]:
    """The mesh-wide PeerAuthentications of a root namespace, oldest first (Istio applies
    the oldest one)."""
    policies = cluster.list(api_version, PEER_AUTHENTICATION, root_namespace)
    return sorted(
        (p for p in policies if is_mesh_wide(p)),
        key=lambda p: (str(p["metadata"].get("creationTimestamp") or ""), p["metadata"]["name"]),
    )


def effective_mtls(policies: list[Obj]) -> tuple[str, Obj | None]:
    """The mesh-wide mode Istio applies, and the policy it comes from (None: Istio's
    default, PERMISSIVE). At the root, UNSET inherits that default."""
    if not policies:
        return "PERMISSIVE", None
    mode = mtls_mode_of(policies[0])
    return ("PERMISSIVE" if mode == "UNSET" else mode), policies[0]
