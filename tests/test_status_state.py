"""`status -o json`'s state and conditions, in the spirit of the Kyma Istio module's `Istio`
status: Ready, Processing, Error, Deleting, Warning, with a `Ready` and a
`ProxySidecarRestartSucceeded` condition and a reason each."""

from __future__ import annotations

from typing import Any

from kymamesh.istio import inventory as inv
from kymamesh.istio import meshview
from kymamesh.workflows import status as mesh
from tests.support_inventory import release
from tests.test_status_unit import READY, _outdated_rows, _releases, ours


def _status(**overrides: Any) -> mesh.MeshStatus:
    fields: dict[str, Any] = {
        "namespace": "istio-system",
        "supported": READY[0].version,
        "installed_by": inv.Installer.KYMAMESH,
        "crds": 14,
        "releases": _releases(*ours()),
        "istiods": READY,
        "mtls": mesh.MtlsState("STRICT", "istio-system/default", "istio-system"),
        "steps": [mesh.StepState("mtls-strict", "", True)],
        "namespaces": [],
        "problems": [],
    }
    fields.update(overrides)
    return mesh.MeshStatus(**fields)


def _conditions(st: mesh.MeshStatus) -> dict[str, tuple[str, str]]:
    _, _, conditions = mesh.module_state(st)
    return {c["type"]: (c["status"], c["reason"]) for c in conditions}


def _running(state: str, pod: str = "istiod-1", **more: Any) -> meshview.RunningMesh:
    return meshview.RunningMesh("istio-system", pod, "default", "istio-system/istio", state, **more)


def test_ready() -> None:
    st = _status(mesh_configs=[_running(meshview.APPLIED)])
    assert mesh.module_state(st)[:2] == ("Ready", "Istio is ready")
    assert _conditions(st) == {
        "Ready": ("True", "ReconcileSucceeded"),
        "ProxySidecarRestartSucceeded": ("True", "ProxySidecarRestartSucceeded"),
        "MeshConfigApplied": ("True", "MeshConfigApplied"),
    }
    assert st.to_json()["state"] == "Ready"


def test_the_mesh_config_condition_says_what_istiod_runs() -> None:
    """MeshConfigApplied: False when an istiod rejected or does not run its ConfigMap's
    mesh config, Unknown when one could not be asked or has not read it yet, or none was."""
    diff = meshview.Difference("enableAutoMtls", 0.0, True)
    rejected = _running(meshview.REJECTED_STATE, differences=(diff,), reason="invalid mesh config")
    cases = [
        ([rejected, _running(meshview.APPLIED, "istiod-2")], ("False", "MeshConfigRejected")),
        ([_running(meshview.DIFFERS, differences=(diff,))], ("False", "MeshConfigDiffers")),
        ([_running(meshview.UNCHECKED, reason="no answer within 10s")],
         ("Unknown", "IstiodUnreachable")),
        ([_running(meshview.PENDING, differences=(diff,), age=3.0)],
         ("Unknown", "MeshConfigPending")),
        ([], ("Unknown", "NotChecked")),
    ]  # fmt: skip
    for states, expected in cases:
        st = _status(mesh_configs=states)
        assert _conditions(st)["MeshConfigApplied"] == expected, states
    message = mesh.mesh_config_condition([rejected])["message"]
    assert message.startswith("istiod istio-system/istiod-1 rejected the mesh config")
    assert "enableAutoMtls is 0.0 in the ConfigMap, true in istiod" in message
    doc = _status(mesh_configs=[rejected]).to_json()["meshConfigs"]
    assert doc == [
        {
            "namespace": "istio-system",
            "pod": "istiod-1",
            "revision": "default",
            "configMap": "istio-system/istio",
            "state": "rejected",
            "differences": [{"field": "enableAutoMtls", "configMap": 0.0, "istiod": True}],
            "reason": "invalid mesh config",
        }
    ]


def test_warning_for_outdated_sidecars_and_for_drift() -> None:
    st = _status(outdated=_outdated_rows())
    state, description, _ = mesh.module_state(st)
    assert state == "Warning" and "kymamesh patch --restart-proxies" in description
    assert _conditions(st)["ProxySidecarRestartSucceeded"] == (
        "False",
        "ProxySidecarRestartRequired",
    )
    manual = [{**_outdated_rows()[0], "kind": "Job", "action": "manual"}]
    assert _conditions(_status(outdated=manual))["ProxySidecarRestartSucceeded"] == (
        "False",
        "ProxySidecarManualRestartRequired",
    )
    pending = ["PeerAuthentication/istio-system/default: mode PERMISSIVE -> STRICT"]
    drift = _status(
        steps=[mesh.StepState("mtls-strict", "", False, pending)],
        problems=["patch step mtls-strict is not applied: " + pending[0]],
    )
    assert mesh.module_state(drift)[0] == "Warning"
    assert _conditions(drift)["Ready"] == ("False", "PatchNotApplied")


def test_error_processing_deleting() -> None:
    none = _status(istiods=[], problems=["Istio is not installed: no istiod Deployment"])
    assert mesh.module_state(none)[0] == "Error"
    assert _conditions(none)["Ready"] == ("False", "IstioNotInstalled")
    failed = _status(
        releases=_releases(release("istiod", "istiod", status="failed")),
        problems=["Helm release istio-system/istiod is failed"],
    )
    assert mesh.module_state(failed)[0] == "Error"
    assert _conditions(failed)["Ready"] == ("False", "ReconcileFailed")
    upgrading = _status(
        releases=_releases(release("istiod", "istiod", status="pending-upgrade")),
        problems=["Helm release istio-system/istiod is pending-upgrade"],
    )
    assert mesh.module_state(upgrading)[0] == "Processing"
    going = _status(
        releases=_releases(release("istiod", "istiod", status="uninstalling")),
        problems=["Helm release istio-system/istiod is uninstalling"],
    )
    assert mesh.module_state(going)[0] == "Deleting"
