"""Step `network-policies`: NetworkPolicies that let the mesh work where traffic is denied.

With the mesh file's `networkPoliciesEnabled: true` (parameter `enabled`), kymamesh keeps the
NetworkPolicies below, labelled `app.kubernetes.io/managed-by=kymamesh`; with `false` it
removes them (only its own); `null` leaves them alone. NetworkPolicies add up: these open
what the mesh needs on top of a default-deny policy of the cluster's owner, and close nothing
on their own beyond the Pods they select.

In the Istio namespace (istio-system):

- `kymamesh-istiod` (Pods `istio=pilot`): in: 15010 and 15012 (configuration and
  certificates for every sidecar and gateway) and 15014 (monitoring) from every namespace,
  15017 (the injection and validation webhooks, called by the API server) from anywhere;
  out: DNS (53, UDP and TCP), the API server (the port behind Service `default/kubernetes`),
  80 and 443 (the JWKS of RequestAuthentications).
- `kymamesh-ingressgateway` (Pods `istio=ingressgateway`): in: the ports its Service sends
  traffic to, and 15020, 15021, 15090 (merged metrics, health, Envoy's statistics) from
  anywhere; out: istiod's 15012, DNS, and every Pod of the cluster (the gateway forwards to
  the mesh's workloads).
- `kymamesh-egressgateway` (Pods `istio=egressgateway`): in: from every Pod of the cluster
  (sidecars send outbound traffic through it) and the metrics ports; out: anywhere.

In the system namespace (kyma-system):

- `kymamesh-sidecars` (Pods `security.istio.io/tlsMode=istio`, the label injection puts on
  a Pod with a sidecar): out: istiod's 15012 and DNS; in: 15020, 15021 and 15090.

The Kyma Istio module's policies (`kyma-project.io--istio-*`) allow the same traffic; this
step does not touch them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

from kymamesh import MANAGED_BY_LABEL
from kymamesh.adapters.cluster import Cluster, Obj, Ref
from kymamesh.diffs import object_diff, unified
from kymamesh.errors import UsageError
from kymamesh.steps.base import ONCE_CHARTS_DONE, Change, StepContext

API = "networking.k8s.io/v1"
KIND = "NetworkPolicy"
ISTIOD = "kymamesh-istiod"
INGRESS = "kymamesh-ingressgateway"
EGRESS = "kymamesh-egressgateway"
SIDECARS = "kymamesh-sidecars"
NAMES = (ISTIOD, INGRESS, EGRESS, SIDECARS)
DEFAULT_API_SERVER_PORT = 443
PROXY_PORTS = (15020, 15021, 15090)  # merged metrics, health, Envoy's statistics
DNS = {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": p} for p in ports]


def _namespace_selector(name: str) -> dict[str, Any]:
    return {"matchLabels": {"kubernetes.io/metadata.name": name}}


def _policy(name: str, namespace: str, pods: Mapping[str, str], spec: Obj) -> Obj:
    return {
        "apiVersion": API,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: "kymamesh"},
        },
        "spec": {
            "podSelector": {"matchLabels": dict(pods)},
            "policyTypes": ["Ingress", "Egress"],
            **spec,
        },
    }


def wanted_policies(
    istio_namespace: str, system_namespace: str, api_server_port: int, gateway_ports: list[int]
) -> list[Obj]:
    """The NetworkPolicies of the module docstring."""
    to_istiod = {
        "to": [
            {
                "namespaceSelector": _namespace_selector(istio_namespace),
                "podSelector": {"matchLabels": {"istio": "pilot"}},
            }
        ],
        "ports": _tcp(15012),
    }
    everywhere: list[dict[str, Any]] = [{"namespaceSelector": {}}]
    return [
        _policy(
            ISTIOD,
            istio_namespace,
            {"istio": "pilot"},
            {
                "ingress": [
                    {"from": everywhere, "ports": _tcp(15010, 15012, 15014)},
                    {"ports": _tcp(15017)},
                ],
                "egress": [DNS, {"ports": _tcp(api_server_port)}, {"ports": _tcp(80, 443)}],
            },
        ),
        _policy(
            INGRESS,
            istio_namespace,
            {"istio": "ingressgateway"},
            {
                "ingress": [{"ports": _tcp(*sorted({*gateway_ports, *PROXY_PORTS}))}],
                "egress": [to_istiod, DNS, {"to": everywhere}],
            },
        ),
        _policy(
            EGRESS,
            istio_namespace,
            {"istio": "egressgateway"},
            {
                "ingress": [{"from": everywhere}, {"ports": _tcp(*PROXY_PORTS)}],
                "egress": [{}],
            },
        ),
        _policy(
            SIDECARS,
            system_namespace,
            {"security.istio.io/tlsMode": "istio"},
            {"ingress": [{"ports": _tcp(*PROXY_PORTS)}], "egress": [to_istiod, DNS]},
        ),
    ]


def _params(params: Mapping[str, Any]) -> tuple[bool | None, str, str]:
    enabled = params.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise UsageError(
            f"network-policies: enabled is {enabled!r}; it must be true, false or null",
            hint="set networkPoliciesEnabled: true or false in the mesh file",
        )
    system = params.get("systemNamespace") or "kyma-system"
    gateway = params.get("gatewayName") or "istio-ingressgateway"
    if not isinstance(system, str) or not isinstance(gateway, str):
        raise UsageError("network-policies: systemNamespace and gatewayName must be names")
    return enabled, system, gateway


def api_server_port(cluster: Cluster) -> int:
    """The port the API server listens on: the target port of Service default/kubernetes's
    `https` port (what a Pod's traffic to the API reaches), 443 when it cannot be read."""
    service = cluster.get(Ref("v1", "Service", "kubernetes", "default")) or {}
    for port in (service.get("spec") or {}).get("ports") or []:
        if port.get("name") == "https":
            target = port.get("targetPort", port.get("port"))
            if isinstance(target, int):
                return target
    return DEFAULT_API_SERVER_PORT


def gateway_ports(cluster: Cluster, namespace: str, name: str) -> list[int]:
    """The container ports the ingress gateway's Service sends traffic to."""
    service = cluster.get(Ref("v1", "Service", name, namespace)) or {}
    ports = []
    for port in (service.get("spec") or {}).get("ports") or []:
        target = port.get("targetPort", port.get("port"))
        if isinstance(target, int):
            ports.append(target)
    return ports


def _ours(live: Obj | None) -> bool:
    labels = ((live or {}).get("metadata") or {}).get("labels") or {}
    return labels.get(MANAGED_BY_LABEL) == "kymamesh"


class NetworkPoliciesStep:
    """The mesh's NetworkPolicies (see the module docstring)."""

    PARAMS: ClassVar[frozenset[str]] = frozenset({"enabled", "systemNamespace", "gatewayName"})
    RUNS_ONCE: ClassVar[str] = ONCE_CHARTS_DONE

    def preflight(self, ctx: StepContext) -> str | None:
        _params(ctx.params)
        return None

    def check(self, ctx: StepContext) -> list[Change]:
        enabled, system, gateway = _params(ctx.params)
        if enabled is None:
            return []
        changes: list[Change] = []
        if not enabled:
            for namespace, name in [(ctx.namespace, n) for n in NAMES[:3]] + [(system, SIDECARS)]:
                ref = Ref(API, KIND, name, namespace)
                live = ctx.cluster.get(ref)
                if live is not None and _ours(live):
                    changes.append(_delete(ref, live))
            return changes
        wanted = wanted_policies(
            ctx.namespace,
            system,
            api_server_port(ctx.cluster),
            gateway_ports(ctx.cluster, ctx.namespace, gateway),
        )
        for obj in wanted:
            ref = Ref.of(obj)
            live = ctx.cluster.get(ref)
            labels = ((live or {}).get("metadata") or {}).get("labels") or {}
            if (
                live is not None
                and live.get("spec") == obj["spec"]
                and labels.get(MANAGED_BY_LABEL) == "kymamesh"
            ):
                continue
            changes.append(_apply(ref, live, obj))
        return changes


def _apply(ref: Ref, live: Obj | None, obj: Obj) -> Change:
    def apply(cluster: Cluster) -> None:
        cluster.ensure_namespace(ref.namespace)
        cluster.apply(copy.deepcopy(obj))

    before = None if live is None else {"spec": live.get("spec")}
    return Change(
        target=f"{KIND}/{ref.namespace}/{ref.name}",
        summary="created" if live is None else "spec set as the mesh needs it",
        apply=apply,
        diff=object_diff(before, {"spec": obj["spec"]}, str(ref)),
    )


def _delete(ref: Ref, live: Obj) -> Change:
    def apply(cluster: Cluster) -> None:
        cluster.delete(ref)

    return Change(
        target=f"{KIND}/{ref.namespace}/{ref.name}",
        summary="deleted (networkPoliciesEnabled is false)",
        apply=apply,
        diff=unified({"spec": live.get("spec")}, None, str(ref)),
    )
