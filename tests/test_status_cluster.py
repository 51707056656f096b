"""`kymamesh status` on the test cluster: a fresh install, a partly patched one, a foreign one."""

from __future__ import annotations

import json
from typing import Any

from tests.support_lifecycle import (
    NAMESPACE,
    apply,
    helm_install_foreign,
    install,
    kymamesh,
    writes_during,
)
from tests.test_json_contract import assert_result_shape

STEPS = [
    "mtls-strict",
    "sidecar-resources",
    "sidecar-image-hub",
    "injection-policy",
    "tracing-kyma-zipkin",
    "pilot-webhook",
    "mesh-config",
    "mesh-components",
    "multicluster-identity",
    "network-policies",
    "ingress-gateway-tls",
    "remove-legacy-addons",
    "restart-proxies",
    "identity",
]
DATA_KEYS = {
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
    "advice",
    "retiredRegistryImages",
    "multicluster",
    "meshConfigs",
}


KYMA_SIDECAR = {  # patches/kyma.yaml, step sidecar-resources
    "requests": {"cpu": "10m", "memory": "128Mi"},
    "limits": {"cpu": "1", "memory": "1024Mi"},
}


def _pod(namespace: str, name: str, proxy: str | None) -> str:
    containers: list[dict[str, Any]] = [{"name": "app", "image": "registry.example/app:1"}]
    if proxy:  # with the resources Kyma's injector gives: only the version can be old
        containers.append(
            {
                "name": "istio-proxy",
                "image": f"docker.io/istio/proxyv2:{proxy}",
                "resources": KYMA_SIDECAR,
            }
        )
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                # as istiod injects it (a sidecar without it is not the injector's to renew)
                "annotations": {"sidecar.istio.io/status": "{}"} if proxy else {},
            },
            "spec": {"containers": containers},
        }
    )


def _status(cluster: Any) -> tuple[dict[str, Any], int]:
    """`status -o json` and how many writes it made (it must make none)."""
    run, writes = writes_during(cluster, lambda: kymamesh(cluster, "status", "-o", "json"))
    assert run.code in (0, 7), str(run)
    doc = run.doc
    assert_result_shape(doc)
    assert doc["exitCode"] == run.code
    assert set(doc["data"]) == DATA_KEYS
    return doc, writes.total


def test_status_on_a_fresh_install(cluster: Any, namespace: str) -> None:
    install(cluster)
    cluster.kubectl("label", "namespace", namespace, "istio-injection=enabled")
    for name, proxy in (("plain", None), ("current", "1.30.3"), ("old", "1.29.4")):
        apply(cluster, _pod(namespace, name, proxy))

    doc, writes = _status(cluster)
    assert writes == 0
    data = doc["data"]
    assert doc["status"] == "ok" and doc["exitCode"] == 0, data["problems"]
    assert data["healthy"] is True and data["problems"] == []
    assert data["istio"]["installedBy"] == "kymamesh"
    assert data["istio"]["installed"] is True
    assert data["istio"]["crds"] >= 3
    assert [
        (r["name"], r["chart"], r["chartVersion"], r["status"], r["byKymamesh"])
        for r in data["releases"]
    ] == [
        ("istio-base", "base", "1.30.3", "deployed", True),
        ("istiod", "istiod", "1.30.3", "deployed", True),
        ("istio-ingressgateway", "gateway", "1.30.3", "deployed", True),
    ]
    istiod = [d for d in data["istiod"] if d["name"] == "istiod"]
    assert istiod and istiod[0]["version"] == "1.30.3" and istiod[0]["revision"] == "default"
    assert istiod[0]["ready"] is True and istiod[0]["helmRelease"] == "istiod"
    assert data["mtls"] == {
        "mode": "STRICT",
        "policy": f"{NAMESPACE}/default",
        "rootNamespace": NAMESPACE,
    }
    assert (istiod[0]["meshConfigMap"], istiod[0]["injectorConfigMap"]) == (
        "istio",
        "istio-sidecar-injector",
    )
    assert [(s["name"], s["applied"]) for s in data["steps"]] == [(s, True) for s in STEPS]
    mine = [n for n in data["namespaces"] if n["name"] == namespace]
    assert mine == [
        {
            "name": namespace,
            "injectionEnabled": True,
            "revision": "default",
            "podsWithSidecar": 2,
            "podsWithoutSidecar": 1,
            "outdatedSidecars": 1,
        }
    ]

    assert [o for o in data["outdatedSidecars"] if o["namespace"] == namespace] == [
        {
            "namespace": namespace,
            "kind": "Pod",
            "name": "old",
            "pods": ["old"],
            "reasons": ["istio-proxy 1.29.4, istiod 1.30.3"],
            "action": "manual",
            "detail": "a bare Pod is never restarted; re-create it yourself (kubectl replace "
            "--force -f pod.yaml)",
        }
    ]
    # as the Kyma Istio module would say it: installed, but a sidecar needs a manual restart
    assert data["state"] == "Warning"
    conditions = {c["type"]: (c["status"], c["reason"]) for c in data["conditions"]}
    assert conditions == {
        "Ready": ("True", "ReconcileSucceeded"),
        "ProxySidecarRestartSucceeded": ("False", "ProxySidecarManualRestartRequired"),
        "MeshConfigApplied": ("True", "MeshConfigApplied"),  # istiod runs its ConfigMap's
    }

    text = kymamesh(cluster, "status")
    assert text.code == 0, str(text)
    assert "installed by kymamesh" in text.stdout
    assert "mTLS (mesh-wide): STRICT" in text.stdout
    assert f"  {namespace}: injection on, 2 with sidecar, 1 without, 1 outdated" in text.stdout
    assert text.stdout.rstrip().endswith("healthy")


def test_status_on_a_partly_patched_install(cluster: Any) -> None:
    """A user weakens mTLS by hand: that step is not applied, and the exit code says so."""
    install(cluster)
    pa = ["peerauthentication.security.istio.io", "default", "-n", NAMESPACE]
    cluster.kubectl("patch", *pa, "--type=merge", "-p", '{"spec":{"mtls":{"mode":"PERMISSIVE"}}}')
    try:
        doc, writes = _status(cluster)
        assert writes == 0
        data = doc["data"]
        assert doc["status"] == "unhealthy" and doc["exitCode"] == 7
        assert data["mtls"] == {
            "mode": "PERMISSIVE",
            "policy": f"{NAMESPACE}/default",
            "rootNamespace": NAMESPACE,
        }
        steps = {s["name"]: s for s in data["steps"]}
        assert steps["mtls-strict"]["applied"] is False
        assert steps["mtls-strict"]["pending"], steps["mtls-strict"]
        assert all(steps[s]["applied"] for s in STEPS if s != "mtls-strict")
        assert [p for p in data["problems"] if "mtls-strict" in p], data["problems"]
        text = kymamesh(cluster, "status")
        assert text.code == 7
        assert "✗ mtls-strict: not applied" in text.stdout
        assert "unhealthy:" in text.stdout
    finally:
        cluster.kubectl("patch", *pa, "--type=merge", "-p", '{"spec":{"mtls":{"mode":"STRICT"}}}')
    doc, _ = _status(cluster)
    assert doc["exitCode"] == 0, doc["data"]["problems"]


def test_status_names_a_change_of_root_not_finished(cluster: Any) -> None:
    """A change of root stopped half-way (Secret cacerts still marked) leaves workloads on
    the previous root, which the others no longer trust: status says so and how to finish."""
    install(cluster)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "cacerts",
            "namespace": NAMESPACE,
            "annotations": {"kymamesh.io/root-change-since": "2026-12-01T10:00:00Z"},
        },
        "stringData": {"root-cert.pem": "not read by status"},
    }
    apply(cluster, json.dumps(secret))
    try:
        doc, writes = _status(cluster)
        assert writes == 0
        data = doc["data"]
        assert doc["status"] == "unhealthy" and doc["exitCode"] == 7
        assert data["state"] == "Error"
        assert [p for p in data["problems"] if "change of root" in p] == [
            "shared trust: a change of root begun 2026-12-01T10:00:00Z is not finished: "
            "workloads may still hold certificates of the previous root; run `kymamesh "
            "install --ca DIR --restart-proxies` with the same DIR to finish it"
        ], data["problems"]
        text = kymamesh(cluster, "status")
        assert text.code == 7
        assert "shared trust: a change of root begun 2026-12-01T10:00:00Z" in text.stdout
    finally:
        cluster.kubectl("delete", "secret", "cacerts", "-n", NAMESPACE, "--ignore-not-found")
    doc, _ = _status(cluster)
    assert doc["exitCode"] == 0, doc["data"]["problems"]


def test_status_on_a_foreign_install(fresh_cluster: Any) -> None:
    """Plain `helm install` of the charts: reported, but not as kymamesh's; the patch is missing."""
    c = fresh_cluster()
    doc, writes = _status(c)
    assert writes == 0
    assert doc["exitCode"] == 7
    assert doc["data"]["istio"]["installedBy"] == "none"
    assert doc["data"]["problems"][0].startswith("Istio is not installed")

    helm_install_foreign(c)
    doc, writes = _status(c)
    assert writes == 0
    data = doc["data"]
    assert doc["exitCode"] == 7 and doc["status"] == "unhealthy"
    assert data["istio"]["installedBy"] == "helm"
    assert [(r["name"], r["status"], r["byKymamesh"]) for r in data["releases"]] == [
        ("istio-base", "deployed", False),
        ("istiod", "deployed", False),
        ("istio-ingressgateway", "deployed", False),
    ]
    assert data["istiod"][0]["version"] == "1.30.3"
    assert data["mtls"] == {"mode": "PERMISSIVE", "policy": None, "rootNamespace": NAMESPACE}
    steps = {s["name"]: s for s in data["steps"]}
    assert steps["mtls-strict"]["applied"] is False
    assert steps["sidecar-resources"]["applied"] is False
    text = kymamesh(c, "status")
    assert text.code == 7
    assert "installed with Helm, not by kymamesh" in text.stdout
