"""The read-only preflight of adopting an Istio: is there one kymamesh can patch?

Checks, in order, each failure a `PreconditionError` (exit 3) that names what
was found, and never a write: the namespace exists; istiod is there (every
control plane revision: `istiod`, `istiod-REV`, see `kymamesh.istio.controlplane`);
each one's version, read from the image of its `discovery` container, is of a
minor of the release catalog or the one below the oldest; the
security CRDs exist and are Established. What it found is returned, for the
command's output and for `status`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kymamesh.adapters.cluster import Cluster, Obj, Ref, not_ready_reason
from kymamesh.errors import PreconditionError
from kymamesh.istio.controlplane import (
    DISCOVERY_CONTAINER,
    ControlPlane,
    discovery_image,
    find_control_planes,
    root_namespaces,
    served_peer_authentication,
)
from kymamesh.istio.versions import Version, check_supported_for_adoption, image_version

MANAGED_BY = "app.kubernetes.io/managed-by"
SECURITY_CRDS = (
    "peerauthentications.security.istio.io",
    "requestauthentications.security.istio.io",
    "authorizationpolicies.security.istio.io",
)
_HELM_RELEASE = "meta.helm.sh/release-name"
_HELM_NAMESPACE = "meta.helm.sh/release-namespace"
_OPERATOR_OWNER = "install.operator.istio.io/owning-resource"


@dataclass(frozen=True)
class FoundIstio:
    """What the preflight found: the control plane kymamesh is about to patch."""

    namespace: str
    deployment: str
    image: str
    version: Version
    revision: str
    installed_by: str
    helm_release: str | None
    patched_by_kymamesh: bool
    # every control plane revision found (the first is the one described above)
    control_planes: tuple[ControlPlane, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "deployment": self.deployment,
            "image": self.image,
            "version": str(self.version),
            "revision": self.revision,
            "installedBy": self.installed_by,
            "helmRelease": self.helm_release,
            "patchedByKymamesh": self.patched_by_kymamesh,
            "controlPlanes": [p.to_json() for p in self.control_planes],
        }

    def describe(self) -> str:
        text = (
            f"Istio {self.version} (Deployment {self.namespace}/{self.deployment}, image "
            f"{self.image}, revision {self.revision}), installed by {self.installed_by}"
        )
        others = [p.revision for p in self.control_planes if p.istiod != self.deployment]
        if others:
            text += f"; also revision(s) {', '.join(others)}"
        return text


def installed_by(obj: Obj) -> tuple[str, str | None]:
    """Who installed an object, from the marks Helm and Istio's installer leave on it."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    release = annotations.get(_HELM_RELEASE)
    if release:
        where = annotations.get(_HELM_NAMESPACE) or meta.get("namespace", "")
        return f"Helm release {where}/{release}", str(release)
    owner = labels.get(_OPERATOR_OWNER)
    if owner and owner != "unknown":
        return f"istioctl or the Istio operator ({owner})", None
    manager = labels.get(MANAGED_BY)
    return (str(manager) if manager else "unknown"), None


def patched_by_kymamesh(
    cluster: Cluster, namespace: str, planes: tuple[ControlPlane, ...] = ()
) -> bool:
    """Whether kymamesh's patch has run here: objects it owns carry its label.

    `install` creates the PeerAuthentication (in the mesh root namespace) first
    thing in phase 2, so a mesh it installed has it; an Istio installed by anything
    else does not until `patch --existing-istio` adopts it. (The lock Lease does not
    count.)
    """
    selector = f"{MANAGED_BY}=kymamesh"
    api_version = served_peer_authentication(cluster)
    if api_version is not None:
        for root in root_namespaces(planes) or [namespace]:
            if cluster.list(api_version, "PeerAuthentication", root, label_selector=selector):
                return True
    return bool(cluster.list("v1", "Secret", namespace, label_selector=selector))


def _control_planes(cluster: Cluster, namespace: str) -> list[ControlPlane]:
    planes = find_control_planes(cluster, namespace)
    if planes:
        return planes
    names = [d["metadata"]["name"] for d in cluster.list("apps/v1", "Deployment", namespace)]
    raise PreconditionError(
        f"no istiod in namespace {namespace} (Deployments there: "
        f"{', '.join(sorted(names)) or 'none'})",
        hint="there is no Istio to adopt; install one with `kymamesh install`",
    )


def _discovery_image(deployment: Obj) -> str:
    ref = Ref.of(deployment)
    image = discovery_image(deployment)
    if image:
        return image
    containers = ((deployment.get("spec") or {}).get("template") or {}).get("spec", {}).get(
        "containers"
    ) or []
    names = ", ".join(str(c.get("name")) for c in containers) or "none"
    raise PreconditionError(
        f"{ref} has no container `{DISCOVERY_CONTAINER}` with an image (containers: {names})",
        hint="this does not look like an istiod installed from the official charts",
    )


def check_security_crds(cluster: Cluster) -> None:
    problems = []
    for name in SECURITY_CRDS:
        ref = Ref("apiextensions.k8s.io/v1", "CustomResourceDefinition", name)
        why = not_ready_reason(ref, cluster.get(ref))
        if why is not None:
            problems.append(f"{name} ({why})")
    if problems:
        istio = sorted(
            c["metadata"]["name"]
            for c in cluster.list("apiextensions.k8s.io/v1", "CustomResourceDefinition")
            if str(c["metadata"]["name"]).endswith(".istio.io")
        )
        raise PreconditionError(
            "the Istio security CRDs are not in place: "
            + "; ".join(problems)
            + f" (Istio CRDs found: {', '.join(istio) or 'none'})",
            hint="install them with the `base` chart of the same Istio release (release "
            "istio-base), then re-run",
        )


def find_istio(
    cluster: Cluster, namespace: str, supported: tuple[Version, Version] | None
) -> FoundIstio:
    """The preflight: what is installed, or a `PreconditionError` naming what is wrong.

    With `supported` None the version is reported, not judged (for `status`).
    """
    if cluster.get(Ref("v1", "Namespace", namespace)) is None:
        raise PreconditionError(
            f"namespace {namespace} does not exist, so there is no Istio to adopt",
            hint="install Istio with `kymamesh install`, or check --kubeconfig/--context",
        )
    planes = _control_planes(cluster, namespace)
    versions = [_checked_version(p, supported) for p in planes]
    check_security_crds(cluster)
    first = planes[0]  # the default revision when there is one
    assert first.deployment is not None
    by, release = installed_by(first.deployment)
    return FoundIstio(
        namespace=namespace,
        deployment=first.istiod,
        image=_discovery_image(first.deployment),
        version=versions[0],
        revision=first.revision,
        installed_by=by,
        helm_release=release,
        patched_by_kymamesh=patched_by_kymamesh(cluster, namespace, tuple(planes)),
        control_planes=tuple(planes),
    )


def _checked_version(plane: ControlPlane, supported: tuple[Version, Version] | None) -> Version:
    """The version of a control plane's istiod, judged against `supported` (the oldest and
    newest supported release) when given."""
    assert plane.deployment is not None
    image = _discovery_image(plane.deployment)
    ref = plane.istiod_ref
    try:
        version = image_version(image)
    except PreconditionError as exc:
        raise PreconditionError(f"{ref}: {exc.message}", exc.hint) from None
    if supported is not None:
        try:
            check_supported_for_adoption(version, *supported)
        except PreconditionError as exc:
            raise PreconditionError(f"{exc.message} (image {image} of {ref})", exc.hint) from None
    return version


def adoption_preflight(cluster: Cluster, namespace: str) -> FoundIstio:
    """`find_istio` against the release catalog (a supported minor, or one below the oldest)."""
    from kymamesh.istio.release import catalog

    lines = catalog().lines
    return find_istio(cluster, namespace, (lines[-1].latest, lines[0].latest))
