"""Fixture charts and addon manifests (tests/fixtures/): they render and carry the facts we rely on.

No cluster needed. The rendering tests use the real `helm` binary (env KYMAMESH_HELM, then
PATH, then the test cluster's build cache) and are skipped without one.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ADDONS = FIXTURES / "addons"
NAMESPACE = "istio-system"
# charts folder -> the Istio release its charts stand in for
CHART_SETS = {"charts": "1.30.3", "charts-1.29": "1.29.4"}
RELEASE_NAMES = {"base": "istio-base", "istiod": "istiod", "gateway": "istio-ingressgateway"}

Obj = dict[str, Any]


def _find_helm() -> str | None:
    candidates = [os.environ.get("KYMAMESH_HELM"), shutil.which("helm")]
    cache = os.path.expanduser("~/.cache/kymamesh/testcluster")
    candidates += sorted(glob.glob(f"{cache}/parts/helm/*/helm"))  # the helm part
    candidates += sorted(glob.glob(f"{cache}/*/bin/helm"))  # the cache layout before parts
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


HELM = _find_helm()
needs_helm = pytest.mark.skipif(
    HELM is None, reason="no helm binary (set KYMAMESH_HELM or put helm on PATH)"
)


def _run_helm(*args: str) -> str:
    assert HELM is not None
    result = subprocess.run([HELM, *args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, (
        f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


@functools.cache
def render(chart_set: str, chart: str, *args: str) -> tuple[Obj, ...]:
    """`helm template` one fixture chart as its kymamesh release in istio-system."""
    out = _run_helm(
        "template",
        RELEASE_NAMES[chart],
        str(FIXTURES / chart_set / chart),
        "--namespace",
        NAMESPACE,
        *args,
    )
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def find(objs: tuple[Obj, ...], kind: str, name: str) -> Obj:
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def mesh_of(objs: tuple[Obj, ...]) -> Obj:
    mesh = yaml.safe_load(find(objs, "ConfigMap", "istio")["data"]["mesh"])
    assert isinstance(mesh, dict)
    return mesh


def injector_values(objs: tuple[Obj, ...]) -> Obj:
    values = json.loads(find(objs, "ConfigMap", "istio-sidecar-injector")["data"]["values"])
    assert isinstance(values, dict)
    return values


def injector_config(objs: tuple[Obj, ...]) -> Obj:
    config = yaml.safe_load(find(objs, "ConfigMap", "istio-sidecar-injector")["data"]["config"])
    assert isinstance(config, dict)
    return config


# --- the charts as files ------------------------------------------------------------------


def test_derived_charts_match_their_source() -> None:
    spec = importlib.util.spec_from_file_location("make_charts", FIXTURES / "make_charts.py")
    assert spec is not None and spec.loader is not None
    make_charts = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = make_charts  # dataclasses look their module up there
    spec.loader.exec_module(make_charts)
    assert make_charts.stale_paths() == [], (
        "stale derived charts: run python tests/fixtures/make_charts.py"
    )


@pytest.mark.parametrize("chart_set", CHART_SETS)
@pytest.mark.parametrize("chart", RELEASE_NAMES)
def test_chart_metadata_names_the_release(chart_set: str, chart: str) -> None:
    meta = yaml.safe_load((FIXTURES / chart_set / chart / "Chart.yaml").read_text())
    assert (meta["name"], meta["version"], meta["appVersion"]) == (
        chart,
        CHART_SETS[chart_set],
        CHART_SETS[chart_set],
    )


@needs_helm
@pytest.mark.parametrize("chart_set", CHART_SETS)
@pytest.mark.parametrize("chart", RELEASE_NAMES)
def test_chart_lints(chart_set: str, chart: str) -> None:
    _run_helm("lint", "--strict", str(FIXTURES / chart_set / chart), "--namespace", NAMESPACE)


# --- base -----------------------------------------------------------------------------------

REQUIRED_CRDS = {
    f"{plural}.{group}.istio.io"
    for group, plurals in {
        "networking": [
            "virtualservices",
            "destinationrules",
            "gateways",
            "serviceentries",
            "sidecars",
            "envoyfilters",
            "workloadentries",
            "workloadgroups",
            "proxyconfigs",
        ],
        "security": ["peerauthentications", "requestauthentications", "authorizationpolicies"],
        "telemetry": ["telemetries"],
        "extensions": ["wasmplugins"],
    }.items()
    for plural in plurals
}


@needs_helm
def test_base_renders_the_istio_crds_as_templates() -> None:
    crds = {
        o["metadata"]["name"]: o
        for o in render("charts", "base")
        if o["kind"] == "CustomResourceDefinition"
    }
    assert set(crds) >= REQUIRED_CRDS
    for name, crd in crds.items():
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep", name
        assert crd["metadata"]["labels"]["app.kubernetes.io/part-of"] == "istio", name
        versions = crd["spec"]["versions"]
        assert sum(v["storage"] for v in versions) == 1, name
        for version in versions:
            props = version["schema"]["openAPIV3Schema"]["properties"]
            assert props["spec"]["x-kubernetes-preserve-unknown-fields"] is True
            assert props["status"]["x-kubernetes-preserve-unknown-fields"] is True
            assert version["subresources"] == {"status": {}}
    for plural in ("peerauthentications", "requestauthentications", "authorizationpolicies"):
        served = {
            v["name"]
            for v in crds[f"{plural}.security.istio.io"]["spec"]["versions"]
            if v["served"]
        }
        assert {"v1", "v1beta1"} <= served


@needs_helm
def test_base_validator_points_at_istiod_and_fails_open() -> None:
    objs = render("charts", "base")
    (webhook,) = find(objs, "ValidatingWebhookConfiguration", "istiod-default-validator")[
        "webhooks"
    ]
    assert webhook["clientConfig"]["service"] == {
        "name": "istiod",
        "namespace": NAMESPACE,
        "path": "/validate",
    }
    assert webhook["failurePolicy"] == "Ignore"
    # the rules of Istio's own istiod-default-validator: every kind of Istio's config groups,
    # security.istio.io's RequestAuthentication and AuthorizationPolicy among them, with no
    # object or namespace selector to let one through
    assert webhook["rules"] == [
        {
            "operations": ["CREATE", "UPDATE"],
            "apiGroups": [
                "security.istio.io",
                "networking.istio.io",
                "telemetry.istio.io",
                "extensions.istio.io",
            ],
            "apiVersions": ["*"],
            "resources": ["*"],
        }
    ]
    assert "objectSelector" not in webhook and "namespaceSelector" not in webhook
    find(objs, "ServiceAccount", "istio-reader-service-account")
    assert not [
        o
        for o in render("charts", "base", "--set", "defaultRevision=")
        if o["kind"].startswith("Validating")
    ]


# --- istiod ---------------------------------------------------------------------------------


@needs_helm
@pytest.mark.parametrize("chart_set", CHART_SETS)
def test_istiod_deployment_tells_its_version(chart_set: str) -> None:
    deployment = find(render(chart_set, "istiod"), "Deployment", "istiod")
    assert {"app": "istiod", "istio": "pilot"}.items() <= deployment["metadata"]["labels"].items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "discovery"
    assert container["image"] == f"docker.io/istio/pilot:{CHART_SETS[chart_set]}"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"  # istiod runs here
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


@needs_helm
def test_istiod_image_settings_old_and_new_style() -> None:
    def image(*args: str) -> str:
        deployment = find(render("charts", "istiod", *args), "Deployment", "istiod")
        return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])

    assert image("--set", "pilot.hub=reg.local:5000/istio") == "reg.local:5000/istio/pilot:1.30.3"
    assert (
        image("--set", "hub=reg.local", "--set", "tag=1.30.3-distroless")
        == "reg.local/pilot:1.30.3-distroless"
    )
    assert image("--set", "global.hub=mirror.io/istio") == "mirror.io/istio/pilot:1.30.3"


@needs_helm
def test_istiod_service_and_account() -> None:
    objs = render("charts", "istiod")
    service = find(objs, "Service", "istiod")
    ports = {(p["port"], p.get("targetPort", p["port"])) for p in service["spec"]["ports"]}
    assert ports == {(15010, 15010), (15012, 15012), (443, 15017), (15014, 15014)}
    find(objs, "ServiceAccount", "istiod")


@needs_helm
def test_istiod_mesh_defaults() -> None:
    objs = render("charts", "istiod")
    mesh = mesh_of(objs)
    assert mesh["defaultConfig"]["discoveryAddress"] == "istiod.istio-system.svc:15012"
    assert (mesh["rootNamespace"], mesh["trustDomain"]) == ("istio-system", "cluster.local")
    assert "tracing" not in mesh["defaultConfig"]
    assert yaml.safe_load(find(objs, "ConfigMap", "istio")["data"]["meshNetworks"]) == {
        "networks": {}
    }


@needs_helm
def test_istiod_passes_mesh_config_through() -> None:
    providers = [
        {
            "name": "kyma-zipkin",
            "zipkin": {"service": "zipkin.kyma-system.svc.cluster.local", "port": 9411},
        }
    ]
    mesh = mesh_of(
        render(
            "charts",
            "istiod",
            "--set",
            "meshConfig.enableAutoMtls=false",
            "--set",
            "meshConfig.enablePrometheusMerge=false",
            "--set-json",
            f"meshConfig.extensionProviders={json.dumps(providers)}",
            "--set",
            "meshConfig.defaultConfig.tracing.zipkin.address=zipkin.kyma-system:9411",
        )
    )
    assert mesh["enableAutoMtls"] is False
    assert mesh["enablePrometheusMerge"] is False
    assert mesh["extensionProviders"] == providers
    assert mesh["defaultConfig"]["tracing"]["zipkin"]["address"] == "zipkin.kyma-system:9411"
    assert mesh["defaultConfig"]["discoveryAddress"] == "istiod.istio-system.svc:15012"


@needs_helm
def test_istiod_zipkin_tracer_points_into_istio_system() -> None:
    mesh = mesh_of(render("charts", "istiod", "--set", "global.proxy.tracer=zipkin"))
    assert mesh["defaultConfig"]["tracing"] == {"zipkin": {"address": "zipkin.istio-system:9411"}}


@needs_helm
def test_istiod_injector_values_are_json_with_proxy_resources() -> None:
    values = injector_values(render("charts", "istiod"))
    assert set(values) >= {"global", "sidecarInjectorWebhook", "revision"}
    assert values["global"]["proxy"]["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "2000m", "memory": "1024Mi"},
    }
    assert "resources" not in values["global"]["proxy_init"]
    custom = injector_values(
        render(
            "charts",
            "istiod",
            "--set",
            "global.proxy.resources.limits.memory=256Mi",
            "--set",
            "global.proxy_init.resources.limits.memory=64Mi",
        )
    )
    assert custom["global"]["proxy"]["resources"]["limits"] == {"cpu": "2000m", "memory": "256Mi"}
    assert custom["global"]["proxy_init"]["resources"] == {"limits": {"memory": "64Mi"}}


@needs_helm
def test_istiod_injector_config_has_the_policy() -> None:
    config = injector_config(render("charts", "istiod"))
    assert config["policy"] == "enabled"
    assert config["defaultTemplates"] == ["sidecar"]
    assert {"sidecar", "gateway"} <= set(config["templates"])
    assert config["alwaysInjectSelector"] == [] and config["neverInjectSelector"] == []
    assert (
        injector_config(render("charts", "istiod", "--set", "global.proxy.autoInject=disabled"))[
            "policy"
        ]
        == "disabled"
    )


@needs_helm
def test_istiod_injector_webhooks_have_the_official_names_and_selectors() -> None:
    mwc = find(render("charts", "istiod"), "MutatingWebhookConfiguration", "istio-sidecar-injector")
    hooks = {w["name"]: w for w in mwc["webhooks"]}
    assert list(hooks) == [
        "rev.namespace.sidecar-injector.istio.io",
        "rev.object.sidecar-injector.istio.io",
        "namespace.sidecar-injector.istio.io",
        "object.sidecar-injector.istio.io",
    ]
    for hook in hooks.values():
        assert hook["clientConfig"] == {
            "service": {"name": "istiod", "namespace": NAMESPACE, "path": "/inject", "port": 443}
        }
        assert hook["failurePolicy"] == "Fail"  # as Istio's: no Pod slips past the injector
        assert hook["rules"] == [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
            }
        ]
    namespace_hook = hooks["namespace.sidecar-injector.istio.io"]
    assert namespace_hook["namespaceSelector"]["matchExpressions"] == [
        {"key": "istio-injection", "operator": "In", "values": ["enabled"]}
    ]
    assert {"key": "sidecar.istio.io/inject", "operator": "In", "values": ["true"]} in hooks[
        "object.sidecar-injector.istio.io"
    ]["objectSelector"]["matchExpressions"]
    assert {"key": "istio.io/rev", "operator": "In", "values": ["default"]} in hooks[
        "rev.namespace.sidecar-injector.istio.io"
    ]["namespaceSelector"]["matchExpressions"]


@needs_helm
@pytest.mark.parametrize("revision", ["", "canary"])
def test_istiod_pod_is_runnable_as_istiod(revision: str) -> None:
    """What tests/cluster/podrunner.py needs to run pilot-discovery for the Pod, per revision."""
    suffix = f"-{revision}" if revision else ""
    objs = render("charts", "istiod", "--set", f"revision={revision}")
    pod = find(objs, "Deployment", f"istiod{suffix}")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][0] == "discovery"
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8080}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config-volume"]["configMap"]["name"] == f"istio{suffix}"
    assert volumes["inject"]["configMap"]["name"] == f"istio-sidecar-injector{suffix}"
    (token,) = volumes["istio-token"]["projected"]["sources"]
    assert token["serviceAccountToken"]["audience"] == "istio-ca"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["config-volume"] == "/etc/istio/config"
    assert mounts["inject"] == "/var/lib/istio/inject"
    find(objs, "ConfigMap", f"istio{suffix}")
    find(objs, "ConfigMap", f"istio-sidecar-injector{suffix}")
    role = find(objs, "Role", f"istiod{suffix}")
    assert any("leases" in r["resources"] for r in role["rules"])
    binding = find(objs, "RoleBinding", f"istiod{suffix}")
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"] == f"istiod{suffix}"


@needs_helm
def test_istiod_injector_webhooks_can_call_a_url() -> None:
    objs = render(
        "charts",
        "istiod",
        "--set",
        "istiodRemote.injectionURL=https://127.0.0.1:9443/inject",
        "--set",
        "istiodRemote.injectionCABundle=Q0E=",
    )
    for hook in find(objs, "MutatingWebhookConfiguration", "istio-sidecar-injector")["webhooks"]:
        assert hook["clientConfig"] == {"url": "https://127.0.0.1:9443/inject", "caBundle": "Q0E="}
        assert hook["failurePolicy"] == "Fail"


# --- gateway --------------------------------------------------------------------------------


@needs_helm
def test_gateway_objects_are_named_after_the_release() -> None:
    objs = render("charts", "gateway")
    selector = {"app": "istio-ingressgateway", "istio": "ingressgateway"}
    for kind in ("Deployment", "Service", "ServiceAccount", "Role", "RoleBinding"):
        obj = find(objs, kind, "istio-ingressgateway")
        assert selector.items() <= obj["metadata"]["labels"].items(), kind
    deployment = find(objs, "Deployment", "istio-ingressgateway")
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["annotations"]["inject.istio.io/templates"] == "gateway"
    assert pod["metadata"]["labels"]["sidecar.istio.io/inject"] == "true"
    assert deployment["spec"]["selector"]["matchLabels"] == selector
    assert selector.items() <= pod["metadata"]["labels"].items()
    service = find(objs, "Service", "istio-ingressgateway")
    assert service["spec"]["type"] == "LoadBalancer"
    assert sorted(p["port"] for p in service["spec"]["ports"]) == [80, 443, 15021]
    assert service["spec"]["selector"] == selector


@needs_helm
def test_gateway_service_type_is_a_value() -> None:
    objs = render("charts", "gateway", "--set", "service.type=ClusterIP")
    assert find(objs, "Service", "istio-ingressgateway")["spec"]["type"] == "ClusterIP"
    assert not [
        o
        for o in render("charts", "gateway", "--set", "service.type=None")
        if o["kind"] == "Service"
    ]


# --- addon manifests ------------------------------------------------------------------------


def load_manifest(name: str) -> list[Obj]:
    docs = [doc for doc in yaml.safe_load_all((ADDONS / name).read_text()) if doc]
    assert docs, name
    return docs


def key(obj: Obj) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def deployments(objs: list[Obj]) -> Iterator[Obj]:
    return (o for o in objs if o["kind"] == "Deployment")


LEGACY = ["legacy-addons.yaml", "legacy-addons-1.0.yaml", "legacy-addons-zipkin.yaml"]
SURVIVORS = ["look-alikes.yaml", "look-alikes-same-name.yaml", "look-alikes-operator.yaml"]


@pytest.mark.parametrize("name", sorted(p.name for p in ADDONS.glob("*.yaml")))
def test_addon_manifest_is_valid(name: str) -> None:
    objs = load_manifest(name)
    assert len({key(o) for o in objs}) == len(objs), "an object appears twice"
    for deployment in deployments(objs):
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items(), (
            key(deployment)
        )
        assert deployment["spec"]["template"]["spec"]["containers"], key(deployment)


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_addons_live_in_istio_system(name: str) -> None:
    for obj in load_manifest(name):
        assert obj["metadata"].get("namespace", NAMESPACE) == NAMESPACE, key(obj)


def test_legacy_addons_cover_the_facts() -> None:
    keys = {key(o) for name in LEGACY for o in load_manifest(name)}
    ns = NAMESPACE
    assert {
        ("Deployment", ns, "prometheus"),
        ("ClusterRole", "", "prometheus"),
        ("ClusterRoleBinding", "", "kiali"),
        ("ConfigMap", ns, "istio-grafana-dashboards"),
        ("ConfigMap", ns, "istio-services-grafana-dashboards"),
        ("Deployment", ns, "jaeger"),
        ("Deployment", ns, "zipkin"),
        ("Service", ns, "jaeger-collector"),
        ("Deployment", ns, "servicegraph"),
        ("Secret", ns, "grafana"),
        ("PersistentVolumeClaim", ns, "istio-grafana-pvc"),
        ("Deployment", ns, "istio-tracing"),
        ("Service", ns, "jaeger-query"),
        ("Service", ns, "jaeger-agent"),
    } <= keys


def test_look_alikes_coexist_with_every_legacy_scenario() -> None:
    look_alikes = {key(o) for o in load_manifest("look-alikes.yaml")}
    for name in LEGACY:
        assert not look_alikes & {key(o) for o in load_manifest(name)}, name


def test_look_alikes_bring_their_namespaces() -> None:
    objs = load_manifest("look-alikes.yaml")
    created = {o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"}
    used = {o["metadata"].get("namespace") for o in objs} - {None, NAMESPACE}
    assert used <= created


def test_same_name_look_alikes_carry_no_addon_labels() -> None:
    addon_labels = (
        {("app.kubernetes.io/name", v) for v in ("prometheus", "grafana", "kiali")}
        | {
            ("app", v)
            for v in ("prometheus", "grafana", "jaeger", "zipkin", "kiali", "servicegraph")
        }
        | {("name", "zipkin")}
    )
    legacy = {key(o) for name in LEGACY for o in load_manifest(name)}
    for obj in load_manifest("look-alikes-same-name.yaml"):
        assert key(obj) in legacy, f"{key(obj)} does not share a legacy addon's name"
        assert not set(obj["metadata"].get("labels", {}).items()) & addon_labels, key(obj)


def test_addon_catalog_agrees_with_the_fixtures() -> None:
    """Every legacy fixture object matches a row of patches/legacy-addons.yaml; no look-alike does.

    The rule is the product's own (kymamesh.steps.addons): kind, namespace and name equal,
    every label of the row, and the row's selector, ports and data keys where it has them.
    """
    from kymamesh.steps.addons import legacy_matches, load_catalog

    rows = load_catalog(FIXTURES.parents[1] / "patches" / "legacy-addons.yaml")

    def matched(obj: Obj) -> bool:
        return bool(legacy_matches(rows, [obj]))

    for name in LEGACY:
        assert [key(o) for o in load_manifest(name) if not matched(o)] == [], name
    for name in SURVIVORS:
        assert [key(o) for o in load_manifest(name) if matched(o)] == [], name
