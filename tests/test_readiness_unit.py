"""Readiness reasons: what a timed-out wait says about each object (pure logic)."""

from __future__ import annotations

from kymamesh.cluster import Ref, not_ready_reason

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
