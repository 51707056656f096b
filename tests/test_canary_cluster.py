"""The canary upgrade end to end, with the real istiod: 1.29 installed, `install
--revision-based` puts 1.30.3 beside it as revision 1-30-3, both serve, `upgrade promote`
moves the default tag and restarts the workloads (the remembered system namespaces
first), `upgrade rollback` moves it back (refused, with nothing written, towards an
istiod that is not ready; nothing to do before any promote), `upgrade finish` is refused
while a Pod uses the old revision, plans phase 1 before it removes anything, asks, waits
for an old istiod that is still terminating, and runs phase 2 after phase 1. Each command
converges, re-runs with zero writes, and a run killed in the middle converges. The Istio
namespace carries an injection label from the first rollback on: every wait must still
prove which revision injects. After `finish`, a kymamesh that pins another version knows
the revision by what kymamesh wrote."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.support_lifecycle import (
    NAMESPACE,
    ROOT,
    get,
    install_as_an_earlier_kymamesh,
    kymamesh,
    meshed_deployment,
    writes_during,
)

CHARTS = ROOT / "tests" / "fixtures" / "charts"
OLD_CHARTS = ROOT / "tests" / "fixtures" / "charts-1.29"
NEW = "1-30-3"
TAG = "istio-revision-tag-default"
MEMORY_LIMIT = "1024Mi"  # patches/kyma.yaml: sidecar-resources proxy.limits.memory
# a sidecar template istiod cannot render: its injector answers every Pod with a denial
BAD_SIDECAR_TEMPLATE = "spec:\n  containers:\n  - name: {{ .NoSuchField.Anything }}\n"

# The real CLI, SIGKILLed right after its N-th write (API writes but the lock Lease, and
# helm's installs, upgrades and uninstalls): an interruption at an exact point.
KILLER = """
import os, signal, sys
from kymamesh.adapters import cluster as c
from kymamesh.adapters import helm as h

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

# The real CLI of a kymamesh that pins another Istio version (KYMAMESH_TEST_PINNED).
PINNED_AS = """
import os, sys
from dataclasses import replace
from kymamesh.istio import release
from kymamesh.istio.versions import Version

real = release.pinned()
other = replace(real, version=Version.parse(os.environ["KYMAMESH_TEST_PINNED"]))
release.pinned = lambda: other
sys.argv = ["kymamesh", *sys.argv[1:]]
from kymamesh.cli.app import main
main()
"""
SYSTEM = {"steps": {"restart-proxies": {"systemNamespaces": ["shop"]}}}
ACCESS_LOG = "istiod.meshConfig.accessLogFile=/dev/stdout"  # finish's own chart option


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


def pinned_as(c: Any, version: str, *args: str) -> Any:
    """The CLI of a kymamesh pinning `version`: (exit code, JSON result)."""
    env = {**c.env, "KYMAMESH_HELM": str(c.helm), "KYMAMESH_TEST_PINNED": version}
    done = subprocess.run(
        [sys.executable, "-c", PINNED_AS, *args, "-o", "json"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(f"exit {done.returncode}: kymamesh {' '.join(args)} (pinning {version})")
    return done.returncode, json.loads(done.stdout), done.stderr


def killed(c: Any, after: int, *args: str) -> None:
    """Run the CLI and SIGKILL it after its `after`-th write; it must have been killed."""
    env = {**c.env, "KYMAMESH_HELM": str(c.helm), "KYMAMESH_TEST_KILL_AFTER": str(after)}
    done = subprocess.run(
        [sys.executable, "-c", KILLER, *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stdout, done.stderr)


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


def releases_of(c: Any) -> dict[str, Any]:
    listed = json.loads(c.helm_run("list", "-n", NAMESPACE, "-o", "json").stdout)
    return {r["name"]: r for r in listed}


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

    config = tmp_path / "system.yaml"  # remembered: promote and rollback restart shop first
    config.write_text(json.dumps(SYSTEM))
    install_as_an_earlier_kymamesh(c, OLD_CHARTS, "--config", str(config))
    shop = c.create_namespace("shop", labels={"istio-injection": "enabled"})
    bank = c.create_namespace("bank", labels={"istio-injection": "enabled"})
    c.kubectl("apply", "-n", shop, "-f", "-", input=json.dumps(meshed_deployment("web")))
    c.kubectl("apply", "-n", bank, "-f", "-", input=json.dumps(meshed_deployment("pay")))
    c.kubectl("apply", "-n", shop, "-f", "-", input=json.dumps(bare_pod("solo")))
    keep = meshed_deployment("keep")  # opted out of kymamesh's restarts
    keep["metadata"]["annotations"] = {"kymamesh.io/restart": "false"}
    c.kubectl("apply", "-n", shop, "-f", "-", input=json.dumps(keep))
    for ns, name in ((shop, "web"), (shop, "keep"), (bank, "pay")):
        c.kubectl("rollout", "status", f"deployment/{name}", "-n", ns, "--timeout=120s")
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
    c.kubectl("apply", "-n", trial, "-f", "-", input=json.dumps(meshed_deployment("try")))
    settled(c, trial, "app=try", NEW, "1.30.3")
    c.kubectl("delete", "pod", "-n", shop, "-l", "app=web", "--wait=false")
    settled(c, shop, "app=web", "default", "1.29.4")

    # Before any promote there is nothing to roll back: no write at all.
    nothing = zero_writes(c, "upgrade", "rollback")
    assert any("nothing to roll back" in n for n in nothing["notes"]), nothing["notes"]
    assert tag_revision(c) is None

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
    # the Istio namespace first, then the remembered system namespace (shop), then the rest
    assert restarted == [gateway, f"Deployment/{shop}/web", f"Deployment/{bank}/pay"]
    assert any(f"Pod/{shop}/solo" in n for n in doc["notes"]), doc["notes"]
    assert any("opted out" in n and f"Deployment/{shop}/keep" in n for n in doc["notes"])
    settled(c, shop, "app=keep", "default", "1.29.4")  # left alone
    settled(c, shop, "app=web", NEW, "1.30.3")
    settled(c, NAMESPACE, "app=istio-ingressgateway", NEW, "1.30.3")
    zero_writes(c, "upgrade", "promote")
    state = canary_state(c)
    assert (state["phase"], state["defaultTag"]) == ("promoted", NEW)

    # -- rollback ----------------------------------------------------------------------------
    # From here on the Istio namespace is labelled for injection: a test Pod made there would
    # be sent to the default revision whatever the tag, and prove nothing.
    c.kubectl("label", "namespace", NAMESPACE, "istio-injection=enabled")
    # Towards an istiod that is not ready: refused, the tag left where it is, nothing written.
    c.kubectl("scale", "deployment/istiod", "-n", NAMESPACE, "--replicas=0")
    c.wait_for(
        lambda: (
            not (get(c, "deployment", "istiod", "-n", NAMESPACE) or {})
            .get("status", {})
            .get("availableReplicas")
        ),
        60,
        "the old istiod scaled to 0",
    )
    down, writes = writes_during(c, lambda: km(c, "upgrade", "rollback"))
    assert down.code == 3, str(down)
    assert writes.total == 0, writes.describe()
    assert "not ready" in down.doc["errors"][0]["message"], down.doc["errors"]
    assert tag_revision(c) == NEW
    c.kubectl("scale", "deployment/istiod", "-n", NAMESPACE, "--replicas=1")
    c.kubectl("rollout", "status", "deployment/istiod", "-n", NAMESPACE, "--timeout=120s")

    # Towards an istiod that is ready but whose injector refuses every Pod (a template it
    # cannot render): its own webhooks are off while the tag exists, so only the moved tag
    # shows it. The tag goes back to the canary rather than stay on a webhook that fails
    # closed, and the run says so.
    injector = get(c, "configmap", "istio-sidecar-injector", "-n", NAMESPACE)
    assert injector is not None
    broken = yaml.safe_load(injector["data"]["config"])
    broken["templates"]["sidecar"] = BAD_SIDECAR_TEMPLATE
    c.kubectl(
        "patch", "configmap", "istio-sidecar-injector", "-n", NAMESPACE, "--type=merge", "-p",
        json.dumps({"data": {"config": yaml.safe_dump(broken)}}),
    )  # fmt: skip
    refused = km(c, "upgrade", "rollback", "--timeout", "120")
    assert refused.code == 5, str(refused)
    message = refused.doc["errors"][0]["message"]
    assert "refuses Pods" in message and f"moved back to revision {NEW}" in message, message
    assert tag_revision(c) == NEW
    c.wait_for(lambda: canary_state(c)["defaultTag"] == NEW, 30, "the tag back on the canary")
    c.kubectl(
        "patch", "configmap", "istio-sidecar-injector", "-n", NAMESPACE, "--type=merge", "-p",
        json.dumps({"data": {"config": injector["data"]["config"]}}),
    )  # fmt: skip

    # killed after its first write, converged, zero writes on a re-run
    killed(c, 1, "upgrade", "rollback")
    assert tag_revision(c) == "default"
    doc = ok(km(c, "upgrade", "rollback", "--lock-wait", "40"))
    restarted = [i["name"] for p in doc["phases"] for i in p["items"] if p["name"] == "workloads"]
    assert restarted == [gateway, f"Deployment/{shop}/web", f"Deployment/{bank}/pay"]
    settled(c, shop, "app=web", "default", "1.29.4")
    zero_writes(c, "upgrade", "rollback")
    assert canary_state(c)["defaultTag"] == "default"

    # -- promote again (one workload at a time), then finish ----------------------------------
    ok(km(c, "upgrade", "promote", "--restart-batch", "1"))
    settled(c, shop, "app=web", NEW, "1.30.3")
    settled(c, NAMESPACE, "app=istio-ingressgateway", NEW, "1.30.3")

    # finish with a chart option of its own: istiod-1-30-3 is upgraded, then patched again
    finish = ("upgrade", "finish", "--charts-dir", str(CHARTS), "--set", ACCESS_LOG)
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

    # Everything that can refuse runs before the old revision goes: no charts, no write.
    empty = tmp_path / "no-charts"
    empty.mkdir()
    nocharts, writes = writes_during(
        c, lambda: km(c, "upgrade", "finish", "--charts-dir", str(empty), "-y")
    )
    assert nocharts.code == 3, str(nocharts)
    assert writes.total == 0, writes.describe()
    assert get(c, "deployment", "istiod", "-n", NAMESPACE) is not None
    # It removes a control plane: it asks, and with no terminal to ask on, refuses.
    asked, writes = writes_during(c, lambda: km(c, *finish))
    assert asked.code == 6, str(asked)
    assert writes.total == 0, writes.describe()

    dry, writes = writes_during(c, lambda: km(c, *finish, "--dry-run"))
    assert ok(dry)["changed"] is True
    assert writes.total == 0, writes.describe()

    # Killed right after the old release was uninstalled, its istiod held terminating (a
    # finalizer): a re-run waits for it rather than finish with nothing done.
    hold = '{"metadata":{"finalizers":["kymamesh.test/hold"]}}'
    c.kubectl("patch", "deployment", "istiod", "-n", NAMESPACE, "--type=merge", "-p", hold)
    killed(c, 1, *finish, "-y")
    held = get(c, "deployment", "istiod", "-n", NAMESPACE)
    assert held is not None and held["metadata"].get("deletionTimestamp"), held
    waited, writes = writes_during(c, lambda: km(c, *finish, "-y", "--timeout", "5"))
    assert waited.code == 4, str(waited)
    assert "istiod" in waited.doc["errors"][0]["message"], waited.doc["errors"]
    assert releases_of(c)["istio-ingressgateway"]["chart"] == "gateway-1.29.4"  # not moved
    c.kubectl("patch", "deployment", "istiod", "-n", NAMESPACE, "--type=merge", "-p",
              '{"metadata":{"finalizers":null}}')  # fmt: skip
    doc = ok(km(c, *finish, "-y", "--lock-wait", "40"))
    releases = releases_of(c)
    assert "istiod" not in releases
    assert releases["istio-ingressgateway"]["chart"] == "gateway-1.30.3"
    validator = get(c, "validatingwebhookconfiguration", "istiod-default-validator")
    assert validator is not None
    assert validator["webhooks"][0]["clientConfig"]["service"]["name"] == f"istiod-{NEW}"
    assert tag_revision(c) == NEW
    # phase 2 ran after phase 1: the upgraded revision keeps the Kyma patch
    assert any(p["name"].startswith("phase 2") for p in doc["phases"]), doc["phases"]
    injector = get(c, "configmap", f"istio-sidecar-injector-{NEW}", "-n", NAMESPACE)
    assert injector is not None and "policy: disabled" in injector["data"]["config"]
    assert (
        json.loads(injector["data"]["values"])["global"]["proxy"]["resources"]["limits"]["memory"]
        == MEMORY_LIMIT
    )
    mesh = get(c, "configmap", f"istio-{NEW}", "-n", NAMESPACE)
    assert mesh is not None and "kyma-zipkin" in mesh["data"]["mesh"]
    assert "/dev/stdout" in mesh["data"]["mesh"]  # finish's own option is there too
    settled(c, NAMESPACE, "app=istio-ingressgateway", NEW, "1.30.3")
    zero_writes(c, *finish, "-y")
    zero_writes(c, "install", "--charts-dir", str(CHARTS), "--set", ACCESS_LOG, "-y")
    state = canary_state(c)
    assert (state["phase"], state["defaultTag"]) == ("finished", NEW)
    # New Pods asking for the default revision still get a sidecar: the new one.
    c.kubectl("delete", "pod", "-n", shop, "-l", "app=web", "--wait=false")
    settled(c, shop, "app=web", NEW, "1.30.3")
    # `install --revision-based` now has nothing to upgrade: refused, as the how-to says.
    again, writes = writes_during(c, lambda: km(c, *install))
    assert again.code == 3, str(again)
    assert writes.total == 0, writes.describe()
    assert "already runs Istio 1.30.3" in again.doc["errors"][0]["message"]

    # A kymamesh that pins another version knows revision 1-30-3 by what kymamesh wrote:
    # its install converges on it (no unnamed istiod beside it), status shows it, and
    # uninstall removes it.
    with c.audit.counting() as writes:
        code, doc, err = pinned_as(
            c, "1.30.4", "install", "--charts-dir", str(CHARTS), "--set", ACCESS_LOG, "-y"
        )
    assert code == 0, (doc, err)
    assert writes.total == 0, writes.describe()
    assert get(c, "deployment", "istiod", "-n", NAMESPACE) is None
    code, doc, err = pinned_as(c, "1.30.4", "status")
    assert (doc["data"]["canary"]["phase"], doc["data"]["canary"]["revision"]) == (
        "finished",
        NEW,
    ), doc["data"]["canary"]
    code, doc, err = pinned_as(c, "1.30.4", "uninstall", "-y", "--force")
    assert code == 0, (doc, err)
    assert get(c, "deployment", f"istiod-{NEW}", "-n", NAMESPACE) is None
    assert get(c, "mutatingwebhookconfiguration", TAG) is None
