"""A change of root on a running istiod (`install --ca DIR` on a mesh of another CA): the
plan of this cluster (istiod Deployments, workloads and gateways, batches) in the refusal,
the mark on Secret cacerts while the change is under way, and the restarts. On an
in-memory cluster; tests/test_meshca_cluster.py carries it out with the real istiod."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kymamesh.adapters.cluster import Ref
from kymamesh.errors import PreconditionError, UsageError, WaitTimeoutError
from kymamesh.identity import certs, meshca
from kymamesh.workloads import restarts
from kymamesh.workloads.rollouts import RESTARTED_AT
from tests.support_fake_cluster import FakeCluster, run_context

NS = "istio-system"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
STATUS = "sidecar.istio.io/status"
ROLLED_OUT = {
    "observedGeneration": 1000,
    "replicas": 1,
    "updatedReplicas": 1,
    "availableReplicas": 1,
}


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def deployment(name: str, namespace: str, **template_meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}, **template_meta}},
        },
        "status": ROLLED_OUT,  # the fake has no controller: every rollout is done
    }


def pod_of(
    name: str,
    namespace: str,
    created: datetime = T0,
    sidecar: bool = True,
    gateway: bool = False,
    owner: tuple[str, str] | None = None,
) -> list[dict[str, Any]]:
    """A Deployment's Pod (and its ReplicaSet), or a Pod of `owner` (kind, name)."""
    objects: list[dict[str, Any]] = []
    annotations = {STATUS: "{}"} if sidecar else {}
    if gateway:
        annotations["inject.istio.io/templates"] = "gateway"
    if owner is None:
        owner = ("ReplicaSet", f"{name}-5d4f")
        objects.append(
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": owner[1],
                    "namespace": namespace,
                    "ownerReferences": [{"kind": "Deployment", "name": name, "controller": True}],
                },
            }
        )
    containers = [{"name": "app", "image": "example.com/app:1"}]
    if sidecar:
        containers.append({"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.31.1"})
    objects.append(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-5d4f-x{created:%H%M%S}",
                "namespace": namespace,
                "labels": {"app": name},
                "creationTimestamp": _stamp(created),
                "annotations": annotations,
                "ownerReferences": [{"kind": owner[0], "name": owner[1], "controller": True}],
            },
            "spec": {"containers": containers},
            "status": {"phase": "Running"},
        }
    )
    return objects


def istiod(revision: str = "") -> list[dict[str, Any]]:
    name = f"istiod-{revision}" if revision else "istiod"
    d = deployment(name, NS)
    d["metadata"]["labels"] = {"app": "istiod", **({"istio.io/rev": revision} if revision else {})}
    d["spec"]["template"]["spec"] = {
        "containers": [{"name": "discovery", "image": "docker.io/istio/pilot:1.31.1"}]
    }
    return [d, *pod_of(name, NS, sidecar=False)]


def mesh() -> FakeCluster:
    """istiod (self-signed), three meshed Deployments in shop, the ingress gateway, a Job's
    Pod with a sidecar, and a Deployment without one."""
    cluster = FakeCluster()
    cluster.ensure_namespace(NS)
    cluster.ensure_namespace("shop")
    for obj in istiod():
        cluster.add(obj)
    cluster.add(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "istio-ca-secret", "namespace": NS},
            "data": {},
        }
    )
    for name in ("cart", "orders", "web"):
        cluster.add(deployment(name, "shop"))
        for obj in pod_of(name, "shop"):
            cluster.add(obj)
    cluster.add(deployment("istio-ingressgateway", NS))
    for obj in pod_of("istio-ingressgateway", NS, gateway=True):
        cluster.add(obj)
    cluster.add(deployment("plain", "shop"))
    for obj in pod_of("plain", "shop", sidecar=False):
        cluster.add(obj)
    for obj in pod_of("report", "shop", owner=("Job", "report")):
        cluster.add(obj)
    cluster.writes.clear()
    return cluster


def root_dir(tmp_path: Path, name: str = "root") -> Path:
    out = tmp_path / name
    meshca.create_root(out, name, 3650)
    return out


def options(restart: bool, batch: int | str = 2) -> restarts.RestartOptions:
    return restarts.RestartOptions(restart=restart, batch_size=batch, timeout=5)


def test_a_running_istiod_is_refused_with_the_plan_of_this_cluster(tmp_path: Path) -> None:
    cluster = mesh()
    with pytest.raises(PreconditionError) as refused:
        meshca.plan(cluster, NS, root_dir(tmp_path), "east", restart=options(False))
    message, hint = refused.value.message, refused.value.hint or ""
    assert "istiod already runs in istio-system on its own self-signed CA" in message
    assert "restart 1 istiod Deployment (revision default)" in message
    assert "restart 3 injected workloads and 1 gateway in 3 batches of at most 2" in message
    assert "not restarted by kymamesh (restart them yourself): Job/shop/report" in message
    assert "Nothing was written" in message
    assert "--restart-proxies" in hint and "--dry-run" in hint
    assert "PRIVATE" not in message + hint
    assert cluster.writes == []


def test_revisions_and_batches_as_given(tmp_path: Path) -> None:
    cluster = mesh()
    for obj in istiod("canary"):
        cluster.add(obj)
    with pytest.raises(PreconditionError) as refused:
        meshca.plan(cluster, NS, root_dir(tmp_path), "east", restart=options(False, "50%"))
    assert "restart 2 istiod Deployments (revision default, canary)" in refused.value.message
    assert "in 3 batches of at most 2" in refused.value.message


def test_with_restart_the_plan_carries_the_change_and_marks_the_secret(tmp_path: Path) -> None:
    cluster = mesh()
    now = datetime.now(UTC)
    ca_plan = meshca.plan(cluster, NS, root_dir(tmp_path), "east", now=now, restart=options(True))
    assert cluster.writes == []
    assert ca_plan.desired is not None and ca_plan.change is not None
    annotations = ca_plan.desired["metadata"]["annotations"]
    assert annotations == {meshca.ROOT_CHANGE_ANNOTATION: _stamp(now)}
    change = ca_plan.change
    assert [p.revision for p in change.istiods] == ["default"]
    # the Istio namespace first (the gateway), then the rest, two at a time
    assert [[str(e.workload) for e in b] for b in change.batches] == [
        ["Deployment/istio-system/istio-ingressgateway"],
        ["Deployment/shop/cart", "Deployment/shop/orders"],
        ["Deployment/shop/web"],
    ]
    assert change.namespaces == [NS, "shop"]
    assert "PRIVATE" not in ca_plan.summary


def _written(cluster: FakeCluster, tmp_path: Path, since: datetime) -> Path:
    """cacerts of a new root as the first half of a change left it, marked since `since`."""
    root = root_dir(tmp_path)
    source = meshca.read_dir(root, datetime.now(UTC))
    assert isinstance(source, certs.RootCa)
    ca = certs.make_cluster_ca(source, "east")
    secret = meshca._secret(NS, ca, since)
    cluster.add(secret)
    return root


def _istiod_restarted(cluster: FakeCluster, since: datetime, ready_at: datetime) -> None:
    """istiod as its restart after `since` leaves it: its Pod ready at `ready_at`."""
    live = cluster.get(Ref("apps/v1", "Deployment", "istiod", NS))
    assert live is not None
    live["spec"]["template"]["metadata"]["annotations"] = {RESTARTED_AT: _stamp(since)}
    cluster.add(live)
    istiod_pod = next(p for p in cluster.list("v1", "Pod", NS, "app=istiod"))
    istiod_pod["status"]["conditions"] = [
        {"type": "Ready", "status": "True", "lastTransitionTime": _stamp(ready_at)}
    ]
    cluster.add(istiod_pod)


def test_a_change_under_way_is_resumed_where_it_stopped(tmp_path: Path) -> None:
    cluster = mesh()
    since = T0 + timedelta(hours=1)
    root = _written(cluster, tmp_path, since)
    # without --restart-proxies: refused, saying what is left
    with pytest.raises(PreconditionError, match="a change of root is under way in istio-system"):
        meshca.plan(cluster, NS, root, "east", restart=options(False))
    # istiod restarted after the write, its new Pod ready at T0+2h; web's Pod made after
    ready_at = T0 + timedelta(hours=2)
    _istiod_restarted(cluster, since, ready_at)
    web = next(p for p in cluster.list("v1", "Pod", "shop", "app=web"))
    cluster.delete(Ref.of(web))
    for obj in pod_of("web", "shop", created=ready_at + timedelta(minutes=1)):
        cluster.add(obj)
    ca_plan = meshca.plan(cluster, NS, root, "east", restart=options(True))
    assert ca_plan.desired is None and ca_plan.change is not None
    change = ca_plan.change
    assert change.istiods == []
    assert sorted(str(e.workload) for e in change.restarted) == [
        "Deployment/istio-system/istio-ingressgateway",
        "Deployment/shop/cart",
        "Deployment/shop/orders",
    ]


def test_the_workload_half_restarts_all_then_clears_the_mark(tmp_path: Path) -> None:
    cluster = mesh()
    since = T0 + timedelta(hours=1)
    root = _written(cluster, tmp_path, since)
    _istiod_restarted(cluster, since, T0 + timedelta(hours=2))
    # a template that pins the proxy image is restarted all the same: it needs a certificate
    cart = cluster.get(Ref("apps/v1", "Deployment", "cart", "shop"))
    assert cart is not None
    cart["spec"]["template"]["spec"] = {
        "containers": [{"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.31.1"}]
    }
    cluster.add(cart)
    cluster.admit = lambda obj: {
        **obj,
        "metadata": {**obj["metadata"], "annotations": {STATUS: "{}"}},
        "spec": {
            "containers": [{"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.31.1"}]
        },
    }
    ctx = run_context(cluster, command="install")
    ca_plan = meshca.plan(cluster, NS, root, "east", restart=options(True))
    with ctx.session():
        meshca.change_root_workloads(ctx, ca_plan)
    for name, namespace in (("cart", "shop"), ("orders", "shop"), ("web", "shop")):
        workload = cluster.get(Ref("apps/v1", "Deployment", name, namespace))
        assert workload is not None
        assert RESTARTED_AT in workload["spec"]["template"]["metadata"]["annotations"], name
    secret = cluster.get(meshca.secret_ref(NS))
    assert secret is not None
    assert meshca.ROOT_CHANGE_ANNOTATION not in (secret["metadata"].get("annotations") or {})
    assert any("Job/shop/report" in n for n in ctx.result.notes)
    values = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    body = b"".join(values["ca-key.pem"].splitlines()[1:-1]).decode()
    text = repr(ctx.result.to_json())
    assert "PRIVATE" not in text and body not in text
    # once done, the same --ca writes nothing
    writes = list(cluster.writes)
    again = meshca.plan(cluster, NS, root, "east", restart=options(True))
    assert again.desired is None and again.change is None
    assert cluster.writes == writes


def test_a_root_not_published_in_time_fails_naming_the_namespaces(tmp_path: Path) -> None:
    cluster = mesh()
    root = meshca.read_dir(root_dir(tmp_path), datetime.now(UTC))
    assert isinstance(root, certs.RootCa)
    other = meshca.read_dir(root_dir(tmp_path, "other"), datetime.now(UTC))
    assert isinstance(other, certs.RootCa)
    cluster.add(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": meshca.ROOT_CONFIGMAP, "namespace": NS},
            "data": {meshca.ROOT_CONFIGMAP_KEY: other.cert_pem.decode()},
        }
    )
    assert meshca.root_published(cluster, root.cert_pem, [NS, "shop"]) == [
        "istio-system (another root)",
        f"shop (no {meshca.ROOT_CONFIGMAP})",
    ]
    with pytest.raises(WaitTimeoutError) as late:
        meshca.wait_root_published(cluster, root.cert_pem, [NS, "shop"], timeout=0.2)
    assert "does not hold the new root after 0s in: istio-system (another root)" in (
        late.value.message
    )
    assert "re-run the same command with --restart-proxies" in (late.value.hint or "")


def test_join_restart_flags_go_with_ca(tmp_path: Path) -> None:
    from kymamesh.cli.mesh import mesh_ca

    with pytest.raises(UsageError, match="go with --ca"):
        mesh_ca(None, True, None, 300)
    with pytest.raises(UsageError, match="--restart-batch goes with --restart-proxies"):
        mesh_ca(tmp_path, False, "5", 300)
    shared = mesh_ca(tmp_path, True, "25%", 300)
    assert shared is not None and shared.restart == restarts.RestartOptions(
        True, "25%", timeout=300
    )


def test_an_unfinished_change_is_named_for_a_run_without_ca(tmp_path: Path) -> None:
    cluster = mesh()
    assert meshca.unfinished(cluster, NS) is None
    _written(cluster, tmp_path, T0)
    note = meshca.unfinished(cluster, NS)
    assert note is not None and "a change of root begun 2026-01-01T00:00:00Z" in note
    assert "--ca DIR --restart-proxies" in note
