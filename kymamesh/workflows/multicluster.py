"""One mesh across clusters: `kymamesh mesh join` (multi-primary, one network or several).

Each istiod watches its peers' API servers through a remote secret: in cluster W,
Secret `istio-system/istio-remote-secret-R` (label `istio/multiCluster: "true"`,
annotation `networking.istio.io/cluster: R`) whose key `R` is a kubeconfig for R's API
server. kymamesh makes that kubeconfig from a token of a reader ServiceAccount it
creates in R for W (`kymamesh-reader-W`, bound to Istio's reader ClusterRole of the
istiod chart and nothing else), never from the user's own credentials. Each token is
a TokenRequest of bounded lifetime bound to a Secret of its own in R
(`kymamesh-reader-W-token-XXXXXX`): deleting that Secret revokes the token.

The workflow: connect to every cluster and check all of them before the first write
(same mesh ID and trust domain, distinct cluster names, `cacerts` of one root, Istio
minors at most one apart, API servers that answer, no remote secret of someone else in
the way); plan every object; when something is to change, take each cluster's lock in
a fixed order (by cluster name) and plan again under the locks; write; then verify that
every istiod reports each peer synced (`/debug/clusterz`) and knows the peer's Services
(`/debug/registryz`). A re-run finds everything in place and writes nothing.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from kymamesh import MANAGED_BY_LABEL
from kymamesh.adapters.cluster import Cluster, Obj, Ref, probe_api_server
from kymamesh.adapters.helm import DeployedRelease, LoadedChart
from kymamesh.context import RunContext
from kymamesh.diffs import object_diff, secret_values
from kymamesh.errors import (
    ExitCode,
    IstiodUnreachableError,
    KymameshError,
    PartialFailureError,
    PreconditionError,
    UsageError,
    WaitTimeoutError,
)
from kymamesh.identity import certs, meshca, meshidentity
from kymamesh.istio.inventory import INSTALL_DESCRIPTION, find_istiods, marked_by_kymamesh
from kymamesh.istio.versions import Version
from kymamesh.output import ItemResult, Outcome

NAMESPACE = "istio-system"
REMOTE_SECRET_PREFIX = "istio-remote-secret-"
MULTICLUSTER_LABEL = "istio/multiCluster"
CLUSTER_ANNOTATION = "networking.istio.io/cluster"
READER_PREFIX = "kymamesh-reader-"
READER_LABEL = "kymamesh.io/reader-for"  # on what join writes in the read cluster: the peer
TOKEN_SECRET_ANNOTATION = "kymamesh.io/token-secret"  # on a remote secret: the token's anchor
TOKEN_EXPIRES_ANNOTATION = "kymamesh.io/token-expires"
READER_ROLE_LABEL = "app=istio-reader"
DEFAULT_TOKEN_LIFETIME = timedelta(days=30)
RENEW_FRACTION = 1 / 3  # a token with less than this share of its lifetime left is renewed
PARALLEL = 4  # clusters worked on side by side
# Before Istio 1.30.4 an istiod drops a peer's Services from its registry when that peer's
# remote secret changes (a new token), and does not get them back (make-before-break of
# the remote cluster came in 1.30.4; the 1.31 line has it).
SECRET_UPDATE_SAFE_FROM = Version(1, 30, 4)
# several networks: the east-west gateway (Istio's gateway chart, networkGateway=NET) and the
# Gateway that passes mTLS through it to the services of its cluster
EAST_WEST_NAME = "istio-eastwestgateway"
EAST_WEST_PORT = 15443
GATEWAY_PORT_LABEL = "networking.istio.io/gatewayPort"
# the ports of an east-west gateway's Service (Istio's gateway chart with networkGateway set)
EAST_WEST_PORTS = {"status-port": 15021, "tls": 15443, "tls-istiod": 15012, "tls-webhook": 15017}
EAST_WEST_SELECTOR = {"istio": "eastwestgateway"}
DEFAULT_GATEWAY_WAIT = 300.0  # seconds for a load balancer to give a new gateway an address
HELM_RELEASE_ANNOTATION = "meta.helm.sh/release-name"
CROSS_NETWORK_GATEWAY = "cross-network-gateway"
_FORBIDDEN_AUTH = ("exec", "auth-provider", "tokenFile", "username", "password")
_FILE_KEYS = ("client-certificate", "client-key", "certificate-authority")


# -- who is in the mesh ----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One cluster as the command line names it."""

    kubeconfig: str | None
    context: str | None

    @property
    def label(self) -> str:
        where = self.kubeconfig or "the default kubeconfig"
        return f"{where}" + (f" (context {self.context})" if self.context else "")


def targets(kubeconfigs: Sequence[str], contexts: Sequence[str], least: int = 2) -> list[Target]:
    """The clusters of `--kubeconfig A --kubeconfig B` and/or `--context X --context Y`:
    repeated kubeconfigs (each its current context), repeated contexts of one kubeconfig,
    or both, paired in order."""
    if not kubeconfigs and not contexts and least == 1:
        return [Target(None, None)]  # the default kubeconfig and its current context
    if kubeconfigs and contexts and len(kubeconfigs) != len(contexts):
        if len(kubeconfigs) == 1:
            return [Target(kubeconfigs[0], ctx) for ctx in contexts]
        raise UsageError(
            f"{len(kubeconfigs)} --kubeconfig and {len(contexts)} --context: with both, they "
            "pair in order",
            hint="give one --context per --kubeconfig, or one --kubeconfig with several --context",
        )
    if kubeconfigs and contexts:
        found = [Target(k, c) for k, c in zip(kubeconfigs, contexts, strict=True)]
    elif contexts:
        found = [Target(None, c) for c in contexts]
    else:
        found = [Target(k, None) for k in kubeconfigs]
    if len(found) < least:
        raise UsageError(
            f"this needs at least {least} cluster{'s' if least > 1 else ''}, got {len(found)}",
            hint="name each cluster: --kubeconfig A --kubeconfig B, or --context A --context B",
        )
    if len(set(found)) != len(found):
        raise UsageError(
            "the same cluster is named twice on the command line",
            hint="name each cluster once",
        )
    return found


def parse_api_servers(given: Sequence[str]) -> dict[str, str]:
    """`--api-server NAME=URL`: the address peers reach cluster NAME's API server at."""
    out: dict[str, str] = {}
    for item in given:
        name, sep, url = item.partition("=")
        if not sep or not name or not url.startswith("https://") or len(url) <= len("https://"):
            raise UsageError(
                f"--api-server {item!r} is not NAME=https://HOST[:PORT]",
                hint="give the cluster name and the URL peers reach its API server at, e.g. "
                "--api-server west=https://10.0.0.5:6443",
            )
        meshidentity.check("clusterName", name, f"--api-server {item}:")
        out[name] = url.rstrip("/")
    return out


@dataclass
class Member:
    """One cluster of the mesh, as read before any write."""

    target: Target
    ctx: RunContext
    name: str = ""
    mesh_id: str | None = None
    network: str | None = None
    trust_domain: str = "cluster.local"
    version: Version | None = None
    server: str = ""  # where the peers reach its API server
    ca_pem: bytes | None = None  # the CA its API server is trusted with
    root_pem: bytes | None = None  # the root of its cacerts
    reader_role: str | None = None
    remote_secrets: dict[str, Obj] = field(default_factory=dict)  # by the peer it names
    gateways: list[Obj] = field(default_factory=list)  # east-west gateway Services
    # the Helm release istio-eastwestgateway kymamesh made here (None: none, or not kymamesh's)
    gateway_release: DeployedRelease | None = None
    gateway_chart: LoadedChart | None = None  # the gateway chart, when one is to be installed

    @property
    def cluster(self) -> Cluster:
        return self.ctx.cluster

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kubeconfig": self.target.kubeconfig,
            "context": self.target.context or self.cluster.context,
            "meshID": self.mesh_id,
            "network": self.network,
            "trustDomain": self.trust_domain,
            "istio": str(self.version) if self.version else None,
            "apiServer": self.server,
        }


def connect(ctx: RunContext, found: Sequence[Target]) -> list[Member]:
    """A context of its own per cluster (its connection, its lock), sharing the result."""
    members = []
    for target in found:
        options = replace(ctx.options, kubeconfig=target.kubeconfig, context=target.context)
        member_ctx = RunContext(options=options, result=ctx.result, progress=ctx.progress)
        members.append(Member(target=target, ctx=member_ctx))
    return members


@contextmanager
def sessions(members: Sequence[Member]) -> Iterator[None]:
    """Every member's session: its locks (if taken) released and connections closed."""
    with ExitStack() as stack:
        for m in members:
            stack.enter_context(m.ctx.session())
        yield


def read_member(m: Member, api_servers: Mapping[str, str]) -> None:
    """What preflight needs of one cluster (reads only)."""
    try:
        cluster = m.cluster
    except KymameshError as exc:
        raise type(exc)(f"{m.target.label}: {exc.message}", hint=exc.hint) from None
    istiods = [d for d in find_istiods(cluster, NAMESPACE) if d.plane is not None]
    if not istiods:
        raise PreconditionError(
            f"{m.target.label}: no istiod in {NAMESPACE}",
            hint="install the mesh first: kymamesh install --mesh-id ID --cluster-name NAME "
            "--ca DIR",
        )
    identity = meshidentity.live(cluster, NAMESPACE)
    m.name = identity.get("clusterName") or meshidentity.DEFAULT_CLUSTER_NAME
    m.mesh_id = identity.get("meshID")
    m.network = identity.get("network")
    m.trust_domain = identity.get("trustDomain") or "cluster.local"
    versions = sorted(d.version for d in istiods if d.version is not None)
    m.version = versions[0] if versions else None
    m.server = api_servers.get(m.name) or cluster.server
    m.ca_pem = cluster.api_server_ca()
    ca = meshca.live_ca(cluster, NAMESPACE)
    m.root_pem = ca.root_cert_pem if ca is not None else None
    m.reader_role = _reader_role(cluster)
    for secret in cluster.list("v1", "Secret", NAMESPACE, f"{MULTICLUSTER_LABEL}=true"):
        for peer in _clusters_of(secret):
            m.remote_secrets[peer] = secret
    m.gateways = network_gateways(cluster, m.network)


def network_gateways(cluster: Cluster, network: str | None) -> list[Obj]:
    """The east-west gateway Services of `network` in istio-system (label
    topology.istio.io/network, as Istio's gateway chart sets it with networkGateway)."""
    if not network:
        return []
    return [
        svc
        for svc in cluster.list("v1", "Service", NAMESPACE, meshidentity.NETWORK_LABEL)
        if (svc["metadata"].get("labels") or {}).get(meshidentity.NETWORK_LABEL) == network
    ]


def _reader_role(cluster: Cluster) -> str | None:
    found = cluster.list(
        "rbac.authorization.k8s.io/v1", "ClusterRole", label_selector=READER_ROLE_LABEL
    )
    roles = [r["metadata"]["name"] for r in found]
    wanted = f"istio-reader-clusterrole-{NAMESPACE}"
    if wanted in roles:
        return wanted
    return sorted(roles)[0] if roles else None


def _clusters_of(secret: Mapping[str, Any]) -> list[str]:
    """The clusters a remote secret gives access to: its keys (one kubeconfig each)."""
    return sorted(secret_values(secret))


# -- preflight -------------------------------------------------------------------------------


def preflight(members: Sequence[Member], api_servers: Mapping[str, str]) -> None:
    """Every refusal, on every cluster, before any write: all problems at once."""
    problems: list[str] = []
    names = [m.name for m in members]
    for m in members:
        if m.name == meshidentity.DEFAULT_CLUSTER_NAME:
            problems.append(
                f"{m.target.label} has no cluster name (istiod runs as "
                f"{meshidentity.DEFAULT_CLUSTER_NAME!r})"
            )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        problems.append(
            "cluster names must differ, but "
            + "; ".join(
                f"{n} is the name of "
                + " and ".join(m.target.label for m in members if m.name == n)
                for n in twice
            )
        )
    unknown = sorted(set(api_servers) - set(names))
    if unknown:
        problems.append(f"--api-server names {', '.join(unknown)}, not a cluster of this join")
    meshes = {m.mesh_id for m in members}
    if None in meshes or len(meshes) > 1:
        problems.append(
            "the mesh IDs must be equal and set: "
            + ", ".join(f"{m.name} has {m.mesh_id or 'none'}" for m in members)
        )
    domains = {m.trust_domain for m in members}
    if len(domains) > 1:
        problems.append(
            "the trust domains differ: " + ", ".join(f"{m.name} {m.trust_domain}" for m in members)
        )
    problems += _root_problems(members)
    problems += _version_problems(members)
    problems += _network_problems(members)
    for m in members:
        if m.reader_role is None:
            problems.append(
                f"{m.name} has no Istio reader ClusterRole (label {READER_ROLE_LABEL}; the "
                "istiod chart makes it unless global.enableReaderRBAC is false)"
            )
        for peer in members:
            if peer is m:
                continue
            secret = m.remote_secrets.get(peer.name)
            if secret is not None and not _ours(secret):
                problems.append(_foreign_secret_problem(m, peer.name, secret))
    problems += _reachability(members)
    if problems:
        raise PreconditionError(
            "mesh join refused, nothing was written: " + "; ".join(problems),
            hint=_preflight_hint(problems),
        )


def several_networks(members: Sequence[Member]) -> bool:
    return len({m.network for m in members}) > 1


def gateway_address(svc: Mapping[str, Any]) -> str | None:
    """The address a load balancer gave an east-west gateway Service (ip or hostname)."""
    for entry in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
        address = entry.get("ip") or entry.get("hostname")
        if address:
            return str(address)
    return None


def _gateway_port(svc: Mapping[str, Any]) -> bool:
    labels = svc["metadata"].get("labels") or {}
    port = int(labels.get(GATEWAY_PORT_LABEL) or EAST_WEST_PORT)
    return any(p.get("port") == port for p in (svc.get("spec") or {}).get("ports") or [])


def _network_problems(members: Sequence[Member]) -> list[str]:
    """On several networks: every cluster's network set, and an east-west gateway Service
    of its network (port 15443) with an address, which the peers' sidecars reach it at."""
    if not several_networks(members):
        return []
    unset = [m.name for m in members if not m.network]
    if unset:
        return [
            f"the clusters are on several networks, but {', '.join(unset)} "
            f"{'has' if len(unset) == 1 else 'have'} none (install --network NET)"
        ]
    problems = []
    for m in members:
        ready = [svc for svc in m.gateways if _gateway_port(svc) and gateway_address(svc)]
        if ready or not m.gateways or any(_our_gateway(m, svc) for svc in m.gateways):
            continue  # kymamesh installs the gateway, or waits for the address of its own
        problems.append(f"{m.name} (network {m.network}): {_no_address_why(m.gateways[0])}")
    return problems


def _no_address_why(svc: Obj | None, waited: float | None = None) -> str:
    """Why an east-west gateway Service gives the other networks no address."""
    if svc is None:
        return f"no Service {NAMESPACE}/{EAST_WEST_NAME}: the gateway chart made none"
    name = f"{NAMESPACE}/{svc['metadata']['name']}"
    kind = (svc.get("spec") or {}).get("type") or "ClusterIP"
    if not _gateway_port(svc):
        return f"its east-west gateway Service {name} has no port {EAST_WEST_PORT}"
    if kind != "LoadBalancer":
        return (
            f"its east-west gateway Service {name} is of type {kind}: no load balancer "
            "gives it an address the other networks reach"
        )
    within = f" within {waited:.0f}s" if waited is not None else " yet"
    return (
        f"its east-west gateway Service {name} has no address{within}: no load balancer has "
        "answered it (none in this cluster, or one still working; `kubectl -n "
        f"{NAMESPACE} describe service {svc['metadata']['name']}` shows its events)"
    )


def _root_problems(members: Sequence[Member]) -> list[str]:
    missing = [m.name for m in members if m.root_pem is None]
    if missing:
        return [
            f"{', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no plug-in CA "
            f"(Secret {NAMESPACE}/{meshca.SECRET}): the clusters would not trust each other's "
            "workloads"
        ]
    first = members[0]
    assert first.root_pem is not None
    differ = [m.name for m in members[1:] if not certs.same_root(first.root_pem, m.root_pem or b"")]
    if differ:
        return [
            f"the roots of trust differ: the cacerts of {', '.join(differ)} chain to another "
            f"root than {first.name}'s"
        ]
    return []


def _version_problems(members: Sequence[Member]) -> list[str]:
    known = [m for m in members if m.version is not None]
    minors = sorted({(m.version.major, m.version.minor) for m in known if m.version})
    if len(minors) > 1 and (minors[-1][0] != minors[0][0] or minors[-1][1] - minors[0][1] > 1):
        return [
            "the Istio versions are more than one minor apart: "
            + ", ".join(f"{m.name} {m.version}" for m in known)
        ]
    return []


def _reachability(members: Sequence[Member]) -> list[str]:
    def probe(m: Member) -> str | None:
        why = probe_api_server(m.server, m.ca_pem)
        return f"the API server of {m.name} at {m.server} does not answer: {why}" if why else None

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        return [p for p in pool.map(probe, members) if p]


def kubeconfig_problems(text: str) -> list[str]:
    """What istiod cannot use in a remote secret's kubeconfig: exec plugins, auth
    providers, token or certificate files (paths of another machine), basic auth."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return ["it is not YAML"]
    if not isinstance(doc, dict):
        return ["it is not a kubeconfig"]
    found: list[str] = []
    for user in doc.get("users") or []:
        spec = (user or {}).get("user") or {}
        found += [f"users.{k}" for k in _FORBIDDEN_AUTH if spec.get(k)]
        found += [f"users.{k} (a file)" for k in _FILE_KEYS if spec.get(k)]
    for entry in doc.get("clusters") or []:
        spec = (entry or {}).get("cluster") or {}
        found += [f"clusters.{k} (a file)" for k in _FILE_KEYS if spec.get(k)]
    return found


def _foreign_secret_problem(m: Member, peer: str, secret: Mapping[str, Any]) -> str:
    name = secret["metadata"]["name"]
    text = secret_values(secret).get(peer, b"").decode("utf-8", "replace")
    bad = kubeconfig_problems(text)
    why = (
        f"; its kubeconfig carries {', '.join(bad)}, which istiod refuses, so it never connects"
        if bad
        else ""
    )
    return (
        f"{m.name} already has a remote secret for {peer}, {NAMESPACE}/{name}, that kymamesh "
        f"did not make{why}"
    )


def _preflight_hint(problems: list[str]) -> str:
    hints = []
    text = " ".join(problems)
    if "mesh IDs" in text or "no cluster name" in text or "cluster names" in text:
        hints.append(
            "give each cluster the same --mesh-id and its own --cluster-name with `kymamesh "
            "install`"
        )
    if "plug-in CA" in text or "roots of trust" in text:
        hints.append("install every cluster with --ca DIR of one root (`kymamesh ca create`)")
    if "does not answer" in text:
        hints.append("pass --api-server NAME=URL with an address the peers reach")
    if "east-west gateway" in text:
        hints.append(
            "give your east-west gateway Service port 15443, type LoadBalancer and wait for "
            f"its address, or remove it: join then installs {EAST_WEST_NAME} itself"
        )
    if "did not make" in text:
        hints.append("delete the remote secrets named, then re-run")
    return "; ".join(hints) or "fix what is named, then re-run"


# -- the plan --------------------------------------------------------------------------------


@dataclass
class Write:
    """One object to write in one cluster (or a token to mint for one)."""

    member: Member
    target: str
    summary: str
    apply: Callable[[], None]
    diff: str = ""


@dataclass
class PairPlan:
    """What `watcher`'s istiod needs to read `reader`: the writes in each, in order."""

    reader: Member
    watcher: Member
    writes: list[Write] = field(default_factory=list)
    stale_tokens: list[str] = field(default_factory=list)  # anchors to delete after verify
    renews: bool = False  # replaces the token of a remote secret in place


def reader_name(watcher: str) -> str:
    return f"{READER_PREFIX}{watcher}"


def remote_secret_name(reader: str) -> str:
    return f"{REMOTE_SECRET_PREFIX}{reader}"


def _ours(obj: Mapping[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(MANAGED_BY_LABEL) == "kymamesh"


def _labels(peer: str) -> dict[str, str]:
    return {MANAGED_BY_LABEL: "kymamesh", READER_LABEL: peer}


def plan_pair(
    reader: Member, watcher: Member, lifetime: timedelta, now: datetime, rotate: bool = False
) -> PairPlan:
    """The objects for `watcher` to read `reader`; only what differs (rotate: a new token)."""
    plan = PairPlan(reader, watcher)
    r = reader.cluster
    sa_name = reader_name(watcher.name)
    sa = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": sa_name, "namespace": NAMESPACE, "labels": _labels(watcher.name)},
    }
    live_sa = r.get(Ref.of(sa))
    if live_sa is None or not _ours(live_sa):
        plan.writes.append(
            Write(reader, str(Ref.of(sa)), f"reader ServiceAccount for {watcher.name}",
                  lambda: _apply(r, sa), object_diff(live_sa, sa, str(Ref.of(sa))))
        )  # fmt: skip
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": sa_name, "labels": _labels(watcher.name)},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": reader.reader_role,
        },
        "subjects": [{"kind": "ServiceAccount", "name": sa_name, "namespace": NAMESPACE}],
    }
    live_binding = r.get(Ref.of(binding))
    if (
        live_binding is None
        or live_binding.get("roleRef") != binding["roleRef"]
        or live_binding.get("subjects") != binding["subjects"]
        or not _ours(live_binding)
    ):
        plan.writes.append(
            Write(
                reader,
                str(Ref.of(binding)),
                f"bound to ClusterRole {reader.reader_role} only",
                lambda: _replace_binding(r, binding, live_binding),
                object_diff(live_binding, binding, str(Ref.of(binding))),
            )
        )
    w = watcher.cluster
    ref = Ref("v1", "Secret", remote_secret_name(reader.name), NAMESPACE)
    live = watcher.remote_secrets.get(reader.name)
    live = live if live is not None and live["metadata"]["name"] == ref.name else w.get(ref)
    anchors = _anchors(r, watcher.name)
    keep = _current_anchor(live, reader, anchors, lifetime, now) if not rotate else None
    plan.stale_tokens = sorted(a for a in anchors if a != keep)
    if keep is not None:  # the token holds (the account or binding may be restored above)
        return plan
    anchor_name = f"{sa_name}-token-{secrets.token_hex(3)}"
    anchor = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": anchor_name,
            "namespace": NAMESPACE,
            "labels": _labels(watcher.name),
            "annotations": {
                "kymamesh.io/purpose": f"revokes the token {watcher.name}'s istiod reads "
                f"{reader.name} with, when deleted"
            },
        },
    }
    plan.stale_tokens = sorted(anchors)
    placeholder = _remote_secret(reader, "(a new token)", anchor_name, now + lifetime)
    why = "new" if live is None else ("rotated" if rotate else "renewed")
    plan.renews = live is not None
    plan.writes.append(
        Write(
            watcher,
            str(ref),
            f"remote secret for {reader.name} ({reader.server}), {why} token of "
            f"{reader.name}'s {NAMESPACE}/{sa_name}, valid {_days(lifetime)}",
            lambda: _mint_and_store(reader, watcher, anchor, lifetime),
            object_diff(live, placeholder, str(ref)),
        )
    )
    return plan


def _days(delta: timedelta) -> str:
    days = delta.total_seconds() / 86400
    return f"{days:g} days" if days >= 1 else f"{delta.total_seconds() / 3600:g} hours"


def _apply(cluster: Cluster, obj: Obj) -> None:
    cluster.apply(obj)


def _replace_binding(cluster: Cluster, binding: Obj, live: Obj | None) -> None:
    if live is not None and live.get("roleRef") != binding["roleRef"]:
        cluster.delete(Ref.of(binding))  # roleRef cannot change in place
    cluster.apply(binding)


def _anchors(cluster: Cluster, watcher: str) -> list[str]:
    """The Secrets in the read cluster that back tokens made for `watcher`."""
    return sorted(
        s["metadata"]["name"]
        for s in cluster.list("v1", "Secret", NAMESPACE, f"{READER_LABEL}={watcher}")
        if s["metadata"]["name"].startswith(f"{reader_name(watcher)}-token-")
    )


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a service account token (a JWT), unverified: {} when unreadable."""
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def stored_token(secret: Mapping[str, Any] | None, reader: str) -> tuple[str, str, bytes | None]:
    """(token, server, CA) of the kubeconfig a remote secret holds for `reader`."""
    text = secret_values(secret).get(reader, b"").decode("utf-8", "replace") if secret else ""
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return "", "", None
    if not isinstance(doc, dict):
        return "", "", None
    user = ((doc.get("users") or [{}])[0] or {}).get("user") or {}
    cluster = ((doc.get("clusters") or [{}])[0] or {}).get("cluster") or {}
    ca = cluster.get("certificate-authority-data")
    return (
        str(user.get("token") or ""),
        str(cluster.get("server") or ""),
        base64.b64decode(ca) if ca else None,
    )


def _current_anchor(
    live: Obj | None, reader: Member, anchors: list[str], lifetime: timedelta, now: datetime
) -> str | None:
    """The anchor of the token in the remote secret in place, when that secret is kymamesh's
    and still right: same API server and CA, its token's account and anchor in place, more
    than a third of the lifetime left. None when a new token is needed."""
    if live is None or not _ours(live):
        return None
    token, server, ca = stored_token(live, reader.name)
    if server != reader.server or (ca or None) != (reader.ca_pem or None):
        return None
    claims = token_claims(token)
    info = claims.get("kubernetes.io") or {}
    anchor = (info.get("secret") or {}).get("name")
    account = (info.get("serviceaccount") or {}).get("uid")
    if anchor not in anchors:
        return None
    r = reader.cluster
    live_anchor = r.get(Ref("v1", "Secret", anchor, NAMESPACE))
    watcher = (info.get("serviceaccount") or {}).get("name", "")
    live_sa = r.get(Ref("v1", "ServiceAccount", watcher, NAMESPACE))
    if live_anchor is None or live_sa is None:
        return None
    if (info.get("secret") or {}).get("uid") != live_anchor["metadata"].get("uid"):
        return None
    if account != live_sa["metadata"].get("uid"):
        return None
    expires = claims.get("exp")
    if not isinstance(expires, int | float):
        return None
    if datetime.fromtimestamp(expires, UTC) - now < lifetime * RENEW_FRACTION:
        return None
    return str(anchor)


def _kubeconfig(reader: Member, token: str) -> str:
    cluster: dict[str, Any] = {"server": reader.server}
    if reader.ca_pem:
        cluster["certificate-authority-data"] = base64.b64encode(reader.ca_pem).decode()
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": reader.name, "cluster": cluster}],
        "contexts": [
            {"name": reader.name, "context": {"cluster": reader.name, "user": reader.name}}
        ],
        "current-context": reader.name,
        "users": [{"name": reader.name, "user": {"token": token}}],
        "preferences": {},
    }
    text = yaml.safe_dump(doc, sort_keys=False)
    problems = kubeconfig_problems(text)
    if problems:  # never: kymamesh writes a server, CA data and a token only
        raise AssertionError(f"a remote secret's kubeconfig would carry {problems}")
    return text


def _remote_secret(reader: Member, token: str, anchor: str, expires: datetime) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": remote_secret_name(reader.name),
            "namespace": NAMESPACE,
            "labels": {MULTICLUSTER_LABEL: "true", MANAGED_BY_LABEL: "kymamesh"},
            "annotations": {
                CLUSTER_ANNOTATION: reader.name,
                TOKEN_SECRET_ANNOTATION: anchor,
                TOKEN_EXPIRES_ANNOTATION: f"{expires:%Y-%m-%dT%H:%M:%SZ}",
            },
        },
        "data": {
            reader.name: base64.b64encode(_kubeconfig(reader, token).encode()).decode(),
        },
    }


def _mint_and_store(reader: Member, watcher: Member, anchor: Obj, lifetime: timedelta) -> None:
    """In the reader cluster: the anchor Secret, then a token bound to it; in the watcher
    cluster: the remote secret with that token."""
    created = reader.cluster.apply(anchor)
    uid = str(created["metadata"]["uid"])
    token, expires = reader.cluster.request_token(
        NAMESPACE,
        reader_name(watcher.name),
        int(lifetime.total_seconds()),
        bound_secret=(anchor["metadata"]["name"], uid),
    )
    until = _parse_time(expires) or datetime.now(UTC) + lifetime
    watcher.cluster.apply(_remote_secret(reader, token, anchor["metadata"]["name"], until))


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


# -- join ------------------------------------------------------------------------------------


PREFLIGHT = "preflight: every cluster"
WRITES = "writes"
VERIFY = "verify: each istiod sees its peers"


def join(
    ctx: RunContext,
    found: Sequence[Target],
    api_server_flags: Sequence[str],
    lifetime: timedelta = DEFAULT_TOKEN_LIFETIME,
    verify_timeout: float | None = None,
    rotate: bool = False,
    source: ChartSource | None = None,
    gateway_wait: float = DEFAULT_GATEWAY_WAIT,
    ca: meshca.MeshCa | None = None,
) -> None:
    """`kymamesh mesh join`: preflight on every cluster, the east-west gateways where the
    networks differ, the writes, the verification. `rotate` (`kymamesh mesh rotate`): a new
    token for every pair, each peer synced on it, then the old tokens revoked. `ca` (`--ca
    DIR`): each cluster's plug-in CA of that root, written first
    (`kymamesh.identity.meshca`)."""
    api_servers = parse_api_servers(api_server_flags)
    if lifetime < timedelta(minutes=10):
        raise UsageError(
            f"--token-lifetime {lifetime} is too short: istiod must be able to use it",
            hint="give at least 10m (default 30 days); `kymamesh mesh rotate` renews tokens",
        )
    members = connect(ctx, found)
    with sessions(members):
        try:
            _join(
                ctx,
                members,
                api_servers,
                lifetime,
                verify_timeout,
                rotate,
                source or ChartSource(),
                gateway_wait,
                ca,
            )
        except KymameshError as exc:
            raise _partial(members, exc) from None


def _partial(members: Sequence[Member], exc: KymameshError) -> KymameshError:
    """A failure after a write to any cluster: exit 5 (re-run to converge)."""
    written = [m.name or m.target.label for m in members if m.ctx.writes_started]
    if isinstance(exc, GatewayAddressError):  # what the run installed is removed again
        return exc
    if not written or exc.exit_code not in (ExitCode.PRECONDITION, ExitCode.FAILURE):
        return exc
    return PartialFailureError(
        f"{exc.message} (after writing to {', '.join(written)})",
        hint=exc.hint or "re-run the same command; it converges",
    )


def _join(
    ctx: RunContext,
    members: list[Member],
    api_servers: Mapping[str, str],
    lifetime: timedelta,
    verify_timeout: float | None,
    rotate: bool = False,
    source: ChartSource | None = None,
    gateway_wait: float = DEFAULT_GATEWAY_WAIT,
    ca: meshca.MeshCa | None = None,
) -> None:
    source = source or ChartSource()
    phase = ctx.result.phase(PREFLIGHT)
    ctx.progress.phase(PREFLIGHT)
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        list(pool.map(lambda m: read_member(m, api_servers), members))
    members.sort(key=lambda m: m.name)  # the fixed order: locks, writes, output
    for m in members:
        phase.items.append(
            ItemResult(
                name=m.name,
                outcome=Outcome.UNCHANGED,
                summary=f"mesh {m.mesh_id}, network {m.network or 'unset'}, Istio {m.version}, "
                f"API server {m.server}",
            )
        )
    cas = _plan_cas(members, ca)
    preflight(members, api_servers)
    plan_gateways(members, source)
    now = datetime.now(UTC)
    plans = _plan_all(members, lifetime, now, rotate)
    refuse_unsafe_updates(plans)
    needed = any(p.writes for p in plans) or bool(gateways_pending(members))
    needed = needed or any(c.needed or c.change for _, c in cas)
    if needed and not ctx.options.dry_run:
        for m in members:  # one lock per cluster, in the fixed order
            m.ctx.take_lock()
        for m in members:  # plan again under the locks
            read_member(m, api_servers)
        cas = _plan_cas(members, ca)
        preflight(members, api_servers)
        plan_gateways(members, source)
        plans = _plan_all(members, lifetime, now, rotate)
        refuse_unsafe_updates(plans)
    for m, ca_plan in cas:  # the shared root first: istiod restarts before it reads peers
        meshca.carry_out(m.ctx, ca_plan)
    setup_gateways(ctx, members, gateway_wait)  # before any remote secret
    _write(ctx, members, plans)
    ctx.result.data = {
        "clusters": [m.describe() for m in members],
        "pairs": [
            {
                "reader": p.reader.name,
                "watcher": p.watcher.name,
                "remoteSecret": f"{p.watcher.name}:{NAMESPACE}/{remote_secret_name(p.reader.name)}",
                "serviceAccount": f"{p.reader.name}:{NAMESPACE}/{reader_name(p.watcher.name)}",
                "writes": len(p.writes),
            }
            for p in plans
        ],
    }
    if several_networks(members):
        ctx.result.data["eastWestGateways"] = {
            m.name: {
                "service": next((f"{NAMESPACE}/{s['metadata']['name']}" for s in m.gateways), None),
                "address": next((a for a in map(gateway_address, m.gateways) if a), None),
                "byKymamesh": m.gateway_release is not None or m.gateway_chart is not None,
            }
            for m in members
        }
    if ctx.options.dry_run:
        return
    seen = verify(ctx, members, verify_timeout or ctx.options.timeout)
    ctx.result.data["verified"] = seen
    _revoke_stale(ctx, plans)


def _plan_cas(
    members: Sequence[Member], ca: meshca.MeshCa | None
) -> list[tuple[Member, meshca.CaPlan]]:
    """`--ca DIR`: each cluster's plug-in CA (refusals first); preflight then checks the
    root each cluster's cacerts will chain to."""
    if ca is None:
        return []
    found = meshca.plan_clusters(ca, [(m.cluster, m.name) for m in members], NAMESPACE)
    for m, ca_plan in zip(members, found, strict=True):
        m.root_pem = ca_plan.root_pem
    return list(zip(members, found, strict=True))


def updates_wipe_registry(version: Version | None) -> bool:
    """Whether an istiod of `version` loses a peer's Services when its remote secret changes."""
    return version is not None and version < SECRET_UPDATE_SAFE_FROM


def refuse_unsafe_updates(plans: Sequence[PairPlan]) -> None:
    """A changed remote secret (a new token) in a cluster whose istiod would drop that peer's
    Services: refused before any write."""
    unsafe = sorted(
        {
            f"{p.watcher.name} (Istio {p.watcher.version})"
            for p in plans
            if p.renews and updates_wipe_registry(p.watcher.version)
        }
    )
    if unsafe:
        raise PreconditionError(
            f"a new token would change remote secrets in {', '.join(unsafe)}, whose istiod drops "
            "a peer's Services from its registry when the peer's remote secret changes (fixed "
            f"in Istio {SECRET_UPDATE_SAFE_FROM}); nothing was written",
            hint="upgrade those clusters first (kymamesh install --istio 1.31, or 1.30 for its "
            "newest patch), then rotate",
        )


def _plan_all(
    members: Sequence[Member], lifetime: timedelta, now: datetime, rotate: bool = False
) -> list[PairPlan]:
    pairs = [(r, w) for w in members for r in members if r is not w]
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        plans = list(pool.map(lambda rw: plan_pair(rw[0], rw[1], lifetime, now, rotate), pairs))
    if several_networks(members):
        for m in members:  # in the first plan where the cluster is the reader
            first = next(p for p in plans if p.reader is m)
            first.writes[:0] = _cross_network_gateway(m)
    return plans


def cross_network_gateway(m: Member) -> Obj:
    """The Gateway that lets the other networks' sidecars reach this cluster's services
    through its east-west gateway: port 15443, TLS passed through (AUTO_PASSTHROUGH)."""
    selector = {"istio": "eastwestgateway"}
    ready = [svc for svc in m.gateways if _gateway_port(svc) and gateway_address(svc)]
    chosen = ((ready[0].get("spec") or {}).get("selector") or {}) if ready else {}
    if chosen.get("istio"):
        selector = {"istio": str(chosen["istio"])}
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {
            "name": CROSS_NETWORK_GATEWAY,
            "namespace": NAMESPACE,
            "labels": {MANAGED_BY_LABEL: "kymamesh"},
        },
        "spec": {
            "selector": selector,
            "servers": [
                {
                    "port": {"number": EAST_WEST_PORT, "name": "tls", "protocol": "TLS"},
                    "tls": {"mode": "AUTO_PASSTHROUGH"},
                    "hosts": ["*.local"],
                }
            ],
        },
    }


def _cross_network_gateway(m: Member) -> list[Write]:
    wanted = cross_network_gateway(m)
    ref = Ref.of(wanted)
    live = m.cluster.get(ref)
    if live is not None and live.get("spec") == wanted["spec"] and _ours(live):
        return []
    cluster = m.cluster
    return [
        Write(
            m,
            str(ref),
            f"Gateway {CROSS_NETWORK_GATEWAY}: port {EAST_WEST_PORT} TLS AUTO_PASSTHROUGH for "
            f"*.local on the east-west gateway ({wanted['spec']['selector']})",
            lambda: _apply(cluster, wanted),
            object_diff(live, wanted, str(ref)),
        )
    ]


# -- the east-west gateways -------------------------------------------------------------------


GATEWAYS = "east-west gateways"


class GatewayAddressError(PreconditionError):
    """An east-west gateway got no address: join stopped before any remote secret, and the
    gateway releases the run installed were removed again (nothing of the run is left)."""


@dataclass(frozen=True)
class ChartSource:
    """Where the gateway chart comes from: local chart folders (`--charts-dir`, one per
    Istio release), else the chart sources (`--repo`, default the release catalog's)."""

    charts_dirs: tuple[Path, ...] = ()
    repos: tuple[str, ...] = ()
    plain_http: bool = False


def _our_gateway(m: Member, svc: Mapping[str, Any]) -> bool:
    """Whether an east-west gateway Service is of the Helm release kymamesh made."""
    annotations = (svc.get("metadata") or {}).get("annotations") or {}
    return m.gateway_release is not None and annotations.get(HELM_RELEASE_ANNOTATION) == (
        EAST_WEST_NAME
    )


def read_gateway_release(m: Member) -> None:
    """The Helm release istio-eastwestgateway, when kymamesh made it (reads only)."""
    deployed = m.ctx.helm.deployed(EAST_WEST_NAME, NAMESPACE)
    m.gateway_release = deployed if deployed is not None and marked_by_kymamesh(deployed) else None


def east_west_values(network: str) -> dict[str, Any]:
    """The values of Istio's gateway chart for the east-west gateway of `network`: with
    networkGateway set, the chart labels the Service and the Pods with the network, gives
    the Service the ports 15021, 15443, 15012 and 15017 and the proxy the network's view."""
    return {"name": EAST_WEST_NAME, "networkGateway": network, "labels": dict(EAST_WEST_SELECTOR)}


def _istio_release_of(m: Member) -> Version:
    """The Istio release whose gateway chart the cluster's east-west gateway is made of: the
    chart of its ingress gateway release, else its istiod's version."""
    ingress = m.ctx.helm.deployed("istio-ingressgateway", NAMESPACE)
    if ingress is not None and ingress.chart == "gateway":
        return ingress.chart_version
    assert m.version is not None  # read_member found an istiod
    return m.version


def gateway_chart(m: Member, source: ChartSource) -> LoadedChart:
    """The gateway chart of the cluster's Istio release (reads only)."""
    from kymamesh.errors import ChartSourceError
    from kymamesh.istio.release import catalog

    version = _istio_release_of(m)
    helm = m.ctx.helm
    if source.charts_dirs:
        found = [helm.load_local(d, "gateway") for d in source.charts_dirs]
        chart = next((c for c in found if c.version == version), None)
        if chart is None:
            raise ChartSourceError(
                f"{m.name} runs Istio {version}, but the gateway charts of --charts-dir are "
                + ", ".join(f"{c.version} ({c.source})" for c in found),
                hint=f"add --charts-dir with Istio {version}'s charts (`kymamesh charts pull "
                f"--istio {version} --dest DIR`)",
            )
        return chart
    failures = []
    for repo in source.repos or catalog().chart_sources:
        try:
            return helm.load_remote("gateway", repo, version, source.plain_http)
        except ChartSourceError as exc:
            failures.append(exc.message)
    raise ChartSourceError(
        f"{m.name}: no chart source served the gateway chart {version}: " + "; ".join(failures),
        hint="pass --repo with a mirror, or `kymamesh charts pull --istio "
        f"{version} --dest DIR` elsewhere and --charts-dir DIR",
    )


def _rendered_service(m: Member, chart: LoadedChart) -> Obj:
    """The east-west gateway Service the chart makes, rendered (reads only); refused when
    it would not be one: the four ports and the network label."""
    assert m.network is not None
    objs = m.ctx.helm.template(EAST_WEST_NAME, chart, east_west_values(m.network), NAMESPACE)
    svc = next((o for o in objs if o.get("kind") == "Service"), None)
    ports = {p.get("port") for p in ((svc or {}).get("spec") or {}).get("ports") or []}
    labels = ((svc or {}).get("metadata") or {}).get("labels") or {}
    missing = sorted(set(EAST_WEST_PORTS.values()) - ports)
    if svc is None or missing or labels.get(meshidentity.NETWORK_LABEL) != m.network:
        what = (
            "no Service"
            if svc is None
            else f"a Service without port {', '.join(map(str, missing))}"
            if missing
            else f"a Service without label {meshidentity.NETWORK_LABEL}={m.network}"
        )
        raise PreconditionError(
            f"{m.name}: the gateway chart {chart.source} ({chart.version}) makes {what} with "
            f"networkGateway={m.network}; it is no east-west gateway; nothing was written",
            hint="use Istio's gateway chart of the cluster's release (--charts-dir, --repo)",
        )
    return svc


def plan_gateways(members: Sequence[Member], source: ChartSource) -> None:
    """On several networks: each cluster without an east-west gateway Service of its network
    gets Istio's gateway chart (its release's) to install; loaded and rendered here, before
    any write."""
    if not several_networks(members):
        return
    for m in members:
        read_gateway_release(m)
        m.gateway_chart = None
        if not m.gateways:
            m.gateway_chart = gateway_chart(m, source)
            _rendered_service(m, m.gateway_chart)


def gateways_pending(members: Sequence[Member]) -> list[Member]:
    """The clusters whose east-west gateway is to be installed or has no address yet."""
    if not several_networks(members):
        return []
    return [
        m
        for m in members
        if m.gateway_chart is not None
        or not any(_gateway_port(svc) and gateway_address(svc) for svc in m.gateways)
    ]


def setup_gateways(ctx: RunContext, members: Sequence[Member], wait: float) -> None:
    """Install the east-west gateways planned, side by side, then wait (at most `wait`
    seconds) until each one's Service has an address. When one gets none, the releases this
    run installed are removed again and join stops before any remote secret is written."""
    pending = gateways_pending(members)
    if not pending:
        return
    phase = ctx.result.phase(GATEWAYS)
    ctx.progress.phase(GATEWAYS)
    items = {}
    for m in pending:
        chart = m.gateway_chart
        item = ItemResult(name=m.name, outcome=Outcome.UNCHANGED)
        if chart is not None:
            item.changes.append(
                f"Helm release {NAMESPACE}/{EAST_WEST_NAME}: gateway chart {chart.version} "
                f"({chart.source}), name={EAST_WEST_NAME}, networkGateway={m.network}, "
                f"labels.istio={EAST_WEST_SELECTOR['istio']}"
            )
            svc = _rendered_service(m, chart)
            item.diff = object_diff(None, svc, str(Ref.of(svc)))
        item.summary = (
            f"would install {EAST_WEST_NAME} and wait for its address"
            if chart is not None
            else "would wait for the address of its east-west gateway"
        )
        if ctx.options.dry_run:
            item.outcome = Outcome.WOULD_CHANGE if chart is not None else Outcome.UNCHANGED
        phase.items.append(item)
        items[m.name] = item
    if ctx.options.dry_run:
        return
    installed: list[Member] = []  # the releases this run made (an upgrade is not undone)

    def install(m: Member) -> None:
        assert m.gateway_chart is not None and m.network is not None
        fresh = m.ctx.helm.deployed(EAST_WEST_NAME, NAMESPACE) is None
        m.ctx.before_write()
        try:
            m.ctx.helm.install_or_upgrade(
                EAST_WEST_NAME,
                m.gateway_chart,
                east_west_values(m.network),
                NAMESPACE,
                ctx.options.timeout,
                description=INSTALL_DESCRIPTION,
            )
        finally:
            if fresh:
                installed.append(m)  # (a failed install may have left part of it)
        items[m.name].outcome = Outcome.CHANGED
        read_gateway_release(m)

    try:
        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            list(pool.map(install, [m for m in pending if m.gateway_chart is not None]))
        missing = _wait_addresses(pending, wait)
    except KymameshError:
        _remove_gateways(installed)
        raise
    for m in pending:
        item = items[m.name]
        address = gateway_address(m.gateways[0]) if m.gateways else None
        if address is not None:
            done = "installed" if m.gateway_chart is not None else "in place"
            item.summary = f"{EAST_WEST_NAME} {done}, address {address}"
        else:
            item.outcome = Outcome.FAILED
            item.error = missing[m.name]
            item.summary = missing[m.name]
    if not missing:
        return
    _remove_gateways(installed)
    removed = sorted(m.name for m in installed)
    raise GatewayAddressError(
        "mesh join stopped before writing any remote secret: "
        + "; ".join(
            f"{name} (network {net}): {why}" for name, (net, why) in _named(pending, missing)
        )
        + (
            f"; the east-west gateway this run installed in {', '.join(removed)} was removed again"
            if removed
            else ""
        ),
        hint="give the clusters a load balancer for Services of type LoadBalancer (or your "
        f"own east-west gateway Service labelled {meshidentity.NETWORK_LABEL}=NET with an "
        "address), then re-run; --gateway-wait SECONDS waits longer for a slow one",
    )


def _named(
    pending: Sequence[Member], missing: Mapping[str, str]
) -> list[tuple[str, tuple[str, str]]]:
    return [(m.name, (str(m.network), missing[m.name])) for m in pending if m.name in missing]


def _wait_addresses(pending: Sequence[Member], wait: float) -> dict[str, str]:
    """Until each cluster's east-west gateway Service has an address: {cluster: why not}
    for those that got none within `wait` seconds."""

    def one(m: Member) -> tuple[str, str | None]:
        deadline = time.monotonic() + wait
        while True:
            m.gateways = network_gateways(m.cluster, m.network)
            ready = [s for s in m.gateways if _gateway_port(s) and gateway_address(s)]
            if ready:
                m.gateways = ready + [s for s in m.gateways if s not in ready]
                return m.name, None
            if time.monotonic() > deadline:
                named = [s for s in m.gateways if s["metadata"]["name"] == EAST_WEST_NAME]
                shown = (named or m.gateways)[0] if named or m.gateways else None
                return m.name, _no_address_why(shown, wait)
            time.sleep(1.0)

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        return {name: why for name, why in pool.map(one, pending) if why is not None}


def _remove_gateways(installed: Sequence[Member]) -> None:
    """Undo: uninstall the gateway releases this run installed, side by side."""

    def remove(m: Member) -> None:
        m.ctx.helm.uninstall(EAST_WEST_NAME, NAMESPACE, m.ctx.options.timeout)
        m.gateways = network_gateways(m.cluster, m.network)

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        list(pool.map(remove, installed))


def _write(ctx: RunContext, members: Sequence[Member], plans: Sequence[PairPlan]) -> None:
    phase = ctx.result.phase(WRITES)
    ctx.progress.phase(WRITES)
    for plan in plans:
        label = f"{plan.watcher.name} reads {plan.reader.name}"
        item = ItemResult(name=label, outcome=Outcome.UNCHANGED)
        phase.items.append(item)
        with ctx.progress.item(label) as tracker:
            if not plan.writes:
                item.summary = "in place"
            for w in plan.writes:
                item.changes.append(f"{w.member.name}: {w.target}: {w.summary}")
                if w.diff:
                    item.diff = (item.diff + "\n" + w.diff).strip()
                if ctx.options.dry_run:
                    item.outcome = Outcome.WOULD_CHANGE
                    continue
                try:
                    w.apply()
                except KymameshError as exc:
                    item.outcome = Outcome.FAILED
                    item.error = exc.message
                    tracker.done(item.outcome, exc.message)
                    raise
                item.outcome = Outcome.CHANGED
            if plan.writes:
                item.summary = "; ".join(f"{w.member.name}: {w.summary}" for w in plan.writes)
            tracker.done(item.outcome, item.summary)
        item.duration_s = tracker.duration_s


def _revoke_stale(ctx: RunContext, plans: Sequence[PairPlan]) -> None:
    """After the peers are synced on the new tokens: delete the anchors of the old ones,
    which revokes them."""
    for plan in plans:
        keep = _anchor_in_use(plan)
        for name in plan.stale_tokens:
            if name == keep:
                continue
            plan.reader.ctx.before_write()
            plan.reader.cluster.delete(Ref("v1", "Secret", name, NAMESPACE))
            ctx.result.notes.append(
                f"{plan.reader.name}: deleted {NAMESPACE}/{name}, which revokes the token it "
                f"backed ({plan.watcher.name} reads {plan.reader.name} with a newer one)"
            )


def _anchor_in_use(plan: PairPlan) -> str | None:
    live = plan.watcher.cluster.get(
        Ref("v1", "Secret", remote_secret_name(plan.reader.name), NAMESPACE)
    )
    token, _, _ = stored_token(live, plan.reader.name)
    anchor = ((token_claims(token).get("kubernetes.io") or {}).get("secret") or {}).get("name")
    return str(anchor) if anchor else None


# -- verify ----------------------------------------------------------------------------------


def istiod_view(member: Member, path: str) -> list[Any]:
    """`path` of istiod's debug views, each istiod Pod's answer (JSON)."""
    answers = member.cluster.istiod_debug(path, namespace=NAMESPACE)
    out = []
    for pod, body in sorted(answers.items()):
        try:
            out.append(json.loads(body))
        except ValueError:
            raise IstiodUnreachableError(
                f"{member.name}: istiod Pod {pod} answered {path} with no JSON",
                hint="check istiod's log",
            ) from None
    return out


def synced_peers(member: Member) -> dict[str, str]:
    """{cluster: sync status} as every istiod Pod of `member` reports it (the worst)."""
    order = {"synced": 0, "syncing": 1, "timeout": 2, "closed": 3}
    seen: dict[str, str] = {}
    pods = istiod_view(member, "/debug/clusterz")
    for pod in pods:
        for entry in pod if isinstance(pod, list) else []:
            cid, state = str(entry.get("id")), str(entry.get("syncStatus"))
            if cid not in seen or order.get(state, 9) > order.get(seen[cid], 9):
                seen[cid] = state
    for cid in list(seen):  # a cluster one Pod lacks is not synced there
        if any(all(str(e.get("id")) != cid for e in pod) for pod in pods if isinstance(pod, list)):
            seen[cid] = "missing"
    return seen


def services_from(member: Member, peer: str) -> list[str]:
    """The Services `member`'s istiod knows with addresses in cluster `peer`."""
    found: set[str] = set()
    for pod in istiod_view(member, "/debug/registryz"):
        for svc in pod if isinstance(pod, list) else []:
            vips = ((svc.get("clusterVIPs") or {}).get("Addresses") or {}) if svc else {}
            if peer in vips:
                found.add(str(svc.get("hostname")))
    return sorted(found)


def _unseen_gateways(m: Member, peers: Sequence[str], gateways: Mapping[str, str]) -> list[str]:
    """The peers whose east-west gateway (its address) `m`'s istiod does not list yet."""
    if not gateways:
        return []
    known: set[tuple[str, str]] = set()
    for pod in istiod_view(m, "/debug/networkz"):
        for gw in pod if isinstance(pod, list) else []:
            known.add((str(gw.get("Cluster")), str(gw.get("Addr"))))
    return [f"{p} ({gateways[p]})" for p in peers if (p, gateways[p]) not in known]


def verify(ctx: RunContext, members: Sequence[Member], timeout: float) -> dict[str, Any]:
    """Wait until every istiod reports each peer synced and knows Services of each peer."""
    phase = ctx.result.phase(VERIFY)
    ctx.progress.phase(VERIFY)
    out: dict[str, Any] = {}

    gateways = (
        {
            p.name: next(
                (a for a in (gateway_address(svc) for svc in p.gateways) if a is not None), ""
            )
            for p in members
        }
        if several_networks(members)
        else {}
    )

    def check(m: Member) -> tuple[Member, dict[str, Any], str | None]:
        peers = [p.name for p in members if p is not m]
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            try:
                seen = synced_peers(m)
                waiting = [p for p in peers if seen.get(p) != "synced"]
                services = {p: services_from(m, p) for p in peers} if not waiting else {}
                empty = [p for p in peers if not services.get(p)]
                unseen = _unseen_gateways(m, peers, gateways) if not waiting else []
                if not waiting and not empty and unseen:
                    last = "no east-west gateway of " + ", ".join(unseen) + " in its networkz yet"
                elif not waiting and not empty:
                    return (
                        m,
                        {"synced": peers, "services": {p: len(s) for p, s in services.items()}},
                        None,
                    )
                else:
                    last = (
                        ", ".join(f"{p} {seen.get(p, 'not listed')}" for p in waiting)
                        if waiting
                        else "no Service of " + ", ".join(empty) + " in its registry yet"
                    )
            except IstiodUnreachableError as exc:
                last = exc.message
            if time.monotonic() > deadline:
                return m, {"synced": [p for p in peers if p not in last]}, last
            time.sleep(1.0)

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        results = list(pool.map(check, members))
    failed = []
    for m, seen, why in results:
        out[m.name] = seen
        item = ItemResult(name=m.name, outcome=Outcome.UNCHANGED)
        if why is None:
            counts = ", ".join(f"{p}: {n} Services" for p, n in seen["services"].items())
            item.summary = f"istiod sees {', '.join(seen['synced'])} synced ({counts})"
        else:
            item.outcome = Outcome.FAILED
            item.error = why
            failed.append(f"{m.name}: {why}")
        phase.items.append(item)
    if failed:
        raise WaitTimeoutError(
            f"after {timeout:.0f}s, not every istiod sees its peers: " + "; ".join(failed),
            hint="check each istiod's log for the remote cluster (`kubectl -n istio-system logs "
            "deploy/istiod | grep -i remote`) and that each API server is reachable from the "
            "others (--api-server NAME=URL); a re-run converges",
        )
    return out


# -- who a cluster is joined with ------------------------------------------------------------


def joined_peers(cluster: Cluster) -> list[str]:
    """The clusters this one is joined with by kymamesh: the remote secrets it wrote here
    and the reader accounts it made here for peers (reads only)."""
    peers: set[str] = set()
    for secret in cluster.list("v1", "Secret", NAMESPACE, f"{MULTICLUSTER_LABEL}=true"):
        if _ours(secret):
            peers.update(_clusters_of(secret))
    for account in cluster.list("v1", "ServiceAccount", NAMESPACE, READER_LABEL):
        if _ours(account):
            peer = (account["metadata"].get("labels") or {}).get(READER_LABEL)
            if peer:
                peers.add(str(peer))
    return sorted(peers)


def refuse_if_joined(cluster: Cluster, what: str) -> None:
    """`uninstall` on a cluster that is part of a mesh: refused, naming the peers."""
    peers = joined_peers(cluster)
    if peers:
        raise PreconditionError(
            f"{what}: this cluster is joined in a mesh with {', '.join(peers)}; their istiods "
            "watch it, and it watches theirs",
            hint="take it out first: kymamesh mesh leave --kubeconfig THIS "
            + " ".join(f"--kubeconfig {p.upper()}" for p in peers)
            + " (the first one leaves)",
        )


def peer_entries(cluster: Cluster, now: datetime | None = None) -> list[dict[str, Any]]:
    """What this cluster's remote secrets say of each peer: its server, when its token
    expires, whether kymamesh wrote it (reads only; never the token)."""
    now = now or datetime.now(UTC)
    out = []
    for secret in cluster.list("v1", "Secret", NAMESPACE, f"{MULTICLUSTER_LABEL}=true"):
        for peer in _clusters_of(secret):
            token, server, _ = stored_token(secret, peer)
            expires = token_claims(token).get("exp")
            when = (
                datetime.fromtimestamp(expires, UTC) if isinstance(expires, int | float) else None
            )
            out.append(
                {
                    "cluster": peer,
                    "secret": f"{NAMESPACE}/{secret['metadata']['name']}",
                    "server": server,
                    "byKymamesh": _ours(secret),
                    "tokenExpires": f"{when:%Y-%m-%dT%H:%M:%SZ}" if when else None,
                    "tokenExpired": bool(when and when <= now),
                }
            )
    return sorted(out, key=lambda e: str(e["cluster"]))


# -- leave -----------------------------------------------------------------------------------


LEAVE = "leave: what join wrote, on both sides"


def leave(ctx: RunContext, found: Sequence[Target], verify_timeout: float | None = None) -> None:
    """`kymamesh mesh leave`: the first cluster leaves; the others are its peers, each of
    which must be given (their remote secrets for it are removed too)."""
    members = connect(ctx, found)
    with sessions(members):
        try:
            _leave(ctx, members, verify_timeout or ctx.options.timeout)
        except KymameshError as exc:
            raise _partial(members, exc) from None


def _leave(ctx: RunContext, members: list[Member], timeout: float) -> None:
    phase = ctx.result.phase(PREFLIGHT)
    ctx.progress.phase(PREFLIGHT)
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        list(pool.map(lambda m: read_member(m, {}), members))
    leaving, others = members[0], members[1:]
    for m in members:
        phase.items.append(ItemResult(name=m.name, outcome=Outcome.UNCHANGED,
                                      summary="leaves" if m is leaving else "stays"))  # fmt: skip
    peers = joined_peers(leaving.cluster)
    given = {m.name for m in others}
    missing = sorted(set(peers) - given)
    if missing:
        raise PreconditionError(
            f"{leaving.name} is joined with {', '.join(missing)} too, which were not given: "
            "their remote secrets for it would be left behind; nothing was written",
            hint="name every peer after the cluster that leaves: kymamesh mesh leave "
            "--kubeconfig LEAVING --kubeconfig PEER ...",
        )
    writes = _leave_writes(leaving, others)
    if writes and not ctx.options.dry_run:
        for m in sorted(members, key=lambda m: m.name):  # the fixed order
            m.ctx.take_lock()
        writes = _leave_writes(leaving, others)
    step = ctx.result.phase(LEAVE)
    ctx.progress.phase(LEAVE)
    for m in sorted(members, key=lambda m: m.name):
        mine = [w for w in writes if w.member is m]
        item = ItemResult(name=m.name, outcome=Outcome.UNCHANGED, summary="nothing of the join")
        step.items.append(item)
        with ctx.progress.item(m.name) as tracker:
            for w in mine:
                item.changes.append(f"{w.target}: {w.summary}")
                item.diff = (item.diff + "\n" + w.diff).strip()
                if ctx.options.dry_run:
                    item.outcome = Outcome.WOULD_CHANGE
                    continue
                w.apply()
                item.outcome = Outcome.CHANGED
            if mine:
                item.summary = (
                    f"deleted {len(mine)} objects"
                    if not ctx.options.dry_run
                    else (f"would delete {len(mine)} objects")
                )
            tracker.done(item.outcome, item.summary)
    ctx.result.data = {"left": leaving.name, "peers": sorted(given)}
    if ctx.options.dry_run or not writes:
        return
    _wait_forgotten(ctx, leaving, others, timeout)


def _leave_writes(leaving: Member, others: Sequence[Member]) -> list[Write]:
    writes: list[Write] = []
    for peer in others:
        writes += _pair_objects(reader=leaving, watcher=peer)
        writes += _pair_objects(reader=peer, watcher=leaving)
    for m in [leaving, *others]:  # the cross-network Gateway, once nothing else needs it
        rest = set(joined_peers(m.cluster)) - (
            {p.name for p in others} if m is leaving else {leaving.name}
        )
        ref = Ref("networking.istio.io/v1", "Gateway", CROSS_NETWORK_GATEWAY, NAMESPACE)
        live = m.cluster.get(ref) if m.cluster.serves(ref.api_version, ref.kind) else None
        if not rest and live is not None and _ours(live):
            writes.append(
                Write(m, str(ref), "deleted (no peer left on another network)",
                      _deleter(m.cluster, ref), f"--- {ref}\n+++ (deleted)")
            )  # fmt: skip
    return writes


def _pair_objects(reader: Member, watcher: Member) -> list[Write]:
    """The deletes that undo `watcher` reading `reader`: kymamesh's objects only."""
    found: list[tuple[Member, Obj]] = []
    secret = watcher.cluster.get(Ref("v1", "Secret", remote_secret_name(reader.name), NAMESPACE))
    if secret is not None and _ours(secret):
        found.append((watcher, secret))
    name = reader_name(watcher.name)
    for ref in (
        Ref("v1", "ServiceAccount", name, NAMESPACE),
        Ref("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", name),
    ):
        live = reader.cluster.get(ref)
        if live is not None and _ours(live):
            found.append((reader, live))
    for anchor in _anchors(reader.cluster, watcher.name):
        live = reader.cluster.get(Ref("v1", "Secret", anchor, NAMESPACE))
        if live is not None and _ours(live):
            found.append((reader, live))
    writes = []
    for member, obj in found:
        ref = Ref.of(obj)
        writes.append(
            Write(
                member,
                str(ref),
                f"deleted ({watcher.name} no longer reads {reader.name})",
                _deleter(member.cluster, ref),
                f"--- {ref}\n+++ (deleted)",
            )
        )
    return writes


def _deleter(cluster: Cluster, ref: Ref) -> Callable[[], None]:
    def delete() -> None:
        cluster.delete(ref)

    return delete


def _wait_forgotten(
    ctx: RunContext, leaving: Member, others: Sequence[Member], timeout: float
) -> None:
    """Until no istiod lists the other side any more."""
    phase = ctx.result.phase(VERIFY)
    ctx.progress.phase(VERIFY)
    deadline = time.monotonic() + timeout
    for m in [*others, leaving]:
        gone = {leaving.name} if m is not leaving else {p.name for p in others}
        while True:
            try:
                listed = set(synced_peers(m)) & gone
            except IstiodUnreachableError as exc:
                listed, why = gone, exc.message
            else:
                why = f"istiod still lists {', '.join(sorted(listed))}"
            if not listed:
                phase.items.append(
                    ItemResult(
                        name=m.name,
                        outcome=Outcome.UNCHANGED,
                        summary=f"istiod no longer lists {', '.join(sorted(gone))}",
                    )
                )
                break
            if time.monotonic() > deadline:
                raise WaitTimeoutError(
                    f"{m.name}: {why} after {timeout:.0f}s",
                    hint="check istiod's log; a re-run converges",
                )
            time.sleep(1.0)


# -- mesh status -----------------------------------------------------------------------------


def mesh_status(ctx: RunContext, found: Sequence[Target]) -> bool:
    """`kymamesh mesh status`: each cluster's peers, their sync state in its istiod, when
    each token expires, and what is wrong. Reads only. True when healthy."""
    members = connect(ctx, found)
    with sessions(members):
        return _mesh_status(ctx, members)


def _mesh_status(ctx: RunContext, members: list[Member]) -> bool:
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        list(pool.map(lambda m: read_member(m, {}), members))
    members.sort(key=lambda m: m.name)
    by_name = {m.name: m for m in members}
    now = datetime.now(UTC)
    problems: list[str] = []
    clusters = []
    for m in members:
        entries = peer_entries(m.cluster, now)
        try:
            sync: dict[str, str] | None = synced_peers(m)
        except IstiodUnreachableError as exc:
            sync = None
            problems.append(f"{m.name}: istiod's /debug/clusterz cannot be read: {exc.message}")
        for e in entries:
            peer = str(e["cluster"])
            e["syncStatus"] = (sync or {}).get(peer, "not listed") if sync is not None else None
            if sync is not None and e["syncStatus"] != "synced":
                problems.append(f"{m.name}: istiod reports {peer} {e['syncStatus']}")
            if e["tokenExpired"]:
                problems.append(
                    f"{m.name}: the token it reads {peer} with expired on {e['tokenExpires']}"
                )
            other = by_name.get(peer)
            if other is not None and e["byKymamesh"]:
                token, _, _ = stored_token(m.remote_secrets.get(peer), peer)
                if not _token_backed(other, token):
                    e["tokenRevoked"] = True
                    problems.append(
                        f"{m.name}: the token it reads {peer} with is no longer backed in "
                        f"{peer} (its reader account or token Secret is gone)"
                    )
        listed = {str(e["cluster"]) for e in entries}
        for other in members:
            if other is not m and other.name not in listed:
                problems.append(f"{m.name} has no remote secret for {other.name}: not joined")
        clusters.append({**m.describe(), "peers": entries})
    ctx.result.data = {"clusters": clusters, "problems": problems, "healthy": not problems}
    for c in clusters:
        peers = ", ".join(
            f"{e['cluster']} {e.get('syncStatus') or 'unknown'} (token until "
            f"{e['tokenExpires'] or 'unknown'})"
            for e in c["peers"]
        )
        ctx.result.notes.append(
            f"{c['name']}: mesh {c['meshID']}, network {c['network'] or 'unset'}, peers: "
            f"{peers or 'none'}"
        )
    ctx.result.notes.extend(f"problem: {p}" for p in problems)
    return not problems


def _token_backed(reader: Member, token: str) -> bool:
    """Whether the reader cluster still has the account and the Secret `token` is bound to."""
    info = token_claims(token).get("kubernetes.io") or {}
    account = info.get("serviceaccount") or {}
    anchor = info.get("secret") or {}
    r = reader.cluster
    live_sa = r.get(Ref("v1", "ServiceAccount", str(account.get("name", "")), NAMESPACE))
    if live_sa is None or live_sa["metadata"].get("uid") != account.get("uid"):
        return False
    if anchor:
        live = r.get(Ref("v1", "Secret", str(anchor.get("name", "")), NAMESPACE))
        if live is None or live["metadata"].get("uid") != anchor.get("uid"):
            return False
    return True
