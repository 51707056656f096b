"""The mesh config check against the real istiod of the test cluster: what kymamesh refuses
for its type, istiod cannot read either ("invalid mesh config, using last known state" in
its log), and what kymamesh accepts, istiod reads without that warning. An unknown field
kymamesh refuses by name, while istiod ignores it silently (the reason to refuse it).
Through the CLI, such values are refused (exit 2) with zero writes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from kymamesh.istio.meshschema import mesh_config_problems
from tests.support_lifecycle import CHARTS, NAMESPACE, get, install, kymamesh, writes_during

INVALID = "invalid mesh config"
SENTINEL = {"defaultServiceExportTo": 5}  # istiod refuses it: proves it read what came before


def _istiod_logs(cluster: Any) -> list[Path]:
    """Every istiod Pod's log (a Pod of a rollout may start while a case is checked)."""
    return sorted((cluster.dir / "logs").glob(f"pod-{NAMESPACE}-istiod-*.log"))


def _put_mesh(cluster: Any, mesh: dict[str, Any]) -> None:
    patch = json.dumps({"data": {"mesh": yaml.safe_dump(mesh)}})
    cluster.kubectl("patch", "configmap", "istio", "-n", NAMESPACE, "--type=merge", "-p", patch)


def _verdict(cluster: Any, base: dict[str, Any], case: dict[str, Any], wait: float) -> bool:
    """Write base + case as the live mesh config; True when istiod warned it is invalid
    within `wait` seconds."""
    assert _istiod_logs(cluster), "no istiod runs"
    sizes = {log: log.stat().st_size for log in _istiod_logs(cluster)}
    _put_mesh(cluster, {**base, **case})
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        for log in _istiod_logs(cluster):
            with log.open("rb") as fh:
                fh.seek(sizes.get(log, 0))
                if INVALID.encode() in fh.read():
                    return True
        time.sleep(0.2)
    return False


REFUSED_BY_BOTH = [
    {"enableAutoMtls": 0.0},
    {"enableAutoMtls": "false"},
    {"enableAutoMtls": [False]},
    {"enableAutoMtls": "0.0"},  # `!!str 0.0`
    {"protocolDetectionTimeout": 5},
    {
        "extensionProviders": [
            {
                "name": "otel",
                "opentelemetry": {
                    "service": "otel.kyma-system.svc.cluster.local",
                    "port": 4317,
                    "http": {"timeout": 5},
                },
            }
        ]
    },
    {"meshMTLS": {"minProtocolVersion": "TLSV1_0"}},
]
ACCEPTED_BY_BOTH = [
    {"protocolDetectionTimeout": "250ms"},
    {"mesh_mTLS": {"min_protocol_version": "TLSV1_3"}},
    {"meshMTLS": {"minProtocolVersion": 2}},
    {
        "extensionProviders": [
            {
                "name": "otel",
                "opentelemetry": {
                    "service": "otel.kyma-system.svc.cluster.local",
                    "port": 4317,
                    "http": {"timeout": "5s", "path": "/v1/traces"},
                },
            }
        ]
    },
]


def test_what_kymamesh_refuses_istiod_cannot_read_and_what_it_accepts_istiod_reads(
    cluster: Any,
) -> None:
    install(cluster)
    cm = get(cluster, "configmap", "istio", "-n", NAMESPACE)
    assert cm is not None
    original = cm["data"]["mesh"]
    base = yaml.safe_load(original)
    assert mesh_config_problems(base, "1.30") == []  # what install wrote
    try:
        for case in REFUSED_BY_BOTH:
            assert mesh_config_problems({**base, **case}, "1.30"), case
            assert _verdict(cluster, base, case, wait=30), f"istiod read {case}"
        for case in ACCEPTED_BY_BOTH:
            assert mesh_config_problems({**base, **case}, "1.30") == [], case
            assert not _verdict(cluster, base, case, wait=6), f"istiod refused {case}"
            assert _verdict(cluster, base, SENTINEL, wait=30), "istiod stopped reading"
        unknown = {"enableAutoMtl": True}
        assert "did you mean 'enableAutoMtls'" in mesh_config_problems(unknown, "1.30")[0]
        assert not _verdict(cluster, base, unknown, wait=6)  # istiod: silently ignored
        assert _verdict(cluster, base, SENTINEL, wait=30)
    finally:
        cluster.kubectl(
            "patch", "configmap", "istio", "-n", NAMESPACE, "--type=merge",
            "-p", json.dumps({"data": {"mesh": original}}),
        )  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        ("--set", "istiod.meshConfig.enableAutoMtls=0.0"),
        ("--set", 'istiod.meshConfig.enableAutoMtls="false"'),
        ("--set", "istiod.meshConfig.enableAutoMtls=[false]"),
        ("-f", "!!str 0.0"),
        ("--set", "istiod.meshConfig.enableAutoMtl=true"),
    ],
)
def test_unreadable_mesh_config_values_are_refused_with_zero_writes(
    cluster: Any, tmp_path: Path, args: tuple[str, str]
) -> None:
    install(cluster)
    flag, value = args
    if flag == "-f":
        path = tmp_path / "values.yaml"
        path.write_text(f"istiod:\n  meshConfig:\n    enableAutoMtls: {value}\n")
        value = str(path)
    run, writes = writes_during(
        cluster,
        lambda: kymamesh(
            cluster, "install", "--charts-dir", str(CHARTS), flag, value, "-y", "-o", "json"
        ),
    )
    assert run.code == 2, str(run)
    message = run.doc["errors"][0]["message"]
    assert "istiod.meshConfig.enableAutoMtl" in message, message
    assert writes.total == 0, writes.describe()
    mesh = yaml.safe_load(get(cluster, "configmap", "istio", "-n", NAMESPACE)["data"]["mesh"])
    assert mesh["enableAutoMtls"] is True


def test_a_patch_step_setting_istiod_cannot_read_is_refused(cluster: Any, tmp_path: Path) -> None:
    install(cluster)
    config = tmp_path / "config.yaml"
    config.write_text("steps:\n  tracing-kyma-zipkin:\n    opentelemetry: {http: {timeout: 5}}\n")
    for command in (("install", "--charts-dir", str(CHARTS)), ("patch",)):
        run, writes = writes_during(
            cluster,
            lambda c=command: kymamesh(cluster, *c, "--config", str(config), "-y", "-o", "json"),
        )
        assert run.code == 2, str(run)
        assert "opentelemetry.http.timeout" in run.doc["errors"][0]["message"]
        assert writes.total == 0, writes.describe()
