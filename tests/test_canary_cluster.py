"""The canary upgrade end to end, with the real istiod: 1.29 installed, `install
--revision-based` puts 1.30.3 beside it as revision 1-30-3, both serve, `upgrade promote`
moves the default tag and restarts the workloads, `upgrade rollback` moves it back,
`upgrade finish` is refused while a Pod uses the old revision and removes it after. Each
command converges, re-runs with zero writes, and a run killed in the middle converges."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support_lifecycle import (
    NAMESPACE,
    ROOT,
    get,
    install_as_an_earlier_kymamesh,
    kymamesh,
    writes_during,
)

CHARTS = ROOT / "tests" / "fixtures" / "charts"
OLD_CHARTS = ROOT / "tests" / "fixtures" / "charts-1.29"
NEW = "1-30-3"
TAG = "istio-revision-tag-default"
MEMORY_LIMIT = "1024Mi"  # patches/kyma.yaml: sidecar-resources proxy.limits.memory

# The real CLI, SIGKILLed right after its N-th write (API writes but the lock Lease, and
# helm's installs, upgrades and uninstalls): an interruption at an exact point.
KILLER = """
import os, signal, sys
from kymamesh import cluster as c
from kymamesh import helm as h

limit = int(os.environ["KYMAMESH_TEST_KILL_AFTER"])
count = [0]

def wrap(cls, name, counts):
    original = getattr(cls, name)
    def method(self, target, *args, **kwargs):
        result = original(self, target, *args, **kwargs)
        if counts(target):
            count[0] += 1
            if count[0] >= limit:
                os.kill(os.getpid(), signal.SIGKILL)
        return result
    setattr(cls, name, method)

def not_lease(target):
    kind = target.kind if isinstance(target, c.Ref) else target.get("kind")
    return kind != "Lease"

for name in ("apply", "create", "replace", "merge_patch", "delete"):
    wrap(c.Cluster, name, not_lease)
for name in ("install_or_upgrade", "uninstall"):
    wrap(h.Helm, name, lambda target: True)
sys.argv = ["kymamesh", *sys.argv[1:]]
from kymamesh.cli.app import main
main()
"""


def km(c: Any, *args: str) -> Any:
    started = time.monotonic()
    run = kymamesh(c, *args, "-o", "json")
    print(f"{time.monotonic() - started:6.1f}s exit {run.code}: kymamesh {' '.join(args)}")
    return run


def ok(run: Any) -> dict[str, Any]:
    assert run.code == 0, str(run)
    return run.doc


def zero_writes(c: Any, *args: str) -> dict[str, Any]:
    run, writes = writes_during(c, lambda: km(c, *args))
    doc = ok(run)
    assert writes.total == 0, writes.describe()
    assert doc["changed"] is False, doc
    return doc


def killed(c: Any, after: int, *args: str) -> None:
    """Run the CLI and SIGKILL it after its `after`-th write; it must have been killed."""
    env = {**c.env, "KYMAMESH_HELM": str(c.helm), "KYMAMESH_TEST_KILL_AFTER": str(after)}
    done = subprocess.run(
        [sys.executable, "-c", KILLER, *args, "-y"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stdout, done.stderr)


def deployment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, "sidecar.istio.io/inject": "true"}},
                "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]},
            },
        },
    }


def bare_pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"sidecar.istio.io/inject": "true"}},
        "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]},
    }


def sidecars(c: Any, namespace: str, selector: str) -> list[tuple[str, str]]:
    """(sidecar revision, istio-proxy image) of each live Pod matching the selector."""
    found = get(c, "pods", "-n", namespace, "-l", selector) or {"items": []}
    result = []
    for pod in found["items"]:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        status = json.loads(pod["metadata"].get("annotations", {})["sidecar.istio.io/status"])
        (proxy,) = [x for x in pod["spec"]["containers"] if x["name"] == "istio-proxy"]
        result.append((status["revision"], proxy["image"]))
    return result


def settled(c: Any, namespace: str, selector: str, revision: str, tag: str) -> None:
    """Wait until every Pod of the selector has the sidecar of `revision`, image `tag`."""
    c.wait_for(
        lambda: sidecars(c, namespace, selector) == [(revision, f"docker.io/istio/proxyv2:{tag}")],
        120,
        f"{namespace} {selector}: one Pod with the sidecar of revision {revision}",
        interval=0.5,
    )


def tag_revision(c: Any) -> str | None:
    tag = get(c, "mutatingwebhookconfiguration", TAG)
    return None if tag is None else tag["metadata"]["labels"]["istio.io/rev"]


def canary_state(c: Any) -> dict[str, Any]:
    run, writes = writes_during(c, lambda: km(c, "status"))
    assert writes.total == 0, writes.describe()
    assert run.code in (0, 7), str(run)
    state: dict[str, Any] = run.doc["data"]["canary"]
    return state


def test_canary_upgrade_end_to_end(fresh_cluster: Any, tmp_path: Path) -> None:
    c = fresh_cluster()
    # Nothing to canary against: refused before anything is written.
    alone, writes = writes_during(
        c, lambda: km(c, "install", "--revision-based", "--charts-dir", str(CHARTS), "-y")
    )
    assert alone.code == 3, str(alone)
    assert writes.total == 0, writes.describe()
    assert "no istiod" in alone.doc["errors"][0]["message"]

    install_as_an_earlier_kymamesh(c, OLD_CHARTS)
    shop = c.create_namespace("shop", labels={"istio-injection": "enabled"})
    c.kubectl("apply", "-n", shop, "-f", "-", input=json.dumps(deployment("web")))
    c.kubectl("apply", "-n", shop, "-f", "-", input=json.dumps(bare_pod("solo")))
    keep = deployment("keep")  # opted out of kymamesh's restarts
    keep["metadata"]["annotations"] = {"kymamesh.io/restart": "false"}
    c.kubectl("apply", "-n", shop, "-f", "-", input=json.dumps(keep))
    for name in ("web", "keep"):
        c.kubectl("rollout", "status", f"deployment/{name}", "-n", shop, "--timeout=120s")
    settled(c, shop, "app=web", "default", "1.29.4")

    # Without a running istiod there is nothing to canary against: refused elsewhere; here a
    # revision named by hand is refused before anything is written.
    bad, writes = writes_during(
        c,
        lambda: km(
            c, "install", "--revision-based", "--charts-dir", str(CHARTS), "--set",
            "istiod.revision=blue", "-y",
        ),
    )  # fmt: skip
    assert bad.code == 2, str(bad)
    assert writes.total == 0, writes.describe()
    assert "istiod.revision" in bad.doc["errors"][0]["message"]

    # -- install --revision-based: the new revision beside the old one ----------------------
    install = ("install", "--revision-based", "--charts-dir", str(CHARTS), "-y")
    dry, writes = writes_during(c, lambda: km(c, *install, "--dry-run"))
    assert writes.total == 0, writes.describe()
    planned = {i["name"]: i["outcome"] for p in ok(dry)["phases"] for i in p["items"]}
    assert planned[f"istiod-{NEW}"] == "would-change"
    assert "istio-ingressgateway" not in planned and "istiod" not in planned  # left alone
    doc = ok(km(c, *install))
    assert any("upgrade promote" in n for n in doc["notes"]), doc["notes"]
    assert get(c, "deployment", f"istiod-{NEW}", "-n", NAMESPACE) is not None
    assert get(c, "deployment", "istiod", "-n", NAMESPACE) is not None  # the old one stays
    injector = get(c, "configmap", f"istio-sidecar-injector-{NEW}", "-n", NAMESPACE)
    assert injector is not None
    assert (
        json.loads(injector["data"]["values"])["global"]["proxy"]["resources"]["limits"]["memory"]
        == MEMORY_LIMIT
    )
    assert "policy: disabled" in injector["data"]["config"]
    mesh = get(c, "configmap", f"istio-{NEW}", "-n", NAMESPACE)
    assert mesh is not None and "kyma-zipkin" in mesh["data"]["mesh"]
    releases = {r["name"]: r for r in json.loads(
        c.helm_run("list", "-n", NAMESPACE, "-o", "json").stdout
    )}  # fmt: skip
    assert releases[f"istiod-{NEW}"]["chart"] == "istiod-1.30.3"
    assert releases["istiod"]["chart"] == "istiod-1.29.4"
    assert releases["istio-ingressgateway"]["chart"] == "gateway-1.29.4"  # left alone
    assert releases["istio-base"]["chart"] == "base-1.30.3"
    assert tag_revision(c) is None
    zero_writes(c, *install)
    zero_writes(c, "install", "--charts-dir", str(CHARTS), "-y")  # a plain re-run: the same
    state = canary_state(c)
    assert (state["phase"], state["defaultTag"]) == ("canary", "default")
    assert {r["revision"] for r in state["revisions"]} == {"default", NEW}

    # Both revisions serve: a Pod in a namespace labelled for the new one gets its sidecar,
    # and the default Pods still get the old one.
    trial = c.create_namespace("trial", labels={"istio.io/rev": NEW})
    c.kubectl("apply", "-n", trial, "-f", "-", input=json.dumps(deployment("try")))
    settled(c, trial, "app=try", NEW, "1.30.3")
    c.kubectl("delete", "pod", "-n", shop, "-l", "app=web", "--wait=false")
    settled(c, shop, "app=web", "default", "1.29.4")

    # -- promote: dry run, killed after its first write, re-run, converged -------------------
    dry, writes = writes_during(c, lambda: km(c, "upgrade", "promote", "--dry-run"))
    assert ok(dry)["changed"] is True
    assert writes.total == 0, writes.describe()
    assert tag_revision(c) is None

    killed(c, 1, "upgrade", "promote")
    assert tag_revision(c) == NEW  # the tag was written, the rest not
    assert (
        c.kubectl(
            "get",
            "mutatingwebhookconfiguration",
            "istio-sidecar-injector",
            "-o",
            "jsonpath={.webhooks[0].namespaceSelector}",
        ).stdout.find("never-match")
        < 0
    )
    doc = ok(km(c, "upgrade", "promote", "--lock-wait", "40"))
    restarted = [i["name"] for p in doc["phases"] for i in p["items"] if p["name"] == "workloads"]
    gateway = f"Deployment/{NAMESPACE}/istio-ingressgateway"
    assert restarted == [gateway, f"Deployment/{shop}/web"]  # the Istio namespace first
    assert any(f"Pod/{shop}/solo" in n for n in doc["notes"]), doc["notes"]
    assert any("opted out" in n and f"Deployment/{shop}/keep" in n for n in doc["notes"])
    settled(c, shop, "app=keep", "default", "1.29.4")  # left alone
    settled(c, shop, "app=web", NEW, "1.30.3")
    settled(c, NAMESPACE, "app=istio-ingressgateway", NEW, "1.30.3")
    zero_writes(c, "upgrade", "promote")
    state = canary_state(c)
    assert (state["phase"], state["defaultTag"]) == ("promoted", NEW)

    # -- rollback: killed after its first write, converged, zero writes on a re-run ----------
    killed(c, 1, "upgrade", "rollback")
    assert tag_revision(c) == "default"
    ok(km(c, "upgrade", "rollback", "--lock-wait", "40"))
    settled(c, shop, "app=web", "default", "1.29.4")
    zero_writes(c, "upgrade", "rollback")
    assert canary_state(c)["defaultTag"] == "default"

    # -- promote again (one workload at a time), then finish ----------------------------------
    ok(km(c, "upgrade", "promote", "--restart-batch", "1"))
    settled(c, shop, "app=web", NEW, "1.30.3")
    settled(c, NAMESPACE, "app=istio-ingressgateway", NEW, "1.30.3")

    finish = ("upgrade", "finish", "--charts-dir", str(CHARTS))
    refused, writes = writes_during(c, lambda: km(c, *finish))
    assert refused.code == 3, str(refused)
    assert writes.total == 0, writes.describe()
    error = refused.doc["errors"][0]
    assert error["code"] == "revision-in-use"
    assert f"{shop}/solo (revision default)" in error["message"], error
    assert f"{shop}/keep-" in error["message"], error  # the opted-out one's Pod
    c.kubectl("delete", "pod", "solo", "-n", shop, "--wait=true")
    c.kubectl("rollout", "restart", "deployment/keep", "-n", shop)
    settled(c, shop, "app=keep", NEW, "1.30.3")

    dry, writes = writes_during(c, lambda: km(c, *finish, "--dry-run"))
    assert ok(dry)["changed"] is True
    assert writes.total == 0, writes.describe()

    killed(c, 1, *finish)  # right after the old release was uninstalled
    c.wait_for(lambda: get(c, "deployment", "istiod", "-n", NAMESPACE) is None, 60, "istiod gone")
    ok(km(c, *finish, "--lock-wait", "40"))
    releases = {r["name"]: r for r in json.loads(
        c.helm_run("list", "-n", NAMESPACE, "-o", "json").stdout
    )}  # fmt: skip
    assert "istiod" not in releases
    assert releases["istio-ingressgateway"]["chart"] == "gateway-1.30.3"
    validator = get(c, "validatingwebhookconfiguration", "istiod-default-validator")
    assert validator is not None
    assert validator["webhooks"][0]["clientConfig"]["service"]["name"] == f"istiod-{NEW}"
    assert tag_revision(c) == NEW
    settled(c, NAMESPACE, "app=istio-ingressgateway", NEW, "1.30.3")
    zero_writes(c, *finish)
    zero_writes(c, "install", "--charts-dir", str(CHARTS), "-y")
    state = canary_state(c)
    assert (state["phase"], state["defaultTag"]) == ("finished", NEW)
    # New Pods asking for the default revision still get a sidecar: the new one.
    c.kubectl("delete", "pod", "-n", shop, "-l", "app=web", "--wait=false")
    settled(c, shop, "app=web", NEW, "1.30.3")

    # uninstall knows the canary's release and the tag (whose webhooks would fail closed).
    ok(km(c, "uninstall", "-y", "--force"))
    assert get(c, "deployment", f"istiod-{NEW}", "-n", NAMESPACE) is None
    assert get(c, "mutatingwebhookconfiguration", TAG) is None

    # An istiod that already runs the pinned release: nothing to upgrade by revisions.
    ok(km(c, "install", "--charts-dir", str(CHARTS), "-y"))
    same, writes = writes_during(c, lambda: km(c, *install))
    assert same.code == 3, str(same)
    assert writes.total == 0, writes.describe()
    assert "already runs Istio 1.30.3" in same.doc["errors"][0]["message"]
