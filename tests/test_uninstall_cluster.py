"""`kymamesh uninstall` against clusters of its own: refusals, --force, --purge, twice, reinstall.

Each test starts a fresh cluster: removing Istio from the shared session cluster
would pull it from under the other tests.
"""

from __future__ import annotations

from typing import Any

from tests.support_lifecycle import (
    NAMESPACE,
    RELEASES,
    apply,
    get,
    helm_install_foreign,
    install,
    istio_crds,
    kymamesh,
    writes_during,
)
from tests.test_json_contract import assert_result_shape

USER_VS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}
"""
PATCH_OBJECTS = [
    ("gateway.networking.istio.io", "kyma-gateway", "kyma-system"),
    ("secret", "kyma-gateway-certs", NAMESPACE),
    ("peerauthentication.security.istio.io", "default", NAMESPACE),
]


def _releases(cluster: Any) -> list[str]:
    run = cluster.helm_run("list", "-n", NAMESPACE, "-q")
    return sorted(run.stdout.split())


def _uninstall(cluster: Any, *args: str) -> tuple[Any, int]:
    run, writes = writes_during(
        cluster, lambda: kymamesh(cluster, "uninstall", "-o", "json", *args)
    )
    assert_result_shape(run.doc)
    return run, writes.total


def test_uninstall_refuses_for_user_resources_then_force_keeps_crds(fresh_cluster: Any) -> None:
    c = fresh_cluster()
    install(c)
    c.create_namespace("shop", labels={"istio-injection": "enabled"})
    apply(c, USER_VS)
    crds = istio_crds(c)
    assert len(crds) >= 3

    # A user's VirtualService remains: refused, listed, nothing written.
    run, writes = _uninstall(c, "-y")
    assert run.code == 3, str(run)
    assert writes == 0
    assert run.doc["status"] == "refused"
    assert "VirtualService/shop/reviews" in run.doc["errors"][0]["message"]
    assert "--force" in run.doc["errors"][0]["hint"]
    assert run.doc["data"]["userResources"] == ["VirtualService/shop/reviews"]
    assert _releases(c) == sorted(r for r, _ in RELEASES)

    # Without -y and without a terminal: it asks, cannot, and writes nothing.
    run, writes = _uninstall(c, "--force")
    assert run.code == 6, str(run)
    assert writes == 0

    # A dry run lists, in order, what would go; nothing is written.
    run, writes = _uninstall(c, "--force", "--dry-run")
    assert run.code == 0, str(run)
    assert writes == 0
    phases = {p["name"]: [i["name"] for i in p["items"]] for p in run.doc["phases"]}
    assert phases == {
        "Kyma patch objects": [
            "Gateway/kyma-system/kyma-gateway",
            "Secret/istio-system/kyma-gateway-certs",
            "PeerAuthentication/istio-system/default",
        ],
        "Istio Helm releases": ["istio-ingressgateway", "istiod", "istio-base"],
    }

    # --force goes on: the patch objects and the releases go; the CRDs and the user's VS stay.
    run, writes = _uninstall(c, "--force", "-y")
    assert run.code == 0, str(run)
    assert writes > 0
    assert run.doc["changed"] is True
    assert _releases(c) == []
    for kind, name, ns in PATCH_OBJECTS[:2]:
        assert get(c, kind, name, "-n", ns) is None, (kind, name)
    assert get(c, "deployment", "istiod", "-n", NAMESPACE) is None
    assert istio_crds(c) == crds
    assert get(c, "virtualservice", "reviews", "-n", "shop") is not None
    assert get(c, "namespace", NAMESPACE) is not None  # kept, said so
    assert get(c, "lease", "kymamesh-lock", "-n", NAMESPACE) is None  # the lock was released
    notes = "\n".join(run.doc["notes"])
    assert "namespace shop is labelled for sidecar injection" in notes
    assert "keep their sidecars until they are restarted" in notes
    assert f"{len(crds)} Istio CRDs are kept" in notes
    assert f"namespace {NAMESPACE} is kept" in notes

    # The second run: nothing left to remove, zero writes, not refused.
    run, writes = _uninstall(c)
    assert run.code == 0, str(run)
    assert writes == 0
    assert run.doc["changed"] is False
    assert run.doc["notes"][0].startswith("nothing to uninstall")

    # Reinstall after uninstall: the kept CRDs are taken over again; healthy.
    install(c)
    status = kymamesh(c, "status", "-o", "json")
    assert status.code == 0, status.doc["data"]["problems"]
    assert status.doc["data"]["istio"]["installedBy"] == "kymamesh"


def test_purge_removes_the_crds_and_reinstall_works(fresh_cluster: Any) -> None:
    c = fresh_cluster()
    install(c)
    c.create_namespace("shop")
    apply(c, USER_VS)

    run, writes = _uninstall(c, "--purge", "--force", "-y")
    assert run.code == 0, str(run)
    assert writes > 0
    assert istio_crds(c) == []
    assert len(run.doc["data"]["crds"]) >= 3
    crd_items = next(p for p in run.doc["phases"] if p["name"] == "Istio CRDs")["items"]
    assert {i["outcome"] for i in crd_items} == {"changed"}
    assert _releases(c) == []

    run, writes = _uninstall(c, "--purge")
    assert run.code == 0, str(run)
    assert writes == 0

    install(c)
    status = kymamesh(c, "status", "-o", "json")
    assert status.code == 0, status.doc["data"]["problems"]


def test_a_foreign_istio_stays_unless_existing_istio(fresh_cluster: Any) -> None:
    c = fresh_cluster()
    helm_install_foreign(c)

    run, writes = _uninstall(c, "-y")
    assert run.code == 3, str(run)
    assert writes == 0
    assert "not installed by kymamesh" in run.doc["errors"][0]["message"]
    assert run.doc["errors"][0]["hint"] == "pass --existing-istio to remove it anyway"
    assert _releases(c) == sorted(r for r, _ in RELEASES)

    run, writes = _uninstall(c, "--existing-istio", "-y")
    assert run.code == 0, str(run)
    assert _releases(c) == []
    assert istio_crds(c)  # kept without --purge
