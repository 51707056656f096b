"""With a real istiod: the Kyma patch as Pods see it, and istiod's webhooks failing closed.

The test cluster runs pilot-discovery for every istiod Pod (tests/cluster/podrunner.py), so
the injector and validator webhooks of the fixture charts are istiod's own, with
`failurePolicy: Fail` as in Istio's charts. These tests install the mesh once into a
cluster of their own and look at what istiod does with kymamesh's settings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TestCluster, _start
from tests.support_lifecycle import CHARTS, Run, get, kymamesh

pytestmark = pytest.mark.cluster

NS = "istio-system"
KYMA_PROXY = {
    "requests": {"cpu": "10m", "memory": "128Mi"},
    "limits": {"cpu": "1", "memory": "1Gi"},
}


def deployment(name: str, labels: dict[str, str] | None = None) -> str:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name, **(labels or {})}},
                    "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]},
                },
            },
        }
    )


def pods(cluster: TestCluster, namespace: str, app: str) -> list[dict[str, Any]]:
    doc = get(cluster, "pods", "-n", namespace, "-l", f"app={app}") or {"items": []}
    return [p for p in doc["items"] if not p["metadata"].get("deletionTimestamp")]


def proxy(pod: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in pod["spec"]["containers"] if c["name"] == "istio-proxy"), None)


def rolled_out(cluster: TestCluster, namespace: str, name: str) -> None:
    cluster.kubectl("rollout", "status", f"deployment/{name}", "-n", namespace, "--timeout=120s")


def ok(run: Run) -> Run:
    assert run.code == 0, str(run)
    return run


def status(cluster: TestCluster) -> dict[str, Any]:
    run = kymamesh(cluster, "status", "-o", "json")
    assert run.code in (0, 7), str(run)
    return run.doc


def namespace_row(doc: dict[str, Any], name: str) -> dict[str, Any]:
    data = doc.get("data", doc)
    return next(n for n in data["namespaces"] if n["name"] == name)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    """A cluster of this module's own with the mesh installed and istiod serving."""
    c = _start(tmp_path_factory.mktemp("istiod-cluster"))
    try:
        ok(kymamesh(c, "install", "--charts-dir", str(CHARTS), "-y", "--timeout", "180"))
        yield c
    finally:
        c.down(keep=True)


def test_istiod_runs_and_owns_its_webhooks(mesh: TestCluster) -> None:
    running = json.loads((mesh.dir / "pods.json").read_text())
    (istiod,) = [p for p in running.values() if p["namespace"] == NS]
    assert istiod["ready"] and istiod["pid"], istiod
    deploy = get(mesh, "deployment", "istiod", "-n", NS)
    assert deploy is not None and deploy["status"].get("availableReplicas") == 1

    injector = get(mesh, "mutatingwebhookconfiguration", "istio-sidecar-injector")
    assert injector is not None
    for hook in injector["webhooks"]:
        assert hook["failurePolicy"] == "Fail"
        assert hook["clientConfig"].get("caBundle"), f"istiod did not patch {hook['name']}"

    def validator_closed() -> bool:
        vwc = get(mesh, "validatingwebhookconfiguration", "istiod-default-validator") or {}
        return all(
            h["failurePolicy"] == "Fail" and h["clientConfig"].get("caBundle")
            for h in vwc.get("webhooks") or [{}]
        )

    mesh.wait_for(validator_closed, 60, "istiod to switch its validator to Fail")
    root = get(mesh, "configmap", "istio-ca-root-cert", "-n", "default")
    assert root is not None and "BEGIN CERTIFICATE" in root["data"]["root-cert.pem"]


def test_the_gateway_is_injected_with_istiods_gateway_template(mesh: TestCluster) -> None:
    (pod,) = pods(mesh, NS, "istio-ingressgateway")
    container = proxy(pod)
    assert container is not None
    assert container["image"] != "auto" and "proxyv2" in container["image"], container["image"]
    assert "router" in container["args"]
    assert "sidecar.istio.io/status" in pod["metadata"]["annotations"]


def test_injection_gives_pods_the_kyma_sidecar_and_status_counts_them(mesh: TestCluster) -> None:
    mesh.create_namespace("shop")
    mesh.create_namespace("plain")
    mesh.kubectl("apply", "-n", "shop", "-f", "-", input=deployment("cart"))
    mesh.kubectl("apply", "-n", "plain", "-f", "-", input=deployment("web"))
    rolled_out(mesh, "shop", "cart")
    assert proxy(pods(mesh, "shop", "cart")[0]) is None  # not in the mesh yet

    ok(kymamesh(mesh, "inject-namespace", "shop", "--all", "--wait", "-y"))
    (pod,) = pods(mesh, "shop", "cart")
    container = proxy(pod)
    assert container is not None, "istiod did not inject the labelled Pod"
    assert container["resources"] == KYMA_PROXY
    init = next(c for c in pod["spec"]["initContainers"] if c["name"] == "istio-init")
    assert init["resources"]["limits"] == {"cpu": "100m", "memory": "50Mi"}
    status_annotation = json.loads(pod["metadata"]["annotations"]["sidecar.istio.io/status"])
    assert "istio-proxy" in status_annotation["containers"]
    assert pod["metadata"]["labels"]["security.istio.io/tlsMode"] == "istio"

    # Opt-in (policy disabled): a Deployment added later without the Pod label gets none.
    mesh.kubectl("apply", "-n", "shop", "-f", "-", input=deployment("legacy"))
    rolled_out(mesh, "shop", "legacy")
    assert proxy(pods(mesh, "shop", "legacy")[0]) is None
    assert proxy(pods(mesh, "plain", "web")[0]) is None

    doc = status(mesh)
    assert namespace_row(doc, "shop") | {"name": "shop"} == {
        "name": "shop",
        "injectionEnabled": True,
        "revision": "default",
        "podsWithSidecar": 1,
        "podsWithoutSidecar": 1,
        "outdatedSidecars": 0,
    }
    names = [n["name"] for n in doc.get("data", doc)["namespaces"]]
    assert "plain" not in names


def test_istiod_rejects_an_invalid_istio_object(mesh: TestCluster) -> None:
    bad = {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "ports-without-selector", "namespace": "default"},
        "spec": {"mtls": {"mode": "STRICT"}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}},
    }
    run = mesh.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert run.returncode != 0
    assert "validation.istio.io" in run.stderr and "denied the request" in run.stderr, run.stderr
    assert get(mesh, "peerauthentication", "ports-without-selector", "-n", "default") is None


def test_a_rerun_writes_nothing_while_istiod_keeps_working(mesh: TestCluster) -> None:
    mark = mesh.audit.mark()
    ok(kymamesh(mesh, "install", "--charts-dir", str(CHARTS), "-y"))
    ours = mesh.audit.writes_since(mark)
    assert ours.total == 0, ours.describe()

    def istiod_writes() -> int:
        return mesh.audit.writes_since(
            mark, include_system=True, username=f"system:serviceaccount:{NS}:istiod"
        ).total

    # its leader-election leases renew every few seconds: looked for until one shows
    mesh.wait_for(istiod_writes, 15, "istiod to write (is it running?)", interval=0.5)


def test_an_upgrade_leaves_istiods_ca_bundle_and_injection_working(mesh: TestCluster) -> None:
    """Helm upgrades the istiod release (a changed value); the caBundle istiod patched into
    its webhooks is not taken back, so injection keeps working."""
    ok(
        kymamesh(
            mesh, "install", "--charts-dir", str(CHARTS), "-y", "--set", "istiod.traceSampling=2"
        )
    )
    injector = get(mesh, "mutatingwebhookconfiguration", "istio-sidecar-injector")
    assert injector is not None
    assert all(h["clientConfig"].get("caBundle") for h in injector["webhooks"])
    mesh.create_namespace("after-upgrade", labels={"istio-injection": "enabled"})
    mesh.kubectl(
        "apply", "-n", "after-upgrade", "-f", "-",
        input=deployment("svc", {"sidecar.istio.io/inject": "true"}),
    )  # fmt: skip
    rolled_out(mesh, "after-upgrade", "svc")
    assert proxy(pods(mesh, "after-upgrade", "svc")[0]) is not None


def test_new_sidecar_settings_reach_new_pods_and_restart_proxies_rolls_the_old(
    mesh: TestCluster, tmp_path: Path
) -> None:
    mesh.create_namespace("orders")
    mesh.kubectl("apply", "-n", "orders", "-f", "-", input=deployment("api"))
    ok(kymamesh(mesh, "inject-namespace", "orders", "--all", "--wait", "-y"))
    (before,) = pods(mesh, "orders", "api")
    assert (proxy(before) or {}).get("resources") == KYMA_PROXY

    smaller = {
        "requests": {"cpu": "10m", "memory": "64Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    }
    config = tmp_path / "smaller.yaml"
    config.write_text(json.dumps({"steps": {"sidecar-resources": {"proxy": smaller}}}))
    ok(kymamesh(mesh, "patch", "--config", str(config), "-y"))

    # istiod reads the injector's ConfigMap from its volume: a new Pod gets the new
    # resources once the volume has been updated and istiod has reloaded it.
    probe = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "labels": {"sidecar.istio.io/inject": "true"}},
        "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]},
    }

    def injected_resources() -> bool:
        run = mesh.kubectl(
            "create", "-n", "orders", "--dry-run=server", "-o", "json", "-f", "-",
            input=json.dumps(probe),
        )  # fmt: skip
        return (proxy(json.loads(run.stdout)) or {}).get("resources") == smaller

    mesh.wait_for(injected_resources, 90, "istiod to inject the new sidecar resources")
    row = namespace_row(status(mesh), "orders")
    assert (row["podsWithSidecar"], row["outdatedSidecars"]) == (1, 1), row

    ok(kymamesh(mesh, "patch", "--restart-proxies", "-y"))
    rolled_out(mesh, "orders", "api")
    mesh.wait_for(lambda: len(pods(mesh, "orders", "api")) == 1, 60, "the old Pod to go")
    (after,) = pods(mesh, "orders", "api")
    assert after["metadata"]["uid"] != before["metadata"]["uid"]
    assert (proxy(after) or {}).get("resources") == smaller
    row = namespace_row(status(mesh), "orders")
    assert row["outdatedSidecars"] == 0, row


def test_uninstall_stops_istiod(mesh: TestCluster) -> None:
    before = json.loads((mesh.dir / "pods.json").read_text())
    pids = [p["pid"] for p in before.values() if p["namespace"] == NS]
    assert pids
    ok(kymamesh(mesh, "uninstall", "-y", "--force"))

    def stopped() -> bool:
        return json.loads((mesh.dir / "pods.json").read_text()) == {}

    mesh.wait_for(stopped, 60, "podrunner to stop istiod")
    for pid in pids:  # gone (podrunner waits for its children)
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(") ", 1)[1][0] == "Z", pid


def test_without_a_serving_istiod_install_stops_and_says_why(
    fresh_cluster: Callable[[], TestCluster],
) -> None:
    """Istio's injector fails closed. With istiod scaled to zero, install stops before the
    gateway and names the webhook that does not answer; with istiod stopped after install, a
    gateway rollout's Pods are refused and the timeout names the refusal, not just a count."""
    c = fresh_cluster()
    no_istiod = ["--set", "istiod.autoscaleEnabled=false", "--set", "istiod.replicaCount=0"]
    run = kymamesh(c, "install", "--charts-dir", str(CHARTS), "-y", *no_istiod, "--timeout", "15")
    assert run.code == 4, str(run)  # TIMEOUT
    assert "istiod's injection webhook (revision default) does not answer" in run.stderr, str(run)
    assert "no ready endpoint for Service istio-system/istiod port 443" in run.stderr, str(run)
    assert get(c, "deployment", "istio-ingressgateway", "-n", NS) is None  # not started

    ok(kymamesh(c, "install", "--charts-dir", str(CHARTS), "-y", "--timeout", "120"))
    c.kubectl("scale", "deployment/istiod", "-n", NS, "--replicas=0")
    c.kubectl("delete", "hpa", "istiod", "-n", NS, "--ignore-not-found")
    c.wait_for(lambda: json.loads((c.dir / "pods.json").read_text()) == {}, 60, "istiod to stop")
    run = kymamesh(
        c, "install", "--charts-dir", str(CHARTS), "-y", "--timeout", "15",
        "--set", "gateway.podAnnotations.rolled=yes",
    )  # fmt: skip
    assert run.code == 4, str(run)
    assert "Deployment/istio-system/istio-ingressgateway" in run.stderr, str(run)
    assert "FailedCreate" in run.stderr, str(run)
    assert "no ready endpoint for Service istio-system/istiod port 443" in run.stderr, str(run)


BAD_TEMPLATE = """\
istiod:
  sidecarInjectorWebhook:
    templates:
      sidecar: |
        spec:
          containers:
          - name: {{ .NoSuchField.Anything }}
"""


def test_an_injector_that_refuses_pods_fails_at_once_with_its_message(
    fresh_cluster: Callable[[], TestCluster], tmp_path: Path
) -> None:
    """A sidecar template istiod cannot render: its webhook answers every Pod with a 400
    denial. That is an answer, not "not ready yet": install stops within seconds with the
    webhook's message (exit 5: istiod was written), not after --timeout (a long one here,
    so that waiting it out could not pass for a slow machine)."""
    c = fresh_cluster()
    values = tmp_path / "bad-template.yaml"
    values.write_text(BAD_TEMPLATE)
    started = time.monotonic()
    run = kymamesh(
        c, "install", "--charts-dir", str(CHARTS), "-f", str(values), "-y", "--timeout", "900"
    )
    took = time.monotonic() - started
    assert run.code == 5, str(run)
    assert "answers, and refuses Pods" in run.stderr, str(run)
    assert "denied the request" in run.stderr and "NoSuchField" in run.stderr, str(run)
    assert "timed out" not in run.stderr, str(run)
    assert took < 450, took  # istiod's start and the release, not the 900 s timeout
    assert get(c, "deployment", "istio-ingressgateway", "-n", NS) is None  # not started


def test_a_rerun_after_an_injector_that_refused_checks_it_again(
    fresh_cluster: Callable[[], TestCluster], tmp_path: Path
) -> None:
    """An upgrade whose injector then refuses every Pod fails (exit 5). A re-run with the
    same values finds the istiod release as it wants it, but the injector was never seen
    to answer since that change: it asks again and is refused the same way (exit 3: it
    wrote nothing), instead of reporting the mesh in place. `status` says so. A good
    install then clears the mark, and the run after that writes nothing."""
    c = fresh_cluster()
    run = kymamesh(c, "install", "--charts-dir", str(CHARTS), "-y", "--timeout", "300")
    assert run.code == 0, str(run)
    values = tmp_path / "bad-template.yaml"
    values.write_text(BAD_TEMPLATE)
    bad = ("install", "--charts-dir", str(CHARTS), "-f", str(values), "-y", "--timeout", "300")
    run = kymamesh(c, *bad)
    assert run.code == 5 and "answers, and refuses Pods" in run.stderr, str(run)
    mark = get(c, "configmap", "kymamesh-unverified", "-n", NS)
    assert mark is not None and "istiod" in mark["data"], mark

    run = kymamesh(c, *bad)  # istiod's release is already what these values make
    assert run.code == 3, str(run)  # refused again; this run wrote nothing but the lock
    assert "answers, and refuses Pods" in run.stderr and "NoSuchField" in run.stderr, str(run)

    status = kymamesh(c, "status", "-o", "json")
    assert status.code != 0, str(status)
    assert "kymamesh-unverified" in status.stdout and "istiod" in status.stdout, str(status)

    run = kymamesh(c, "install", "--charts-dir", str(CHARTS), "-y", "--timeout", "300")
    assert run.code == 0, str(run)
    assert get(c, "configmap", "kymamesh-unverified", "-n", NS) is None
    assert kymamesh(c, "status").code == 0
    mark_at = c.audit.mark()
    run = kymamesh(c, "install", "--charts-dir", str(CHARTS), "-y", "--timeout", "300")
    assert run.code == 0, str(run)
    writes = c.audit.writes_since(mark_at)
    assert writes.total == 0, writes.describe()
