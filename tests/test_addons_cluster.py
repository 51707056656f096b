"""Step `remove-legacy-addons` on the test cluster, with the fixture manifests of
tests/fixtures/addons: every legacy object is deleted and reported, every look-alike
survives, and a re-run writes nothing. Also the catalog itself against the facts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kymamesh.adapters.cluster import Ref
from kymamesh.errors import UsageError
from kymamesh.resources import patches_dir
from kymamesh.steps.addons import load_catalog
from tests.support_patch import ADDONS, ensure_istio, kymamesh_json

PLURALS = {
    "ServiceAccount": "serviceaccounts",
    "ConfigMap": "configmaps",
    "Service": "services",
    "Deployment": "deployments.apps",
    "ClusterRole": "clusterroles.rbac.authorization.k8s.io",
    "ClusterRoleBinding": "clusterrolebindings.rbac.authorization.k8s.io",
    "Secret": "secrets",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Namespace": "namespaces",
    "Role": "roles.rbac.authorization.k8s.io",
    "RoleBinding": "rolebindings.rbac.authorization.k8s.io",
    "Prometheus": "prometheuses.monitoring.coreos.com",
    "ServiceMonitor": "servicemonitors.monitoring.coreos.com",
    "CustomResourceDefinition": "customresourcedefinitions.apiextensions.k8s.io",
}


def refs_in(*files: str) -> list[Ref]:
    refs = []
    for name in files:
        for doc in yaml.safe_load_all((ADDONS / name).read_text()):
            if doc:
                refs.append(Ref.of(doc))
    return refs


def exists(cluster: Any, ref: Ref) -> bool:
    """Present and not being deleted."""
    args = ["get", PLURALS[ref.kind], ref.name, "-o", "json", "--ignore-not-found"]
    if ref.namespace:
        args += ["-n", ref.namespace]
    out = cluster.kubectl(*args).stdout.strip()
    return bool(out) and not json.loads(out)["metadata"].get("deletionTimestamp")


KEEP = {Ref("v1", "Namespace", "kyma-system")}  # other steps put objects there


def remove(cluster: Any, *files: str) -> None:
    """Delete what a test applied (kyma-system stays: the Gateway of the TLS step is there)."""
    for name in files:
        docs = [d for d in yaml.safe_load_all((ADDONS / name).read_text()) if d]
        docs = [d for d in docs if Ref.of(d) not in KEEP]
        if docs:
            cluster.kubectl(
                "delete", "-f", "-", "--ignore-not-found", "--wait=false",
                input=yaml.safe_dump_all(docs),
            )  # fmt: skip


def addon_item(result: dict[str, Any]) -> dict[str, Any]:
    for phase in result["phases"]:
        for item in phase["items"]:
            if item["name"] == "remove-legacy-addons":
                return dict(item)
    raise AssertionError("no remove-legacy-addons item")


@pytest.fixture
def istio(cluster: Any) -> Iterator[Any]:
    ensure_istio(cluster)
    yield cluster


SCENARIOS = {
    # legacy files, look-alike files
    "today-and-1.0-extras": (["legacy-addons.yaml"], ["look-alikes.yaml"]),
    "istio-1.0-labels": (["legacy-addons-1.0.yaml"], []),
    "zipkin-flavour": (["legacy-addons-zipkin.yaml"], []),
    "same-names-other-labels": ([], ["look-alikes-same-name.yaml"]),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_legacy_addons_deleted_look_alikes_survive(istio: Any, scenario: str) -> None:
    legacy_files, look_alike_files = SCENARIOS[scenario]
    for name in [*legacy_files, *look_alike_files]:
        istio.kubectl("apply", "-f", str(ADDONS / name))
    everything = refs_in(*legacy_files)
    claims = [r for r in everything if r.kind == "PersistentVolumeClaim"]
    legacy = [r for r in everything if r not in claims]
    survivors = refs_in(*look_alike_files)
    try:
        assert all(exists(istio, r) for r in everything + survivors)
        code, result, stderr = kymamesh_json(istio, "patch", "-y")
        assert code == 0, (result, stderr)
        item = addon_item(result)
        gone = [r for r in legacy if exists(istio, r)]
        assert gone == [], f"legacy objects left: {gone}"
        lost = [r for r in survivors + claims if not exists(istio, r)]
        assert lost == [], f"look-alikes or volume claims deleted: {lost}"
        for claim in claims:  # data: kept, and the output says how to delete it
            assert any(
                f"kept {claim}" in n and "deleteVolumeClaims: true" in n for n in result["notes"]
            ), result["notes"]
        reported = {c.split(": ", 1)[1] for c in item["changes"]}
        assert reported == {f"{r} deleted" for r in legacy}
        if legacy:
            assert item["outcome"] == "changed"
            assert all(f"{r} deleted" in item["summary"] for r in legacy)
        else:
            assert item["outcome"] == "unchanged"

        with istio.audit.counting() as writes:
            code, again, _ = kymamesh_json(istio, "patch", "-y")
        assert code == 0
        assert addon_item(again)["outcome"] == "unchanged"
        assert writes.total == 0, writes.describe()
        assert all(exists(istio, r) for r in survivors + claims)
    finally:
        remove(istio, *legacy_files, *look_alike_files)


def test_volume_claim_deleted_only_when_asked_for_that_run(istio: Any, tmp_path: Path) -> None:
    istio.kubectl("apply", "-f", str(ADDONS / "legacy-addons.yaml"))
    claim = Ref("v1", "PersistentVolumeClaim", "istio-grafana-pvc", "istio-system")
    try:
        code, result, stderr = kymamesh_json(istio, "patch", "-y")
        assert code == 0, (result, stderr)
        assert exists(istio, claim)
        code, status, _ = kymamesh_json(istio, "status")
        steps = {s["name"]: s for s in status["data"]["steps"]}
        assert steps["remove-legacy-addons"]["applied"] is True, steps

        config = tmp_path / "config.yaml"
        config.write_text("steps: {remove-legacy-addons: {deleteVolumeClaims: true}}\n")
        dry_code, dry, _ = kymamesh_json(istio, "patch", "-y", "--dry-run", "--config", str(config))
        assert dry_code == 0
        assert addon_item(dry)["changes"] == [f"grafana (Istio 1.0) addon: {claim} deleted"]
        assert exists(istio, claim)

        code, result, stderr = kymamesh_json(istio, "patch", "-y", "--config", str(config))
        assert code == 0, (result, stderr)
        assert addon_item(result)["changes"] == [f"grafana (Istio 1.0) addon: {claim} deleted"]
        assert not exists(istio, claim)
        # the yes was for that run: it is not remembered
        settings = istio.kubectl(
            "get", "configmap", "kymamesh-settings", "-n", "istio-system",
            "-o", "jsonpath={.data}", check=False,
        ).stdout  # fmt: skip
        assert "deleteVolumeClaims" not in settings
    finally:
        remove(istio, "legacy-addons.yaml")


def test_external_name_zipkin_service_survives(istio: Any) -> None:
    """A user's ExternalName Service istio-system/zipkin, beside the rest of the Zipkin addon."""
    addon = [
        d
        for d in yaml.safe_load_all((ADDONS / "legacy-addons-zipkin.yaml").read_text())
        if d and (d["kind"], d["metadata"]["name"]) != ("Service", "zipkin")
    ]
    external = next(
        d
        for d in yaml.safe_load_all((ADDONS / "look-alikes-same-name.yaml").read_text())
        if d and d["kind"] == "Service" and d["metadata"]["name"] == "zipkin"
    )
    assert external["spec"]["type"] == "ExternalName"
    istio.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([*addon, external]))
    try:
        code, result, stderr = kymamesh_json(istio, "patch", "-y")
        assert code == 0, (result, stderr)
        assert exists(istio, Ref.of(external))
        assert not any(exists(istio, Ref.of(d)) for d in addon)
        assert {c.split(": ", 1)[1] for c in addon_item(result)["changes"]} == {
            f"{Ref.of(d)} deleted" for d in addon
        }
    finally:
        istio.kubectl(
            "delete", "-f", "-", "--ignore-not-found", "--wait=false",
            input=yaml.safe_dump_all([*addon, external]),
        )  # fmt: skip


def test_prometheus_operator_objects_survive(istio: Any) -> None:
    istio.kubectl("apply", "-f", str(ADDONS / "look-alikes-operator-crds.yaml"))
    istio.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/prometheuses.monitoring.coreos.com", "crd/servicemonitors.monitoring.coreos.com",
    )  # fmt: skip
    istio.kubectl("apply", "-f", str(ADDONS / "look-alikes-operator.yaml"))
    istio.kubectl("apply", "-f", str(ADDONS / "legacy-addons.yaml"))
    operator = refs_in("look-alikes-operator.yaml")
    try:
        code, result, stderr = kymamesh_json(istio, "patch", "-y")
        assert code == 0, (result, stderr)
        assert all(exists(istio, r) for r in operator)
        legacy = [r for r in refs_in("legacy-addons.yaml") if r.kind != "PersistentVolumeClaim"]
        assert not any(exists(istio, r) for r in legacy)
    finally:
        remove(istio, "look-alikes-operator.yaml", "legacy-addons.yaml")


def test_dry_run_lists_without_deleting(istio: Any) -> None:
    istio.kubectl("apply", "-f", str(ADDONS / "legacy-addons-zipkin.yaml"))
    try:
        with istio.audit.counting(include_dry_run=False) as writes:
            code, result, _ = kymamesh_json(istio, "patch", "-y", "--dry-run")
        assert code == 0
        item = addon_item(result)
        assert item["outcome"] == "would-change"
        assert (
            "- Deployment/istio-system/zipkin (matched the zipkin addon by labels app=zipkin)"
            in item["diff"]
        )
        assert (
            "- Service/istio-system/zipkin (matched the zipkin addon by labels name=zipkin; "
            "selector app=zipkin; port 9411)" in item["diff"]
        )
        assert writes.total == 0, writes.describe()
        assert all(exists(istio, r) for r in refs_in("legacy-addons-zipkin.yaml"))
    finally:
        remove(istio, "legacy-addons-zipkin.yaml")


# -- the catalog (no cluster) -------------------------------------------------------------


def test_catalog_rows_are_complete_and_in_the_known_namespaces() -> None:
    catalog = load_catalog(patches_dir() / "legacy-addons.yaml")
    assert {r.namespace for r in catalog} == {"istio-system", ""}
    assert {r.addon.split(" ")[0] for r in catalog} == {
        "prometheus", "grafana", "jaeger", "zipkin", "kiali", "servicegraph", "tracing",
    }  # fmt: skip
    unlabelled = sorted((r.kind, r.name) for r in catalog if not r.labels)
    assert unlabelled == [
        ("ConfigMap", "istio-grafana-dashboards"),
        ("ConfigMap", "istio-services-grafana-dashboards"),
        ("Service", "zipkin"),
    ]
    # what tells those from a user's object of the same name
    assert all(r.selector or r.data_keys for r in catalog if not r.labels)
    zipkin = [r for r in catalog if (r.kind, r.name) == ("Service", "zipkin")]
    assert len(zipkin) == 3
    assert all(r.selector in ({"app": "jaeger"}, {"app": "zipkin"}) for r in zipkin)
    assert all(r.ports == (9411,) for r in zipkin)
    cluster_scoped = {r.kind for r in catalog if not r.namespace}
    assert cluster_scoped == {"ClusterRole", "ClusterRoleBinding"}


def test_every_fixture_legacy_object_has_a_catalog_row() -> None:
    catalog = load_catalog(patches_dir() / "legacy-addons.yaml")
    for name in ("legacy-addons.yaml", "legacy-addons-1.0.yaml", "legacy-addons-zipkin.yaml"):
        for doc in yaml.safe_load_all((ADDONS / name).read_text()):
            if doc:
                assert any(r.matches(doc) for r in catalog), f"{name}: {Ref.of(doc)}"
    for name in ("look-alikes.yaml", "look-alikes-same-name.yaml", "look-alikes-operator.yaml"):
        for doc in yaml.safe_load_all((ADDONS / name).read_text()):
            if doc:
                assert not any(r.matches(doc) for r in catalog), f"{name}: {Ref.of(doc)}"


def service(name: str, labels: dict[str, str], spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "istio-system", "labels": labels},
        "spec": spec,
    }


ZIPKIN_PORT = {"ports": [{"name": "http-query", "port": 9411, "targetPort": 9411}]}


def test_zipkin_service_matched_by_istio_shape_not_by_name() -> None:
    catalog = load_catalog(patches_dir() / "legacy-addons.yaml")

    def matched(obj: dict[str, Any]) -> bool:
        return any(r.matches(obj) for r in catalog)

    # Istio's Jaeger addon: no labels (older samples) or `name: zipkin` (newer ones)
    assert matched(service("zipkin", {}, {"selector": {"app": "jaeger"}, **ZIPKIN_PORT}))
    assert matched(
        service("zipkin", {"name": "zipkin"}, {"selector": {"app": "jaeger"}, **ZIPKIN_PORT})
    )
    # a user's: ExternalName (no selector), own Pods, another port
    external = {"type": "ExternalName", "externalName": "zipkin.tracing.svc", **ZIPKIN_PORT}
    assert not matched(service("zipkin", {}, external))
    assert not matched(service("zipkin", {"name": "zipkin"}, external))
    assert not matched(service("zipkin", {}, {"selector": {"app": "my-zipkin"}, **ZIPKIN_PORT}))
    other_port = {"selector": {"app": "jaeger"}, "ports": [{"port": 80}]}
    assert not matched(service("zipkin", {}, other_port))


def test_dashboards_matched_by_their_keys() -> None:
    catalog = load_catalog(patches_dir() / "legacy-addons.yaml")

    def configmap(data: dict[str, str]) -> dict[str, Any]:
        meta = {"name": "istio-grafana-dashboards", "namespace": "istio-system"}
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}

    istio_keys = {"pilot-dashboard.json": "{}", "ztunnel-dashboard.json": "{}"}
    assert any(r.matches(configmap(istio_keys)) for r in catalog)
    assert not any(r.matches(configmap({})) for r in catalog)
    mixed = {**istio_keys, "shop-dashboard.json": "{}"}
    assert not any(r.matches(configmap(mixed)) for r in catalog)


def test_a_row_that_matches_a_name_alone_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "objects:\n  - {addon: jaeger, kind: Service, apiVersion: v1, "
        "namespace: istio-system, name: zipkin, labels: {}}\n"
    )
    with pytest.raises(UsageError, match="would match any object of that name"):
        load_catalog(path)


def test_fixture_paths_exist() -> None:
    assert all(Path(ADDONS / f).exists() for s in SCENARIOS.values() for fs in s for f in fs)
