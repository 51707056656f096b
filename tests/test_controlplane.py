"""The control plane facts without a cluster: names per revision, the planned control plane
from the istiod values, the mesh root namespace, the istiod version lookup."""

from __future__ import annotations

from typing import Any

import pytest

from kymamesh.errors import PreconditionError, UsageError
from kymamesh.istio.controlplane import (
    ControlPlane,
    control_plane_of,
    effective_mtls,
    istiod_version,
    planned_control_plane,
    root_namespace_of,
)
from kymamesh.istio.versions import Version
from tests.support_fake_cluster import FakeCluster
from tests.support_mesh import configmap, istiod_deployment

NS = "istio-system"


def test_names_of_the_default_and_a_revisioned_control_plane() -> None:
    default = ControlPlane.named(NS, "default")
    assert (default.istiod, default.mesh_configmap, default.injector_configmap) == (
        "istiod",
        "istio",
        "istio-sidecar-injector",
    )
    assert default.root_namespace == NS
    canary = ControlPlane.named(NS, "canary", "mesh-root")
    assert (canary.istiod, canary.mesh_configmap, canary.injector_configmap) == (
        "istiod-canary",
        "istio-canary",
        "istio-sidecar-injector-canary",
    )
    assert canary.configmap("istio").name == "istio-canary"
    assert canary.root_namespace == "mesh-root"


@pytest.mark.parametrize(
    ("values", "revision", "suffix", "root"),
    [
        ({}, "default", "", NS),
        ({"revision": ""}, "default", "", NS),
        ({"revision": "canary"}, "canary", "-canary", NS),
        (
            {"revision": "1-30-3", "meshConfig": {"rootNamespace": "cfg"}},
            "1-30-3",
            "-1-30-3",
            "cfg",
        ),
        ({"global": {"istioNamespace": "other"}}, "default", "", "other"),
        (
            {"global": {"istioNamespace": "other"}, "meshConfig": {"rootNamespace": "cfg"}},
            "default",
            "",
            "cfg",
        ),
    ],
)
def test_planned_control_plane(
    values: dict[str, Any], revision: str, suffix: str, root: str
) -> None:
    plane = planned_control_plane(NS, values)
    assert (plane.revision, plane.suffix, plane.root_namespace) == (revision, suffix, root)
    assert not plane.installed


@pytest.mark.parametrize("revision", ["Canary", "can_ary", "-canary", "canary-", "x" * 64, 3])
def test_a_revision_that_cannot_be_a_name_is_refused(revision: object) -> None:
    with pytest.raises(UsageError) as err:
        planned_control_plane(NS, {"revision": revision})
    assert err.value.hint


def test_found_control_plane_takes_names_from_its_deployment_and_root_from_its_mesh() -> None:
    canary = istiod_deployment(name="istiod-canary", revision="canary")
    mesh = configmap("istio-canary", {"mesh": "rootNamespace: mesh-root\n"})
    plane = control_plane_of(FakeCluster([canary, mesh]), canary)  # type: ignore[arg-type]
    assert (plane.revision, plane.injector_configmap, plane.root_namespace) == (
        "canary",
        "istio-sidecar-injector-canary",
        "mesh-root",
    )
    assert plane.installed
    # a revision explicitly named "default" keeps the suffix its Deployment carries
    explicit = istiod_deployment(name="istiod-default", revision="default")
    plane = control_plane_of(FakeCluster([explicit]), explicit)  # type: ignore[arg-type]
    assert (plane.mesh_configmap, plane.root_namespace) == ("istio-default", NS)


@pytest.mark.parametrize(
    ("mesh", "root"),
    [(None, NS), ({}, NS), ({"rootNamespace": ""}, NS), ({"rootNamespace": "x"}, "x")],
)
def test_root_namespace_of(mesh: dict[str, Any] | None, root: str) -> None:
    assert root_namespace_of(mesh, NS) == root


def test_istiod_version_from_its_image() -> None:
    assert istiod_version(istiod_deployment("r:5000/istio/pilot:1.29.4-distroless")) == Version(
        1, 29, 4
    )
    assert istiod_version(istiod_deployment("istio/pilot:latest")) is None


def test_effective_mtls_at_the_root() -> None:
    assert effective_mtls([]) == ("PERMISSIVE", None)
    unset = {"metadata": {"name": "default"}, "spec": {}}
    assert effective_mtls([unset]) == ("PERMISSIVE", unset)
    strict = {"metadata": {"name": "default"}, "spec": {"mtls": {"mode": "strict"}}}
    assert effective_mtls([strict]) == ("STRICT", strict)


def _ns(name: str, **labels: str) -> dict[str, object]:
    return {"metadata": {"name": name, "labels": labels}}


def test_an_injection_probe_goes_where_its_labels_decide() -> None:
    """A probe in a namespace labelled istio-injection (either way) or for another revision
    never reaches the revision's webhooks: admitted without them, it would prove nothing."""
    from kymamesh.istio.controlplane import injection_probe_pod, probe_namespace

    plain = [_ns("istio-system"), _ns("default")]
    assert probe_namespace(plain, "1-30-3", "istio-system") == "istio-system"
    labelled = [
        _ns("istio-system", **{"istio-injection": "disabled"}),
        _ns("default", **{"istio-injection": "enabled"}),
        _ns("apps", **{"istio.io/rev": "1-29-4"}),
        _ns("canary", **{"istio.io/rev": "1-30-3"}),
        _ns("kube-system"),  # Istio's injector never injects there
        {"metadata": {"name": "gone"}, "status": {"phase": "Terminating"}},
        _ns("web"),
    ]
    assert probe_namespace(labelled, "1-30-3", "istio-system") == "canary"
    assert probe_namespace(labelled, "default", "istio-system") == "web"
    with pytest.raises(PreconditionError, match="no namespace"):
        probe_namespace(labelled[:6], "default", "istio-system")
    # opted in (an injector with `policy: disabled` needs it), and for the revision
    assert injection_probe_pod("x", "1-30-3")["metadata"]["labels"] == {
        "sidecar.istio.io/inject": "true",
        "istio.io/rev": "1-30-3",
    }
    assert injection_probe_pod("x", "default")["metadata"]["labels"] == {
        "sidecar.istio.io/inject": "true"
    }
