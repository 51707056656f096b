"""The mesh config istiod runs (its `/debug/mesh` JSON, as Istio's jsonpb writes it) against
the ConfigMap's: spellings, durations, enums, left-out zero values, the lists istiod merges;
and the state of one istiod Pod from its view and its log. Pure logic."""

from __future__ import annotations

from typing import Any

import pytest

from kymamesh.istio import meshview
from kymamesh.istio.meshview import ABSENT, Difference, differences


def paths(written: dict[str, Any], running: dict[str, Any]) -> list[str]:
    return [d.path for d in differences(written, running)]


@pytest.mark.parametrize(
    ("written", "running"),
    [
        (
            {"mesh_mTLS": {"min_protocol_version": "TLSV1_3"}},
            {"meshMTLS": {"minProtocolVersion": "TLSV1_3"}},
        ),
        ({"meshMTLS": {"minProtocolVersion": 2}}, {"meshMTLS": {"minProtocolVersion": "TLSV1_3"}}),
        ({"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}, {"outboundTrafficPolicy": {}}),
        ({"outboundTrafficPolicy": {"mode": 0}}, {}),
        ({"protocolDetectionTimeout": "250ms"}, {"protocolDetectionTimeout": "0.250s"}),
        ({"protocolDetectionTimeout": "1m30s"}, {"protocolDetectionTimeout": "90s"}),
        ({"connectTimeout": "0s"}, {}),
        ({"enableTracing": False}, {}),
        ({"enableAutoMtls": True}, {"enableAutoMtls": True}),
        ({"proxyListenPort": 15001}, {"proxyListenPort": 15001}),
        ({"proxyListenPort": "15001"}, {"proxyListenPort": 15001}),
        (
            {"defaultConfig": {"tracing": {"sampling": 1}}},
            {"defaultConfig": {"tracing": {"sampling": 1.0}}},
        ),
        (
            {"defaultConfig": {"proxyMetadata": {"ISTIO_META_DNS_CAPTURE": "true"}}},
            {"defaultConfig": {"proxyMetadata": {"ISTIO_META_DNS_CAPTURE": "true", "X": "y"}}},
        ),
        (
            {"defaultConfig": {"drainDuration": "45s"}},
            {"defaultConfig": {"drainDuration": "45s", "binaryPath": "/usr/local/bin/envoy"}},
        ),
        ({"rootNamespace": None}, {}),  # null leaves it unset
        (
            {"defaultHttpRetryPolicy": {"attempts": 3, "per_try_timeout": "2s"}},
            {"defaultHttpRetryPolicy": {"attempts": 3, "perTryTimeout": "2s"}},
        ),
        ({"trustDomainAliases": ["b.local"]}, {"trustDomainAliases": ["a.local", "b.local"]}),
        (
            {"extensionProviders": [{"name": "z", "zipkin": {"service": "z.ns", "port": 9411}}]},
            {
                "extensionProviders": [
                    {"name": "prometheus", "prometheus": {}},
                    {"name": "z", "zipkin": {"service": "z.ns", "port": 9411}},
                ]
            },
        ),
    ],
)
def test_what_istiod_runs_as_the_configmap_says_is_no_difference(
    written: dict[str, Any], running: dict[str, Any]
) -> None:
    assert differences(written, running) == []


@pytest.mark.parametrize(
    ("written", "running", "where"),
    [
        ({"enableAutoMtls": 0.0}, {"enableAutoMtls": True}, ["enableAutoMtls"]),  # unreadable
        ({"enableAutoMtls": "false"}, {"enableAutoMtls": True}, ["enableAutoMtls"]),
        ({"enableAutoMtls": [False]}, {"enableAutoMtls": True}, ["enableAutoMtls"]),
        ({"enableTracing": True}, {}, ["enableTracing"]),
        (
            {"protocolDetectionTimeout": 5},
            {"protocolDetectionTimeout": "0s"},
            ["protocolDetectionTimeout"],
        ),
        (
            {"protocolDetectionTimeout": "5s"},
            {"protocolDetectionTimeout": "0.100s"},
            ["protocolDetectionTimeout"],
        ),
        ({"meshMTLS": {"minProtocolVersion": "TLSV1_0"}}, {}, ["meshMTLS"]),
        (
            {"mesh_mTLS": {"min_protocol_version": 1}},
            {"meshMTLS": {"minProtocolVersion": "TLSV1_3"}},
            ["mesh_mTLS.min_protocol_version"],
        ),
        ({"proxyListenPort": 15002}, {"proxyListenPort": 15001}, ["proxyListenPort"]),
        (
            {"defaultConfig": {"proxyMetadata": {"A_B": "1"}}},
            {"defaultConfig": {"proxyMetadata": {"AB": "1"}}},
            ["defaultConfig.proxyMetadata.A_B"],
        ),
        (
            {
                "extensionProviders": [
                    {"name": "otel", "opentelemetry": {"service": "o.ns", "port": 4317}}
                ]
            },
            {"extensionProviders": [{"name": "prometheus", "prometheus": {}}]},
            ["extensionProviders[name=otel]"],
        ),
        (
            {"extensionProviders": [{"name": "z", "zipkin": {"service": "z.ns", "port": 9411}}]},
            {"extensionProviders": [{"name": "z", "zipkin": {"service": "z.ns", "port": 9412}}]},
            ["extensionProviders[name=z].zipkin.port"],
        ),
        (
            {"trustDomainAliases": ["c.local"]},
            {"trustDomainAliases": ["a.local"]},
            ["trustDomainAliases"],
        ),
        (
            {"defaultServiceExportTo": ["."]},
            {"defaultServiceExportTo": ["*"]},
            ["defaultServiceExportTo[0]"],
        ),
        (
            {"defaultServiceExportTo": [".", "x"]},
            {"defaultServiceExportTo": ["."]},
            ["defaultServiceExportTo"],
        ),
        ({"enableAutoMtl": True}, {}, ["enableAutoMtl"]),  # not a field: istiod ignores it
        (
            {"defaultHttpRetryPolicy": {"attempts": 3}},
            {"defaultHttpRetryPolicy": {"attempts": 2}},
            ["defaultHttpRetryPolicy.attempts"],
        ),
    ],
)
def test_each_field_istiod_does_not_run_is_named(
    written: dict[str, Any], running: dict[str, Any], where: list[str]
) -> None:
    assert paths(written, running) == where


def test_a_field_the_schema_does_not_know_is_judged_by_istiods_view() -> None:
    """A field newer than kymamesh's schema that istiod has: compared, not refused."""
    assert differences({"futureField": {"a_b": 1}}, {"futureField": {"aB": 1}}) == []
    assert paths({"futureField": 2}, {"futureField": 3}) == ["futureField"]


def test_a_difference_says_both_values() -> None:
    (d,) = differences({"enableAutoMtls": 0.0}, {"enableAutoMtls": True})
    assert d.describe() == "enableAutoMtls is 0.0 in the ConfigMap, true in istiod"
    assert d.to_json() == {"field": "enableAutoMtls", "configMap": 0.0, "istiod": True}
    gone = Difference("enableTracing", True, ABSENT)
    assert gone.describe() == "enableTracing is true in the ConfigMap, unset in istiod"
    assert gone.to_json()["istiod"] is None


def test_camel() -> None:
    assert meshview.camel("mesh_mTLS") == "meshMTLS"
    assert meshview.camel("min_protocol_version") == "minProtocolVersion"
    assert meshview.camel("enableAutoMtls") == "enableAutoMtls"


VIEW = b'{"enableAutoMtls": true, "rootNamespace": "istio-system"}'


def _judge(
    written: dict[str, Any], said: str = "", age: float | None = 600.0, surely: bool = True
) -> Any:
    where = ("istio-system", "istiod-1", "default", "istio-system/istio")
    return meshview.judge(*where, written, VIEW, said, age, surely)


def test_the_state_of_one_istiod_from_its_view_and_its_log() -> None:
    assert _judge({"enableAutoMtls": True}).state == meshview.APPLIED
    assert _judge({"enableAutoMtls": True}).problem() is None
    differs = _judge({"enableAutoMtls": 0.0})
    assert differs.state == meshview.DIFFERS
    problem = differs.problem()
    assert problem is not None
    assert problem.startswith(
        "istiod istio-system/istiod-1 does not run the mesh config of ConfigMap "
        "istio-system/istio: enableAutoMtls is 0.0 in the ConfigMap, true in istiod"
    )
    assert "`kubectl -n istio-system logs istiod-1`" in problem
    said = "invalid mesh config, using last known state: json: cannot unmarshal number"
    rejected = _judge({"enableAutoMtls": 0.0}, said=said)
    assert rejected.state == meshview.REJECTED_STATE and said in str(rejected.problem())
    # rejected although every field looks the same: istiod's word counts
    assert _judge({"enableAutoMtls": True}, said=said).state == meshview.REJECTED_STATE
    # written moments ago and nothing said: not read yet, advice only
    pending = _judge({"enableAutoMtls": 0.0}, age=5.0)
    assert pending.state == meshview.PENDING and pending.problem() is None
    assert "has not read ConfigMap istio-system/istio yet (written 5s ago" in str(pending.note())
    broken = meshview.judge(
        "istio-system", "istiod-1", "default", "istio-system/istio", {}, b"<html>", "", None
    )
    assert broken.state == meshview.UNCHECKED and "did not answer with a JSON map" in broken.reason


def test_istiods_last_word_on_a_mesh_config_and_when_the_configmap_changed() -> None:
    log = (
        "2026-12-05T10:00:00.1Z\tinfo\tads\tpush\n"
        "2026-12-05T10:00:01.2Z\twarn\tinvalid mesh config, using last known state: first\n"
        "2026-12-05T10:00:02.3Z\twarn\tinvalid mesh config, using last known state: second\n"
    )
    assert meshview.rejection(log) == "invalid mesh config, using last known state: second"
    assert meshview.rejection("2026-12-05T10:00:00Z\tinfo\tall good\n") == ""
    cm = {
        "metadata": {
            "creationTimestamp": "2026-12-05T09:00:00Z",
            "managedFields": [
                {"manager": "helm", "time": "2026-12-05T09:00:00Z"},
                {"manager": "kubectl-patch", "time": "2026-12-05T10:00:00Z"},
                {"manager": "kymamesh", "time": "2026-12-05T09:30:00Z"},
            ],
        }
    }
    assert meshview.last_written(cm) == "2026-12-05T10:00:00Z"
    assert meshview.last_written({"metadata": {"creationTimestamp": "2026-12-05T09:00:00Z"}}) == (
        "2026-12-05T09:00:00Z"
    )


def test_a_rejection_within_the_second_of_the_write_counts_only_with_a_difference() -> None:
    """A ConfigMap's write time has whole seconds: a rejection logged within that second may
    be of the config written just before (a bad one, then the good one put back). It counts
    then only when istiod's view differs from the ConfigMap; a later one always counts."""
    from datetime import UTC, datetime

    changed = datetime(2026, 12, 5, 12, 39, 51, tzinfo=UTC)
    warn = "\twarn\tinvalid mesh config, using last known state: json: cannot unmarshal number"
    same_second = f"2026-12-05T12:39:51.417358Z{warn}\n"
    later = f"2026-12-05T12:39:52.000001Z{warn}\n"
    assert not meshview.said_after(same_second, changed)
    assert meshview.said_after(later, changed)
    assert meshview.said_after(f"no time here{warn}", changed)  # unknown: it counts
    said = meshview.rejection(same_second)
    assert _judge({"enableAutoMtls": True}, said=said, surely=False).state == meshview.APPLIED
    assert _judge({"enableAutoMtls": 0.0}, said=said, surely=False).state == meshview.REJECTED_STATE
