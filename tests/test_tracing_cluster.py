"""Step `tracing-kyma-zipkin` on the test cluster: tracing is active (the provider is selected
in `defaultProviders.tracing`), a provider that exists but is not selected is reported as not
applied by `status` and repaired by `patch`, the OpenTelemetry provider can be chosen instead,
and every converged re-run writes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support_patch import ensure_istio, get_json, kymamesh_json

STEP = "tracing-kyma-zipkin"
MESH_CONFIGMAP = ("configmap", "istio", "-n", "istio-system")


@pytest.fixture
def istio(cluster: Any, tmp_path: Path) -> Iterator[Any]:
    ensure_istio(cluster)
    yield cluster
    # leave the cluster with the default tracer for the tests after this one
    back = tmp_path / "zipkin.yaml"
    back.write_text(yaml.safe_dump({"steps": {STEP: {"tracer": "zipkin"}}}))
    code, result, stderr = kymamesh_json(cluster, "patch", "-y", "--config", str(back))
    assert code == 0, (result, stderr)


def mesh(cluster: Any) -> dict[str, Any]:
    cm = get_json(cluster, *MESH_CONFIGMAP)
    assert cm is not None
    return dict(yaml.safe_load(cm["data"]["mesh"]))


def put_mesh(cluster: Any, doc: dict[str, Any]) -> None:
    patch = {"data": {"mesh": yaml.safe_dump(doc)}}
    cluster.kubectl("patch", *MESH_CONFIGMAP, "--type=merge", "-p", json.dumps(patch))


def step_state(cluster: Any) -> tuple[int, dict[str, Any]]:
    code, result, _ = kymamesh_json(cluster, "status")
    steps = {s["name"]: s for s in result["data"]["steps"]}
    return code, steps[STEP]


def step_item(result: dict[str, Any]) -> dict[str, Any]:
    items = {i["name"]: i for p in result["phases"] for i in p["items"]}
    return dict(items[STEP])


def providers(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in doc.get("extensionProviders") or []}


def test_tracing_active_and_an_unselected_provider_is_not_applied(istio: Any) -> None:
    code, result, stderr = kymamesh_json(istio, "patch", "-y")
    assert code == 0, (result, stderr)
    doc = mesh(istio)
    assert doc["defaultProviders"]["tracing"] == ["kyma-zipkin"]
    assert providers(doc)["kyma-zipkin"]["zipkin"] == {
        "service": "zipkin.kyma-system.svc.cluster.local",
        "port": 9411,
    }
    assert "istio-system:9411" not in yaml.safe_dump(doc)
    assert step_state(istio)[1]["applied"] is True

    # The provider stays, but nothing selects it: tracing is off, and status says so.
    doc["defaultProviders"].pop("tracing")
    put_mesh(istio, doc)
    code, state = step_state(istio)
    assert code == 7
    assert state["applied"] is False
    assert state["pending"] == [
        "ConfigMap/istio-system/istio key mesh: "
        "defaultProviders.tracing kyma-zipkin (was none): tracing is active"
    ]

    code, result, stderr = kymamesh_json(istio, "patch", "-y")
    assert code == 0, (result, stderr)
    assert step_item(result)["outcome"] == "changed"
    assert mesh(istio)["defaultProviders"]["tracing"] == ["kyma-zipkin"]
    with istio.audit.counting() as writes:
        code, again, _ = kymamesh_json(istio, "patch", "-y")
    assert code == 0
    assert step_item(again)["outcome"] == "unchanged"
    assert writes.total == 0, writes.describe()
    assert step_state(istio)[1]["applied"] is True


def test_opentelemetry_chosen_by_the_step_params(istio: Any, tmp_path: Path) -> None:
    config = tmp_path / "otel.yaml"
    otel = {
        "tracer": "opentelemetry",
        "opentelemetry": {"service": "otel-collector.kyma-system.svc.cluster.local", "port": 4318},
    }
    config.write_text(yaml.safe_dump({"steps": {STEP: otel}}))
    code, result, stderr = kymamesh_json(istio, "patch", "-y", "--config", str(config))
    assert code == 0, (result, stderr)
    assert step_item(result)["outcome"] == "changed"
    doc = mesh(istio)
    assert doc["defaultProviders"]["tracing"] == ["kyma-opentelemetry"]
    found = providers(doc)
    assert found["kyma-opentelemetry"] == {
        "name": "kyma-opentelemetry",
        "opentelemetry": {"service": "otel-collector.kyma-system.svc.cluster.local", "port": 4318},
    }
    assert "kyma-zipkin" not in found
    assert "istio-system:9411" not in yaml.safe_dump(doc)

    # remembered: a plain re-run and status keep the choice, and write nothing
    with istio.audit.counting() as writes:
        code, again, _ = kymamesh_json(istio, "patch", "-y")
        assert code == 0
        state_code, state = step_state(istio)
    assert step_item(again)["outcome"] == "unchanged"
    assert writes.total == 0, writes.describe()
    assert state["applied"] is True, state
    assert state_code == 0
