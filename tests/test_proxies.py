"""Sidecar analysis (kymamesh/istio/sidecars.py), rollouts (kymamesh/workloads/rollouts.py) and the
restarts (kymamesh/workloads/restarts.py, step `restart-proxies`): which workloads run out-of-date
sidecars, listing them without writing, restarting them on request.

Pure functions over Pod dicts, the step on an in-memory cluster, and one test on the
test cluster (Pods with an `istio-proxy` container made by hand, in a namespace outside the
mesh, so the injector leaves them as written). tests/test_istiod_cluster.py has the same
judgement on sidecars istiod really injected.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kymamesh import errors
from kymamesh.adapters.cluster import Ref
from kymamesh.istio.sidecars import (
    OutdatedWorkload,
    Workload,
    has_sidecar,
    image_repository,
    injector_proxy_image,
    injector_proxy_resources,
    istiod_revisions,
    outdated_reasons,
    outdated_workloads,
    owner_workload,
    proxy_version,
    resource_differences,
    sidecar_coverage,
    wanted_resources,
)
from kymamesh.istio.versions import Version
from kymamesh.workflows import patching
from kymamesh.workloads.restarts import (
    RestartOptions,
    opted_out,
    restart_batches,
    restart_options,
    what_to_do,
)
from kymamesh.workloads.rollouts import (
    RESTARTED_AT,
    on_delete,
    restart_pending,
    rollout_pending,
    rollout_unfinished,
)
from tests.support_fake_cluster import FakeCluster, run_context

V130 = Version(1, 30, 3)
RESOURCES = {
    "requests": {"cpu": "10m", "memory": "128Mi"},
    "limits": {"cpu": "1", "memory": "1Gi"},
}
T0 = datetime(2026, 1, 1, tzinfo=UTC)
STATUS = "sidecar.istio.io/status"  # on every Pod istiod injected


def pod(
    name: str = "app-1",
    namespace: str = "shop",
    image: str | None = "docker.io/istio/proxyv2:1.30.3",
    resources: dict[str, Any] | None = None,
    native: bool = False,
    owner: tuple[str, str] | None = ("ReplicaSet", "app-5d4f"),
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    created: datetime = T0,
    phase: str = "Running",
) -> dict[str, Any]:
    containers: list[dict[str, Any]] = [{"name": "app", "image": "shop:1"}]
    init: list[dict[str, Any]] = []
    if image is not None:
        proxy = {
            "name": "istio-proxy",
            "image": image,
            "resources": RESOURCES if resources is None else resources,
        }
        (init if native else containers).append(
            {**proxy, "restartPolicy": "Always"} if native else proxy
        )
    injected = {STATUS: '{"containers":["istio-proxy"]}'} if image is not None else {}
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "annotations": {**injected, **(annotations or {})},
        "labels": labels or {},
    }
    if owner:
        meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": containers, "initContainers": init},
        "status": {"phase": phase},
    }


RS = {
    ("shop", "app-5d4f"): {
        "metadata": {
            "name": "app-5d4f",
            "namespace": "shop",
            "ownerReferences": [{"kind": "Deployment", "name": "app", "controller": True}],
        }
    }
}


# -- one Pod -----------------------------------------------------------------------------


def test_sidecar_found_as_container_native_sidecar_or_annotation() -> None:
    assert has_sidecar(pod())
    assert has_sidecar(pod(native=True))
    assert not has_sidecar(pod(image=None))
    assert has_sidecar(pod(image=None, annotations={"sidecar.istio.io/status": "{}"}))


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("docker.io/istio/proxyv2:1.30.3", V130),
        ("registry:5000/istio/proxyv2:1.29.4-distroless", Version(1, 29, 4)),
        ("gcr.io/istio/proxyv2:1.30.3@sha256:" + "a" * 64, V130),
        ("istio/proxyv2:latest", None),
        ("istio/proxyv2", None),
    ],
)
def test_proxy_version(image: str, version: Version | None) -> None:
    assert proxy_version(pod(image=image)) == version


def test_current_sidecar_is_not_outdated() -> None:
    assert outdated_reasons(pod(), {"default": V130}, {"default": RESOURCES}) == []
    # same quantities spelled differently
    spelled = {
        "requests": {"cpu": "0.01", "memory": "131072Ki"},
        "limits": {"cpu": "1000m", "memory": "1024Mi"},
    }
    assert outdated_reasons(pod(resources=spelled), {"default": V130}, {"default": RESOURCES}) == []


def test_a_sidecar_the_injector_did_not_put_there_is_not_judged() -> None:
    """Outdated is only said of injected sidecars (`sidecar.istio.io/status`): a container
    written into the Pod by hand is not the injector's to renew."""
    by_hand = pod(image="istio/proxyv2:1.29.4")
    del by_hand["metadata"]["annotations"][STATUS]
    assert outdated_reasons(by_hand, {"default": V130}, {"default": RESOURCES}) == []
    assert outdated_workloads([by_hand], RS, {"default": V130}, {}) == []


def test_older_proxy_version_is_outdated() -> None:
    reasons = outdated_reasons(pod(image="istio/proxyv2:1.29.4"), {"default": V130}, {})
    assert reasons == ["istio-proxy 1.29.4, istiod 1.30.3"]


def test_other_resources_are_outdated() -> None:
    old = {"requests": {"cpu": "10m", "memory": "128Mi"}, "limits": {"cpu": "2", "memory": "512Mi"}}
    reasons = outdated_reasons(pod(resources=old), {"default": V130}, {"default": RESOURCES})
    assert len(reasons) == 1
    assert "limits.cpu 2, wanted 1" in reasons[0]
    assert "limits.memory 512Mi, wanted 1Gi" in reasons[0]
    missing = outdated_reasons(pod(resources={}), {}, {"default": RESOURCES})
    assert "limits.memory unset, wanted 1Gi" in missing[0]


def test_gateway_resources_are_its_own() -> None:
    gateway = pod(
        resources={"limits": {"cpu": "2", "memory": "1Gi"}},
        annotations={"inject.istio.io/templates": "gateway"},
    )
    assert outdated_reasons(gateway, {"default": V130}, {"default": RESOURCES}) == []
    old_gateway = pod(
        image="istio/proxyv2:1.29.4", annotations={"inject.istio.io/templates": "gateway"}
    )
    assert outdated_reasons(old_gateway, {"default": V130}, {"default": RESOURCES}) == [
        "istio-proxy 1.29.4, istiod 1.30.3"
    ]


def test_pod_annotations_override_injector_resources() -> None:
    annotations = {"sidecar.istio.io/proxyMemoryLimit": "2Gi", "sidecar.istio.io/proxyCPU": "50m"}
    wanted = wanted_resources(RESOURCES, annotations)
    assert wanted["limits"]["memory"] == "2Gi"
    assert wanted["requests"]["cpu"] == "50m"
    custom = {
        "requests": {"cpu": "50m", "memory": "128Mi"},
        "limits": {"cpu": "1", "memory": "2Gi"},
    }
    assert (
        outdated_reasons(pod(resources=custom, annotations=annotations), {}, {"default": RESOURCES})
        == []
    )


def test_requests_default_to_limits() -> None:
    wanted = wanted_resources({"limits": {"cpu": "1", "memory": "1Gi"}}, {})
    assert wanted["requests"] == {"cpu": "1", "memory": "1Gi"}
    container = {
        "resources": {
            "requests": {"cpu": "1", "memory": "1Gi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        }
    }
    assert resource_differences(container, wanted) == []


def test_revisioned_sidecar_is_compared_with_its_istiod() -> None:
    status = json.dumps({"revision": "canary", "containers": ["istio-proxy"]})
    canary = pod(image="istio/proxyv2:1.29.4", annotations={"sidecar.istio.io/status": status})
    versions = {"default": V130, "canary": Version(1, 29, 4)}
    default_only = {"default": {"limits": {"memory": "9Gi"}}}
    assert outdated_reasons(canary, versions, default_only) == []
    # its resources are judged by its own revision's injector, not the default one's
    canary_resources = {**default_only, "canary": {"limits": {"memory": "9Gi"}}}
    assert outdated_reasons(canary, versions, canary_resources) == [
        "resources differ: requests.memory 128Mi, wanted 9Gi; limits.memory 1Gi, wanted 9Gi"
    ]
    assert outdated_reasons(canary, versions, {"canary": RESOURCES}) == []


# -- owners and workloads ---------------------------------------------------------------


def test_owner_workload() -> None:
    assert owner_workload(pod(), RS) == Workload("Deployment", "shop", "app")
    assert owner_workload(pod(owner=("StatefulSet", "db")), RS) == Workload(
        "StatefulSet", "shop", "db"
    )
    assert owner_workload(pod(owner=None, name="lonely"), RS) == Workload("Pod", "shop", "lonely")
    assert not Workload("Job", "shop", "x").restartable
    assert owner_workload(pod(owner=("ReplicaSet", "orphan")), RS) == Workload(
        "ReplicaSet", "shop", "orphan"
    )


def test_outdated_workloads_grouped_and_oldest_pod_kept() -> None:
    pods = [
        pod("app-1", image="istio/proxyv2:1.29.4", created=T0 + timedelta(minutes=5)),
        pod("app-2", image="istio/proxyv2:1.29.4", created=T0),
        pod("db-0", owner=("StatefulSet", "db")),  # current
        pod("gone", image="istio/proxyv2:1.29.4", phase="Succeeded", owner=("Job", "j")),
        pod("plain", image=None),
    ]
    found = outdated_workloads(pods, RS, {"default": V130}, {"default": RESOURCES})
    assert [str(o.workload) for o in found] == ["Deployment/shop/app"]
    assert found[0].oldest_pod == T0
    assert "istio-proxy 1.29.4" in found[0].describe()


def test_restart_pending() -> None:
    def deployment(annotation: str | None) -> dict[str, Any]:
        annotations = {RESTARTED_AT: annotation} if annotation else {}
        return {"spec": {"template": {"metadata": {"annotations": annotations}}}}

    assert not restart_pending(deployment(None), T0)
    assert restart_pending(deployment("2026-01-01T00:00:10Z"), T0)
    assert restart_pending(deployment("2026-01-01T00:00:00Z"), T0)
    assert not restart_pending(deployment("2025-12-31T23:00:00Z"), T0)


def test_rollout_pending_by_the_template_each_pod_was_made_with() -> None:
    """A Pod made in the same second as the restart is not taken for one the rollout will
    still replace (timestamps have one-second steps; the annotation is exact)."""

    def deployment(annotation: str | None) -> dict[str, Any]:
        annotations = {RESTARTED_AT: annotation} if annotation else {}
        return {"spec": {"template": {"metadata": {"annotations": annotations}}}}

    restart = "2026-01-01T00:00:10Z"
    assert rollout_pending(deployment(restart), [None])  # made before any restart
    assert rollout_pending(deployment(restart), ["2025-12-01T00:00:00Z", restart])
    assert not rollout_pending(deployment(restart), [restart])  # made by the current template
    assert not rollout_pending(deployment(None), [None])
    pods = [
        pod("app-1", image="istio/proxyv2:1.29.4", annotations={RESTARTED_AT: restart}),
        pod("app-2", image="istio/proxyv2:1.29.4"),
    ]
    (entry,) = outdated_workloads(pods, RS, {"default": V130}, {})
    assert sorted(entry.pod_restarts, key=str) == [restart, None]


def test_sidecar_coverage() -> None:
    pods = [
        pod("app-1"),
        pod("app-2", image=None, labels={"sidecar.istio.io/inject": "true"}),
        pod("web-1", image=None, owner=("DaemonSet", "web")),
    ]
    coverage = {str(c.workload): c for c in sidecar_coverage(pods, RS)}
    app = coverage["Deployment/shop/app"]
    assert (app.pods, app.with_sidecar, app.without, app.labelled) == (2, 1, 1, 1)
    assert app.pod_names_without == ("app-2",)
    assert coverage["DaemonSet/shop/web"].with_sidecar == 0


def test_injector_values_and_istiod_versions() -> None:
    values = {"global": {"proxy": {"resources": RESOURCES}}}
    configmap = {"data": {"values": json.dumps(values), "config": "policy: disabled"}}
    assert injector_proxy_resources(configmap) == RESOURCES
    assert injector_proxy_resources({"data": {"values": "not json"}}) is None
    assert injector_proxy_resources(None) is None
    deployments = [
        _istiod("istiod", "docker.io/istio/pilot:1.30.3", None),
        _istiod("istiod-canary", "registry:5000/istio/pilot:1.29.4-distroless", "canary"),
    ]
    assert istiod_revisions(deployments) == {"default": V130, "canary": Version(1, 29, 4)}


def _istiod(name: str, image: str, revision: str | None) -> dict[str, Any]:
    labels = {"app": "istiod", **({"istio.io/rev": revision} if revision else {})}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "istio-system", "labels": labels},
        "spec": {"template": {"spec": {"containers": [{"name": "discovery", "image": image}]}}},
    }


# -- the step on an in-memory cluster ---------------------------------------------------


ROLLED_OUT = {
    "observedGeneration": 1000,
    "replicas": 1,
    "updatedReplicas": 1,
    "availableReplicas": 1,
}


def mesh_with_old_sidecar() -> FakeCluster:
    cluster = FakeCluster()
    cluster.add(_istiod("istiod", "docker.io/istio/pilot:1.30.3", None))
    cluster.add(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "istio-sidecar-injector", "namespace": "istio-system"},
            "data": {"values": json.dumps({"global": {"proxy": {"resources": RESOURCES}}})},
        }
    )
    cluster.add(pod("app-1", image="istio/proxyv2:1.29.4"))
    cluster.add({"apiVersion": "apps/v1", "kind": "ReplicaSet", **RS[("shop", "app-5d4f")]})
    cluster.add(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "app", "namespace": "shop"},
            "spec": {"template": {"metadata": {"labels": {"app": "app"}}}},
            "status": ROLLED_OUT,  # the fake has no controller: every rollout is done
        }
    )
    cluster.admit = inject(RESOURCES)
    return cluster


def inject(resources: dict[str, Any], image: str = "docker.io/istio/proxyv2:1.30.3") -> Any:
    """A stand-in for istiod's injector in the fake cluster: adds this sidecar to a Pod."""

    def admit(obj: dict[str, Any]) -> dict[str, Any]:
        if obj["kind"] == "Pod":
            meta = obj.setdefault("metadata", {})
            meta["annotations"] = {**(meta.get("annotations") or {}), STATUS: "{}"}
            spec = obj.setdefault("spec", {})
            spec.setdefault("containers", []).append(
                {"name": "istio-proxy", "image": image, "resources": resources}
            )
        return obj

    return admit


def proxies_spec(restart: bool) -> list[patching.StepSpec]:
    specs = patching.load_patch_list({"restart-proxies": {"restart": restart}})
    return [s for s in specs if s.name == "restart-proxies"]


def test_step_lists_without_writing_by_default() -> None:
    cluster = mesh_with_old_sidecar()
    ctx = run_context(cluster)
    patching.run_patch(ctx, patching.PatchInputs(), proxies_spec(False))
    assert ctx.result.phases[0].items[0].outcome == "unchanged"
    assert cluster.writes == []
    assert len(ctx.result.notes) == 1
    assert "Deployment/shop/app (istio-proxy 1.29.4, istiod 1.30.3)" in ctx.result.notes[0]
    assert "--restart-proxies" in ctx.result.notes[0]


def test_step_restarts_on_request_and_does_not_restart_twice() -> None:
    cluster = mesh_with_old_sidecar()
    ctx = run_context(cluster)
    patching.run_patch(ctx, patching.PatchInputs(), proxies_spec(True))
    item = ctx.result.phases[0].items[0]
    assert item.outcome == "changed"
    assert item.changes == [
        "Deployment/shop/app: Deployment/shop/app restarted, batch 1/1 "
        "(istio-proxy 1.29.4, istiod 1.30.3)"
    ]
    deployment = cluster.get(Ref("apps/v1", "Deployment", "app", "shop"))
    assert deployment is not None
    assert RESTARTED_AT in deployment["spec"]["template"]["metadata"]["annotations"]
    assert [w for w in cluster.unlocked_writes if not w.startswith("create Namespace/")] == []
    writes = list(cluster.writes)
    again = run_context(cluster)
    patching.run_patch(
        again, patching.PatchInputs(), proxies_spec(True)
    )  # the old Pod is still there: rollout under way
    assert cluster.writes == writes
    assert any("restart already under way" in n for n in again.result.notes)


def test_step_restarts_only_once_the_injector_gives_the_current_sidecar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """istiod sees a changed injector ConfigMap only when the kubelet refreshes its volume:
    a restart before that would bring back the old sidecar."""
    cluster = mesh_with_old_sidecar()
    stale = inject({"limits": {"memory": "512Mi"}})
    current = inject(RESOURCES)
    calls: list[int] = []

    def admit(obj: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)  # stale for the step's two checks and the first wait
        return (stale if len(calls) <= 3 else current)(obj)

    cluster.admit = admit
    slept: list[float] = []
    monkeypatch.setattr("kymamesh.waits.time.sleep", slept.append)
    ctx = run_context(cluster)
    patching.run_patch(ctx, patching.PatchInputs(), proxies_spec(True))
    assert ctx.result.phases[0].items[0].outcome == "changed"
    assert len(calls) == 4 and len(slept) == 1
    deployment = cluster.get(Ref("apps/v1", "Deployment", "app", "shop"))
    assert deployment is not None
    assert RESTARTED_AT in deployment["spec"]["template"]["metadata"]["annotations"]


def test_step_does_not_restart_while_the_injector_gives_an_old_sidecar() -> None:
    cluster = mesh_with_old_sidecar()
    cluster.admit = inject({"limits": {"memory": "512Mi"}})
    ctx = run_context(cluster)
    ctx.options.timeout = 0.0
    with pytest.raises(errors.PartialFailureError):
        patching.run_patch(ctx, patching.PatchInputs(), proxies_spec(True))
    item = ctx.result.phases[0].items[0]
    assert item.outcome == "failed"
    assert "not restarted, because istiod's injector still gives an out-of-date sidecar" in (
        item.error or ""
    )
    assert "limits.memory 512Mi, wanted 1Gi" in (item.error or "")
    assert [w for w in cluster.writes if "Deployment" in w] == []  # nothing restarted


def test_step_does_not_restart_workloads_whose_new_pods_would_get_no_sidecar() -> None:
    cluster = mesh_with_old_sidecar()
    cluster.admit = None  # no injector: e.g. injection turned off for the namespace
    ctx = run_context(cluster)
    patching.run_patch(ctx, patching.PatchInputs(), proxies_spec(True))
    assert ctx.result.phases[0].items[0].outcome == "unchanged"
    assert [w for w in cluster.writes if "Deployment" in w] == []
    assert any("would get no sidecar at all" in n for n in ctx.result.notes)


def test_step_with_no_istio_does_nothing() -> None:
    cluster = FakeCluster()
    cluster.add(pod("app-1", image="istio/proxyv2:1.29.4"))
    ctx = run_context(cluster)
    patching.run_patch(ctx, patching.PatchInputs(), proxies_spec(True))
    assert cluster.writes == [] and ctx.result.notes == []


def test_step_does_not_restart_a_template_that_pins_the_old_image() -> None:
    cluster = mesh_with_old_sidecar()
    pinned = cluster.get(Ref("apps/v1", "Deployment", "app", "shop"))
    assert pinned is not None
    pinned["spec"]["template"]["spec"] = {
        "containers": [{"name": "istio-proxy", "image": "istio/proxyv2:1.29.4"}]
    }
    cluster.add(pinned)
    ctx = run_context(cluster)
    patching.run_patch(ctx, patching.PatchInputs(), proxies_spec(True))
    assert cluster.writes == []
    assert any("sets the istio-proxy image itself" in n for n in ctx.result.notes)


# -- on the test cluster ------------------------------------------------------------------


def _workload(
    name: str,
    proxy_image: str | None,
    resources: dict[str, Any],
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Deployment; with `proxy_image` its template carries an istio-proxy container."""
    containers: list[dict[str, Any]] = [{"name": "app", "image": "example.com/app:1"}]
    if proxy_image is not None:
        containers.append({"name": "istio-proxy", "image": proxy_image, "resources": resources})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, **(labels or {})}},
                "spec": {"containers": containers},
            },
        },
    }


def test_restart_proxies_on_the_test_cluster(fresh_cluster: Any) -> None:
    """Sidecars injected by the real istiod, changed injector settings, and workloads a
    restart cannot help: listed without writes, then only the right one restarted."""
    from tests.support_patch import ensure_istio, get_json, run_steps

    cluster = fresh_cluster()  # its injector settings change: a cluster of its own
    ensure_istio(cluster)
    namespace = cluster.create_namespace("shop", labels={"istio-injection": "enabled"})
    opted_in = {"sidecar.istio.io/inject": "true"}
    small = {
        "requests": {"cpu": "10m", "memory": "64Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    }
    injector = {
        "requests": {"cpu": "10m", "memory": "128Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    for obj in (
        _workload("auto-app", None, {}, opted_in),  # istiod injects Kyma's sidecar
        _workload("custom", "auto", small, opted_in),  # sets the sidecar's resources itself
        # injected, but its template keeps the old image (the injector merges it in)
        _workload("pinned", "docker.io/istio/proxyv2:1.29.4", injector, opted_in),
    ):
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))
    # with the injector's annotation, as if an older istiod had injected it
    bare = pod("bare", namespace=namespace, image="docker.io/istio/proxyv2:1.29.4", owner=None)
    bare["metadata"].pop("creationTimestamp")
    bare.pop("status")
    bare["spec"].pop("initContainers")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(bare))
    for name in ("auto-app", "custom", "pinned"):
        cluster.kubectl(
            "rollout", "status", f"deployment/{name}", "-n", namespace, "--timeout=120s"
        )

    def sidecars_of(app: str) -> list[dict[str, Any]]:
        """The istio-proxy container of each of the app's Pods (not those being deleted)."""
        out = get_json(cluster, "pods", "-n", namespace, "-l", f"app={app}")
        assert out is not None
        live = [p for p in out["items"] if not p["metadata"].get("deletionTimestamp")]
        return [c for p in live for c in p["spec"]["containers"] if c["name"] == "istio-proxy"]

    def sidecar_of(app: str) -> dict[str, Any]:
        (container,) = sidecars_of(app)
        return container

    assert sidecar_of("auto-app")["resources"] == injector
    assert sidecar_of("custom")["resources"] == small  # the template's win over the injector's

    # New sidecar settings: every injected sidecar but the template-set one is now out of date.
    smaller = {"proxy": {"limits": {"memory": "768Mi"}}}
    run_steps(cluster, ["sidecar-resources"], {"sidecar-resources": smaller})
    with cluster.audit.counting() as writes:
        listed = run_steps(cluster, ["restart-proxies"])
    assert writes.total == 0, writes.describe()
    notes = " ".join(listed.notes)
    assert f"Deployment/{namespace}/auto-app (resources differ: " in notes
    assert "limits.memory 1Gi, wanted 768Mi" in notes
    assert f"Deployment/{namespace}/pinned (istio-proxy 1.29.4, istiod 1.30.3" in notes
    assert f"out-of-date sidecar in Pod/{namespace}/bare (istio-proxy 1.29.4" in notes
    assert "a bare Pod is never restarted; re-create it yourself" in notes

    def replica_sets(app: str) -> set[str]:
        out = get_json(cluster, "replicasets", "-n", namespace, "-l", f"app={app}")
        assert out is not None
        return {rs["metadata"]["name"] for rs in out["items"]}

    before = {app: replica_sets(app) for app in ("auto-app", "custom", "pinned")}
    restarted = run_steps(cluster, ["restart-proxies"], {"restart-proxies": {"restart": True}})
    item = restarted.phases[0].items[0]
    assert item.outcome == "changed", item
    mine = [c for c in item.changes if f"/{namespace}/" in c]
    assert len(mine) == 1 and mine[0].startswith(f"Deployment/{namespace}/auto-app: ")
    notes = " ".join(restarted.notes)
    assert "sets the istio-proxy image itself" in notes and f"{namespace}/pinned" in notes
    assert "sets the istio-proxy resources itself" in notes and f"{namespace}/custom" in notes
    auto = get_json(cluster, "deployment", "auto-app", "-n", namespace)
    assert auto is not None
    assert RESTARTED_AT in auto["spec"]["template"]["metadata"]["annotations"]
    cluster.kubectl("rollout", "status", "deployment/auto-app", "-n", namespace, "--timeout=120s")
    cluster.wait_for(
        lambda: [c["resources"]["limits"]["memory"] for c in sidecars_of("auto-app")] == ["768Mi"],
        60,
        "auto-app's new Pod with the new sidecar",
    )
    assert replica_sets("custom") == before["custom"]
    assert replica_sets("pinned") == before["pinned"]


# -- the order of restarts, opt-outs, and when a rollout is done (pure) ------------------


def _entry(kind: str, namespace: str, name: str) -> OutdatedWorkload:
    return OutdatedWorkload(Workload(kind, namespace, name), reasons=["istio-proxy 1.29.4"])


def _names(batches: list[list[OutdatedWorkload]]) -> list[list[str]]:
    return [[str(e.workload) for e in batch] for batch in batches]


def test_system_namespaces_restart_first_then_the_rest_in_batches() -> None:
    entries = [
        _entry("Deployment", "shop", "web"),
        _entry("StatefulSet", "shop", "db"),
        _entry("Deployment", "kyma-system", "kyma-app"),
        _entry("DaemonSet", "orders", "agent"),
        _entry("Deployment", "istio-system", "istio-ingressgateway"),
        _entry("ReplicaSet", "shop", "rs-only"),
        _entry("Deployment", "kyma-system", "api-gateway"),
    ]
    system = ["istio-system", "kyma-system"]
    assert _names(restart_batches(iter(entries), system, 2)) == [
        ["Deployment/istio-system/istio-ingressgateway", "Deployment/kyma-system/api-gateway"],
        ["Deployment/kyma-system/kyma-app"],  # a batch never mixes system and other workloads
        ["DaemonSet/orders/agent", "Deployment/shop/web"],
        ["ReplicaSet/shop/rs-only", "StatefulSet/shop/db"],
    ]
    assert _names(restart_batches(entries, system, 1))[0] == [
        "Deployment/istio-system/istio-ingressgateway"
    ]
    assert len(restart_batches(entries, system, 1)) == len(entries)
    assert _names(restart_batches(entries, system, 100)) == [
        [
            "Deployment/istio-system/istio-ingressgateway",
            "Deployment/kyma-system/api-gateway",
            "Deployment/kyma-system/kyma-app",
        ],
        [
            "DaemonSet/orders/agent",
            "Deployment/shop/web",
            "ReplicaSet/shop/rs-only",
            "StatefulSet/shop/db",
        ],
    ]
    assert restart_batches([], system, 3) == []
    with pytest.raises(ValueError, match="at least 1"):
        restart_batches(entries, system, 0)


@pytest.mark.parametrize(
    ("workload", "namespace", "opted"),
    [
        ({}, {}, None),
        ({"kymamesh.io/restart": "false"}, {}, "its workload is annotated"),
        ({}, {"kymamesh.io/restart": "false"}, "its namespace is annotated"),
        ({"kymamesh.io/restart": "true"}, {"kymamesh.io/restart": "false"}, None),
        ({"kymamesh.io/restart": "False"}, {"kymamesh.io/restart": "true"}, "workload"),
        ({"kymamesh.io/restart": "never"}, {}, "which is neither"),
        ({}, {"kymamesh.io/restart": "true"}, None),
    ],
)
def test_opt_out_by_workload_or_namespace(
    workload: dict[str, str], namespace: dict[str, str], opted: str | None
) -> None:
    found = opted_out(workload, namespace)
    if opted is None:
        assert found is None
    else:
        assert found is not None and opted in found


def test_what_kymamesh_does_with_each_kind() -> None:
    assert Workload("Deployment", "a", "b").restartable
    assert Workload("ReplicaSet", "a", "b").restartable
    assert Workload("ReplicaSet", "a", "b").by_deleting_pods
    assert not Workload("StatefulSet", "a", "b").by_deleting_pods
    for kind in ("Job", "Pod", "Rollout"):
        assert not Workload(kind, "a", "b").restartable
    assert "when the Job runs again" in what_to_do(Workload("Job", "a", "b"))
    assert "re-create it yourself" in what_to_do(Workload("Pod", "a", "b"))
    assert "through its controller (Rollout)" in what_to_do(Workload("Rollout", "a", "b"))
    assert on_delete({"spec": {"updateStrategy": {"type": "OnDelete"}}})
    assert not on_delete({"spec": {"updateStrategy": {"type": "RollingUpdate"}}})


def test_replica_set_of_another_controller_is_that_controllers() -> None:
    rollout_rs = {
        ("shop", "canary-7f"): {
            "metadata": {
                "name": "canary-7f",
                "namespace": "shop",
                "ownerReferences": [{"kind": "Rollout", "name": "canary", "controller": True}],
            }
        },
        ("shop", "alone-1"): {"metadata": {"name": "alone-1", "namespace": "shop"}},
    }
    assert owner_workload(pod(owner=("ReplicaSet", "canary-7f")), rollout_rs) == Workload(
        "Rollout", "shop", "canary"
    )
    assert owner_workload(pod(owner=("ReplicaSet", "alone-1")), rollout_rs) == Workload(
        "ReplicaSet", "shop", "alone-1"
    )


def test_a_pod_that_names_its_own_proxy_image_is_left_alone() -> None:
    own = pod(
        image="docker.io/istio/proxyv2:1.29.4",
        resources={},
        annotations={"sidecar.istio.io/proxyImage": "docker.io/istio/proxyv2:1.29.4"},
    )
    assert outdated_reasons(own, {"default": V130}, {"default": RESOURCES}) == []
    found = outdated_workloads(
        [own, pod("app-2", image="istio/proxyv2:1.29.4")], RS, {"default": V130}, {}
    )
    assert [o.pods for o in found] == [["app-2"]]


def _rollout(kind: str, spec: dict[str, Any], status: dict[str, Any], generation: int = 2) -> Any:
    return {"kind": kind, "metadata": {"generation": generation}, "spec": spec, "status": status}


@pytest.mark.parametrize(
    ("kind", "spec", "status", "unfinished"),
    [
        ("Deployment", {"replicas": 2}, {"observedGeneration": 1}, "not yet observed"),
        (
            "Deployment",
            {"replicas": 2},
            {"observedGeneration": 2, "updatedReplicas": 1, "replicas": 3},
            "1 of 2 replicas updated",
        ),
        (
            "Deployment",
            {"replicas": 2},
            {"observedGeneration": 2, "updatedReplicas": 2, "replicas": 3, "availableReplicas": 2},
            "1 old replica(s) pending termination",
        ),
        (
            "Deployment",
            {"replicas": 2},
            {"observedGeneration": 2, "updatedReplicas": 2, "replicas": 2, "availableReplicas": 1},
            "1 of 2 updated replicas available",
        ),
        (
            "Deployment",
            {"replicas": 2},
            {"observedGeneration": 2, "updatedReplicas": 2, "replicas": 2, "availableReplicas": 2},
            None,
        ),
        ("Deployment", {"replicas": 0}, {"observedGeneration": 2}, None),
        (
            "StatefulSet",
            {"replicas": 2},
            {"observedGeneration": 2, "updatedReplicas": 1, "readyReplicas": 2, "replicas": 2},
            "1 of 2 replicas updated",
        ),
        (
            "StatefulSet",
            {"replicas": 2},
            {
                "observedGeneration": 2,
                "updatedReplicas": 2,
                "readyReplicas": 2,
                "replicas": 2,
                "currentRevision": "a",
                "updateRevision": "b",
            },
            "not yet current",
        ),
        (
            "StatefulSet",
            {"replicas": 2},
            {
                "observedGeneration": 2,
                "updatedReplicas": 2,
                "readyReplicas": 2,
                "replicas": 2,
                "currentRevision": "b",
                "updateRevision": "b",
            },
            None,
        ),
        (
            "DaemonSet",
            {},
            {
                "observedGeneration": 2,
                "desiredNumberScheduled": 3,
                "updatedNumberScheduled": 2,
                "numberAvailable": 3,
            },
            "2 of 3 Pods updated",
        ),
        (
            "DaemonSet",
            {},
            {
                "observedGeneration": 2,
                "desiredNumberScheduled": 3,
                "updatedNumberScheduled": 3,
                "numberAvailable": 2,
            },
            "2 of 3 updated Pods available",
        ),
        (
            "DaemonSet",
            {},
            {
                "observedGeneration": 2,
                "desiredNumberScheduled": 3,
                "updatedNumberScheduled": 3,
                "numberAvailable": 3,
            },
            None,
        ),
        (
            "ReplicaSet",
            {"replicas": 2},
            {"observedGeneration": 2, "replicas": 1, "readyReplicas": 1},
            "1 of 2 replicas",
        ),
        (
            "ReplicaSet",
            {"replicas": 2},
            {"observedGeneration": 2, "replicas": 2, "readyReplicas": 2},
            None,
        ),
    ],
)
def test_rollout_finished_as_kubectl_rollout_status_judges(
    kind: str, spec: dict[str, Any], status: dict[str, Any], unfinished: str | None
) -> None:
    found = rollout_unfinished(kind, _rollout(kind, spec, status))
    if unfinished is None:
        assert found is None
    else:
        assert found is not None and unfinished in found
    assert rollout_unfinished(kind, None) == "not found"


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"batchSize": 0}, "batchSize must be a whole number of at least 1, not 0"),
        ({"batchSize": -3}, "not -3"),
        ({"batchSize": "5"}, "not '5'"),
        ({"batchSize": True}, "not True"),
        ({"restart": "yes"}, "restart must be true or false"),
        ({"systemNamespaces": "kyma-system"}, "systemNamespaces must be a list"),
        ({"systemNamespaces": ["kyma-system", ""]}, "systemNamespaces must be a list"),
    ],
)
def test_bad_step_settings_are_refused_before_any_write(
    params: dict[str, Any], problem: str
) -> None:
    cluster = mesh_with_old_sidecar()
    ctx = run_context(cluster)
    specs = patching.load_patch_list({"restart-proxies": {"restart": True, **params}})
    with pytest.raises(errors.UsageError) as refused:
        patching.preflight(ctx, patching.PatchInputs(), specs)
    assert problem in refused.value.message
    assert cluster.writes == []


def test_restart_options_defaults() -> None:
    options = restart_options({})
    assert options == RestartOptions(False, 10, ("kyma-system",), 300.0)


# -- the step on an in-memory cluster: batches, opt-outs, what is left alone ------------------


def _deployment(
    namespace: str, name: str, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
        "spec": {"template": {"metadata": {"labels": {"app": name}}}},
        "status": ROLLED_OUT,
    }


def _old_pod_of(cluster: FakeCluster, namespace: str, name: str) -> None:
    rs = f"{name}-5d4f"
    cluster.add(
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": rs,
                "namespace": namespace,
                "ownerReferences": [{"kind": "Deployment", "name": name, "controller": True}],
            },
        }
    )
    cluster.add(
        pod(
            f"{name}-1", namespace=namespace, image="istio/proxyv2:1.29.4", owner=("ReplicaSet", rs)
        )
    )


def test_step_restarts_in_batches_in_order_and_leaves_opted_out_and_bare_pods() -> None:
    cluster = mesh_with_old_sidecar()  # Deployment shop/app
    for ns, name, marks in (
        ("kyma-system", "kyma-app", None),
        ("orders", "api", None),
        ("shop", "frozen", {"kymamesh.io/restart": "false"}),
        ("legacy", "old", None),
    ):
        cluster.add(_deployment(ns, name, marks))
        _old_pod_of(cluster, ns, name)
    for ns in ("kyma-system", "orders", "shop"):
        cluster.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    cluster.add(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "legacy", "annotations": {"kymamesh.io/restart": "false"}},
        }
    )
    cluster.add(pod("bare", image="istio/proxyv2:1.29.4", owner=None))
    cluster.add(pod("once-x", image="istio/proxyv2:1.29.4", owner=("Job", "once")))
    ctx = run_context(cluster)
    specs = patching.load_patch_list({"restart-proxies": {"restart": True, "batchSize": 1}})
    patching.run_patch(
        ctx, patching.PatchInputs(), [s for s in specs if s.name == "restart-proxies"]
    )
    item = ctx.result.phases[0].items[0]
    assert item.outcome == "changed", item
    assert [c.split(": ", 1)[0] for c in item.changes] == [
        "Deployment/kyma-system/kyma-app",
        "Deployment/orders/api",
        "Deployment/shop/app",
    ]
    assert ["batch 1/3" in item.changes[0], "batch 2/3" in item.changes[1]] == [True, True]
    patched = [w for w in cluster.writes if w.startswith("patch")]
    assert [w.split("/")[-1] for w in patched] == ["kyma-app", "api", "app"], cluster.writes
    notes = " ".join(ctx.result.notes)
    assert "opted out, not restarted (its workload is annotated kymamesh.io/restart=false)" in notes
    assert "Deployment/legacy/old" in notes and "its namespace is annotated" in notes
    assert "Pod/shop/bare" in notes and "re-create it yourself" in notes
    assert "Job/shop/once" in notes and "when the Job runs again" in notes

    writes = list(cluster.writes)
    again = run_context(cluster)
    patching.run_patch(
        again, patching.PatchInputs(), [s for s in specs if s.name == "restart-proxies"]
    )
    assert cluster.writes == writes  # the rollouts are under way: nothing restarted twice


def test_a_batch_whose_rollout_does_not_finish_stops_the_next_and_names_it() -> None:
    cluster = mesh_with_old_sidecar()
    stuck = cluster.get(Ref("apps/v1", "Deployment", "app", "shop"))
    assert stuck is not None
    stuck["status"] = {"observedGeneration": 1000, "replicas": 2, "updatedReplicas": 1}
    cluster.add(stuck)
    cluster.add(_deployment("zoo", "later"))
    _old_pod_of(cluster, "zoo", "later")
    ctx = run_context(cluster)
    ctx.options.timeout = 0.0
    specs = patching.load_patch_list({"restart-proxies": {"restart": True, "batchSize": 1}})
    with pytest.raises(errors.PartialFailureError):
        patching.run_patch(
            ctx, patching.PatchInputs(), [s for s in specs if s.name == "restart-proxies"]
        )
    item = ctx.result.phases[0].items[0]
    assert item.outcome == "failed"
    assert (
        "batch 1/2: rollouts not finished after 0s: Deployment/shop/app (1 old replica(s) "
        "pending termination); not restarted yet: Deployment/zoo/later" in item.error
    )
    patched = [w for w in cluster.writes if w.startswith("patch")]
    assert len(patched) == 1 and patched[0].endswith("/app"), cluster.writes


def test_dry_run_shows_the_batches_and_writes_nothing() -> None:
    cluster = mesh_with_old_sidecar()
    cluster.add(_deployment("kyma-system", "kyma-app"))
    _old_pod_of(cluster, "kyma-system", "kyma-app")
    ctx = run_context(cluster, dry_run=True)
    specs = patching.load_patch_list({"restart-proxies": {"restart": True, "batchSize": 1}})
    patching.run_patch(
        ctx, patching.PatchInputs(), [s for s in specs if s.name == "restart-proxies"]
    )
    item = ctx.result.phases[0].items[0]
    assert item.outcome == "would-change"
    assert item.diff.splitlines() == [
        "  batch 1/2: Deployment/kyma-system/kyma-app: "
        "spec.template.metadata.annotations[kubectl.kubernetes.io/restartedAt] = <now>",
        "  batch 2/2: Deployment/shop/app: "
        "spec.template.metadata.annotations[kubectl.kubernetes.io/restartedAt] = <now>",
    ]
    assert cluster.writes == []


def test_a_quota_refusal_is_an_api_refusal_not_missing_rights() -> None:
    """A ResourceQuota refuses with 403 like RBAC does; the adapter tells them apart."""
    from kubernetes.client.exceptions import ApiException

    from kymamesh.adapters.cluster import Cluster

    adapter = object.__new__(Cluster)
    quota = ApiException(status=403, reason="Forbidden")
    quota.body = json.dumps(
        {"message": 'pods "x" is forbidden: exceeded quota: one-pod, requested: pods=1'}
    )
    refused = adapter._final(quota)
    assert isinstance(refused, errors.ApiError) and refused.status == 403
    assert "ResourceQuota" in (refused.hint or "")
    rbac = ApiException(status=403, reason="Forbidden")
    rbac.body = json.dumps({"message": 'pods is forbidden: User "dev" cannot create resource'})
    assert isinstance(adapter._final(rbac), errors.ForbiddenError)


def test_a_workload_whose_dry_run_pod_is_refused_is_not_restarted_and_named() -> None:
    cluster = mesh_with_old_sidecar()

    def refuse(obj: dict[str, Any]) -> dict[str, Any]:
        raise errors.ApiError("exceeded quota: one-pod", 403)

    cluster.admit = refuse
    ctx = run_context(cluster)
    ctx.options.timeout = 0.0
    with pytest.raises(errors.PartialFailureError):
        patching.run_patch(ctx, patching.PatchInputs(), proxies_spec(True))
    item = ctx.result.phases[0].items[0]
    assert item.outcome == "failed"
    assert (
        "Deployment/shop/app: not restarted, because a dry-run Pod of its template is still "
        "refused after 0s, so its new Pods would be too (exceeded quota: one-pod)"
    ) in item.error
    assert [w for w in cluster.writes if "Deployment" in w] == []


def test_a_sidecar_from_another_registry_than_the_injector_gives_is_outdated() -> None:
    retired = pod("app-1", image="registry.istio.io/release/proxyv2:1.30.3")
    current = pod("app-2", image="docker.io/istio/proxyv2:1.30.3@sha256:" + "a" * 64)
    images = {"default": "docker.io/istio/proxyv2"}
    versions = {"default": V130}
    assert outdated_reasons(retired, versions, {}, images) == [
        "image registry.istio.io/release/proxyv2, the injector gives docker.io/istio/proxyv2"
    ]
    assert outdated_reasons(current, versions, {}, images) == []
    assert outdated_reasons(retired, versions, {}, None) == []  # injector's image not known


def test_the_injector_image_comes_from_hub_or_a_full_proxy_image() -> None:
    def configmap(glob: dict[str, Any]) -> dict[str, Any]:
        return {"data": {"values": json.dumps({"global": glob})}}

    assert injector_proxy_image(
        configmap({"hub": "docker.io/istio", "proxy": {"image": "proxyv2"}})
    ) == ("docker.io/istio/proxyv2")
    assert (
        injector_proxy_image(
            configmap({"hub": "x/y", "proxy": {"image": "mirror:5000/istio/proxyv2:1.30.3"}})
        )
        == "mirror:5000/istio/proxyv2"
    )
    assert injector_proxy_image(configmap({"proxy": {"image": "proxyv2"}})) is None
    assert injector_proxy_image({"data": {"values": "not json"}}) is None
    assert image_repository("localhost:5000/istio/proxyv2:1.30.3-distroless") == (
        "localhost:5000/istio/proxyv2"
    )


# -- what a plan costs: requests that do not grow with the workloads ----------------------


class _Counting:
    """The fake cluster, counting its reads and dry-run creates."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        found = getattr(self.cluster, name)
        if name in ("get", "list", "dry_run_create"):

            def counted(*args: Any, **kwargs: Any) -> Any:
                self.calls.append(name)
                return found(*args, **kwargs)

            return counted
        if name == "list_pages":  # a list, one request per page

            def pages(*args: Any, **kwargs: Any) -> Any:
                for page in found(*args, **kwargs):
                    self.calls.append("list")
                    yield page

            return pages
        return found


def _many_outdated(
    count: int, annotate: int = 0, namespaces: tuple[str, ...] = ("a", "b", "c")
) -> FakeCluster:
    """The mesh with `count` outdated Deployments over `namespaces`; the first `annotate`
    of them ask for their own sidecar memory (another template shape)."""
    cluster = mesh_with_old_sidecar()
    for ns in namespaces:
        cluster.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    for i in range(count):
        ns = namespaces[i % len(namespaces)]
        deployment = _deployment(ns, f"w{i:03d}")
        if i < annotate:
            deployment["spec"]["template"]["metadata"]["annotations"] = {
                "sidecar.istio.io/proxyMemory": "256Mi"
            }
        cluster.add(deployment)
        _old_pod_of(cluster, ns, f"w{i:03d}")
    return cluster


@pytest.mark.parametrize("count", [30, 300])
def test_a_plan_reads_each_kind_once_and_asks_the_injector_once_per_shape(count: int) -> None:
    from kymamesh.workloads.restarts import plan_restarts

    spread = ("a", "b", "c", "d", "e", "f")
    counting = _Counting(_many_outdated(count, namespaces=spread))
    options = restart_options({"restart": True})
    plan = plan_restarts(counting, "istio-system", options)  # type: ignore[arg-type]
    assert len(plan.changes) == count + 1  # and Deployment shop/app
    # one list each of istiod, Pods, ReplicaSets, Deployments, Namespaces; two ConfigMaps
    # of the one revision and its mesh config for the root namespace; one dry-run Pod per
    # namespace (the shape includes it)
    assert counting.calls.count("list") == 5, counting.calls
    assert counting.calls.count("get") == 3, counting.calls
    assert counting.calls.count("dry_run_create") == len(spread) + 1, counting.calls


def test_a_few_workloads_are_read_one_by_one_and_a_crowded_namespace_with_a_list() -> None:
    from kymamesh.workloads.restarts import workload_ref
    from kymamesh.workloads.rollouts import read_workloads

    cluster = _many_outdated(7, namespaces=("a", "b", "b", "b", "b", "b", "b"))
    counting = _Counting(cluster)
    refs = [workload_ref(Workload("Deployment", ns, f"w{i:03d}")) for i, ns in enumerate("abbbbbb")]
    gone = workload_ref(Workload("Deployment", "b", "gone"))
    found = read_workloads(counting, [*refs, gone])  # type: ignore[arg-type]
    assert sorted(counting.calls) == ["get", "list"]  # a: one Deployment; b: seven, a list
    assert found[gone] is None and all(found[r] is not None for r in refs)


def test_workloads_of_another_template_shape_get_a_dry_run_pod_of_their_own() -> None:
    from kymamesh.workloads.restarts import plan_restarts

    counting = _Counting(_many_outdated(30, annotate=3))  # w000, w001, w002: a, b, c
    options = restart_options({"restart": True})
    plan_restarts(counting, "istio-system", options)  # type: ignore[arg-type]
    assert counting.calls.count("dry_run_create") == 4 + 3, counting.calls


def test_a_restart_waits_for_the_injector_once_per_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    from kymamesh.workloads.restarts import plan_restarts

    cluster = _many_outdated(30)
    counting = _Counting(cluster)
    monkeypatch.setattr("kymamesh.waits.time.sleep", lambda s: None)
    options = restart_options({"restart": True})
    plan = plan_restarts(counting, "istio-system", options)  # type: ignore[arg-type]
    counting.calls.clear()
    for change in plan.changes:
        change.apply(counting)  # type: ignore[arg-type]
    # asked again before the first restart of each shape (4 namespaces), then known current;
    # each batch of 10 (one namespace each) waited for with one list of its Deployments,
    # the last one (shop/app alone) with one read
    assert counting.calls.count("dry_run_create") == 4, counting.calls
    assert counting.calls.count("list") == 3 and counting.calls.count("get") == 1, counting.calls
    patched = [w for w in cluster.writes if w.startswith("patch")]
    assert len(patched) == 31
    again = plan_restarts(cluster, "istio-system", options)
    assert again.changes == []  # every restart is under way now


def test_the_template_shape_keeps_what_the_injector_reads() -> None:
    from kymamesh.workloads.restarts import template_shape

    def workload(labels: dict[str, str], annotations: dict[str, str], ns: str = "a") -> Any:
        return {
            "metadata": {"name": "x", "namespace": ns},
            "spec": {
                "template": {
                    "metadata": {"labels": labels, "annotations": annotations},
                    "spec": {"containers": [{"name": "app", "image": "shop:1"}]},
                }
            },
        }

    base = template_shape(workload({"app": "x"}, {"checksum/config": "1"}))
    assert base == template_shape(workload({"app": "y"}, {"checksum/config": "2"}))
    assert base != template_shape(workload({"app": "x"}, {}, ns="b"))
    assert base != template_shape(workload({"istio.io/rev": "canary"}, {}))
    assert base != template_shape(workload({}, {"sidecar.istio.io/proxyCPU": "1"}))
    assert base != template_shape(workload({}, {"proxy.istio.io/config": "{}"}))
    assert base != template_shape(workload({}, {"prometheus.io/scrape": "false"}))
    # a label the injector's neverInjectSelector reads
    keyed = frozenset({"team"})
    assert template_shape(workload({"team": "a"}, {}), keyed) != template_shape(
        workload({"team": "b"}, {}), keyed
    )


def test_the_injector_selectors_label_keys_are_read_from_its_config() -> None:
    from kymamesh.istio.sidecars import selector_label_keys

    config = (
        "policy: disabled\nneverInjectSelector:\n- matchExpressions:\n"
        "  - {key: openshift.io/build.name, operator: Exists}\n"
        "alwaysInjectSelector:\n- matchLabels: {team: core}\n"
    )
    assert selector_label_keys({"data": {"config": config}}) == {
        "openshift.io/build.name",
        "team",
    }
    assert selector_label_keys({"data": {"config": "policy: enabled\n"}}) == set()
    assert selector_label_keys(None) == set()


@pytest.mark.parametrize(
    ("batch", "total", "size"),
    [(10, 1000, 10), ("10%", 1000, 100), ("10%", 5, 1), ("25%", 10, 3), ("100%", 7, 7)],
)
def test_a_batch_is_a_number_or_a_share_of_the_restarts(batch: Any, total: int, size: int) -> None:
    assert restart_options({"batchSize": batch}).batch_of(total) == size


@pytest.mark.parametrize("batch", ["0%", "101%", "10", "%", "ten%", "-5%"])
def test_a_bad_share_is_refused_naming_it(batch: str) -> None:
    with pytest.raises(errors.UsageError) as err:
        restart_options({"batchSize": batch})
    assert repr(batch) in err.value.message


def test_a_restart_in_batches_of_a_share(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = _many_outdated(19)  # and shop/app: 20 workloads
    ctx = run_context(cluster)
    specs = patching.load_patch_list({"restart-proxies": {"restart": True, "batchSize": "25%"}})
    patching.run_patch(
        ctx, patching.PatchInputs(), [s for s in specs if s.name == "restart-proxies"]
    )
    item = ctx.result.phases[0].items[0]
    assert item.outcome == "changed", item
    assert len(item.changes) == 20
    assert sum("batch 1/4" in c for c in item.changes) == 5
    assert "batch 4/4" in item.changes[-1]


def test_a_deployment_whose_new_pods_are_refused_says_why() -> None:
    status = {
        "observedGeneration": 2,
        "replicas": 1,
        "updatedReplicas": 0,
        "conditions": [
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": 'pods "x" is forbidden: exceeded quota',
            }
        ],
    }
    found = rollout_unfinished("Deployment", _rollout("Deployment", {"replicas": 1}, status))
    assert found == '0 of 1 replicas updated; FailedCreate: pods "x" is forbidden: exceeded quota'
