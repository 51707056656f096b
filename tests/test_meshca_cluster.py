"""A change of root on a running mesh, with the real istiod: `install --ca DIR` on a cluster
whose istiod runs on its self-signed CA is refused with this cluster's plan and writes
nothing; with --restart-proxies it writes cacerts, restarts istiod, waits until istiod
publishes the new root, then restarts every injected workload and the gateway; a re-run
writes nothing; no private key in any output."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support_lifecycle import CHARTS, Run, get, kymamesh

pytestmark = pytest.mark.cluster

NS = "istio-system"
APPS = ("cart", "orders", "web")


def meshed(name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]},
                },
            },
        }
    )


def ok(run: Run) -> Run:
    assert run.code == 0, str(run)
    return run


def pod_uids(c: Any, namespace: str) -> dict[str, str]:
    """Running Pods with a sidecar: their app (or name) -> uid."""
    doc = get(c, "pods", "-n", namespace) or {"items": []}
    return {
        p["metadata"]["labels"].get("app", p["metadata"]["name"]): p["metadata"]["uid"]
        for p in doc["items"]
        if not p["metadata"].get("deletionTimestamp")
        and "sidecar.istio.io/status" in (p["metadata"].get("annotations") or {})
    }


def no_key_in(output: str, key_pem: bytes) -> None:
    assert "PRIVATE KEY" not in output
    body = b"".join(line for line in key_pem.splitlines() if not line.startswith(b"-----"))
    assert body.decode() not in output.replace("\n", "")
    assert base64.b64encode(key_pem).decode() not in output


def test_a_running_istiod_moves_to_the_mesh_root_with_restart_proxies(
    fresh_cluster: Any, tmp_path: Path
) -> None:
    c = fresh_cluster()
    base = ["install", "--charts-dir", str(CHARTS), "-y", "--timeout", "240"]
    ok(kymamesh(c, *base))
    c.create_namespace("shop")
    for name in APPS:
        c.kubectl("apply", "-n", "shop", "-f", "-", input=meshed(name))
    ok(kymamesh(c, "inject-namespace", "shop", "--all", "--wait", "-y"))
    before = pod_uids(c, "shop") | pod_uids(c, NS)
    assert set(before) >= {*APPS, "istio-ingressgateway"}, before
    self_signed = get(c, "configmap", "istio-ca-root-cert", "-n", "shop")
    assert self_signed is not None

    root = tmp_path / "root"
    ok(kymamesh(c, "ca", "create", "--out", str(root)))
    root_pem = (root / "root-cert.pem").read_bytes()
    root_key = (root / "root-key.pem").read_bytes()
    args = [*base, "--ca", str(root), "--cluster-name", "east", "-o", "json"]

    # without --restart-proxies: refused with this cluster's plan, nothing written
    with c.audit.counting() as writes:
        refused = kymamesh(c, *args)
    assert refused.code == 3, str(refused)
    error = refused.doc["errors"][0]
    assert "istiod already runs in istio-system on its own self-signed CA" in error["message"]
    assert "restart 1 istiod Deployment (revision default)" in error["message"]
    assert "restart 3 injected workloads and 1 gateway in 2 batches" in error["message"]
    assert "--restart-proxies" in error["hint"]
    assert writes.total == 0, writes.describe()
    assert get(c, "secret", "cacerts", "-n", NS) is None

    # --dry-run shows the whole plan and writes nothing
    with c.audit.counting(include_dry_run=False) as writes:
        dry = kymamesh(c, *args, "--restart-proxies", "--restart-batch", "2", "--dry-run")
    assert dry.code == 0, str(dry)
    assert writes.total == 0, writes.describe()
    phases = {p["name"]: p for p in dry.doc["phases"]}
    istiod_items = [i["name"] for i in phases["shared trust: istiod on the new root"]["items"]]
    assert istiod_items == ["Deployment/istio-system/istiod", "ConfigMap istio-ca-root-cert"]
    restarted = [i["summary"] for i in phases["shared trust: workloads on the new root"]["items"]]
    assert len(restarted) == 4, restarted
    assert "Deployment/istio-system/istio-ingressgateway restarted, batch 1/3" in restarted[0]
    text_args = [a for a in args if a not in ("-o", "json")]
    text = kymamesh(c, *text_args, "--restart-proxies", "--dry-run", "-v")
    assert text.code == 0, str(text)
    assert "shared trust: workloads on the new root" in text.stdout + text.stderr

    # with --restart-proxies: carried out
    run = kymamesh(c, *args, "--restart-proxies", "--restart-batch", "2", timeout=900)
    assert run.code == 0, str(run)
    secret = get(c, "secret", "cacerts", "-n", NS)
    assert secret is not None
    values = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert values["root-cert.pem"] == root_pem
    assert "kymamesh.io/root-change-since" not in (secret["metadata"].get("annotations") or {})
    for namespace in (NS, "shop"):
        published = get(c, "configmap", "istio-ca-root-cert", "-n", namespace)
        assert published is not None
        assert published["data"]["root-cert.pem"].encode().strip() == root_pem.strip(), namespace
    after = pod_uids(c, "shop") | pod_uids(c, NS)
    for name, uid in before.items():
        assert after.get(name) not in (None, uid), f"{name}: Pod not replaced"
    for out in (refused, dry, text, run):
        no_key_in(out.stdout + out.stderr, root_key)
        no_key_in(out.stdout + out.stderr, values["ca-key.pem"])

    # a re-run writes nothing
    with c.audit.counting() as writes:
        again = kymamesh(c, *args, "--restart-proxies")
    assert again.code == 0 and again.doc["changed"] is False, str(again)
    assert writes.total == 0, writes.describe()


CHARTS_131 = CHARTS.parent / "charts-1.31"


def test_join_with_ca_moves_each_running_istiod_to_the_mesh_root(
    fresh_cluster: Any, tmp_path: Path
) -> None:
    """Two clusters installed without --ca (istiod on its self-signed CA): `mesh join --ca`
    is refused on both with their plans and writes nothing; with --restart-proxies each gets
    its intermediate of the root, istiod restarted on it, and the join goes on."""
    clusters = {"east": fresh_cluster(), "west": fresh_cluster()}
    for name, c in clusters.items():
        installed = kymamesh(
            c, "install", "--charts-dir", str(CHARTS_131), "-y", "--timeout", "300",
            "--mesh-id", "mesh1", "--cluster-name", name, "--network", "net1",
        )  # fmt: skip
        ok(installed)
    east, west = clusters["east"], clusters["west"]
    root = tmp_path / "root"
    ok(kymamesh(east, "ca", "create", "--out", str(root)))
    root_pem = (root / "root-cert.pem").read_bytes()
    root_key = (root / "root-key.pem").read_bytes()
    join = ["mesh", "join", "--kubeconfig", str(east.kubeconfig)]
    join += ["--kubeconfig", str(west.kubeconfig), "--ca", str(root), "-o", "json"]

    marks = [c.audit.mark() for c in (east, west)]
    refused = kymamesh(east, *join)
    for c, mark in zip((east, west), marks, strict=True):
        writes = c.audit.writes_since(mark)
        assert writes.total == 0, writes.describe()
    assert refused.code == 3, str(refused)
    message = refused.doc["errors"][0]["message"]
    for name in ("east", "west"):
        assert f"{name}: istiod already runs in istio-system on its own self-signed CA" in message
    assert message.count("restart 1 istiod Deployment (revision default)") == 2, message
    assert "--restart-proxies" in refused.doc["errors"][0]["hint"]

    run = kymamesh(east, *join, "--restart-proxies", timeout=900)
    assert run.code == 0, str(run)
    for name, c in clusters.items():
        secret = get(c, "secret", "cacerts", "-n", NS)
        assert secret is not None, name
        values = {k: base64.b64decode(v) for k, v in secret["data"].items()}
        assert values["root-cert.pem"] == root_pem, name
        published = get(c, "configmap", "istio-ca-root-cert", "-n", NS)
        assert published is not None
        assert published["data"]["root-cert.pem"].encode().strip() == root_pem.strip(), name
        for out in (refused, run):
            no_key_in(out.stdout + out.stderr, values["ca-key.pem"])
    for out in (refused, run):
        no_key_in(out.stdout + out.stderr, root_key)
    items = [i["name"] for p in run.doc["phases"] for i in p["items"]]
    assert (
        "east: Secret/istio-system/cacerts" in items
        and "west: Deployment/istio-system/istiod" in items
    )

    marks = [c.audit.mark() for c in (east, west)]
    again = kymamesh(east, *join, "--restart-proxies")
    assert again.code == 0 and again.doc["changed"] is False, str(again)
    for c, mark in zip((east, west), marks, strict=True):
        writes = c.audit.writes_since(mark)
        assert writes.total == 0, writes.describe()
