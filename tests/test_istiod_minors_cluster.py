"""The test cluster runs the istiod of the minor under test: one `pilot-discovery` build per
Istio minor, chosen from the istiod Pod's image tag (tests/cluster/podrunner.py), and the
tools built beside it (istioctl of the newest minor, the OCI registry) on the cluster's PATH."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import ANALYZE_FOUND_ISSUES, TestCluster, testcluster

pytestmark = pytest.mark.cluster

DIGEST = "sha256:" + "0" * 64


def istiod_like(name: str, image: str) -> dict[str, Any]:
    """A Deployment whose Pod is shaped like an istiod Pod: podrunner runs pilot-discovery."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "discovery",
                            "image": image,
                            "args": ["discovery", "--log_output_level=default:info"],
                            "ports": [{"containerPort": 8080}],
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
                        }
                    ]
                },
            },
        },
    }


def argv0(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return ""


def test_istiod_pods_run_the_build_of_their_image_minor(
    cluster: TestCluster, namespace: str
) -> None:
    cases = {  # Deployment -> (image, the build that must run it)
        "istiod-131": ("docker.io/istio/pilot:1.31.1", "1.31"),
        "istiod-130": (f"localhost:5000/istio/pilot:1.30.3-distroless@{DIGEST}", "1.30"),
        "istiod-129": ("gcr.io/istio-release/pilot:1.29.0", "1.30"),  # no 1.29 build: nearest
    }
    for name, (image, _) in cases.items():
        cluster.kubectl(
            "apply", "-n", namespace, "-f", "-", input=json.dumps(istiod_like(name, image))
        )
    binaries = testcluster.istiod_binaries(cluster.bin_dir)
    assert sorted(binaries) == ["1.30", "1.31"]

    def running() -> dict[str, dict[str, Any]] | None:
        pods = json.loads((cluster.dir / "pods.json").read_text())
        mine = {
            p["name"].rsplit("-", 2)[0]: p for p in pods.values() if p["namespace"] == namespace
        }
        if set(mine) != set(cases):
            return None
        if any(not p["pid"] or argv0(p["pid"]) != p["istiod"]["binary"] for p in mine.values()):
            return None  # not started yet (or between restarts)
        return mine

    pods = cluster.wait_for(running, 60, "pilot-discovery for the three Pods")
    for name, (image, minor) in cases.items():
        ran = pods[name]["istiod"]
        assert ran["image"] == image
        assert ran["minor"] == minor, ran
        assert ran["binary"] == str(binaries[minor]), ran
        assert argv0(pods[name]["pid"]) == str(binaries[minor])
        first = (cluster.dir / "logs" / f"pod-{namespace}-{pods[name]['name']}.log").read_text()
        assert first.startswith(f"podrunner: {ran['why']} ({binaries[minor]})"), first[:300]
    assert pods["istiod-129"]["istiod"]["image_minor"] == "1.29"
    assert "Istio 1.29, which has no build here" in pods["istiod-129"]["istiod"]["why"]


def test_each_istiod_build_reports_its_minor(cluster: TestCluster) -> None:
    for minor, binary in testcluster.istiod_binaries(cluster.bin_dir).items():
        out = subprocess.run(
            [str(binary), "version"], capture_output=True, text=True, check=True, timeout=60
        ).stdout
        assert f'Version:"{testcluster.ISTIO_BUILDS[minor].version}"' in out, out
        assert f'"{minor}-dev+' in out


def test_istioctl_and_the_registry_are_on_the_cluster_path(cluster: TestCluster) -> None:
    path = cluster.env["PATH"]
    istioctl = shutil.which("istioctl", path=path)
    assert istioctl == str(cluster.bin_dir / "istioctl")
    assert shutil.which(testcluster.REGISTRY_BINARY, path=path)
    out = subprocess.run(
        ["istioctl", "version", "--remote=false"],
        env=cluster.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert testcluster.ISTIO_BUILDS[testcluster.ISTIOCTL_MINOR].version in out
    env_file = (cluster.dir / "env").read_text()
    assert str(cluster.bin_dir) in env_file


def test_istioctl_analyze_reads_the_test_cluster(cluster: TestCluster, namespace: str) -> None:
    """`istioctl analyze` against the cluster: a Service port named outside Istio's naming
    convention (IST0118, Info) and an unknown Istio annotation (IST0108, Warning) are found,
    so analyze really read the cluster's objects; the threshold filters as asked."""
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "annotations": {"sidecar.istio.io/nonsense": "1"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "foo", "port": 80}]},
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(svc))
    origin = f"Service {namespace}/web"
    info = {m["code"] for m in cluster.analyze("-n", namespace, threshold="Info")
            if m["origin"] == origin}  # fmt: skip
    assert {"IST0118", "IST0108"} <= info, info
    warnings = [m for m in cluster.analyze("-n", namespace) if m["origin"] == origin]
    assert [(m["code"], m["level"]) for m in warnings] == [("IST0108", "Warning")], warnings
    # exit 79 when a message reaches --failure-threshold (Error unless told)
    assert cluster.istioctl("analyze", "-n", namespace).returncode == 0
    failed = cluster.istioctl("analyze", "-n", namespace, "--failure-threshold", "Warning",
                              check=False)  # fmt: skip
    assert failed.returncode == ANALYZE_FOUND_ISSUES, failed.stderr
