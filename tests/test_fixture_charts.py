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
CHART_SETS = {
    "charts": "1.30.3",
    "charts-1.29": "1.29.4",
    "charts-1.30.5": "1.30.5",
    "charts-1.31": "1.31.1",
}
# charts folder -> the default image hub of its charts (istiod's global.hub)
HUBS = {
    "charts": "registry.istio.io/release",
    "charts-1.29": "docker.io/istio",
    "charts-1.30.5": "registry.istio.io/release",
    "charts-1.31": "docker.io/istio",
}
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


def _make_charts() -> Any:
    spec = importlib.util.spec_from_file_location("make_charts", FIXTURES / "make_charts.py")
    assert spec is not None and spec.loader is not None
    make_charts = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = make_charts  # dataclasses look their module up there
    spec.loader.exec_module(make_charts)
    return make_charts


def test_derived_charts_match_their_source() -> None:
    make_charts = _make_charts()
    assert make_charts.stale_overlays() == [], (
        "a source file that an overlay replaces changed: carry the change over to the overlay, "
        "then run python tests/fixtures/make_charts.py --accept-overlays"
    )
    assert make_charts.stale_paths() == [], (
        "stale derived charts: run python tests/fixtures/make_charts.py"
    )
    assert set(make_charts.RELEASES) | {"charts"} == set(CHART_SETS)
    for folder, release in make_charts.RELEASES.items():
        assert (release.version, release.hub) == (CHART_SETS[folder], HUBS[folder]), folder


@pytest.fixture
def fixtures_copy(tmp_path: Path) -> Any:
    """make_charts.py working on a copy of tests/fixtures (symlinks kept as symlinks)."""
    make_charts = _make_charts()
    root = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, root, symlinks=True, ignore=shutil.ignore_patterns("addons"))
    make_charts.FIXTURES = root
    make_charts.SOURCE = root / "charts"
    make_charts.OVERLAYS = root / "overlays"
    assert make_charts.stale_paths() == [] and make_charts.stale_overlays() == []
    return make_charts


def test_make_charts_check_finds_what_is_stale(fixtures_copy: Any) -> None:
    make_charts = fixtures_copy
    root = make_charts.FIXTURES
    # a derived file edited by hand, a file added, a link gone
    chart_yaml = root / "charts-1.30.5" / "istiod" / "Chart.yaml"
    chart_yaml.write_text(chart_yaml.read_text() + "# edited\n")
    (root / "charts-1.31" / "gateway" / "templates" / "extra.yaml").write_text("{}\n")
    (root / "charts-1.29" / "base" / "templates").unlink()
    assert make_charts.main(["--check"]) == 1
    assert make_charts.stale_paths() == [
        "charts-1.29/base/templates",
        "charts-1.30.5/istiod/Chart.yaml",
        "charts-1.31/gateway/templates/extra.yaml",
    ]
    make_charts.write()
    assert make_charts.stale_paths() == []
    # the source version moves on: every generated file is stale
    source_chart = root / "charts" / "gateway" / "Chart.yaml"
    source_chart.write_text(source_chart.read_text().replace("keywords:", "home: x\nkeywords:"))
    assert make_charts.stale_paths() == [f"{f}/gateway/Chart.yaml" for f in make_charts.RELEASES]


def test_make_charts_check_names_a_source_file_an_overlay_replaces(fixtures_copy: Any) -> None:
    make_charts = fixtures_copy
    root = make_charts.FIXTURES
    source = root / "charts" / "istiod" / "templates" / "deployment.yaml"
    source.write_text(source.read_text() + "# a fix the overlay lacks\n")
    assert make_charts.stale_overlays() == [
        "charts/istiod/templates/deployment.yaml changed since "
        "overlays/1.31/istiod/templates/deployment.yaml was made from it: carry the change over"
    ]
    assert make_charts.main(["--check"]) == 1
    assert make_charts.stale_paths() == []  # the derived folders themselves are fine
    make_charts.main(["--accept-overlays"])
    assert make_charts.stale_overlays() == []


def test_make_charts_keeps_versions_out_of_shared_files(fixtures_copy: Any) -> None:
    make_charts = fixtures_copy
    root = make_charts.FIXTURES
    overlay_file = root / "overlays" / "1.31" / "gateway" / "templates" / "service.yaml"
    overlay_file.write_text(overlay_file.read_text() + "# docker.io/istio\n")
    with pytest.raises(SystemExit, match="names a version or a hub"):
        make_charts.stale_paths()
    overlay_file.write_text(overlay_file.read_text().replace("# docker.io/istio\n", ""))
    template = root / "charts" / "istiod" / "templates" / "service.yaml"
    template.write_text(template.read_text() + "# 1.30.3\n")
    with pytest.raises(SystemExit, match="below the chart's top level"):
        make_charts.stale_paths()


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
    assert container["image"] == f"{HUBS[chart_set]}/pilot:{CHART_SETS[chart_set]}"
    assert injector_values(render(chart_set, "istiod"))["global"]["hub"] == HUBS[chart_set]
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


# --- what differs between the releases -----------------------------------------------------

SETS_130 = ("charts", "charts-1.30.5")
COMPAT_130_ENV = {
    "PILOT_ENABLE_STRICT_GATEWAY_MERGING": "false",
    "PILOT_SPAWN_UPSTREAM_SPAN_FOR_GATEWAY": "false",
    "PILOT_AUTO_SEND_UNHEALTHY_ENDPOINTS": "false",
}


def istiod_container(objs: tuple[Obj, ...]) -> Obj:
    (container,) = find(objs, "Deployment", "istiod")["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def istiod_env(objs: tuple[Obj, ...]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in istiod_container(objs)["env"]}


def _helm_fails(*args: str) -> str:
    assert HELM is not None
    result = subprocess.run([HELM, *args], capture_output=True, text=True, check=False)
    assert result.returncode != 0, f"helm {' '.join(args)} succeeded"
    return result.stderr


@needs_helm
@pytest.mark.parametrize("chart_set", CHART_SETS)
def test_sidecar_template_init_image_field_per_release(chart_set: str) -> None:
    """istio-init's image: .ProxyInitImage in 1.31's injection template, .ProxyImage before."""
    sidecar = injector_config(render(chart_set, "istiod"))["templates"]["sidecar"]
    init, proxy = sidecar.split("- name: istio-proxy")
    assert '"{{ .ProxyImage }}"' in proxy
    if chart_set == "charts-1.31":
        assert '"{{ .ProxyInitImage }}"' in init and ".ProxyImage" not in init
    else:
        assert '"{{ .ProxyImage }}"' in init and ".ProxyInitImage" not in sidecar


@needs_helm
@pytest.mark.parametrize("chart_set", CHART_SETS)
def test_istiod_termination_message_policy_from_131(chart_set: str) -> None:
    assert "terminationMessagePolicy" not in istiod_container(render(chart_set, "istiod"))
    container = istiod_container(
        render(chart_set, "istiod", "--set", "terminationMessagePolicy=FallbackToLogsOnError")
    )
    if chart_set == "charts-1.31":
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    else:
        assert "terminationMessagePolicy" not in container


@needs_helm
@pytest.mark.parametrize("chart_set", CHART_SETS)
def test_istiod_untaint_controller_taint_name(chart_set: str) -> None:
    """taint.{enabled,name,namespace}: read by every set (1.30.3 added the taint name)."""
    env = istiod_env(render(chart_set, "istiod"))
    assert "PILOT_ENABLE_NODE_UNTAINT_CONTROLLERS" not in env
    objs = render(chart_set, "istiod", "--set", "taint.enabled=true")
    assert istiod_env(objs)["PILOT_ENABLE_NODE_UNTAINT_CONTROLLERS"] == "true"
    assert istiod_env(objs)["PILOT_NODE_UNTAINT_CONTROLLERS_TAINT_NAME"] == "cni.istio.io/not-ready"
    assert not [a for a in istiod_container(objs)["args"] if a.startswith("--cniNamespace")]
    objs = render(
        chart_set,
        "istiod",
        "--set",
        "taint.enabled=true",
        "--set",
        "taint.name=example.com/no-cni",
        "--set",
        "taint.namespace=kube-system",
    )
    assert istiod_env(objs)["PILOT_NODE_UNTAINT_CONTROLLERS_TAINT_NAME"] == "example.com/no-cni"
    assert "--cniNamespace=kube-system" in istiod_container(objs)["args"]


@needs_helm
@pytest.mark.parametrize("chart_set", CHART_SETS)
def test_reader_service_account_of_ones_own_from_131(chart_set: str) -> None:
    reader = ("--set", "global.readerServiceAccount.name=my-reader")
    reader += ("--set", "global.readerServiceAccount.namespace=tools")
    base_accounts = [o for o in render(chart_set, "base", *reader) if o["kind"] == "ServiceAccount"]
    binding = find(
        render(chart_set, "istiod", *reader),
        "ClusterRoleBinding",
        "istio-reader-clusterrole-istio-system",
    )
    if chart_set == "charts-1.31":
        assert base_accounts == []
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "my-reader", "namespace": "tools"}
        ]
    else:
        assert [a["metadata"]["name"] for a in base_accounts] == ["istio-reader-service-account"]
        assert binding["subjects"][0]["name"] == "istio-reader-service-account"
    # unset, every set binds the base chart's own
    default = find(
        render(chart_set, "istiod"), "ClusterRoleBinding", "istio-reader-clusterrole-istio-system"
    )
    assert default["subjects"] == [
        {"kind": "ServiceAccount", "name": "istio-reader-service-account", "namespace": NAMESPACE}
    ]
    find(render(chart_set, "base"), "ServiceAccount", "istio-reader-service-account")


@needs_helm
@pytest.mark.parametrize("chart_set", CHART_SETS)
def test_gateway_dns_and_health_check_node_port_from_131(chart_set: str) -> None:
    objs = render(
        chart_set,
        "gateway",
        "--set",
        "service.externalTrafficPolicy=Local",
        "--set",
        "service.healthCheckNodePort=30021",
        "--set",
        "dnsPolicy=None",
        "--set-json",
        'dnsConfig={"nameservers": ["10.0.0.10"], "searches": ["svc.cluster.local"]}',
    )
    service = find(objs, "Service", "istio-ingressgateway")["spec"]
    pod = find(objs, "Deployment", "istio-ingressgateway")["spec"]["template"]["spec"]
    if chart_set == "charts-1.31":
        assert service["healthCheckNodePort"] == 30021
        assert pod["dnsPolicy"] == "None"
        assert pod["dnsConfig"] == {"nameservers": ["10.0.0.10"], "searches": ["svc.cluster.local"]}
    else:
        assert "healthCheckNodePort" not in service
        assert "dnsPolicy" not in pod and "dnsConfig" not in pod
    plain = render(chart_set, "gateway")
    assert "healthCheckNodePort" not in find(plain, "Service", "istio-ingressgateway")["spec"]
    plain_pod = find(plain, "Deployment", "istio-ingressgateway")["spec"]["template"]["spec"]
    assert "dnsPolicy" not in plain_pod and "dnsConfig" not in plain_pod


@needs_helm
def test_compatibility_version_130_gives_back_130_behaviour() -> None:
    plain = istiod_env(render("charts-1.31", "istiod"))
    assert not set(COMPAT_130_ENV) & set(plain)
    compat = istiod_env(render("charts-1.31", "istiod", "--set", "compatibilityVersion=1.30"))
    assert {k: compat[k] for k in COMPAT_130_ENV} == COMPAT_130_ENV
    # nothing else moves: the profile only adds istiod's environment
    assert {k: v for k, v in compat.items() if k not in COMPAT_130_ENV} == plain
    merged = json.loads(
        find(
            render("charts-1.31", "istiod", "--set", "compatibilityVersion=1.30"),
            "ConfigMap",
            "values",
        )["data"]["merged-values"]
    )
    assert merged["env"] == COMPAT_130_ENV
    # the 1.29 profile gives back 1.30's change too (and, as Istio's, leaves the span flag)
    compat_129 = istiod_env(render("charts-1.31", "istiod", "--set", "compatibilityVersion=1.29"))
    assert compat_129["PILOT_SIDECAR_PICK_BEST_SERVICE_NAMESPACE"] == "false"
    assert compat_129["PILOT_AUTO_SEND_UNHEALTHY_ENDPOINTS"] == "false"
    assert compat_129["PILOT_ENABLE_STRICT_GATEWAY_MERGING"] == "false"
    assert "PILOT_SPAWN_UPSTREAM_SPAN_FOR_GATEWAY" not in compat_129
    # base and gateway take the value too (the profile changes nothing they render)
    for chart in ("base", "gateway"):
        assert render("charts-1.31", chart, "--set", "compatibilityVersion=1.30") == render(
            "charts-1.31", chart
        )


@needs_helm
def test_compatibility_profile_sits_under_the_users_values() -> None:
    """As in Istio's charts: the user's `pilot.env` wins over the profile, but the profile's
    `pilot.env` is copied over the top level last, so a top-level `env` entry loses to it."""
    args = ("--set", "compatibilityVersion=1.30")
    env = istiod_env(
        render(
            "charts-1.31",
            "istiod",
            *args,
            "--set",
            "pilot.env.PILOT_AUTO_SEND_UNHEALTHY_ENDPOINTS=true",
        )
    )
    assert env["PILOT_AUTO_SEND_UNHEALTHY_ENDPOINTS"] == "true"
    assert env["PILOT_ENABLE_STRICT_GATEWAY_MERGING"] == "false"
    env = istiod_env(
        render(
            "charts-1.31", "istiod", *args, "--set", "env.PILOT_AUTO_SEND_UNHEALTHY_ENDPOINTS=true"
        )
    )
    assert env["PILOT_AUTO_SEND_UNHEALTHY_ENDPOINTS"] == "false"
    env = istiod_env(render("charts-1.31", "istiod", *args, "--set", "env.MY_SETTING=1"))
    assert env["MY_SETTING"] == "1" and env["PILOT_ENABLE_STRICT_GATEWAY_MERGING"] == "false"


@needs_helm
@pytest.mark.parametrize("chart_set", CHART_SETS)
@pytest.mark.parametrize("chart", RELEASE_NAMES)
def test_unknown_compatibility_version_is_refused(
    chart_set: str, chart: str, tmp_path: Path
) -> None:
    known = {"charts-1.31": ["1.29", "1.30"]}.get(chart_set, [])
    for version in ["1.28", "1.31", *(["1.30"] if not known else [])]:
        stderr = _helm_fails(
            "template",
            RELEASE_NAMES[chart],
            str(FIXTURES / chart_set / chart),
            "--set",
            f"compatibilityVersion={version}",
        )
        assert f"unknown compatibility version {version}" in stderr
    for version in known:
        render(chart_set, chart, "--set", f"compatibilityVersion={version}")
    # a values file that writes the version as a YAML number (1.3) finds no profile
    values = tmp_path / "values.yaml"
    values.write_text("compatibilityVersion: 1.30\n")
    stderr = _helm_fails(
        "template", RELEASE_NAMES[chart], str(FIXTURES / chart_set / chart), "-f", str(values)
    )
    assert "unknown compatibility version 1.3" in stderr


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
