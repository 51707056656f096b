"""The 1.31 fixture charts (tests/fixtures/charts-1.31) on the test cluster: kymamesh installs
them, the cluster runs the 1.31 istiod for their istiod Pod (tests/cluster/podrunner.py picks
the build by the image tag's minor), and that istiod injects a Pod through the charts' 1.31
sidecar template, which takes istio-init's image from `.ProxyInitImage` (a field a 1.30 istiod
does not know)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TestCluster
from tests.support_patch import get_json, kymamesh_json

pytestmark = pytest.mark.cluster

CHARTS_131 = Path(__file__).resolve().parent / "fixtures" / "charts-1.31"
VERSION = "1.31.1"


def test_131_charts_inject_istio_init_from_proxy_init_image(fresh_cluster: Any) -> None:
    c: TestCluster = fresh_cluster()
    # istio-init's image gets its own name, so that it shows which field the template read:
    # .ProxyInitImage is <hub>/<global.proxy_init.image>:<tag>, .ProxyImage the proxy's
    code, doc, stderr = kymamesh_json(
        c,
        "install",
        "--charts-dir",
        str(CHARTS_131),
        "--set",
        "istiod.global.proxy_init.image=proxyv2-init",
        "-y",
    )
    assert code == 0, (doc["errors"], stderr)

    running = json.loads((c.dir / "pods.json").read_text())
    (istiod,) = [p["istiod"] for p in running.values() if p.get("istiod")]
    assert (istiod["image"], istiod["minor"]) == (f"docker.io/istio/pilot:{VERSION}", "1.31")

    c.create_namespace("shop", labels={"istio-injection": "enabled"})
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web", "sidecar.istio.io/inject": "true"}},
        "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]},
    }
    c.kubectl("apply", "-n", "shop", "-f", "-", input=json.dumps(pod))
    injected = get_json(c, "pod", "web", "-n", "shop")
    assert injected is not None
    spec = injected["spec"]
    init = {x["name"]: x["image"] for x in spec.get("initContainers", [])}
    containers = {x["name"]: x["image"] for x in spec["containers"]}
    assert init == {"istio-init": f"docker.io/istio/proxyv2-init:{VERSION}"}, spec
    assert containers["istio-proxy"] == f"docker.io/istio/proxyv2:{VERSION}"
    assert "sidecar.istio.io/status" in injected["metadata"]["annotations"]
