"""Shared trust: a mesh's root CA, and each cluster's plug-in CA made of it.

`kymamesh ca create --out DIR` makes a root CA (`root-cert.pem`, `root-key.pem`); its
key stays in DIR, with the user, and never reaches a cluster. `install --ca DIR` then
writes this cluster's own intermediate CA, issued by that root, as Secret
`istio-system/cacerts` (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`)
before istiod starts, so that istiod signs its workloads' certificates with it and every
cluster of the mesh trusts the others' workloads. A DIR that holds an intermediate of the
user's own (those four files) is taken as it is, once checked (chain, expiry, key).

A re-run keeps the intermediate in place while it chains to the same root and is not
about to expire. An istiod that already runs on another CA (its self-signed one, Secret
`istio-ca-secret`, or another root) is refused with the plan a change of root needs:
every workload's certificate and every sidecar's trust would change at once.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kymamesh import MANAGED_BY_LABEL
from kymamesh.adapters.cluster import Cluster, Obj, Ref
from kymamesh.context import RunContext
from kymamesh.diffs import object_diff, secret_values
from kymamesh.errors import PreconditionError, UsageError
from kymamesh.identity import certs
from kymamesh.istio.controlplane import find_control_planes
from kymamesh.output import ItemResult, Outcome

SECRET = "cacerts"
SELF_SIGNED_SECRET = "istio-ca-secret"  # istiod's own CA, made when no cacerts is there
RENEW_BEFORE_DAYS = 30
PHASE = "shared trust: the plug-in CA"


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
    """What `--ca` changes in one cluster: the Secret to write (None: nothing) and why."""

    namespace: str
    live: Obj | None
    desired: Obj | None
    summary: str

    @property
    def needed(self) -> bool:
        return self.desired is not None


def live_ca(cluster: Cluster, namespace: str) -> certs.ClusterCa | None:
    live = cluster.get(secret_ref(namespace))
    return certs.read_cacerts(secret_values(live)) if live else None


def plan(
    cluster: Cluster,
    namespace: str,
    ca_dir: Path,
    cluster_name: str | None,
    now: datetime | None = None,
) -> CaPlan:
    """Everything `--ca DIR` would do, read-only; refusals before any write."""
    now = now or datetime.now(UTC)
    source = read_dir(ca_dir, now)
    root_pem = source.cert_pem if isinstance(source, certs.RootCa) else source.root_cert_pem
    live = cluster.get(secret_ref(namespace))
    current = certs.read_cacerts(secret_values(live)) if live else None
    if current is not None and certs.same_root(current.root_cert_pem, root_pem):
        if isinstance(source, certs.ClusterCa):
            if current.values() == source.values():
                return CaPlan(namespace, live, None, f"{current.describe()}: in place")
            return CaPlan(
                namespace,
                live,
                _secret(namespace, source),
                f"{source.describe()} (replaces the intermediate in place)",
            )
        if _still_good(current, now):
            return CaPlan(namespace, live, None, f"{current.describe()}: in place")
        fresh = certs.make_cluster_ca(source, cluster_name or "cluster", now=now)
        return CaPlan(
            namespace,
            live,
            _secret(namespace, fresh),
            f"new {fresh.describe()} (the one in place expires within {RENEW_BEFORE_DAYS} days "
            "or does not check)",
        )
    _refuse_a_running_istiod(cluster, namespace, current)
    fresh_ca = (
        source
        if isinstance(source, certs.ClusterCa)
        else certs.make_cluster_ca(source, cluster_name or "cluster", now=now)
    )
    what = "your" if isinstance(source, certs.ClusterCa) else "new"
    return CaPlan(namespace, live, _secret(namespace, fresh_ca), f"{what} {fresh_ca.describe()}")


def _still_good(ca: certs.ClusterCa, now: datetime) -> bool:
    try:
        certs.check_cluster_ca(ca, f"Secret {SECRET}", now)
    except PreconditionError:
        return False
    remaining = ca.ca_cert.not_valid_after_utc - now
    return remaining.days >= RENEW_BEFORE_DAYS


def _refuse_a_running_istiod(
    cluster: Cluster, namespace: str, current: certs.ClusterCa | None
) -> None:
    planes = [p for p in find_control_planes(cluster, namespace) if p.installed]
    if not planes:
        return
    if current is not None:
        runs_on = f"the plug-in CA of Secret {namespace}/{SECRET} ({current.describe()})"
    elif cluster.get(Ref("v1", "Secret", SELF_SIGNED_SECRET, namespace)) is not None:
        runs_on = f"its own self-signed CA (Secret {namespace}/{SELF_SIGNED_SECRET})"
    else:
        runs_on = "its own self-signed CA"
    raise PreconditionError(
        f"istiod already runs in {namespace} on {runs_on}; a CA of another root would "
        "change every workload's certificate and trust at once",
        hint="the change of root this needs: (1) write the new intermediate as Secret "
        f"{namespace}/{SECRET} (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem), "
        "(2) restart istiod so it signs with it, (3) restart every sidecar and gateway in "
        "batches (`kymamesh patch --restart-proxies` restarts outdated ones; a new root "
        "needs all of them), traffic between old and new workloads failing until done; "
        "or install the mesh with --ca from the start (a new cluster)",
    )


def _secret(namespace: str, ca: certs.ClusterCa) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": SECRET,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: "kymamesh"},
        },
        "type": "Opaque",
        "data": {k: base64.b64encode(v).decode() for k, v in ca.values().items()},
    }


def run(ctx: RunContext, ca_plan: CaPlan, replan: Any = None) -> None:
    """Write the Secret of `ca_plan` (before istiod starts: phase 1 comes after it).
    `replan()` plans again once the lock is held."""
    phase = ctx.result.phase(PHASE)
    ctx.progress.phase(PHASE)
    ref = secret_ref(ca_plan.namespace)
    item = ItemResult(name=str(ref), outcome=Outcome.UNCHANGED)
    phase.items.append(item)
    with ctx.progress.track(item):
        if ca_plan.needed and not ctx.options.dry_run:
            ctx.before_write()
            if replan is not None:
                ca_plan = replan()
        item.summary = ca_plan.summary
        if ca_plan.desired is not None:
            item.diff = object_diff(ca_plan.live, ca_plan.desired, str(ref))
            item.changes = [ca_plan.summary]
            if ctx.options.dry_run:
                item.outcome = Outcome.WOULD_CHANGE
            else:
                ctx.cluster.ensure_namespace(ca_plan.namespace)
                ctx.cluster.apply(ca_plan.desired)
                item.outcome = Outcome.CHANGED
