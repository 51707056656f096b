"""The in-place upgrade 1.29 -> 1.30 with the real istiod: outdated sidecars restarted safely.

One cluster of the module's own: the 1.29 stand-in charts installed, then workloads of each
kind injected by istiod with the 1.29 sidecar (Deployment, StatefulSet, DaemonSet, a
ReplicaSet of its own, a Job, a bare Pod, a Deployment and a namespace opted out, a Pod that
names its own proxy image). Then `install --restart-proxies --restart-batch 2` with the 1.30
charts: which workloads restart, in which order (system namespaces first), in which batches
(each batch's rollouts finished before the next: the audit log's order of writes), that each
restarted Pod comes back with the 1.30 sidecar, what `status` lists, and that a re-run writes
nothing. The controllers are kube-controller-manager's; kwok makes the Pods run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import TestCluster, _start
from tests.support_lifecycle import CHARTS, ROOT, Run, get, install_as_an_earlier_kymamesh, kymamesh

pytestmark = pytest.mark.cluster

CHARTS_129 = ROOT / "tests" / "fixtures" / "charts-1.29"
OLD, NEW = ":1.29.4", ":1.30.3"
INJECT = {"sidecar.istio.io/inject": "true"}
OPT_OUT = {"kymamesh.io/restart": "false"}


def ok(run: Run) -> Run:
    assert run.code == 0, str(run)
    return run


def template(app: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": app, **INJECT}, "annotations": annotations or {}},
        "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]},
    }


def workload(
    kind: str,
    name: str,
    replicas: int | None = 1,
    annotations: dict[str, str] | None = None,
    pod_annotations: dict[str, str] | None = None,
    strategy: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app": name}},
        "template": template(name, pod_annotations),
    }
    if replicas is not None:
        spec["replicas"] = replicas
    if kind == "StatefulSet":
        spec["serviceName"] = name
    if strategy:
        spec["updateStrategy"] = {"type": strategy}
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": spec,
    }


def job(name: str) -> dict[str, Any]:
    pod = template(name)
    pod["spec"]["restartPolicy"] = "Never"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": pod},
    }


def bare_pod(name: str) -> dict[str, Any]:
    pod = template(name)
    pod["metadata"]["name"] = name
    return {"apiVersion": "v1", "kind": "Pod", **pod}


def apply(cluster: TestCluster, namespace: str, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))


def pods(cluster: TestCluster, namespace: str, app: str) -> list[dict[str, Any]]:
    doc = get(cluster, "pods", "-n", namespace, "-l", f"app={app}") or {"items": []}
    return [p for p in doc["items"] if not p["metadata"].get("deletionTimestamp")]


def proxy_image(pod: dict[str, Any]) -> str:
    spec = pod["spec"]
    for container in (spec.get("initContainers") or []) + spec["containers"]:
        if container["name"] == "istio-proxy":
            return str(container["image"])
    return ""


def running_images(cluster: TestCluster, namespace: str, app: str) -> list[str]:
    return [
        proxy_image(p)
        for p in pods(cluster, namespace, app)
        if p.get("status", {}).get("phase") == "Running"
    ]


# (namespace, app, kind of what owns its Pods, replicas)
RESTARTED = [
    ("kyma-system", "kyma-app", "Deployment", 1),
    ("orders", "api", "Deployment", 1),
    ("shop", "agent", "DaemonSet", 1),
    ("shop", "web", "Deployment", 2),
    ("shop", "rs-only", "ReplicaSet", 2),
    ("shop", "db", "StatefulSet", 2),
    ("shop", "ondelete", "StatefulSet", 1),  # updateStrategy OnDelete: its Pods are deleted
]
LEFT_ALONE = [  # (namespace, app): opted out, own proxy image, bare Pod
    ("shop", "frozen"),
    ("legacy", "old"),
    ("shop", "own-image"),
    ("shop", "bare"),
]


@pytest.fixture(scope="module")
def old_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    """Istio 1.29 (the stand-ins) and injected workloads of every kind, all on 1.29."""
    c = _start(tmp_path_factory.mktemp("upgrade-cluster"))
    try:
        install_as_an_earlier_kymamesh(c, CHARTS_129)
        for ns in ("shop", "orders"):
            c.create_namespace(ns, labels={"istio-injection": "enabled"})
        c.create_namespace("legacy", labels={"istio-injection": "enabled"})
        c.kubectl("annotate", "namespace", "legacy", "kymamesh.io/restart=false")
        c.kubectl("label", "namespace", "kyma-system", "istio-injection=enabled")
        apply(c, "kyma-system", workload("Deployment", "kyma-app"))
        apply(c, "orders", workload("Deployment", "api"))
        apply(c, "legacy", workload("Deployment", "old"))
        for obj in (
            workload("Deployment", "web", replicas=2),
            workload("StatefulSet", "db", replicas=2),
            workload("StatefulSet", "ondelete", strategy="OnDelete"),
            workload("DaemonSet", "agent", replicas=None),
            workload("ReplicaSet", "rs-only", replicas=2),
            workload("Deployment", "frozen", annotations=OPT_OUT),
            workload(
                "Deployment",
                "own-image",
                pod_annotations={"sidecar.istio.io/proxyImage": "docker.io/istio/proxyv2:1.29.4"},
            ),
            job("once"),
            bare_pod("bare"),
        ):
            apply(c, "shop", obj)
        everything = RESTARTED + [(ns, app, "", 1) for ns, app in LEFT_ALONE]
        for ns, app, _, replicas in everything:
            want = 1 if app == "agent" else replicas  # one node: one DaemonSet Pod
            c.wait_for(
                lambda ns=ns, app=app, want=want: (
                    running_images(c, ns, app) == [f"docker.io/istio/proxyv2{OLD}"] * want
                ),
                120,
                f"{ns}/{app} to run {want} Pod(s) with the 1.29 sidecar",
            )
        yield c
    finally:
        c.down(keep=True)


def test_restart_batch_must_be_at_least_one_and_needs_restart_proxies(
    old_mesh: TestCluster,
) -> None:
    with old_mesh.audit.counting() as writes:
        zero = kymamesh(
            old_mesh, "install", "--charts-dir", str(CHARTS), "-y",
            "--restart-proxies", "--restart-batch", "0", "-o", "json",
        )  # fmt: skip
        alone = kymamesh(old_mesh, "patch", "-y", "--restart-batch", "2", "-o", "json")
    assert zero.code == 2, str(zero)
    assert zero.doc["errors"][0]["message"] == "--restart-batch must be at least 1, not 0"
    assert alone.code == 2, str(alone)
    assert "--restart-batch goes with --restart-proxies" in alone.doc["errors"][0]["message"]
    assert writes.total == 0, writes.describe()


def test_status_lists_no_outdated_sidecar_before_the_upgrade(old_mesh: TestCluster) -> None:
    run = kymamesh(old_mesh, "status", "-o", "json")
    assert run.code in (0, 7), str(run)
    assert run.doc["data"]["outdatedSidecars"] == []


def test_upgrade_restarts_system_first_then_in_batches(old_mesh: TestCluster) -> None:
    c = old_mesh
    before = {
        (ns, app): {p["metadata"]["name"] for p in pods(c, ns, app)} for ns, app, *_ in RESTARTED
    }
    old_uids = {
        (ns, app): {p["metadata"]["uid"] for p in pods(c, ns, app)} for ns, app, *_ in RESTARTED
    }
    uids = {(ns, app): {p["metadata"]["uid"] for p in pods(c, ns, app)} for ns, app in LEFT_ALONE}
    assert get(c, "job", "once", "-n", "shop") is not None

    mark = c.audit.mark()
    run = ok(
        kymamesh(
            c, "install", "--charts-dir", str(CHARTS), "-y", "--restart-proxies",
            "--restart-batch", "2", "--timeout", "180", "-o", "json",
        )
    )  # fmt: skip
    events = c.audit.writes_since(mark, include_system=True).events

    # What restarted, in which order and batches (the result), each workload once.
    phase2 = next(p for p in run.doc["phases"] if p["name"].startswith("phase 2"))
    item = next(i for i in phase2["items"] if i["name"] == "restart-proxies")
    assert item["outcome"] == "changed", item
    order = [change.split(": ", 1)[0] for change in item["changes"]]
    gateway = [w for w in order if w.startswith("Deployment/istio-system/")]
    expected_rest = [f"{kind}/{ns}/{app}" for ns, app, kind, _ in RESTARTED[1:]]
    system = [*gateway, "Deployment/kyma-system/kyma-app"]
    assert order == system + expected_rest, order
    batches = [system[i : i + 2] for i in range(0, len(system), 2)]
    batches += [expected_rest[i : i + 2] for i in range(0, len(expected_rest), 2)]
    total = len(batches)
    for number, batch in enumerate(batches, start=1):
        for workload_name in batch:
            change = item["changes"][order.index(workload_name)]
            assert f"batch {number}/{total} " in change, change
    for deleted in ("ReplicaSet/shop/rs-only", "StatefulSet/shop/ondelete"):
        assert "Pods " in item["changes"][order.index(deleted)], item["changes"]
        assert " deleted, batch " in item["changes"][order.index(deleted)], item["changes"]
    assert " restarted, batch " in item["changes"][order.index("StatefulSet/shop/db")]

    # The writes, as the API server saw them: kymamesh restarts a batch only after every
    # old Pod of the batch before it is gone (deleted by its controller, or by kymamesh).
    def restart_write(kind: str, ns: str, app: str) -> int:
        for i, ev in enumerate(events):
            ref = ev.get("objectRef", {})
            if not ev.get("userAgent", "").startswith("kymamesh"):
                continue
            mine = ref.get("namespace") == ns
            if ev["verb"] == "patch" and ref.get("resource") == f"{kind.lower()}s":
                mine = mine and ref.get("name") == app
            elif ev["verb"] == "delete" and ref.get("resource") == "pods":  # delete-pods mode
                mine = mine and ref.get("name") in before[(ns, app)]
            else:
                mine = False
            if mine:
                return i
        raise AssertionError(f"no restart of {kind}/{ns}/{app} in the audit log")

    def old_pods_gone(ns: str, app: str) -> int:
        last = -1
        for name in before[(ns, app)]:
            deletes = [
                i
                for i, ev in enumerate(events)
                if ev["verb"] == "delete"
                and ev.get("objectRef", {}).get("resource") == "pods"
                and ev["objectRef"].get("namespace") == ns
                and ev["objectRef"].get("name") == name
                and ev.get("responseStatus", {}).get("code", 200) < 300
            ]
            assert deletes, f"old Pod {ns}/{name} was never deleted"
            last = max(last, deletes[0])
        return last

    where = {f"{kind}/{ns}/{app}": (kind, ns, app) for ns, app, kind, _ in RESTARTED}
    user_batches = [b for b in batches if not any(w in system for w in b)]
    previous: list[str] = ["Deployment/kyma-system/kyma-app"]
    for batch in user_batches:
        first_write = min(restart_write(*where[w]) for w in batch)
        for done in previous:
            _, ns, app = where[done]
            assert old_pods_gone(ns, app) < first_write, (done, batch)
        previous = batch

    # Every restarted Pod came back with the 1.30 sidecar; the others kept theirs.
    for ns, app, _, replicas in RESTARTED:
        want = 1 if app == "agent" else replicas
        c.wait_for(
            lambda ns=ns, app=app, want=want: (
                running_images(c, ns, app) == [f"docker.io/istio/proxyv2{NEW}"] * want
            ),
            60,
            f"{ns}/{app}: {want} Pod(s) with the 1.30 sidecar",
        )
        assert not {p["metadata"]["uid"] for p in pods(c, ns, app)} & old_uids[(ns, app)]
    for ns, app in LEFT_ALONE:
        assert {p["metadata"]["uid"] for p in pods(c, ns, app)} == uids[(ns, app)], (ns, app)
        assert running_images(c, ns, app) == [f"docker.io/istio/proxyv2{OLD}"], (ns, app)
    touched = [
        ev
        for ev in events
        if ev.get("userAgent", "").startswith("kymamesh")
        and ev.get("objectRef", {}).get("namespace") in ("shop", "legacy", "orders")
        and ev["objectRef"].get("name", "").split("-")[0]
        in ("frozen", "old", "own", "bare", "once")
        and "dryRun=" not in ev.get("requestURI", "")
    ]
    assert touched == [], touched  # nor the Job (`once`) or its Pod

    notes = " ".join(run.doc["notes"])
    assert "opted out, not restarted (its workload is annotated kymamesh.io/restart=false)" in notes
    assert "Deployment/shop/frozen" in notes and "Deployment/legacy/old" in notes
    assert "its namespace is annotated kymamesh.io/restart=false" in notes
    assert "Pod/shop/bare" in notes and "re-create it yourself" in notes
    assert "own-image" not in notes  # it names its own proxy image: not outdated at all


def test_status_lists_what_remains_outdated_by_namespace(old_mesh: TestCluster) -> None:
    run = kymamesh(old_mesh, "status", "-o", "json")
    assert run.code in (0, 7), str(run)
    rows = {(o["namespace"], o["kind"], o["name"]): o for o in run.doc["data"]["outdatedSidecars"]}
    assert set(rows) == {
        ("legacy", "Deployment", "old"),
        ("shop", "Deployment", "frozen"),
        ("shop", "Pod", "bare"),
    }, rows
    assert rows[("shop", "Pod", "bare")]["action"] == "manual"
    assert rows[("shop", "Pod", "bare")]["pods"] == ["bare"]
    assert rows[("legacy", "Deployment", "old")]["action"] == "opted-out"
    assert rows[("shop", "Deployment", "frozen")]["reasons"][0].startswith("istio-proxy 1.29.4")
    counts = {n["name"]: n["outdatedSidecars"] for n in run.doc["data"]["namespaces"]}
    assert (counts["shop"], counts["legacy"], counts["orders"], counts["kyma-system"]) == (
        2,
        1,
        0,
        0,
    )
    text = kymamesh(old_mesh, "status")
    assert "outdated sidecars (kymamesh patch --restart-proxies):\n  legacy:\n" in text.stdout
    assert "    Pod/bare (1 Pod(s); istio-proxy 1.29.4, istiod 1.30.3): manual" in text.stdout


def test_a_rerun_restarts_nothing_and_writes_nothing(old_mesh: TestCluster) -> None:
    args = (
        "install",
        "--charts-dir",
        str(CHARTS),
        "-y",
        "--restart-proxies",
        "--restart-batch",
        "1",
    )
    with old_mesh.audit.counting() as writes:
        run = ok(kymamesh(old_mesh, *args, "-o", "json"))
    assert writes.total == 0, writes.describe()
    assert run.doc["changed"] is False


def test_a_batch_that_does_not_finish_stops_the_restarts_and_a_rerun_goes_on(
    old_mesh: TestCluster, tmp_path: Any
) -> None:
    """New sidecar resources make every injected sidecar outdated again. A Deployment whose
    new Pod cannot be scheduled (its node lost the label it selects) cannot finish its
    rollout: its batch runs out of --timeout, the run names it and the workloads not
    restarted yet, and restarts nothing after it. Once it can, a re-run waits for that
    rollout and goes on; then a re-run writes nothing."""
    c = old_mesh
    c.kubectl("label", "node", c.node, "kymamesh-test/pool=stuck")
    c.create_namespace("nodes", labels={"istio-injection": "enabled"})
    stuck = workload("Deployment", "stuck")
    stuck["spec"]["template"]["spec"]["nodeSelector"] = {"kymamesh-test/pool": "stuck"}
    apply(c, "nodes", stuck)
    c.wait_for(lambda: len(running_images(c, "nodes", "stuck")) == 1, 60, "nodes/stuck to run")
    c.kubectl("label", "node", c.node, "kymamesh-test/pool-")
    config = tmp_path / "smaller.yaml"
    config.write_text(
        json.dumps({"steps": {"sidecar-resources": {"proxy": {"limits": {"memory": "768Mi"}}}}})
    )
    ok(kymamesh(c, "patch", "--config", str(config), "-y"))
    shop_web = get(c, "deployment", "web", "-n", "shop")
    assert shop_web is not None

    mark = c.audit.mark()
    stopped = kymamesh(
        c, "patch", "-y", "--restart-proxies", "--restart-batch", "1", "--timeout", "20",
        "-o", "json",
    )  # fmt: skip
    assert stopped.code == 5, str(stopped)
    phase = stopped.doc["phases"][0]
    item = next(i for i in phase["items"] if i["name"] == "restart-proxies")
    assert item["outcome"] == "failed", item
    assert item["error"].startswith("batch 2/"), item["error"]
    assert "rollouts not finished after 20s: Deployment/nodes/stuck (" in item["error"]
    assert "not restarted yet: Deployment/orders/api, " in item["error"]
    assert "Deployment/shop/web" in item["error"]
    written = {
        (ev["objectRef"].get("namespace"), ev["objectRef"].get("name"))
        for ev in c.audit.writes_since(mark, user_agent_prefix="kymamesh").events
        if ev["verb"] in ("patch", "delete") and "dryRun=" not in ev.get("requestURI", "")
        and ev["objectRef"].get("resource") in ("deployments", "statefulsets", "daemonsets", "pods")
    }  # fmt: skip
    assert written == {("kyma-system", "kyma-app"), ("nodes", "stuck")}
    assert get(c, "deployment", "web", "-n", "shop") == shop_web  # not restarted

    c.kubectl("label", "node", c.node, "kymamesh-test/pool=stuck")
    ok(kymamesh(c, "patch", "-y", "--restart-proxies", "--restart-batch", "3", "--timeout", "120"))
    for ns, app, _, replicas in [*RESTARTED, ("nodes", "stuck", "Deployment", 1)]:
        want = 1 if app == "agent" else replicas
        c.wait_for(
            lambda ns=ns, app=app, want=want: (
                [
                    p["spec"]["containers"][-1]["resources"]["limits"]["memory"]
                    for p in pods(c, ns, app)
                    if p.get("status", {}).get("phase") == "Running"
                ]
                == ["768Mi"] * want
            ),
            60,
            f"{ns}/{app}: {want} Pod(s) with the new sidecar resources",
        )
    with c.audit.counting() as writes:
        again = ok(kymamesh(c, "patch", "-y", "--restart-proxies", "-o", "json"))
    assert writes.total == 0, writes.describe()
    assert again.doc["changed"] is False
