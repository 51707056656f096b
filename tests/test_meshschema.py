"""The mesh config check without a cluster: values istiod could not read are refused before
anything is written, naming the field and where it came from; what kymamesh itself writes
passes. tests/test_meshschema_cluster.py checks the verdicts against the real istiod."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kymamesh.errors import ExitCode, UsageError
from kymamesh.istio.meshschema import mesh_config_problems, provider_problems
from kymamesh.istio.values import (
    ValueStack,
    check_mesh_config,
    load_user_file,
    parse_set,
    project_source,
)
from kymamesh.workflows.patching import load_patch_list

CHARTS = ("base", "istiod", "gateway")


def stack_of(*sources: Any) -> ValueStack:
    return ValueStack([project_source(CHARTS), *sources])


@pytest.mark.parametrize(
    "expr",
    [
        "istiod.meshConfig.enableAutoMtls=0.0",
        'istiod.meshConfig.enableAutoMtls="false"',
        "istiod.meshConfig.enableAutoMtls=[false]",
        "istiod.meshConfig.enable_auto_mtls=yes",
        "istiod.meshConfig.protocolDetectionTimeout=5",
        "istiod.meshConfig.meshMTLS.minProtocolVersion=tlsv1_3",  # names are case-sensitive
        "istiod.meshConfig.enableAutoMtl=true",  # no such field
        "istiod.meshConfig.defaultConfig.concurrency=two",
        "istiod.meshConfig.extensionProviders[0].name=otel,"
        "istiod.meshConfig.extensionProviders[0].opentelemetry.http.timeout=5",
    ],
)
def test_set_values_istiod_cannot_read_are_refused(expr: str) -> None:
    with pytest.raises(UsageError) as err:
        check_mesh_config(stack_of(parse_set([expr], CHARTS)), "1.30")
    assert err.value.exit_code == ExitCode.USAGE
    assert "(from --set)" in err.value.message
    assert err.value.hint


def test_values_file_with_a_string_for_a_bool_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text("istiod:\n  meshConfig:\n    enableAutoMtls: !!str 0.0\n")
    with pytest.raises(UsageError) as err:
        check_mesh_config(stack_of(load_user_file(path, CHARTS)), "1.30")
    assert "istiod.meshConfig.enableAutoMtls: must be true or false" in err.value.message
    assert str(path) in err.value.message


@pytest.mark.parametrize(
    "mesh",
    [
        {"enableAutoMtls": True, "accessLogFile": "/dev/stdout"},
        {"enable_auto_mtls": True, "access_log_file": "/dev/stdout"},  # proto names
        {"meshMTLS": {"minProtocolVersion": 2}},
        {"mesh_mTLS": {"min_protocol_version": "TLSV1_2"}},
        {"protocolDetectionTimeout": "250ms", "connectTimeout": "1m30s"},
        {"defaultConfig": {"concurrency": 2, "holdApplicationUntilProxyStarts": True}},
        {"defaultConfig": {"proxyMetadata": {"ISTIO_META_DNS_CAPTURE": "true"}}},
        {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}},
        {"defaultProviders": {"tracing": ["kyma-zipkin"]}},
        {"enableAutoMtls": None},  # null: unset
    ],
)
def test_what_istiod_reads_passes(mesh: dict[str, Any]) -> None:
    assert mesh_config_problems(mesh, "1.30") == []


def test_problems_name_the_field_and_say_what_it_takes() -> None:
    [problem] = mesh_config_problems({"meshMTLS": {"minProtocolVersion": "TLSV1_1"}}, "1.30")
    assert problem.startswith("meshMTLS.minProtocolVersion: ")
    assert "TLS_AUTO, TLSV1_2, TLSV1_3" in problem
    [problem] = mesh_config_problems({"enableAutoMtls": True, "enable_auto_mtls": False})
    assert "given twice" in problem
    [problem] = mesh_config_problems(
        {"extensionProviders": [{"name": "x", "zipkin": {}, "datadog": {}}]}
    )
    assert problem.startswith("extensionProviders[0]: takes one of zipkin, datadog")
    [problem] = mesh_config_problems({"outboundTrafficPolicy": {"mode": "registry_only"}})
    assert "REGISTRY_ONLY" in problem


def test_a_field_of_a_later_istio_is_refused_for_the_earlier_one() -> None:
    later = {"serviceEntryVisibility": {}}
    assert mesh_config_problems(later, "1.31") == []
    assert "new in Istio 1.31" in mesh_config_problems(later, "1.30")[0]


def test_what_kymamesh_writes_passes() -> None:
    """The project's own meshConfig and the providers the patch steps add by default."""
    check_mesh_config(stack_of(), "1.30")
    from kymamesh.steps.meshconfig import ext_authz_wanted, tracing_wanted

    specs = {s.name: s for s in load_patch_list({})}
    tracing = tracing_wanted(specs["tracing-kyma-zipkin"].params, "istio-system")
    for provider in tracing.providers.values():
        assert provider_problems(provider, "p") == [], provider
    authz = ext_authz_wanted(specs["pilot-webhook"].params)
    assert provider_problems(authz.provider, "p") == []


def test_the_schema_has_istios_facts() -> None:
    """A few facts of istio/api's mesh/v1alpha1 protos (1.30, 1.31), as the schema holds them."""
    from kymamesh.istio.meshschema import _schema

    schema = _schema()
    mesh = schema["messages"]["MeshConfig"]["fields"]
    assert mesh["enableAutoMtls"] == {
        "proto": "enable_auto_mtls",
        "type": "bool",
        "json": "enableAutoMtls",
    }
    assert mesh["meshMTLS"]["proto"] == "mesh_mTLS"
    assert schema["enums"]["MeshConfig.TLSConfig.TLSProtocol"] == ["TLS_AUTO", "TLSV1_2", "TLSV1_3"]
    provider = schema["messages"]["MeshConfig.ExtensionProvider"]["fields"]
    assert provider["zipkin"]["oneof"] == provider["opentelemetry"]["oneof"] == "provider"
    otel_http = schema["messages"]["MeshConfig.ExtensionProvider.HttpService"]["fields"]
    assert otel_http["timeout"]["type"] == "duration"
