"""The Kyma Istio module's settings that make objects of their own, on the test cluster (real
istiod, real Helm): the egress gateway (`components.egressGateway`: a second Helm release of
the gateway chart), the NetworkPolicies of `networkPoliciesEnabled`, and the production
defaults of the ingress gateway (a PodDisruptionBudget with maxUnavailable 1, its Pods
spread over zones and nodes). Each is planned by a dry run, written, seen in the live
objects and left alone by a re-run (zero writes); bad values are refused with zero writes;
turned off, they go; `uninstall` removes them.

The test cluster enforces no NetworkPolicy (no network plugin runs here): what is checked is
that the API server accepts the policies and that they say what the mesh needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.support_patch import CHARTS, get_json, kymamesh_json

NS = "istio-system"
EGRESS = {
    "enabled": True,
    "k8s": {
        "hpaSpec": {"minReplicas": 1, "maxReplicas": 2},
        "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "resources": {
            "requests": {"cpu": "30m", "memory": "48Mi"},
            "limits": {"cpu": "300m", "memory": "256Mi"},
        },
    },
}
SPREAD = ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]


def _items(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["name"]: i for p in result["phases"] for i in p["items"]}


def _write(tmp_path: Path, name: str, doc: dict[str, Any]) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _ports(rules: list[dict[str, Any]]) -> set[int]:
    return {p["port"] for rule in rules for p in rule.get("ports") or []}


def _check_live(c: Any) -> None:
    # the egress gateway: its own release, Deployment, ClusterIP Service, HPA, PDB
    status = c.helm_run("status", "istio-egressgateway", "-n", NS, "-o", "json").stdout
    assert '"status":"deployed"' in status.replace(" ", "")
    egress = get_json(c, "deployment", "istio-egressgateway", "-n", NS)
    assert egress is not None
    assert egress["spec"]["selector"]["matchLabels"]["istio"] == "egressgateway"
    assert egress["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    proxy = egress["spec"]["template"]["spec"]["containers"][0]
    assert proxy["resources"]["limits"] == {"cpu": "300m", "memory": "256Mi"}
    service = get_json(c, "service", "istio-egressgateway", "-n", NS)
    assert service is not None and service["spec"]["type"] == "ClusterIP"
    hpa = get_json(c, "hpa", "istio-egressgateway", "-n", NS)
    assert hpa is not None and (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 2)
    pods = get_json(c, "pods", "-n", NS, "-l", "istio=egressgateway")
    assert pods is not None and pods["items"]
    for pod in pods["items"]:  # istiod's injector filled in the gateway template
        assert pod["spec"]["containers"][0]["image"] != "auto", pod["spec"]["containers"][0]
    # the production defaults: PDB and spread, for both gateways
    for name in ("istio-ingressgateway", "istio-egressgateway"):
        pdb = get_json(c, "pdb", name, "-n", NS)
        assert pdb is not None and pdb["spec"]["maxUnavailable"] == 1, pdb
        assert pdb["spec"]["selector"]["matchLabels"]["app"] == name
        gw = get_json(c, "deployment", name, "-n", NS)
        assert gw is not None
        spread = gw["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert [s["topologyKey"] for s in spread] == SPREAD
        assert {s["labelSelector"]["matchLabels"]["app"] for s in spread} == {name}
    # the NetworkPolicies
    kubernetes = get_json(c, "service", "kubernetes", "-n", "default")
    assert kubernetes is not None
    api_port = next(p["targetPort"] for p in kubernetes["spec"]["ports"] if p["name"] == "https")
    istiod = get_json(c, "networkpolicy", "kymamesh-istiod", "-n", NS)
    assert istiod is not None
    assert istiod["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kymamesh"
    assert istiod["spec"]["podSelector"] == {"matchLabels": {"istio": "pilot"}}
    assert {15010, 15012, 15014, 15017} <= _ports(istiod["spec"]["ingress"])
    assert {53, api_port, 443} <= _ports(istiod["spec"]["egress"])
    ingress = get_json(c, "networkpolicy", "kymamesh-ingressgateway", "-n", NS)
    assert ingress is not None
    assert {80, 443, 15021, 15020, 15090} <= _ports(ingress["spec"]["ingress"])
    assert {15012, 53} <= _ports(ingress["spec"]["egress"])
    assert get_json(c, "networkpolicy", "kymamesh-egressgateway", "-n", NS) is not None
    sidecars = get_json(c, "networkpolicy", "kymamesh-sidecars", "-n", "kyma-system")
    assert sidecars is not None
    assert sidecars["spec"]["podSelector"]["matchLabels"] == {"security.istio.io/tlsMode": "istio"}


def test_egress_gateway_network_policies_and_gateway_defaults(
    fresh_cluster: Any, tmp_path: Path
) -> None:
    c = fresh_cluster()
    charts = str(CHARTS)

    # bad values: refused before any write, naming the field and what it allows
    for bad, named in (
        ({"networkPoliciesEnabled": "yes"}, "spec.networkPoliciesEnabled is 'yes'"),
        ({"components": {"egressGateway": {"enabled": "on"}}}, "egressGateway.enabled is 'on'"),
    ):
        path = _write(tmp_path, "bad.yaml", bad)
        with c.audit.counting() as writes:
            code, refused, _ = kymamesh_json(c, "install", "--charts-dir", charts, "--mesh", path)
        assert code == 2, refused
        message = refused["errors"][0]["message"]
        assert named in message and "true or false" in message, message
        assert writes.total == 0, writes.describe()

    mesh = _write(
        tmp_path,
        "mesh.yaml",
        {"components": {"egressGateway": EGRESS}, "networkPoliciesEnabled": True},
    )
    # planned: a dry run, nothing written
    with c.audit.counting() as writes:
        code, plan, stderr = kymamesh_json(
            c, "install", "--charts-dir", charts, "--mesh", mesh, "--dry-run"
        )
    assert code == 0, (plan, stderr)
    assert writes.total == 0, writes.describe()
    items = _items(plan)
    assert items["istio-egressgateway"]["outcome"] == "would-change", items["istio-egressgateway"]
    assert items["network-policies"]["outcome"] == "would-change", items["network-policies"]

    # written, and seen in the live objects
    code, result, stderr = kymamesh_json(c, "install", "--charts-dir", charts, "--mesh", mesh, "-y")
    assert code == 0, (result, stderr)
    _check_live(c)
    # status lists the egress gateway's release with the others
    code, status, stderr = kymamesh_json(c, "status")
    releases = {r["name"]: r for r in status["data"]["releases"]}
    assert releases["istio-egressgateway"]["status"] == "deployed", (releases, stderr)
    assert releases["istio-egressgateway"]["byKymamesh"] is True, releases

    # a re-run writes nothing
    with c.audit.counting() as writes:
        code, result, stderr = kymamesh_json(c, "install", "--charts-dir", charts, "-y")
    assert code == 0, (result, stderr)
    assert writes.total == 0, writes.describe()

    # turned off: the egress gateway's release and kymamesh's NetworkPolicies go
    off = _write(
        tmp_path,
        "off.yaml",
        {"components": {"egressGateway": {"enabled": False}}, "networkPoliciesEnabled": False},
    )
    code, result, stderr = kymamesh_json(c, "install", "--charts-dir", charts, "--mesh", off, "-y")
    assert code == 0, (result, stderr)
    assert _items(result)["istio-egressgateway"]["outcome"] == "changed"
    code, status, stderr = kymamesh_json(c, "status")
    assert "istio-egressgateway" not in {r["name"] for r in status["data"]["releases"]}, stderr
    assert c.helm_run("status", "istio-egressgateway", "-n", NS, check=False).returncode != 0
    left = get_json(c, "networkpolicy", "-A", "-l", "app.kubernetes.io/managed-by=kymamesh")
    assert left is not None and left["items"] == [], left
    assert get_json(c, "pdb", "istio-ingressgateway", "-n", NS) is not None  # the default stays
    with c.audit.counting() as writes:
        code, result, stderr = kymamesh_json(c, "install", "--charts-dir", charts, "-y")
    assert code == 0, (result, stderr)
    assert writes.total == 0, writes.describe()

    # on again, then uninstall removes them with the rest
    code, result, stderr = kymamesh_json(c, "install", "--charts-dir", charts, "--mesh", mesh, "-y")
    assert code == 0, (result, stderr)
    code, result, stderr = kymamesh_json(c, "uninstall", "-y")
    assert code == 0, (result, stderr)
    assert c.helm_run("status", "istio-egressgateway", "-n", NS, check=False).returncode != 0
    left = get_json(c, "networkpolicy", "-A", "-l", "app.kubernetes.io/managed-by=kymamesh")
    assert left is not None and left["items"] == [], left
    for name in ("istio-ingressgateway", "istio-egressgateway"):
        assert get_json(c, "pdb", name, "-n", NS) is None, name
