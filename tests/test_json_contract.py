"""The `-o json` result is a contract for CI: pin its shape and the exit codes."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from kymamesh.cli.app import app
from kymamesh.errors import ExitCode, InsecureValuesError
from kymamesh.istio.release import catalog
from kymamesh.output import ItemResult, Outcome, Result

RESULT_KEYS = {
    "schema",
    "command",
    "status",
    "exitCode",
    "dryRun",
    "changed",
    "phases",
    "errors",
    "notes",
    "data",
}
ITEM_KEYS = {"name", "outcome", "summary", "changes", "diff", "durationSeconds", "error"}


def assert_result_shape(doc: dict[str, object]) -> None:
    """Shared with the cluster tests: every JSON result has exactly this shape."""
    assert set(doc) == RESULT_KEYS
    assert doc["schema"] == "kymamesh.result/v1"
    assert doc["status"] in ("ok", "refused", "failed", "unhealthy")
    assert isinstance(doc["phases"], list)
    for phase in doc["phases"]:
        assert set(phase) == {"name", "changed", "items"}
        for item in phase["items"]:
            assert set(item) == ITEM_KEYS
            assert item["outcome"] in {o.value for o in Outcome}
    for error in doc["errors"]:  # type: ignore[attr-defined]
        assert set(error) == {"code", "message", "hint"}


def test_result_shape_is_pinned() -> None:
    result = Result(command="install")
    result.phase("phase 1: Istio charts").items.append(
        ItemResult("istiod", Outcome.CHANGED, "install istiod 1.30.3", ["install istiod 1.30.3"])
    )
    doc = json.loads(result.render_json())
    assert_result_shape(doc)
    assert doc["status"] == "ok" and doc["changed"] is True and doc["exitCode"] == 0


def test_failed_result_carries_error_and_code() -> None:
    result = Result(command="install")
    result.fail(InsecureValuesError("refusing insecure values", hint="remove them"))
    doc = json.loads(result.render_json())
    assert_result_shape(doc)
    assert doc["status"] == "refused"
    assert doc["exitCode"] == 3
    assert doc["errors"] == [
        {"code": "insecure-values", "message": "refusing insecure values", "hint": "remove them"}
    ]


def test_exit_codes_are_stable() -> None:
    assert {c.name: int(c) for c in ExitCode} == {
        "OK": 0,
        "FAILURE": 1,
        "USAGE": 2,
        "PRECONDITION": 3,
        "TIMEOUT": 4,
        "PARTIAL": 5,
        "NEEDS_CONFIRMATION": 6,
        "UNHEALTHY": 7,
        "LOCK_LOST": 8,
        "INTERRUPTED": 130,
    }


def test_insecure_values_refused_before_touching_a_cluster(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """No kubeconfig exists here: the refusal must come before any connection attempt."""
    missing = tmp_path / "no-kubeconfig"
    result = CliRunner().invoke(
        app,
        [
            "install",
            "--kubeconfig",
            str(missing),
            "--set",
            "istiod.meshConfig.enableAutoMtls=false",
            "-o",
            "json",
        ],
    )
    assert result.exit_code == ExitCode.PRECONDITION
    doc = json.loads(result.stdout)
    assert_result_shape(doc)
    assert doc["errors"][0]["code"] == "insecure-values"
    assert "istiod.meshConfig.enableAutoMtls" in doc["errors"][0]["message"]


def test_version_json() -> None:
    result = CliRunner().invoke(app, ["version", "-o", "json"])
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert info["istio"] == str(catalog().resolve(None).version)
    assert info["supportedIstio"] == [str(line.latest) for line in catalog().lines]
