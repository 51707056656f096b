"""The read-only preflight of adopting an Istio: is there one kymamesh can patch?

Checks, in order, each failure a `PreconditionError` (exit 3) that names what
was found, and never a write: the namespace exists; istiod (the default
revision's Deployment `istiod`) is there; its version, read from the image of
its `discovery` container, is the supported minor or the one below; the
security CRDs exist and are Established. What it found is returned, for the
command's output and for `status`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kymamesh.cluster import Cluster, Obj, Ref, not_ready_reason
from kymamesh.errors import PreconditionError
from kymamesh.versions import Version, check_supported_for_adoption, image_version

MANAGED_BY = "app.kubernetes.io/managed-by"
ISTIOD = "istiod"
ISTIOD_SELECTOR = "app=istiod"
DISCOVERY_CONTAINER = "discovery"
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
        }

    def describe(self) -> str:
        return (
            f"Istio {self.version} (Deployment {self.namespace}/{self.deployment}, image "
            f"{self.image}, revision {self.revision}), installed by {self.installed_by}"
        )


def istiod_deployments(cluster: Cluster, namespace: str) -> list[Obj]:
    """Every istiod Deployment in the namespace, of any revision."""
    return cluster.list("apps/v1", "Deployment", namespace, label_selector=ISTIOD_SELECTOR)


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


def patched_by_kymamesh(cluster: Cluster, namespace: str) -> bool:
    """Whether kymamesh's patch has run here: objects it owns carry its label.

    `install` creates the PeerAuthentication first thing in phase 2, so a mesh it
    installed has it; an Istio installed by anything else does not until
    `patch --existing-istio` adopts it. (The lock Lease does not count.)
    """
    selector = f"{MANAGED_BY}=kymamesh"
    for api_version in ("security.istio.io/v1", "security.istio.io/v1beta1"):
        if cluster.serves(api_version, "PeerAuthentication"):
            if cluster.list(api_version, "PeerAuthentication", namespace, label_selector=selector):
                return True
            break
    return bool(cluster.list("v1", "Secret", namespace, label_selector=selector))


def _the_istiod(cluster: Cluster, namespace: str) -> Obj:
    live = cluster.get(Ref("apps/v1", "Deployment", ISTIOD, namespace))
    if live is not None:
        return live
    others = istiod_deployments(cluster, namespace)
    if others:
        found = ", ".join(
            f"{d['metadata']['name']} (revision "
            f"{(d['metadata'].get('labels') or {}).get('istio.io/rev', '?')})"
            for d in others
        )
        raise PreconditionError(
            f"no Deployment {namespace}/{ISTIOD} (the default revision); found only "
            f"revisioned istiod Deployments: {found}",
            hint="kymamesh patches the default revision; install one, or make a revisioned "
            "control plane the default one",
        )
    names = [d["metadata"]["name"] for d in cluster.list("apps/v1", "Deployment", namespace)]
    raise PreconditionError(
        f"no istiod in namespace {namespace} (Deployments there: "
        f"{', '.join(sorted(names)) or 'none'})",
        hint="there is no Istio to adopt; install one with `kymamesh install`",
    )


def _discovery_image(deployment: Obj) -> str:
    ref = Ref.of(deployment)
    containers = ((deployment.get("spec") or {}).get("template") or {}).get("spec", {}).get(
        "containers"
    ) or []
    for container in containers:
        if container.get("name") == DISCOVERY_CONTAINER:
            image = container.get("image")
            if image:
                return str(image)
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


def find_istio(cluster: Cluster, namespace: str, supported: Version | None) -> FoundIstio:
    """The preflight: what is installed, or a `PreconditionError` naming what is wrong.

    With `supported` None the version is reported, not judged (for `status`).
    """
    if cluster.get(Ref("v1", "Namespace", namespace)) is None:
        raise PreconditionError(
            f"namespace {namespace} does not exist, so there is no Istio to adopt",
            hint="install Istio with `kymamesh install`, or check --kubeconfig/--context",
        )
    deployment = _the_istiod(cluster, namespace)
    image = _discovery_image(deployment)
    ref = Ref.of(deployment)
    try:
        version = image_version(image)
    except PreconditionError as exc:
        raise PreconditionError(f"{ref}: {exc.message}", exc.hint) from None
    if supported is not None:
        try:
            check_supported_for_adoption(version, supported)
        except PreconditionError as exc:
            raise PreconditionError(f"{exc.message} (image {image} of {ref})", exc.hint) from None
    check_security_crds(cluster)
    by, release = installed_by(deployment)
    labels = deployment["metadata"].get("labels") or {}
    return FoundIstio(
        namespace=namespace,
        deployment=ref.name,
        image=image,
        version=version,
        revision=str(labels.get("istio.io/rev") or "default"),
        installed_by=by,
        helm_release=release,
        patched_by_kymamesh=patched_by_kymamesh(cluster, namespace),
    )


def adoption_preflight(cluster: Cluster, namespace: str) -> FoundIstio:
    """`find_istio` against the supported release (the supported minor or one below)."""
    from kymamesh.release import pinned

    return find_istio(cluster, namespace, pinned().version)
