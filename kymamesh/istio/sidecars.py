"""Sidecars of running Pods: does a Pod have one, is it out of date, which workload owns it.

The analysis is pure functions over Pod dicts (as the API returns them), so that
it can be tested without a cluster; the few helpers at the end read what they
need through the cluster adapter. Used by `restart-proxies`, `inject-namespace`
and `status`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import yaml

from kymamesh.adapters import yamlfast
from kymamesh.errors import PreconditionError
from kymamesh.istio.controlplane import (
    DEFAULT_REVISION,
    INJECT_LABEL,
    INJECTOR_CONFIGMAP,
    STATUS_ANNOTATION,
    TEMPLATES_ANNOTATION,
    istiod_version,
    revision_of,
)
from kymamesh.istio.revisions import sidecar_revision
from kymamesh.istio.versions import Version, image_version
from kymamesh.units import same_quantity
from kymamesh.workloads.rollouts import REPLICA_SET, RESTARTED_AT

if TYPE_CHECKING:
    from kymamesh.adapters.cluster import Cluster, Obj
    from kymamesh.istio.controlplane import ControlPlane

PROXY_CONTAINER = "istio-proxy"
# A Pod that names its own proxy image: the injector gives it that image, whatever the
# version of istiod; kymamesh leaves such Pods alone.
PROXY_IMAGE_ANNOTATION = "sidecar.istio.io/proxyImage"

# Per-Pod annotations with which the injector overrides global.proxy.resources.
RESOURCE_ANNOTATIONS: Mapping[tuple[str, str], str] = {
    ("requests", "cpu"): "sidecar.istio.io/proxyCPU",
    ("requests", "memory"): "sidecar.istio.io/proxyMemory",
    ("limits", "cpu"): "sidecar.istio.io/proxyCPULimit",
    ("limits", "memory"): "sidecar.istio.io/proxyMemoryLimit",
}
RESTARTABLE_KINDS = ("Deployment", "StatefulSet", "DaemonSet")  # by a template annotation
_APPS = "apps/v1"

# -- one Pod -------------------------------------------------------------------


def proxy_container(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The `istio-proxy` container, a regular one or a native sidecar (init container)."""
    spec = pod.get("spec") or {}
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            if container.get("name") == PROXY_CONTAINER:
                return dict(container)
    return None


def has_sidecar(pod: Mapping[str, Any]) -> bool:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return proxy_container(pod) is not None or STATUS_ANNOTATION in annotations


def is_running(pod: Mapping[str, Any]) -> bool:
    """A Pod that counts: not being deleted, not finished."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def proxy_version(pod: Mapping[str, Any]) -> Version | None:
    """The Istio version of the sidecar image; None when unknown (no container, odd tag)."""
    container = proxy_container(pod)
    if container is None or not container.get("image"):
        return None
    try:
        return image_version(str(container["image"]))
    except PreconditionError:
        return None


def wanted_resources(
    global_resources: Mapping[str, Any], annotations: Mapping[str, str]
) -> dict[str, dict[str, str]]:
    """What the injector gives this Pod's sidecar: the global values, then its annotations.

    A request left unset takes the limit's value, as the API server defaults it.
    """
    wanted: dict[str, dict[str, str]] = {"requests": {}, "limits": {}}
    for kind in ("requests", "limits"):
        for name, value in (global_resources.get(kind) or {}).items():
            if value is not None:
                wanted[kind][str(name)] = str(value)
    for (kind, name), annotation in RESOURCE_ANNOTATIONS.items():
        if annotations.get(annotation):
            wanted[kind][name] = str(annotations[annotation])
    for name, value in wanted["limits"].items():
        wanted["requests"].setdefault(name, value)
    return wanted


def resource_differences(
    container: Mapping[str, Any], wanted: Mapping[str, Mapping[str, str]]
) -> list[str]:
    """Each wanted request or limit the container lacks: 'limits.memory 512Mi, wanted 1Gi'.

    Only what the injector sets is compared; more on the container (e.g. from a
    LimitRange) is not a difference.
    """
    live = container.get("resources") or {}
    found = []
    for kind in ("requests", "limits"):
        for name, value in sorted((wanted.get(kind) or {}).items()):
            have = (live.get(kind) or {}).get(name)
            if have is None:
                found.append(f"{kind}.{name} unset, wanted {value}")
            elif not same_quantity(have, value):
                found.append(f"{kind}.{name} {have}, wanted {value}")
    return found


def _sidecar_template(annotations: Mapping[str, Any]) -> bool:
    """Injected with the sidecar template, which takes global.proxy.resources.

    Gateways use the `gateway` template: their resources come from their own chart.
    """
    templates = annotations.get(TEMPLATES_ANNOTATION)
    if not templates:
        return True
    return "sidecar" in [t.strip() for t in str(templates).split(",")]


# -- the mesh config a proxy was started with ------------------------------------

PROXY_CONFIG_ENV = "PROXY_CONFIG"  # the injector's JSON of the Pod's ProxyConfig
PROXY_CONFIG_ANNOTATION = "proxy.istio.io/config"  # a Pod's own ProxyConfig overrides
DNS_CAPTURE = "ISTIO_META_DNS_CAPTURE"
# ProxyConfig fields a proxy reads only when it starts, and which the mesh file sets; the
# gateway topology matters to gateways only (a sidecar is not restarted for it)
_PROXY_CONFIG_FIELDS = ("gatewayTopology", "proxyStatsMatcher")
_GATEWAY_ONLY = ("gatewayTopology",)
_PROMETHEUS_PORT = "prometheus.io/port"
_PROMETHEUS_SCRAPE = "prometheus.io/scrape"
_STATUS_PORT = 15020


@dataclass(frozen=True)
class MeshProxyConfig:
    """What a revision's mesh config gives each proxy it injects now (the parts a running
    proxy keeps until its Pod is re-created)."""

    default_config: Mapping[str, Any]
    # enablePrometheusMerge as the mesh config sets it; None when it does not say (Istio's
    # default, on): then the Pods' annotations are not judged
    prometheus_merge: bool | None = None


def mesh_proxy_config(mesh: Mapping[str, Any]) -> MeshProxyConfig:
    default_config = mesh.get("defaultConfig")
    merge = mesh.get("enablePrometheusMerge")
    return MeshProxyConfig(
        default_config=default_config if isinstance(default_config, Mapping) else {},
        prometheus_merge=merge if isinstance(merge, bool) else None,
    )


def _sparse(value: Any) -> Any:
    """A ProxyConfig value without its empty parts (the JSON the injector writes leaves out
    zeros, false and empties; a mesh config may spell them)."""
    if isinstance(value, Mapping):
        kept = {str(k): _sparse(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, 0, False, "", [], {})}
    if isinstance(value, list):
        return [_sparse(v) for v in value]
    return value


def _env_value(container: Mapping[str, Any], name: str) -> str | None:
    for entry in container.get("env") or []:
        if entry.get("name") == name:
            return str(entry.get("value") or "")
    return None


def mesh_differences(
    pod: Mapping[str, Any], container: Mapping[str, Any], wanted: MeshProxyConfig
) -> list[str]:
    """The mesh config settings this sidecar started without ([] when current).

    Only a sidecar the injector wrote its proxy config into (env PROXY_CONFIG, as Istio's
    templates do) is judged; the proxy config only when the Pod does not override it
    itself (annotation proxy.istio.io/config).
    """
    reasons = []
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    raw = _env_value(container, PROXY_CONFIG_ENV)
    if raw is not None and not annotations.get(PROXY_CONFIG_ANNOTATION):
        try:
            started = json.loads(raw) if raw.strip() else {}
        except ValueError:
            started = None
        if isinstance(started, Mapping):
            sidecar = _sidecar_template(annotations)
            for name in _PROXY_CONFIG_FIELDS:
                if sidecar and name in _GATEWAY_ONLY:
                    continue
                if _sparse(started.get(name)) != _sparse(wanted.default_config.get(name)):
                    reasons.append(f"proxy config {name} differs from the mesh config")
            meta = wanted.default_config.get("proxyMetadata") or {}
            if DNS_CAPTURE in meta:
                have = str((started.get("proxyMetadata") or {}).get(DNS_CAPTURE) or "false")
                if have.lower() != str(meta[DNS_CAPTURE]).lower():
                    reasons.append(f"{DNS_CAPTURE} {have}, mesh config {meta[DNS_CAPTURE]}")
    if (
        wanted.prometheus_merge is True
        and raw is not None  # injected by an istiod whose template writes the proxy config
        and str(annotations.get(_PROMETHEUS_SCRAPE, "true")).lower() != "false"
        and str(annotations.get(_PROMETHEUS_PORT)) != str(_STATUS_PORT)
        and _sidecar_template(annotations)
    ):
        reasons.append("Prometheus merge is on, the sidecar was injected without it")
    return reasons


def outdated_reasons(
    pod: Mapping[str, Any],
    istiod_versions: Mapping[str, Version],
    proxy_resources: Mapping[str, Mapping[str, Any]],
    proxy_images: Mapping[str, str] | None = None,
    mesh: Mapping[str, MeshProxyConfig] | None = None,
) -> list[str]:
    """Why this Pod's sidecar is out of date ([] when current, when it has none, or when
    the injector did not put it there: no `sidecar.istio.io/status`).

    `istiod_versions` maps a revision to its istiod version; `proxy_resources` maps
    a revision to `global.proxy.resources` of its injector (a revision without an
    entry: resources not compared); `proxy_images` a revision to the image repository
    its injector gives (`global.hub`/`global.proxy.image`; one from another registry is
    outdated, e.g. a hub moved off a switched-off registry). The Pod's revision is the
    one that injected it. `mesh` maps a revision to what its mesh config gives proxies
    (`mesh_differences`; none: not compared).
    """
    container = proxy_container(pod)
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if container is None or STATUS_ANNOTATION not in annotations:
        return []  # no sidecar, or one the injector did not put there: not its to renew
    if annotations.get(PROXY_IMAGE_ANNOTATION):
        return []  # the Pod chose its proxy: the injector gives it that one, left alone
    reasons = []
    revision = sidecar_revision(pod) or DEFAULT_REVISION
    istiod = istiod_versions.get(revision) or istiod_versions.get(DEFAULT_REVISION)
    version = proxy_version(pod)
    if istiod is not None and version is not None and version != istiod:
        reasons.append(f"istio-proxy {version}, istiod {istiod}")
    wanted_image = (proxy_images or {}).get(revision)
    repository = image_repository(str(container.get("image") or ""))
    if wanted_image and repository != wanted_image:
        reasons.append(f"image {repository}, the injector gives {wanted_image}")
    resources = proxy_resources.get(revision)
    if resources is not None and _sidecar_template(annotations):
        wanted = wanted_resources(resources, annotations)
        differences = resource_differences(container, wanted)
        if differences:
            reasons.append("resources differ: " + "; ".join(differences))
    expected = (mesh or {}).get(revision)
    if expected is not None:
        reasons += mesh_differences(pod, container, expected)
    return reasons


# -- owners ----------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Workload:
    """What owns a Pod: a Deployment, StatefulSet or DaemonSet, a ReplicaSet of its own,
    or something kymamesh does not restart (a Job, a bare Pod, another controller)."""

    kind: str
    namespace: str
    name: str

    @property
    def restartable(self) -> bool:
        """Restarted by kymamesh: by a template annotation, or (a ReplicaSet) by deleting
        its outdated Pods, which it re-creates."""
        return self.kind in RESTARTABLE_KINDS or self.kind == REPLICA_SET

    @property
    def by_deleting_pods(self) -> bool:
        return self.kind == REPLICA_SET

    @property
    def api_version(self) -> str:
        return _APPS if self.restartable else "v1"

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


def _controller(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for owner in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if owner.get("controller"):
            return dict(owner)
    return None


def owner_workload(
    pod: Mapping[str, Any], replica_sets: Mapping[tuple[str, str], Mapping[str, Any]]
) -> Workload:
    """The workload to restart for this Pod (a bare Pod is its own workload)."""
    meta = pod.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    owner = _controller(pod)
    if owner is None:
        return Workload("Pod", namespace, str(meta.get("name")))
    kind, name = str(owner.get("kind")), str(owner.get("name"))
    if kind == REPLICA_SET:
        replica_set = replica_sets.get((namespace, name))
        parent = _controller(replica_set) if replica_set else None
        if parent is not None:  # a Deployment's, or another controller's (e.g. a Rollout)
            return Workload(str(parent.get("kind")), namespace, str(parent.get("name")))
    return Workload(kind, namespace, name)


@dataclass
class OutdatedWorkload:
    workload: Workload
    reasons: list[str] = field(default_factory=list)
    oldest_pod: datetime | None = None  # creation of its oldest out-of-date Pod
    versions: set[Version] = field(default_factory=set)  # sidecar versions found
    pods: list[str] = field(default_factory=list)  # names of its out-of-date Pods, sorted
    # the restartedAt annotation each out-of-date Pod was made with (None: without one)
    pod_restarts: list[str | None] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.workload} ({'; '.join(self.reasons)})"

    def add(self, pod: Mapping[str, Any], reasons: Iterable[str]) -> None:
        """Count one of its out-of-date Pods, and why it is out of date."""
        for reason in reasons:
            if reason not in self.reasons:
                self.reasons.append(reason)
        version = proxy_version(pod)
        if version is not None:
            self.versions.add(version)
        meta = pod.get("metadata") or {}
        name = str(meta.get("name"))
        if name not in self.pods:
            self.pods.append(name)  # sorted by `group_by_workload`
        self.pod_restarts.append((meta.get("annotations") or {}).get(RESTARTED_AT))
        created = _created(pod)
        if created is not None and (self.oldest_pod is None or created < self.oldest_pod):
            self.oldest_pod = created


def _created(obj: Mapping[str, Any]) -> datetime | None:
    raw = (obj.get("metadata") or {}).get("creationTimestamp")
    if not raw:
        return None
    if isinstance(raw, datetime):
        return raw
    try:
        return datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        return None


def outdated_workloads(
    pods: Iterable[Mapping[str, Any]],
    replica_sets: Mapping[tuple[str, str], Mapping[str, Any]],
    istiod_versions: Mapping[str, Version],
    proxy_resources: Mapping[str, Mapping[str, Any]],
    proxy_images: Mapping[str, str] | None = None,
    mesh: Mapping[str, MeshProxyConfig] | None = None,
) -> list[OutdatedWorkload]:
    """Workloads with at least one running Pod whose sidecar is out of date, sorted."""
    judged = (
        (pod, outdated_reasons(pod, istiod_versions, proxy_resources, proxy_images, mesh))
        for pod in pods
        if is_running(pod)
    )
    return group_by_workload(((p, r) for p, r in judged if r), replica_sets)


def group_by_workload(
    judged: Iterable[tuple[Mapping[str, Any], list[str]]],
    replica_sets: Mapping[tuple[str, str], Mapping[str, Any]],
) -> list[OutdatedWorkload]:
    """Out-of-date Pods, each with why, as the workloads that own them, sorted."""
    found: dict[Workload, OutdatedWorkload] = {}
    for pod, reasons in judged:
        workload = owner_workload(pod, replica_sets)
        found.setdefault(workload, OutdatedWorkload(workload)).add(pod, reasons)
    entries = sorted(found.values(), key=lambda e: _sort_key(e.workload))
    for entry in entries:
        entry.pods.sort()
    return entries


def _sort_key(workload: Workload) -> tuple[str, str, str]:
    return (workload.kind, workload.namespace, workload.name)


# -- a workload's Pod template -----------------------------------------------------


def template_proxy_version(workload: Mapping[str, Any]) -> Version | None:
    """The version of an `istio-proxy` image written into a workload's Pod template itself.

    Injection fills in `image: auto`; a concrete image there is pinned by the
    workload, so a restart brings the same sidecar back.
    """
    template = (workload.get("spec") or {}).get("template") or {}
    return proxy_version({"spec": template.get("spec") or {}})


@dataclass(frozen=True)
class WorkloadSidecars:
    """How many running Pods of a workload have a sidecar."""

    workload: Workload
    pods: int
    with_sidecar: int
    pod_names_without: tuple[str, ...] = ()
    newest_without: datetime | None = None  # creation of its newest Pod without a sidecar
    labelled: int = 0  # Pods labelled sidecar.istio.io/inject=true

    @property
    def without(self) -> int:
        return self.pods - self.with_sidecar


def _labels_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return (obj.get("metadata") or {}).get("labels") or {}


def sidecar_coverage(
    pods: Iterable[Mapping[str, Any]],
    replica_sets: Mapping[tuple[str, str], Mapping[str, Any]],
) -> list[WorkloadSidecars]:
    """Per workload, running Pods and how many of them have a sidecar."""
    counts: dict[Workload, list[Mapping[str, Any]]] = {}
    for pod in pods:
        if is_running(pod):
            counts.setdefault(owner_workload(pod, replica_sets), []).append(pod)
    result = []
    for workload in sorted(counts):
        members = counts[workload]
        without = [p for p in members if not has_sidecar(p)]
        created = [c for c in (_created(p) for p in without) if c is not None]
        result.append(
            WorkloadSidecars(
                workload=workload,
                pods=len(members),
                with_sidecar=len(members) - len(without),
                pod_names_without=tuple(
                    sorted(str((p.get("metadata") or {}).get("name")) for p in without)
                ),
                newest_without=max(created) if created else None,
                labelled=sum(1 for p in members if _labels_of(p).get(INJECT_LABEL) == "true"),
            )
        )
    return result


def image_repository(image: str) -> str:
    """An image reference without its tag and digest (`docker.io/istio/proxyv2`)."""
    ref = image.split("@", 1)[0]
    head, _, last = ref.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def injector_proxy_image(configmap: Mapping[str, Any] | None) -> str | None:
    """The image repository the injector gives sidecars: `global.proxy.image` when it is
    a full reference, else `global.hub`/`global.proxy.image` (None when not known)."""
    if not configmap:
        return None
    try:
        values = json.loads((configmap.get("data") or {}).get("values") or "")
    except ValueError:
        return None
    glob = values.get("global") if isinstance(values, dict) else None
    if not isinstance(glob, dict):
        return None
    image = str((glob.get("proxy") or {}).get("image") or "")
    hub = str(glob.get("hub") or "").rstrip("/")
    if "/" in image:
        return image_repository(image)
    if image and hub:
        return f"{hub}/{image}"
    return None


def injector_proxy_resources(configmap: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """`global.proxy.resources` from the injector ConfigMap's `values` JSON (None if absent)."""
    if not configmap:
        return None
    raw = (configmap.get("data") or {}).get("values")
    if not raw:
        return None
    try:
        values = json.loads(raw)
    except ValueError:
        return None
    resources = ((values.get("global") or {}).get("proxy") or {}).get("resources")
    return resources if isinstance(resources, Mapping) else None


def istiod_revisions(deployments: Iterable[Mapping[str, Any]]) -> dict[str, Version]:
    """Revision -> Istio version of each istiod Deployment (from its discovery image)."""
    versions: dict[str, Version] = {}
    for deployment in deployments:
        version = istiod_version(deployment)
        if version is None:
            continue
        if (deployment.get("metadata") or {}).get("name") == "istiod":
            versions.setdefault(DEFAULT_REVISION, version)
        versions[revision_of(deployment)] = version
    return versions


# -- reading the cluster ---------------------------------------------------------


def list_pods(cluster: Cluster, namespace: str | None = None) -> list[Obj]:
    """Every Pod (of a namespace), each cut to what kymamesh reads of it (`slim_pod`),
    read a page at a time so that a cluster of many Pods never sits in memory whole;
    within a read-only run (`Cluster.snapshot`) read once. Callers must not change them."""

    def read() -> list[Obj]:
        return [slim_pod(p) for page in cluster.list_pages("v1", "Pod", namespace) for p in page]

    return cluster.remembered(("pods", namespace or ""), read)


_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_CONTAINER_FIELDS = ("name", "image", "resources", "restartPolicy")


def _slim_container(container: Mapping[str, Any]) -> dict[str, Any]:
    kept = {k: container[k] for k in _CONTAINER_FIELDS if k in container}
    if container.get("name") == PROXY_CONTAINER and "env" in container:
        kept["env"] = container["env"]  # PROXY_CONFIG: the mesh config it started with
    return kept


def slim_pod(pod: Mapping[str, Any]) -> Obj:
    """What kymamesh reads of a Pod: its metadata (without managedFields and kubectl's
    last-applied copy), its containers' names, images and resources (and the sidecar's
    environment) and its phase. A Pod of a few kilobytes becomes a few hundred bytes."""
    meta = {k: v for k, v in (pod.get("metadata") or {}).items() if k != "managedFields"}
    annotations = meta.get("annotations")
    if annotations and _LAST_APPLIED in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != _LAST_APPLIED}
    spec = pod.get("spec") or {}
    phase = (pod.get("status") or {}).get("phase")
    return {
        "apiVersion": pod.get("apiVersion", "v1"),
        "kind": pod.get("kind", "Pod"),
        "metadata": meta,
        "spec": {
            key: [_slim_container(c) for c in spec[key]]
            for key in ("containers", "initContainers")
            if spec.get(key)
        },
        "status": {"phase": phase} if phase else {},
    }


def replica_set_index(cluster: Cluster, namespace: str | None = None) -> dict[tuple[str, str], Obj]:
    """ReplicaSets by (namespace, name), to find the Deployment behind a Pod: their metadata
    alone (the owner references), which is a fraction of each ReplicaSet."""
    index = {}
    for rs in cluster.list(_APPS, "ReplicaSet", namespace, metadata_only=True):
        meta = rs.get("metadata") or {}
        index[(str(meta.get("namespace") or ""), str(meta.get("name")))] = rs
    return index


@dataclass(frozen=True)
class Injectors:
    """What each control plane revision gives the sidecars it injects now, read once per
    plan (`read_injectors`) and used to judge every Pod: istiod's version, the injector's
    proxy resources and image repository, the mesh config's proxy settings (each by
    revision; see `outdated_reasons`), and the Pod label keys the injectors'
    `neverInjectSelector`/`alwaysInjectSelector` read (they decide injection too)."""

    versions: Mapping[str, Version] = field(default_factory=dict)
    resources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    images: Mapping[str, str] = field(default_factory=dict)
    mesh: Mapping[str, MeshProxyConfig] = field(default_factory=dict)
    selector_labels: frozenset[str] = frozenset()

    def outdated(self, pod: Mapping[str, Any]) -> list[str]:
        """Why this Pod's sidecar is out of date ([] when current or none)."""
        return outdated_reasons(pod, self.versions, self.resources, self.images, self.mesh)


def selector_label_keys(configmap: Mapping[str, Any] | None) -> set[str]:
    """The Pod label keys of the injector's `neverInjectSelector` and `alwaysInjectSelector`
    (the `config` key of its ConfigMap)."""
    text = ((configmap or {}).get("data") or {}).get("config") or ""
    if "InjectSelector" not in text:
        return set()
    try:
        config = yamlfast.load(text)
    except yaml.YAMLError:
        return set()
    keys: set[str] = set()
    if not isinstance(config, Mapping):
        return keys
    for name in ("neverInjectSelector", "alwaysInjectSelector"):
        for selector in config.get(name) or []:
            if not isinstance(selector, Mapping):
                continue
            keys.update(str(k) for k in (selector.get("matchLabels") or {}))
            for expression in selector.get("matchExpressions") or []:
                if isinstance(expression, Mapping) and expression.get("key"):
                    keys.add(str(expression["key"]))
    return keys


def read_injectors(
    cluster: Cluster, istio_namespace: str, planes: Iterable[ControlPlane] | None = None
) -> Injectors:
    """`Injectors` of the control planes (`planes`, found when not given): two ConfigMaps
    per revision, its injector's (`istio-sidecar-injector[-REV]`) and its mesh config
    (`istio[-REV]`, key `mesh`)."""
    from kymamesh.istio.controlplane import MESH_CONFIGMAP, MESH_KEY, find_control_planes

    found = list(planes) if planes is not None else find_control_planes(cluster, istio_namespace)
    deployments = [p.deployment for p in found if p.deployment is not None]
    resources, images, mesh = {}, {}, {}
    selector_labels: set[str] = set()
    for plane in found:
        injector = cluster.get(plane.configmap(INJECTOR_CONFIGMAP))
        wanted = injector_proxy_resources(injector)
        if wanted is not None:
            resources[plane.revision] = wanted
        image = injector_proxy_image(injector)
        if image is not None:
            images[plane.revision] = image
        selector_labels |= selector_label_keys(injector)
        live = cluster.get(plane.configmap(MESH_CONFIGMAP))
        text = ((live or {}).get("data") or {}).get(MESH_KEY)
        try:
            config = yamlfast.load(text) if text else None
        except yaml.YAMLError:
            config = None
        if isinstance(config, Mapping):
            mesh[plane.revision] = mesh_proxy_config(config)
    return Injectors(
        istiod_revisions(deployments), resources, images, mesh, frozenset(selector_labels)
    )


def find_outdated(
    cluster: Cluster, injectors: Injectors, namespace: str | None = None
) -> list[OutdatedWorkload]:
    """Workloads whose sidecars differ from istiod's version, the injector's resources or
    image, or the mesh config's proxy settings: one list of Pods, and of ReplicaSets when
    one is out of date."""
    judged = [(p, injectors.outdated(p)) for p in list_pods(cluster, namespace) if is_running(p)]
    outdated = [(p, reasons) for p, reasons in judged if reasons]
    if not outdated:  # the usual case: no ReplicaSets to read (a cluster can have thousands)
        return []
    return group_by_workload(outdated, replica_set_index(cluster, namespace))
