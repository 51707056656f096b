"""One mesh across clusters, against test clusters with the real istiod.

- install --mesh-id/--cluster-name/--network: the istiod values, the network label, what
  the real istiod reports as its own cluster (its /debug/clusterz), remembered, `status`.
- ca create, install --ca: the cluster's intermediate of the mesh root in Secret cacerts
  before istiod starts, used by the real istiod; no private key in any output.
- mesh join: refusals with zero writes on every cluster; two clusters on one network, each
  real istiod watching the other through the remote secret kymamesh wrote; a re-run
  writes nothing.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.conftest import TestCluster, _start
from tests.support_lifecycle import CHARTS, ROOT, get, kymamesh
from tests.support_patch import KILLER

# the joined clusters run Istio 1.31: an istiod before 1.30.4 drops a peer's Services when
# the peer's remote secret changes, so `mesh rotate` refuses it
CHARTS_131 = ROOT / "tests" / "fixtures" / "charts-1.31"
pytestmark = pytest.mark.cluster  # the module's own clusters (`mesh`) too

NS = "istio-system"
EXEC_API = "client.authentication.k8s.io/v1"


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
        "peers": [],
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
    assert "restart 1 istiod Deployment (revision default)" in error["message"]
    assert "--restart-proxies" in error["hint"] and "every sidecar" in error["hint"]
    assert writes.total == 0, writes.describe()


def _no_key_in(output: str, key_pem: bytes) -> None:
    assert "PRIVATE KEY" not in output
    body = b"".join(line for line in key_pem.splitlines() if not line.startswith(b"-----"))
    assert body.decode() not in output.replace("\n", "")
    assert base64.b64encode(key_pem).decode() not in output


# -- mesh join -------------------------------------------------------------------------------


def install_member(
    c: TestCluster, mesh_id: str, name: str, ca: Path, network: str = "net1"
) -> None:
    run = kymamesh(
        c, "install", "--charts-dir", str(CHARTS_131), "-y", "--timeout", "300",
        "--mesh-id", mesh_id, "--cluster-name", name, "--network", network, "--ca", str(ca),
    )  # fmt: skip
    assert run.code == 0, str(run)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two clusters, east and west, each installed into mesh1 (one network) with an
    intermediate of one root."""
    root = tmp_path_factory.mktemp("mesh-root") / "ca"
    clusters = {"east": _start(tmp_path_factory.mktemp("east"))}
    try:
        clusters["west"] = _start(tmp_path_factory.mktemp("west"))
        assert kymamesh(clusters["east"], "ca", "create", "--out", str(root)).code == 0
        for name, c in clusters.items():
            install_member(c, "mesh1", name, root)
        yield {**clusters, "root": root}
    finally:
        for c in clusters.values():
            c.down(keep=True)


def join_args(*clusters: TestCluster) -> list[str]:
    args = ["mesh", "join"]
    for c in clusters:
        args += ["--kubeconfig", str(c.kubeconfig)]
    return args


def test_join_refusals_write_nothing_on_any_cluster(
    mesh: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`odd` is installed with another mesh ID, the name east and another root."""
    east, west = mesh["east"], mesh["west"]
    odd = _start(tmp_path_factory.mktemp("odd"))
    try:
        other = tmp_path_factory.mktemp("other-root") / "ca"
        assert kymamesh(odd, "ca", "create", "--out", str(other)).code == 0
        install_member(odd, "mesh2", "east", other)
        _refusals(east, west, odd)
    finally:
        odd.down(keep=True)


def _refusals(east: TestCluster, west: TestCluster, odd: TestCluster) -> None:
    everyone = (east, west, odd)

    def refused(*args: str) -> dict[str, Any]:
        marks = [c.audit.mark() for c in everyone]
        run = kymamesh(east, *args, "-o", "json")
        for c, mark in zip(everyone, marks, strict=True):
            writes = c.audit.writes_since(mark)
            assert writes.total == 0, writes.describe()
        assert run.code == 3, str(run)
        return dict(run.doc["errors"][0])

    # another mesh ID, the same cluster name twice, another root: each named
    error = refused(*join_args(east, odd))
    assert "the mesh IDs must be equal and set: east has mesh1, east has mesh2" in error["message"]
    assert "cluster names must differ, but east is the name of" in error["message"]
    assert (
        "the roots of trust differ: the cacerts of east chain to another root" in (error["message"])
    )
    assert "--mesh-id" in error["hint"] and "--ca DIR" in error["hint"]

    # an API server the peers cannot reach
    error = refused(*join_args(east, west), "--api-server", "west=https://127.0.0.1:9")
    assert "the API server of west at https://127.0.0.1:9 does not answer" in error["message"]
    assert "--api-server NAME=URL" in error["hint"]

    # someone's remote secret whose kubeconfig carries exec and a token file (istiod refuses it)
    foreign = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "west", "cluster": {"server": west.server}}],
        "contexts": [{"name": "west", "context": {"cluster": "west", "user": "west"}}],
        "current-context": "west",
        "users": [
            {
                "name": "west",
                "user": {
                    "exec": {
                        "command": "cloud-auth",
                        "apiVersion": "client.authentication.k8s.io/v1",
                    },
                    "tokenFile": "/var/run/token",
                },
            }
        ],
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "istio-remote-secret-west",
            "namespace": NS,
            "labels": {"istio/multiCluster": "true"},
            "annotations": {"networking.istio.io/cluster": "west"},
        },
        "stringData": {"west": yaml.safe_dump(foreign)},
    }
    east.kubectl("apply", "-f", "-", input=json.dumps(secret))
    try:
        error = refused(*join_args(east, west))
        assert (
            "east already has a remote secret for west, istio-system/istio-remote-secret-west, "
            "that kymamesh did not make; its kubeconfig carries users.exec, users.tokenFile"
        ) in error["message"]
    finally:
        east.kubectl("delete", "secret", "istio-remote-secret-west", "-n", NS)

    # bad command lines: exit 2
    one = kymamesh(east, *join_args(east), "-o", "json")
    assert one.code == 2 and "at least 2 clusters" in one.doc["errors"][0]["message"]
    bad = kymamesh(east, *join_args(east, west), "--api-server", "west", "-o", "json")
    assert bad.code == 2 and "is not NAME=https://" in bad.doc["errors"][0]["message"]


def test_join_two_clusters_on_one_network(mesh: dict[str, Any]) -> None:
    east, west = mesh["east"], mesh["west"]
    # a Service that exists only in east
    east.create_namespace("shop")
    east.kubectl("create", "service", "clusterip", "cart", "--tcp=8080:8080", "-n", "shop")

    dry = kymamesh(east, *join_args(east, west), "--dry-run", "-o", "json")
    assert dry.code == 0, str(dry)
    writes = {i["name"]: i for p in dry.doc["phases"] if p["name"] == "writes" for i in p["items"]}
    assert set(writes) == {"east reads west", "west reads east"}
    assert all(i["outcome"] == "would-change" for i in writes.values())

    run = kymamesh(east, *join_args(east, west), "-o", "json", "--timeout", "120")
    assert run.code == 0, str(run)
    assert run.doc["data"]["verified"]["east"]["synced"] == ["west"]

    for here, peer in ((east, "west"), (west, "east")):
        # the real istiod lists the peer synced, through the remote secret kymamesh wrote
        clusters = {e["id"]: e for e in istiod_debug(here, "/debug/clusterz")}
        assert clusters[peer]["syncStatus"] == "synced", clusters
        assert clusters[peer]["secretName"] == f"{NS}/istio-remote-secret-{peer}"
        secret = get(here, "secret", f"istio-remote-secret-{peer}", "-n", NS)
        assert secret is not None
        assert secret["metadata"]["labels"]["istio/multiCluster"] == "true"
        assert secret["metadata"]["annotations"]["networking.istio.io/cluster"] == peer
        (key,) = secret["data"]
        assert key == peer
        kubeconfig = yaml.safe_load(base64.b64decode(secret["data"][peer]))
        (user,) = kubeconfig["users"]
        assert set(user["user"]) == {"token"}  # never the admin's client certificate
        (entry,) = kubeconfig["clusters"]
        assert set(entry["cluster"]) == {"server", "certificate-authority-data"}
        peer_cluster = east if peer == "east" else west
        assert entry["cluster"]["server"] == peer_cluster.server
        # the token is of the reader account kymamesh made in the peer, bound to the reader role
        reader = f"kymamesh-reader-{here_name(here, east)}"
        binding = get(peer_cluster, "clusterrolebinding", reader)
        assert binding is not None
        assert binding["roleRef"]["name"] == f"istio-reader-clusterrole-{NS}"
        run_as = peer_cluster.kubectl(
            "auth", "can-i", "create", "secrets", "-n", NS,
            f"--as=system:serviceaccount:{NS}:{reader}",
            check=False,
        )  # fmt: skip
        assert run_as.stdout.strip() == "no"

    # west's istiod knows east's Service `cart`, with east's address
    def cart_in_west() -> dict[str, Any] | None:
        services = istiod_debug(west, "/debug/registryz")
        return next((s for s in services if s["hostname"] == "cart.shop.svc.cluster.local"), None)

    cart = TestCluster.wait_for(cart_in_west, 60, "cart.shop in west's registry")
    east_ip = json.loads(east.kubectl("get", "svc", "cart", "-n", "shop", "-o", "json").stdout)
    assert cart["clusterVIPs"]["Addresses"] == {"east": [east_ip["spec"]["clusterIP"]]}

    # a re-run writes nothing on either cluster
    marks = [east.audit.mark(), west.audit.mark()]
    again = kymamesh(east, *join_args(east, west), "-o", "json")
    assert again.code == 0 and again.doc["changed"] is False, str(again)
    for c, mark in zip((east, west), marks, strict=True):
        writes = c.audit.writes_since(mark)
        assert writes.total == 0, writes.describe()


def here_name(c: TestCluster, east: TestCluster) -> str:
    return "east" if c is east else "west"


def _api_get(server: str, path: str, token: str, ca_pem: bytes) -> int:
    """The HTTP status of GET `path` on an API server with a bearer token."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    request = urllib.request.Request(server + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _reader_token(c: TestCluster, peer: str) -> tuple[str, str, bytes]:
    secret = get(c, "secret", f"istio-remote-secret-{peer}", "-n", NS)
    assert secret is not None
    kubeconfig = yaml.safe_load(base64.b64decode(secret["data"][peer]))
    cluster = kubeconfig["clusters"][0]["cluster"]
    return (
        kubeconfig["users"][0]["user"]["token"],
        cluster["server"],
        base64.b64decode(cluster["certificate-authority-data"]),
    )


def _join_objects(c: TestCluster) -> list[str]:
    """Everything of a join in one cluster: remote secrets, reader accounts, bindings, token
    Secrets."""
    found = []
    for kind, extra in (
        ("secret", ["-n", NS, "-l", "istio/multiCluster=true"]),
        ("secret", ["-n", NS, "-l", "kymamesh.io/reader-for"]),
        ("serviceaccount", ["-n", NS, "-l", "kymamesh.io/reader-for"]),
        ("clusterrolebinding", ["-l", "kymamesh.io/reader-for"]),
    ):
        doc = get(c, kind, *extra) or {"items": []}
        found += [f"{kind}/{i['metadata']['name']}" for i in doc["items"]]
    return sorted(found)


def test_status_rotate_uninstall_refusal_and_leave(mesh: dict[str, Any]) -> None:
    east, west = mesh["east"], mesh["west"]
    everyone = join_args(east, west)[2:]

    status = kymamesh(east, "mesh", "status", *everyone, "-o", "json")
    assert status.code == 0, str(status)
    (east_view,) = [c for c in status.doc["data"]["clusters"] if c["name"] == "east"]
    (peer,) = east_view["peers"]
    assert (peer["cluster"], peer["syncStatus"], peer["byKymamesh"]) == ("west", "synced", True)
    plain = kymamesh(east, "status", "-o", "json")
    assert [p["cluster"] for p in plain.doc["data"]["multicluster"]["peers"]] == ["west"]

    # uninstall on a joined cluster: refused, naming the peer; nothing written
    with east.audit.counting() as writes:
        refused = kymamesh(east, "uninstall", "-y", "-o", "json")
    assert refused.code == 3, str(refused)
    assert "joined in a mesh with west" in refused.doc["errors"][0]["message"]
    assert "mesh leave" in refused.doc["errors"][0]["hint"]
    assert writes.total == 0, writes.describe()

    # rotate: new tokens, peers synced on them, old tokens rejected by the API servers
    old_token, server, ca = _reader_token(east, "west")
    assert _api_get(server, f"/api/v1/namespaces/{NS}/services", old_token, ca) == 200
    rotated = kymamesh(east, "mesh", "rotate", *everyone, "-o", "json", "--timeout", "120")
    assert rotated.code == 0, str(rotated)
    new_token, _, _ = _reader_token(east, "west")
    assert new_token != old_token
    # revoked: its Secret is gone; the API server may take a few seconds (its token cache)
    east.wait_for(
        lambda: _api_get(server, f"/api/v1/namespaces/{NS}/services", old_token, ca) == 401,
        30,
        "the old reader token refused",
    )
    assert _api_get(server, f"/api/v1/namespaces/{NS}/services", new_token, ca) == 200
    assert _api_get(server, f"/api/v1/namespaces/{NS}/secrets", new_token, ca) == 200
    for here, other in ((east, "west"), (west, "east")):
        clusters = {e["id"]: e["syncStatus"] for e in istiod_debug(here, "/debug/clusterz")}
        assert clusters[other] == "synced", clusters
    after = kymamesh(east, "mesh", "status", *everyone, "-o", "json")
    assert after.code == 0, str(after)

    # leave: east goes; nothing of the join is left on either side
    dry = kymamesh(east, "mesh", "leave", *everyone, "--dry-run", "-o", "json")
    assert dry.code == 0, str(dry)
    assert _join_objects(east) and _join_objects(west)
    left = kymamesh(east, "mesh", "leave", *everyone, "-o", "json", "--timeout", "120")
    assert left.code == 0, str(left)
    assert _join_objects(east) == [] and _join_objects(west) == []
    assert [e["id"] for e in istiod_debug(west, "/debug/clusterz")] == ["west"]
    assert [e["id"] for e in istiod_debug(east, "/debug/clusterz")] == ["east"]
    # the token's Secret is gone: refused once the API server's token cache lets go of it
    # (until then the deleted binding already refuses it: 403)
    east.wait_for(
        lambda: _api_get(server, f"/api/v1/namespaces/{NS}/services", new_token, ca) == 401,
        30,
        "the reader token refused after leave",
    )
    with east.audit.counting() as east_writes, west.audit.counting() as west_writes:
        again = kymamesh(east, "mesh", "leave", *everyone, "-o", "json")
    assert again.code == 0 and again.doc["changed"] is False, str(again)
    assert east_writes.total == 0 and west_writes.total == 0
    status = kymamesh(east, "mesh", "status", *everyone, "-o", "json")
    assert status.code == 7
    assert "east has no remote secret for west: not joined" in status.doc["data"]["problems"]


@contextmanager
def load_balancer(c: TestCluster, address: str) -> Iterator[list[str]]:
    """No cloud gives a Service of type LoadBalancer an address in the test cluster: this
    thread plays a cloud's load balancer controller for the east-west gateway, setting
    `status.loadBalancer.ingress` once the Service exists (again after it is made anew).
    Yields the names of the Services it answered."""
    stop = threading.Event()
    answered: list[str] = []

    def run() -> None:
        while not stop.wait(0.5):
            svc = get(c, "service", EW, "-n", NS)
            if svc is None or (svc.get("status") or {}).get("loadBalancer", {}).get("ingress"):
                continue
            if svc["spec"].get("type") != "LoadBalancer":
                continue
            status = {"status": {"loadBalancer": {"ingress": [{"ip": address}]}}}
            c.kubectl(
                "patch", "service", EW, "-n", NS, "--subresource=status", "--type=merge",
                "-p", json.dumps(status), check=False,
            )  # fmt: skip
            answered.append(svc["metadata"]["uid"])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield answered
    finally:
        stop.set()
        thread.join(10)


EW = "istio-eastwestgateway"


def east_west_objects(c: TestCluster) -> list[str]:
    """What an east-west gateway of kymamesh's leaves in a cluster: its Helm release (the
    release records), Service, Deployment, and the Gateway cross-network-gateway."""
    found = []
    for kind, extra in (
        ("secret", ["-n", NS, "-l", f"owner=helm,name={EW}"]),
        ("service", ["-n", NS, "-l", f"app={EW}"]),
        ("deployment", ["-n", NS, "-l", f"app={EW}"]),
        ("gateway.networking.istio.io", ["-n", NS]),
    ):
        doc = get(c, kind, *extra) or {"items": []}
        found += [f"{kind}/{i['metadata']['name']}" for i in doc["items"]]
    return sorted(found)


def test_two_networks_without_a_load_balancer_is_refused_and_undone(
    mesh: dict[str, Any],
) -> None:
    """Several networks and no load balancer: kymamesh installs the east-west gateways, none
    gets an address, and join stops before any remote secret, removing them again."""
    east, west = mesh["east"], mesh["west"]
    install_member(west, "mesh1", "west", mesh["root"], network="net2")
    try:
        assert east_west_objects(east) == [] and east_west_objects(west) == []
        marks = [east.audit.mark(), west.audit.mark()]
        refused = kymamesh(
            east, *join_args(east, west), "--charts-dir", str(CHARTS_131), "--gateway-wait", "5",
            "-o", "json",
        )  # fmt: skip
        assert refused.code == 3, str(refused)
        error = refused.doc["errors"][0]
        assert "stopped before writing any remote secret" in error["message"]
        for name, net in (("east", "net1"), ("west", "net2")):
            assert (
                f"{name} (network {net}): its east-west gateway Service {NS}/{EW} has "
                "no address within 5s" in error["message"]
            ), error
        assert "was removed again" in error["message"]
        assert "load balancer" in error["hint"]
        for c, mark in zip((east, west), marks, strict=True):
            writes = c.audit.writes_since(mark)  # kymamesh's and its helm's
            names = [e["objectRef"].get("name", "") for e in writes.events]
            # the gateway was installed (and removed); no remote secret, no reader account
            assert any(EW in n for n in names), writes.describe()
            assert not [n for n in names if "remote-secret" in n or "reader" in n], names
            assert _join_objects(c) == []
            assert east_west_objects(c) == []
    finally:
        for c in (east, west):
            c.helm_run("uninstall", EW, "-n", NS, check=False)
        install_member(west, "mesh1", "west", mesh["root"], network="net1")


def own_east_west_service(network: str) -> dict[str, Any]:
    """An east-west gateway Service a user made (as Istio's gateway chart makes it with
    name=istio-eastwestgateway and networkGateway=NETWORK), not kymamesh."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": EW,
            "namespace": NS,
            "labels": {"app": EW, "istio": "eastwestgateway", "topology.istio.io/network": network},
        },
        "spec": {
            "type": "LoadBalancer",
            "selector": {"istio": "eastwestgateway"},
            "ports": [
                {"name": "status-port", "port": 15021, "targetPort": 15021},
                {"name": "tls", "port": 15443, "targetPort": 15443},
                {"name": "tls-istiod", "port": 15012, "targetPort": 15012},
                {"name": "tls-webhook", "port": 15017, "targetPort": 15017},
            ],
        },
    }


def test_join_two_clusters_on_two_networks(mesh: dict[str, Any]) -> None:
    """east gets its east-west gateway from kymamesh; west has one of its own, which join
    uses as it is and leave leaves alone."""
    east, west = mesh["east"], mesh["west"]
    install_member(west, "mesh1", "west", mesh["root"], network="net2")
    if get(east, "service", "cart", "-n", "shop") is None:  # made by the one-network test
        east.create_namespace("shop")
        east.kubectl("create", "service", "clusterip", "cart", "--tcp=8080:8080", "-n", "shop")
    addresses = {"east": "203.0.113.10", "west": "203.0.113.20"}
    args = [*join_args(east, west), "--charts-dir", str(CHARTS_131)]
    try:
        west.kubectl("apply", "-f", "-", input=json.dumps(own_east_west_service("net2")))
        with load_balancer(east, addresses["east"]), load_balancer(west, addresses["west"]):
            run = kymamesh(east, *args, "-o", "json", "--timeout", "180")
        assert run.code == 0, str(run)
        assert run.doc["data"]["eastWestGateways"] == {
            name: {"service": f"{NS}/{EW}", "address": addresses[name], "byKymamesh": ours}
            for name, ours in (("east", True), ("west", False))
        }
        # the east-west gateway kymamesh installed in east: Istio's gateway chart,
        # networkGateway=net1; west's own Service is used as it is (no release there)
        values = helm_values(east, EW)
        assert values["networkGateway"] == "net1" and values["name"] == EW, values
        assert west.helm_run("status", EW, "-n", NS, check=False).returncode != 0
        svc = get(east, "service", EW, "-n", NS)
        assert svc is not None
        assert svc["metadata"]["labels"]["topology.istio.io/network"] == "net1"
        assert svc["spec"]["selector"]["istio"] == "eastwestgateway"
        assert {(p["name"], p["port"]) for p in svc["spec"]["ports"]} == {
            ("status-port", 15021), ("tls", 15443), ("tls-istiod", 15012), ("tls-webhook", 15017),
        }  # fmt: skip
        for here, peer in ((east, "west"), (west, "east")):
            gateway = get(here, "gateway.networking.istio.io", "cross-network-gateway", "-n", NS)
            assert gateway is not None
            (server,) = gateway["spec"]["servers"]
            assert server["port"]["number"] == 15443
            assert server["tls"]["mode"] == "AUTO_PASSTHROUGH"
            assert server["hosts"] == ["*.local"]
            assert gateway["spec"]["selector"] == {"istio": "eastwestgateway"}
            # the real istiod knows the peer's network gateway at the peer's address
            seen = {(g["Cluster"], g["Network"], g["Addr"], g["Port"])
                    for g in istiod_debug(here, "/debug/networkz")}  # fmt: skip
            peer_net = "net1" if peer == "east" else "net2"
            assert (peer, peer_net, addresses[peer], 15443) in seen, seen

        # east's Service, in west's registry
        def cart_in_west() -> dict[str, Any] | None:
            services = istiod_debug(west, "/debug/registryz")
            host = "cart.shop.svc.cluster.local"
            return next((s for s in services if s["hostname"] == host), None)

        cart = TestCluster.wait_for(cart_in_west, 60, "cart.shop in west's registry")
        assert list(cart["clusterVIPs"]["Addresses"]) == ["east"]
        with east.audit.counting() as ew, west.audit.counting() as ww:
            again = kymamesh(east, *args, "-o", "json")
        assert again.code == 0 and again.doc["changed"] is False, str(again)
        assert ew.total == 0 and ww.total == 0, (ew.describe(), ww.describe())

        # leave: nothing of the join is left; west's own east-west gateway stays
        left = kymamesh(east, "mesh", "leave", *join_args(east, west)[2:], "-o", "json")
        assert left.code == 0, str(left)
        assert _join_objects(east) == [] and _join_objects(west) == []
        assert east_west_objects(east) == []
        assert east_west_objects(west) == [f"service/{EW}"]
        with east.audit.counting() as ew, west.audit.counting() as ww:
            again = kymamesh(east, "mesh", "leave", *join_args(east, west)[2:], "-o", "json")
        assert again.code == 0 and again.doc["changed"] is False, str(again)
        assert ew.total == 0 and ww.total == 0, (ew.describe(), ww.describe())
    finally:
        east.helm_run("uninstall", EW, "-n", NS, check=False)
        west.kubectl("delete", "service", EW, "-n", NS, check=False)
        install_member(west, "mesh1", "west", mesh["root"], network="net1")


def join_state(*clusters: TestCluster) -> list[list[str]]:
    """What a join leaves in each cluster (`_join_objects`), the random suffix of each token
    Secret aside."""
    return [
        sorted(re.sub(r"-token-[0-9a-f]{6}$", "-token-*", name) for name in _join_objects(c))
        for c in clusters
    ]


@pytest.mark.parametrize("kill_after", [3, 6], ids=lambda n: f"after-write-{n}")
def test_killed_join_converges(mesh: dict[str, Any], kill_after: int) -> None:
    """A join killed half-way (3: the first pair's account, binding and token Secret, no
    remote secret; 6: one pair complete, the other's account and binding) converges on the
    re-run to what an uninterrupted join leaves; a further re-run writes nothing."""
    east, west = mesh["east"], mesh["west"]
    args = join_args(east, west)
    whole = kymamesh(east, *args, "-o", "json", "--timeout", "180")
    assert whole.code == 0, str(whole)
    reference = join_state(east, west)
    # in each: its remote secret, the peer's reader account, binding and token Secret
    assert all(len(objects) == 4 for objects in reference), reference
    left = kymamesh(east, "mesh", "leave", *args[2:], "-o", "json", "--timeout", "120")
    assert left.code == 0, str(left)
    assert join_state(east, west) == [[], []]

    killed = subprocess.run(
        [sys.executable, "-c", KILLER, *args],
        cwd=ROOT,
        env={
            **east.env,
            "KYMAMESH_HELM": str(east.helm),
            "KYMAMESH_TEST_KILL_AFTER": str(kill_after),
        },
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    half = join_state(east, west)
    assert half != reference and half != [[], []], half  # interrupted for real

    # the killed run's Leases are left behind: the re-run waits until they expire
    rerun = kymamesh(east, *args, "-o", "json", "--timeout", "180", "--lock-wait", "60")
    assert rerun.code == 0, str(rerun)
    assert join_state(east, west) == reference
    for here, peer in ((east, "west"), (west, "east")):
        clusters = {e["id"]: e["syncStatus"] for e in istiod_debug(here, "/debug/clusterz")}
        assert clusters[peer] == "synced", clusters
    with east.audit.counting() as ew, west.audit.counting() as ww:
        again = kymamesh(east, *args, "-o", "json")
    assert again.code == 0 and again.doc["changed"] is False, str(again)
    assert ew.total == 0 and ww.total == 0, (ew.describe(), ww.describe())


def test_token_secret_join_rotate_leave(mesh: dict[str, Any]) -> None:
    """--token-secret: each reader token is a ServiceAccount token Secret's (filled by the
    real token controller), kept by re-runs, replaced by rotate (the old one refused once its
    Secret is gone), deleted by leave; status shows it as such."""
    east, west = mesh["east"], mesh["west"]
    args = join_args(east, west)
    run = kymamesh(east, *args, "--token-secret", "-o", "json", "--timeout", "180")
    assert run.code == 0, str(run)
    token, server, ca = _reader_token(east, "west")
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert payload["iss"] == "kubernetes/serviceaccount" and "exp" not in payload, payload
    anchor = payload["kubernetes.io/serviceaccount/secret.name"]
    secret = get(west, "secret", anchor, "-n", NS)
    assert secret is not None and secret["type"] == "kubernetes.io/service-account-token"
    assert base64.b64decode(secret["data"]["token"]).decode() == token
    remote = get(east, "secret", "istio-remote-secret-west", "-n", NS)
    assert remote is not None
    assert remote["metadata"]["annotations"]["kymamesh.io/token-kind"] == "token-secret"
    assert _api_get(server, f"/api/v1/namespaces/{NS}/services", token, ca) == 200
    for here, peer in ((east, "west"), (west, "east")):
        clusters = {e["id"]: e["syncStatus"] for e in istiod_debug(here, "/debug/clusterz")}
        assert clusters[peer] == "synced", clusters

    status = kymamesh(east, "mesh", "status", *args[2:], "-o", "json")
    assert status.code == 0, str(status)
    for view in status.doc["data"]["clusters"]:
        (peer,) = view["peers"]
        assert (peer["tokenKind"], peer["tokenExpires"]) == ("token-secret", None), peer
    text = kymamesh(east, "mesh", "status", *args[2:])
    assert "(token Secret, no expiry)" in text.stdout, str(text)

    # kept by a re-run, with the option or without
    with east.audit.counting() as ew, west.audit.counting() as ww:
        for extra in (["--token-secret"], []):
            again = kymamesh(east, *args, *extra, "-o", "json")
            assert again.code == 0 and again.doc["changed"] is False, str(again)
    assert ew.total == 0 and ww.total == 0, (ew.describe(), ww.describe())

    rotated = kymamesh(
        east, "mesh", "rotate", *args[2:], "--token-secret", "-o", "json", "--timeout", "120"
    )
    assert rotated.code == 0, str(rotated)
    new_token, _, _ = _reader_token(east, "west")
    assert new_token != token
    assert get(west, "secret", anchor, "-n", NS) is None  # the old token Secret deleted
    east.wait_for(
        lambda: _api_get(server, f"/api/v1/namespaces/{NS}/services", token, ca) == 401,
        30,
        "the old token Secret's token refused",
    )
    assert _api_get(server, f"/api/v1/namespaces/{NS}/services", new_token, ca) == 200

    left = kymamesh(east, "mesh", "leave", *args[2:], "-o", "json", "--timeout", "120")
    assert left.code == 0, str(left)
    assert _join_objects(east) == [] and _join_objects(west) == []
    east.wait_for(
        lambda: _api_get(server, f"/api/v1/namespaces/{NS}/services", new_token, ca) == 401,
        30,
        "the token Secret's token refused after leave",
    )


def test_three_clusters_then_a_fourth(
    mesh: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Three clusters join; then a fourth joins, and only what concerns it is written."""
    east, west = mesh["east"], mesh["west"]
    extra = {"north": _start(tmp_path_factory.mktemp("north"))}
    try:
        extra["south"] = _start(tmp_path_factory.mktemp("south"))
        for name, c in extra.items():
            install_member(c, "mesh1", name, mesh["root"])
        three = (east, west, extra["north"])
        run = kymamesh(east, *join_args(*three), "-o", "json", "--timeout", "180")
        assert run.code == 0, str(run)
        assert sorted(run.doc["data"]["verified"]["north"]["synced"]) == ["east", "west"]

        four = (*three, extra["south"])
        marks = [c.audit.mark() for c in four]
        run = kymamesh(east, *join_args(*four), "-o", "json", "--timeout", "180")
        assert run.code == 0, str(run)
        assert sorted(run.doc["data"]["verified"]["south"]["synced"]) == ["east", "north", "west"]
        for c, mark in zip(four, marks, strict=True):
            writes = c.audit.writes_since(mark, user_agent_prefix="kymamesh")
            # the lock's Lease aside
            events = [e for e in writes.events if e["objectRef"].get("resource") != "leases"]
            names = [e["objectRef"].get("name", "") for e in events]
            if c is extra["south"]:  # for each of its 3 peers: 4 objects and a token
                assert len(events) == 15, writes.describe()
            else:  # the account, binding, token Secret and token for south; south's secret
                assert len(events) == 5, writes.describe()
                assert all("south" in n for n in names), names
        for c, name in zip(four, ("east", "west", "north", "south"), strict=True):
            clusters = {e["id"]: e["syncStatus"] for e in istiod_debug(c, "/debug/clusterz")}
            assert clusters == dict.fromkeys(("east", "west", "north", "south"), "synced"), (
                name,
                clusters,
            )
    finally:
        # south, then north leave (east and west stay joined with each other only)
        for gone, rest in (("south", ("north",)), ("north", ())):
            members = [extra[gone], east, west, *(extra[n] for n in rest)]
            kymamesh(east, "mesh", "leave", *join_args(*members)[2:], "--timeout", "120")
        for c in extra.values():
            c.down(keep=True)


def _one_kubeconfig(path: Path, clusters: dict[str, TestCluster]) -> Path:
    """One kubeconfig holding each cluster as a context of its name (as a user's own
    kubeconfig holds several clusters), written to `path`; the first is current."""
    merged: dict[str, Any] = {"apiVersion": "v1", "kind": "Config", "clusters": [], "users": []}
    merged["contexts"] = []
    for name, c in clusters.items():
        own = yaml.safe_load(Path(c.kubeconfig).read_text())
        current = next(x for x in own["contexts"] if x["name"] == own["current-context"])
        cluster = next(x for x in own["clusters"] if x["name"] == current["context"]["cluster"])
        user = next(x for x in own["users"] if x["name"] == current["context"]["user"])
        merged["clusters"].append({"name": name, "cluster": cluster["cluster"]})
        merged["users"].append({"name": name, "user": user["user"]})
        merged["contexts"].append({"name": name, "context": {"cluster": name, "user": name}})
    merged["current-context"] = next(iter(clusters))
    path.write_text(yaml.safe_dump(merged))
    return path


def test_uninstall_leaves_the_mesh_first(mesh: dict[str, Any], tmp_path: Path) -> None:
    """`uninstall --leave-mesh` on a joined cluster: without its peers named, refused with
    nothing written; with them, it leaves the mesh (nothing of the join left on either side),
    then uninstalls. The join and the uninstall name the clusters as contexts of one
    kubeconfig (`--context`, `--peer-context`). (The module's last test: east is
    uninstalled.)"""
    east, west = mesh["east"], mesh["west"]
    both = str(_one_kubeconfig(tmp_path / "both.kubeconfig", {"east": east, "west": west}))
    run = kymamesh(
        east, "mesh", "join", "--kubeconfig", both, "--context", "east", "--context", "west",
        "-o", "json", "--timeout", "180",
    )  # fmt: skip
    assert run.code == 0, str(run)
    assert _join_objects(east) and _join_objects(west)

    marks = [east.audit.mark(), west.audit.mark()]
    refused = kymamesh(east, "uninstall", "-y", "--leave-mesh", "-o", "json")
    assert refused.code == 3, str(refused)
    error = refused.doc["errors"][0]
    assert "joined in a mesh with west" in error["message"], error
    assert "--peer-kubeconfig" in error["hint"] and west.server in error["hint"], error
    for c, mark in zip((east, west), marks, strict=True):
        assert c.audit.writes_since(mark).total == 0

    dry = kymamesh(
        east, "uninstall", "-y", "--leave-mesh", "--peer-kubeconfig", str(west.kubeconfig),
        "--dry-run", "-o", "json",
    )  # fmt: skip
    assert dry.code == 0, str(dry)
    assert _join_objects(east) and _join_objects(west)

    done = kymamesh(
        east, "uninstall", "-y", "--kubeconfig", both, "--context", "east", "--leave-mesh",
        "--peer-context", "west", "-o", "json", "--timeout", "180",
    )  # fmt: skip
    assert done.code == 0, str(done)
    assert done.doc["data"]["leftMesh"] == {"left": "east", "peers": ["west"]}
    assert _join_objects(east) == [] and _join_objects(west) == []
    assert [e["id"] for e in istiod_debug(west, "/debug/clusterz")] == ["west"]
    assert get(east, "deployment", "istiod", "-n", NS) is None  # uninstalled
    assert get(west, "deployment", "istiod", "-n", NS) is not None  # the peer keeps its mesh
