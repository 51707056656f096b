"""`status` asks each istiod for the mesh config it runs (the real istiod of the test cluster):
a mesh config written behind kymamesh's back that istiod rejects makes the mesh unhealthy,
naming the istiod Pod and the field; `kymamesh install` writes a valid one again; an istiod
that cannot be asked is reported as not checked, as a condition too."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.support_lifecycle import CHARTS, NAMESPACE, Run, get, install, kymamesh

READY = "Ready"


def _status(cluster: Any) -> Run:
    run = kymamesh(cluster, "status", "-o", "json")
    assert run.code in (0, 7), str(run)
    return run


def _until(cluster: Any, done: Callable[[Run], bool], timeout: float = 45) -> Run:
    """`status` again until `done` (istiod reads a changed ConfigMap within a few seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        run = _status(cluster)
        if done(run) or time.monotonic() > deadline:
            return run
        time.sleep(1)


def _condition(run: Run) -> dict[str, str]:
    conditions = run.doc["data"]["conditions"]
    return next(c for c in conditions if c["type"] == "MeshConfigApplied")


def _istiod_pods(cluster: Any) -> list[str]:
    doc = get(cluster, "pods", "-n", NAMESPACE, "-l", "app=istiod") or {"items": []}
    return sorted(p["metadata"]["name"] for p in doc["items"])


def _put_mesh(cluster: Any, mesh: dict[str, Any]) -> None:
    patch = json.dumps({"data": {"mesh": yaml.safe_dump(mesh)}})
    cluster.kubectl("patch", "configmap", "istio", "-n", NAMESPACE, "--type=merge", "-p", patch)


@pytest.fixture
def mesh(cluster: Any) -> Iterator[dict[str, Any]]:
    """Installed and healthy; the ConfigMap's mesh config as install left it (put back after)."""
    install(cluster)
    cm = get(cluster, "configmap", "istio", "-n", NAMESPACE)
    assert cm is not None
    original = cm["data"]["mesh"]
    yield yaml.safe_load(original)
    patch = json.dumps({"data": {"mesh": original}})
    cluster.kubectl("patch", "configmap", "istio", "-n", NAMESPACE, "--type=merge", "-p", patch)


def test_a_healthy_install_runs_its_mesh_config_and_stays_healthy(
    cluster: Any, mesh: dict[str, Any]
) -> None:
    run = _until(cluster, lambda r: r.code == 0)
    assert run.code == 0, str(run)
    data = run.doc["data"]
    pods = _istiod_pods(cluster)
    assert [m["pod"] for m in data["meshConfigs"]] == pods
    assert {m["state"] for m in data["meshConfigs"]} == {"applied"}
    assert _condition(run)["status"] == "True"
    text = kymamesh(cluster, "status")
    assert f"mesh config: istiod {NAMESPACE}/{pods[0]} runs the mesh config of ConfigMap" in (
        text.stdout
    )
    again = _status(cluster)  # nothing changes by asking
    assert again.code == 0 and again.doc["data"]["meshConfigs"] == data["meshConfigs"]


@pytest.mark.parametrize(
    ("case", "field"),
    [
        # passes kymamesh's security rules; istiod cannot read a number as a duration
        ({"protocolDetectionTimeout": 5}, "protocolDetectionTimeout"),
        ({"enableAutoMtls": 0.0}, "enableAutoMtls"),
    ],
)
def test_a_mesh_config_istiod_rejected_is_unhealthy_and_install_writes_a_valid_one(
    cluster: Any, mesh: dict[str, Any], case: dict[str, Any], field: str
) -> None:
    _put_mesh(cluster, {**mesh, **case})
    run = _until(cluster, lambda r: _condition(r)["status"] == "False")
    assert run.code == 7, str(run)
    pods = _istiod_pods(cluster)
    lines = [p for p in run.doc["data"]["problems"] if p.startswith("istiod ")]
    assert len(lines) == len(pods), run.doc["data"]["problems"]
    for pod, line in zip(pods, lines, strict=True):
        assert line.startswith(
            f"istiod {NAMESPACE}/{pod} rejected the mesh config of ConfigMap {NAMESPACE}/istio"
        ), line
        assert f"{field} is {json.dumps(case[field])} in the ConfigMap" in line
        assert "invalid mesh config, using last known state" in line  # istiod's own words
        assert "re-run `kymamesh install`" in line
        assert f"kubectl -n {NAMESPACE} logs {pod}" in line
    states = run.doc["data"]["meshConfigs"]
    assert {m["state"] for m in states} == {"rejected"}
    assert [d["field"] for d in states[0]["differences"]] == [field]
    assert _condition(run)["reason"] == "MeshConfigRejected"
    assert run.doc["data"]["state"] == "Error"
    text = kymamesh(cluster, "status")
    assert text.code == 7 and f"rejected the mesh config of ConfigMap {NAMESPACE}/istio" in (
        text.stdout
    )

    fixed = kymamesh(cluster, "install", "--charts-dir", str(CHARTS), "-y", "-o", "json")
    assert fixed.code == 0, str(fixed)
    istiod_item = next(i for p in fixed.doc["phases"] for i in p["items"] if i["name"] == "istiod")
    assert istiod_item["outcome"] == "changed", istiod_item
    assert "holds a mesh config istiod cannot read" in istiod_item["summary"]
    healthy = _until(cluster, lambda r: r.code == 0)
    assert healthy.code == 0, str(healthy)
    assert {m["state"] for m in healthy.doc["data"]["meshConfigs"]} == {"applied"}
    cm = get(cluster, "configmap", "istio", "-n", NAMESPACE)
    assert cm is not None and yaml.safe_load(cm["data"]["mesh"]) == mesh


def test_an_istiod_that_cannot_be_asked_is_not_checked_rather_than_healthy(
    cluster: Any, mesh: dict[str, Any]
) -> None:
    """Its port-forward refused (the test cluster's kubelet forwards nothing for it)."""
    (pod, *_) = _istiod_pods(cluster)
    kind = "portforwards.kwok.x-k8s.io"
    saved = json.loads(cluster.kubectl("-n", NAMESPACE, "get", kind, pod, "-o", "json").stdout)
    cluster.kubectl("-n", NAMESPACE, "delete", kind, pod)
    try:
        run = _until(cluster, lambda r: _condition(r)["status"] == "Unknown", timeout=15)
    finally:
        for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields", "generation"):
            saved["metadata"].pop(key, None)
        cluster.kubectl("apply", "-f", "-", input=json.dumps(saved))
    assert run.code == 7, str(run)
    condition = _condition(run)
    assert condition["reason"] == "IstiodUnreachable", condition
    line = next(p for p in run.doc["data"]["problems"] if p.startswith("could not check"))
    assert f"could not check the mesh config istiod {NAMESPACE}/{pod} runs" in line
    assert "no forward found for port 15014" in line  # what the kubelet said
    state = next(m for m in run.doc["data"]["meshConfigs"] if m["pod"] == pod)
    assert state["state"] == "unchecked"
    assert _until(cluster, lambda r: r.code == 0, timeout=15).code == 0
