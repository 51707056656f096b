"""The mesh file on the test cluster (real istiod, one cluster of its own for all of it):
every setting planned by a dry run, written, seen in the live objects; the proxies that
started without the new settings listed and, with --restart-proxies, restarted, their new
Pods' injected sidecars carrying them; the chart values installed by phase 1; the module's
`Istio` resource (from a file and from the cluster) leading to the same state with zero
writes; a re-run with zero writes; bad values refused with zero writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.support_lifecycle import schemaless_crd
from tests.support_patch import CHARTS, get_json, kymamesh_json

MESH = Path(__file__).resolve().parent / "fixtures" / "mesh"
NS = "istio-system"


def _items(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["name"]: i for p in result["phases"] for i in p["items"]}


def _mesh(c: Any) -> dict[str, Any]:
    cm = get_json(c, "configmap", "istio", "-n", NS)
    assert cm is not None
    return dict(yaml.safe_load(cm["data"]["mesh"]))


def _proxy(pod: dict[str, Any]) -> dict[str, Any]:
    return next(x for x in pod["spec"]["containers"] if x["name"] == "istio-proxy")


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}


def _pods(c: Any, namespace: str, selector: str) -> list[dict[str, Any]]:
    out = get_json(c, "pods", "-n", namespace, "-l", selector)
    assert out is not None
    return [p for p in out["items"] if not p["metadata"].get("deletionTimestamp")]


def _workload(c: Any, namespace: str) -> None:
    c.kubectl("label", "namespace", namespace, "istio-injection=enabled")
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "shop", "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "shop"}},
            "template": {
                "metadata": {"labels": {"app": "shop", "sidecar.istio.io/inject": "true"}},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]},
            },
        },
    }
    c.kubectl("apply", "-f", "-", input=json.dumps(deployment))
    c.kubectl(
        "rollout", "status", "deployment/shop", "-n", namespace, "--timeout=300s", timeout=330
    )


MODULE_CRD = schemaless_crd("operator.kyma-project.io", "Istio", "v1alpha2")


def test_every_setting_of_the_mesh_file(fresh_cluster: Any, tmp_path: Path) -> None:
    c = fresh_cluster()
    code, result, stderr = kymamesh_json(c, "install", "--charts-dir", str(CHARTS), "-y")
    assert code == 0, (result, stderr)
    shop_ns = c.create_namespace("shop")
    _workload(c, shop_ns)
    (old_shop,) = _pods(c, shop_ns, "app=shop")
    assert "gatewayTopology" not in json.loads(_env(_proxy(old_shop))["PROXY_CONFIG"])

    every = str(MESH / "every-field.yaml")
    # planned: a dry run shows each step's change and writes nothing
    with c.audit.counting() as writes:
        code, plan, stderr = kymamesh_json(c, "patch", "--mesh", every, "--dry-run")
    assert code == 0, (plan, stderr)
    assert writes.total == 0, writes.describe()
    items = _items(plan)
    for step in ("mesh-config", "pilot-webhook", "sidecar-resources", "mesh-components"):
        assert items[step]["outcome"] == "would-change", items[step]

    # bad values: refused before any write, naming the field and what it allows
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"config": {"forwardClientCertDetails": "SANITISE"}}))
    with c.audit.counting() as writes:
        code, refused, _ = kymamesh_json(c, "patch", "--mesh", str(bad), "-y")
    assert code == 2
    assert "spec.config.forwardClientCertDetails is 'SANITISE'" in refused["errors"][0]["message"]
    assert writes.total == 0, writes.describe()

    # written by `patch`: the mesh config, the providers, the sidecar resources, the live
    # objects of istiod and the gateway (an Istio kymamesh installed, or not: the same edits)
    code, result, stderr = kymamesh_json(c, "patch", "--mesh", every, "-y")
    assert code == 0, (result, stderr)
    mesh = _mesh(c)
    assert mesh["defaultConfig"]["gatewayTopology"] == {
        "numTrustedProxies": 2,
        "forwardClientCertDetails": "SANITIZE",
    }
    assert mesh["defaultConfig"]["proxyMetadata"]["ISTIO_META_DNS_CAPTURE"] == "true"
    assert mesh["defaultConfig"]["proxyStatsMatcher"]["inclusionRegexps"] == [
        ".*outlier_detection.*",
        ".*upstream_rq_retry.*",
    ]
    assert mesh["trustDomain"] == "mesh.example.com"
    assert mesh["enablePrometheusMerge"] is True
    providers = {p["name"]: p for p in mesh["extensionProviders"]}
    assert providers["shop-authz"]["envoyExtAuthzHttp"]["pathPrefix"] == "/check"
    assert providers["audit-authz"]["envoyExtAuthzHttp"]["port"] == 9000
    assert "kyma-webhook" in providers
    _check_components(c)

    # the proxies that started before are listed (the gateway's Pods were replaced by the
    # new resources of its template, after the mesh config changed: they are current)
    notes = " ".join(result["notes"])
    assert f"Deployment/{shop_ns}/shop (resources differ: " in notes, notes
    assert "proxy config proxyStatsMatcher differs from the mesh config" in notes, notes
    assert "ISTIO_META_DNS_CAPTURE false, mesh config true" in notes, notes

    # restarted on request; the new Pods' sidecars carry the settings
    code, result, stderr = kymamesh_json(c, "patch", "--restart-proxies", "-y")
    assert code == 0, (result, stderr)
    c.kubectl("rollout", "status", "deployment/shop", "-n", shop_ns, "--timeout=300s", timeout=330)
    c.kubectl(
        "rollout",
        "status",
        "deployment/istio-ingressgateway",
        "-n",
        NS,
        "--timeout=300s",
        timeout=330,
    )

    def new_shop() -> dict[str, Any] | None:
        pods = [
            p
            for p in _pods(c, shop_ns, "app=shop")
            if p["metadata"]["uid"] != old_shop["metadata"]["uid"]
        ]
        return pods[0] if len(pods) == 1 else None

    shop = c.wait_for(new_shop, 120, "the shop's new Pod")
    sidecar = _proxy(shop)
    env = _env(sidecar)
    assert env["ISTIO_META_DNS_CAPTURE"] == "true"
    config = json.loads(env["PROXY_CONFIG"])
    assert config["proxyStatsMatcher"]["inclusionRegexps"][0] == ".*outlier_detection.*"
    assert sidecar["resources"]["limits"] == {"cpu": "500m", "memory": "512Mi"}
    assert shop["metadata"]["annotations"]["prometheus.io/port"] == "15020"
    gateways = _pods(c, NS, "app=istio-ingressgateway")  # two: the HPA's minReplicas
    assert gateways
    for gateway in gateways:
        topology = json.loads(_env(_proxy(gateway))["PROXY_CONFIG"])["gatewayTopology"]
        assert topology == {"numTrustedProxies": 2, "forwardClientCertDetails": "SANITIZE"}

    # `install` (no --mesh: remembered) puts the chart values into the releases; the
    # live objects stay as they are
    code, result, stderr = kymamesh_json(c, "install", "--charts-dir", str(CHARTS), "-y")
    assert code == 0, (result, stderr)
    values = json.loads(c.helm_run("get", "values", "istiod", "-n", NS, "-o", "json").stdout)
    assert values["autoscaleMax"] == 3 and values["env"]["PILOT_ENABLE_ALPHA_GATEWAY_API"] == "true"
    gw_values = json.loads(
        c.helm_run("get", "values", "istio-ingressgateway", "-n", NS, "-o", "json").stdout
    )
    assert gw_values["service"] == {"externalTrafficPolicy": "Local"}
    # the egress gateway is new in this install (`patch` makes no release): its rollout
    # strategy, which no chart value sets, is the one live edit
    components = _items(result)["mesh-components"]
    assert components["changes"], components
    for change in components["changes"]:
        assert change.startswith("Deployment/istio-system/istio-egressgateway"), components
    _check_components(c)
    assert get_json(c, "deployment", "istio-egressgateway", "-n", NS) is not None
    assert get_json(c, "networkpolicy", "kymamesh-istiod", "-n", NS) is not None

    # converged: a re-run writes nothing
    with c.audit.counting() as writes:
        code, result, stderr = kymamesh_json(c, "install", "--charts-dir", str(CHARTS), "-y")
    assert code == 0, (result, stderr)
    assert writes.total == 0, writes.describe()

    # the module's resource, from a file and from the cluster: the same state, no write
    with c.audit.counting() as writes:
        code, result, stderr = kymamesh_json(
            c, "install", "--charts-dir", str(CHARTS), "--mesh", str(MESH / "istio-cr.yaml"), "-y"
        )
    assert code == 0, (result, stderr)
    assert writes.total == 0, writes.describe()
    c.kubectl("apply", "-f", "-", input=json.dumps(MODULE_CRD))
    c.kubectl("wait", "--for=condition=Established", "crd/istios.operator.kyma-project.io")
    c.kubectl("create", "namespace", "kyma-system", check=False)
    c.kubectl("apply", "-f", str(MESH / "istio-cr.yaml"))
    with c.audit.counting() as writes:
        code, result, stderr = kymamesh_json(
            c, "install", "--charts-dir", str(CHARTS), "--mesh", "cluster:", "-y"
        )
    assert code == 0, (result, stderr)
    assert writes.total == 0, writes.describe()

    # an authorizer no longer named is removed
    fewer = yaml.safe_load((MESH / "every-field.yaml").read_text())
    fewer["config"]["authorizers"] = fewer["config"]["authorizers"][:1]
    smaller = tmp_path / "fewer.yaml"
    smaller.write_text(yaml.safe_dump(fewer))
    code, result, stderr = kymamesh_json(c, "patch", "--mesh", str(smaller), "-y")
    assert code == 0, (result, stderr)
    names = [p["name"] for p in _mesh(c)["extensionProviders"]]
    assert "audit-authz" not in names and "shop-authz" in names

    # while the module's manager runs, kymamesh writes nothing (two owners would fight)
    manager = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "istio-controller-manager",
            "namespace": "kyma-system",
            "labels": {"app.kubernetes.io/component": "istio-operator.kyma-project.io"},
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"control-plane": "controller-manager"}},
            "template": {
                "metadata": {"labels": {"control-plane": "controller-manager"}},
                "spec": {"containers": [{"name": "manager", "image": "kyma/istio-manager:1"}]},
            },
        },
    }
    c.kubectl("apply", "-f", "-", input=json.dumps(manager))
    with c.audit.counting() as writes:
        code, refused, _ = kymamesh_json(c, "patch", "--mesh", "cluster:", "-y")
    assert code == 3, refused
    assert "module's manager runs" in refused["errors"][0]["message"]
    assert writes.total == 0, writes.describe()
    c.kubectl(
        "scale", "deployment", "istio-controller-manager", "-n", "kyma-system", "--replicas=0"
    )
    code, result, stderr = kymamesh_json(c, "patch", "--mesh", "cluster:", "-y")
    assert code == 0, (result, stderr)


def _check_components(c: Any) -> None:
    hpa = get_json(c, "hpa", "istiod", "-n", NS)
    assert hpa is not None and (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    istiod = get_json(c, "deployment", "istiod", "-n", NS)
    assert istiod is not None
    assert istiod["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": "50%", "maxUnavailable": 0}
    discovery = next(
        x for x in istiod["spec"]["template"]["spec"]["containers"] if x["name"] == "discovery"
    )
    assert discovery["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}
    assert _env(discovery)["PILOT_ENABLE_ALPHA_GATEWAY_API"] == "true"
    assert _env(discovery)["PILOT_MULTI_NETWORK_DISCOVER_GATEWAY_API"] == "false"
    hpa = get_json(c, "hpa", "istio-ingressgateway", "-n", NS)
    assert hpa is not None and (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    gateway = get_json(c, "deployment", "istio-ingressgateway", "-n", NS)
    assert gateway is not None
    assert gateway["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    proxy = _proxy({"spec": gateway["spec"]["template"]["spec"]})
    assert proxy["resources"]["limits"] == {"cpu": "500m", "memory": "512Mi"}
    service = get_json(c, "service", "istio-ingressgateway", "-n", NS)
    assert service is not None and service["spec"]["externalTrafficPolicy"] == "Local"
    injector = get_json(c, "configmap", "istio-sidecar-injector", "-n", NS)
    assert injector is not None
    proxy_values = json.loads(injector["data"]["values"])["global"]["proxy"]["resources"]
    assert proxy_values["limits"] == {"cpu": "500m", "memory": "512Mi"}
