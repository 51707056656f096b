"""Control plane revisions and the mesh root namespace, on test clusters of their own.

Istio names a revisioned control plane's objects with a `-REV` suffix (Deployment
`istiod-canary`, ConfigMaps `istio-canary` and `istio-sidecar-injector-canary`). kymamesh
must patch every revision it finds, report each in `status`, and converge on a re-run
with zero writes. The mesh-wide PeerAuthentication belongs in `meshConfig.rootNamespace`,
and `status` must judge it there.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from tests.support_lifecycle import CHARTS, NAMESPACE, get, kymamesh, writes_during

MEMORY_LIMIT = "1024Mi"  # patches/kyma.yaml: sidecar-resources proxy.limits.memory


def _install(c: Any, *args: str) -> Any:
    return kymamesh(c, "install", "--charts-dir", str(CHARTS), "-y", "-o", "json", *args)


def _patched(c: Any, suffix: str) -> None:
    """The Kyma patch is in the ConfigMaps of the revision with this name suffix."""
    injector = get(c, "configmap", f"istio-sidecar-injector{suffix}", "-n", NAMESPACE)
    assert injector is not None, f"no injector ConfigMap for suffix {suffix!r}"
    config = yaml.safe_load(injector["data"]["config"])
    assert config["policy"] == "disabled"
    values = json.loads(injector["data"]["values"])
    assert values["global"]["proxy"]["resources"]["limits"]["memory"] == MEMORY_LIMIT
    mesh_cm = get(c, "configmap", f"istio{suffix}", "-n", NAMESPACE)
    assert mesh_cm is not None
    mesh = yaml.safe_load(mesh_cm["data"]["mesh"])
    assert "kyma-zipkin" in {p["name"] for p in mesh.get("extensionProviders") or []}


def _unpatched(c: Any, suffix: str) -> None:
    injector = get(c, "configmap", f"istio-sidecar-injector{suffix}", "-n", NAMESPACE)
    assert injector is not None
    assert yaml.safe_load(injector["data"]["config"])["policy"] == "enabled"


def _status(c: Any) -> Any:
    run, writes = writes_during(c, lambda: kymamesh(c, "status", "-o", "json"))
    assert writes.total == 0, writes.describe()
    assert run.code in (0, 7), str(run)
    return run


def _planes(doc: dict[str, Any]) -> set[tuple[str, str, str, str, str]]:
    return {
        (d["name"], d["revision"], d["meshConfigMap"], d["injectorConfigMap"], d["rootNamespace"])
        for d in doc["data"]["istiod"]
    }


def _canary_pod(namespace: str, name: str) -> dict[str, Any]:
    status = json.dumps({"revision": "canary", "containers": ["istio-proxy"]})
    proxy = {
        "name": "istio-proxy",
        "image": "docker.io/istio/proxyv2:1.30.3",
        "resources": {"limits": {"memory": "2Gi"}, "requests": {"memory": "128Mi"}},
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {"sidecar.istio.io/status": status},
        },
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}, proxy]},
    }


def _mtls_policy(c: Any, namespace: str) -> dict[str, Any] | None:
    return get(c, "peerauthentication", "default", "-n", namespace)


def test_revisioned_install_then_a_second_revision(fresh_cluster: Any) -> None:
    c = fresh_cluster()

    # A revision name Istio cannot use as a name suffix and label: refused, nothing written.
    bad, writes = writes_during(c, lambda: _install(c, "--set", "istiod.revision=Canary_1"))
    assert bad.code == 2, str(bad)
    assert writes.total == 0, writes.describe()
    assert "Canary_1" in bad.doc["errors"][0]["message"] and bad.doc["errors"][0]["hint"]

    # The dry run before phase 1 shows the patch of the revision's own ConfigMaps.
    dry, writes = writes_during(
        c, lambda: _install(c, "--set", "istiod.revision=canary", "--dry-run")
    )
    assert dry.code == 0, str(dry)
    assert writes.total == 0, writes.describe()
    changes = [x for p in dry.doc["phases"] for i in p["items"] for x in i.get("changes") or []]
    assert any(
        x.startswith(f"ConfigMap/{NAMESPACE}/istio-sidecar-injector-canary ") for x in changes
    )
    assert any(x.startswith(f"ConfigMap/{NAMESPACE}/istio-canary ") for x in changes), changes

    # One revision: installed with its suffixed names, patched there.
    run = _install(c, "--set", "istiod.revision=canary")
    assert run.code == 0, str(run)
    assert get(c, "deployment", "istiod-canary", "-n", NAMESPACE) is not None
    assert get(c, "deployment", "istiod", "-n", NAMESPACE) is None
    _patched(c, "-canary")
    policy = _mtls_policy(c, NAMESPACE)
    assert policy is not None and policy["spec"]["mtls"]["mode"] == "STRICT"

    rerun, writes = writes_during(c, lambda: _install(c, "--set", "istiod.revision=canary"))
    assert rerun.code == 0, str(rerun)
    assert writes.total == 0, writes.describe()
    assert rerun.doc["changed"] is False

    # A dry run towards another revision shows the patch of that revision's ConfigMaps too.
    dry, writes = writes_during(
        c, lambda: _install(c, "--set", "istiod.revision=blue", "--dry-run")
    )
    assert dry.code == 0, str(dry)
    assert writes.total == 0, writes.describe()
    changes = [x for p in dry.doc["phases"] for i in p["items"] for x in i.get("changes") or []]
    assert any(x.startswith(f"ConfigMap/{NAMESPACE}/istio-sidecar-injector-blue ") for x in changes)

    status = _status(c)
    assert status.code == 0, status.doc["data"]["problems"]
    canary = (
        "istiod-canary",
        "canary",
        "istio-canary",
        "istio-sidecar-injector-canary",
        NAMESPACE,
    )
    assert _planes(status.doc) == {canary}
    assert all(s["applied"] for s in status.doc["data"]["steps"])

    # A default revision next to it, installed by someone else with plain helm: status
    # says its ConfigMaps are not patched, `patch` patches them, a re-run writes nothing.
    # (From where Istio publishes now: the 1.30 charts' own hub is switched off, which
    # status would report for this istiod's Pod.)
    hub = ("--set", "global.hub=docker.io/istio")
    c.helm_run("install", "istiod-main", str(CHARTS / "istiod"), "-n", NAMESPACE, *hub)
    _unpatched(c, "")
    status = _status(c)
    assert status.code == 7
    pending = {s["name"]: s["pending"] for s in status.doc["data"]["steps"]}
    assert any(
        f"ConfigMap/{NAMESPACE}/istio-sidecar-injector key config" in p
        for p in pending["injection-policy"]
    ), pending
    assert not any("-canary" in p for ps in pending.values() for p in ps), pending

    run = kymamesh(c, "patch", "-y", "-o", "json")
    assert run.code == 0, str(run)
    _patched(c, "")
    _patched(c, "-canary")

    # A sidecar the canary injected with other resources than its injector now gives is
    # judged against the canary's injector (step restart-proxies lists it).
    c.create_namespace("shop")
    c.kubectl("apply", "-f", "-", input=json.dumps(_canary_pod("shop", "old-sidecar")))
    rerun, writes = writes_during(c, lambda: kymamesh(c, "patch", "-y", "-o", "json"))
    assert rerun.code == 0, str(rerun)
    assert writes.total == 0, writes.describe()
    notes = " ".join(rerun.doc["notes"])
    assert "Pod/shop/old-sidecar" in notes and "limits.memory 2Gi, wanted 1024Mi" in notes, notes

    status = _status(c)
    assert status.code == 0, status.doc["data"]["problems"]
    default = ("istiod", "default", "istio", "istio-sidecar-injector", NAMESPACE)
    assert _planes(status.doc) == {default, canary}

    # The user removes their revision; kymamesh uninstalls its own (the canary).
    c.helm_run("uninstall", "istiod-main", "-n", NAMESPACE, "--wait")
    run = kymamesh(c, "uninstall", "-y", "-o", "json")
    assert run.code == 0, str(run)
    for kind, name in (
        ("deployment", "istiod-canary"),
        ("configmap", "istio-canary"),
        ("configmap", "istio-sidecar-injector-canary"),
    ):
        assert get(c, kind, name, "-n", NAMESPACE) is None, f"{kind}/{name} left behind"
    status = _status(c)
    assert status.doc["data"]["istiod"] == []


def test_mesh_root_namespace_holds_the_mesh_wide_policy(fresh_cluster: Any) -> None:
    c = fresh_cluster()
    root = "mesh-root"
    set_root = ("--set", f"istiod.meshConfig.rootNamespace={root}")

    # The root namespace does not exist: refused before anything is written.
    run, writes = writes_during(c, lambda: _install(c, *set_root))
    assert run.code == 3, str(run)
    assert writes.total == 0, writes.describe()
    assert root in run.doc["errors"][0]["message"]
    assert run.doc["errors"][0]["hint"]

    c.create_namespace(root)
    run = _install(c, *set_root)
    assert run.code == 0, str(run)
    policy = _mtls_policy(c, root)
    assert policy is not None and policy["spec"]["mtls"]["mode"] == "STRICT"
    assert _mtls_policy(c, NAMESPACE) is None

    rerun, writes = writes_during(c, lambda: _install(c, *set_root))
    assert rerun.code == 0, str(rerun)
    assert writes.total == 0, writes.describe()

    status = _status(c)
    assert status.code == 0, status.doc["data"]["problems"]
    assert status.doc["data"]["mtls"] == {
        "mode": "STRICT",
        "policy": f"{root}/default",
        "rootNamespace": root,
    }
    assert {d["rootNamespace"] for d in status.doc["data"]["istiod"]} == {root}

    # Weakened where it counts: status sees it, patch repairs it there.
    c.kubectl(
        "patch", "peerauthentication", "default", "-n", root, "--type=merge",
        "-p", json.dumps({"spec": {"mtls": {"mode": "PERMISSIVE"}}}),
    )  # fmt: skip
    status = _status(c)
    assert status.code == 7
    assert status.doc["data"]["mtls"]["mode"] == "PERMISSIVE"
    run = kymamesh(c, "patch", "-y", "-o", "json")
    assert run.code == 0, str(run)
    policy = _mtls_policy(c, root)
    assert policy is not None and policy["spec"]["mtls"]["mode"] == "STRICT"
    assert _mtls_policy(c, NAMESPACE) is None
