"""Step `ingress-gateway-tls`: a certificate for the ingress gateway and a Gateway serving it.

The Secret holds either the user's pair (`certFile`/`keyFile`, set by
`--tls-cert/--tls-key`) or a self-signed certificate for `*.<domain>`.
kymamesh renews only what it generated itself; a certificate it did not make is
left alone while it is valid and covers the domain (a re-run without
`--tls-cert` must not throw away a real certificate). The private key is never
shown: diffs and summaries describe certificates, and Secret data is redacted.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from kymamesh import MANAGED_BY_LABEL
from kymamesh.adapters.cluster import Cluster, Obj, Ref
from kymamesh.diffs import REDACTED, object_diff, secret_markers, unified
from kymamesh.errors import PreconditionError, UsageError
from kymamesh.identity.certs import (
    InvalidCertificateError,
    TlsPair,
    check_domain,
    check_usable,
    load_pair,
    parse_pair,
    self_signed,
)
from kymamesh.steps.base import ONCE_ISTIOD_ANSWERS, Change, StepContext

TLS_TYPE = "kubernetes.io/tls"
SOURCE_ANNOTATION = "kymamesh.io/certificate-source"  # self-signed | user
SOURCE_SELF_SIGNED = "self-signed"
SOURCE_USER = "user"
GATEWAY_API_VERSIONS = ("networking.istio.io/v1", "networking.istio.io/v1beta1")


@dataclass(frozen=True)
class TlsParams:
    domain: str
    secret_name: str
    secret_namespace: str
    gateway_name: str
    gateway_namespace: str
    selector: Mapping[str, str]
    renew_before_days: int
    validity_days: int
    cert_file: str | None
    key_file: str | None

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> TlsParams:
        secret = params.get("secret") or {}
        gateway = params.get("gateway") or {}
        try:
            renew = int(params.get("renewBeforeDays", 30))
            validity = int(params.get("validityDays", 365))
        except (TypeError, ValueError):
            raise UsageError(
                "ingress-gateway-tls: renewBeforeDays and validityDays must be whole numbers"
            ) from None
        if renew < 0 or validity <= renew:
            raise UsageError(
                f"ingress-gateway-tls: validityDays ({validity}) must be greater than "
                f"renewBeforeDays ({renew}) and both positive",
                hint="otherwise every run would renew the certificate it just made",
            )
        cert_file = params.get("certFile") or None
        key_file = params.get("keyFile") or None
        if (cert_file is None) != (key_file is None):
            raise UsageError(
                "ingress-gateway-tls: certFile and keyFile go together",
                hint="give both (--tls-cert and --tls-key), or neither for a self-signed one",
            )
        return cls(
            domain=check_domain(str(params.get("domain") or "")),
            secret_name=str(secret.get("name", "kyma-gateway-certs")),
            secret_namespace=str(secret.get("namespace", "istio-system")),
            gateway_name=str(gateway.get("name", "kyma-gateway")),
            gateway_namespace=str(gateway.get("namespace", "kyma-system")),
            selector={
                str(k): str(v)
                for k, v in (gateway.get("selector") or {"istio": "ingressgateway"}).items()
            },
            renew_before_days=renew,
            validity_days=validity,
            cert_file=str(cert_file) if cert_file else None,
            key_file=str(key_file) if key_file else None,
        )

    @property
    def secret_ref(self) -> Ref:
        return Ref("v1", "Secret", self.secret_name, self.secret_namespace)


def _note(ctx: StepContext, text: str) -> None:
    """Notes are collected once per run although `check` runs several times."""
    if text not in ctx.notes:
        ctx.notes.append(text)


def _now() -> datetime:
    return datetime.now(UTC)


class GatewayTlsStep:
    """Secret `kyma-gateway-certs` and Gateway `kyma-system/kyma-gateway`."""

    PARAMS: ClassVar[frozenset[str]] = frozenset(
        {"domain", "secret", "gateway", "renewBeforeDays", "validityDays", "certFile", "keyFile"}
    )
    RUNS_ONCE: ClassVar[str] = ONCE_ISTIOD_ANSWERS

    def preflight(self, ctx: StepContext) -> str | None:
        params = TlsParams.of(ctx.params)
        if params.cert_file and params.key_file:
            pair = load_pair(params.cert_file, params.key_file)
            check_usable(pair, params.domain, _now(), params.renew_before_days)
        return None

    def check(self, ctx: StepContext) -> list[Change]:
        params = TlsParams.of(ctx.params)
        changes = []
        secret = self._secret_change(ctx, params)
        if secret is not None:
            changes.append(secret)
        gateway = self._gateway_change(ctx, params)
        if gateway is not None:
            changes.append(gateway)
        return changes

    # -- the Secret ----------------------------------------------------------

    def _secret_change(self, ctx: StepContext, params: TlsParams) -> Change | None:
        now = _now()
        live = ctx.cluster.get(params.secret_ref)
        live_pair, unusable = _pair_in(live)
        if params.cert_file and params.key_file:
            wanted = load_pair(params.cert_file, params.key_file)
            for warning in check_usable(wanted, params.domain, now, params.renew_before_days):
                _note(ctx, warning)
            in_place = live is not None and live.get("type") == TLS_TYPE
            if in_place and live_pair is not None and live_pair.same_as(wanted):
                return None
            summary = (
                f"the given certificate for *.{params.domain} installed ({wanted.info.subject}, "
                f"valid until {wanted.info.not_after:%Y-%m-%d})"
            )
            if live is not None:
                summary += f", replacing the {_live_short(live_pair, unusable)}"
            return self._write_change(
                params,
                live,
                live_pair,
                unusable,
                wanted.info.view(),
                summary,
                lambda: wanted,
                SOURCE_USER,
                wanted.key_pem,
            )

        why = self._why_new_self_signed(ctx, params, live, live_pair, unusable, now)
        if why is None:
            return None
        until = now + timedelta(days=params.validity_days)
        summary = f"new self-signed certificate for *.{params.domain}, valid until {until:%Y-%m-%d}"
        if why:
            summary += f" ({why})"
        description: dict[str, object] = {
            "subject": f"CN=*.{params.domain}",
            "dnsNames": [f"*.{params.domain}", params.domain],
            "issuer": "(self-signed)",
            "notAfter": f"{until:%Y-%m-%d} (about)",
            "sha256": "(new)",
        }
        return self._write_change(
            params,
            live,
            live_pair,
            unusable,
            description,
            summary,
            lambda: self_signed(params.domain, params.validity_days),
            SOURCE_SELF_SIGNED,
            None,
        )

    @staticmethod
    def _why_new_self_signed(
        ctx: StepContext,
        params: TlsParams,
        live: Obj | None,
        live_pair: TlsPair | None,
        unusable: str,
        now: datetime,
    ) -> str | None:
        """None when the live certificate is to be kept; else why a new one is made."""
        if live is None:
            return ""
        if live.get("type") != TLS_TYPE:
            return f"the Secret had type {live.get('type') or 'Opaque'}, not {TLS_TYPE}"
        if live_pair is None:
            return f"the live certificate is unusable: {unusable}"
        info = live_pair.info
        if not info.covers(params.domain):
            names = ", ".join(info.dns_names) or "no DNS names"
            return f"the live certificate covers {names}, not *.{params.domain}"
        if info.not_after <= now:
            return f"the live certificate expired on {info.not_after:%Y-%m-%d}"
        if info.expires_within(params.renew_before_days, now):
            annotations = (live.get("metadata") or {}).get("annotations") or {}
            if annotations.get(SOURCE_ANNOTATION) == SOURCE_SELF_SIGNED:
                return f"renewing: the live one expires on {info.not_after:%Y-%m-%d}"
            _note(
                ctx,
                f"the certificate in Secret {params.secret_namespace}/{params.secret_name} "
                f"({info.subject}) expires on {info.not_after:%Y-%m-%d}; kymamesh did not make "
                "it, so it does not replace it: re-run with a renewed --tls-cert/--tls-key",
            )
        return None

    @staticmethod
    def _write_change(
        params: TlsParams,
        live: Obj | None,
        live_pair: TlsPair | None,
        unusable: str,
        wanted_description: Mapping[str, object],
        summary: str,
        make: Callable[[], TlsPair],
        source: str,
        wanted_key: bytes | None,
    ) -> Change:
        """The write of the Secret. `wanted_key` is the key to store, or None when a new
        one is made on apply; the diff only says whether the key changes."""
        live_key = _decode((live or {}).get("data") or {}, "tls.key")
        live_marks, wanted_marks = secret_markers(
            None if live is None else ({"tls.key": live_key} if live_key is not None else {}),
            {"tls.key": wanted_key},
        )
        before = _redacted_view(live, _live_view(live_pair, unusable)) if live else None
        if before is not None and live_marks:
            before["data"].update(live_marks)
        after = {
            "metadata": {
                "annotations": {SOURCE_ANNOTATION: source},
                "labels": {MANAGED_BY_LABEL: "kymamesh"},
            },
            "type": TLS_TYPE,
            "data": {"tls.crt": dict(wanted_description), **wanted_marks},
        }
        diff = unified(before, after, str(params.secret_ref))

        def apply(cluster: Cluster) -> None:
            pair: TlsPair = make()
            _write_secret(cluster, params, pair, source)

        return Change(target=str(params.secret_ref), summary=summary, apply=apply, diff=diff)

    # -- the Gateway ---------------------------------------------------------

    def _gateway_change(self, ctx: StepContext, params: TlsParams) -> Change | None:
        api_version = next(
            (v for v in GATEWAY_API_VERSIONS if ctx.cluster.serves(v, "Gateway")), None
        )
        target = f"Gateway/{params.gateway_namespace}/{params.gateway_name}"
        if api_version is None:
            message = (
                "the API server does not serve Istio's Gateway kind (networking.istio.io v1 or "
                "v1beta1)"
            )
            if not ctx.dry_run:
                raise PreconditionError(message, hint="install Istio's base chart (its CRDs) first")

            def refuse(cluster: Cluster) -> None:
                raise PreconditionError(message)

            return Change(
                target=target,
                summary=f"Gateway serving HTTPS for *.{params.domain} (after Istio's CRDs exist)",
                apply=refuse,
            )
        wanted = gateway_object(params, api_version)
        live = ctx.cluster.get(Ref.of(wanted))
        if live is not None and matches(live, wanted):
            return None
        verb = "updated" if live is not None else "created"
        summary = (
            f"Gateway {verb}: HTTPS on 443 for *.{params.domain} with Secret "
            f"{params.secret_name}, HTTP on 80 redirecting to HTTPS"
        )

        def apply(cluster: Cluster) -> None:
            cluster.ensure_namespace(params.gateway_namespace)
            cluster.apply(wanted)

        return Change(
            target=target, summary=summary, apply=apply, diff=object_diff(live, wanted, target)
        )


def gateway_object(params: TlsParams, api_version: str) -> Obj:
    """The Gateway: HTTPS with the Secret, and HTTP answered with a redirect to HTTPS."""
    host = f"*.{params.domain}"
    return {
        "apiVersion": api_version,
        "kind": "Gateway",
        "metadata": {
            "name": params.gateway_name,
            "namespace": params.gateway_namespace,
            "labels": {MANAGED_BY_LABEL: "kymamesh"},
        },
        "spec": {
            "selector": dict(params.selector),
            "servers": [
                {
                    "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                    "hosts": [host],
                    "tls": {"mode": "SIMPLE", "credentialName": params.secret_name},
                },
                {
                    "port": {"number": 80, "name": "http", "protocol": "HTTP"},
                    "hosts": [host],
                    "tls": {"httpsRedirect": True},
                },
            ],
        },
    }


def matches(live: Any, wanted: Any) -> bool:
    """True when `live` has every field `wanted` sets, with the same value.

    Maps may carry more keys (server defaults); lists must have the same items.
    """
    if isinstance(wanted, Mapping):
        return isinstance(live, Mapping) and all(
            k in live and matches(live[k], v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(live, list)
            and len(live) == len(wanted)
            and all(matches(a, b) for a, b in zip(live, wanted, strict=True))
        )
    return bool(live == wanted)


# -- Secret helpers ------------------------------------------------------------


def _decode(data: Mapping[str, Any], key: str) -> bytes | None:
    value = data.get(key)
    if not value:
        return None
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        return None


def _pair_in(secret: Obj | None) -> tuple[TlsPair | None, str]:
    """The pair a live Secret holds, or None and why it cannot be used."""
    if secret is None:
        return None, "missing"
    data = secret.get("data") or {}
    cert = _decode(data, "tls.crt")
    key = _decode(data, "tls.key")
    if cert is None or key is None:
        return None, "tls.crt or tls.key is missing or empty"
    try:
        return parse_pair(cert, key, "tls.crt", "tls.key"), ""
    except InvalidCertificateError as exc:
        return None, exc.message


def _live_short(pair: TlsPair | None, unusable: str) -> str:
    return pair.info.short() if pair is not None else f"unusable certificate ({unusable})"


def _live_view(pair: TlsPair | None, unusable: str) -> Any:
    return pair.info.view() if pair is not None else f"(unusable: {unusable})"


def _redacted_view(secret: Obj, description: Any) -> dict[str, Any]:
    """What a diff may show of a live TLS Secret: labels, type, a certificate description."""
    meta = secret.get("metadata") or {}
    view: dict[str, Any] = {"metadata": {}, "type": secret.get("type")}
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k == SOURCE_ANNOTATION
    }
    if annotations:
        view["metadata"]["annotations"] = annotations
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k == MANAGED_BY_LABEL}
    if labels:
        view["metadata"]["labels"] = labels
    data = secret.get("data") or {}
    view["data"] = {k: REDACTED for k in sorted(data)}
    if "tls.crt" in data:
        view["data"]["tls.crt"] = description
    return view


def secret_object(params: TlsParams, pair: TlsPair, source: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": params.secret_name,
            "namespace": params.secret_namespace,
            "labels": {MANAGED_BY_LABEL: "kymamesh"},
            "annotations": {SOURCE_ANNOTATION: source},
        },
        "type": TLS_TYPE,
        "data": {
            "tls.crt": base64.b64encode(pair.cert_pem).decode("ascii"),
            "tls.key": base64.b64encode(pair.key_pem).decode("ascii"),
        },
    }


def _write_secret(cluster: Cluster, params: TlsParams, pair: TlsPair, source: str) -> None:
    """Apply the Secret; a Secret of another type is replaced (its type is immutable)."""
    live = cluster.get(params.secret_ref)
    if live is not None and live.get("type") != TLS_TYPE:
        cluster.delete(params.secret_ref)
    cluster.apply(secret_object(params, pair, source))
