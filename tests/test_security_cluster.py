"""Security values on the test cluster: every spelling of "off" refused with zero writes, a null
that falls back to istiod's secure default accepted, and `status` judging the live mesh config."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.support_lifecycle import CHARTS, NAMESPACE, get, install, kymamesh, writes_during

AUTO_MTLS = "istiod.meshConfig.enableAutoMtls"


def _mesh(cluster: Any) -> dict[str, Any]:
    cm = get(cluster, "configmap", "istio", "-n", NAMESPACE)
    assert cm is not None
    return dict(yaml.safe_load(cm["data"]["mesh"]))


def _put_mesh(cluster: Any, text: str) -> None:
    patch = json.dumps({"data": {"mesh": text}})
    cluster.kubectl("patch", "configmap", "istio", "-n", NAMESPACE, "--type=merge", "-p", patch)


@contextmanager
def _mesh_edited(cluster: Any, **changes: Any) -> Iterator[None]:
    """The live mesh config with `changes` (as a user's `kubectl edit` would), restored after."""
    cm = get(cluster, "configmap", "istio", "-n", NAMESPACE)
    assert cm is not None
    original = cm["data"]["mesh"]
    _put_mesh(cluster, yaml.safe_dump({**yaml.safe_load(original), **changes}))
    try:
        yield
    finally:
        _put_mesh(cluster, original)


def test_every_spelling_of_auto_mtls_off_is_refused_with_zero_writes(
    cluster: Any, tmp_path: Path
) -> None:
    install(cluster)
    attempts: list[tuple[str, ...]] = [
        ("--set", f"{AUTO_MTLS}={spelling}") for spelling in ("0", "no", "off", "False", "")
    ]
    for spelling in ('"no"', "0", "off", "False", '"false"'):
        values = tmp_path / f"values-{len(attempts)}.yaml"
        values.write_text(f"istiod:\n  meshConfig:\n    enableAutoMtls: {spelling}\n")
        attempts.append(("-f", str(values)))
    for attempt in attempts:
        run, writes = writes_during(
            cluster,
            lambda a=attempt: kymamesh(  # type: ignore[misc]
                cluster, "install", "--charts-dir", str(CHARTS), *a, "-y", "-o", "json"
            ),
        )
        assert run.code == 3, (attempt, str(run))
        error = run.doc["errors"][0]
        assert error["code"] == "insecure-values", attempt
        assert "istiod.meshConfig.enableAutoMtls" in error["message"], attempt
        assert "reads as off" in error["message"], attempt
        assert error["hint"], attempt
        assert writes.total == 0, (attempt, writes.by_user_agent)


def test_null_falls_back_to_istiods_default_and_status_stays_healthy(cluster: Any) -> None:
    install(cluster)
    try:
        run = kymamesh(
            cluster, "install", "--charts-dir", str(CHARTS), "--set", f"{AUTO_MTLS}=null", "-y"
        )
        assert run.code == 0, str(run)
        assert _mesh(cluster).get("enableAutoMtls") is None  # istiod's default: on
        status = kymamesh(cluster, "status", "-o", "json")
        assert status.code == 0, status.doc["data"]["problems"]
    finally:
        install(cluster)
    assert _mesh(cluster)["enableAutoMtls"] is True


def test_status_calls_a_mesh_with_auto_mtls_off_unhealthy(cluster: Any) -> None:
    install(cluster)
    for off in (False, "no", 0):
        with _mesh_edited(cluster, enableAutoMtls=off):
            run, writes = writes_during(cluster, lambda: kymamesh(cluster, "status", "-o", "json"))
            assert writes.total == 0
            assert run.code == 7, (off, str(run))
            problems = run.doc["data"]["problems"]
            assert [p for p in problems if "enableAutoMtls" in p and "reads as off" in p], problems
    with _mesh_edited(cluster, meshMTLS={"minProtocolVersion": "TLSV1_1"}):
        run = kymamesh(cluster, "status", "-o", "json")
        assert run.code == 7
        assert [p for p in run.doc["data"]["problems"] if "minProtocolVersion" in p]
    run = kymamesh(cluster, "status", "-o", "json")
    assert run.code == 0, run.doc["data"]["problems"]


def test_privileged_sidecars_and_both_tls_spellings_are_refused_with_zero_writes(
    cluster: Any, tmp_path: Path
) -> None:
    install(cluster)
    values = tmp_path / "privileged.yaml"
    values.write_text("istiod:\n  global:\n    proxy:\n      privileged: true\n")
    attempts: list[tuple[tuple[str, ...], str]] = [
        (("--set", "istiod.global.proxy.privileged=true"), "privileged"),
        (("-f", str(values)), "privileged"),
        (("--set", "istiod.meshConfig.mesh_mTLS.min_protocol_version=TLSV1_0"), "mesh_mTLS"),
        (("--set", "istiod.meshConfig.enable_auto_mtls=false"), "enable_auto_mtls"),
    ]
    for args, named in attempts:
        run, writes = writes_during(
            cluster,
            lambda a=args: kymamesh(  # type: ignore[misc]
                cluster, "install", "--charts-dir", str(CHARTS), *a, "-y", "-o", "json"
            ),
        )
        assert run.code == 3, (args, str(run))
        assert run.doc["errors"][0]["code"] == "insecure-values", args
        assert named in run.doc["errors"][0]["message"], args
        assert writes.total == 0, (args, writes.by_user_agent)


def test_tls_1_3_by_its_number_is_what_istiod_reads(cluster: Any) -> None:
    """`=2` is TLSV1_3 (Istio's enum), not TLS 1.1: accepted, written, status healthy."""
    install(cluster)
    try:
        run = kymamesh(
            cluster,
            "install",
            "--charts-dir",
            str(CHARTS),
            "--set",
            "istiod.meshConfig.meshMTLS.minProtocolVersion=2",
            "-y",
            "-o",
            "json",
        )
        assert run.code == 0, str(run)
        assert _mesh(cluster)["meshMTLS"] == {"minProtocolVersion": 2}
        status = kymamesh(cluster, "status", "-o", "json")
        assert status.code == 0, status.doc["data"]["problems"]
    finally:
        install(cluster)
