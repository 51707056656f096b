"""The test cluster is a real Kubernetes: these tests prove the parts the others rely on."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from conftest import TESTCLUSTER_PY, TestCluster, testcluster

from tests.support_lifecycle import install

pytestmark = pytest.mark.cluster


def apply(cluster: TestCluster, obj: dict | str, namespace: str | None = None) -> None:
    text = obj if isinstance(obj, str) else json.dumps(obj)
    cluster.kubectl("apply", *(["-n", namespace] if namespace else []), "-f", "-", input=text)


def deployment(name: str, replicas: int = 2) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
            },
        },
    }


def test_version_is_the_pinned_kubernetes(cluster: TestCluster) -> None:
    code, v = cluster.api().get("/version")
    assert code == 200
    assert v["gitVersion"] == "v1.36.3"
    assert (v["major"], v["minor"]) == ("1", "36")


def test_node_is_ready_and_on_loopback(cluster: TestCluster) -> None:
    node = json.loads(cluster.kubectl("get", "node", cluster.node, "-o", "json").stdout)
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True"
    assert {"type": "InternalIP", "address": "127.0.0.1"} in node["status"]["addresses"]


def test_deployment_becomes_available(cluster: TestCluster, namespace: str) -> None:
    apply(cluster, deployment("web", replicas=3), namespace)
    cluster.kubectl(
        "-n", namespace, "wait", "--for=condition=Available", "deployment/web", "--timeout=60s"
    )
    pods = json.loads(
        cluster.kubectl("-n", namespace, "get", "pods", "-l", "app=web", "-o", "json").stdout
    )
    assert len(pods["items"]) == 3
    for p in pods["items"]:
        assert p["status"]["phase"] == "Running"
        assert p["spec"]["nodeName"] == cluster.node


def test_namespace_deletion_completes(cluster: TestCluster) -> None:
    ns = cluster.create_namespace(f"t-ns-delete-{os.getpid()}")
    apply(cluster, deployment("web", replicas=2), ns)
    cluster.kubectl("-n", ns, "create", "configmap", "c", "--from-literal=a=b")
    cluster.kubectl(
        "-n", ns, "wait", "--for=condition=Available", "deployment/web", "--timeout=60s"
    )
    t0 = time.monotonic()
    cluster.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=90s")
    assert cluster.api().get(f"/api/v1/namespaces/{ns}")[0] == 404
    assert time.monotonic() - t0 < 90


def _tiny_chart(root: Path) -> Path:
    chart = root / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: tiny\nversion: 0.1.0\nappVersion: '1.0'\n"
    )
    (chart / "values.yaml").write_text("replicas: 2\nmessage: hello\n")
    (chart / "templates" / "all.yaml").write_text(
        textwrap.dedent("""\
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: {{ .Release.Name }}-config
        data:
          message: {{ .Values.message | quote }}
        ---
        apiVersion: v1
        kind: Service
        metadata:
          name: {{ .Release.Name }}
        spec:
          selector: {app: {{ .Release.Name }}}
          ports: [{port: 80, targetPort: 8080}]
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: {{ .Release.Name }}
        spec:
          replicas: {{ .Values.replicas }}
          selector:
            matchLabels: {app: {{ .Release.Name }}}
          template:
            metadata:
              labels: {app: {{ .Release.Name }}}
            spec:
              containers:
              - name: app
                image: registry.invalid/tiny:1
                ports: [{containerPort: 8080}]
        """)
    )
    return chart


@pytest.mark.parametrize("helm", [4, 3])
def test_helm_install_wait_and_uninstall(
    cluster: TestCluster, namespace: str, tmp_path: Path, helm: int
) -> None:
    chart = _tiny_chart(tmp_path)
    out = cluster.helm_run("version", "--short", version=helm).stdout
    assert out.startswith(f"v{helm}."), out
    cluster.helm_run(
        "install", "tiny", str(chart), "-n", namespace, "--wait", "--timeout", "90s", version=helm
    )
    releases = json.loads(
        cluster.helm_run("list", "-n", namespace, "-o", "json", version=helm).stdout
    )
    assert [(r["name"], r["status"]) for r in releases] == [("tiny", "deployed")]
    dep = json.loads(
        cluster.kubectl("-n", namespace, "get", "deployment", "tiny", "-o", "json").stdout
    )
    assert dep["status"].get("availableReplicas") == 2
    cm = json.loads(
        cluster.kubectl("-n", namespace, "get", "configmap", "tiny-config", "-o", "json").stdout
    )
    assert cm["data"] == {"message": "hello"}

    cluster.helm_run(
        "uninstall", "tiny", "-n", namespace, "--wait", "--timeout", "90s", version=helm
    )
    assert (
        json.loads(cluster.helm_run("list", "-n", namespace, "-o", "json", version=helm).stdout)
        == []
    )
    left = cluster.kubectl(
        "-n", namespace, "get", "deployment,service,configmap,secret", "-o", "name"
    ).stdout
    assert "tiny" not in left, left


def test_helm_in_env_path(cluster: TestCluster) -> None:
    for major, env in [(4, cluster.env_for(4)), (3, cluster.env_for(3))]:
        r = subprocess.run(
            ["helm", "version", "--short"], env=env, capture_output=True, text=True, check=True
        )
        assert r.stdout.startswith(f"v{major}."), r.stdout
    r = subprocess.run(
        ["kubectl", "get", "nodes", "-o", "name"],
        env=cluster.env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert r.stdout.strip() == f"node/{cluster.node}"


def test_write_counter_counts_exactly_the_writes_made(cluster: TestCluster, namespace: str) -> None:
    from kubernetes import client

    mark = cluster.audit.mark()
    api = client.CoreV1Api(cluster.client())
    api.api_client.user_agent = "counter-test/1.0"
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1"}, "data": {"a": "1"}}
    api.create_namespaced_config_map(namespace, cm)  # create
    api.patch_namespaced_config_map("c1", namespace, {"data": {"b": "2"}})  # patch
    cur = api.read_namespaced_config_map("c1", namespace)  # (read)
    cur.data["c"] = "3"
    api.replace_namespaced_config_map("c1", namespace, cur)  # update
    api.create_namespaced_config_map(
        namespace, {**cm, "metadata": {"name": "c2"}}, dry_run="All"
    )  # dry-run create
    api.list_namespaced_config_map(namespace)  # (read)
    api.delete_namespaced_config_map("c1", namespace)  # delete
    cluster.kubectl(
        "-n", namespace, "create", "secret", "generic", "s", "--from-literal=k=v"
    )  # create (kubectl)
    # A Deployment makes the controllers, scheduler and kwok write too (users system:*).
    apply(cluster, deployment("busy", replicas=1), namespace)  # create (kubectl apply)
    cluster.kubectl(
        "-n", namespace, "wait", "--for=condition=Available", "deployment/busy", "--timeout=60s"
    )

    w = cluster.audit.writes_since(mark)
    assert w.total == 7, w.describe()
    assert w.by_user_agent["counter-test/1.0"] == 5
    assert w.by_verb == {"create": 4, "patch": 1, "update": 1, "delete": 1}, w.describe()
    assert set(w.by_user) == {cluster.admin_user}
    kubectl_ua = [ua for ua in w.by_user_agent if ua.startswith("kubectl/")]
    assert len(kubectl_ua) == 1 and w.by_user_agent[kubectl_ua[0]] == 2

    assert cluster.audit.writes_since(mark, user_agent_prefix="counter-test/").total == 5
    assert (
        cluster.audit.writes_since(
            mark, user_agent_prefix="counter-test/", include_dry_run=False
        ).total
        == 4
    )
    assert cluster.audit.writes_since(mark, user_agent_prefix="kubectl/").total == 2
    with_system = cluster.audit.writes_since(mark, include_system=True)
    assert with_system.total > w.total  # ReplicaSet, Pod, binding, status updates...
    assert any(u.startswith("system:") for u in with_system.by_user)

    # Counting again from the same mark gives the same answer; a new write adds exactly one.
    assert cluster.audit.writes_since(mark).total == 7
    api.create_namespaced_config_map(namespace, {**cm, "metadata": {"name": "c3"}})
    assert cluster.audit.writes_since(mark).total == 8

    with cluster.audit.counting(user_agent_prefix="counter-test/") as counted:
        api.delete_namespaced_config_map("c3", namespace)
    assert counted.total == 1 and counted.by_verb == {"delete": 1}


def test_write_counter_right_after_the_write(cluster: TestCluster, namespace: str) -> None:
    """No sleeping: the count is exact immediately after the requests return."""
    for i in range(5):
        mark = cluster.audit.mark()
        cluster.kubectl("-n", namespace, "create", "configmap", f"quick-{i}")
        assert cluster.audit.writes_since(mark, user_agent_prefix="kubectl/").total == 1


def test_restricted_kubeconfig_is_forbidden_until_a_role_is_bound(
    cluster: TestCluster, namespace: str
) -> None:
    cluster.kubectl("-n", namespace, "create", "configmap", "visible")
    r = cluster.kubectl("-n", namespace, "get", "configmaps", check=False, restricted=True)
    assert r.returncode != 0 and "forbidden" in r.stderr.lower(), r.stderr
    code, _ = cluster.api(restricted=True).get(f"/api/v1/namespaces/{namespace}/configmaps")
    assert code == 403

    cluster.kubectl(
        "-n", namespace, "create", "role", "cm-reader", "--verb=get,list", "--resource=configmaps"
    )
    cluster.kubectl(
        "-n",
        namespace,
        "create",
        "rolebinding",
        "cm-reader",
        "--role=cm-reader",
        f"--user={cluster.restricted_user}",
    )
    cluster.wait_for(
        lambda: (
            cluster.kubectl(
                "-n", namespace, "get", "configmaps", check=False, restricted=True
            ).returncode
            == 0
        ),
        10,
        "the binding to apply",
    )
    out = cluster.kubectl(
        "-n", namespace, "get", "configmaps", "-o", "name", restricted=True
    ).stdout
    assert "configmap/visible" in out
    # Only what was granted: still no writes, nothing in other namespaces.
    r = cluster.kubectl(
        "-n", namespace, "create", "configmap", "nope", check=False, restricted=True
    )
    assert r.returncode != 0 and "forbidden" in r.stderr.lower()
    r = cluster.kubectl("-n", "default", "get", "configmaps", check=False, restricted=True)
    assert r.returncode != 0 and "forbidden" in r.stderr.lower()


def _vwc(name: str, namespace: str, client_config: dict, failure_policy: str) -> dict:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": f"{name}.kymamesh.test",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": failure_policy,
                "timeoutSeconds": 10,
                "clientConfig": client_config,
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["configmaps"],
                    }
                ],
            }
        ],
    }


def test_service_webhooks_without_a_ready_endpoint_fail_fast_and_say_why(
    cluster: TestCluster, namespace: str
) -> None:
    """Cluster egress goes to podrunner's proxy: a Service with no ready Pod behind it is
    refused at once, and the apiserver's error names the Service and port."""
    cluster.kubectl("-n", namespace, "create", "service", "clusterip", "hook", "--tcp=443:8443")
    ip = cluster.kubectl(
        "-n", namespace, "get", "service", "hook", "-o", "jsonpath={.spec.clusterIP}"
    ).stdout
    assert ip.startswith("10.96.")
    name = f"svc-hook-{namespace}"
    svc = {"service": {"name": "hook", "namespace": namespace, "port": 443, "path": "/validate"}}
    try:
        apply(cluster, _vwc(name, namespace, svc, "Ignore"))
        t0 = time.monotonic()
        cluster.kubectl("-n", namespace, "create", "configmap", "ignored")
        assert time.monotonic() - t0 < 3, "the webhook call was not refused at once"

        apply(cluster, _vwc(name, namespace, svc, "Fail"))
        t0 = time.monotonic()
        r = cluster.kubectl("-n", namespace, "create", "configmap", "refused", check=False)
        assert time.monotonic() - t0 < 3
        assert r.returncode != 0
        assert f"no ready endpoint for Service {namespace}/hook port 443" in r.stderr, r.stderr
    finally:
        cluster.kubectl("delete", "validatingwebhookconfiguration", name, "--ignore-not-found")


class _Deny(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        req = review["request"]
        allowed = not req["name"].startswith("deny-")
        resp = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {
                "uid": req["uid"],
                "allowed": allowed,
                **(
                    {}
                    if allowed
                    else {"status": {"code": 403, "message": "denied by loopback hook"}}
                ),
            },
        }
        data = json.dumps(resp).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def test_url_webhook_on_loopback_is_called(
    cluster: TestCluster, namespace: str, tmp_path: Path
) -> None:
    tls = testcluster.make_tls(tmp_path / "tls")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Deny)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(tls["cert"]), str(tls["key"]))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    import base64

    name = f"url-hook-{namespace}"
    cfg = {
        "url": f"https://127.0.0.1:{port}/validate",
        "caBundle": base64.b64encode(tls["ca"].read_bytes()).decode(),
    }
    try:
        apply(cluster, _vwc(name, namespace, cfg, "Fail"))
        cluster.kubectl("-n", namespace, "create", "configmap", "fine")
        r = cluster.kubectl("-n", namespace, "create", "configmap", "deny-me", check=False)
        assert r.returncode != 0 and "denied by loopback hook" in r.stderr, r.stderr
    finally:
        cluster.kubectl("delete", "validatingwebhookconfiguration", name, "--ignore-not-found")
        server.shutdown()


def _alive(pid: int) -> bool:
    return testcluster._pid_alive(pid)


def test_fresh_cluster_runs_beside_the_session_one_and_down_stops_it(
    cluster: TestCluster, fresh_cluster
) -> None:
    c = fresh_cluster()
    assert c.server != cluster.server
    assert c.healthy() and cluster.healthy()
    nodes = c.kubectl(
        "get", "nodes", "-o", "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}"
    )
    assert nodes.stdout == "True"
    processes = json.loads((c.dir / "cluster.json").read_text())["processes"]
    assert sorted(processes) == [
        "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "podrunner",
    ]  # fmt: skip
    pids = [p["pid"] for p in processes.values()]
    assert all(_alive(p) for p in pids)
    env_file = (c.dir / "env").read_text()
    assert f"KUBECONFIG={c.kubeconfig}" in env_file and str(c.bin_dir) in env_file
    c.down(keep=False)
    assert not any(_alive(p) for p in pids)
    assert not c.dir.exists()
    assert cluster.healthy()


def test_failed_up_leaves_nothing_running(tmp_path: Path, cluster: TestCluster) -> None:
    """An apiserver that dies at start: `up` fails, and the etcd it had started is stopped."""
    fake = tmp_path / "cache"
    (fake / "bin").mkdir(parents=True)
    for b in testcluster.BINARIES:
        (fake / "bin" / b).symlink_to(cluster.bin_dir / b)
    (fake / "bin" / "kube-apiserver").unlink()
    (fake / "bin" / "kube-apiserver").write_text("#!/bin/sh\necho broken on purpose; exit 3\n")
    (fake / "bin" / "kube-apiserver").chmod(0o755)
    shutil.copy(cluster.bin_dir.parent / "kwok-stages.yaml", fake / "kwok-stages.yaml")
    d = tmp_path / "c"
    r = subprocess.run(
        [sys.executable, str(TESTCLUSTER_PY), "up", "--dir", str(d), "--bin", str(fake / "bin")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert "kube-apiserver exited with 3" in r.stderr, r.stderr
    procs = json.loads((d / "cluster.json").read_text())["processes"]
    assert set(procs) == {"etcd", "kube-apiserver"}
    assert not any(_alive(p["pid"]) for p in procs.values())
    subprocess.run(
        [sys.executable, str(TESTCLUSTER_PY), "down", "--dir", str(d)], check=True, timeout=60
    )
    assert not d.exists()


def test_kubeconfig_is_yaml_with_embedded_credentials(cluster: TestCluster) -> None:
    for path, user in [
        (cluster.kubeconfig, cluster.admin_user),
        (cluster.restricted_kubeconfig, cluster.restricted_user),
    ]:
        cfg = yaml.safe_load(path.read_text())
        assert cfg["clusters"][0]["cluster"]["server"] == cluster.server
        assert cfg["users"][0]["name"] == user
        assert "client-certificate-data" in cfg["users"][0]["user"]
    me = json.loads(cluster.kubectl("auth", "whoami", "-o", "json").stdout)
    assert me["status"]["userInfo"]["username"] == cluster.admin_user
    assert "system:masters" in me["status"]["userInfo"]["groups"]


def _socket_inodes(pids: set[int]) -> set[str]:
    inodes: set[str] = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def _hex_addr(field: str) -> tuple[str, int]:
    host, port = field.split(":")
    if len(host) == 8:
        ip = socket.inet_ntop(socket.AF_INET, bytes.fromhex(host)[::-1])
    else:  # /proc/net/*6: four little-endian 32-bit words
        raw = b"".join(bytes.fromhex(host[i : i + 8])[::-1] for i in range(0, 32, 8))
        ip = socket.inet_ntop(socket.AF_INET6, raw)
    return ip, int(port, 16)


def test_every_socket_is_on_loopback(cluster: TestCluster) -> None:
    """Each TCP/UDP socket of the cluster's processes: listening on, or connected to, loopback."""
    procs = json.loads((cluster.dir / "cluster.json").read_text())["processes"].values()
    inodes = _socket_inodes({p["pid"] for p in procs})
    seen = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            if f[9] not in inodes:
                continue
            (lip, lport), (rip, rport) = _hex_addr(f[1]), _hex_addr(f[2])
            seen.append((table, lip, lport, rip, rport, f[3]))
    assert any(s[5] == "0A" for s in seen if s[0].startswith("tcp"))  # listeners were found
    loopback = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
    for table, lip, lport, rip, rport, state in seen:
        assert lip in loopback, f"{table} socket bound to {lip}:{lport}"
        assert rip in loopback | {"0.0.0.0", "::"}, f"{table} socket to {rip}:{rport}"
        if state == "0A":
            assert table == "tcp" and lip == "127.0.0.1"


# -- the kubelet server: kubectl port-forward and logs for istiod Pods ---------------------------


def _istiod_pod(cluster: TestCluster) -> str:
    """The name of a ready istiod Pod in istio-system (kymamesh installs the mesh first)."""
    install(cluster)
    doc = json.loads(
        cluster.kubectl(
            "-n", "istio-system", "get", "pods", "-l", "app=istiod", "-o", "json"
        ).stdout
    )
    for pod in doc["items"]:
        conds = (pod.get("status") or {}).get("conditions") or []
        if not pod["metadata"].get("deletionTimestamp") and any(
            c["type"] == "Ready" and c["status"] == "True" for c in conds
        ):
            return str(pod["metadata"]["name"])
    raise AssertionError(f"no ready istiod Pod: {doc['items']}")


@contextlib.contextmanager
def _port_forward(cluster: TestCluster, pod: str, port: int):
    """`kubectl port-forward pod/POD :PORT`: yields the local port it listens on."""
    proc = subprocess.Popen(
        [str(cluster.kubectl_bin), "-n", "istio-system", "port-forward", f"pod/{pod}", f":{port}"],
        env=cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # "Forwarding from 127.0.0.1:NNNNN -> 15014"
        assert "Forwarding from 127.0.0.1:" in line, (line, proc.stderr.read())
        yield int(line.split("127.0.0.1:")[1].split()[0])
    finally:
        proc.terminate()
        proc.wait(10)


def _http_get(port: int, path: str) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_kubectl_port_forward_reaches_istiods_debug_endpoints(cluster: TestCluster) -> None:
    """The apiserver dials the node's kubelet endpoint through the egress proxy, which leads
    to kwok's kubelet server; the PortForward podrunner wrote leads on to istiod's loopback
    port. istiod sees the request come from localhost, as in a real Pod, and answers."""
    pod = _istiod_pod(cluster)
    with _port_forward(cluster, pod, 15014) as local:
        code, body = _http_get(local, "/debug/mesh")
        assert code == 200, body
        mesh = json.loads(body)
        assert mesh["enableAutoMtls"] is True and mesh["rootNamespace"] == "istio-system"
        code, body = _http_get(local, "/metrics")  # the port's other handler
        assert code == 200 and b"pilot_" in body
    with _port_forward(cluster, pod, 8080) as local:  # another of istiod's ports
        assert _http_get(local, "/ready")[0] == 200


def test_kubectl_logs_shows_istiods_output(cluster: TestCluster) -> None:
    """`kubectl logs` of an istiod Pod: what istiod wrote (kwok's server reads the CRI-format
    copy podrunner keeps), the same lines as DIR/logs/pod-NS-NAME.log."""
    pod = _istiod_pod(cluster)
    out = cluster.kubectl("-n", "istio-system", "logs", pod, "-c", "discovery").stdout
    raw = (cluster.dir / "logs" / f"pod-istio-system-{pod}.log").read_text()
    lines = [x for x in out.splitlines() if x.strip()]
    assert len(lines) > 10 and any("info" in x for x in lines), out[:500]
    assert all(x in raw for x in lines[:20])
    tail = cluster.kubectl("-n", "istio-system", "logs", pod, "--tail=2").stdout
    assert len(tail.splitlines()) == 2


def test_the_service_proxy_to_istiods_debug_port_is_refused(cluster: TestCluster) -> None:
    """Through the apiserver's service proxy a request reaches istiod from the apiserver's
    address with the caller's credentials stripped: a real cluster's istiod answers 401. The
    test cluster cannot give that answer (every address here is loopback, and istiod lets
    loopback through), so it refuses the Pod address the proxy dials instead (503): on both,
    the service proxy does not return istiod's debug views, and port-forward does."""
    _istiod_pod(cluster)
    r = cluster.kubectl(
        "get", "--raw", "/api/v1/namespaces/istio-system/services/istiod:15014/proxy/debug/mesh",
        check=False,
    )  # fmt: skip
    assert r.returncode != 0, r.stdout[:300]
    assert "503" in r.stderr and "leads nowhere in the test cluster" in r.stderr, r.stderr
