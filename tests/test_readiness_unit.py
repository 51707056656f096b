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
