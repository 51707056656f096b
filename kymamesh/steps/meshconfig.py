"""Steps 4 and 5: the mesh config (ConfigMap `istio`, key `mesh`), edited by meaning.

Tracing goes to Kyma's Zipkin in kyma-system instead of the legacy addon in
istio-system, made active by selecting the provider in `defaultProviders.tracing`
(an OpenTelemetry collector instead, when the step's `tracer` says so), and the
Kyma webhook is registered with istiod as an external authorization provider.
Everything else in the mesh config is kept. istiod re-reads the ConfigMap by itself.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kymamesh.errors import UsageError
from kymamesh.steps._configmaps import (
    MESH_CONFIGMAP,
    Editor,
    KeyEdit,
    dump_yaml,
    key_changes,
    parse_yaml_map,
)
from kymamesh.steps.base import ONCE_CONFIG_WRITTEN, Change, StepContext
from kymamesh.units import duration, same_duration

MESH_KEY = "mesh"
# The other members of the tracer choice in ProxyConfig.tracing: at most one may be set.
_OTHER_TRACERS = ("lightstep", "datadog", "stackdriver", "openCensusAgent")


def host_of(address: str) -> str:
    """`zipkin.istio-system:9411` -> `zipkin.istio-system`."""
    host = address.strip().split("://", 1)[-1].split("/", 1)[0]
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() else host


def in_namespace(address: str, namespace: str) -> bool:
    """Whether a Service address (`svc.ns[.svc.cluster.local][:port]`) is in `namespace`."""
    parts = host_of(address).split(".")
    return len(parts) >= 2 and parts[1] == namespace


def _name(params: Mapping[str, Any], step: str, key: str = "provider") -> str:
    name = params.get("name")
    if not isinstance(name, str) or not name:
        raise UsageError(f"{step}: {key}.name must be a non-empty name")
    return name


def _service_port(params: Mapping[str, Any], step: str, key: str = "provider") -> tuple[str, int]:
    service = params.get("service")
    if not isinstance(service, str) or not service or ":" in service:
        raise UsageError(
            f"{step}: {key}.service must be a Service host name without a port (found {service!r})",
            hint="write e.g. `service: zipkin.kyma-system.svc.cluster.local` and `port: 9411`",
        )
    port = params.get("port")
    if isinstance(port, bool) or not isinstance(port, int | str) or not str(port).isdigit():
        raise UsageError(f"{step}: {key}.port must be a port number (found {port!r})")
    if not 0 < int(port) < 65536:
        raise UsageError(f"{step}: {key}.port {port} is not between 1 and 65535")
    return service, int(port)


def _provider_map(params: Any, step: str, key: str = "provider") -> Mapping[str, Any]:
    if not isinstance(params, Mapping):
        raise UsageError(f"{step}: `{key}` must be a map (name, service, port, ...)")
    return params


# -- step 4: tracing ----------------------------------------------------------

ZIPKIN = "zipkin"
OPENTELEMETRY = "opentelemetry"
TRACERS = (ZIPKIN, OPENTELEMETRY)


@dataclass(frozen=True)
class TracingWanted:
    """The tracing kymamesh makes active, and the namespace of the Zipkin to drop.

    Both of kymamesh's providers are known by name (Zipkin and OpenTelemetry, both
    in kyma-system by default); `tracer` says which one is present in
    `extensionProviders` and selected by `defaultProviders.tracing`. The other one
    is removed, so that switching back and forth leaves no stale entry.
    """

    address: str
    providers: Mapping[str, dict[str, Any]]  # tracer -> its extensionProviders entry
    tracer: str
    legacy_namespace: str

    @property
    def provider(self) -> dict[str, Any]:
        return self.providers[self.tracer]

    @property
    def name(self) -> str:
        return str(self.provider["name"])

    @property
    def unselected(self) -> str:
        other = next(t for t in TRACERS if t != self.tracer)
        return str(self.providers[other]["name"])


def _provider_entry(params: Mapping[str, Any], step: str, key: str, kind: str) -> dict[str, Any]:
    provider = _provider_map(params.get(key), step, key)
    name = _name(provider, step, key)
    service, port = _service_port(provider, step, key)
    extra = {
        k: v for k, v in provider.items() if k not in ("name", "service", "port") and v is not None
    }
    return {"name": name, kind: {"service": service, "port": port, **extra}}


def tracing_wanted(params: Mapping[str, Any], legacy_namespace: str) -> TracingWanted:
    step = "tracing-kyma-zipkin"
    tracer = params.get("tracer", ZIPKIN)
    if tracer not in TRACERS:
        raise UsageError(
            f"{step}: tracer must be {' or '.join(TRACERS)} (found {tracer!r})",
            hint="`tracer: zipkin` sends traces to Zipkin (`provider`), `tracer: opentelemetry` "
            "to an OTLP collector (`opentelemetry`)",
        )
    address = params.get("zipkinAddress")
    if not isinstance(address, str) or not address or host_of(address) == address.strip():
        raise UsageError(
            f"{step}: zipkinAddress must be HOST:PORT (found {address!r})",
            hint="write e.g. `zipkinAddress: zipkin.kyma-system:9411`",
        )
    zipkin = _provider_entry(params, step, "provider", ZIPKIN)
    otel = _provider_entry(params, step, OPENTELEMETRY, OPENTELEMETRY)
    if zipkin["name"] == otel["name"]:
        raise UsageError(
            f"{step}: provider.name and opentelemetry.name are both {zipkin['name']!r}",
            hint="give the two providers different names",
        )
    service = zipkin[ZIPKIN]["service"]
    for what, where in (("zipkinAddress", address), ("provider.service", service)):
        if in_namespace(where, legacy_namespace):
            raise UsageError(
                f"{step}: {what} {where} is in {legacy_namespace}, the Zipkin this step removes"
            )
    return TracingWanted(
        address=address,
        providers={ZIPKIN: zipkin, OPENTELEMETRY: otel},
        tracer=str(tracer),
        legacy_namespace=legacy_namespace,
    )


def _mapping_at(doc: dict[str, Any], key: str) -> dict[str, Any]:
    """doc[key] as a map, made when missing or null."""
    value = doc.get(key)
    if not isinstance(value, dict):
        value = doc[key] = {}
    return value


def _describe(provider: Mapping[str, Any]) -> str:
    kind = next((k for k in TRACERS if k in provider), "")
    settings = provider.get(kind) or {}
    return f"{kind} {settings.get('service')}:{settings.get('port')}"


def apply_tracing(mesh: dict[str, Any], wanted: TracingWanted) -> list[str]:
    """Edit a mesh config in place; what was done, in words ([] when in place).

    Leaves: the chosen provider in `extensionProviders` and selected, alone, by
    `defaultProviders.tracing` (what makes tracing active); the older ProxyConfig
    setting `defaultConfig.tracing.zipkin.address` pointing at Kyma's Zipkin; no
    Zipkin provider in the legacy namespace; kymamesh's other provider removed.
    """
    done: list[str] = []
    legacy = wanted.legacy_namespace
    live_tracing = (mesh.get("defaultConfig") or {}).get("tracing") or {}
    live_address = (live_tracing.get("zipkin") or {}).get("address")
    others = [t for t in _OTHER_TRACERS if t in live_tracing]
    if live_address != wanted.address or others:
        tracing = _mapping_at(_mapping_at(mesh, "defaultConfig"), "tracing")
        for tracer in others:
            del tracing[tracer]
            done.append(f"removed defaultConfig.tracing.{tracer} (one tracer only)")
        _mapping_at(tracing, "zipkin")["address"] = wanted.address
        if live_address != wanted.address:
            was = f" (was {live_address})" if live_address else ""
            done.append(f"defaultConfig.tracing.zipkin.address {wanted.address}{was}")

    providers = mesh.get("extensionProviders") or []
    kept: list[Any] = []
    found = False
    for provider in providers:
        if not isinstance(provider, dict):
            kept.append(provider)
            continue
        zipkin = provider.get("zipkin")
        if provider.get("name") == wanted.name:
            if found:
                continue  # a duplicate of our own entry
            found = True
            if provider != wanted.provider:
                done.append(
                    f"updated extension provider {wanted.name} ({_describe(wanted.provider)})"
                )
            kept.append(copy.deepcopy(wanted.provider))
        elif provider.get("name") == wanted.unselected:
            done.append(f"removed extension provider {wanted.unselected} (not the chosen tracer)")
        elif isinstance(zipkin, dict) and in_namespace(str(zipkin.get("service", "")), legacy):
            done.append(
                f"removed extension provider {provider.get('name')} "
                f"(Zipkin in {legacy}: {zipkin.get('service')})"
            )
        else:
            kept.append(provider)
    if not found:
        kept.append(copy.deepcopy(wanted.provider))
        done.append(f"added extension provider {wanted.name} ({_describe(wanted.provider)})")
    if kept != providers:
        mesh["extensionProviders"] = kept

    defaults = mesh.get("defaultProviders")
    tracers = defaults.get("tracing") if isinstance(defaults, dict) else None
    if tracers != [wanted.name]:
        _mapping_at(mesh, "defaultProviders")["tracing"] = [wanted.name]
        was = ", ".join(map(str, tracers)) if isinstance(tracers, list) and tracers else "none"
        done.append(f"defaultProviders.tracing {wanted.name} (was {was}): tracing is active")
    return done


def mesh_editor(edit_mesh: Callable[[dict[str, Any]], list[str]]) -> Editor:
    """An editor of the `mesh` key from a function that edits the parsed mesh config in place."""

    def edit(text: str) -> KeyEdit | None:
        mesh = parse_yaml_map(text, f"ConfigMap {MESH_CONFIGMAP} key `{MESH_KEY}`")
        new = copy.deepcopy(mesh)
        done = edit_mesh(new)
        if new == mesh:
            return None
        return KeyEdit(dump_yaml(new), tuple(done))

    return edit


def _mesh_changes(ctx: StepContext, editor: Editor) -> list[Change]:
    return key_changes(
        ctx,
        MESH_CONFIGMAP,
        MESH_KEY,
        editor,
        lambda text: parse_yaml_map(text, MESH_KEY),
    )


def refuse_unreadable(step: str, key: str, provider: Mapping[str, Any]) -> None:
    """Refuse an extension provider (made from the step's `key` settings) that istiod could
    not read as a MeshConfig.ExtensionProvider (`kymamesh.istio.meshschema`)."""
    from kymamesh.istio.meshschema import provider_problems

    problems = provider_problems(provider, "extensionProviders[]")
    if problems:
        raise UsageError(
            f"{step}: the extension provider made from `{key}` is not one istiod can read:\n  "
            + "\n  ".join(problems),
            hint=f"fix steps.{step}.{key} in --config: each field as Istio's "
            'MeshConfig.ExtensionProvider has it (a duration a string like "5s")',
        )


class TracingStep:
    """Active tracing to Zipkin in kyma-system (or, chosen by `tracer`, to an OpenTelemetry
    collector); no reference to a Zipkin in istio-system remains."""

    PARAMS: ClassVar[frozenset[str]] = frozenset(
        {"tracer", "zipkinAddress", "provider", "opentelemetry"}
    )
    RUNS_ONCE: ClassVar[str] = ONCE_CONFIG_WRITTEN

    def preflight(self, ctx: StepContext) -> str | None:
        wanted = tracing_wanted(ctx.params, ctx.namespace)
        for key, tracer in (("provider", ZIPKIN), (OPENTELEMETRY, OPENTELEMETRY)):
            refuse_unreadable("tracing-kyma-zipkin", key, wanted.providers[tracer])
        return None

    def check(self, ctx: StepContext) -> list[Change]:
        wanted = tracing_wanted(ctx.params, ctx.namespace)
        return _mesh_changes(ctx, mesh_editor(lambda mesh: apply_tracing(mesh, wanted)))


# -- step 5: the Kyma webhook as an external authorizer --------------------------


@dataclass(frozen=True)
class ExtAuthzWanted:
    enabled: bool
    name: str
    provider: dict[str, Any] = field(default_factory=dict)
    # the mesh file's authorizers, each an extensionProviders entry of type envoyExtAuthzHttp
    authorizers: tuple[dict[str, Any], ...] = ()
    # authorizers a former run added that are no longer asked for: removed
    retired: tuple[str, ...] = ()


_EXT_AUTHZ = "envoyExtAuthzHttp"


def _ext_authz_settings(provider: Mapping[str, Any], step: str, key: str) -> dict[str, Any]:
    service, port = _service_port(provider, step, key)
    settings: dict[str, Any] = {"service": service, "port": port}
    for name, value in provider.items():
        if name in ("name", "service", "port") or value is None:
            continue
        if name == "timeout":
            try:
                duration(value)
            except UsageError as exc:
                raise UsageError(f"{step}: {key}.timeout: {exc.message}", exc.hint) from None
            value = str(value)
        elif name.startswith(("includeRequestHeaders", "headersTo", "includeAdditional")) and (
            not isinstance(value, list | dict)
        ):
            raise UsageError(f"{step}: {key}.{name} must be a list of header names")
        settings[name] = copy.deepcopy(value)
    return settings


def _authorizers(params: Mapping[str, Any], step: str, own: str) -> list[dict[str, Any]]:
    raw = params.get("authorizers") or []
    if not isinstance(raw, list):
        raise UsageError(
            f"{step}: authorizers must be a list of extension providers",
            hint="write e.g. `authorizers: [{name: authz, envoyExtAuthzHttp: {service: "
            "authz.ns.svc.cluster.local, port: 8080}}]`, or use the mesh file's "
            "config.authorizers",
        )
    found: list[dict[str, Any]] = []
    names = {own}
    for i, entry in enumerate(raw):
        key = f"authorizers[{i}]"
        entry = _provider_map(entry, step, key)
        name = _name(entry, step, key)
        if name in names:
            raise UsageError(
                f"{step}: {key}.name {name!r} is taken"
                + (" by the Kyma webhook's provider" if name == own else ""),
                hint="give each authorizer its own name",
            )
        names.add(name)
        settings = _provider_map(entry.get(_EXT_AUTHZ), step, f"{key}.{_EXT_AUTHZ}")
        found.append({"name": name, _EXT_AUTHZ: _ext_authz_settings(settings, step, key)})
    return found


def ext_authz_wanted(
    params: Mapping[str, Any], remembered: Mapping[str, Any] | None = None
) -> ExtAuthzWanted:
    """`remembered`: the step's parameters of the former run (its authorizers that are
    not asked for any more are removed)."""
    step = "pilot-webhook"
    enabled = params.get("enabled", True)
    if not isinstance(enabled, bool):
        raise UsageError(f"{step}: enabled must be true or false (found {enabled!r})")
    provider = _provider_map(params.get("provider"), step)
    name = _name(provider, step)
    authorizers = tuple(_authorizers(params, step, name))
    wanted_names = {a["name"] for a in authorizers}
    before = (remembered or {}).get("authorizers")
    retired = tuple(
        sorted(
            {
                str(a.get("name"))
                for a in (before if isinstance(before, list) else [])
                if isinstance(a, dict) and a.get("name") and a.get("name") not in wanted_names
            }
            - {name}
        )
    )
    if not enabled:
        return ExtAuthzWanted(enabled=False, name=name, authorizers=authorizers, retired=retired)
    settings = _ext_authz_settings(provider, step, "provider")
    return ExtAuthzWanted(
        enabled=True,
        name=name,
        provider={"name": name, _EXT_AUTHZ: settings},
        authorizers=authorizers,
        retired=retired,
    )


def _same_ext_authz(live: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Equal, with the timeout compared as a duration ("5s" == "5000ms")."""
    live_settings = dict(live.get(_EXT_AUTHZ) or {})
    wanted_settings = dict(wanted.get(_EXT_AUTHZ) or {})
    live_timeout = live_settings.pop("timeout", None)
    wanted_timeout = wanted_settings.pop("timeout", None)
    if (live_timeout is None) != (wanted_timeout is None):
        return False
    if live_timeout is not None and not same_duration(live_timeout, wanted_timeout):
        return False
    rest_live = {k: v for k, v in live.items() if k != _EXT_AUTHZ}
    rest_wanted = {k: v for k, v in wanted.items() if k != _EXT_AUTHZ}
    return rest_live == rest_wanted and live_settings == wanted_settings


def _put_provider(
    providers: list[Any], wanted: Mapping[str, Any] | None, name: str, done: list[str]
) -> list[Any]:
    """The providers with the one named `name` as wanted (None: removed)."""
    kept: list[Any] = []
    found = False
    for provider in providers:
        if not isinstance(provider, dict) or provider.get("name") != name:
            kept.append(provider)
            continue
        if wanted is None:
            done.append(f"removed extension provider {name}")
            continue
        if found:
            continue  # a duplicate of our own entry
        found = True
        if _same_ext_authz(provider, wanted):
            kept.append(provider)
        else:
            kept.append(copy.deepcopy(dict(wanted)))
            done.append(f"updated extension provider {name}")
    if wanted is not None and not found:
        kept.append(copy.deepcopy(dict(wanted)))
        settings = wanted[_EXT_AUTHZ]
        done.append(
            f"added extension provider {name} "
            f"({_EXT_AUTHZ} {settings['service']}:{settings['port']})"
        )
    return kept


def apply_ext_authz(mesh: dict[str, Any], wanted: ExtAuthzWanted) -> list[str]:
    """Edit a mesh config in place; what was done, in words ([] when in place)."""
    providers = list(mesh.get("extensionProviders") or [])
    done: list[str] = []
    kept = _put_provider(providers, wanted.provider if wanted.enabled else None, wanted.name, done)
    for authorizer in wanted.authorizers:
        kept = _put_provider(kept, authorizer, str(authorizer["name"]), done)
    for name in wanted.retired:
        kept = _put_provider(kept, None, name, done)
    if kept != (mesh.get("extensionProviders") or []):
        mesh["extensionProviders"] = kept
    return done


class ExtAuthzStep:
    """The Kyma webhook registered with istiod as an HTTP external-authorization provider,
    and the mesh file's authorizers beside it (`authorizers`).

    `enabled: false` removes the provider kymamesh added (found by its name); an
    authorizer a former run added and the settings no longer name is removed too.
    """

    PARAMS: ClassVar[frozenset[str]] = frozenset({"enabled", "provider", "authorizers"})
    RUNS_ONCE: ClassVar[str] = ONCE_CONFIG_WRITTEN

    def preflight(self, ctx: StepContext) -> str | None:
        wanted = ext_authz_wanted(ctx.params, ctx.remembered)
        if wanted.enabled:
            refuse_unreadable("pilot-webhook", "provider", wanted.provider)
        for i, authorizer in enumerate(wanted.authorizers):
            refuse_unreadable("pilot-webhook", f"authorizers[{i}]", authorizer)
        return None

    def check(self, ctx: StepContext) -> list[Change]:
        wanted = ext_authz_wanted(ctx.params, ctx.remembered)
        return _mesh_changes(ctx, mesh_editor(lambda mesh: apply_ext_authz(mesh, wanted)))


# -- the mesh file's mesh-wide settings ------------------------------------------------------


@dataclass(frozen=True)
class MeshSettingsWanted:
    """The mesh config fields the mesh file sets; a field that is None is left alone."""

    num_trusted_proxies: int | None = None
    forward_client_cert_details: str | None = None
    prometheus_merge: bool | None = None
    trust_domain: str | None = None
    dns_proxying: bool | None = None
    stats_inclusion: tuple[str, ...] | None = None


# step parameter -> the mesh file field it comes from (its type and allowed values)
_MESH_PARAMS = {
    "numTrustedProxies": "config.numTrustedProxies",
    "forwardClientCertDetails": "config.forwardClientCertDetails",
    "prometheusMerge": "config.telemetry.metrics.prometheusMerge",
    "trustDomain": "config.trustDomain",
    "dnsProxying": "config.enableDNSProxying",
    "proxyStatsInclusionRegexps": "config.proxyStatsMatcher.inclusionRegexps",
}
DNS_CAPTURE = "ISTIO_META_DNS_CAPTURE"


def mesh_settings_wanted(params: Mapping[str, Any]) -> MeshSettingsWanted:
    """The step's parameters, each checked as its mesh file field."""
    from kymamesh import meshfile

    checked: dict[str, Any] = {}
    for param, path in _MESH_PARAMS.items():
        value = params.get(param)
        if value is None:
            continue
        spec_field = meshfile.SCHEMA
        for part in path.split("."):
            spec_field = spec_field.child(part)
        checked[param] = meshfile.check_value(value, spec_field, "mesh-config", param)
    inclusion = checked.get("proxyStatsInclusionRegexps")
    return MeshSettingsWanted(
        num_trusted_proxies=checked.get("numTrustedProxies"),
        forward_client_cert_details=checked.get("forwardClientCertDetails"),
        prometheus_merge=checked.get("prometheusMerge"),
        trust_domain=checked.get("trustDomain"),
        dns_proxying=checked.get("dnsProxying"),
        stats_inclusion=None if inclusion is None else tuple(inclusion),
    )


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any, done: list[str], why: str) -> None:
    """doc[path] = value (maps made on the way) when it differs; said in `done`."""
    here = doc
    for key in path[:-1]:
        here = _mapping_at(here, key)
    old = here.get(path[-1])
    if old == value:
        return
    here[path[-1]] = copy.deepcopy(value)
    was = "" if old is None else f" (was {old})"
    done.append(f"{'.'.join(path)} {value}{was}{why}")


_GATEWAYS_RESTART = "; the gateways take it when restarted"
_PROXIES_RESTART = "; sidecars and gateways take it when restarted"


def apply_mesh_settings(mesh: dict[str, Any], wanted: MeshSettingsWanted) -> list[str]:
    """Edit a mesh config in place; what was done, in words ([] when in place)."""
    done: list[str] = []
    topology = ("defaultConfig", "gatewayTopology")
    if wanted.num_trusted_proxies is not None:
        _set(
            mesh,
            (*topology, "numTrustedProxies"),
            wanted.num_trusted_proxies,
            done,
            _GATEWAYS_RESTART,
        )
    if wanted.forward_client_cert_details is not None:
        _set(
            mesh,
            (*topology, "forwardClientCertDetails"),
            wanted.forward_client_cert_details,
            done,
            _GATEWAYS_RESTART,
        )
    if wanted.prometheus_merge is not None:
        _set(
            mesh,
            ("enablePrometheusMerge",),
            wanted.prometheus_merge,
            done,
            "; sidecars take it when restarted",
        )
    if wanted.trust_domain is not None:
        _set(
            mesh,
            ("trustDomain",),
            wanted.trust_domain,
            done,
            "; workloads get certificates of it when restarted",
        )
    if wanted.dns_proxying is not None:
        _set(
            mesh,
            ("defaultConfig", "proxyMetadata", DNS_CAPTURE),
            str(wanted.dns_proxying).lower(),
            done,
            _PROXIES_RESTART,
        )
    if wanted.stats_inclusion is not None:
        matcher_path = ("defaultConfig", "proxyStatsMatcher", "inclusionRegexps")
        if wanted.stats_inclusion:
            _set(mesh, matcher_path, list(wanted.stats_inclusion), done, _PROXIES_RESTART)
        else:
            matcher = (mesh.get("defaultConfig") or {}).get("proxyStatsMatcher")
            if isinstance(matcher, dict) and "inclusionRegexps" in matcher:
                del matcher["inclusionRegexps"]
                if not matcher:
                    del mesh["defaultConfig"]["proxyStatsMatcher"]
                done.append(
                    "removed defaultConfig.proxyStatsMatcher.inclusionRegexps" + _PROXIES_RESTART
                )
    return done


class MeshSettingsStep:
    """The mesh file's mesh-wide settings in the mesh config (ConfigMap `istio`, key
    `mesh`): trusted proxies and client-certificate forwarding at the gateways, Prometheus
    merge, the trust domain, DNS proxying, the proxies' stats. A parameter left null is
    not touched. Running proxies keep what they started with: the step `restart-proxies`
    lists them (and restarts them on request)."""

    PARAMS: ClassVar[frozenset[str]] = frozenset(_MESH_PARAMS)
    RUNS_ONCE: ClassVar[str] = ONCE_CONFIG_WRITTEN

    def preflight(self, ctx: StepContext) -> str | None:
        from kymamesh.istio.meshschema import mesh_config_problems

        made: dict[str, Any] = {}
        apply_mesh_settings(made, mesh_settings_wanted(ctx.params))
        problems = mesh_config_problems(made)  # as istiod reads a MeshConfig
        if problems:
            raise UsageError(
                "mesh-config: the mesh config made of these settings is not one istiod can "
                "read:\n  " + "\n  ".join(problems),
                hint="fix the mesh file (docs/reference/mesh-file.md)",
            )
        return None

    def check(self, ctx: StepContext) -> list[Change]:
        wanted = mesh_settings_wanted(ctx.params)
        if wanted == MeshSettingsWanted():
            return []
        return _mesh_changes(ctx, mesh_editor(lambda mesh: apply_mesh_settings(mesh, wanted)))
