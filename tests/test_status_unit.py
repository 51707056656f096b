"""`status` and `uninstall` on fakes: who installed Istio, mTLS, coverage, health, refusals."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kymamesh.adapters.cluster import Ref
from kymamesh.adapters.helm import ATTEMPT_LABEL
from kymamesh.errors import ExitCode, PreconditionError
from kymamesh.istio import inventory as inv
from kymamesh.istio.versions import Version
from kymamesh.workflows import status as mesh
from kymamesh.workflows import uninstall
from tests.support_inventory import FakeCluster, FakeHelm, context, crd, istiod, obj, release

KYMAMESH = {"app.kubernetes.io/managed-by": "kymamesh"}
SECURITY = crd(
    "security.istio.io", "PeerAuthentication", "peerauthentications", ("v1beta1", "v1"), "v1beta1"
)
NETWORKING = crd(
    "networking.istio.io", "VirtualService", "virtualservices", ("v1alpha3", "v1"), "v1alpha3"
)
GATEWAYS = crd("networking.istio.io", "Gateway", "gateways", ("v1alpha3", "v1"), "v1alpha3")


def ours() -> list[object]:
    return [
        release("istio-base", "base"),
        release("istiod", "istiod"),
        release("istio-ingressgateway", "gateway"),
    ]


# -- who installed it ------------------------------------------------------------


def test_installer_from_the_release_mark() -> None:
    deps = [inv.Istiod("istiod", "istio-system", "default", "", None, None, "1/1", "istiod")]
    assert inv.installer({"istiod": release("istiod", "istiod")}, deps) == inv.Installer.KYMAMESH
    foreign = release("istiod", "istiod", by_kymamesh=False)
    assert inv.installer({"istiod": foreign}, deps) == inv.Installer.HELM
    bare = [inv.Istiod("istiod", "istio-system", "default", "", None, None, "1/1", "")]
    assert inv.installer({"istiod": None}, bare) == inv.Installer.OTHER
    assert inv.installer({"istiod": None}, []) == inv.Installer.NONE


def test_an_istiod_of_another_helm_release_is_helm() -> None:
    other = [inv.Istiod("istiod", "istio-system", "default", "", None, None, "1/1", "my-istio")]
    assert inv.installer({"istiod": None}, other) == inv.Installer.HELM


def test_injection_label_wins_over_revision() -> None:
    assert inv.injection_of(obj("v1", "Namespace", "a", labels={"istio-injection": "enabled"})) == (
        True,
        "default",
    )
    assert inv.injection_of(obj("v1", "Namespace", "b", labels={"istio.io/rev": "canary"})) == (
        True,
        "canary",
    )
    both = {"istio-injection": "disabled", "istio.io/rev": "canary"}
    assert inv.injection_of(obj("v1", "Namespace", "c", labels=both)) == (False, "")
    assert inv.injection_of(obj("v1", "Namespace", "d")) == (False, "")


def test_istio_kinds_use_the_storage_version_and_skip_other_groups() -> None:
    gateway_api = crd("gateway.networking.k8s.io", "HTTPRoute", "httproutes")
    cluster = FakeCluster([SECURITY, NETWORKING, gateway_api])
    crds = inv.istio_crds(cluster)  # type: ignore[arg-type]
    assert [c["metadata"]["name"] for c in crds] == [
        "peerauthentications.security.istio.io",
        "virtualservices.networking.istio.io",
    ]
    kinds = {k.kind: k.api_version for k in inv.istio_kinds(crds)}
    assert kinds == {
        "PeerAuthentication": "security.istio.io/v1beta1",
        "VirtualService": "networking.istio.io/v1alpha3",
    }


def test_istiod_version_revision_and_readiness() -> None:
    cluster = FakeCluster([istiod("1.30.3"), istiod("1.29.4", "canary", None)])
    found = inv.find_istiods(cluster, "istio-system")  # type: ignore[arg-type]
    assert [(d.name, d.revision, str(d.version), d.ready, d.helm_release) for d in found] == [
        ("istiod", "default", "1.30.3", None, "istiod"),
        ("istiod-canary", "canary", "1.29.4", None, ""),
    ]
    cluster.merge_patch(  # a new rollout: its generation moves on, observedGeneration stays
        Ref("apps/v1", "Deployment", "istiod", "istio-system"),
        {"spec": {"template": {"metadata": {"annotations": {"restartedAt": "now"}}}}},
    )
    found = inv.find_istiods(cluster, "istio-system")  # type: ignore[arg-type]
    assert [d.ready for d in found] == ["rollout not yet observed by its controller", None]


# -- mTLS ---------------------------------------------------------------------------


def _pa(
    name: str, mode: str | None, selector: bool = False, ts: str = "2024-01-01T00:00:00Z"
) -> dict[str, object]:
    spec: dict[str, object] = {"mtls": {"mode": mode}} if mode else {}
    if selector:
        spec["selector"] = {"matchLabels": {"app": "x"}}
    pa = obj("security.istio.io/v1beta1", "PeerAuthentication", name, "istio-system", spec=spec)
    pa["metadata"]["creationTimestamp"] = ts  # type: ignore[index]
    return pa


ROOT = "istio-system"


@pytest.mark.parametrize(
    ("objects", "expected"),
    [
        ([], mesh.MtlsState("PERMISSIVE", None, ROOT)),
        ([_pa("default", "STRICT")], mesh.MtlsState("STRICT", "istio-system/default", ROOT)),
        ([_pa("default", None)], mesh.MtlsState("PERMISSIVE", "istio-system/default", ROOT)),
        ([_pa("only-app", "DISABLE", selector=True)], mesh.MtlsState("PERMISSIVE", None, ROOT)),
        (
            [_pa("newer", "DISABLE", ts="2025-01-01T00:00:00Z"), _pa("older", "STRICT")],
            mesh.MtlsState("STRICT", "istio-system/older", ROOT),
        ),
    ],
)
def test_mesh_wide_mtls(objects: list[dict[str, object]], expected: mesh.MtlsState) -> None:
    cluster = FakeCluster([SECURITY, *objects])
    assert mesh.mesh_mtls(cluster, ROOT) == expected  # type: ignore[arg-type]


def test_mtls_unknown_without_the_crd() -> None:
    no_crd = FakeCluster([], served=set())
    assert mesh.mesh_mtls(no_crd, ROOT) == mesh.MtlsState(None, None, ROOT)  # type: ignore[arg-type]


# -- sidecar coverage -------------------------------------------------------------------


def _pod(ns: str, name: str, proxy: str | None = None, **extra: object) -> dict[str, object]:
    containers: list[dict[str, str]] = [{"name": "app", "image": "app:1"}]
    if proxy:
        containers.append({"name": "istio-proxy", "image": f"docker.io/istio/proxyv2:{proxy}"})
    pod = obj("v1", "Pod", name, ns, spec={"containers": containers}, status={"phase": "Running"})
    if proxy:  # as istiod injects it
        pod["metadata"]["annotations"] = {"sidecar.istio.io/status": "{}"}  # type: ignore[index]
    for key, value in extra.items():
        if key == "annotations":
            pod["metadata"].setdefault("annotations", {}).update(value)  # type: ignore[attr-defined]
        else:
            pod["metadata"][key] = value  # type: ignore[index]
    return pod


def test_namespace_coverage_and_outdated_sidecars() -> None:
    namespaces = [
        obj("v1", "Namespace", "meshed", labels={"istio-injection": "enabled"}),
        obj("v1", "Namespace", "plain"),
        obj("v1", "Namespace", "legacy"),
        obj("v1", "Namespace", "istio-system"),
    ]
    gateway = _pod(
        "istio-system", "gw", "1.30.3", annotations={"inject.istio.io/templates": "gateway"}
    )
    done = _pod("meshed", "job", "1.29.4")
    done["status"] = {"phase": "Succeeded"}
    pods = [
        _pod("meshed", "a", "1.30.3"),
        _pod("meshed", "b", "1.29.4"),
        _pod("meshed", "c"),
        done,
        _pod("plain", "d"),
        _pod("legacy", "e", "1.29.4"),
        gateway,
    ]
    deps = [inv.Istiod("istiod", "istio-system", "default", "", Version(1, 30, 3), None, "1/1", "")]
    states = mesh.namespace_states(namespaces, pods, deps)  # type: ignore[arg-type]
    assert [s.to_json() for s in states] == [
        {
            "name": "legacy",
            "injectionEnabled": False,
            "revision": None,
            "podsWithSidecar": 1,
            "podsWithoutSidecar": 0,
            "outdatedSidecars": 1,
        },
        {
            "name": "meshed",
            "injectionEnabled": True,
            "revision": "default",
            "podsWithSidecar": 2,
            "podsWithoutSidecar": 1,
            "outdatedSidecars": 1,
        },
    ]


# -- health ---------------------------------------------------------------------------------


def _releases(*rels: object) -> list[mesh.ReleaseState]:
    by_name = {r.name: r for r in rels}  # type: ignore[attr-defined]
    return [
        mesh.ReleaseState(n, c, by_name.get(n))
        for n, c in (
            ("istio-base", "base"),
            ("istiod", "istiod"),
            ("istio-ingressgateway", "gateway"),
        )
    ]


READY = [
    inv.Istiod("istiod", "istio-system", "default", "", Version(1, 30, 3), None, "1/1", "istiod")
]


def test_healthy_when_all_in_place() -> None:
    steps = [mesh.StepState("mtls-strict", "", True)]
    assert (
        mesh.judge(inv.Installer.KYMAMESH, _releases(*ours()), READY, steps, "istio-system") == []
    )


def test_unhealthy_reasons() -> None:
    steps = [
        mesh.StepState(
            "mtls-strict",
            "",
            False,
            ["PeerAuthentication/istio-system/default: mode PERMISSIVE -> STRICT"],
        ),
        mesh.StepState("tracing", "", False, error="boom"),
    ]
    failed = release("istiod", "istiod", status="failed")
    problems = mesh.judge(
        inv.Installer.KYMAMESH,
        _releases(release("istio-base", "base"), failed),
        READY,
        steps,
        "istio-system",
    )
    assert problems == [
        "Helm release istio-system/istiod is failed (revision 1: kymamesh 0.1.0): "
        "run `kymamesh install` to repair it",
        "Helm release istio-system/istio-ingressgateway is missing",
        "patch step mtls-strict is not applied: "
        "PeerAuthentication/istio-system/default: mode PERMISSIVE -> STRICT",
        "patch step tracing: check failed: boom",
    ]


CONFLICT = (
    'Upgrade "istiod" failed: conflict occurred while applying object istio-system/istio '
    '/v1, Kind=ConfigMap: Apply failed with 1 conflict: conflict with "kymamesh" using v1: '
    ".data.mesh"
)


def test_a_release_failed_by_a_helm_upgrade_says_why_and_what_to_run() -> None:
    # A person's own `helm upgrade` met the fields the Kyma patch owns (server-side apply).
    failed = replace(
        release("istiod", "istiod", status="failed"),
        revision=2,
        description=CONFLICT,
        labels={ATTEMPT_LABEL: "0123456789ab"},  # kept by Helm from kymamesh's revision
    )
    [problem] = mesh.judge(
        inv.Installer.KYMAMESH,
        _releases(
            release("istio-base", "base"), failed, release("istio-ingressgateway", "gateway")
        ),
        READY,
        [],
        "istio-system",
    )
    assert problem.startswith(
        f"Helm release istio-system/istiod is failed (revision 2: {CONFLICT}): a Helm upgrade "
        "conflicts with the fields the Kyma patch owns; run `kymamesh install` to repair it"
    )
    assert "--set CHART.KEY=VALUE" in problem
    assert "`--force-conflicts`, then `kymamesh patch`" in problem


def test_a_pending_or_foreign_release_is_not_sent_to_kymamesh_install() -> None:
    pending = replace(release("istiod", "istiod", status="pending-upgrade"), description="")
    assert mesh.release_problem(inv.Installer.KYMAMESH, pending, "istio-system") == (
        "Helm release istio-system/istiod is pending-upgrade: a Helm command is still working "
        "on it, or was cut short (`helm history istiod -n istio-system` shows it); helm "
        "refuses other upgrades meanwhile"
    )
    theirs = release("istiod", "istiod", status="failed", by_kymamesh=False)
    assert mesh.release_problem(inv.Installer.HELM, theirs, "istio-system").endswith(
        ": see `helm history istiod -n istio-system`"
    )


def test_a_release_kymamesh_made_keeps_its_mark_after_a_helm_upgrade() -> None:
    # The current revision is a person's (`Upgrade complete`), the label is kymamesh's.
    upgraded = replace(
        release("istiod", "istiod", by_kymamesh=False), labels={ATTEMPT_LABEL: "0123456789ab"}
    )
    assert inv.marked_by_kymamesh(upgraded)
    assert not inv.marked_by_kymamesh(release("istiod", "istiod", by_kymamesh=False))
    assert inv.marked_by_kymamesh(release("istiod", "istiod"))  # older kymamesh: description


def test_missing_releases_are_fine_for_a_foreign_istio() -> None:
    steps = [mesh.StepState("mtls-strict", "", True)]
    assert mesh.judge(inv.Installer.OTHER, _releases(), READY, steps, "istio-system") == []


def test_no_istio_is_unhealthy() -> None:
    steps = [mesh.StepState("mtls-strict", "", False, error="not checked: no istiod found")]
    problems = mesh.judge(inv.Installer.NONE, _releases(), [], steps, "istio-system")
    assert problems == ["Istio is not installed: no istiod Deployment in istio-system"]


def test_not_ready_istiod_is_unhealthy() -> None:
    slow = [
        inv.Istiod(
            "istiod", "istio-system", "default", "", None, "0 of 1 replicas available", "0/1", ""
        )
    ]
    problems = mesh.judge(inv.Installer.OTHER, _releases(), slow, [], "istio-system")
    assert problems == ["istiod istio-system/istiod is not ready: 0 of 1 replicas available"]


def test_status_json_keys_are_stable() -> None:
    st = mesh.MeshStatus(
        namespace="istio-system",
        supported=Version(1, 30, 3),
        installed_by=inv.Installer.KYMAMESH,
        crds=14,
        releases=_releases(*ours()),
        istiods=READY,
        mtls=mesh.MtlsState("STRICT", "istio-system/default", "istio-system"),
        steps=[mesh.StepState("mtls-strict", "mesh-wide strict mutual TLS", True)],
        namespaces=[mesh.NamespaceState("demo", True, "default", 2, 1, 0)],
        problems=[],
        outdated=_outdated_rows(),
    )
    doc = st.to_json()
    assert set(doc) == {
        "healthy",
        "state",
        "description",
        "conditions",
        "problems",
        "istio",
        "releases",
        "istiod",
        "mtls",
        "steps",
        "namespaces",
        "identity",
        "canary",
        "outdatedSidecars",
        "retiredRegistryImages",
        "advice",
        "multicluster",
        "meshConfigs",
    }
    assert doc["outdatedSidecars"] == [
        {
            "namespace": "demo",
            "kind": "Deployment",
            "name": "cart",
            "pods": ["cart-1"],
            "reasons": ["istio-proxy 1.29.4, istiod 1.30.3"],
            "action": "restart",
            "detail": "restarted like `kubectl rollout restart`",
        }
    ]
    assert doc["identity"] is None  # no identity step checked
    assert doc["canary"] is None  # no revision-based upgrade
    assert doc["istio"] == {
        "namespace": "istio-system",
        "installed": True,
        "installedBy": "kymamesh",
        "supportedVersion": "1.30.3",
        "crds": 14,
    }
    assert doc["releases"][1] == {
        "name": "istiod",
        "chart": "istiod",
        "chartVersion": "1.30.3",
        "appVersion": "1.30.3",
        "status": "deployed",
        "revision": 1,
        "byKymamesh": True,
    }
    assert set(doc["istiod"][0]) == {
        "name",
        "namespace",
        "revision",
        "version",
        "image",
        "ready",
        "notReadyReason",
        "replicas",
        "helmRelease",
        "rootNamespace",
        "meshConfigMap",
        "injectorConfigMap",
    }
    assert doc["mtls"] == {
        "mode": "STRICT",
        "policy": "istio-system/default",
        "rootNamespace": "istio-system",
    }
    assert doc["steps"] == [
        {
            "name": "mtls-strict",
            "description": "mesh-wide strict mutual TLS",
            "applied": True,
            "pending": [],
            "error": "",
        }
    ]
    assert mesh.exit_code(st) == ExitCode.OK
    lines = mesh.plain_lines(st)
    assert lines[0].startswith("Istio 1.30.3 in istio-system, installed by kymamesh")
    assert "  ✓ mtls-strict: applied" in lines
    assert lines[-1] == "healthy"


# -- uninstall ------------------------------------------------------------------------------


def _installed(*extra: dict[str, object]) -> FakeCluster:
    return FakeCluster(
        [
            SECURITY,
            NETWORKING,
            GATEWAYS,
            istiod(),
            obj("v1", "Namespace", "istio-system"),
            obj("v1", "Namespace", "demo", labels={"istio-injection": "enabled"}),
            obj(
                "security.istio.io/v1beta1",
                "PeerAuthentication",
                "default",
                "istio-system",
                labels=KYMAMESH,
            ),
            obj(
                "networking.istio.io/v1alpha3",
                "Gateway",
                "kyma-gateway",
                "kyma-system",
                labels=KYMAMESH,
            ),
            obj("v1", "Secret", "kyma-gateway-certs", "istio-system", labels=KYMAMESH),
            obj("v1", "Secret", "someone-elses", "istio-system"),
            *extra,
        ]
    )


def test_uninstall_plan_order_and_what_is_whose() -> None:
    helm_owned = obj(
        "networking.istio.io/v1alpha3",
        "Gateway",
        "chart-gw",
        "istio-system",
        annotations={
            "meta.helm.sh/release-name": "istio-ingressgateway",
            "meta.helm.sh/release-namespace": "istio-system",
        },
    )
    user_vs = obj("networking.istio.io/v1alpha3", "VirtualService", "reviews", "demo")
    ctx = context(_installed(helm_owned, user_vs), FakeHelm(ours()))  # type: ignore[arg-type]
    plan = uninstall.plan(ctx)
    assert plan.installed_by == inv.Installer.KYMAMESH
    assert [str(r) for r in plan.patch_objects] == [
        "Gateway/kyma-system/kyma-gateway",
        "Secret/istio-system/kyma-gateway-certs",
        "PeerAuthentication/istio-system/default",
    ]
    assert [r.name for r in plan.releases] == ["istio-ingressgateway", "istiod", "istio-base"]
    assert [str(r) for r in plan.user_resources] == ["VirtualService/demo/reviews"]
    assert plan.injection_namespaces == [("demo", "default")]
    with pytest.raises(PreconditionError, match="VirtualService/demo/reviews"):
        uninstall.refuse_if_needed(plan, force=False, existing_istio=False, purge=False)
    uninstall.refuse_if_needed(plan, force=True, existing_istio=False, purge=False)


def test_uninstall_refuses_a_foreign_istio() -> None:
    foreign = [
        release("istio-base", "base", by_kymamesh=False),
        release("istiod", "istiod", by_kymamesh=False),
    ]
    ctx = context(_installed(), FakeHelm(foreign))  # type: ignore[arg-type]
    plan = uninstall.plan(ctx)
    assert plan.installed_by == inv.Installer.HELM
    with pytest.raises(PreconditionError, match="not installed by kymamesh"):
        uninstall.refuse_if_needed(plan, force=False, existing_istio=False, purge=False)
    uninstall.refuse_if_needed(plan, force=False, existing_istio=True, purge=False)


def test_uninstall_refuses_an_istiod_it_cannot_remove() -> None:
    ctx = context(FakeCluster([SECURITY, istiod(release_name=None)]), FakeHelm([]))  # type: ignore[arg-type]
    plan = uninstall.plan(ctx)
    assert plan.installed_by == inv.Installer.OTHER
    with pytest.raises(PreconditionError, match="not installed by kymamesh"):
        uninstall.refuse_if_needed(plan, force=False, existing_istio=False, purge=False)
    with pytest.raises(PreconditionError, match="not one of them: istiod \\(no Helm release\\)"):
        uninstall.refuse_if_needed(plan, force=False, existing_istio=True, purge=False)


def test_uninstall_deletes_in_reverse_order_and_a_second_run_writes_nothing() -> None:
    cluster = _installed()
    helm = FakeHelm(ours())
    ctx = context(cluster, helm, yes=True)  # type: ignore[arg-type]
    with ctx.session():
        uninstall.run_uninstall(ctx, purge=True, force=False, existing_istio=False)
        assert cluster.lock_holder is not None
    assert cluster.lock_holder is None  # released when the command ends
    assert [w for w in cluster.unlocked_writes if not w.startswith("create Namespace/")] == []
    assert cluster.writes[:3] == [
        "delete Gateway/kyma-system/kyma-gateway",
        "delete Secret/istio-system/kyma-gateway-certs",
        "delete PeerAuthentication/istio-system/default",
    ]
    assert helm.uninstalled == ["istio-ingressgateway", "istiod", "istio-base"]
    assert sorted(w for w in cluster.writes if "CustomResourceDefinition" in w) == [
        "delete CustomResourceDefinition/gateways.networking.istio.io",
        "delete CustomResourceDefinition/peerauthentications.security.istio.io",
        "delete CustomResourceDefinition/virtualservices.networking.istio.io",
    ]
    assert cluster.get(inv.Ref("v1", "Secret", "someone-elses", "istio-system")) is not None
    assert any("demo is labelled for sidecar injection" in n for n in ctx.result.notes)

    cluster.objects = [o for o in cluster.objects.values() if o["kind"] != "Deployment"]
    cluster.writes.clear()
    again = context(cluster, helm)  # type: ignore[arg-type]
    uninstall.run_uninstall(again, purge=True, force=False, existing_istio=False)
    assert cluster.writes == []
    assert again.result.notes[0].startswith("nothing to uninstall")


def test_uninstall_dry_run_lists_and_writes_nothing() -> None:
    cluster = _installed()
    helm = FakeHelm(ours())
    ctx = context(cluster, helm, dry_run=True)  # type: ignore[arg-type]
    uninstall.run_uninstall(ctx, purge=False, force=False, existing_istio=False)
    assert cluster.writes == [] and helm.uninstalled == []
    items = {p.name: [i.name for i in p.items] for p in ctx.result.phases}
    assert items == {
        uninstall.PHASE_PATCH_OBJECTS: [
            "Gateway/kyma-system/kyma-gateway",
            "Secret/istio-system/kyma-gateway-certs",
            "PeerAuthentication/istio-system/default",
        ],
        uninstall.PHASE_RELEASES: ["istio-ingressgateway", "istiod", "istio-base"],
    }
    assert any("3 Istio CRDs are kept" in n for n in ctx.result.notes)


def test_a_sidecar_with_other_resources_than_the_injector_gives_is_outdated() -> None:
    """The same judgement as step restart-proxies: version or resources."""
    namespaces = [obj("v1", "Namespace", "meshed", labels={"istio-injection": "enabled"})]
    wanted = {"requests": {"memory": "128Mi"}, "limits": {"memory": "1Gi"}}
    current = _pod("meshed", "current", "1.30.3")
    older = _pod("meshed", "older", "1.30.3")
    current["spec"]["containers"][1]["resources"] = {  # type: ignore[index]
        "requests": {"memory": "128Mi"},
        "limits": {"memory": "1024Mi"},
    }
    older["spec"]["containers"][1]["resources"] = {  # type: ignore[index]
        "requests": {"memory": "128Mi"},
        "limits": {"memory": "512Mi"},
    }
    deps = [inv.Istiod("istiod", "istio-system", "default", "", Version(1, 30, 3), None, "1/1", "")]
    by_revision = {"default": wanted}
    (state,) = mesh.namespace_states(namespaces, [current, older], deps, by_revision)  # type: ignore[arg-type]
    assert (state.with_sidecar, state.outdated) == (2, 1)
    (unjudged,) = mesh.namespace_states(namespaces, [current, older], deps)  # type: ignore[arg-type]
    assert unjudged.outdated == 0


def _outdated_rows() -> list[dict[str, object]]:
    from kymamesh.istio.sidecars import OutdatedWorkload, Workload
    from kymamesh.workloads.restarts import RestartPlan

    entry = OutdatedWorkload(
        Workload("Deployment", "demo", "cart"),
        reasons=["istio-proxy 1.29.4, istiod 1.30.3"],
        pods=["cart-1"],
    )
    plan = RestartPlan(actions=[(entry, "restart", "restarted like `kubectl rollout restart`")])
    return plan.to_json()


# -- retired registries and what is behind (the release catalog) ----------------------------


def _pod_of(ns: str, name: str, **images: str) -> dict[str, object]:
    containers = [{"name": c, "image": i} for c, i in images.items() if c != "istio_init"]
    init = [{"name": "istio-init", "image": images["istio_init"]}] if "istio_init" in images else []
    return obj("v1", "Pod", name, ns, spec={"containers": containers, "initContainers": init})


RETIRED_PROXY = "registry.istio.io/release/proxyv2:1.30.3"


def test_retired_registry_images_named_with_their_fix() -> None:
    pods = [
        _pod_of("shop", "web-1", app="nginx:1", **{"istio-proxy": RETIRED_PROXY},
                istio_init=RETIRED_PROXY),
        _pod_of("istio-system", "istiod-1", discovery="gcr.io/istio-release/pilot:1.30.3"),
        _pod_of("shop", "ok-1", **{"istio-proxy": "docker.io/istio/proxyv2:1.30.5"}),
        _pod_of("other", "lookalike", app="gcr.io/istio-release-mirror/thing:1"),
    ]  # fmt: skip
    found = mesh.retired_registry_images(pods, inv.Installer.HELM)
    assert [(r["pod"], r["container"]) for r in found] == [
        ("web-1", "istio-init"),
        ("web-1", "istio-proxy"),
        ("istiod-1", "discovery"),
    ]
    assert found[0]["fix"] == "kymamesh patch --existing-istio --restart-proxies"
    assert "--set hub=docker.io/istio" in found[2]["fix"]
    by_kymamesh = mesh.retired_registry_images(pods, inv.Installer.KYMAMESH)
    assert [r["fix"] for r in by_kymamesh] == [
        "kymamesh patch --restart-proxies",
        "kymamesh patch --restart-proxies",
        "kymamesh install",
    ]


def test_advice_names_a_newer_patch_an_unsupported_minor_and_helm_3() -> None:
    cluster = FakeCluster([istiod("1.30.3"), istiod("1.31.1", "1-31-1"), istiod("1.29.4", "old")])
    found = inv.find_istiods(cluster, "istio-system")  # type: ignore[arg-type]
    advice = mesh.currency_advice(found, helm_major=3)
    assert advice[0].startswith("istiod istio-system/istiod runs Istio 1.30.3; 1.30.5 is out")
    assert "kymamesh install --istio 1.30.5 --restart-proxies" in advice[0]
    assert "1.29.4, of a minor this kymamesh does not install" in advice[1]
    assert "--revision-based" in advice[1]
    assert advice[2].startswith("Helm 3 is in use; its security fixes end 2027-02-10")
    assert len(advice) == 3  # the newest 1.31 patch needs no advice
    assert mesh.currency_advice(found[1:2], helm_major=4) == []


def test_a_pod_is_cut_to_what_kymamesh_reads_of_it() -> None:
    from kymamesh.istio.sidecars import outdated_reasons, slim_pod

    proxy = {
        "name": "istio-proxy",
        "image": "docker.io/istio/proxyv2:1.29.4",
        "resources": {"limits": {"memory": "1Gi"}},
        "env": [{"name": "PROXY_CONFIG", "value": "{}"}],
        "volumeMounts": [{"name": "istio-envoy", "mountPath": "/etc/istio/proxy"}],
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "a",
            "namespace": "shop",
            "labels": {"app": "a"},
            "annotations": {
                "sidecar.istio.io/status": "{}",
                "kubectl.kubernetes.io/last-applied-configuration": "{...}" * 100,
            },
            "ownerReferences": [{"kind": "ReplicaSet", "name": "a-1", "controller": True}],
            "managedFields": [{"manager": "kubectl"}] * 10,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {
            "containers": [
                {"name": "app", "image": "shop:1", "env": [{"name": "X", "value": "y"}]},
                proxy,
            ],
            "volumes": [{"name": "istio-envoy", "emptyDir": {}}],
        },
        "status": {"phase": "Running", "conditions": [{"type": "Ready"}], "podIP": "10.0.0.1"},
    }
    slim = slim_pod(pod)
    assert "managedFields" not in slim["metadata"]
    assert list(slim["metadata"]["annotations"]) == ["sidecar.istio.io/status"]
    assert slim["metadata"]["ownerReferences"] == pod["metadata"]["ownerReferences"]
    assert slim["spec"] == {
        "containers": [
            {"name": "app", "image": "shop:1"},
            {k: v for k, v in proxy.items() if k != "volumeMounts"},
        ]
    }
    assert slim["status"] == {"phase": "Running"}
    # the same judgement as on the whole Pod
    versions = {"default": Version(1, 30, 3)}
    resources = {"default": {"limits": {"memory": "2Gi"}}}
    assert outdated_reasons(slim, versions, resources) == outdated_reasons(pod, versions, resources)
