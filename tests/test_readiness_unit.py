"""Readiness reasons: what a timed-out wait says about each object (pure logic)."""

from __future__ import annotations

from kymamesh.adapters.cluster import Ref, not_ready_reason

GATEWAY = Ref("apps/v1", "Deployment", "istio-ingressgateway", "istio-system")


def _deployment(status: dict, replicas: int = 1) -> dict:
    return {"metadata": {"generation": 1}, "spec": {"replicas": replicas}, "status": status}


def test_a_refused_pod_is_named_with_the_refusal() -> None:
    message = (
        'admission webhook "object.sidecar-injector.istio.io" denied the request: '
        "no ready endpoint for Service istio-system/istiod port 443"
    )
    dep = _deployment(
        {
            "observedGeneration": 1,
            "conditions": [
                {"type": "Available", "status": "False"},
                {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "reason": "FailedCreate",
                    "message": message,
                },
            ],
        }
    )
    assert not_ready_reason(GATEWAY, dep) == f"0 of 1 replicas updated; FailedCreate: {message}"


def test_a_cleared_replica_failure_is_not_reported() -> None:
    dep = _deployment(
        {
            "observedGeneration": 1,
            "conditions": [{"type": "ReplicaFailure", "status": "False", "reason": "x"}],
        }
    )
    assert not_ready_reason(GATEWAY, dep) == "0 of 1 replicas updated"


def test_ready_and_unobserved_deployments() -> None:
    ready = _deployment({"observedGeneration": 1, "updatedReplicas": 2, "availableReplicas": 2}, 2)
    assert not_ready_reason(GATEWAY, ready) is None
    unobserved = not_ready_reason(GATEWAY, _deployment({}))
    assert unobserved == "rollout not yet observed by its controller"
    assert not_ready_reason(GATEWAY, None) == "not found"


def test_a_webhook_denial_is_an_answer_and_unreachable_webhooks_are_not() -> None:
    from kymamesh.errors import ApiError, ClusterUnreachableError
    from kymamesh.workflows.pipeline import webhook_denial

    denied = 'admission webhook "object.sidecar-injector.istio.io" denied the request: x'
    assert webhook_denial(ApiError(f"refused (400): {denied}", 400))
    assert webhook_denial(ApiError(f"refused (403): {denied}", 403))
    not_yet = [
        ApiError('Internal error: failed calling webhook "x": connection refused', 500),
        ApiError('failed calling webhook "x": no endpoints available for service', 500),
        ApiError("failed calling webhook: x509: certificate signed by unknown authority", 500),
        ApiError("failed calling webhook: context deadline exceeded", 504),
        ApiError("the server is currently unable to handle the request", 503),
        ApiError(f"too many requests {denied}", 429),
        ClusterUnreachableError("cannot reach the Kubernetes API"),
    ]
    for exc in not_yet:
        assert not webhook_denial(exc if isinstance(exc, ApiError) else ApiError(str(exc))), exc


def _istiod(image: str) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "istiod", "namespace": "istio-system", "labels": {"app": "istiod"}},
        "spec": {
            "selector": {"matchLabels": {"app": "istiod", "istio": "pilot"}},
            "template": {"spec": {"containers": [{"name": "discovery", "image": image}]}},
        },
    }


def _istiod_pod(name: str, image: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "istio-system",
            "labels": {"app": "istiod", "istio": "pilot"},
        },
        "spec": {"containers": [{"name": "discovery", "image": image}]},
    }


def test_older_istiod_pods_are_those_of_another_image() -> None:
    from kymamesh.istio.controlplane import older_istiod_pods

    new, old = "docker.io/istio/pilot:1.31.1", "docker.io/istio/pilot:1.30.5"
    pods = [_istiod_pod("istiod-b", new), _istiod_pod("istiod-a", old)]
    assert older_istiod_pods(_istiod(new), pods) == ["istiod-a"]
    assert older_istiod_pods(_istiod(new), pods[:1]) == []
    assert older_istiod_pods(_istiod(old), pods) == ["istiod-b"]  # a rollback's are too


def test_a_denial_counts_only_once_older_istiod_pods_are_gone(monkeypatch) -> None:
    """During an upgrade the outgoing istiod Pods render the new injection template with
    the old istiod and deny: the wait goes on until they are gone, then the denial (if it
    stays) is the answer."""
    import time

    import pytest

    from kymamesh.adapters.cluster import Ref
    from kymamesh.errors import ApiError, PreconditionError
    from kymamesh.istio import revisions
    from kymamesh.workflows import pipeline
    from tests.support_fake_cluster import FakeCluster, run_context

    new, old = "docker.io/istio/pilot:1.31.1", "docker.io/istio/pilot:1.30.5"
    cluster = FakeCluster()
    cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}})
    cluster.create(_istiod(new))
    cluster.create(_istiod_pod("istiod-new", new))
    cluster.create(_istiod_pod("istiod-old", old))
    denied = 'admission webhook "object.sidecar-injector.istio.io" denied the request: template'
    calls: list[float] = []

    def probe(_cluster: object, _revision: str, _namespace: str) -> str | None:
        calls.append(time.monotonic())
        if len(calls) == 6:  # the outgoing Pod goes
            cluster.delete(Ref("v1", "Pod", "istiod-old", "istio-system"))
        raise ApiError(f"refused (400): {denied}", 400)

    monkeypatch.setattr(revisions, "probe_injection", probe)
    monkeypatch.setattr(pipeline, "DENIAL_SETTLE_S", 0.05)
    ctx = run_context(cluster, command="install")
    with pytest.raises(PreconditionError) as caught:
        pipeline._wait_injector(ctx, "istio-system", "default", timeout=60)
    assert "answers, and refuses Pods" in caught.value.message
    assert len(calls) >= 6  # not before the older Pod was gone (else at the 2nd)
