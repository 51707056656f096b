"""Which helm failures are transient faults on the way to the API server (retried, within a
bound) and which are real errors (reported at once): helm's own messages."""

from __future__ import annotations

import pytest
from pyhelm3 import errors
from tenacity import wait_none

from kymamesh.adapters import helm

TRANSIENT = [
    'Error: Kubernetes cluster unreachable: Get "https://127.0.0.1:40313/version": dial tcp '
    "127.0.0.1:40313: connect: connection refused",
    'Error: query: failed to query with labels: Get "https://127.0.0.1:40313/api/v1/namespaces/'
    'istio-system/secrets?labelSelector=name%3Distiod%2Cowner%3Dhelm": unexpected EOF',
    'Error: UPGRADE FAILED: Get "https://127.0.0.1:40313/apis/apps/v1/namespaces/istio-system/'
    'deployments/istiod": read tcp 127.0.0.1:51234->127.0.0.1:40313: read: connection reset by '
    "peer",
    'Error: Get "https://127.0.0.1:40313/api/v1/namespaces/istio-system/secrets": EOF',
    "Error: INSTALLATION FAILED: the server was unable to return a response in the time "
    "allotted, but may still be processing the request (get secrets)",
    'Error: an error on the server ("unknown") has prevented the request from succeeding',
    "Error: the server is currently unable to handle the request (get secrets)",
    "Error: Too Many Requests: please retry later",
    "Error: etcdserver: request timed out",
    "Error: http2: server sent GOAWAY and closed the connection",
    "Error: net/http: TLS handshake timeout",
]

REAL = [
    "Error: release: not found",
    "Error: INSTALLATION FAILED: template: istiod/templates/deployment.yaml:3:4: executing "
    '"istiod/templates/deployment.yaml" at <.Values.x.y>: nil pointer evaluating',
    "Error: UPGRADE FAILED: values don't meet the specifications of the schema(s) in the "
    "following chart(s):\nistiod:\n- pilot.replicaCount: Invalid type. Expected: integer",
    "Error: INSTALLATION FAILED: Chart.yaml file is missing",
    'Error: UPGRADE FAILED: cannot patch "istiod" with kind Deployment: Deployment.apps '
    '"istiod" is invalid: spec.replicas: Invalid value: -1',
    "Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress",
    'Error: INSTALLATION FAILED: deployments.apps "istiod" is forbidden: User "dev" cannot '
    'get resource "deployments"',
]


@pytest.mark.parametrize("message", TRANSIENT)
def test_transient_faults_are_recognised(message: str) -> None:
    assert helm.is_transient(message)


@pytest.mark.parametrize("message", REAL)
def test_real_errors_are_not_taken_for_faults(message: str) -> None:
    assert not helm.is_transient(message)


def failing(messages: list[str], calls: list[int]) -> object:
    def call() -> str:
        calls.append(1)
        if len(calls) <= len(messages):
            raise errors.Error(1, b"", messages[len(calls) - 1].encode())
        return "done"

    return call


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(helm, "wait_exponential", lambda **_: wait_none())


def test_transient_fault_is_retried_until_it_passes() -> None:
    calls: list[int] = []
    assert helm._retrying("reading", failing(TRANSIENT[:2], calls)) == "done"  # type: ignore[arg-type]
    assert len(calls) == 3


def test_retries_are_bounded() -> None:
    calls: list[int] = []
    with pytest.raises(errors.Error, match="connection refused"):
        helm._retrying("reading", failing([TRANSIENT[0]] * 10, calls))  # type: ignore[arg-type]
    assert len(calls) == helm.HELM_ATTEMPTS


def test_real_error_is_not_retried() -> None:
    calls: list[int] = []
    with pytest.raises(errors.Error, match="schema"):
        helm._retrying("installing istiod", failing([REAL[2]], calls))  # type: ignore[arg-type]
    assert len(calls) == 1
