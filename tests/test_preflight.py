"""The read-only adoption preflight: what it accepts, what it refuses and how it says so
(against an in-memory cluster; tests/test_patch_cluster.py runs it against the test cluster)."""

from __future__ import annotations

from typing import Any

import pytest

from kymamesh.errors import PreconditionError
from kymamesh.istio.preflight import SECURITY_CRDS, adoption_preflight, find_istio
from kymamesh.istio.versions import Version
from tests.support_mesh import FakeCluster, istiod_deployment

NS = "istio-system"


def namespace(name: str = NS) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def crd(name: str, established: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "status": {
            "conditions": [{"type": "Established", "status": "True" if established else "False"}]
        },
    }


def cluster_with(*objects: dict[str, Any], crds: tuple[str, ...] = SECURITY_CRDS) -> FakeCluster:
    return FakeCluster([namespace(), *objects, *(crd(n) for n in crds)])


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("docker.io/istio/pilot:1.30.3", "1.30.3"),
        ("registry.local:5000/istio/pilot:1.29.4-distroless", "1.29.4"),
        ("registry.local:5000/istio/pilot:1.30.0@sha256:" + "a" * 64, "1.30.0"),
        ("gcr.io/istio-release/pilot:1.29.0-distroless@sha256:" + "b" * 64, "1.29.0"),
    ],
)
def test_supported_istiod_is_found(image: str, version: str) -> None:
    found = adoption_preflight(cluster_with(istiod_deployment(image)), NS)  # type: ignore[arg-type]
    assert str(found.version) == version
    assert found.image == image
    assert found.installed_by == "Helm release istio-system/istiod"
    assert found.helm_release == "istiod"
    assert found.revision == "default"
    assert found.patched_by_kymamesh is False
    assert found.to_json()["version"] == version


def test_no_namespace() -> None:
    with pytest.raises(PreconditionError, match="namespace istio-system does not exist"):
        adoption_preflight(FakeCluster([]), NS)  # type: ignore[arg-type]


def test_no_istiod_names_what_is_there() -> None:
    other = istiod_deployment(name="something-else")
    other["metadata"]["labels"] = {}
    with pytest.raises(
        PreconditionError,
        match=r"no istiod in namespace istio-system \(Deployments there: something-else\)",
    ):
        adoption_preflight(cluster_with(other), NS)  # type: ignore[arg-type]


def test_only_a_revisioned_istiod_is_adopted_with_its_names() -> None:
    dep = istiod_deployment(name="istiod-1-29", revision="1-29", image="x/pilot:1.29.4")
    found = adoption_preflight(cluster_with(dep), NS)  # type: ignore[arg-type]
    assert (found.deployment, found.revision) == ("istiod-1-29", "1-29")
    [plane] = found.control_planes
    assert (plane.mesh_configmap, plane.injector_configmap) == (
        "istio-1-29",
        "istio-sidecar-injector-1-29",
    )


def test_every_revision_is_judged() -> None:
    deps = [istiod_deployment(), istiod_deployment("x/pilot:1.28.0", "istiod-old", revision="old")]
    with pytest.raises(PreconditionError, match=r"1.28.0 .*Deployment/istio-system/istiod-old"):
        adoption_preflight(cluster_with(*deps), NS)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (
            "docker.io/istio/pilot:1.28.2",
            r"istiod runs Istio 1.28.2; kymamesh supports adopting 1.29.x to 1.31.x "
            r"\(image docker.io/istio/pilot:1.28.2",
        ),
        ("docker.io/istio/pilot:1.32.0", "runs Istio 1.32.0"),
        ("docker.io/istio/pilot:2.30.0", "runs Istio 2.30.0"),
        ("docker.io/istio/pilot:latest", "Deployment/istio-system/istiod: the image tag 'latest'"),
        ("docker.io/istio/pilot", "has no tag"),
    ],
)
def test_unsupported_versions_refused(image: str, message: str) -> None:
    with pytest.raises(PreconditionError, match=message):
        adoption_preflight(cluster_with(istiod_deployment(image)), NS)  # type: ignore[arg-type]


def test_version_not_judged_for_status() -> None:
    found = find_istio(cluster_with(istiod_deployment("x/pilot:1.20.1")), NS, None)  # type: ignore[arg-type]
    assert found.version == Version(1, 20, 1)


def test_no_discovery_container() -> None:
    deployment = istiod_deployment()
    deployment["spec"]["template"]["spec"]["containers"][0]["name"] = "pilot"
    with pytest.raises(PreconditionError, match=r"no container `discovery` .*containers: pilot"):
        adoption_preflight(cluster_with(deployment), NS)  # type: ignore[arg-type]


def test_missing_and_unestablished_crds() -> None:
    cluster = FakeCluster(
        [
            namespace(),
            istiod_deployment(),
            crd(SECURITY_CRDS[0]),
            crd(SECURITY_CRDS[1], established=False),
            crd("gateways.networking.istio.io"),
        ]
    )
    with pytest.raises(PreconditionError) as caught:
        adoption_preflight(cluster, NS)  # type: ignore[arg-type]
    message = caught.value.message
    assert "requestauthentications.security.istio.io (not Established" in message
    assert "authorizationpolicies.security.istio.io (not found)" in message
    assert "gateways.networking.istio.io" in message


def test_who_installed_it() -> None:
    deployment = istiod_deployment()
    deployment["metadata"]["annotations"] = {}
    deployment["metadata"]["labels"]["install.operator.istio.io/owning-resource"] = (
        "installed-state"
    )
    found = adoption_preflight(cluster_with(deployment), NS)  # type: ignore[arg-type]
    assert found.installed_by == "istioctl or the Istio operator (installed-state)"
    assert found.helm_release is None


def test_patched_by_kymamesh_seen_from_its_label() -> None:
    policy = {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {
            "name": "default",
            "namespace": NS,
            "labels": {"app.kubernetes.io/managed-by": "kymamesh"},
        },
        "spec": {"mtls": {"mode": "STRICT"}},
    }
    assert adoption_preflight(cluster_with(istiod_deployment(), policy), NS).patched_by_kymamesh  # type: ignore[arg-type]


def test_preflight_never_writes() -> None:
    cluster = cluster_with(istiod_deployment("docker.io/istio/pilot:1.27.0"))
    with pytest.raises(PreconditionError):
        adoption_preflight(cluster, NS)  # type: ignore[arg-type]
    assert cluster.writes == []
