"""One mesh across clusters, against test clusters with the real istiod.

- install --mesh-id/--cluster-name/--network: the istiod values, the network label, what
  the real istiod reports as its own cluster (its /debug/clusterz), remembered, `status`.
- ca create, install --ca: the cluster's intermediate of the mesh root in Secret cacerts
  before istiod starts, used by the real istiod; no private key in any output.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.conftest import TestCluster
from tests.support_lifecycle import CHARTS, get, kymamesh

NS = "istio-system"


def istiod_debug(c: TestCluster, path: str) -> Any:
    """GET `path` of istiod's monitoring port (15014), which podrunner puts on loopback."""
    running = json.loads((c.dir / "pods.json").read_text())
    pods = [p for p in running.values() if p["namespace"] == NS and p["ready"]]
    assert pods, running
    port = pods[0]["ports"]["15014"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return json.loads(response.read())


def helm_values(c: TestCluster, release: str) -> dict[str, Any]:
    out = c.helm_run("get", "values", release, "-n", NS, "-o", "json").stdout
    return dict(json.loads(out) or {})


def test_install_gives_the_cluster_its_identity(fresh_cluster: Any) -> None:
    c = fresh_cluster()
    run = kymamesh(
        c, "install", "--charts-dir", str(CHARTS), "-y", "-o", "json",
        "--mesh-id", "mesh1", "--cluster-name", "east", "--network", "net1",
    )  # fmt: skip
    assert run.code == 0, str(run)
    glob = helm_values(c, "istiod")["global"]
    assert glob["meshID"] == "mesh1"
    assert glob["multiCluster"] == {"clusterName": "east"}
    assert glob["network"] == "net1"
    namespace = get(c, "namespace", NS)
    assert namespace is not None
    assert namespace["metadata"]["labels"]["topology.istio.io/network"] == "net1"
    # the real istiod runs as cluster `east` (its config cluster in /debug/clusterz)
    assert istiod_debug(c, "/debug/clusterz") == [
        {"id": "east", "secretName": "", "syncStatus": "synced"}
    ]
    mesh = get(c, "configmap", "istio", "-n", NS)
    assert mesh is not None and "meshId: mesh1" in mesh["data"]["mesh"]

    status = kymamesh(c, "status", "-o", "json")
    assert status.code == 0, str(status)
    assert status.doc["data"]["multicluster"] == {
        "meshID": "mesh1",
        "clusterName": "east",
        "network": "net1",
        "trustDomain": "cluster.local",
    }
    text = kymamesh(c, "status")
    assert "mesh: ID mesh1, cluster east, network net1, trust domain cluster.local" in text.stdout

    # remembered: a plain re-run keeps them and writes nothing
    with c.audit.counting() as writes:
        again = kymamesh(c, "install", "--charts-dir", str(CHARTS), "-y", "-o", "json")
        assert again.code == 0 and again.doc["changed"] is False, str(again)
    assert writes.total == 0, writes.describe()

    # a new network: the value and the label follow; the rest is kept
    moved = kymamesh(
        c, "install", "--charts-dir", str(CHARTS), "-y", "-o", "json", "--network", "net2"
    )
    assert moved.code == 0, str(moved)
    glob = helm_values(c, "istiod")["global"]
    assert (glob["meshID"], glob["network"]) == ("mesh1", "net2")
    namespace = get(c, "namespace", NS)
    assert namespace is not None
    assert namespace["metadata"]["labels"]["topology.istio.io/network"] == "net2"

    # a -f/--set that contradicts the flags is refused before any write
    with c.audit.counting() as writes:
        bad = kymamesh(
            c, "install", "--charts-dir", str(CHARTS), "-y", "-o", "json",
            "--set", "istiod.global.meshID=other",
        )  # fmt: skip
    assert bad.code == 2, str(bad)
    assert "istiod.global.meshID is 'other'" in bad.doc["errors"][0]["message"]
    assert writes.total == 0, writes.describe()


def test_install_plugs_in_a_cluster_ca_of_the_mesh_root(fresh_cluster: Any, tmp_path: Path) -> None:
    c = fresh_cluster()
    root_dir = tmp_path / "root"
    made = kymamesh(c, "ca", "create", "--out", str(root_dir), "-o", "json")
    assert made.code == 0, str(made)
    root_pem = (root_dir / "root-cert.pem").read_bytes()
    root_key = (root_dir / "root-key.pem").read_bytes()
    assert (root_dir / "root-key.pem").stat().st_mode & 0o077 == 0
    assert b"PRIVATE KEY" not in made.stdout.encode() + made.stderr.encode()

    args = ["install", "--charts-dir", str(CHARTS), "-y", "--cluster-name", "west"]
    dry = kymamesh(c, *args, "--ca", str(root_dir), "--dry-run", "-o", "json")
    assert dry.code == 0, str(dry)
    run = kymamesh(c, *args, "--ca", str(root_dir), "-o", "json")
    assert run.code == 0, str(run)
    text = kymamesh(c, *args, "--ca", str(root_dir), "--dry-run", "-v")
    for out in (dry, run, text):
        _no_key_in(out.stdout + out.stderr, root_key)

    secret = get(c, "secret", "cacerts", "-n", NS)
    assert secret is not None
    values = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert set(values) == {"ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"}
    assert values["root-cert.pem"] == root_pem
    for out in (dry, run, text):
        _no_key_in(out.stdout + out.stderr, values["ca-key.pem"])
    ca = x509.load_pem_x509_certificate(values["ca-cert.pem"])
    root = x509.load_pem_x509_certificate(root_pem)
    ca.verify_directly_issued_by(root)  # this cluster's intermediate, issued by the root
    assert "west" in ca.subject.rfc4514_string()
    chain = x509.load_pem_x509_certificates(values["cert-chain.pem"])
    assert [x.fingerprint(hashes.SHA256()) for x in chain] == [
        ca.fingerprint(hashes.SHA256()),
        root.fingerprint(hashes.SHA256()),
    ]
    # the real istiod signs with the plugged-in CA: the root it publishes is the mesh's,
    # and it made no self-signed CA of its own
    published = get(c, "configmap", "istio-ca-root-cert", "-n", NS)
    assert published is not None
    assert published["data"]["root-cert.pem"].encode().strip() == root_pem.strip()
    assert get(c, "secret", "istio-ca-secret", "-n", NS) is None

    # a re-run keeps the intermediate in place: nothing written
    with c.audit.counting() as writes:
        again = kymamesh(c, *args, "--ca", str(root_dir), "-o", "json")
    assert again.code == 0 and again.doc["changed"] is False, str(again)
    assert writes.total == 0, writes.describe()

    # another root on a running istiod: refused with the plan, nothing written
    other = tmp_path / "other"
    assert kymamesh(c, "ca", "create", "--out", str(other)).code == 0
    with c.audit.counting() as writes:
        refused = kymamesh(c, *args, "--ca", str(other), "-o", "json")
    assert refused.code == 3, str(refused)
    error = refused.doc["errors"][0]
    assert "istiod already runs in istio-system on the plug-in CA" in error["message"]
    assert "restart istiod" in error["hint"] and "restart every sidecar" in error["hint"]
    assert writes.total == 0, writes.describe()


def _no_key_in(output: str, key_pem: bytes) -> None:
    assert "PRIVATE KEY" not in output
    body = b"".join(line for line in key_pem.splitlines() if not line.startswith(b"-----"))
    assert body.decode() not in output.replace("\n", "")
    assert base64.b64encode(key_pem).decode() not in output
