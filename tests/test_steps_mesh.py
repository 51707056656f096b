"""Steps 1-5 without a cluster: the JSON/YAML edits, quantities, and each step's check/apply
against an in-memory cluster (the real cluster runs are in tests/test_patch_cluster.py)."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

import pytest
import yaml

from kymamesh.adapters.cluster import Ref
from kymamesh.errors import ConflictError, InsecureValuesError, PreconditionError, UsageError
from kymamesh.steps._configmaps import MissingConfigError, changed_parts, dump_yaml
from kymamesh.steps.base import StepContext
from kymamesh.steps.injector import (
    InjectionPolicyStep,
    SidecarResourcesStep,
    policy_editor,
    resources_editor,
    set_top_level_key,
    wanted_resources,
)
from kymamesh.steps.meshconfig import (
    ExtAuthzStep,
    TracingStep,
    apply_ext_authz,
    apply_tracing,
    ext_authz_wanted,
    in_namespace,
    tracing_wanted,
)
from kymamesh.steps.mtls import PeerAuthenticationStep
from kymamesh.units import duration, quantity, same_resources
from kymamesh.workflows.patching import load_patch_list
from tests.support_mesh import (
    INJECTOR_CONFIG,
    INJECTOR_VALUES,
    MESH,
    FakeCluster,
    configmap,
    istiod_deployment,
)

NS = "istio-system"


def params_of(step: str) -> dict[str, Any]:
    return dict(next(s for s in load_patch_list() if s.name == step).params)


def ctx(cluster: FakeCluster, params: dict[str, Any], dry_run: bool = False) -> StepContext:
    return StepContext(cluster=cluster, namespace=NS, params=params, dry_run=dry_run)  # type: ignore[arg-type]


def converge(step: Any, context: StepContext) -> list[str]:
    """Apply every change of a step, then check that none remains; the summaries."""
    changes = step.check(context)
    for change in changes:
        change.apply(context.cluster)
    assert step.check(context) == []
    return [c.summary for c in changes]


# -- quantities and durations ------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1Gi", "1024Mi"),
        ("1", "1000m"),
        ("0.5", "500m"),
        ("1e3", "1k"),
        (2, "2000m"),
        ("128Mi", 134217728),
        ("1E3", "1k"),
        (".5", "500m"),
        (0.1, "100m"),
        ("1Ei", 2**60),
        ("100n", "0.0000001"),
        (" 1Gi ", "1Gi"),
    ],
)
def test_equal_quantities(a: Any, b: Any) -> None:
    assert quantity(a) == quantity(b)


def test_quantities_compare_by_value() -> None:
    assert quantity("1Gi") > quantity("1G")
    assert quantity("999m") < quantity("1")


@pytest.mark.parametrize(
    "bad",
    ["1GB", "lots", "", "1.2.3Mi", True, None, "1 Gi", "1_000", "Infinity", "NaN", "1ki", "1Mb"],
)
def test_bad_quantity_is_a_clear_error(bad: Any) -> None:
    with pytest.raises(UsageError, match="is not a Kubernetes quantity") as raised:
        quantity(bad)
    assert raised.value.message.startswith(f"'{bad}'")
    assert raised.value.hint and "128Mi" in raised.value.hint


def test_resources_compared_by_value() -> None:
    assert same_resources(
        {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {}},
        {"limits": {"memory": "1024Mi", "cpu": "1000m"}},
    )
    assert not same_resources({"limits": {"memory": "1Gi"}}, {"limits": {"memory": "1G"}})
    assert not same_resources(
        {"limits": {"memory": "1Gi", "cpu": "1"}}, {"limits": {"memory": "1Gi"}}
    )


def test_durations() -> None:
    assert duration("5s") == duration("5000ms") == Decimal(5)
    assert duration("1m30s") == Decimal(90)
    with pytest.raises(UsageError):
        duration("5 seconds")


# -- sidecar-resources ----------------------------------------------------------------


def test_resources_edit_keeps_the_rest_and_is_idempotent() -> None:
    wanted = {
        k: wanted_resources(params_of("sidecar-resources"), n)
        for n, k in (("proxy", "proxy"), ("proxyInit", "proxy_init"))
    }
    edit = resources_editor(wanted)(INJECTOR_VALUES)
    assert edit is not None
    before, after = json.loads(INJECTOR_VALUES), json.loads(edit.text)
    assert after["global"]["proxy"]["resources"] == {
        "requests": {"cpu": "10m", "memory": "128Mi"},
        "limits": {"cpu": "1", "memory": "1024Mi"},
    }
    assert after["global"]["proxy_init"]["resources"]["limits"] == {"cpu": "100m", "memory": "50Mi"}
    for key in ("proxy", "proxy_init"):
        after["global"][key].pop("resources")
        before["global"][key].pop("resources", None)
    assert after == before  # everything else untouched
    assert any("global.proxy_init.resources" in s for s in edit.summaries)
    assert resources_editor(wanted)(edit.text) is None


def test_resources_spelled_differently_are_in_place() -> None:
    values = json.loads(INJECTOR_VALUES)
    values["global"]["proxy"]["resources"] = {
        "requests": {"cpu": "0.01", "memory": "0.125Gi"},
        "limits": {"cpu": "1000m", "memory": "1Gi"},
    }
    wanted = {"proxy": wanted_resources(params_of("sidecar-resources"), "proxy")}
    assert resources_editor(wanted)(json.dumps(values)) is None


def test_resources_without_global_are_added() -> None:
    edit = resources_editor({"proxy": {"limits": {"memory": "512Mi"}}})('{"revision": ""}')
    assert edit is not None
    assert json.loads(edit.text) == {
        "revision": "",
        "global": {"proxy": {"resources": {"limits": {"memory": "512Mi"}}}},
    }


def test_resources_params_are_checked() -> None:
    with pytest.raises(UsageError, match=r"proxy\.limits\.memory"):
        wanted_resources({"proxy": {"limits": {"memory": "a lot"}}}, "proxy")
    with pytest.raises(UsageError, match="above its limit"):
        wanted_resources(
            {"proxy": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}}, "proxy"
        )
    with pytest.raises(UsageError, match=r"proxy\.requests\.cpu is -100m, below zero"):
        wanted_resources({"proxy": {"requests": {"cpu": "-100m"}}}, "proxy")
    assert wanted_resources({"proxy": {"limits": {"cpu": None, "memory": "1Gi"}}}, "proxy") == {
        "limits": {"memory": "1Gi"}
    }
    assert wanted_resources({"proxyInit": None}, "proxyInit") is None


# -- injection-policy -------------------------------------------------------------------


def test_policy_edit_changes_one_line_only() -> None:
    edit = policy_editor("disabled")(INJECTOR_CONFIG)
    assert edit is not None
    old, new = INJECTOR_CONFIG.splitlines(), edit.text.splitlines()
    assert len(old) == len(new)
    assert [(a, b) for a, b in zip(old, new, strict=True) if a != b] == [
        ("policy: enabled", "policy: disabled")
    ]
    parsed = yaml.safe_load(edit.text)
    assert parsed["policy"] == "disabled"
    assert "    policy: enabled" in edit.text  # the line inside the template stays
    assert policy_editor("disabled")(edit.text) is None


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('policy: "enabled"   # set by the chart\nx: 1\n', "policy: disabled   # set by the chart"),
        ("x: 1\n", "policy: disabled"),
        ("x: 1", "policy: disabled"),
    ],
)
def test_policy_line_variants(text: str, line: str) -> None:
    result = set_top_level_key(text, "policy", "disabled")
    assert line in result.splitlines()
    assert yaml.safe_load(result) == {**yaml.safe_load(text), "policy": "disabled"}


def test_policy_in_flow_style_is_rewritten_whole() -> None:
    text = '{policy: enabled, templates: {sidecar: "a\\nb\\n"}}'
    result = set_top_level_key(text, "policy", "disabled")
    assert yaml.safe_load(result) == {"policy": "disabled", "templates": {"sidecar": "a\nb\n"}}
    assert "sidecar: |" in result  # multi-line strings stay literal blocks


def test_bad_policy_param() -> None:
    with pytest.raises(UsageError, match="not one of"):
        InjectionPolicyStep().preflight(ctx(FakeCluster(), {"policy": "maybe"}))


# -- tracing-kyma-zipkin ----------------------------------------------------------------


def test_tracing_edit() -> None:
    mesh = yaml.safe_load(MESH)
    original = yaml.safe_load(MESH)
    done = apply_tracing(mesh, tracing_wanted(params_of("tracing-kyma-zipkin"), NS))
    assert mesh["defaultConfig"]["tracing"] == {"zipkin": {"address": "zipkin.kyma-system:9411"}}
    assert mesh["extensionProviders"] == [
        original["extensionProviders"][1],  # otel, elsewhere: kept
        {
            "name": "kyma-zipkin",
            "zipkin": {"service": "zipkin.kyma-system.svc.cluster.local", "port": 9411},
        },
    ]
    assert mesh["defaultProviders"] == {"metrics": ["prometheus"], "tracing": ["kyma-zipkin"]}
    for key in ("defaultConfig", "extensionProviders", "defaultProviders"):
        mesh.pop(key)
        original.pop(key)
    assert mesh == original
    text = " | ".join(done)
    assert "removed extension provider zipkin (Zipkin in istio-system" in text
    assert "was zipkin.istio-system:9411" in text
    assert "istio-system" not in yaml.safe_dump(
        {k: v for k, v in mesh.items() if k != "rootNamespace"}
    )


def test_tracing_provider_present_but_not_selected_is_not_in_place() -> None:
    wanted = tracing_wanted(params_of("tracing-kyma-zipkin"), NS)
    mesh: dict[str, Any] = {
        "defaultConfig": {"tracing": {"zipkin": {"address": "zipkin.kyma-system:9411"}}},
        "extensionProviders": [copy.deepcopy(wanted.provider)],
        "defaultProviders": {"metrics": ["prometheus"]},
    }
    done = apply_tracing(mesh, wanted)
    assert done == ["defaultProviders.tracing kyma-zipkin (was none): tracing is active"]
    assert mesh["defaultProviders"] == {"metrics": ["prometheus"], "tracing": ["kyma-zipkin"]}
    assert apply_tracing(mesh, wanted) == []
    # another provider selected instead of ours (or beside it) is not in place either
    for selected in (["otel"], ["kyma-zipkin", "otel"]):
        mesh["defaultProviders"]["tracing"] = selected
        assert apply_tracing(copy.deepcopy(mesh), wanted) != []


def test_tracing_step_check_reports_an_unselected_provider() -> None:
    params = params_of("tracing-kyma-zipkin")
    wanted = tracing_wanted(params, NS)
    mesh = {
        "defaultConfig": {"tracing": {"zipkin": {"address": wanted.address}}},
        "extensionProviders": [wanted.provider],
    }
    cluster = FakeCluster([configmap("istio", {"mesh": dump_yaml(mesh)})])
    changes = TracingStep().check(ctx(cluster, params))
    assert [c.summary for c in changes] == [
        "defaultProviders.tracing kyma-zipkin (was none): tracing is active"
    ]
    assert "+  tracing:\n+  - kyma-zipkin" in changes[0].diff


def test_tracing_to_opentelemetry_and_back() -> None:
    params = {**params_of("tracing-kyma-zipkin"), "tracer": "opentelemetry"}
    otel = tracing_wanted(params, NS)
    mesh = yaml.safe_load(MESH)
    done = apply_tracing(mesh, otel)
    assert mesh["defaultProviders"]["tracing"] == ["kyma-opentelemetry"]
    names = [p["name"] for p in mesh["extensionProviders"]]
    assert names == ["otel", "kyma-opentelemetry"]  # the user's own kept; istio-system's gone
    assert mesh["extensionProviders"][1] == {
        "name": "kyma-opentelemetry",
        "opentelemetry": {
            "service": "telemetry-otlp-traces.kyma-system.svc.cluster.local",
            "port": 4317,
        },
    }
    assert "added extension provider kyma-opentelemetry (opentelemetry " in " | ".join(done)
    assert "zipkin.istio-system" not in yaml.safe_dump(mesh)
    assert apply_tracing(mesh, otel) == []

    zipkin = tracing_wanted(params_of("tracing-kyma-zipkin"), NS)
    done = apply_tracing(mesh, zipkin)
    assert [p["name"] for p in mesh["extensionProviders"]] == ["otel", "kyma-zipkin"]
    assert mesh["defaultProviders"]["tracing"] == ["kyma-zipkin"]
    assert "removed extension provider kyma-opentelemetry (not the chosen tracer)" in done
    assert apply_tracing(mesh, zipkin) == []


def test_opentelemetry_service_and_port_are_configurable() -> None:
    params = {
        **params_of("tracing-kyma-zipkin"),
        "tracer": "opentelemetry",
        "opentelemetry": {
            "name": "otlp",
            "service": "collector.observability.svc.cluster.local",
            "port": "4318",
            "http": {"path": "/v1/traces", "timeout": "3s"},
        },
    }
    wanted = tracing_wanted(params, NS)
    assert wanted.provider == {
        "name": "otlp",
        "opentelemetry": {
            "service": "collector.observability.svc.cluster.local",
            "port": 4318,
            "http": {"path": "/v1/traces", "timeout": "3s"},
        },
    }
    mesh: dict[str, Any] = {}
    apply_tracing(mesh, wanted)
    assert mesh["defaultProviders"] == {"tracing": ["otlp"]}


def test_tracing_in_place_and_other_tracer_replaced() -> None:
    wanted = tracing_wanted(params_of("tracing-kyma-zipkin"), NS)
    mesh: dict[str, Any] = {
        "defaultConfig": {"tracing": {"sampling": 10, "datadog": {"address": "dd:8126"}}}
    }
    done = apply_tracing(mesh, wanted)
    assert mesh["defaultConfig"]["tracing"] == {
        "sampling": 10,
        "zipkin": {"address": "zipkin.kyma-system:9411"},
    }
    assert any("datadog" in d for d in done)
    assert apply_tracing(mesh, wanted) == []


@pytest.mark.parametrize(
    ("address", "inside"),
    [
        ("zipkin.istio-system:9411", True),
        ("zipkin.istio-system.svc.cluster.local", True),
        ("jaeger-collector.istio-system.svc:9411", True),
        ("zipkin.kyma-system:9411", False),
        ("zipkin", False),
        ("istio-system.example.com", False),
    ],
)
def test_in_namespace(address: str, inside: bool) -> None:
    assert in_namespace(address, NS) is inside


def test_tracing_params_are_checked() -> None:
    base = params_of("tracing-kyma-zipkin")
    with pytest.raises(UsageError, match="tracer must be zipkin or opentelemetry"):
        tracing_wanted({**base, "tracer": "jaeger"}, NS)
    with pytest.raises(UsageError, match=r"opentelemetry\.port must be a port number"):
        tracing_wanted({**base, "opentelemetry": {**base["opentelemetry"], "port": "x"}}, NS)
    with pytest.raises(UsageError, match="both 'kyma-zipkin'"):
        tracing_wanted(
            {**base, "opentelemetry": {**base["opentelemetry"], "name": "kyma-zipkin"}}, NS
        )
    with pytest.raises(UsageError, match="HOST:PORT"):
        tracing_wanted(
            {**params_of("tracing-kyma-zipkin"), "zipkinAddress": "zipkin.kyma-system"}, NS
        )
    with pytest.raises(UsageError, match="the Zipkin this step removes"):
        tracing_wanted(
            {**params_of("tracing-kyma-zipkin"), "zipkinAddress": "zipkin.istio-system:9411"}, NS
        )


# -- pilot-webhook ------------------------------------------------------------------------


def test_ext_authz_add_keep_remove() -> None:
    params = params_of("pilot-webhook")
    wanted = ext_authz_wanted(params)
    mesh = yaml.safe_load(MESH)
    done = apply_ext_authz(mesh, wanted)
    entry = mesh["extensionProviders"][-1]
    assert entry == {
        "name": "kyma-webhook",
        "envoyExtAuthzHttp": {
            "service": "kyma-webhook.kyma-system.svc.cluster.local",
            "port": 8443,
            "timeout": "5s",
            "includeRequestHeadersInCheck": ["authorization", "cookie"],
            "headersToUpstreamOnAllow": ["authorization"],
        },
    }
    assert done and "added" in done[0]
    assert apply_ext_authz(mesh, wanted) == []
    entry["envoyExtAuthzHttp"]["timeout"] = "5000ms"  # the same duration
    assert apply_ext_authz(mesh, wanted) == []
    assert apply_ext_authz(
        mesh, ext_authz_wanted({**params, "provider": {**params["provider"], "port": 9443}})
    )
    assert mesh["extensionProviders"][-1]["envoyExtAuthzHttp"]["port"] == 9443
    removed = apply_ext_authz(mesh, ext_authz_wanted({**params, "enabled": False}))
    assert removed == ["removed extension provider kyma-webhook"]
    assert [p["name"] for p in mesh["extensionProviders"]] == ["zipkin", "otel"]
    assert apply_ext_authz(mesh, ext_authz_wanted({**params, "enabled": False})) == []


def test_ext_authz_params_are_checked() -> None:
    params = params_of("pilot-webhook")
    with pytest.raises(UsageError, match="timeout"):
        ext_authz_wanted({**params, "provider": {**params["provider"], "timeout": "soon"}})
    with pytest.raises(UsageError, match="port"):
        ext_authz_wanted({**params, "provider": {**params["provider"], "port": 70000}})
    with pytest.raises(UsageError, match="without a port"):
        ext_authz_wanted({**params, "provider": {**params["provider"], "service": "a.b:80"}})


# -- the steps against an in-memory cluster ---------------------------------------------


def istio_cluster(**extra_data: str) -> FakeCluster:
    return FakeCluster(
        [
            istiod_deployment(),
            configmap(
                "istio-sidecar-injector", {"values": INJECTOR_VALUES, "config": INJECTOR_CONFIG}
            ),
            configmap("istio", {"mesh": MESH, "meshNetworks": "networks: {}", **extra_data}),
        ]
    )


@pytest.mark.parametrize(
    ("step", "name"),
    [
        (SidecarResourcesStep(), "sidecar-resources"),
        (InjectionPolicyStep(), "injection-policy"),
        (TracingStep(), "tracing-kyma-zipkin"),
        (ExtAuthzStep(), "pilot-webhook"),
    ],
)
def test_configmap_steps_converge_and_touch_one_key(step: Any, name: str) -> None:
    cluster = istio_cluster()
    before = {ref: obj["data"] for ref, obj in cluster.objects.items() if ref.kind == "ConfigMap"}
    context = ctx(cluster, params_of(name))
    assert step.preflight(context) is None
    changes = step.check(context)
    assert len(changes) == 1 and changes[0].diff
    assert converge(step, context)
    assert len(cluster.writes) == 1  # one merge patch of one key
    after = {ref: obj["data"] for ref, obj in cluster.objects.items() if ref.kind == "ConfigMap"}
    changed = {
        (ref.name, k) for ref in before for k in before[ref] if before[ref][k] != after[ref][k]
    }
    assert len(changed) == 1
    assert step.check(context) == []


def test_dry_run_diff_shows_only_what_changes() -> None:
    changes = SidecarResourcesStep().check(ctx(istio_cluster(), params_of("sidecar-resources")))
    diff = changes[0].diff
    assert "+      memory: 50Mi" in diff or "+        memory: 50Mi" in diff
    assert "hub" not in diff and "statusPort" not in diff


def test_missing_configmap_is_a_clear_error() -> None:
    cluster = FakeCluster([istiod_deployment()])
    with pytest.raises(
        MissingConfigError, match="ConfigMap istio-system/istio-sidecar-injector does not exist"
    ):
        SidecarResourcesStep().check(ctx(cluster, params_of("sidecar-resources")))
    cluster = FakeCluster([istiod_deployment(), configmap("istio", {"meshNetworks": ""})])
    with pytest.raises(PreconditionError, match="has no key `mesh`"):
        TracingStep().check(ctx(cluster, params_of("tracing-kyma-zipkin")))


def test_dry_run_before_phase_one_shows_the_changes() -> None:
    cluster = FakeCluster(served=set())
    for step, name in (
        (SidecarResourcesStep(), "sidecar-resources"),
        (PeerAuthenticationStep(), "mtls-strict"),
    ):
        context = ctx(cluster, params_of(name), dry_run=True)
        assert step.preflight(context) is None
        changes = step.check(context)
        assert changes and "once phase 1 has installed" in changes[0].summary
        with pytest.raises(AssertionError):
            changes[0].apply(cluster)  # type: ignore[arg-type]


def test_concurrent_edit_is_redone_on_the_new_content() -> None:
    cluster = istio_cluster()
    context = ctx(cluster, params_of("pilot-webhook"))
    [change] = ExtAuthzStep().check(context)
    ref = Ref("v1", "ConfigMap", "istio", NS)
    cluster.merge_patch(ref, {"data": {"mesh": MESH + "enableTracing: true\n"}})  # someone else
    change.apply(cluster)  # type: ignore[arg-type]
    mesh = yaml.safe_load(cluster.objects[ref]["data"]["mesh"])
    assert mesh["enableTracing"] is True
    assert mesh["extensionProviders"][-1]["name"] == "kyma-webhook"


def test_conflict_that_never_ends_is_an_error() -> None:
    class Busy(FakeCluster):
        def merge_patch(self, ref: Ref, patch: Any) -> Any:
            raise ConflictError("modified", 409)

    cluster = Busy([configmap("istio", {"mesh": MESH})])
    [change] = ExtAuthzStep().check(ctx(cluster, params_of("pilot-webhook")))
    with pytest.raises(ConflictError, match="changed again"):
        change.apply(cluster)  # type: ignore[arg-type]


def test_changed_parts() -> None:
    assert changed_parts(
        {"a": 1, "b": {"c": 1, "d": 2}}, {"a": 1, "b": {"c": 2, "d": 2}, "e": 3}
    ) == (
        {"b": {"c": 1}},
        {"b": {"c": 2}, "e": 3},
    )


def test_dump_yaml_keeps_templates_literal() -> None:
    text = dump_yaml({"templates": {"sidecar": "line 1\n  line 2\n"}, "policy": "disabled"})
    assert "sidecar: |" in text
    assert yaml.safe_load(text) == {
        "templates": {"sidecar": "line 1\n  line 2\n"},
        "policy": "disabled",
    }


# -- mtls-strict --------------------------------------------------------------------------


def pa(
    name: str,
    mode: str | None,
    labels: dict[str, str] | None = None,
    selector: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"mtls": {"mode": mode}} if mode else {}
    if selector:
        spec["selector"] = selector
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": NS, "labels": labels or {}},
        "spec": spec,
    }


def test_strict_created_on_a_fresh_mesh() -> None:
    cluster = FakeCluster([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}])
    context = ctx(cluster, params_of("mtls-strict"))
    assert PeerAuthenticationStep().preflight(context) is None  # no istiod: nothing to ask
    assert converge(PeerAuthenticationStep(), context) == ["created with mtls.mode STRICT"]
    live = cluster.objects[Ref("security.istio.io/v1", "PeerAuthentication", "default", NS)]
    assert live["spec"] == {"mtls": {"mode": "STRICT"}}
    assert live["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "kymamesh"}


@pytest.mark.parametrize("mode", ["PERMISSIVE", "DISABLE", "UNSET", None])
def test_weak_mesh_asks_and_is_made_strict(mode: str | None) -> None:
    cluster = FakeCluster([istiod_deployment(), pa("default", mode)])
    context = ctx(cluster, params_of("mtls-strict"))
    question = PeerAuthenticationStep().preflight(context)
    assert question is not None
    assert (
        f"mesh-wide mTLS is {mode or 'UNSET'} in PeerAuthentication istio-system/default"
        in question
    )
    assert "without a sidecar" in question and question.endswith("?")
    [summary] = converge(PeerAuthenticationStep(), context)
    assert "-> STRICT" in summary and "managed-by=kymamesh" in summary
    assert PeerAuthenticationStep().preflight(context) is None


def test_existing_mesh_without_policy_asks() -> None:
    cluster = FakeCluster([istiod_deployment()])
    question = PeerAuthenticationStep().preflight(ctx(cluster, params_of("mtls-strict")))
    assert question and "Istio's default" in question


def test_other_mesh_wide_policies() -> None:
    cluster = FakeCluster(
        [
            istiod_deployment(),
            pa("legacy", "PERMISSIVE"),
            pa("only-some", "DISABLE", selector={"matchLabels": {"app": "x"}}),
            pa("default", "STRICT", labels={"app.kubernetes.io/managed-by": "kymamesh"}),
        ]
    )
    context = ctx(cluster, params_of("mtls-strict"))
    question = PeerAuthenticationStep().preflight(context)
    assert question and "legacy" in question and "only-some" not in question
    [summary] = converge(PeerAuthenticationStep(), context)
    assert "Istio applies the oldest" in summary
    refs = {r.name: o for r, o in cluster.objects.items() if r.kind == "PeerAuthentication"}
    assert refs["legacy"]["spec"]["mtls"]["mode"] == "STRICT"
    assert "app.kubernetes.io/managed-by" not in refs["legacy"]["metadata"]["labels"]
    assert refs["only-some"]["spec"]["mtls"]["mode"] == "DISABLE"  # not mesh-wide: left alone


def test_default_with_a_selector_is_made_mesh_wide() -> None:
    cluster = FakeCluster(
        [istiod_deployment(), pa("default", "STRICT", selector={"matchLabels": {"a": "b"}})]
    )
    [summary] = converge(PeerAuthenticationStep(), ctx(cluster, params_of("mtls-strict")))
    assert "selector removed" in summary


def test_no_crd_with_istiod_is_an_error() -> None:
    cluster = FakeCluster([istiod_deployment()], served=set())
    with pytest.raises(PreconditionError, match="does not serve PeerAuthentication"):
        PeerAuthenticationStep().preflight(ctx(cluster, params_of("mtls-strict")))


def test_weakening_param_refused() -> None:
    with pytest.raises(InsecureValuesError, match="only sets STRICT"):
        PeerAuthenticationStep().preflight(ctx(FakeCluster(), {"mode": "PERMISSIVE"}))
