"""Where istiod may fetch signing keys from: its `BLOCKED_CIDRS_IN_JWKS_URIS`.

istiod fetches the JWKS of every RequestAuthentication itself (the `jwksUri`), from
its own network position: whoever can write a RequestAuthentication could make it
fetch from its own loopback ports or a cloud metadata service. Istio's
`BLOCKED_CIDRS_IN_JWKS_URIS` (a comma-separated list of CIDRs, read once when istiod
starts; Istio's analyzer warns, IST0175, while it is unset and a RequestAuthentication
exists) makes istiod refuse to connect to an address in those ranges, judged on the
address the host name resolved to.

The list blocks what istiod never needs for a JWKS: "this host" and loopback (istiod's
own debug and XDS ports), link-local (the metadata services of AWS, Google Cloud,
Azure, OpenStack, Oracle and others at 169.254.169.254, AWS ECS at 169.254.170.2), and
the metadata addresses outside those ranges (AWS and Google Cloud over IPv6, Alibaba
Cloud, Azure's WireServer). Dex is reached by its Service name, which resolves to a
ClusterIP of the cluster's Service range: `service_range_overlaps` checks that range
against the list before anything is written.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from kymamesh.adapters.cluster import Cluster, Obj, Ref
from kymamesh.istio.controlplane import DISCOVERY_CONTAINER

ENV = "BLOCKED_CIDRS_IN_JWKS_URIS"
BLOCKED_CIDRS: tuple[str, ...] = (
    "0.0.0.0/8",  # "this host": connecting to 0.0.0.0 reaches the local host
    "127.0.0.0/8",  # loopback: istiod's own ports
    "::1/128",
    "169.254.0.0/16",  # link-local: the cloud metadata services at 169.254.169.254
    "fe80::/10",
    "fd00:ec2::254/128",  # AWS instance metadata over IPv6
    "fd20:ce::254/128",  # Google Cloud metadata over IPv6
    "100.100.100.200/32",  # Alibaba Cloud metadata
    "168.63.129.16/32",  # Azure WireServer
)
VALUE = ",".join(BLOCKED_CIDRS)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(text: str) -> list[Network]:
    found = []
    for part in text.split(","):
        try:
            found.append(ipaddress.ip_network(part.strip(), strict=False))
        except ValueError:
            continue  # istiod skips what it cannot parse, too
    return found


def overlaps(ranges: Iterable[str]) -> list[tuple[str, str]]:
    """(range, blocked CIDR) for every given range that a blocked CIDR overlaps."""
    blocked = _networks(VALUE)
    found = []
    for text in ranges:
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            continue
        for cidr in blocked:
            if net.version == cidr.version and net.overlaps(cidr):
                found.append((str(net), str(cidr)))
    return found


def service_ranges(cluster: Cluster) -> list[str]:
    """The cluster's Service ranges (ServiceCIDR objects, Kubernetes 1.33+), else the
    ClusterIPs of the API server's own Service `default/kubernetes`."""
    ranges: list[str] = []
    for obj in cluster.list("networking.k8s.io/v1", "ServiceCIDR"):
        ranges.extend(str(c) for c in (obj.get("spec") or {}).get("cidrs") or [])
    if ranges:
        return ranges
    api = cluster.get(Ref("v1", "Service", "kubernetes", "default")) or {}
    spec = api.get("spec") or {}
    return [str(ip) for ip in spec.get("clusterIPs") or [spec.get("clusterIP")] if ip]


def _discovery(deployment: Mapping[str, Any]) -> Mapping[str, Any] | None:
    spec = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    for container in spec.get("containers") or []:
        if container.get("name") == DISCOVERY_CONTAINER:
            return dict(container)
    return None


def current(deployment: Mapping[str, Any]) -> str | None:
    """The variable's value in istiod's discovery container (None: not set)."""
    container = _discovery(deployment)
    for env in (container or {}).get("env") or []:
        if env.get("name") == ENV:
            return str(env.get("value") or "")
    return None


def wanted(value: str | None) -> str:
    """The value to set: what is there, with every range of the list that is missing
    added (a value someone else set keeps its ranges; nothing is ever unblocked)."""
    have = [p.strip() for p in (value or "").split(",") if p.strip()]
    missing = [c for c in BLOCKED_CIDRS if c not in have]
    return ",".join(have + missing)


def edit(value: str | None) -> Any:
    """A `Cluster.update` edit that sets the variable to `value` (None: removes it) in
    the discovery container of the live Deployment."""

    def patch(live: Obj) -> Mapping[str, Any] | None:
        spec = ((live.get("spec") or {}).get("template") or {}).get("spec") or {}
        containers = [dict(c) for c in spec.get("containers") or []]
        for container in containers:
            if container.get("name") != DISCOVERY_CONTAINER:
                continue
            env = [dict(e) for e in container.get("env") or [] if e.get("name") != ENV]
            if value is not None:
                env.append({"name": ENV, "value": value})
            if env == list(container.get("env") or []):
                return None
            container["env"] = env
            return {"spec": {"template": {"spec": {"containers": containers}}}}
        return None

    return patch


def has_discovery(deployment: Mapping[str, Any]) -> bool:
    return _discovery(deployment) is not None
