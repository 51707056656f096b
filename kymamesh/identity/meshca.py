"""Shared trust: a mesh's root CA, and each cluster's plug-in CA made of it.

`kymamesh ca create --out DIR` makes a root CA (`root-cert.pem`, `root-key.pem`); its
key stays in DIR, with the user, and never reaches a cluster. `install --ca DIR` then
writes this cluster's own intermediate CA, issued by that root, as Secret
`istio-system/cacerts` (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`)
before istiod starts, so that istiod signs its workloads' certificates with it and every
cluster of the mesh trusts the others' workloads. A DIR that holds an intermediate of the
user's own (those four files) is taken as it is, once checked (chain, expiry, key).

A re-run keeps the intermediate in place while it chains to the same root and is not
about to expire (istiod takes a new intermediate of the same root from its volume by
itself). An istiod that already runs on another CA (its self-signed one, Secret
`istio-ca-secret`, or another root) picks a new root only when it starts, and every
workload's certificate and every sidecar's trust change with it: that is refused with the
plan this cluster needs (istiod Deployments, workloads and gateways, batches) unless
`--restart-proxies` asks for the change of root (`RootChange`): the new `cacerts`, marked
`kymamesh.io/root-change` while the change is under way; every istiod Deployment
restarted; istiod publishing the new root (ConfigMap `istio-ca-root-cert`); then every
injected workload and gateway whose Pods were made before that, restarted in batches by
`kymamesh.workloads.restarts`; the mark removed last, so that a run stopped half-way goes on where
it stopped when run again.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kymamesh import MANAGED_BY_LABEL
from kymamesh.adapters.cluster import Cluster, Obj, Ref
from kymamesh.context import RunContext
from kymamesh.diffs import object_diff, secret_values
from kymamesh.errors import PreconditionError, UsageError, WaitTimeoutError
from kymamesh.identity import certs
from kymamesh.istio import sidecars
from kymamesh.istio.controlplane import TEMPLATES_ANNOTATION, ControlPlane, find_control_planes
from kymamesh.output import ItemResult, Outcome
from kymamesh.waits import wait_until
from kymamesh.workloads import restarts, rollouts

SECRET = "cacerts"
SELF_SIGNED_SECRET = "istio-ca-secret"  # istiod's own CA, made when no cacerts is there
RENEW_BEFORE_DAYS = 30
PHASE = "shared trust: the plug-in CA"
PHASE_ISTIOD = "shared trust: istiod on the new root"
PHASE_WORKLOADS = "shared trust: workloads on the new root"
# on Secret cacerts while a change of root is under way: when the new CA was written
ROOT_CHANGE_ANNOTATION = "kymamesh.io/root-change-since"
ROOT_CONFIGMAP = "istio-ca-root-cert"  # istiod's root, written into every namespace
ROOT_CONFIGMAP_KEY = "root-cert.pem"
NEW_ROOT_REASON = "its certificate and trust are of the previous root"


def secret_ref(namespace: str) -> Ref:
    return Ref("v1", "Secret", SECRET, namespace)


# -- ca create -------------------------------------------------------------------------------


def create_root(out: Path, name: str, validity_days: int) -> dict[str, Any]:
    """Write a new root CA into `out` (made if missing); refuse to overwrite one. The key
    file is readable by its owner only. Returns the public facts (never the key)."""
    cert_file, key_file = out / certs.ROOT_CERT, out / certs.ROOT_KEY
    existing = [str(f) for f in (cert_file, key_file) if f.exists()]
    if existing:
        raise UsageError(
            f"{', '.join(existing)} already exist: a mesh's root CA is never overwritten",
            hint="give --out an empty folder; keep the existing root if clusters use it",
        )
    if validity_days < 2:
        raise UsageError(
            f"--days {validity_days}: a root CA must be valid for more than a day",
            hint=f"leave --days out for {certs.ROOT_VALIDITY_DAYS} days",
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        cert_pem, key_pem = certs.make_root_ca(name, validity_days)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        cert_file.write_bytes(cert_pem)
    except OSError as exc:
        raise UsageError(
            f"cannot write the root CA into --out {out}: {exc.strerror or exc}",
            hint="give --out a folder you can write to (it is made if missing)",
        ) from None
    root = certs.check_root(cert_pem, None, str(out), datetime.now(UTC))
    return {
        "rootCert": str(cert_file),
        "rootKey": str(key_file),
        "subject": root.cert.subject.rfc4514_string(),
        "notAfter": f"{root.cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
        "sha256": root.fingerprint,
    }


# -- install --ca ----------------------------------------------------------------------------


def read_dir(ca_dir: Path, now: datetime) -> certs.RootCa | certs.ClusterCa:
    """What `--ca DIR` holds: a root with its key (from `ca create`), or an intermediate of
    the user's own in Istio's layout; either checked."""
    origin = str(ca_dir)
    if not ca_dir.is_dir():
        raise UsageError(
            f"--ca {ca_dir} is not a folder",
            hint="give the folder `kymamesh ca create --out DIR` made",
        )

    def read(name: str) -> bytes:
        try:
            return (ca_dir / name).read_bytes()
        except OSError as exc:
            raise UsageError(
                f"cannot read {ca_dir / name}: {exc.strerror or exc}",
                hint="check the --ca folder and its permissions",
            ) from None

    present = {p.name for p in ca_dir.iterdir()}
    if {certs.CA_CERT, certs.CA_KEY} & present:
        missing = [k for k in certs.CACERTS_KEYS if k not in present]
        if missing:
            raise UsageError(
                f"--ca {ca_dir} holds an intermediate CA but not {', '.join(missing)}",
                hint="give all four of ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem "
                "(Istio's plug-in CA), or a root-cert.pem with its root-key.pem",
            )
        ca = certs.ClusterCa(
            ca_cert_pem=read(certs.CA_CERT),
            ca_key_pem=read(certs.CA_KEY),
            cert_chain_pem=read(certs.CERT_CHAIN),
            root_cert_pem=read(certs.ROOT_CERT),
        )
        return certs.check_cluster_ca(ca, origin, now)
    if {certs.ROOT_CERT, certs.ROOT_KEY} <= present:
        return certs.check_root(read(certs.ROOT_CERT), read(certs.ROOT_KEY), origin, now)
    raise UsageError(
        f"--ca {ca_dir} holds neither a root CA (root-cert.pem and root-key.pem) nor an "
        "intermediate (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem)",
        hint="make a root with `kymamesh ca create --out DIR`, then pass --ca DIR",
    )


@dataclass(frozen=True)
class CaPlan:
    """What `--ca` changes in one cluster: the Secret to write (None: nothing) and why;
    `change`: the change of root on a running istiod that comes with it (or is under way)."""

    namespace: str
    live: Obj | None
    desired: Obj | None
    summary: str
    change: RootChange | None = None
    root_pem: bytes = b""  # the root the cluster's cacerts chain to once written
    cluster: str = ""  # the cluster's name, before each item's (several clusters: mesh join)

    @property
    def needed(self) -> bool:
        return self.desired is not None

    def named(self, item: str) -> str:
        return f"{self.cluster}: {item}" if self.cluster else item


def live_ca(cluster: Cluster, namespace: str) -> certs.ClusterCa | None:
    live = cluster.get(secret_ref(namespace))
    return certs.read_cacerts(secret_values(live)) if live else None


def plan(
    cluster: Cluster,
    namespace: str,
    ca_dir: Path,
    cluster_name: str | None,
    now: datetime | None = None,
    restart: restarts.RestartOptions | None = None,
) -> CaPlan:
    """Everything `--ca DIR` would do, read-only; refusals before any write. An istiod
    running on another root is refused with the plan of the change of root unless
    `restart.restart` (`--restart-proxies`) asks for it."""
    now = now or datetime.now(UTC)
    restart = restart or restarts.RestartOptions()
    source = read_dir(ca_dir, now)
    root_pem = source.cert_pem if isinstance(source, certs.RootCa) else source.root_cert_pem
    live = cluster.get(secret_ref(namespace))
    current = certs.read_cacerts(secret_values(live)) if live else None
    if current is not None and certs.same_root(current.root_cert_pem, root_pem):
        kept = _same_root(namespace, live, current, source, cluster_name, now)
        since = root_change_since(live)
        if since is None:
            return kept
        change = plan_root_change(cluster, namespace, root_pem, restart, since)
        if not restart.restart:
            raise _refusal(
                change,
                f"a change of root is under way in {namespace} (since {since:%Y-%m-%dT%H:%M:%SZ})",
            )
        desired = _secret(namespace, _ca_of(kept) or current, since) if kept.desired else None
        return replace(kept, desired=desired, change=change)
    planes = [p for p in find_control_planes(cluster, namespace) if p.installed]
    fresh_ca = (
        source
        if isinstance(source, certs.ClusterCa)
        else certs.make_cluster_ca(source, cluster_name or "cluster", now=now)
    )
    what = "your" if isinstance(source, certs.ClusterCa) else "new"
    summary = f"{what} {fresh_ca.describe()}"
    if not planes:
        return CaPlan(namespace, live, _secret(namespace, fresh_ca), summary, root_pem=root_pem)
    change = plan_root_change(cluster, namespace, root_pem, restart, None)
    if not restart.restart:
        raise _refusal(
            change, f"istiod already runs in {namespace} on {_runs_on(cluster, namespace, current)}"
        )
    return CaPlan(
        namespace,
        live,
        _secret(namespace, fresh_ca, now),
        f"{summary}; a change of root: {change.describe()}",
        change,
        root_pem,
    )


def _same_root(
    namespace: str,
    live: Obj | None,
    current: certs.ClusterCa,
    source: certs.RootCa | certs.ClusterCa,
    cluster_name: str | None,
    now: datetime,
) -> CaPlan:
    """A cacerts of the same root in place: kept, or its intermediate replaced (istiod
    takes an intermediate of the same root from its volume by itself)."""
    root_pem = current.root_cert_pem
    if isinstance(source, certs.ClusterCa):
        if current.values() == source.values():
            return CaPlan(
                namespace, live, None, f"{current.describe()}: in place", root_pem=root_pem
            )
        return CaPlan(
            namespace,
            live,
            _secret(namespace, source),
            f"{source.describe()} (replaces the intermediate in place)",
            root_pem=root_pem,
        )
    if _still_good(current, now):
        return CaPlan(namespace, live, None, f"{current.describe()}: in place", root_pem=root_pem)
    fresh = certs.make_cluster_ca(source, cluster_name or "cluster", now=now)
    return CaPlan(
        namespace,
        live,
        _secret(namespace, fresh),
        f"new {fresh.describe()} (the one in place expires within {RENEW_BEFORE_DAYS} days "
        "or does not check)",
        root_pem=root_pem,
    )


def _ca_of(ca_plan: CaPlan) -> certs.ClusterCa | None:
    if ca_plan.desired is None:
        return None
    return certs.read_cacerts(secret_values(ca_plan.desired))


def _still_good(ca: certs.ClusterCa, now: datetime) -> bool:
    try:
        certs.check_cluster_ca(ca, f"Secret {SECRET}", now)
    except PreconditionError:
        return False
    remaining = ca.ca_cert.not_valid_after_utc - now
    return remaining.days >= RENEW_BEFORE_DAYS


def _runs_on(cluster: Cluster, namespace: str, current: certs.ClusterCa | None) -> str:
    if current is not None:
        return f"the plug-in CA of Secret {namespace}/{SECRET} ({current.describe()})"
    if cluster.get(Ref("v1", "Secret", SELF_SIGNED_SECRET, namespace)) is not None:
        return f"its own self-signed CA (Secret {namespace}/{SELF_SIGNED_SECRET})"
    return "its own self-signed CA"


def _refusal(change: RootChange, found: str) -> PreconditionError:
    return PreconditionError(
        f"{found}; a CA of another root changes every workload's certificate and trust at "
        f"once, and istiod takes a new root only when it starts. The change of root this "
        f"cluster needs: {change.describe()}. Nothing was written",
        hint="re-run with --restart-proxies (and --restart-batch N or N% for other batches) "
        "to carry it out: the new cacerts, istiod restarted, then every sidecar and gateway "
        "in batches, traffic between workloads of the old and the new root failing until "
        "all are done; --dry-run shows each step. Or install the mesh with --ca from the "
        "start (a new cluster)",
    )


# -- a change of root on a running istiod ----------------------------------------------------


def root_change_since(secret: Obj | None) -> datetime | None:
    """When the cacerts of a change of root still under way were written (None: none)."""
    raw = (((secret or {}).get("metadata") or {}).get("annotations") or {}).get(
        ROOT_CHANGE_ANNOTATION
    )
    return _parse_time(raw)


def unfinished(cluster: Cluster, namespace: str) -> str | None:
    """A note when a change of root was begun and not finished (a run without --ca does
    not go on with it); None otherwise. One read."""
    since = root_change_since(cluster.get(secret_ref(namespace)))
    if since is None:
        return None
    return (
        f"a change of root begun {_stamp(since)} is not finished: workloads may still hold "
        "certificates of the previous root; run `kymamesh install --ca DIR --restart-proxies` "
        "with the same DIR to finish it"
    )


def _parse_time(raw: Any) -> datetime | None:
    if not raw:
        return None
    try:
        parsed = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _stamp(when: datetime) -> str:
    return f"{when.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


@dataclass
class RootChange:
    """A change of root on a running istiod in one cluster: the istiod Deployments to
    restart, then the workloads whose Pods hold certificates of the previous root, in the
    restart machinery's order and batches (`kymamesh.workloads.restarts`)."""

    namespace: str
    root_pem: bytes
    options: restarts.RestartOptions
    since: datetime | None  # when the new cacerts were written (None: not yet)
    istiods: list[ControlPlane]  # to restart
    all_istiods: list[ControlPlane]
    entries: list[sidecars.OutdatedWorkload]  # every workload with a Pod of the old root
    actions: list[tuple[sidecars.OutdatedWorkload, str, str]]
    gateways: frozenset[sidecars.Workload]
    batches: list[list[sidecars.OutdatedWorkload]]

    @property
    def restarted(self) -> list[sidecars.OutdatedWorkload]:
        return [e for e, action, _ in self.actions if action in ("restart", "delete-pods")]

    def _left(self, kind: str) -> list[str]:
        return [str(e.workload) for e, action, _ in self.actions if action == kind]

    @property
    def namespaces(self) -> list[str]:
        """Where istiod must publish the new root: its own, and the workloads'."""
        return sorted({self.namespace, *(e.workload.namespace for e in self.entries)})

    def describe(self) -> str:
        revisions = ", ".join(p.revision for p in self.istiods)
        parts = []
        if self.istiods:
            parts.append(
                f"restart {_count(len(self.istiods), 'istiod Deployment')} (revision "
                f"{revisions}) and wait until istiod publishes the new root "
                f"(ConfigMap {ROOT_CONFIGMAP})"
            )
        chosen = self.restarted
        gateways = sum(1 for e in chosen if e.workload in self.gateways)
        if chosen:
            size = self.options.batch_of(len(chosen))
            parts.append(
                f"restart {_count(len(chosen) - gateways, 'injected workload')} and "
                f"{_count(gateways, 'gateway')} in {_count(len(self.batches), 'batch', 'es')} "
                f"of at most {size} ({self.namespace} and the system namespaces first)"
            )
        else:
            parts.append("no workload or gateway to restart")
        opted, manual = self._left("opted-out"), self._left("manual")
        if opted:
            parts.append(f"opted out, left on the old root: {', '.join(opted)}")
        if manual:
            parts.append(f"not restarted by kymamesh (restart them yourself): {', '.join(manual)}")
        return "; ".join(parts)


def _count(n: int, noun: str, plural: str = "s") -> str:
    return f"{n} {noun}{'' if n == 1 else plural}"


def plan_root_change(
    cluster: Cluster,
    namespace: str,
    root_pem: bytes,
    options: restarts.RestartOptions,
    since: datetime | None,
) -> RootChange:
    """What a change of root restarts, read-only (no dry-run Pods). `since`: when the new
    cacerts were written; the istiod Deployments restarted since then are done, and once
    all are, the Pods made after the newest istiod Pod turned ready hold certificates of
    the new root."""
    planes = [p for p in find_control_planes(cluster, namespace) if p.installed]
    if since is None:
        to_restart = planes
    else:
        to_restart = [p for p in planes if not _restarted_since(p.deployment, since)]
    cutoff = None if since is None or to_restart else _served_since(cluster, planes)
    pods = [
        p
        for p in sidecars.list_pods(cluster)
        if sidecars.is_running(p) and sidecars.has_sidecar(p) and _made_before(p, cutoff)
    ]
    replica_sets = sidecars.replica_set_index(cluster) if pods else {}
    entries = sidecars.group_by_workload(((p, [NEW_ROOT_REASON]) for p in pods), replica_sets)
    gateways = frozenset(sidecars.owner_workload(p, replica_sets) for p in pods if _gateway_pod(p))
    listed = restarts.plan_restarts_for(
        cluster, namespace, entries, replace(options, restart=False)
    )
    chosen = [e for e, action, _ in listed.actions if action in ("restart", "delete-pods")]
    system = (namespace, *options.system_namespaces)
    batches = (
        restarts.restart_batches(chosen, system, options.batch_of(len(chosen))) if chosen else []
    )
    return RootChange(
        namespace=namespace,
        root_pem=root_pem,
        options=options,
        since=since,
        istiods=to_restart,
        all_istiods=planes,
        entries=entries,
        actions=listed.actions,
        gateways=gateways,
        batches=batches,
    )


def _restarted_since(deployment: Obj | None, since: datetime) -> bool:
    template = ((deployment or {}).get("spec") or {}).get("template") or {}
    restarted = _parse_time(
        ((template.get("metadata") or {}).get("annotations") or {}).get(rollouts.RESTARTED_AT)
    )
    return restarted is not None and restarted >= since


def _created(obj: Obj) -> datetime | None:
    return _parse_time((obj.get("metadata") or {}).get("creationTimestamp"))


def _made_before(pod: Obj, cutoff: datetime | None) -> bool:
    if cutoff is None:
        return True
    created = _created(pod)
    return created is None or created < cutoff


def _gateway_pod(pod: Obj) -> bool:
    templates = ((pod.get("metadata") or {}).get("annotations") or {}).get(TEMPLATES_ANNOTATION)
    return "gateway" in [t.strip() for t in str(templates or "").split(",")]


def _selector(deployment: Obj) -> str:
    labels = (((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels")) or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _served_since(cluster: Cluster, planes: list[ControlPlane]) -> datetime | None:
    """When the newest running istiod Pod turned ready (its creation when not known): a
    Pod made after it got its certificate from an istiod of the new root."""
    newest: datetime | None = None
    for plane in planes:
        assert plane.deployment is not None
        selector = _selector(plane.deployment)
        if not selector:
            continue
        for pod in cluster.list("v1", "Pod", plane.namespace, selector):
            if not sidecars.is_running(pod):
                continue
            ready = next(
                (
                    _parse_time(c.get("lastTransitionTime"))
                    for c in (pod.get("status") or {}).get("conditions") or []
                    if c.get("type") == "Ready" and c.get("status") == "True"
                ),
                None,
            )
            when = ready or _created(pod)
            if when is not None and (newest is None or when > newest):
                newest = when
    return newest


def _secret(namespace: str, ca: certs.ClusterCa, root_change: datetime | None = None) -> Obj:
    metadata: dict[str, Any] = {
        "name": SECRET,
        "namespace": namespace,
        "labels": {MANAGED_BY_LABEL: "kymamesh"},
    }
    if root_change is not None:
        metadata["annotations"] = {ROOT_CHANGE_ANNOTATION: _stamp(root_change)}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "data": {k: base64.b64encode(v).decode() for k, v in ca.values().items()},
    }


def run(ctx: RunContext, ca_plan: CaPlan, replan: Any = None) -> CaPlan:
    """Write the Secret of `ca_plan` (before istiod starts: phase 1 comes after it).
    `replan()` plans again once the lock is held. Returns the plan carried out."""
    phase = ctx.result.phase(PHASE)
    ctx.progress.phase(PHASE)
    ref = secret_ref(ca_plan.namespace)
    item = ItemResult(name=ca_plan.named(str(ref)), outcome=Outcome.UNCHANGED)
    phase.items.append(item)
    with ctx.progress.track(item):
        if ca_plan.needed and not ctx.options.dry_run:
            ctx.before_write()
            if replan is not None:
                ca_plan = replan()
        item.summary = ca_plan.summary
        if ca_plan.change is not None and not ca_plan.needed:
            item.summary += f"; a change of root under way: {ca_plan.change.describe()}"
        if ca_plan.desired is not None:
            item.diff = object_diff(ca_plan.live, ca_plan.desired, str(ref))
            item.changes = [ca_plan.summary]
            if ctx.options.dry_run:
                item.outcome = Outcome.WOULD_CHANGE
            else:
                ctx.cluster.ensure_namespace(ca_plan.namespace)
                ctx.cluster.apply(ca_plan.desired)
                item.outcome = Outcome.CHANGED
    return ca_plan


def _live_change(ctx: RunContext, ca_plan: CaPlan) -> RootChange | None:
    """The change of root as the cluster shows it now (None: none under way)."""
    if ca_plan.change is None:
        return None
    since = root_change_since(ctx.cluster.get(secret_ref(ca_plan.namespace)))
    if since is None:
        return None
    change = ca_plan.change
    return plan_root_change(ctx.cluster, change.namespace, change.root_pem, change.options, since)


def change_root_istiods(ctx: RunContext, ca_plan: CaPlan) -> None:
    """The first half of a change of root, once the new cacerts are in place: restart
    every istiod Deployment not restarted since (as `kubectl rollout restart` does), wait
    for their rollouts, then until istiod publishes the new root in its namespace and in
    every namespace of the workloads to restart."""
    if ca_plan.change is None:
        return
    phase = ctx.result.phase(PHASE_ISTIOD)
    ctx.progress.phase(PHASE_ISTIOD)
    change = ca_plan.change if ctx.options.dry_run else _live_change(ctx, ca_plan)
    if change is None:
        return
    for plane in change.istiods:
        item = ItemResult(name=ca_plan.named(str(plane.istiod_ref)), outcome=Outcome.WOULD_CHANGE)
        item.summary = (
            f"restarted ({plane.describe()}): istiod takes a new root only when it starts"
        )
        item.changes = [item.summary]
        annotation = f"spec.template.metadata.annotations[{rollouts.RESTARTED_AT}]"
        item.diff = f"  {plane.istiod_ref}: {annotation} = <now>"
        phase.items.append(item)
        if ctx.options.dry_run:
            continue
        with ctx.progress.track(item):
            ctx.before_write()
            stamp = _stamp(datetime.now(UTC))
            patch = {
                "spec": {"template": {"metadata": {"annotations": {rollouts.RESTARTED_AT: stamp}}}}
            }
            ctx.cluster.merge_patch(plane.istiod_ref, patch)
            item.outcome = Outcome.CHANGED
    published = ItemResult(
        name=ca_plan.named(f"ConfigMap {ROOT_CONFIGMAP}"), outcome=Outcome.UNCHANGED
    )
    published.summary = f"holds the new root in {', '.join(change.namespaces)}"
    phase.items.append(published)
    if ctx.options.dry_run:
        published.summary = f"waited for: {published.summary}"
        return
    with ctx.progress.track(published):
        refs = [p.istiod_ref for p in change.all_istiods]
        rollouts.wait_for_rollouts(ctx.cluster, refs, ctx.options.timeout, _istiod_timeout(ctx))
        wait_root_published(ctx.cluster, change.root_pem, change.namespaces, ctx.options.timeout)


def _istiod_timeout(ctx: RunContext) -> Any:
    def fail(waiting: list[str]) -> Exception:
        return WaitTimeoutError(
            f"istiod restarted on the new root, but its rollout is not finished after "
            f"{ctx.options.timeout:.0f}s: {'; '.join(waiting)}",
            hint="look at istiod (kubectl -n istio-system get pods; its logs name a CA it "
            "cannot read); then re-run the same command with --restart-proxies to go on",
        )

    return fail


def root_published(cluster: Cluster, root_pem: bytes, namespaces: list[str]) -> list[str]:
    """The namespaces whose ConfigMap istio-ca-root-cert does not hold `root_pem` yet."""
    waiting = []
    for namespace in namespaces:
        live = cluster.get(Ref("v1", "ConfigMap", ROOT_CONFIGMAP, namespace))
        found = ((live or {}).get("data") or {}).get(ROOT_CONFIGMAP_KEY)
        if not found:
            waiting.append(f"{namespace} (no {ROOT_CONFIGMAP})")
        elif not certs.same_root(str(found).encode(), root_pem):
            waiting.append(f"{namespace} (another root)")
    return waiting


def wait_root_published(
    cluster: Cluster, root_pem: bytes, namespaces: list[str], timeout: float
) -> None:
    """Wait until istiod has written the new root into ConfigMap istio-ca-root-cert of
    each namespace (it does so once it runs on it and holds its namespace controller's
    leader election); name the namespaces that still hold another."""
    wait_until(
        lambda: "; ".join(root_published(cluster, root_pem, namespaces)) or None,
        timeout,
        lambda waiting: (
            f"istiod was restarted, but ConfigMap {ROOT_CONFIGMAP} does not hold "
            f"the new root after {timeout:.0f}s in: {waiting}"
        ),
        hint="istiod may not have taken the new cacerts (its log says which CA it uses: "
        "kubectl -n istio-system logs deploy/istiod), or an istiod of the old root still "
        "holds the leader election; then re-run the same command with --restart-proxies",
        first=0.5,
        most=2.0,
    )


def change_root_workloads(ctx: RunContext, ca_plan: CaPlan) -> None:
    """The second half of a change of root, once istiod publishes the new root: restart
    every injected workload and gateway whose Pods were made before that, in batches
    (`kymamesh.workloads.restarts`: the Istio and system namespaces first, opt-outs respected), then
    remove the mark of the change from Secret cacerts."""
    if ca_plan.change is None:
        return
    phase = ctx.result.phase(PHASE_WORKLOADS)
    ctx.progress.phase(PHASE_WORKLOADS)
    if ctx.options.dry_run:
        planned_change = ca_plan.change
        count = len(planned_change.batches)
        for number, batch in enumerate(planned_change.batches, start=1):
            for entry in batch:
                item = ItemResult(
                    name=ca_plan.named(str(entry.workload)), outcome=Outcome.WOULD_CHANGE
                )
                item.summary = f"{entry.workload} restarted, batch {number}/{count}"
                item.summary += f" ({NEW_ROOT_REASON})"
                item.changes = [item.summary]
                item.diff = f"  batch {number}/{count}: {entry.workload}: restarted"
                phase.items.append(item)
        _note_left(ctx, planned_change)
        return
    change = _live_change(ctx, ca_plan)
    if change is None:
        return
    if change.istiods:  # not restarted: the first half did not run to its end
        raise PreconditionError(
            f"istiod ({', '.join(p.revision for p in change.istiods)}) has not been "
            "restarted on the new root; the workloads are not restarted before it is",
            hint="re-run the same command with --restart-proxies",
        )
    options = replace(change.options, restart=True)
    planned = restarts.plan_restarts_for(
        ctx.cluster, change.namespace, change.entries, options, new_certificates=True
    )
    for note in planned.notes:
        if note not in ctx.result.notes:
            ctx.result.notes.append(note)
    for step in planned.changes:
        item = ItemResult(name=ca_plan.named(step.target), outcome=Outcome.WOULD_CHANGE)
        item.summary = step.summary
        item.changes = [step.summary]
        item.diff = step.diff
        phase.items.append(item)
        with ctx.progress.track(item):
            ctx.before_write()
            step.apply(ctx.cluster)
            item.outcome = Outcome.CHANGED
    if planned.pending and not planned.changes:
        restarts.wait_for_restarts(
            ctx.cluster, planned.pending, options.timeout, "restarts begun by an earlier run", []
        )
    _note_left(ctx, change)
    done = ItemResult(
        name=ca_plan.named(str(secret_ref(change.namespace))), outcome=Outcome.CHANGED
    )
    done.summary = f"the change of root is done: annotation {ROOT_CHANGE_ANNOTATION} removed"
    done.changes = [done.summary]
    phase.items.append(done)
    with ctx.progress.track(done):
        ctx.before_write()
        patch = {"metadata": {"annotations": {ROOT_CHANGE_ANNOTATION: None}}}
        ctx.cluster.merge_patch(secret_ref(change.namespace), patch)


def _note_left(ctx: RunContext, change: RootChange) -> None:
    left = change._left("opted-out") + change._left("manual")
    if left:
        note = (
            "still on the previous root until restarted (their traffic with the others "
            f"fails until then): {', '.join(left)}"
        )
        if note not in ctx.result.notes:
            ctx.result.notes.append(note)


# -- mesh join --ca ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MeshCa:
    """`mesh join --ca DIR`: the mesh's root (or an intermediate of the user's own), and
    how a change of root on a running istiod restarts (`--restart-proxies`)."""

    ca_dir: Path
    restart: restarts.RestartOptions


def plan_clusters(ca: MeshCa, clusters: list[tuple[Cluster, str]], namespace: str) -> list[CaPlan]:
    """`plan` for each cluster of a join (by its connection and its cluster name), read-only;
    the refusals of every cluster at once, before any write to any of them."""
    now = datetime.now(UTC)
    plans: list[CaPlan] = []
    refused: list[PreconditionError] = []
    for cluster, name in clusters:
        try:
            found = plan(cluster, namespace, ca.ca_dir, name, now=now, restart=ca.restart)
        except PreconditionError as exc:
            refused.append(type(exc)(f"{name}: {exc.message}", hint=exc.hint))
            continue
        plans.append(replace(found, cluster=name))
    if len(refused) == 1:
        raise refused[0]
    if refused:
        raise PreconditionError("; ".join(e.message for e in refused), hint=refused[0].hint)
    return plans


def carry_out(ctx: RunContext, ca_plan: CaPlan) -> None:
    """All of `ca_plan` in one cluster, its lock held: the cacerts, then, for a change of
    root, istiod and then the workloads restarted on it."""
    ca_plan = run(ctx, ca_plan)
    change_root_istiods(ctx, ca_plan)
    change_root_workloads(ctx, ca_plan)
