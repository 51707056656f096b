"""What Istio has in a cluster, read-only: shared by `status` and `uninstall`.

Everything here only reads: the Istio CRDs and the kinds they serve, the
istiod Deployments and their versions, the three Helm releases of the pinned
release table, who installed them, the objects of every Istio kind, and the
namespaces labelled for sidecar injection.

Who installed Istio: kymamesh's phase 1 leaves the Helm releases of
`resources/istio/release.yaml` with the release label `kymamesh.io/attempt`, which
Helm keeps on later revisions (a person's own `helm upgrade` included), and with a
revision description that starts with `kymamesh` (`helm history` shows it; older
kymamesh releases have only that). Releases of those names without either were
installed with Helm by someone else; an istiod without any of them came from
another tool (istioctl, a vendor).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kymamesh import MANAGED_BY_LABEL, __version__
from kymamesh.adapters.cluster import Cluster, Obj, Ref, not_ready_reason
from kymamesh.adapters.helm import ATTEMPT_LABEL, DeployedRelease
from kymamesh.context import RunContext
from kymamesh.errors import KymameshError
from kymamesh.istio.controlplane import (
    INJECTION_LABEL,
    REVISION_LABEL,
    ControlPlane,
    find_control_planes,
    istiod_image,
    istiod_version,
)
from kymamesh.istio.preflight import FoundIstio
from kymamesh.istio.versions import Version

ISTIO_GROUP_SUFFIX = ".istio.io"
HELM_RELEASE_ANNOTATION = "meta.helm.sh/release-name"
HELM_NAMESPACE_ANNOTATION = "meta.helm.sh/release-namespace"
KYMAMESH_MARK = "kymamesh"  # start of the Helm revision description kymamesh's install leaves
# What phase 1 passes as `helm upgrade --install --description` (see the module docstring).
INSTALL_DESCRIPTION = f"{KYMAMESH_MARK} {__version__}"
CRD_API = "apiextensions.k8s.io/v1"


class Installer(StrEnum):
    """Who installed the Istio in the cluster (`installedBy` in `status -o json`)."""

    KYMAMESH = "kymamesh"  # the pinned Helm releases, marked by kymamesh's install
    HELM = "helm"  # Helm releases not made by kymamesh
    OTHER = "other"  # an istiod that no Helm release of the pinned names holds
    NONE = "none"  # no Istio control plane and no release


@dataclass(frozen=True)
class IstioKind:
    """One kind served by an Istio CRD, at the version used to read it."""

    group: str
    kind: str
    api_version: str
    crd: str


@dataclass(frozen=True)
class Istiod:
    """One istiod Deployment (one control-plane revision)."""

    name: str
    namespace: str
    revision: str
    image: str
    version: Version | None
    ready: str | None  # None when ready, else why not
    replicas: str  # "available/wanted"
    helm_release: str  # from Helm's ownership annotation; "" when none
    plane: ControlPlane | None = None

    @property
    def root_namespace(self) -> str:
        return self.plane.root_namespace if self.plane else self.namespace

    def to_json(self) -> dict[str, Any]:
        plane = self.plane or ControlPlane.named(self.namespace, self.revision)
        return {
            "name": self.name,
            "namespace": self.namespace,
            "revision": self.revision,
            "rootNamespace": plane.root_namespace,
            "meshConfigMap": plane.mesh_configmap,
            "injectorConfigMap": plane.injector_configmap,
            "version": str(self.version) if self.version else None,
            "image": self.image,
            "ready": self.ready is None,
            "notReadyReason": self.ready or "",
            "replicas": self.replicas,
            "helmRelease": self.helm_release or None,
        }


def is_istio_group(group: str) -> bool:
    return group == "istio.io" or group.endswith(ISTIO_GROUP_SUFFIX)


def istio_crds(cluster: Cluster) -> list[Obj]:
    """Every CRD of an *.istio.io group, by name."""
    crds = [
        crd
        for crd in cluster.list(CRD_API, "CustomResourceDefinition")
        if is_istio_group(str((crd.get("spec") or {}).get("group", "")))
    ]
    return sorted(crds, key=lambda c: str(c["metadata"]["name"]))


def istio_kinds(crds: list[Obj]) -> list[IstioKind]:
    """The kinds the CRDs serve, each at its storage version (or the first served one)."""
    kinds = []
    for crd in crds:
        spec = crd.get("spec") or {}
        served = [v for v in spec.get("versions") or [] if v.get("served")]
        if not served:
            continue
        chosen = next((v for v in served if v.get("storage")), served[0])
        group = str(spec["group"])
        kinds.append(
            IstioKind(
                group=group,
                kind=str(spec["names"]["kind"]),
                api_version=f"{group}/{chosen['name']}",
                crd=str(crd["metadata"]["name"]),
            )
        )
    return kinds


def kind_api(kinds: list[IstioKind], group: str, kind: str) -> str | None:
    for k in kinds:
        if k.group == group and k.kind == kind:
            return k.api_version
    return None


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def annotations_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def managed_by_kymamesh(obj: Mapping[str, Any]) -> bool:
    return labels_of(obj).get(MANAGED_BY_LABEL) == "kymamesh"


def helm_owner(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, release) of the Helm release that holds the object, from Helm's annotations."""
    notes = annotations_of(obj)
    name = notes.get(HELM_RELEASE_ANNOTATION)
    if not name:
        return None
    return (notes.get(HELM_NAMESPACE_ANNOTATION, ""), name)


def find_istiods(cluster: Cluster, namespace: str) -> list[Istiod]:
    """The istiod Deployments in `namespace`, found by the label every Istio install sets."""
    found = []
    for plane in find_control_planes(cluster, namespace):
        dep = plane.deployment
        assert dep is not None
        meta = dep["metadata"]
        image = istiod_image(dep)
        version = istiod_version(dep)
        status = dep.get("status") or {}
        wanted = (dep.get("spec") or {}).get("replicas")
        wanted = 1 if wanted is None else int(wanted)
        owner = helm_owner(dep)
        found.append(
            Istiod(
                name=str(meta["name"]),
                namespace=namespace,
                revision=plane.revision,
                image=image,
                version=version,
                ready=not_ready_reason(Ref("apps/v1", "Deployment", meta["name"], namespace), dep),
                replicas=f"{int(status.get('availableReplicas') or 0)}/{wanted}",
                helm_release=owner[1] if owner else "",
                plane=plane,
            )
        )
    return sorted(found, key=lambda d: d.name)


def marked_by_kymamesh(release: DeployedRelease) -> bool:
    """True when kymamesh made the release: a revision it made carries its release label
    (`kymamesh.adapters.helm.ATTEMPT_LABEL`), which Helm keeps on every later revision, a person's
    own `helm upgrade` included; or (releases made before that label, or read through helm
    when Helm keeps its releases elsewhere than in Secrets) the current revision's
    description is kymamesh's."""
    if ATTEMPT_LABEL in release.labels:
        return True
    return release.description.strip().lower().startswith(KYMAMESH_MARK)


def set_up_by_kymamesh(ctx: RunContext, found: FoundIstio) -> bool:
    """Whether kymamesh set this Istio up: its patch ran here, or its install made istiod.

    The second covers an `install` interrupted between its two phases. Reading the
    release needs helm; without one, only the patch's label counts.
    """
    if found.patched_by_kymamesh:
        return True
    if not found.helm_release:
        return False
    try:
        release = ctx.helm.deployed(found.helm_release, ctx.namespace)
    except KymameshError:
        return False
    return release is not None and marked_by_kymamesh(release)


def installer(releases: Mapping[str, DeployedRelease | None], istiods: list[Istiod]) -> Installer:
    present = [r for r in releases.values() if r is not None]
    if any(marked_by_kymamesh(r) for r in present):
        return Installer.KYMAMESH
    if present or any(d.helm_release for d in istiods):
        return Installer.HELM
    if istiods:
        return Installer.OTHER
    return Installer.NONE


def injection_of(namespace: Mapping[str, Any]) -> tuple[bool, str]:
    """(enabled, revision); the label `istio-injection` wins over `istio.io/rev`, as in Istio."""
    labels = labels_of(namespace)
    value = labels.get(INJECTION_LABEL)
    if value is not None:
        return (value == "enabled", "default" if value == "enabled" else "")
    revision = labels.get(REVISION_LABEL)
    if revision:
        return (True, revision)
    return (False, "")


def injection_namespaces(cluster: Cluster) -> list[tuple[str, str]]:
    """(name, revision) of every namespace labelled for sidecar injection."""
    result = []
    for ns in cluster.list("v1", "Namespace"):
        enabled, revision = injection_of(ns)
        if enabled:
            result.append((str(ns["metadata"]["name"]), revision))
    return sorted(result)


def ref_of(obj: Obj, api_version: str | None = None) -> Ref:
    meta = obj["metadata"]
    return Ref(
        api_version or str(obj["apiVersion"]),
        str(obj["kind"]),
        str(meta["name"]),
        str(meta.get("namespace") or ""),
    )
