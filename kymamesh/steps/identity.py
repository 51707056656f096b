"""Step `identity`: Dex in the mesh, exposed at https://dex.DOMAIN, its tokens checked at
the ingress gateway. Off unless an identity configuration is given (`--identity FILE`).

What it leaves, when enabled (the parameters are checked by `kymamesh.identity.dexfile`):

- Secret `kyma-system/kymamesh-identity-secrets`, only when the identity file read secrets
  from files or the environment; no other secret value is ever written by kymamesh;
- PeerAuthentication `kyma-system/dex`: STRICT for Dex's Pod, except plain text on Dex's
  HTTP port 5556, where istiod (which has no sidecar) fetches the signing keys
  (`/keys`, public anyway: they are served at https://dex.DOMAIN/keys too);
- the Helm release `kyma-system/dex` of Dex's official chart (pinned in
  `resources/dex/release.yaml`): config (issuer, Kubernetes storage, connectors, static
  clients) in the chart's config Secret, secret fields as environment variables from
  Secrets, the Pod in the mesh (label `sidecar.istio.io/inject`) with the sidecar resources
  of step `sidecar-resources`; a change of the config rolls Dex (the chart's checksum
  annotation), and so does a change of a Secret it reads (the annotation
  `kymamesh.io/secret-versions` names their resource versions);
- VirtualService `kyma-system/dex`: dex.DOMAIN through the gateway of step
  `ingress-gateway-tls`;
- RequestAuthentication `istio-system/kyma-dex-jwt` on the ingress gateway: tokens of
  issuer https://dex.DOMAIN, keys from Dex's Service inside the cluster; a request with a
  token that fails is refused, one without a token passes;
- AuthorizationPolicy `istio-system/kyma-dex-require-token`, only when hosts require a
  token: DENY for requests to them without a valid token (no request principal). Each
  host is listed as itself and as `host:*` (Istio matches `hosts` exactly, while the
  gateway routes `Host: app.DOMAIN:443` as well), and the rule is scoped to the
  gateway's HTTP and HTTPS ports as its Pods listen on them (the target ports of the
  gateway's Service, read from the cluster), so that it never applies to TCP traffic;
- istiod's environment variable `BLOCKED_CIDRS_IN_JWKS_URIS` on every istiod revision:
  istiod fetches the JWKS of a RequestAuthentication itself and must not be pointed at
  loopback, link-local or cloud metadata addresses (`JWKS_BLOCKED_CIDRS`). Dex is
  reached by its Service name, which resolves to a ClusterIP of the cluster's Service
  range; that range is checked against the list before anything is written. istiod
  reads the variable when it starts: setting it rolls istiod's Pods.

Disabled (`--identity none`), it removes each of those objects that carries kymamesh's
label and the Dex release kymamesh installed, and istiod's `BLOCKED_CIDRS_IN_JWKS_URIS`
where it is exactly the list kymamesh sets; anything else is left alone.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import yaml

from kymamesh import MANAGED_BY_LABEL
from kymamesh.adapters.cluster import Cluster, Obj, Ref, not_ready_reason
from kymamesh.adapters.helm import DeployedRelease, Helm, LoadedChart
from kymamesh.diffs import object_diff
from kymamesh.errors import KymameshError, PreconditionError
from kymamesh.identity import dexfile as idn
from kymamesh.istio.inventory import (
    HELM_NAMESPACE_ANNOTATION,
    HELM_RELEASE_ANNOTATION,
    INSTALL_DESCRIPTION,
    marked_by_kymamesh,
)
from kymamesh.istio.release import DexRelease, dex_pinned
from kymamesh.steps import _jwks
from kymamesh.steps.base import ONCE_CHARTS_DONE, Change, StepContext
from kymamesh.steps.tls import TlsParams, gateway_object, matches

SECURITY_API_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")
NETWORKING_API_VERSIONS = ("networking.istio.io/v1", "networking.istio.io/v1beta1")
REQUEST_AUTHN = "kyma-dex-jwt"
AUTHZ = "kyma-dex-require-token"
SECRET_VERSIONS_ANNOTATION = "kymamesh.io/secret-versions"
POD_LABEL = "kymamesh.io/component"  # on Dex's Pod: what the PeerAuthentication selects
INJECT_LABEL = "sidecar.istio.io/inject"
_PROXY_ANNOTATIONS = (  # the injector's per-Pod overrides of the sidecar's resources
    ("requests", "cpu", "sidecar.istio.io/proxyCPU"),
    ("requests", "memory", "sidecar.istio.io/proxyMemory"),
    ("limits", "cpu", "sidecar.istio.io/proxyCPULimit"),
    ("limits", "memory", "sidecar.istio.io/proxyMemoryLimit"),
)


def _labels() -> dict[str, str]:
    return {MANAGED_BY_LABEL: "kymamesh"}


def _ours(obj: Obj | None) -> bool:
    return (
        bool(obj)
        and ((obj or {}).get("metadata") or {}).get("labels", {}).get(MANAGED_BY_LABEL)
        == "kymamesh"
    )


def _served(cluster: Cluster, versions: tuple[str, ...], kind: str) -> str | None:
    return next((v for v in versions if cluster.serves(v, kind)), None)


@dataclass(frozen=True)
class Setup:
    """Everything the step works out of its parameters and the other steps' ones."""

    identity: idn.Identity
    tls: TlsParams
    pin: DexRelease
    proxy: Mapping[str, Any]  # step sidecar-resources' `proxy`
    mesh_namespace: str  # where the ingress gateway's RequestAuthentication goes

    @classmethod
    def of(cls, ctx: StepContext) -> Setup:
        tls = TlsParams.of(ctx.steps.get("ingress-gateway-tls") or {"domain": "local.kyma.dev"})
        identity = idn.parse(ctx.params, tls.domain)
        proxy = (ctx.steps.get("sidecar-resources") or {}).get("proxy") or {}
        return cls(identity, tls, dex_pinned(), proxy, ctx.namespace)

    @property
    def domain(self) -> str:
        return self.tls.domain

    @property
    def host(self) -> str:
        return f"dex.{self.domain}"

    @property
    def service_host(self) -> str:
        return f"{self.pin.release}.{self.pin.namespace}.svc.cluster.local"

    @property
    def jwks_uri(self) -> str:
        return f"http://{self.service_host}:{self.pin.port}/keys"

    @property
    def secret_ref(self) -> Ref:
        return Ref("v1", "Secret", idn.MANAGED_SECRET, self.pin.namespace)

    def values(self, secret_versions: str) -> dict[str, Any]:
        """The values of Dex's chart. No secret is in them: they are stored in the release."""
        annotations = {}
        for section, resource, name in _PROXY_ANNOTATIONS:
            value = (self.proxy.get(section) or {}).get(resource)
            if value is not None:
                annotations[name] = str(value)
        if secret_versions:
            annotations[SECRET_VERSIONS_ANNOTATION] = secret_versions
        return {
            "config": idn.dex_config(self.identity, self.domain),
            "configSecret": {"create": True},
            "envVars": idn.dex_env(self.identity),
            "podLabels": {INJECT_LABEL: "true", POD_LABEL: "dex"},
            "podAnnotations": annotations,
        }


class IdentityStep:
    PARAMS: ClassVar[frozenset[str]] = frozenset(idn.PARAMS)
    RUNS_ONCE: ClassVar[str] = ONCE_CHARTS_DONE

    def preflight(self, ctx: StepContext) -> str | None:
        setup = Setup.of(ctx)  # every refusal of the parameters, the hosts under the domain
        if not setup.identity.enabled:
            return None
        helm = ctx.helm() if ctx.helm is not None else None
        deployed = helm.deployed(setup.pin.release, setup.pin.namespace) if helm else None
        if deployed is not None and not marked_by_kymamesh(deployed):
            raise PreconditionError(
                f"Helm release {setup.pin.namespace}/{setup.pin.release} exists and was not "
                f"installed by kymamesh ({deployed.chart} {deployed.chart_version}); kymamesh "
                "does not take over a Dex someone else runs",
                hint=f"uninstall it (helm uninstall {setup.pin.release} -n "
                f"{setup.pin.namespace}) to let kymamesh install Dex, or leave out --identity",
            )
        _secret_data(ctx, setup)  # every Secret and key Dex would read exists
        _refuse_blocked_service_range(ctx)
        if helm is not None:
            restart = _secret_change(ctx, setup) is not None
            if _release_reasons(ctx, helm, setup, deployed, restart):
                # a bad chart source is refused before any write; a Dex in place needs none
                chart = load_chart(helm, ctx, setup.pin)
                if deployed is None:
                    _refuse_objects_in_the_way(ctx, helm, setup, chart)
        if ctx.istio_present:
            for versions, kind in (
                (SECURITY_API_VERSIONS, "RequestAuthentication"),
                (NETWORKING_API_VERSIONS, "VirtualService"),
            ):
                if _served(ctx.cluster, versions, kind) is None:
                    raise PreconditionError(
                        f"the API server does not serve Istio's {kind} although istiod runs",
                        hint="install the Istio CRDs (the base chart) and re-run",
                    )
        return None

    def check(self, ctx: StepContext) -> list[Change]:
        setup = Setup.of(ctx)
        if not setup.identity.enabled:
            return _removals(ctx, setup)
        changes: list[Change] = _jwks_changes(ctx, enabled=True)  # before any policy
        secret = _secret_change(ctx, setup)
        if secret is not None:
            changes.append(secret)
        changes += _istio_changes(ctx, setup, before_release=True)
        release = _release_change(ctx, setup, secret_changes=secret is not None)
        if release is not None:
            changes.append(release)
        changes += _istio_changes(ctx, setup, before_release=False)
        return changes


# -- the chart ----------------------------------------------------------------------------


def load_chart(helm: Helm, ctx: StepContext, pin: DexRelease) -> LoadedChart:
    from kymamesh.errors import ChartSourceError

    if ctx.charts_dir is not None:
        chart = helm.load_local(ctx.charts_dir, pin.chart)
    else:
        chart = helm.load_remote(pin.chart, pin.chart_repository, pin.version)
    if chart.name != pin.chart:
        raise ChartSourceError(
            f"chart {chart.source} is named {chart.name!r} in its Chart.yaml, but Dex is "
            f"installed from chart {pin.chart!r}",
            hint="point --charts-dir at Dex's chart (`kymamesh charts pull --dest DIR` "
            "fetches the pinned one)",
        )
    return chart


def _wanted_version(helm: Helm, ctx: StepContext, pin: DexRelease) -> Any:
    """The chart version a run installs: the local chart's, else the pinned one (reading a
    local Chart.yaml is cheap; a remote chart is loaded only when it is installed)."""
    if ctx.charts_dir is not None:
        return load_chart(helm, ctx, pin).version
    return pin.version


# -- the Secret of values read at run time -------------------------------------------------


def _decode(value: Any) -> str | None:
    try:
        return base64.b64decode(str(value), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None


def _secret_data(ctx: StepContext, setup: Setup) -> dict[str, str]:
    """The wanted data of Secret kymamesh-identity-secrets (values of this run, else the
    stored ones), after checking that every Secret and key Dex would read exists."""
    managed_live = ctx.cluster.get(setup.secret_ref)
    wanted: dict[str, str] = {}
    checked: dict[str, Obj | None] = {}
    for ref in setup.identity.secret_refs:
        if ref.managed:
            value = ctx.secret_values.get(ref.key)
            if value is None:
                value = _decode(((managed_live or {}).get("data") or {}).get(ref.key, ""))
            if not value:
                raise PreconditionError(
                    f"identity: the secret {ref.key} was read from a file or the environment by "
                    f"an earlier run, but Secret {setup.pin.namespace}/{idn.MANAGED_SECRET} no "
                    "longer holds it",
                    hint="re-run with --identity FILE so that it is read again",
                )
            wanted[ref.key] = value
            continue
        if ref.name not in checked:
            checked[ref.name] = ctx.cluster.get(Ref("v1", "Secret", ref.name, setup.pin.namespace))
        live = checked[ref.name]
        if live is None:
            raise PreconditionError(
                f"identity: Secret {setup.pin.namespace}/{ref.name} (named by a secretRef) "
                "does not exist",
                hint=f"create it in {setup.pin.namespace} with key {ref.key} "
                f"(kubectl -n {setup.pin.namespace} create secret generic {ref.name} "
                f"--from-file={ref.key}=FILE), or fix the secretRef",
            )
        if ref.key not in ((live.get("data") or {}) | (live.get("stringData") or {})):
            raise PreconditionError(
                f"identity: Secret {setup.pin.namespace}/{ref.name} has no key {ref.key} "
                "(named by a secretRef)",
                hint="add the key to the Secret, or fix the secretRef",
            )
    return wanted


def _secret_object(setup: Setup, data: Mapping[str, str]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": idn.MANAGED_SECRET,
            "namespace": setup.pin.namespace,
            "labels": _labels(),
        },
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode("ascii") for k, v in sorted(data.items())},
    }


def _secret_change(ctx: StepContext, setup: Setup) -> Change | None:
    wanted = _secret_data(ctx, setup)
    live = ctx.cluster.get(setup.secret_ref)
    target = f"Secret/{setup.pin.namespace}/{idn.MANAGED_SECRET}"
    if not wanted:
        if live is None or not _ours(live):
            return None
        return Change(
            target=target,
            summary="deleted: no secret of the identity file is read from a file or the "
            "environment any more",
            apply=lambda cluster: _delete(cluster, setup.secret_ref),
        )
    live_data = {k: _decode(v) for k, v in ((live or {}).get("data") or {}).items()}
    if live is not None and _ours(live) and live_data == wanted:
        return None
    obj = _secret_object(setup, wanted)

    def apply(cluster: Cluster) -> None:
        cluster.ensure_namespace(setup.pin.namespace)
        cluster.apply(obj)

    keys = ", ".join(sorted(wanted))
    return Change(
        target=target,
        summary=f"{'updated' if live else 'created'}: the secrets read at run time ({keys})",
        apply=apply,
        diff=object_diff(live, obj, target),
    )


def _secret_versions(cluster: Cluster, setup: Setup) -> str:
    """`name=resourceVersion` of each Secret Dex reads, so that Dex rolls when one changes."""
    parts = []
    for name in sorted({r.name for r in setup.identity.secret_refs}):
        live = cluster.get(Ref("v1", "Secret", name, setup.pin.namespace))
        version = ((live or {}).get("metadata") or {}).get("resourceVersion", "")
        parts.append(f"{name}={version or 'new'}")
    return ",".join(parts)


# -- the Dex release --------------------------------------------------------------------------


def _release_change(ctx: StepContext, setup: Setup, secret_changes: bool) -> Change | None:
    if ctx.helm is None:
        raise PreconditionError("identity: no helm to install Dex with")
    helm = ctx.helm()
    pin = setup.pin
    deployed = helm.deployed(pin.release, pin.namespace)
    reasons = _release_reasons(ctx, helm, setup, deployed, secret_changes)
    if not reasons:
        return None
    values = setup.values(_secret_versions(ctx.cluster, setup))
    target = f"HelmRelease/{pin.namespace}/{pin.release}"

    def apply(cluster: Cluster) -> None:
        chart = load_chart(helm, ctx, pin)
        fresh = setup.values(_secret_versions(cluster, setup))  # after the Secret's write
        helm.install_or_upgrade(
            pin.release, chart, fresh, pin.namespace, ctx.timeout, description=INSTALL_DESCRIPTION
        )
        _wait_ready(cluster, helm, pin, ctx.timeout)

    diff = _dry_run_diff(ctx, helm, setup, values) if ctx.dry_run else ""
    return Change(target=target, summary="; ".join(reasons), apply=apply, diff=diff)


def _release_reasons(
    ctx: StepContext,
    helm: Helm,
    setup: Setup,
    deployed: DeployedRelease | None,
    secret_changes: bool,
) -> list[str]:
    """Why the Dex release must be installed or upgraded; none when it is in place."""
    pin = setup.pin
    version = _wanted_version(helm, ctx, pin)
    if deployed is None:
        return [f"install {pin.chart} {version}"]
    values = setup.values(_secret_versions(ctx.cluster, setup))
    reasons = []
    if deployed.chart_version != version:
        reasons.append(f"upgrade {deployed.chart_version} -> {version}")
    if deployed.status != "deployed":
        reasons.append(f"status is {deployed.status}")
    if deployed.values != values:
        reasons.append(_values_reason(deployed, values))
    elif secret_changes:
        reasons.append("restart: a secret Dex reads changes")
    return reasons


def _secret_versions_of(values: Mapping[str, Any]) -> dict[str, str]:
    """`{Secret name: resourceVersion}` out of the values' secret-versions annotation."""
    text = str((values.get("podAnnotations") or {}).get(SECRET_VERSIONS_ANNOTATION) or "")
    return dict(part.split("=", 1) for part in text.split(",") if "=" in part)


def _values_reason(deployed: DeployedRelease, values: Mapping[str, Any]) -> str:
    changed = sorted(
        k for k in set(deployed.values) | set(values) if deployed.values.get(k) != values.get(k)
    )
    live_versions = _secret_versions_of(deployed.values)
    versions = _secret_versions_of(values)
    annotations = {
        k: v
        for k, v in (values.get("podAnnotations") or {}).items()
        if k != SECRET_VERSIONS_ANNOTATION
    }
    live_annotations = {
        k: v
        for k, v in (deployed.values.get("podAnnotations") or {}).items()
        if k != SECRET_VERSIONS_ANNOTATION
    }
    if changed == ["podAnnotations"] and annotations == live_annotations:
        # only a Secret Dex reads changed since the last run: Dex restarts to read it again
        names = sorted(
            n for n in set(live_versions) | set(versions) if live_versions.get(n) != versions.get(n)
        )
        return f"restart: Secret {', '.join(names)} that Dex reads changed"
    live_config = deployed.values.get("config") or {}
    config = values.get("config") or {}
    if "config" in changed:
        parts = sorted(
            k for k in set(live_config) | set(config) if live_config.get(k) != config.get(k)
        )
        changed = [f"config.{p}" for p in parts] + [c for c in changed if c != "config"]
    return "values changed: " + ", ".join(changed)


def _wait_ready(cluster: Cluster, helm: Helm, pin: DexRelease, timeout: float) -> None:
    refs = []
    for obj in helm.manifest(pin.release, pin.namespace):
        if obj.get("kind") in ("Deployment", "StatefulSet"):
            meta = obj.get("metadata") or {}
            refs.append(
                Ref(
                    str(obj["apiVersion"]),
                    str(obj["kind"]),
                    meta["name"],
                    meta.get("namespace") or pin.namespace,
                )
            )
    cluster.wait_ready(refs, timeout)


def _rendered(helm: Helm, setup: Setup, chart: LoadedChart, values: Mapping[str, Any]) -> list[Obj]:
    """The objects of Dex's chart with these values, each with its namespace."""
    found = []
    for obj in helm.template(setup.pin.release, chart, dict(values), setup.pin.namespace):
        if not isinstance(obj, dict) or "kind" not in obj:
            continue
        meta = obj.get("metadata") or {}
        if not meta.get("namespace") and obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            obj = {**obj, "metadata": {**meta, "namespace": setup.pin.namespace}}
        found.append(obj)
    return found


def _refuse_objects_in_the_way(
    ctx: StepContext, helm: Helm, setup: Setup, chart: LoadedChart
) -> None:
    """Before the first install of Dex: an object the chart would make that exists and is
    not the release's (a Dex applied without Helm, or a Secret of the user named like
    Dex's config Secret) is refused, as Helm would refuse it, but before any write."""
    pin = setup.pin
    values = setup.values(_secret_versions(ctx.cluster, setup))
    for obj in _rendered(helm, setup, chart, values):
        ref = Ref.of(obj)
        live = ctx.cluster.get(ref)
        if live is None:
            continue
        notes = (live.get("metadata") or {}).get("annotations") or {}
        owner = (notes.get(HELM_RELEASE_ANNOTATION), notes.get(HELM_NAMESPACE_ANNOTATION))
        if owner == (pin.release, pin.namespace):
            continue  # left by an earlier release dex: Helm takes it over
        made_by = f"Helm release {owner[1]}/{owner[0]}" if owner[0] else "something other than Helm"
        raise PreconditionError(
            f"identity: {ref} exists and was made by {made_by}, but Dex's chart makes it for "
            f"the Helm release {pin.namespace}/{pin.release}; kymamesh does not take over a "
            "Dex someone else runs, nor objects in its way",
            hint=f"remove it (kubectl delete {ref.kind.lower()} {ref.name}"
            + (f" -n {ref.namespace}" if ref.namespace else "")
            + ") if it is an old Dex, rename it if it is yours (and fix your secretRef), "
            "or leave out --identity",
        )


def _dry_run_diff(ctx: StepContext, helm: Helm, setup: Setup, values: Mapping[str, Any]) -> str:
    """What the release would change, object by object (Secrets redacted). `status` checks
    as a dry run too and needs no chart: a chart that cannot be loaded gives no diff."""
    try:
        chart = load_chart(helm, ctx, setup.pin)
    except KymameshError as exc:
        return f"# no diff of the Dex release: {exc.message}"
    parts = []
    for obj in _rendered(helm, setup, chart, values):
        ref = Ref.of(obj)
        diff = object_diff(ctx.cluster.get(ref), obj, str(ref))
        if diff:
            parts.append(diff)
    return "\n".join(parts)


# -- the Istio objects ------------------------------------------------------------------------


def wanted_objects(ctx: StepContext, setup: Setup) -> dict[str, tuple[Obj | None, str]]:
    """Each Istio object of the step by role: the object (None when it must not exist) and
    its summary. Kinds the API server does not serve yet give None objects with a reason."""
    sec = _served(ctx.cluster, SECURITY_API_VERSIONS, "RequestAuthentication")
    net = _served(ctx.cluster, NETWORKING_API_VERSIONS, "VirtualService")
    sec = sec or SECURITY_API_VERSIONS[0]
    net = net or NETWORKING_API_VERSIONS[0]
    pin = setup.pin
    selector = {"matchLabels": dict(setup.tls.selector)}
    peer = {
        "apiVersion": sec,
        "kind": "PeerAuthentication",
        "metadata": {"name": pin.release, "namespace": pin.namespace, "labels": _labels()},
        "spec": {
            "selector": {"matchLabels": {POD_LABEL: "dex"}},
            "mtls": {"mode": "STRICT"},
            "portLevelMtls": {str(pin.port): {"mode": "PERMISSIVE"}},
        },
    }
    vs = {
        "apiVersion": net,
        "kind": "VirtualService",
        "metadata": {"name": pin.release, "namespace": pin.namespace, "labels": _labels()},
        "spec": {
            "hosts": [setup.host],
            "gateways": [f"{setup.tls.gateway_namespace}/{setup.tls.gateway_name}"],
            "http": [
                {
                    "route": [
                        {"destination": {"host": setup.service_host, "port": {"number": pin.port}}}
                    ]
                }
            ],
        },
    }
    ra = {
        "apiVersion": sec,
        "kind": "RequestAuthentication",
        "metadata": {"name": REQUEST_AUTHN, "namespace": setup.mesh_namespace, "labels": _labels()},
        "spec": {
            "selector": selector,
            "jwtRules": [
                {
                    "issuer": idn.issuer(setup.domain),
                    "jwksUri": setup.jwks_uri,
                    "forwardOriginalToken": True,
                }
            ],
        },
    }
    hosts = list(setup.identity.require_token_hosts)
    operation: dict[str, Any] = {"hosts": host_patterns(hosts)}
    ports = gateway_ports(ctx.cluster, setup) if hosts else []
    if ports:
        operation["ports"] = ports
    ap = (
        {
            "apiVersion": sec,
            "kind": "AuthorizationPolicy",
            "metadata": {"name": AUTHZ, "namespace": setup.mesh_namespace, "labels": _labels()},
            "spec": {
                "selector": selector,
                "action": "DENY",
                "rules": [
                    {
                        "from": [{"source": {"notRequestPrincipals": ["*"]}}],
                        "to": [{"operation": operation}],
                    }
                ],
            },
        }
        if hosts
        else None
    )
    return {
        "peer": (peer, f"Dex's Pod STRICT, plain text on port {pin.port} for istiod's key fetch"),
        "virtualService": (vs, f"{setup.host} routed through the gateway to Dex"),
        "requestAuthentication": (
            ra,
            f"the ingress gateway checks tokens of {idn.issuer(setup.domain)}",
        ),
        "authorizationPolicy": (
            ap,
            "requests without a valid token are denied on " + ", ".join(hosts),
        ),
    }


_ROLE_REF = {
    "peer": ("PeerAuthentication", None),
    "virtualService": ("VirtualService", None),
    "requestAuthentication": ("RequestAuthentication", REQUEST_AUTHN),
    "authorizationPolicy": ("AuthorizationPolicy", AUTHZ),
}


def _role_ref(ctx: StepContext, setup: Setup, role: str) -> Ref | None:
    kind, name = _ROLE_REF[role]
    versions = NETWORKING_API_VERSIONS if kind == "VirtualService" else SECURITY_API_VERSIONS
    api = _served(ctx.cluster, versions, kind)
    if api is None:
        return None
    if name is None:
        return Ref(api, kind, setup.pin.release, setup.pin.namespace)
    return Ref(api, kind, name, setup.mesh_namespace)


def _istio_changes(ctx: StepContext, setup: Setup, before_release: bool) -> list[Change]:
    """The PeerAuthentication goes before Dex (its Pod starts under it); the routes and
    policies after it (they point at a Dex that answers)."""
    roles = (
        ("peer",)
        if before_release
        else (
            "virtualService",
            "requestAuthentication",
            "authorizationPolicy",
        )
    )
    wanted = wanted_objects(ctx, setup)
    changes = []
    for role in roles:
        obj, summary = wanted[role]
        ref = _role_ref(ctx, setup, role)
        kind = _ROLE_REF[role][0]
        if ref is None:  # Istio's CRDs are not there yet (a dry run before phase 1)
            if obj is None:
                continue
            if not ctx.dry_run:
                raise PreconditionError(
                    f"the API server does not serve Istio's {kind}",
                    hint="install the Istio CRDs (the base chart) first",
                )

            def refuse(cluster: Cluster, kind: str = kind) -> None:
                raise PreconditionError(f"the API server does not serve Istio's {kind}")

            changes.append(Change(f"{kind}/(after Istio's CRDs exist)", summary, refuse))
            continue
        live = ctx.cluster.get(ref)
        target = f"{kind}/{ref.namespace}/{ref.name}"
        if obj is None:
            if live is not None and _ours(live):
                changes.append(Change(target, "deleted: no host requires a token", _deleter(ref)))
            continue
        if live is not None and matches(live, obj):
            continue
        verb = "updated" if live is not None else "created"
        changes.append(
            Change(
                target,
                f"{verb}: {summary}",
                _applier(obj),
                diff=object_diff(live, obj, target),
            )
        )
    return changes


def _applier(obj: Obj) -> Any:
    def apply(cluster: Cluster) -> None:
        cluster.ensure_namespace(str(obj["metadata"]["namespace"]))
        cluster.apply(obj)

    return apply


def _deleter(ref: Ref) -> Any:
    return lambda cluster: _delete(cluster, ref)


def _delete(cluster: Cluster, ref: Ref) -> None:
    cluster.delete(ref)


def host_patterns(hosts: list[str]) -> list[str]:
    """Each host as itself and with any port: Istio matches `hosts` of an authorization
    rule exactly, while the gateway serves a host with and without a port in the Host
    header (its routes match `host` and `host:*`); a DENY for `host` alone lets
    `Host: host:443` through."""
    return [pattern for host in hosts for pattern in (host, f"{host}:*")]


def gateway_ports(cluster: Cluster, setup: Setup) -> list[str]:
    """The ports the ingress gateway's Pods serve the Kyma gateway's HTTP and HTTPS
    servers on, as an authorization rule matches them (the connection's port at the Pod):
    for each server port of the Gateway, the target port of the Service port of that
    number on a Service that selects the gateway's Pods, or the server port itself where
    no Service has it (as istiod does). Scoping the DENY rule to them keeps it off TCP
    traffic, which it would otherwise deny whole (a rule with HTTP-only fields matches
    any TCP connection)."""
    gateway = gateway_object(setup.tls, "networking.istio.io/v1")
    numbers = [
        int(s["port"]["number"])
        for s in gateway["spec"]["servers"]
        if str(s["port"].get("protocol", "")).upper() in ("HTTP", "HTTPS", "HTTP2")
    ]
    selector = dict(setup.tls.selector)
    query = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    pods = [p for p in cluster.list("v1", "Pod", label_selector=query) if p.get("metadata")]
    return service_target_ports(numbers, selector, pods, _services(cluster, setup, pods))


def _services(cluster: Cluster, setup: Setup, pods: list[Obj]) -> list[Obj]:
    namespaces = sorted({str(p["metadata"].get("namespace")) for p in pods}) or [
        setup.mesh_namespace
    ]
    found = []
    for namespace in namespaces:
        found.extend(cluster.list("v1", "Service", namespace=namespace))
    return found


def service_target_ports(
    numbers: list[int], selector: Mapping[str, str], pods: list[Obj], services: list[Obj]
) -> list[str]:
    """Pure: see `gateway_ports`. Without gateway Pods (a dry run before phase 1), a
    Service whose selector includes the gateway selector counts."""
    pod_labels = [dict((p.get("metadata") or {}).get("labels") or {}) for p in pods]

    def selects(service: Obj) -> bool:
        wanted = dict((service.get("spec") or {}).get("selector") or {})
        if not wanted:
            return False
        if pod_labels:
            return any(all(labels.get(k) == v for k, v in wanted.items()) for labels in pod_labels)
        return all(wanted.get(k) == v for k, v in selector.items())

    def container_port(name: str) -> int | None:
        for pod in pods:
            for container in (pod.get("spec") or {}).get("containers") or []:
                for port in container.get("ports") or []:
                    if port.get("name") == name and port.get("containerPort"):
                        return int(port["containerPort"])
        return None

    chosen = [s for s in services if selects(s)]
    result: set[int] = set()
    for number in numbers:
        targets = set()
        for service in chosen:  # every Service that has the port: istiod may use any
            for port in (service.get("spec") or {}).get("ports") or []:
                if int(port.get("port") or 0) == number:
                    raw = port.get("targetPort", number)
                    found = int(raw) if str(raw).isdigit() else container_port(str(raw))
                    targets.add(found if found is not None else number)
        result |= targets or {number}
    return [str(p) for p in sorted(result)]


# -- istiod's JWKS fetch -------------------------------------------------------------------


def _refuse_blocked_service_range(ctx: StepContext) -> None:
    """Dex's Service must stay reachable for istiod: no blocked CIDR may overlap the
    cluster's Service range (nothing in practice does; a cluster that did would lose its
    token checks)."""
    found = _jwks.overlaps(_jwks.service_ranges(ctx.cluster))
    if found:
        where = ", ".join(f"{net} (blocked: {cidr})" for net, cidr in found)
        raise PreconditionError(
            f"the cluster's Service range overlaps what istiod's {_jwks.ENV} blocks: {where}; "
            "istiod could not fetch Dex's signing keys through Dex's Service",
            hint="identity needs a Service range outside loopback, link-local and cloud "
            "metadata addresses",
        )


def _jwks_changes(ctx: StepContext, enabled: bool) -> list[Change]:
    """`BLOCKED_CIDRS_IN_JWKS_URIS` on every istiod revision: set (on) or, where it is
    exactly kymamesh's list, removed (off). Changing it rolls istiod's Pods."""
    changes = []
    for plane in ctx.control_planes:
        if plane.deployment is None:
            if enabled and ctx.dry_run:
                changes.append(
                    Change(
                        f"Deployment/{plane.namespace}/{plane.istiod}",
                        f"{_jwks.ENV} set (once phase 1 has installed istiod)",
                        _never,
                    )
                )
            continue
        live = ctx.cluster.get(plane.istiod_ref)  # not the plane's: read before this run wrote
        if live is None or not _jwks.has_discovery(live):
            continue
        have = _jwks.current(live)
        if enabled:
            want: str | None = _jwks.wanted(have)
            if want == have:
                continue
            summary = f"{_jwks.ENV}={want} (istiod's JWKS fetches; rolls istiod)"
        else:
            if have != _jwks.VALUE:
                continue
            want = None
            summary = f"{_jwks.ENV} removed: identity is off (rolls istiod)"
        target = f"Deployment/{plane.namespace}/{plane.istiod}"
        changes.append(
            Change(
                target,
                summary,
                _env_setter(plane.istiod_ref, want),
                diff=f"--- {target}\n+++ {target}\n-  {_jwks.ENV}={have or ''}\n"
                f"+  {_jwks.ENV}={want or ''}",
            )
        )
    return changes


def _env_setter(ref: Ref, value: str | None) -> Any:
    def apply(cluster: Cluster) -> None:
        cluster.update(ref, _jwks.edit(value))

    return apply


def _never(cluster: Cluster) -> None:
    raise AssertionError("a dry-run change is never applied")


# -- off: removing what the step made ------------------------------------------------------


def _removals(ctx: StepContext, setup: Setup) -> list[Change]:
    """Identity off: the policies, the route, Dex, the Secret, then istiod's JWKS block
    list; only what is kymamesh's."""
    roles = ("authorizationPolicy", "requestAuthentication", "virtualService")
    changes = _delete_ours(ctx, [_role_ref(ctx, setup, role) for role in roles])
    pin = setup.pin
    dex = ctx.cluster.get(Ref("apps/v1", "Deployment", pin.release, pin.namespace))
    if ctx.helm is not None and dex is not None:  # helm is asked only when a Dex runs
        helm = ctx.helm()
        deployed = helm.deployed(pin.release, pin.namespace)
        if deployed is not None and marked_by_kymamesh(deployed):

            def uninstall(cluster: Cluster) -> None:
                helm.uninstall(pin.release, pin.namespace, ctx.timeout)

            changes.append(
                Change(
                    f"HelmRelease/{pin.namespace}/{pin.release}",
                    f"uninstalled ({deployed.chart} {deployed.chart_version}): identity is off",
                    uninstall,
                )
            )
    changes += _delete_ours(ctx, [_role_ref(ctx, setup, "peer"), setup.secret_ref])
    changes += _jwks_changes(ctx, enabled=False)
    return changes


def _delete_ours(ctx: StepContext, refs: list[Ref | None]) -> list[Change]:
    """Identity off: a deletion for each of `refs` that exists and is kymamesh's."""
    changes = []
    for ref in refs:
        if ref is None:
            continue
        live = ctx.cluster.get(ref)
        if live is not None and _ours(live):
            changes.append(
                Change(
                    f"{ref.kind}/{ref.namespace}/{ref.name}",
                    "deleted: identity is off",
                    _deleter(ref),
                )
            )
    return changes


# -- status -------------------------------------------------------------------------------------


def describe(ctx: StepContext) -> dict[str, Any]:
    """What `status` shows of identity: the Dex release and its readiness, the live issuer
    and connectors (out of Dex's config Secret: ids and types only), the policies."""
    setup = Setup.of(ctx)
    pin = setup.pin
    dex = ctx.cluster.get(Ref("apps/v1", "Deployment", pin.release, pin.namespace))
    wanted_or_there = setup.identity.enabled or dex is not None
    helm = ctx.helm() if ctx.helm is not None and wanted_or_there else None
    deployed = helm.deployed(pin.release, pin.namespace) if helm else None
    result: dict[str, Any] = {
        "enabled": setup.identity.enabled,
        "release": None,
        "ready": None,
        "issuer": None,
        "connectors": [],
        "requireTokenHosts": list(setup.identity.require_token_hosts),
        "objects": [],
    }
    if deployed is not None:
        result["release"] = {
            "name": pin.release,
            "namespace": pin.namespace,
            "chartVersion": str(deployed.chart_version),
            "appVersion": deployed.app_version,
            "status": deployed.status,
            "byKymamesh": marked_by_kymamesh(deployed),
        }
        manifest = helm.manifest(pin.release, pin.namespace, deployed) if helm else []
        reasons = []
        for obj in manifest:
            if obj.get("kind") == "Deployment":
                dref = Ref("apps/v1", "Deployment", obj["metadata"]["name"], pin.namespace)
                dlive = ctx.cluster.get(dref)
                why = not_ready_reason(dref, dlive)
                if why:
                    reasons.append(f"{dref}: {why}")
                result.update(_live_config(ctx.cluster, dlive, pin))
        result["ready"] = not reasons
        if reasons:
            result["notReady"] = "; ".join(reasons)
    if not setup.identity.enabled and deployed is None:
        return result
    wanted = wanted_objects(ctx, setup) if setup.identity.enabled else {}
    for role in _ROLE_REF:
        ref = _role_ref(ctx, setup, role)
        if ref is None:
            continue
        live = ctx.cluster.get(ref)
        want: Obj | None = wanted.get(role, (None, ""))[0]
        if live is None and want is None:
            continue
        result["objects"].append(
            {
                "kind": ref.kind,
                "name": f"{ref.namespace}/{ref.name}",
                "present": live is not None,
                "matches": live is not None and want is not None and matches(live, want),
                "wanted": want is not None,
            }
        )
    return result


def _live_config(cluster: Cluster, deployment: Obj | None, pin: DexRelease) -> dict[str, Any]:
    """Issuer and connectors (id, type) out of the config Secret Dex's Deployment mounts."""
    volumes = (
        (((deployment or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
    ).get("volumes") or []
    name = next(
        ((v.get("secret") or {}).get("secretName") for v in volumes if v.get("secret")), None
    )
    if not name:
        return {}
    secret = cluster.get(Ref("v1", "Secret", name, pin.namespace))
    text = _decode(((secret or {}).get("data") or {}).get("config.yaml", ""))
    try:
        config = yaml.safe_load(text or "") or {}
    except yaml.YAMLError:
        return {}
    if not isinstance(config, dict):
        return {}
    return {
        "issuer": config.get("issuer"),
        "connectors": [
            {"id": c.get("id"), "type": c.get("type")}
            for c in config.get("connectors") or []
            if isinstance(c, dict)
        ],
    }
