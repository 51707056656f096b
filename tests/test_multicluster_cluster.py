"""One mesh across clusters, against test clusters with the real istiod.

- install --mesh-id/--cluster-name/--network: the istiod values, the network label, what
  the real istiod reports as its own cluster (its /debug/clusterz), remembered, `status`.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

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
