"""The mesh file (`--mesh`): the one schema checks every field (exit 2 naming the field and
what it allows), the module's `Istio` resource reads the same as the equivalent mesh file,
the translation into patch step parameters and chart values, the mesh-config and authorizer
edits by meaning, what makes a sidecar out of date, and the JSON Schema being current."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kymamesh import meshfile
from kymamesh.errors import ExitCode, UsageError
from kymamesh.istio.sidecars import mesh_differences, mesh_proxy_config
from kymamesh.steps.components import components_wanted
from kymamesh.steps.meshconfig import (
    apply_ext_authz,
    apply_mesh_settings,
    ext_authz_wanted,
    mesh_settings_wanted,
)

ROOT = Path(__file__).resolve().parent.parent
MESH = ROOT / "tests" / "fixtures" / "mesh"
KYMA_WEBHOOK = {"name": "kyma-webhook", "service": "kyma-webhook.kyma-system", "port": 8443}


def every_field() -> dict[str, Any]:
    return meshfile.read_mesh_file(MESH / "every-field.yaml")


def test_module_resource_reads_as_the_equivalent_mesh_file() -> None:
    from_cr = meshfile.read_mesh_file(MESH / "istio-cr.yaml")
    assert from_cr == every_field()
    assert meshfile.translate(from_cr) == meshfile.translate(every_field())


def test_translation_of_every_field() -> None:
    t = meshfile.translate(every_field())
    assert t.steps["mesh-config"] == {
        "numTrustedProxies": 2,
        "forwardClientCertDetails": "SANITIZE",
        "trustDomain": "mesh.example.com",
        "prometheusMerge": True,
        "dnsProxying": True,
        "proxyStatsInclusionRegexps": [".*outlier_detection.*", ".*upstream_rq_retry.*"],
    }
    shop, audit = t.steps["pilot-webhook"]["authorizers"]
    assert shop == {
        "name": "shop-authz",
        "envoyExtAuthzHttp": {
            "service": "authz.shop.svc.cluster.local",
            "port": 8080,
            "includeRequestHeadersInCheck": ["authorization", "x-user"],
            "includeAdditionalHeadersInCheck": {"x-from": "kyma"},
            "headersToUpstreamOnAllow": ["x-user-id"],
            "headersToDownstreamOnAllow": ["set-cookie"],
            "headersToDownstreamOnDeny": ["www-authenticate"],
            "pathPrefix": "/check",
            "timeout": "3s",
        },
    }
    assert audit == {
        "name": "audit-authz",
        "envoyExtAuthzHttp": {"service": "audit.audit.svc.cluster.local", "port": 9000},
    }
    assert t.steps["sidecar-resources"]["proxy"]["limits"] == {"cpu": "500m", "memory": "512Mi"}
    assert t.restarts == ["gateways", "sidecars"]
    values = meshfile.chart_values(components_wanted(t.steps["mesh-components"]))
    assert values == {
        "istiod": {
            "autoscaleMin": 1,
            "autoscaleMax": 3,
            "rollingMaxSurge": "50%",
            "rollingMaxUnavailable": 0,
            "resources": {
                "requests": {"cpu": "100m", "memory": "256Mi"},
                "limits": {"cpu": "1", "memory": "1Gi"},
            },
            "env": {
                "PILOT_ENABLE_ALPHA_GATEWAY_API": "true",
                "PILOT_MULTI_NETWORK_DISCOVER_GATEWAY_API": "false",
            },
        },
        "gateway": {
            "autoscaling": {"minReplicas": 2, "maxReplicas": 4},
            "resources": {
                "requests": {"cpu": "50m", "memory": "64Mi"},
                "limits": {"cpu": "500m", "memory": "512Mi"},
            },
            "service": {"externalTrafficPolicy": "Local"},
        },
        "egressgateway": {
            "labels": {"istio": "egressgateway"},
            "service": {"type": "ClusterIP"},
            "podDisruptionBudget": {"maxUnavailable": 1},
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": topology_key,
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": {"app": "istio-egressgateway"}},
                }
                for topology_key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
            ],
            "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
            "resources": {
                "requests": {"cpu": "30m", "memory": "48Mi"},
                "limits": {"cpu": "300m", "memory": "256Mi"},
            },
        },
    }
    assert t.steps["network-policies"] == {"enabled": True}


def test_compatibility_mode_is_the_compatibility_version_of_the_previous_minor() -> None:
    from dataclasses import replace

    from kymamesh.istio.release import catalog
    from kymamesh.workflows import patching, pipeline

    release = catalog().resolve("1.31", None)
    t = meshfile.translate(meshfile.check_spec({"compatibilityMode": True}, "test"))
    specs = patching.load_patch_list(t.steps)
    inputs = pipeline.with_compatibility_mode(pipeline.ChartInputs(), specs, release)
    assert inputs.compatibility_version == "1.30"
    stack = pipeline.with_release_values(pipeline.build_values(inputs, release), release, inputs)
    assert {
        row.chart: stack.merged(row.chart)["compatibilityVersion"] for row in release.releases
    } == {row.chart: "1.30" for row in release.releases}
    given = pipeline.ChartInputs(compatibility_version="1.29")  # the flag wins
    assert pipeline.with_compatibility_mode(given, specs, release) == given
    off = patching.load_patch_list({})
    assert (
        pipeline.with_compatibility_mode(pipeline.ChartInputs(), off, release).compatibility_version
        is None
    )
    no_profile = replace(release, line=replace(release.line, compatibility_versions=()))
    with pytest.raises(
        UsageError, match=r"compatibilityMode: Istio 1\.31 offers no behaviour of 1\.30"
    ):
        pipeline.with_compatibility_mode(pipeline.ChartInputs(), specs, no_profile)


BAD = [
    ({"config": {"numTrustedProxies": -1}}, "spec.config.numTrustedProxies is -1", ">= 0"),
    (
        {"config": {"forwardClientCertDetails": "SANITISE"}},
        "spec.config.forwardClientCertDetails is 'SANITISE'",
        "APPEND_FORWARD, SANITIZE_SET, SANITIZE, ALWAYS_FORWARD_ONLY, FORWARD_ONLY",
    ),
    (
        {"config": {"gatewayExternalTrafficPolicy": "local"}},
        "gatewayExternalTrafficPolicy is 'local'",
        "one of Local, Cluster",
    ),
    ({"config": {"enableDNSProxying": "yes"}}, "enableDNSProxying is 'yes'", "true or false"),
    ({"config": {"trustDomain": "Bad Domain"}}, "trustDomain is 'Bad Domain'", "matching"),
    (
        {"config": {"proxyStatsMatcher": {"inclusionRegexps": ["(unclosed"]}}},
        "inclusionRegexps[0] '(unclosed' is not a regular expression",
        "",
    ),
    ({"config": {"authorizers": [{"name": "a", "service": "s"}]}}, "port is required", ""),
    (
        {"config": {"authorizers": [{"name": "a", "service": "s", "port": 1, "timeout": "x"}]}},
        "spec.config.authorizers[0].timeout is 'x'",
        "a duration",
    ),
    (
        {"config": {"authorizers": [{"name": "a", "service": "s", "port": 1}] * 2}},
        "the name 'a' is given twice",
        "",
    ),
    ({"config": {"numTrustedProxy": 1}}, "spec.config has no field numTrustedProxy", ""),
    (
        {"components": {"pilot": {"k8s": {"resources": {"limits": {"memory": "lots"}}}}}},
        "limits.memory is 'lots'",
        "a memory quantity",
    ),
    (
        {
            "components": {
                "ingressGateway": {"k8s": {"hpaSpec": {"minReplicas": 5, "maxReplicas": 2}}}
            }
        },
        "minReplicas 5 is above maxReplicas 2",
        "",
    ),
    (
        {"components": {"pilot": {"k8s": {"strategy": {"rollingUpdate": {"maxSurge": "1.5"}}}}}},
        "maxSurge is '1.5'",
        "percentage",
    ),
    ({"components": {"cni": {"k8s": {}}}}, "spec.components.cni (kymamesh does not install", ""),
    ({"experimental": {"enableAmbient": True}}, "spec.experimental.enableAmbient", ""),
    ({"networkPoliciesEnabled": "yes"}, "spec.networkPoliciesEnabled is 'yes'", "true or false"),
    (
        {"components": {"egressGateway": {"enabled": 1}}},
        "spec.components.egressGateway.enabled is 1",
        "true or false",
    ),
    (
        {
            "components": {
                "egressGateway": {"enabled": True, "k8s": {"hpaSpec": {"minReplicas": 0}}}
            }
        },
        "egressGateway.k8s.hpaSpec.minReplicas is 0",
        ">= 1",
    ),
    (
        {"components": {"egressGateway": {"enabled": True, "replicas": 2}}},
        "spec.components.egressGateway has no field replicas",
        "",
    ),
]


@pytest.mark.parametrize(("spec", "named", "allowed"), BAD)
def test_bad_values_are_usage_errors_naming_the_field(
    spec: dict[str, Any], named: str, allowed: str
) -> None:
    with pytest.raises(UsageError) as caught:
        meshfile.check_spec(spec, "--mesh f.yaml")
    assert caught.value.exit_code == ExitCode.USAGE
    assert named in caught.value.message
    assert allowed in caught.value.message


def test_false_for_a_field_kymamesh_cannot_honour_is_fine() -> None:
    spec = {"networkPoliciesEnabled": False, "experimental": {"enableAmbient": False}}
    assert meshfile.check_spec(spec, "f") == spec


def test_other_resources_and_shapes_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap"}))
    with pytest.raises(UsageError, match="kymamesh takes a mesh file or the Kyma Istio"):
        meshfile.read_mesh_file(other)
    listed = tmp_path / "list.yaml"
    listed.write_text("- config: {}\n")
    with pytest.raises(UsageError, match="must be a map"):
        meshfile.read_mesh_file(listed)
    with pytest.raises(UsageError, match="cannot read"):
        meshfile.read_mesh_file(tmp_path / "missing.yaml")


def test_mesh_settings_edit_by_meaning_and_converge() -> None:
    wanted = mesh_settings_wanted(meshfile.translate(every_field()).steps["mesh-config"])
    mesh: dict[str, Any] = {"defaultConfig": {"discoveryAddress": "istiod:15012"}}
    done = apply_mesh_settings(mesh, wanted)
    assert len(done) == 6
    assert mesh["defaultConfig"]["gatewayTopology"] == {
        "numTrustedProxies": 2,
        "forwardClientCertDetails": "SANITIZE",
    }
    assert mesh["defaultConfig"]["proxyMetadata"] == {"ISTIO_META_DNS_CAPTURE": "true"}
    assert mesh["defaultConfig"]["discoveryAddress"] == "istiod:15012"
    assert mesh["trustDomain"] == "mesh.example.com"
    assert mesh["enablePrometheusMerge"] is True
    assert apply_mesh_settings(mesh, wanted) == []  # a re-run changes nothing
    with pytest.raises(UsageError, match="numTrustedProxies is 'two'"):
        mesh_settings_wanted({"numTrustedProxies": "two"})


def test_authorizers_beside_the_kyma_webhook_and_retired_ones_removed() -> None:
    authorizers = meshfile.translate(every_field()).steps["pilot-webhook"]["authorizers"]
    params = {"enabled": True, "provider": KYMA_WEBHOOK, "authorizers": authorizers}
    mesh: dict[str, Any] = {"extensionProviders": [{"name": "user-own", "zipkin": {}}]}
    apply_ext_authz(mesh, ext_authz_wanted(params))
    names = [p["name"] for p in mesh["extensionProviders"]]
    assert names == ["user-own", "kyma-webhook", "shop-authz", "audit-authz"]
    assert apply_ext_authz(mesh, ext_authz_wanted(params)) == []
    fewer = {**params, "authorizers": authorizers[:1]}
    done = apply_ext_authz(mesh, ext_authz_wanted(fewer, remembered=params))
    assert done == ["removed extension provider audit-authz"]
    assert [p["name"] for p in mesh["extensionProviders"]] == [
        "user-own",
        "kyma-webhook",
        "shop-authz",
    ]
    with pytest.raises(UsageError, match="taken by the Kyma webhook"):
        ext_authz_wanted({**params, "authorizers": [{**authorizers[0], "name": "kyma-webhook"}]})


def _pod(proxy_config: dict[str, Any] | None, annotations: dict[str, str]) -> dict[str, Any]:
    env = (
        []
        if proxy_config is None
        else [{"name": "PROXY_CONFIG", "value": json.dumps(proxy_config)}]
    )
    return {
        "metadata": {"annotations": annotations},
        "spec": {"containers": [{"name": "istio-proxy", "env": env}]},
    }


def test_a_sidecar_started_without_the_mesh_settings_is_out_of_date() -> None:
    mesh: dict[str, Any] = {}
    apply_mesh_settings(
        mesh, mesh_settings_wanted(meshfile.translate(every_field()).steps["mesh-config"])
    )
    wanted = mesh_proxy_config(mesh)
    merged = {"prometheus.io/port": "15020"}
    old = _pod({"discoveryAddress": "istiod:15012"}, merged)
    reasons = mesh_differences(old, old["spec"]["containers"][0], wanted)
    assert reasons == [  # the gateway topology matters to gateways only
        "proxy config proxyStatsMatcher differs from the mesh config",
        "ISTIO_META_DNS_CAPTURE false, mesh config true",
    ]
    current = _pod({k: v for k, v in mesh["defaultConfig"].items()} | {"concurrency": 0}, merged)
    assert mesh_differences(current, current["spec"]["containers"][0], wanted) == []
    unmerged = _pod({**mesh["defaultConfig"]}, {})
    assert mesh_differences(unmerged, unmerged["spec"]["containers"][0], wanted) == [
        "Prometheus merge is on, the sidecar was injected without it"
    ]
    by_hand = _pod(None, {})  # no proxy config from an injector: not judged
    assert mesh_differences(by_hand, by_hand["spec"]["containers"][0], wanted) == []
    gateway = _pod(
        {"proxyStatsMatcher": mesh["defaultConfig"]["proxyStatsMatcher"]},
        {"inject.istio.io/templates": "gateway", "proxy.istio.io/unrelated": "x"},
    )
    assert mesh_differences(gateway, gateway["spec"]["containers"][0], wanted) == [
        "proxy config gatewayTopology differs from the mesh config",
        "ISTIO_META_DNS_CAPTURE false, mesh config true",
    ]
    own = _pod({}, {**merged, "proxy.istio.io/config": "{}"})  # the Pod's own proxy config
    assert mesh_differences(own, own["spec"]["containers"][0], wanted) == []


def test_json_schema_is_published_and_current() -> None:
    published = json.loads((ROOT / "docs" / "reference" / "mesh-file.schema.json").read_text())
    assert published == meshfile.json_schema()
    config = published["properties"]["config"]["properties"]
    assert config["forwardClientCertDetails"]["enum"] == list(meshfile.XFCC)
    assert published["additionalProperties"] is False


def test_every_module_field_is_in_the_schema() -> None:
    """The fields of the module's resource (as its reference lists them)."""
    paths = {path for _, path in meshfile._walk(meshfile.SCHEMA, "")}
    for path in (
        "config.numTrustedProxies",
        "config.forwardClientCertDetails",
        "config.authorizers",
        "config.gatewayExternalTrafficPolicy",
        "config.telemetry.metrics.prometheusMerge",
        "config.trustDomain",
        "config.enableDNSProxying",
        "config.proxyStatsMatcher.inclusionRegexps",
        "components.pilot.k8s.hpaSpec.minReplicas",
        "components.ingressGateway.k8s.strategy.rollingUpdate.maxUnavailable",
        "components.egressGateway.enabled",
        "components.cni",
        "components.proxy.k8s.resources",
        "experimental.pilot.enableAlphaGatewayAPI",
        "experimental.pilot.enableMultiNetworkDiscoverGatewayAPI",
        "experimental.enableAmbient",
        "compatibilityMode",
        "networkPoliciesEnabled",
    ):
        assert path in paths, path


def test_user_values_that_contradict_the_mesh_file_are_refused(tmp_path: Path) -> None:
    from kymamesh.istio.release import pinned
    from kymamesh.workflows import patching, pipeline

    t = meshfile.translate(every_field())
    specs = patching.load_patch_list(t.steps)
    same = pipeline.build_values(
        pipeline.ChartInputs(set_values=("istiod.autoscaleMax=3",)), pinned()
    )
    layered = pipeline.with_mesh_values(same, specs)
    assert layered.merged("istiod")["autoscaleMax"] == 3
    assert layered.origin_of("gateway", "service.externalTrafficPolicy") == pipeline.MESH_ORIGIN
    other = pipeline.build_values(
        pipeline.ChartInputs(set_values=("istiod.autoscaleMax=7",)), pinned()
    )
    with pytest.raises(UsageError, match=r"istiod.autoscaleMax is 7 \(from --set"):
        pipeline.with_mesh_values(other, specs)


def test_the_module_manager_running_is_refused() -> None:
    from kymamesh.errors import PreconditionError
    from tests.support_fake_cluster import FakeCluster
    from tests.support_inventory import obj

    def manager(name: str, replicas: int, labels: dict[str, str] | None = None) -> Any:
        return obj(
            "apps/v1", "Deployment", name, "kyma-system", labels=labels, spec={"replicas": replicas}
        )

    served = {("apps/v1", "Deployment")}
    running = FakeCluster([manager("istio-controller-manager", 1)], served=served)
    with pytest.raises(PreconditionError) as caught:
        meshfile.refuse_module_manager(running)  # type: ignore[arg-type]
    assert "kyma-system/istio-controller-manager" in caught.value.message
    assert "--replicas=0" in (caught.value.hint or "")
    by_label = FakeCluster(
        [
            manager(
                "other-name", 2, {"app.kubernetes.io/component": "istio-operator.kyma-project.io"}
            )
        ],
        served=served,
    )
    assert meshfile.module_managers(by_label) == ["kyma-system/other-name"]  # type: ignore[arg-type]
    stopped = FakeCluster([manager("istio-controller-manager", 0)], served=served)
    meshfile.refuse_module_manager(stopped)  # type: ignore[arg-type]
    assert meshfile.module_managers(FakeCluster([], served=served)) == []  # type: ignore[arg-type]


def test_the_mesh_config_made_is_one_istiod_reads() -> None:
    """Checked against Istio's MeshConfig schema (kymamesh.istio.meshschema)."""
    from kymamesh.istio.meshschema import mesh_config_problems

    made: dict[str, Any] = {}
    apply_mesh_settings(
        made, mesh_settings_wanted(meshfile.translate(every_field()).steps["mesh-config"])
    )
    assert mesh_config_problems(made) == []
    authorizers = meshfile.translate(every_field()).steps["pilot-webhook"]["authorizers"]
    from kymamesh.istio.meshschema import provider_problems

    for authorizer in authorizers:
        assert provider_problems(authorizer, "extensionProviders[]") == []
