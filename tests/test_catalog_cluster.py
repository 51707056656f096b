"""The release catalog on the test cluster: images never from a switched-off registry
(install sets the hub; an Istio someone else installed is moved off it), `--hub` remembered,
`releases` reading the cluster, charts of one supported release only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tests.support_lifecycle import (
    CHARTS,
    NAMESPACE,
    RELEASES,
    ROOT,
    get,
    install_as_an_earlier_kymamesh,
    kymamesh,
    meshed_deployment,
    writes_during,
)

RETIRED = "registry.istio.io/release"
CHARTS_129 = ROOT / "tests" / "fixtures" / "charts-1.29"


def proxy_images(c: Any, namespace: str) -> dict[str, str]:
    """Pod name -> its istio-proxy image, for the live (not terminating) Pods."""
    pods = get(c, "pods", "-n", namespace) or {"items": []}
    found = {}
    for pod in pods["items"]:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        for container in pod["spec"].get("containers", []):
            if container["name"] == "istio-proxy":
                found[pod["metadata"]["name"]] = container["image"]
    return found


def istiod_image(c: Any) -> str:
    doc = get(c, "deployment", "istiod", "-n", NAMESPACE)
    assert doc is not None
    return str(doc["spec"]["template"]["spec"]["containers"][0]["image"])


def test_foreign_istio_on_a_retired_registry_is_named_then_moved(fresh_cluster: Any) -> None:
    c = fresh_cluster()
    for release, chart in RELEASES:  # as the published 1.30 charts install by default
        c.helm_run(
            "install", release, str(CHARTS / chart), "-n", NAMESPACE, "--create-namespace",
            "--set", f"hub={RETIRED}", "--set", f"global.hub={RETIRED}", "--wait",
        )  # fmt: skip
    c.create_namespace("shop", labels={"istio-injection": "enabled"})
    c.kubectl("apply", "-n", "shop", "-f", "-", input=json.dumps(meshed_deployment("web")))
    c.kubectl("rollout", "status", "deployment/web", "-n", "shop", "--timeout=120s")
    assert all(i.startswith(RETIRED + "/") for i in proxy_images(c, "shop").values())

    run = kymamesh(c, "status", "-o", "json")
    assert run.code == 7, str(run)
    named = {(r["namespace"], r["container"]): r for r in run.doc["data"]["retiredRegistryImages"]}
    assert named[("shop", "istio-proxy")]["fix"] == (
        "kymamesh patch --existing-istio --restart-proxies"
    )
    assert named[("shop", "istio-proxy")]["image"].startswith(RETIRED + "/proxyv2:1.30.3")
    assert ("istio-system", "discovery") in named
    assert any("switched off" in p for p in run.doc["data"]["problems"])
    text = kymamesh(c, "status")
    assert "retired-registry images" in text.stdout and "fix: kymamesh patch" in text.stdout

    run = kymamesh(c, "patch", "--existing-istio", "--restart-proxies", "-y", "-o", "json")
    assert run.code == 0, str(run)
    hub_step = next(
        i for p in run.doc["phases"] for i in p["items"] if i["name"] == "sidecar-image-hub"
    )
    assert hub_step["outcome"] == "changed"
    assert f"global.hub {RETIRED} -> docker.io/istio" in " ".join(hub_step["changes"])
    c.kubectl("rollout", "status", "deployment/web", "-n", "shop", "--timeout=120s")
    images = proxy_images(c, "shop")
    assert images and all(i.startswith("docker.io/istio/proxyv2:") for i in images.values())
    gateway = proxy_images(c, NAMESPACE)
    assert gateway and all(i.startswith("docker.io/istio/") for i in gateway.values()), gateway

    after = kymamesh(c, "status", "-o", "json").doc["data"]
    left = [(r["namespace"], r["container"]) for r in after["retiredRegistryImages"]]
    assert left == [("istio-system", "discovery")]  # a foreign istiod is not ours to upgrade
    assert "helm upgrade" in after["retiredRegistryImages"][0]["fix"]
    assert istiod_image(c).startswith(RETIRED + "/pilot:")

    again, writes = writes_during(c, lambda: kymamesh(c, "patch", "--existing-istio", "-y"))
    assert again.code == 0, str(again)
    assert writes.total == 0, writes.describe()


def test_install_sets_the_hub_remembers_a_mirror_and_refuses_retired_ones(
    fresh_cluster: Any, tmp_path: Path
) -> None:
    c = fresh_cluster()
    for bad in (f"istiod.global.hub={RETIRED}", "istiod.hub=gcr.io/istio-release"):
        run, writes = writes_during(
            c, lambda b=bad: kymamesh(c, "install", "--charts-dir", str(CHARTS), "--set", b, "-y")
        )
        assert run.code == 2, str(run)
        assert "switched off" in run.stderr
        assert writes.total == 0, writes.describe()
    run, writes = writes_during(
        c, lambda: kymamesh(c, "install", "--charts-dir", str(CHARTS), "--hub", RETIRED, "-y")
    )
    assert run.code == 2 and writes.total == 0, str(run)

    mixed = tmp_path / "mixed"
    shutil.copytree(CHARTS, mixed, symlinks=False)
    shutil.rmtree(mixed / "istiod")
    shutil.copytree(CHARTS_129 / "istiod", mixed / "istiod")
    run, writes = writes_during(
        c, lambda: kymamesh(c, "install", "--charts-dir", str(mixed), "-y", "-o", "json")
    )
    assert run.code == 3, str(run)
    assert "different Istio releases" in run.doc["errors"][0]["message"]
    assert writes.total == 0, writes.describe()
    run = kymamesh(c, "install", "--charts-dir", str(CHARTS), "--istio", "1.31", "-y")
    assert run.code == 2 and "the charts in" in run.stderr, str(run)

    mirror = "mirror.example.com:5000/istio"
    run = kymamesh(c, "install", "--charts-dir", str(CHARTS), "--hub", mirror, "-y", "-o", "json")
    assert run.code == 0, str(run)
    assert run.doc["data"]["istioRelease"] == "1.30.3"
    assert istiod_image(c) == f"{mirror}/pilot:1.30.3"
    c.create_namespace("shop", labels={"istio-injection": "enabled"})
    c.kubectl("apply", "-n", "shop", "-f", "-", input=json.dumps(meshed_deployment("web")))
    c.kubectl("rollout", "status", "deployment/web", "-n", "shop", "--timeout=120s")
    assert set(proxy_images(c, "shop").values()) == {f"{mirror}/proxyv2:1.30.3"}

    # remembered: a plain re-run keeps the mirror and writes nothing
    again, writes = writes_during(
        c, lambda: kymamesh(c, "install", "--charts-dir", str(CHARTS), "-y")
    )
    assert again.code == 0, str(again)
    assert writes.total == 0, writes.describe()

    releases = kymamesh(c, "releases", "-o", "json")
    assert releases.code == 0, str(releases)
    data = releases.doc["data"]
    assert [e["minor"] for e in data["catalog"]] == ["1.31", "1.30"]
    assert data["default"] == "1.31.1"
    assert data["cluster"]["istiods"] == [
        {
            "revision": "default",
            "istiod": "istiod",
            "version": "1.30.3",
            "supported": True,
            "newerPatch": "1.30.5",
        }
    ]
    status = kymamesh(c, "status", "-o", "json").doc["data"]
    assert status["retiredRegistryImages"] == []
    assert any("1.30.5 is out" in a for a in status["advice"])


CHARTS_131 = ROOT / "tests" / "fixtures" / "charts-1.31"
CHARTS_1305 = ROOT / "tests" / "fixtures" / "charts-1.30.5"


def pod_images(c: Any, namespace: str, container: str) -> set[str]:
    pods = get(c, "pods", "-n", namespace) or {"items": []}
    return {
        k["image"]
        for pod in pods["items"]
        if not pod["metadata"].get("deletionTimestamp")
        for k in [*pod["spec"].get("containers", []), *pod["spec"].get("initContainers", [])]
        if k["name"] == container
    }


def proxy_limits(c: Any, namespace: str) -> set[str]:
    pods = get(c, "pods", "-n", namespace) or {"items": []}
    return {
        k.get("resources", {}).get("limits", {}).get("memory", "")
        for pod in pods["items"]
        if not pod["metadata"].get("deletionTimestamp")
        for k in pod["spec"].get("containers", [])
        if k["name"] == "istio-proxy"
    }


def istiod_builds(c: Any) -> set[str]:
    """The Istio minor of the pilot-discovery build serving each running istiod Pod (the test
    cluster's record, tests/cluster/README.md)."""
    pods = json.loads((c.dir / "pods.json").read_text())
    return {str(p["istiod"]["minor"]) for p in pods.values() if p.get("pid")}


def meshed(c: Any, namespace: str) -> None:
    c.create_namespace(namespace, labels={"istio-injection": "enabled"})
    c.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(meshed_deployment("web")))
    c.kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=120s")


def test_fresh_install_of_istio_131(fresh_cluster: Any) -> None:
    c = fresh_cluster()
    run = kymamesh(c, "install", "--charts-dir", str(CHARTS_131), "-y", "-o", "json")
    assert run.code == 0, str(run)
    assert run.doc["data"]["istioRelease"] == "1.31.1"
    assert istiod_image(c) == "docker.io/istio/pilot:1.31.1"
    assert istiod_builds(c) == {"1.31"}
    meshed(c, "shop")
    assert pod_images(c, "shop", "istio-proxy") == {"docker.io/istio/proxyv2:1.31.1"}
    assert pod_images(c, "shop", "istio-init") == {"docker.io/istio/proxyv2:1.31.1"}
    assert proxy_limits(c, "shop") == {"1Gi"}
    again, writes = writes_during(
        c, lambda: kymamesh(c, "install", "--charts-dir", str(CHARTS_131), "-y")
    )
    assert again.code == 0, str(again)
    assert writes.total == 0, writes.describe()
    status = kymamesh(c, "status", "-o", "json")
    assert status.code == 0, str(status)
    assert status.doc["data"]["advice"] == []
    assert c.analyze() == []  # istioctl analyze -A: no warning, no error


def test_patch_then_minor_upgrade_in_place(fresh_cluster: Any) -> None:
    """1.30.3 -> 1.30.5 (a patch: routine, the same restarts) -> 1.31.1 (one minor, in
    place), each with --restart-proxies and a re-run that writes nothing; no way back."""
    c = fresh_cluster()
    run = kymamesh(c, "install", "--charts-dir", str(CHARTS), "-y")
    assert run.code == 0, str(run)
    meshed(c, "shop")
    assert pod_images(c, "shop", "istio-proxy") == {"docker.io/istio/proxyv2:1.30.3"}

    for charts, version in ((CHARTS_1305, "1.30.5"), (CHARTS_131, "1.31.1")):
        args = ["install", "--charts-dir", str(charts), "--restart-proxies", "-y", "-o", "json"]
        run = kymamesh(c, *args, "--timeout", "240")
        assert run.code == 0, str(run)
        phase1 = {i["name"]: i for p in run.doc["phases"] for i in p["items"]}
        assert f"-> {version}" in phase1["istiod"]["summary"], phase1["istiod"]
        c.kubectl("rollout", "status", "deployment/web", "-n", "shop", "--timeout=120s")
        assert pod_images(c, "shop", "istio-proxy") == {f"docker.io/istio/proxyv2:{version}"}
        assert istiod_image(c) == f"docker.io/istio/pilot:{version}"
        again, writes = writes_during(
            c, lambda ch=charts: kymamesh(c, "install", "--charts-dir", str(ch), "-y")
        )
        assert again.code == 0, str(again)
        assert writes.total == 0, writes.describe()
    assert c.analyze() == []  # after the in-place upgrades: no warning, no error
    # the minor upgrade named what changes, and how to keep the old behaviour
    assert any("--compatibility-version 1.30" in n for n in run.doc["notes"]), run.doc["notes"]

    back, writes = writes_during(
        c, lambda: kymamesh(c, "install", "--charts-dir", str(CHARTS_1305), "-y", "-o", "json")
    )
    assert back.code == 3 and writes.total == 0, str(back)
    assert "downgrade" in back.doc["errors"][0]["message"]

    kept = kymamesh(
        c, "install", "--charts-dir", str(CHARTS_131), "--compatibility-version", "1.30", "-y"
    )
    assert kept.code == 0, str(kept)
    env = get(c, "deployment", "istiod", "-n", NAMESPACE)["spec"]["template"]["spec"]  # type: ignore[index]
    variables = {e["name"]: e.get("value") for e in env["containers"][0].get("env", [])}
    assert variables.get("PILOT_AUTO_SEND_UNHEALTHY_ENDPOINTS") == "false"


def test_two_minors_by_revisions(fresh_cluster: Any) -> None:
    """1.29 (set up by an earlier kymamesh) -> 1.31 by revisions; in place it is refused."""
    c = fresh_cluster()
    install_as_an_earlier_kymamesh(c, CHARTS_129)
    meshed(c, "shop")
    in_place, writes = writes_during(
        c, lambda: kymamesh(c, "install", "--charts-dir", str(CHARTS_131), "-y", "-o", "json")
    )
    assert in_place.code == 3 and writes.total == 0, str(in_place)
    assert "--revision-based" in in_place.doc["errors"][0]["hint"]

    steps = (  # promote asks nothing (rollback is its way back): it takes no -y
        ("install", "--revision-based", "--charts-dir", str(CHARTS_131), "-y"),
        ("upgrade", "promote"),
        ("upgrade", "finish", "--charts-dir", str(CHARTS_131), "-y"),
    )
    for args in steps:
        run = kymamesh(c, *args, "--timeout", "240")
        assert run.code == 0, str(run)
        again, writes = writes_during(c, lambda a=args: kymamesh(c, *a))
        assert again.code == 0, str(again)
        assert writes.total == 0, (args, writes.describe())
    c.kubectl("rollout", "status", "deployment/web", "-n", "shop", "--timeout=120s")
    assert pod_images(c, "shop", "istio-proxy") == {"docker.io/istio/proxyv2:1.31.1"}
    status = kymamesh(c, "status", "-o", "json")
    assert status.code == 0, str(status)
    assert [d["version"] for d in status.doc["data"]["istiod"]] == ["1.31.1"]
    # after the canary's finish: no warning, no error. istioctl analyzes as revision `default`
    # unless told; the injection webhooks now belong to revision 1-31-1 (the default tag
    # points there), so the analysis names it, or it reports the gateway's `image: auto`
    # as matching no webhook (IST0146) although istiod injects it.
    assert c.analyze("-A", "--revision", "1-31-1") == []


def test_charts_whose_default_hub_is_retired_install_from_the_catalogs(
    fresh_cluster: Any,
) -> None:
    """The published 1.30 charts default to registry.istio.io/release (so do the 1.30
    fixture charts): kymamesh never trusts the chart's hub, so no Pod or Deployment of
    the mesh names that registry."""
    charts = CHARTS
    c = fresh_cluster()
    rendered = c.helm_run("template", "istiod", str(charts / "istiod"), "-n", NAMESPACE)
    assert f'image: "{RETIRED}/pilot:1.30.3"' in rendered.stdout  # the chart's default
    run = kymamesh(c, "install", "--charts-dir", str(charts), "-y")
    assert run.code == 0, str(run)
    meshed(c, "shop")
    images = []
    for kind in ("deployments", "pods"):
        for item in (get(c, kind, "-A") or {"items": []})["items"]:
            spec = item["spec"]["template"]["spec"] if kind == "deployments" else item["spec"]
            for k in [*spec.get("containers", []), *spec.get("initContainers", [])]:
                images.append(k["image"])
    assert not [i for i in images if i.startswith(RETIRED)], images
    assert "docker.io/istio/pilot:1.30.3" in images
    assert "docker.io/istio/proxyv2:1.30.3" in images
