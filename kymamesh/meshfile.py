"""The mesh file: every setting of the Kyma Istio module's `Istio` resource, typed.

`kymamesh install|patch --mesh FILE` takes a YAML file shaped like the `spec` of the
module's resource (`config`, `components`, `experimental`, `compatibilityMode`,
`networkPoliciesEnabled`), or a whole `Istio` resource of the module
(`apiVersion: operator.kyma-project.io/v1alpha2`, `kind: Istio`), whose `spec` is read.

One schema, `SCHEMA`, says for each field its type, its allowed values and what kymamesh
makes of it. From it come the validation (every problem is a usage error naming the
field and what it allows, raised before the cluster is contacted), the JSON Schema for
editors (`json_schema()`, published as docs/reference/mesh-file.schema.json) and the
table of the reference (docs/reference/mesh-file.md); `scripts/gen_reference.py`
writes both and a test fails when they are stale.

`translate()` turns a checked file into the parameters of patch steps, which kymamesh
remembers like every other patch setting (`kymamesh.settings`):

- mesh config (`mesh-config`): trusted proxies, client-certificate forwarding, Prometheus
  merge, trust domain, DNS proxying, proxy stats;
- authorizers (`pilot-webhook`'s `authorizers`): external-authorization providers;
- sidecar resources (`sidecar-resources`'s `proxy`);
- the components (`mesh-components`): HPA, rollout strategy and resources of istiod and
  the ingress gateway, the gateway Service's traffic policy, istiod's experimental
  features, the compatibility mode. What of these is a value of Istio's charts reaches
  phase 1 as values (`chart_values()`); the step checks the live objects and edits
  what no chart sets (the gateway's rollout strategy) or what an Istio kymamesh did not
  install carries.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kymamesh.errors import PreconditionError, UsageError

if TYPE_CHECKING:
    from kymamesh.adapters.cluster import Cluster

MODULE_API_VERSION = "operator.kyma-project.io/v1alpha2"
MODULE_KIND = "Istio"
MODULE_NAMESPACE = "kyma-system"
MODULE_NAME = "default"
CLUSTER_SOURCE = "cluster:"

# the egress gateway's Helm release (made from the gateway chart) and its values' key
EGRESS_RELEASE = "istio-egressgateway"
EGRESS_VALUES = "egressgateway"

# restarts a setting needs before running proxies show it
RESTART_SIDECARS = "sidecars"
RESTART_GATEWAYS = "gateways"


@dataclass(frozen=True)
class Field:
    """One field of the mesh file: its type, what it allows, and where it goes."""

    name: str
    kind: str  # object, bool, int, string, enum, strings, map, cpu, memory, intorpercent,
    # duration, regexps, any
    doc: str
    maps_to: str = ""
    children: tuple[Field, ...] = ()
    item: Field | None = None  # the items of a list of objects
    enum: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    pattern: str | None = None
    max_length: int | None = None
    required: bool = False
    restarts: tuple[str, ...] = ()
    refused: str = ""  # why kymamesh cannot honour it (set and true: refused by name)

    def child(self, name: str) -> Field:
        return next(c for c in self.children if c.name == name)


_CPU = r"^([0-9]+m?|[0-9]\.[0-9]{1,3})$"
_MEMORY = r"^[0-9]+(((\.[0-9]+)?(E|P|T|G|M|k|Ei|Pi|Ti|Gi|Mi|Ki|m)?)|(e[0-9]+))$"
_TRUST_DOMAIN = r"^[a-z0-9]*([a-z0-9-_]*)?(\.[a-z0-9]*([a-z0-9-_]*[a-z0-9]*)?)*$"
_SURGE = r"^[0-9]+%?$"
_UNAVAILABLE = r"^((100|[0-9]{1,2})%|[0-9]+)$"
XFCC = ("APPEND_FORWARD", "SANITIZE_SET", "SANITIZE", "ALWAYS_FORWARD_ONLY", "FORWARD_ONLY")


def _claims(what: str) -> Field:
    return Field(
        what,
        "object",
        f"{what} of the container",
        children=(
            Field("cpu", "cpu", "CPU, e.g. 100m or 1", pattern=_CPU),
            Field("memory", "memory", "memory, e.g. 128Mi or 1Gi", pattern=_MEMORY),
        ),
    )


def _resources(maps_to: str) -> Field:
    return Field(
        "resources",
        "object",
        "requests and limits of the container",
        maps_to=maps_to,
        children=(_claims("requests"), _claims("limits")),
    )


def _k8s(hpa: str, strategy: str, resources: str, required: bool = False) -> Field:
    return Field(
        "k8s",
        "object",
        "Kubernetes settings of the component",
        required=required,
        children=(
            Field(
                "hpaSpec",
                "object",
                "the HorizontalPodAutoscaler",
                maps_to=hpa,
                children=(
                    Field("minReplicas", "int", "fewest replicas", minimum=1, maximum=2**31 - 1),
                    Field("maxReplicas", "int", "most replicas", minimum=1, maximum=2**31 - 1),
                ),
            ),
            Field(
                "strategy",
                "object",
                "the rolling update of the Deployment",
                maps_to=strategy,
                children=(
                    Field(
                        "rollingUpdate",
                        "object",
                        "how many Pods may be added and missing during a rollout",
                        required=True,
                        children=(
                            Field(
                                "maxSurge",
                                "intorpercent",
                                "Pods above the wanted count, a number or a percentage",
                                pattern=_SURGE,
                            ),
                            Field(
                                "maxUnavailable",
                                "intorpercent",
                                "Pods that may be unavailable, a number or a percentage",
                                pattern=_UNAVAILABLE,
                            ),
                        ),
                    ),
                ),
            ),
            _resources(resources),
        ),
    )


_HEADERS = Field(
    "headers",
    "object",
    "headers sent to the authorizer and passed on",
    children=(
        Field(
            "inCheck",
            "object",
            "the check request",
            children=(
                Field(
                    "include",
                    "strings",
                    "client request headers sent in the check",
                    maps_to="includeRequestHeadersInCheck",
                ),
                Field(
                    "add",
                    "map",
                    "fixed headers added to the check",
                    maps_to="includeAdditionalHeadersInCheck",
                ),
            ),
        ),
        Field(
            "toUpstream",
            "object",
            "headers passed to the backend",
            children=(
                Field(
                    "onAllow",
                    "strings",
                    "authorizer headers added to an allowed request",
                    maps_to="headersToUpstreamOnAllow",
                ),
            ),
        ),
        Field(
            "toDownstream",
            "object",
            "headers passed to the client",
            children=(
                Field(
                    "onAllow",
                    "strings",
                    "authorizer headers sent to the client when allowed",
                    maps_to="headersToDownstreamOnAllow",
                ),
                Field(
                    "onDeny",
                    "strings",
                    "authorizer headers sent to the client when denied",
                    maps_to="headersToDownstreamOnDeny",
                ),
            ),
        ),
    ),
)

_AUTHORIZER = Field(
    "authorizer",
    "object",
    "an external authorization service",
    children=(
        Field("name", "string", "the provider's name (AuthorizationPolicy CUSTOM)", required=True),
        Field(
            "service",
            "string",
            "the Service host, e.g. authz.my-ns.svc.cluster.local",
            required=True,
        ),
        Field("port", "int", "the Service port", minimum=1, maximum=65535, required=True),
        _HEADERS,
        Field("pathPrefix", "string", "prefix of the check request's path", maps_to="pathPrefix"),
        Field("timeout", "duration", "timeout of the check, e.g. 5s", maps_to="timeout"),
    ),
)

SCHEMA = Field(
    "spec",
    "object",
    "the mesh file",
    children=(
        Field(
            "config",
            "object",
            "mesh-wide settings",
            children=(
                Field(
                    "numTrustedProxies",
                    "int",
                    "proxies in front of the ingress gateway whose X-Forwarded-For is trusted",
                    maps_to="mesh config defaultConfig.gatewayTopology.numTrustedProxies "
                    "(step mesh-config)",
                    minimum=0,
                    maximum=2**32 - 1,
                    restarts=(RESTART_GATEWAYS,),
                ),
                Field(
                    "forwardClientCertDetails",
                    "enum",
                    "what gateways do with the X-Forwarded-Client-Cert header",
                    maps_to="mesh config defaultConfig.gatewayTopology.forwardClientCertDetails "
                    "(step mesh-config)",
                    enum=XFCC,
                    restarts=(RESTART_GATEWAYS,),
                ),
                Field(
                    "authorizers",
                    "list",
                    "external authorization providers (AuthorizationPolicy action CUSTOM)",
                    maps_to="mesh config extensionProviders, type envoyExtAuthzHttp "
                    "(step pilot-webhook, `authorizers`)",
                    item=_AUTHORIZER,
                ),
                Field(
                    "gatewayExternalTrafficPolicy",
                    "enum",
                    "externalTrafficPolicy of the ingress gateway Service (Local keeps the "
                    "client IP)",
                    maps_to="gateway chart service.externalTrafficPolicy (phase 1)",
                    enum=("Local", "Cluster"),
                ),
                Field(
                    "telemetry",
                    "object",
                    "telemetry",
                    children=(
                        Field(
                            "metrics",
                            "object",
                            "metrics",
                            children=(
                                Field(
                                    "prometheusMerge",
                                    "bool",
                                    "sidecars merge the application's metrics with Istio's "
                                    "(scraped at :15020/stats/prometheus)",
                                    maps_to="mesh config enablePrometheusMerge (step mesh-config)",
                                    restarts=(RESTART_SIDECARS,),
                                ),
                            ),
                        ),
                    ),
                ),
                Field(
                    "trustDomain",
                    "string",
                    "the trust domain of the mesh's identities",
                    maps_to="mesh config trustDomain (step mesh-config)",
                    pattern=_TRUST_DOMAIN,
                    max_length=255,
                    restarts=(RESTART_SIDECARS, RESTART_GATEWAYS),
                ),
                Field(
                    "enableDNSProxying",
                    "bool",
                    "sidecars answer the Pod's DNS queries",
                    maps_to="mesh config defaultConfig.proxyMetadata.ISTIO_META_DNS_CAPTURE "
                    "(step mesh-config)",
                    restarts=(RESTART_SIDECARS, RESTART_GATEWAYS),
                ),
                Field(
                    "proxyStatsMatcher",
                    "object",
                    "which Envoy statistics the proxies emit",
                    children=(
                        Field(
                            "inclusionRegexps",
                            "regexps",
                            "regular expressions of the stat names to emit",
                            maps_to="mesh config defaultConfig.proxyStatsMatcher.inclusionRegexps "
                            "(step mesh-config)",
                            restarts=(RESTART_SIDECARS, RESTART_GATEWAYS),
                        ),
                    ),
                ),
            ),
        ),
        Field(
            "components",
            "object",
            "the components of the mesh",
            children=(
                Field(
                    "pilot",
                    "object",
                    "istiod",
                    children=(
                        _k8s(
                            "istiod chart autoscaleMin, autoscaleMax (phase 1)",
                            "istiod chart rollingMaxSurge, rollingMaxUnavailable (phase 1)",
                            "istiod chart resources (phase 1)",
                            required=True,
                        ),
                    ),
                ),
                Field(
                    "ingressGateway",
                    "object",
                    "the ingress gateway",
                    children=(
                        _k8s(
                            "gateway chart autoscaling.minReplicas, maxReplicas (phase 1)",
                            "the gateway Deployment's spec.strategy (step mesh-components)",
                            "gateway chart resources (phase 1)",
                            required=True,
                        ),
                    ),
                ),
                Field(
                    "egressGateway",
                    "object",
                    "an egress gateway",
                    children=(
                        Field(
                            "enabled",
                            "bool",
                            "install an egress gateway (off unless true; false removes the "
                            "one kymamesh installed)",
                            maps_to=f"Helm release {EGRESS_RELEASE} of the gateway chart, "
                            "Service ClusterIP, labels istio=egressgateway (phase 1)",
                        ),
                        _k8s(
                            "egress gateway chart autoscaling.minReplicas, maxReplicas (phase 1)",
                            "the egress gateway Deployment's spec.strategy (step mesh-components)",
                            "egress gateway chart resources (phase 1)",
                        ),
                    ),
                ),
                Field(
                    "cni",
                    "object",
                    "the istio-cni DaemonSet",
                    refused="kymamesh does not install istio-cni: sidecars redirect traffic "
                    "with istio-init",
                    children=(
                        Field(
                            "k8s",
                            "object",
                            "Kubernetes settings of the DaemonSet",
                            required=True,
                            children=(
                                Field("affinity", "any", "Pod affinity"),
                                _resources(""),
                            ),
                        ),
                    ),
                ),
                Field(
                    "proxy",
                    "object",
                    "the sidecars",
                    children=(
                        Field(
                            "k8s",
                            "object",
                            "Kubernetes settings of every sidecar",
                            required=True,
                            children=(
                                _resources(
                                    "injector global.proxy.resources (step sidecar-resources, "
                                    "`proxy`)"
                                ),
                            ),
                        ),
                    ),
                ),
            ),
        ),
        Field(
            "experimental",
            "object",
            "experimental features (they may change or go)",
            children=(
                Field(
                    "pilot",
                    "object",
                    "experimental features of istiod",
                    children=(
                        Field(
                            "enableAlphaGatewayAPI",
                            "bool",
                            "Gateway API alpha resources",
                            maps_to="istiod env PILOT_ENABLE_ALPHA_GATEWAY_API (phase 1)",
                        ),
                        Field(
                            "enableMultiNetworkDiscoverGatewayAPI",
                            "bool",
                            "multi-network discovery through Gateway API gateways",
                            maps_to="istiod env PILOT_MULTI_NETWORK_DISCOVER_GATEWAY_API (phase 1)",
                        ),
                    ),
                ),
                Field(
                    "enableAmbient",
                    "bool",
                    "ambient mode (ztunnel)",
                    refused="kymamesh installs no ztunnel: ambient mode is not offered, "
                    "workloads get sidecars",
                ),
            ),
        ),
        Field(
            "compatibilityMode",
            "bool",
            "keep the behaviour of the previous Istio minor",
            maps_to="the charts' compatibilityVersion: the previous minor (phase 1)",
        ),
        Field(
            "networkPoliciesEnabled",
            "bool",
            "NetworkPolicies that let the mesh work under deny-all in istio-system and "
            "kyma-system (false removes kymamesh's)",
            maps_to="NetworkPolicies kymamesh-istiod, kymamesh-ingressgateway, "
            "kymamesh-egressgateway (istio-system) and kymamesh-sidecars (kyma-system) "
            "(step network-policies)",
        ),
    ),
)


# -- reading and checking ----------------------------------------------------------------


def _allowed(f: Field) -> str:
    """What a field allows, in words (for the error)."""
    if f.kind == "enum":
        return "one of " + ", ".join(f.enum)
    if f.kind == "bool":
        return "true or false"
    if f.kind == "int":
        low = "" if f.minimum is None else f" >= {f.minimum}"
        high = "" if f.maximum is None else f" <= {f.maximum}"
        return "a whole number" + (f"{low} and{high}" if low and high else low or high)
    if f.kind == "object":
        return "a map with keys " + ", ".join(c.name for c in f.children)
    if f.kind == "list":
        return "a list of maps"
    if f.kind in ("strings", "regexps"):
        return "a list of strings"
    if f.kind == "map":
        return "a map of strings to strings"
    if f.kind == "cpu":
        return "a CPU quantity like 100m, 2 or 1.5"
    if f.kind == "memory":
        return "a memory quantity like 128Mi or 1Gi"
    if f.kind == "intorpercent":
        return "a whole number or a percentage like 25%"
    if f.kind == "duration":
        return "a duration like 5s, 500ms or 1m"
    if f.kind == "string" and f.pattern:
        return f"a string matching {f.pattern}"
    return "a string"


class MeshFileError(UsageError):
    code = "mesh-file"


def _bad(where: str, path: str, f: Field, found: Any) -> MeshFileError:
    from kymamesh.istio.meshschema import type_in_words  # lazily: it loads Istio's schema

    plain = isinstance(found, int | str) and not isinstance(found, bool)
    what = f"{found!r}" if plain else type_in_words(found)
    return MeshFileError(
        f"{where}: {path} is {what}; it must be {_allowed(f)}",
        hint=f"fix {path} (docs/reference/mesh-file.md lists every field)",
    )


def _check(value: Any, f: Field, path: str, where: str) -> Any:
    """The value, checked against its field and normalized (quantities as strings)."""
    kind = f.kind
    if value is None:
        return None  # null: the field is not set
    if kind == "object":
        if not isinstance(value, dict):
            raise _bad(where, path, f, value)
        known = {c.name: c for c in f.children}
        unknown = sorted(str(k) for k in value if k not in known)
        if unknown:
            raise MeshFileError(
                f"{where}: {path} has no field {', '.join(unknown)}",
                hint=f"{path} takes: {', '.join(known)}",
            )
        out: dict[str, Any] = {}
        for c in f.children:
            if c.name in value and value[c.name] is not None:
                out[c.name] = _check(value[c.name], c, f"{path}.{c.name}", where)
            elif c.required:
                raise MeshFileError(
                    f"{where}: {path}.{c.name} is required", hint=f"give {path}.{c.name}"
                )
        return out
    if kind == "list":
        if not isinstance(value, list):
            raise _bad(where, path, f, value)
        assert f.item is not None
        return [_check(v, f.item, f"{path}[{i}]", where) for i, v in enumerate(value)]
    if kind in ("strings", "regexps"):
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise _bad(where, path, f, value)
        if kind == "regexps":
            for i, text in enumerate(value):
                try:
                    re.compile(text)
                except re.error as exc:
                    raise MeshFileError(
                        f"{where}: {path}[{i}] {text!r} is not a regular expression: {exc}",
                        hint="write an RE2 regular expression, e.g. .*outlier_detection.*",
                    ) from None
        return list(value)
    if kind == "map":
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise _bad(where, path, f, value)
        return dict(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise _bad(where, path, f, value)
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(where, path, f, value)
        if (f.minimum is not None and value < f.minimum) or (
            f.maximum is not None and value > f.maximum
        ):
            raise _bad(where, path, f, value)
        return value
    if kind == "enum":
        if value not in f.enum:
            raise _bad(where, path, f, value)
        return value
    if kind == "any":
        return copy.deepcopy(value)
    if kind == "intorpercent":
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise _bad(where, path, f, value)
        if f.pattern and not re.match(f.pattern, str(value)):
            raise _bad(where, path, f, value)
        return value
    if kind in ("cpu", "memory"):
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise _bad(where, path, f, value)
        if f.pattern and not re.match(f.pattern, str(value)):
            raise _bad(where, path, f, value)
        return str(value)
    if kind == "duration":
        from kymamesh.units import duration

        try:
            duration(value)
        except UsageError:
            raise _bad(where, path, f, value) from None
        return str(value)
    # string
    if not isinstance(value, str) or not value:
        raise _bad(where, path, f, value)
    if f.max_length is not None and len(value) > f.max_length:
        raise MeshFileError(
            f"{where}: {path} is longer than {f.max_length} characters",
            hint=f"shorten {path}",
        )
    if f.pattern and not re.match(f.pattern, value):
        raise _bad(where, path, f, value)
    return value


def check_value(value: Any, f: Field, where: str, path: str) -> Any:
    """One value checked as field `f` (a usage error naming `where` and `path`)."""
    return _check(value, f, path, where)


def _refusals(value: Any, f: Field, path: str) -> Iterator[tuple[str, str]]:
    """The fields set (to anything but false) that kymamesh cannot honour."""
    if value is None or value is False:
        return
    if f.refused:
        yield path, f.refused
        return
    if f.kind == "object" and isinstance(value, dict):
        for c in f.children:
            if c.name in value:
                yield from _refusals(value[c.name], c, f"{path}.{c.name}")


def check_spec(raw: Any, where: str) -> dict[str, Any]:
    """A mesh file's settings (the `spec` shape), checked: unknown fields, wrong types
    and values out of range are usage errors naming the field and what it allows; so
    is a field kymamesh cannot honour."""
    if raw is None:
        return {}
    spec: dict[str, Any] = _check(raw, SCHEMA, "spec", where)
    refused = list(_refusals(spec, SCHEMA, "spec"))
    if refused:
        raise MeshFileError(
            f"{where}: kymamesh cannot honour "
            + "; ".join(f"{path} ({why})" for path, why in refused),
            hint="drop these fields (or set them to false) and run again",
        )
    for authorizer_check in _authorizer_names(spec):
        raise MeshFileError(
            f"{where}: {authorizer_check}", hint="give each authorizer its own name"
        )
    for component in ("pilot", "ingressGateway"):
        hpa = ((spec.get("components") or {}).get(component) or {}).get("k8s", {}).get("hpaSpec")
        if hpa and hpa.get("minReplicas", 0) > hpa.get("maxReplicas", 2**31):
            raise MeshFileError(
                f"{where}: spec.components.{component}.k8s.hpaSpec.minReplicas "
                f"{hpa['minReplicas']} is above maxReplicas {hpa['maxReplicas']}",
                hint="make minReplicas at most maxReplicas",
            )
    return spec


def _authorizer_names(spec: Mapping[str, Any]) -> Iterator[str]:
    seen: set[str] = set()
    for authorizer in (spec.get("config") or {}).get("authorizers") or []:
        name = authorizer["name"]
        if name in seen:
            yield f"spec.config.authorizers: the name {name!r} is given twice"
        seen.add(name)


def spec_of(doc: Any, where: str) -> dict[str, Any]:
    """The settings of a parsed mesh file: the document itself, or the `spec` of the
    module's `Istio` resource (`kind` and `apiVersion` must then be the module's)."""
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        from kymamesh.istio.meshschema import type_in_words

        raise MeshFileError(
            f"{where} must be a map (found {type_in_words(doc)})",
            hint="write e.g. `config: {numTrustedProxies: 1}`",
        )
    if "kind" in doc or "apiVersion" in doc:
        if doc.get("kind") != MODULE_KIND or doc.get("apiVersion") != MODULE_API_VERSION:
            raise MeshFileError(
                f"{where} is a {doc.get('apiVersion')}/{doc.get('kind')}; kymamesh takes a mesh "
                f"file or the Kyma Istio module's {MODULE_API_VERSION} {MODULE_KIND}",
                hint="give a mesh file (docs/reference/mesh-file.md) or the module's resource",
            )
        unknown = sorted(set(doc) - {"apiVersion", "kind", "metadata", "spec", "status"})
        if unknown:
            raise MeshFileError(
                f"{where}: the {MODULE_KIND} resource has no field {', '.join(unknown)}",
                hint="an Istio resource has apiVersion, kind, metadata and spec",
            )
        return check_spec(doc.get("spec"), where)
    return check_spec(doc, where)


def read_mesh_file(path: Path) -> dict[str, Any]:
    """A mesh file from disk (read as every user file is: `kymamesh.userfiles`), checked."""
    from kymamesh import userfiles

    where = f"--mesh {path}"
    doc = userfiles.read(
        path, where, "a mesh file (docs/reference/mesh-file.md) or the module's Istio resource"
    )
    return spec_of(doc, where)


def read_from_cluster(cluster: Cluster) -> dict[str, Any]:
    """The module's `Istio` resource kyma-system/default from the cluster, checked."""
    from kymamesh.adapters.cluster import Ref

    ref = Ref(MODULE_API_VERSION, MODULE_KIND, MODULE_NAME, MODULE_NAMESPACE)
    where = f"--mesh {CLUSTER_SOURCE} ({MODULE_KIND} {MODULE_NAMESPACE}/{MODULE_NAME})"
    live = cluster.get(ref)
    if live is None:
        raise PreconditionError(
            f"{where}: the cluster has no {MODULE_API_VERSION} {MODULE_KIND} "
            f"{MODULE_NAMESPACE}/{MODULE_NAME}",
            hint="give the settings in a mesh file instead (--mesh FILE)",
        )
    doc = {k: v for k, v in live.items() if k in ("apiVersion", "kind", "spec")}
    return spec_of(doc, where)


# The Kyma Istio module's manager: the Deployment that reconciles its Istio resource.
MODULE_MANAGER = "istio-controller-manager"
MODULE_MANAGER_LABEL = ("app.kubernetes.io/component", "istio-operator.kyma-project.io")


def module_managers(cluster: Cluster) -> list[str]:
    """The Kyma Istio module's manager Deployments in kyma-system that run (replicas > 0):
    `namespace/name` each."""
    key, value = MODULE_MANAGER_LABEL
    found = []
    for deployment in cluster.list("apps/v1", "Deployment", MODULE_NAMESPACE):
        meta = deployment.get("metadata") or {}
        labels = meta.get("labels") or {}
        if meta.get("name") != MODULE_MANAGER and labels.get(key) != value:
            continue
        replicas = (deployment.get("spec") or {}).get("replicas", 1)
        if replicas != 0:
            found.append(f"{MODULE_NAMESPACE}/{meta.get('name')}")
    return sorted(found)


def refuse_module_manager(cluster: Cluster) -> None:
    """While the module's manager runs it owns Istio: kymamesh writing too would make two
    owners that undo each other's changes. Refused, before any write, with the safe way out."""
    running = module_managers(cluster)
    if not running:
        return
    name = running[0].split("/", 1)[1]
    raise PreconditionError(
        f"the Kyma Istio module's manager runs (Deployment {', '.join(running)}) and owns this "
        "Istio; kymamesh writing too would make two owners that undo each other's changes",
        hint=f"to keep Istio and move to kymamesh, stop the manager first (`kubectl -n "
        f"{MODULE_NAMESPACE} scale deployment {name} --replicas=0`; do not delete the "
        f"module's Istio resource while the manager runs: it would uninstall Istio), then run "
        "`kymamesh patch --existing-istio` (`--mesh cluster:` takes over its settings)",
    )


# -- what kymamesh makes of it ---------------------------------------------------------------


@dataclass
class Translation:
    """A mesh file as patch step parameters, and the restarts its settings need."""

    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    restarts: list[str] = field(default_factory=list)


MESH_CONFIG_STEP = "mesh-config"
COMPONENTS_STEP = "mesh-components"
EXT_AUTHZ_STEP = "pilot-webhook"
SIDECAR_STEP = "sidecar-resources"
NETWORK_POLICIES_STEP = "network-policies"


def _authorizer_provider(a: Mapping[str, Any]) -> dict[str, Any]:
    """An authorizer as an extension provider (`envoyExtAuthzHttp`)."""
    settings: dict[str, Any] = {"service": a["service"], "port": a["port"]}
    headers = a.get("headers") or {}
    for section, key, target in (
        ("inCheck", "include", "includeRequestHeadersInCheck"),
        ("inCheck", "add", "includeAdditionalHeadersInCheck"),
        ("toUpstream", "onAllow", "headersToUpstreamOnAllow"),
        ("toDownstream", "onAllow", "headersToDownstreamOnAllow"),
        ("toDownstream", "onDeny", "headersToDownstreamOnDeny"),
    ):
        value = (headers.get(section) or {}).get(key)
        if value:
            settings[target] = copy.deepcopy(value)
    if a.get("pathPrefix"):
        settings["pathPrefix"] = a["pathPrefix"]
    if a.get("timeout"):
        settings["timeout"] = a["timeout"]
    return {"name": a["name"], "envoyExtAuthzHttp": settings}


def translate(spec: Mapping[str, Any]) -> Translation:
    """A checked mesh file (`check_spec`) as the parameters of the patch steps."""
    out = Translation()
    config = spec.get("config") or {}
    mesh: dict[str, Any] = {}
    for key in ("numTrustedProxies", "forwardClientCertDetails", "trustDomain"):
        if key in config:
            mesh[key] = config[key]
    merge = ((config.get("telemetry") or {}).get("metrics") or {}).get("prometheusMerge")
    if merge is not None:
        mesh["prometheusMerge"] = merge
    if "enableDNSProxying" in config:
        mesh["dnsProxying"] = config["enableDNSProxying"]
    regexps = (config.get("proxyStatsMatcher") or {}).get("inclusionRegexps")
    if regexps is not None:
        mesh["proxyStatsInclusionRegexps"] = list(regexps)
    if mesh:
        out.steps[MESH_CONFIG_STEP] = mesh
    if "authorizers" in config:
        out.steps[EXT_AUTHZ_STEP] = {
            "authorizers": [_authorizer_provider(a) for a in config["authorizers"]]
        }
    components = spec.get("components") or {}
    proxy = ((components.get("proxy") or {}).get("k8s") or {}).get("resources")
    if proxy:
        out.steps[SIDECAR_STEP] = {"proxy": copy.deepcopy(proxy)}
    parts: dict[str, Any] = {}
    for name in ("pilot", "ingressGateway"):
        k8s = (components.get(name) or {}).get("k8s")
        if k8s:
            parts[name] = copy.deepcopy(k8s)
    egress = components.get("egressGateway")
    if egress is not None:
        parts["egressGateway"] = copy.deepcopy(egress)
    if "gatewayExternalTrafficPolicy" in config:
        parts["gatewayExternalTrafficPolicy"] = config["gatewayExternalTrafficPolicy"]
    pilot_features = (spec.get("experimental") or {}).get("pilot") or {}
    if pilot_features:
        parts["experimental"] = dict(pilot_features)
    if "compatibilityMode" in spec:
        parts["compatibilityMode"] = spec["compatibilityMode"]
    if parts:
        out.steps[COMPONENTS_STEP] = parts
    if "networkPoliciesEnabled" in spec:
        out.steps[NETWORK_POLICIES_STEP] = {"enabled": spec["networkPoliciesEnabled"]}
    out.restarts = sorted({r for f, _ in _set_fields(spec, SCHEMA, "spec") for r in f.restarts})
    return out


def _set_fields(value: Any, f: Field, path: str) -> Iterator[tuple[Field, str]]:
    if value is None:
        return
    yield f, path
    if f.kind == "object" and isinstance(value, dict):
        for c in f.children:
            if c.name in value:
                yield from _set_fields(value[c.name], c, f"{path}.{c.name}")


# The istiod env of the experimental features (facts of Istio's pilot-discovery).
EXPERIMENTAL_ENV = {
    "enableAlphaGatewayAPI": "PILOT_ENABLE_ALPHA_GATEWAY_API",
    "enableMultiNetworkDiscoverGatewayAPI": "PILOT_MULTI_NETWORK_DISCOVER_GATEWAY_API",
}


def chart_values(params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The Helm values (by chart) of step `mesh-components`'s parameters: what of the
    mesh file Istio's istiod and gateway charts set themselves (phase 1)."""
    values: dict[str, dict[str, Any]] = {}
    pilot = params.get("pilot") or {}
    istiod: dict[str, Any] = {}
    hpa = pilot.get("hpaSpec") or {}
    if "minReplicas" in hpa:
        istiod["autoscaleMin"] = hpa["minReplicas"]
    if "maxReplicas" in hpa:
        istiod["autoscaleMax"] = hpa["maxReplicas"]
    rolling = (pilot.get("strategy") or {}).get("rollingUpdate") or {}
    if "maxSurge" in rolling:
        istiod["rollingMaxSurge"] = rolling["maxSurge"]
    if "maxUnavailable" in rolling:
        istiod["rollingMaxUnavailable"] = rolling["maxUnavailable"]
    if pilot.get("resources"):
        istiod["resources"] = copy.deepcopy(pilot["resources"])
    features = params.get("experimental") or {}
    env = {EXPERIMENTAL_ENV[k]: str(bool(v)).lower() for k, v in features.items() if v is not None}
    if env:
        istiod["env"] = env
    if istiod:
        values["istiod"] = istiod
    gateway: dict[str, Any] = {}
    gw = params.get("ingressGateway") or {}
    hpa = gw.get("hpaSpec") or {}
    autoscaling = {
        key: hpa[key] for key in ("minReplicas", "maxReplicas") if hpa.get(key) is not None
    }
    if autoscaling:
        gateway["autoscaling"] = autoscaling
    if gw.get("resources"):
        gateway["resources"] = copy.deepcopy(gw["resources"])
    policy = params.get("gatewayExternalTrafficPolicy")
    if policy:
        gateway["service"] = {"externalTrafficPolicy": policy}
    if gateway:
        values["gateway"] = gateway
    if egress_enabled(params):
        values[EGRESS_VALUES] = egress_values((params.get("egressGateway") or {}).get("k8s"))
    return values


def egress_enabled(params: Mapping[str, Any]) -> bool:
    """Whether step `mesh-components`'s parameters ask for the egress gateway."""
    return bool((params.get("egressGateway") or {}).get("enabled"))


def egress_values(k8s: Mapping[str, Any] | None) -> dict[str, Any]:
    """The egress gateway release's values: kymamesh's (`resources/istio/values/
    egressgateway.yaml`), then the mesh file's HPA bounds and resources."""
    from kymamesh.resources import load_yaml, resources_dir

    values: dict[str, Any] = dict(load_yaml(resources_dir() / "values" / "egressgateway.yaml"))
    k8s = k8s or {}
    hpa = k8s.get("hpaSpec") or {}
    autoscaling = {key: hpa[key] for key in ("minReplicas", "maxReplicas") if key in hpa}
    if autoscaling:
        values["autoscaling"] = autoscaling
    if k8s.get("resources"):
        values["resources"] = copy.deepcopy(k8s["resources"])
    return values


# -- the JSON Schema and the reference table ------------------------------------------------


def _json(f: Field) -> dict[str, Any]:
    out: dict[str, Any] = {"description": f.doc + (f" -> {f.maps_to}" if f.maps_to else "")}
    if f.refused:
        out["description"] += f" (refused: {f.refused})"
    kind = f.kind
    if kind == "object":
        out["type"] = "object"
        out["additionalProperties"] = False
        out["properties"] = {c.name: _json(c) for c in f.children}
        required = [c.name for c in f.children if c.required]
        if required:
            out["required"] = required
    elif kind == "list":
        assert f.item is not None
        out["type"] = "array"
        out["items"] = _json(f.item)
    elif kind in ("strings", "regexps"):
        out["type"] = "array"
        out["items"] = {"type": "string", "minLength": 1}
    elif kind == "map":
        out["type"] = "object"
        out["additionalProperties"] = {"type": "string"}
    elif kind == "bool":
        out["type"] = "boolean"
    elif kind == "int":
        out["type"] = "integer"
    elif kind == "enum":
        out["type"] = "string"
        out["enum"] = list(f.enum)
    elif kind in ("cpu", "memory", "intorpercent"):
        out["type"] = ["string", "integer"] if kind != "memory" else "string"
    elif kind == "any":
        pass
    else:
        out["type"] = "string"
        if kind == "string":
            out["minLength"] = 1
    if f.minimum is not None:
        out["minimum"] = f.minimum
    if f.maximum is not None:
        out["maximum"] = f.maximum
    if f.pattern:
        out["pattern"] = f.pattern
    if f.max_length is not None:
        out["maxLength"] = f.max_length
    return out


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the mesh file (the `spec` shape), for editors."""
    schema = _json(SCHEMA)
    schema.pop("description", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://kymamesh.dev/schemas/mesh-file.schema.json",
        "title": "kymamesh mesh file",
        "description": "The settings of `kymamesh install|patch --mesh FILE`, shaped like "
        f"the spec of the Kyma Istio module's {MODULE_API_VERSION} {MODULE_KIND} resource",
        **schema,
    }


def reference_rows() -> list[str]:
    """The rows of the reference table: field, type, allowed values, what it maps to,
    the restart it needs."""
    rows = [
        "| field | type and allowed values | maps to | restart |",
        "|---|---|---|---|",
    ]
    for f, path in _walk(SCHEMA, ""):
        if f.kind == "object" and not f.maps_to and not f.refused:
            continue
        maps = f.maps_to or (f"refused: {f.refused}" if f.refused else "")
        allowed = _allowed(f).replace("|", "\\|")
        restarts = ", ".join(f.restarts) or "-"
        rows.append(f"| `{path}` | {allowed} | {maps} | {restarts} |")
    return rows


def _walk(f: Field, path: str) -> Iterator[tuple[Field, str]]:
    for c in f.children:
        here = f"{path}.{c.name}" if path else c.name
        yield c, here
        if c.kind == "object" and not c.refused:
            yield from _walk(c, here)
        if c.kind == "list" and c.item is not None:
            yield from _walk(c.item, f"{here}[]")
