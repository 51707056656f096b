"""The cluster adapter's `istiod_debug`: istiod's `/debug/*` views of every ready istiod Pod,
read through a port-forward to each Pod (as istioctl does), from the real istiod of the test
cluster; a bounded wait and an error that names the Pod and what failed."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

import kymamesh.adapters.cluster as cluster_module
from kymamesh.adapters.cluster import Cluster
from kymamesh.errors import IstiodUnreachableError
from tests.support_lifecycle import NAMESPACE, get, install

READS = ("get", "list", "watch")


@pytest.fixture
def adapter(cluster: Any) -> Iterator[Cluster]:
    install(cluster)
    cl = Cluster.connect(str(cluster.kubeconfig))
    yield cl
    cl.close()


def _ready_istiods(cluster: Any) -> dict[str, dict[str, Any]]:
    doc = get(cluster, "pods", "-n", NAMESPACE, "-l", "app=istiod") or {"items": []}
    return {
        p["metadata"]["name"]: p
        for p in doc["items"]
        if not p["metadata"].get("deletionTimestamp")
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (p.get("status") or {}).get("conditions") or []
        )
    }


def _wait_ready(cluster: Any, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while name not in _ready_istiods(cluster):
        assert time.monotonic() < deadline, f"istiod Pod {name} not ready again"
        time.sleep(0.3)


def test_every_ready_istiod_answers_with_the_mesh_config_it_runs(
    cluster: Any, adapter: Cluster
) -> None:
    pods = _ready_istiods(cluster)
    mark = cluster.audit.mark()
    answers = adapter.istiod_debug("/debug/mesh")
    assert sorted(answers) == sorted(pods)
    configmap = get(cluster, "configmap", "istio", "-n", NAMESPACE)
    assert configmap is not None
    written = yaml.safe_load(configmap["data"]["mesh"])
    for body in answers.values():
        running = json.loads(body)
        assert running["enableAutoMtls"] is True
        assert running["rootNamespace"] == written.get("rootNamespace", NAMESPACE)
        assert running["defaultConfig"]["tracing"] == json.loads(
            json.dumps(written["defaultConfig"]["tracing"])
        )
    # of one revision: the default one's Pods carry istio.io/rev=default
    assert sorted(adapter.istiod_debug("/debug/mesh", revision="default")) == sorted(pods)
    # through pods/portforward (the service proxy would be refused on a real cluster: 401)
    events = cluster.audit.writes_since(mark, verbs=READS, username=cluster.admin_user).events
    uris = [e["requestURI"] for e in events]
    forwards = {
        e["auditID"] for e in events if e["requestURI"].endswith("/portforward?ports=15014")
    }
    assert len(forwards) == 2 * len(pods), uris  # one per Pod in each of the two calls
    assert not [u for u in uris if "/proxy" in u], uris


def test_other_debug_views_answer_too(adapter: Cluster) -> None:
    """The views multi-cluster reads: istiod's clusters and its service registry."""
    for path in ("/debug/clusterz", "/debug/registryz"):
        for pod, body in adapter.istiod_debug(path).items():
            assert isinstance(json.loads(body), list), (pod, path, body[:200])


def test_no_ready_istiod_of_a_revision_is_a_clear_error(adapter: Cluster) -> None:
    with pytest.raises(IstiodUnreachableError) as err:
        adapter.istiod_debug("/debug/mesh", revision="1-99-0")
    assert str(err.value) == "no ready istiod Pod in istio-system of revision 1-99-0"
    assert "kubectl -n istio-system get pods -l app=istiod" in (err.value.hint or "")
    with pytest.raises(IstiodUnreachableError, match=r"no ready istiod Pod in nowhere$"):
        adapter.istiod_debug("/debug/mesh", namespace="nowhere")
    with pytest.raises(ValueError, match="must start with '/'"):
        adapter.istiod_debug("debug/mesh")


def test_a_view_istiod_does_not_serve_names_the_pod_and_the_answer(
    cluster: Any, adapter: Cluster
) -> None:
    (pod, *_) = sorted(_ready_istiods(cluster))
    with pytest.raises(IstiodUnreachableError) as err:
        adapter.istiod_debug("/debug/no-such-view")
    assert f"Pod istio-system/{pod}: GET /debug/no-such-view on port 15014: HTTP 404" in str(
        err.value
    )
    assert err.value.failures[pod].endswith("HTTP 404: 404 page not found")
    assert err.value.answers == {}


def test_a_pod_the_kubelet_cannot_forward_to_is_named_with_the_kubelets_reason(
    cluster: Any, adapter: Cluster
) -> None:
    """The test cluster's kubelet (kwok) forwards what podrunner's PortForward lists: without
    it, the kubelet's refusal comes back on the port's error channel, named per Pod."""
    (pod, *_) = sorted(_ready_istiods(cluster))
    saved = json.loads(
        cluster.kubectl(
            "-n", NAMESPACE, "get", "portforwards.kwok.x-k8s.io", pod, "-o", "json"
        ).stdout
    )
    cluster.kubectl("-n", NAMESPACE, "delete", "portforwards.kwok.x-k8s.io", pod)
    try:
        time.sleep(1)  # kwok's watch sees it gone
        with pytest.raises(IstiodUnreachableError) as err:
            adapter.istiod_debug("/debug/mesh")
        assert f"Pod istio-system/{pod}: GET /debug/mesh on port 15014: " in str(err.value)
        assert "no forward found for port 15014" in err.value.failures[pod], err.value.failures
    finally:
        for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields", "generation"):
            saved["metadata"].pop(key, None)
        cluster.kubectl("apply", "-f", "-", input=json.dumps(saved))
    time.sleep(1)
    assert pod in adapter.istiod_debug("/debug/mesh")


def test_an_istiod_that_does_not_answer_is_given_up_on_in_bounded_time(
    cluster: Any, adapter: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """istiod stopped (SIGSTOP): the port-forward connects, the request gets no answer."""
    (pod, *_) = sorted(_ready_istiods(cluster))
    pods = json.loads((cluster.dir / "pods.json").read_text())
    pid = next(p["pid"] for p in pods.values() if p["name"] == pod)
    monkeypatch.setattr(cluster_module, "ISTIOD_DEBUG_TIMEOUT_S", 2.0)
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(IstiodUnreachableError) as err:
            adapter.istiod_debug("/debug/mesh")
        took = time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    assert took < 6, took
    why = err.value.failures[pod]
    assert "timed out" in why or "no answer within 2s" in why, why
    _wait_ready(cluster, pod)
