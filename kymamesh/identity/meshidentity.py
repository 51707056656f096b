"""A cluster's identity in a mesh of several clusters: mesh ID, cluster name, network.

Istio's multi-cluster meshes (multi-primary, on one network or several) need, in each
cluster, the same mesh ID, a cluster name of its own and the name of the network its
Pods are on. They are istiod values of Istio's `istiod` chart: `global.meshID` (the
mesh config's `defaultConfig.meshId`), `global.multiCluster.clusterName` (istiod's
`CLUSTER_ID`) and `global.network`, and the label `topology.istio.io/network` on the
Istio namespace, from which istiod learns the network of the cluster's own endpoints.

`install --mesh-id/--cluster-name/--network` set them as the parameters of the patch step
`multicluster-identity`, so they are remembered like every patch setting and a later
`install` keeps them. This module holds the checks and the values; the step
(`kymamesh.steps.meshidentity`) keeps the namespace label.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

from kymamesh.adapters import yamlfast
from kymamesh.adapters.cluster import Cluster, Ref
from kymamesh.errors import UsageError
from kymamesh.istio.controlplane import suffix_of

STEP = "multicluster-identity"
KIND = "mesh-identity"
NETWORK_LABEL = "topology.istio.io/network"
DEFAULT_CLUSTER_NAME = "Kubernetes"  # istiod's CLUSTER_ID when the chart value is empty

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")

# each parameter: its flag, the rule it must meet and an example
_RULES: dict[str, tuple[str, re.Pattern[str], str, str]] = {
    "meshID": (
        "--mesh-id",
        _LABEL_VALUE,
        "at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or "
        "digit (a Kubernetes label value)",
        "mesh1",
    ),
    "clusterName": (
        "--cluster-name",
        _DNS_LABEL,
        "a DNS-1123 label: at most 63 lower-case letters, digits or '-', starting and ending "
        "with a letter or digit (it names the cluster's remote secret in its peers)",
        "eu-west-1",
    ),
    "network": (
        "--network",
        _LABEL_VALUE,
        "at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or "
        "digit (the value of the label topology.istio.io/network)",
        "network1",
    ),
}
PARAMS = frozenset(_RULES)


def check(name: str, value: Any, origin: str | None = None) -> str | None:
    """The value of parameter `name` (None when unset), or a usage error naming the rule."""
    if value is None:
        return None
    flag, rule, words, example = _RULES[name]
    where = origin or flag
    if not isinstance(value, str) or not rule.match(value):
        raise UsageError(
            f"{where} {value!r} is not a valid {name}: it must be {words}",
            hint=f"give e.g. {flag} {example}",
        )
    if name == "clusterName" and value == DEFAULT_CLUSTER_NAME.lower():
        raise UsageError(
            f"{where} {value!r} is istiod's default cluster name, which every cluster has "
            "until it is named",
            hint=f"give each cluster a name of its own, e.g. {flag} {example}",
        )
    return value


def wanted(params: Mapping[str, Any]) -> dict[str, str]:
    """The identity the step's parameters ask for: the set ones, each checked."""
    out: dict[str, str] = {}
    for name in sorted(PARAMS):
        value = check(name, params.get(name), f"{STEP}: {name}")
        if value is not None:
            out[name] = value
    return out


def from_flags(
    mesh_id: str | None, cluster_name: str | None, network: str | None
) -> dict[str, str]:
    """The step's parameters given by `--mesh-id`, `--cluster-name`, `--network`."""
    given = {"meshID": mesh_id, "clusterName": cluster_name, "network": network}
    return {k: v for k, v in given.items() if check(k, v) is not None and v is not None}


def chart_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """istiod's chart values of the identity asked for ({} when none is set)."""
    identity = wanted(params)
    glob: dict[str, Any] = {}
    if "meshID" in identity:
        glob["meshID"] = identity["meshID"]
    if "clusterName" in identity:
        glob["multiCluster"] = {"clusterName": identity["clusterName"]}
    if "network" in identity:
        glob["network"] = identity["network"]
    return {"istiod": {"global": glob}} if glob else {}


def live(cluster: Cluster, namespace: str, revision: str = "") -> dict[str, str | None]:
    """The identity istiod of `revision` runs with, read from the cluster: the mesh ID of
    its mesh config, the `CLUSTER_ID` of its Deployment, the network label of `namespace`
    and the mesh config's trust domain. A value that is not set is None."""
    suffix = suffix_of(revision) if revision else ""
    mesh = cluster.get(Ref("v1", "ConfigMap", f"istio{suffix}", namespace)) or {}
    try:
        config = yamlfast.load((mesh.get("data") or {}).get("mesh") or "") or {}
    except yaml.YAMLError:
        config = {}
    config = config if isinstance(config, dict) else {}
    default_config = config.get("defaultConfig") or {}
    mesh_id = default_config.get("meshId") if isinstance(default_config, dict) else None
    deployment = cluster.get(Ref("apps/v1", "Deployment", f"istiod{suffix}", namespace)) or {}
    containers = (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
        "containers"
    ) or []
    cluster_id = None
    for container in containers:
        for env in container.get("env") or []:
            if env.get("name") == "CLUSTER_ID" and isinstance(env.get("value"), str):
                cluster_id = env["value"]
    ns = cluster.get(Ref("v1", "Namespace", namespace)) or {}
    network = ((ns.get("metadata") or {}).get("labels") or {}).get(NETWORK_LABEL)
    trust = config.get("trustDomain")
    return {
        "meshID": mesh_id if isinstance(mesh_id, str) and mesh_id else None,
        "clusterName": cluster_id,
        "network": network,
        "trustDomain": trust if isinstance(trust, str) and trust else "cluster.local",
    }


def status_lines(found: Mapping[str, Any] | None) -> list[str]:
    """What `status` says of the cluster's identity in the mesh (see `live`)."""
    if found is None:
        return []
    return [
        f"mesh: ID {found.get('meshID') or 'unset'}, cluster "
        f"{found.get('clusterName') or DEFAULT_CLUSTER_NAME}, network "
        f"{found.get('network') or 'unset'}, trust domain {found.get('trustDomain')}"
    ] + [
        f"  peer {p['cluster']}: remote secret {p['secret']}, token until "
        f"{p.get('tokenExpires') or 'unknown'}" + (" (expired)" if p.get("tokenExpired") else "")
        for p in found.get("peers") or []
    ]
