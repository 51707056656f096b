"""`kymamesh uninstall`: the install in reverse, and nothing a user made.

Order: the Kyma patch's own objects (those labelled
`app.kubernetes.io/managed-by=kymamesh`: the identity step's AuthorizationPolicy,
RequestAuthentication and VirtualService, the Gateway, the TLS Secret and the
identity Secret, the PeerAuthentications `default` and Dex's, the NetworkPolicies of step
network-policies), then the Helm
releases dex (in kyma-system, when kymamesh installed it), istio-egressgateway (when the
mesh file enabled it), istio-ingressgateway,
istiod, istio-base. The patch's mesh-config and injector entries live in the
istiod release's ConfigMaps and go with it.

What stays, and why:

- the Istio CRDs, and with them every Istio resource a user made: Istio's base
  chart marks its CRDs `helm.sh/resource-policy: keep`, so `helm uninstall`
  leaves them. `--purge` deletes every CRD of an *.istio.io group (and so every
  resource of those kinds) and waits until they are gone;
- the namespace istio-system: the run's lock Lease lives there, and other
  things may too;
- the sidecars of running Pods, until those Pods are re-created.

Refusals, each before any write (exit 3): Istio resources that kymamesh did not
make remain (listed; `--force` goes on); Istio was not installed by kymamesh
(`--existing-istio` removes it anyway, if its control plane is one of the pinned
Helm releases). Nothing left to remove: nothing is written, so a second run
makes zero writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kymamesh import MANAGED_BY_LABEL
from kymamesh.adapters.cluster import Ref
from kymamesh.adapters.helm import DeployedRelease
from kymamesh.adapters.lock import LOCK_NAME
from kymamesh.context import RunContext
from kymamesh.errors import PreconditionError
from kymamesh.istio import inventory as inv
from kymamesh.istio import tags
from kymamesh.istio.controlplane import find_control_planes
from kymamesh.istio.release import dex_pinned, pinned
from kymamesh.meshfile import EGRESS_RELEASE
from kymamesh.output import ItemResult, Outcome
from kymamesh.steps.netpol import NAMES as NETWORK_POLICY_NAMES
from kymamesh.waits import wait_until
from kymamesh.workflows.multicluster import refuse_if_joined
from kymamesh.workflows.pipeline import kymamesh_revisions

PHASE_PATCH_OBJECTS = "Kyma patch objects"
PHASE_RELEASES = "Istio Helm releases"
PHASE_CRDS = "Istio CRDs"

_LISTED = 25  # user resources named in the refusal message; all of them are in `data`
# Reverse of the patch list: the identity step's policies and route, step 6's Gateway and
# Secret, then the PeerAuthentications (step 1's, and Dex's).
_DELETE_RANK = {
    "AuthorizationPolicy": -2,
    "RequestAuthentication": -1,
    "VirtualService": -1,
    "Gateway": 0,
    "Secret": 1,
    "PeerAuthentication": 3,
}


@dataclass
class Plan:
    """What an uninstall would remove and what stops it. Built read-only."""

    installed_by: inv.Installer
    istiods: list[inv.Istiod]
    patch_objects: list[Ref] = field(default_factory=list)
    releases: list[DeployedRelease] = field(default_factory=list)  # in delete order
    crds: list[Ref] = field(default_factory=list)  # kept unless --purge
    user_resources: list[Ref] = field(default_factory=list)
    injection_namespaces: list[tuple[str, str]] = field(default_factory=list)

    def work(self, purge: bool) -> bool:
        return bool(self.patch_objects or self.releases or (purge and self.crds))

    def to_json(self, purge: bool) -> dict[str, Any]:
        return {
            "installedBy": self.installed_by.value,
            "patchObjects": [str(r) for r in self.patch_objects],
            "releases": [r.name for r in self.releases],
            "crds": [r.name for r in self.crds],
            "crdsKept": not purge,
            "userResources": [str(r) for r in self.user_resources],
            "injectionNamespaces": [n for n, _ in self.injection_namespaces],
        }


def plan(ctx: RunContext) -> Plan:
    """Read the cluster: kymamesh's objects, the releases, the CRDs, the user's resources."""
    cluster = ctx.cluster
    release = pinned()
    namespace = release.namespace
    names = []
    planes = find_control_planes(cluster, namespace)
    for row in release.releases:
        names.append(row.release)
        if row.chart == "istiod":  # the revisions kymamesh installed by revisions, beside it
            names.append(tags.istiod_release_name(tags.revision_name(release.version)))
            names.extend(
                tags.istiod_release_name(p.revision) for p in kymamesh_revisions(ctx, planes)
            )
    names = list(dict.fromkeys(names))
    deployed = {name: ctx.helm.deployed(name, namespace) for name in names}
    istiods = inv.find_istiods(cluster, namespace)
    result = Plan(installed_by=inv.installer(deployed, istiods), istiods=istiods)
    result.releases = [r for r in reversed(list(deployed.values())) if r is not None]
    egress = ctx.helm.deployed(EGRESS_RELEASE, namespace)  # the mesh file's egress gateway
    if egress is not None and inv.marked_by_kymamesh(egress):
        result.releases.insert(0, egress)
    dex = dex_pinned()  # installed last (by the identity step): removed first
    dex_release = ctx.helm.deployed(dex.release, dex.namespace)
    if dex_release is not None and inv.marked_by_kymamesh(dex_release):
        result.releases.insert(0, dex_release)
    ours = {(namespace, r.name) for r in result.releases}

    crds = inv.istio_crds(cluster)
    result.crds = [
        Ref(inv.CRD_API, "CustomResourceDefinition", c["metadata"]["name"]) for c in crds
    ]
    patch_objects = []
    for kind in inv.istio_kinds(crds):
        for obj in cluster.list(kind.api_version, kind.kind):
            ref = inv.ref_of(obj, kind.api_version)
            if inv.managed_by_kymamesh(obj):
                patch_objects.append(ref)
            elif inv.helm_owner(obj) not in ours:  # a release's own objects go with it
                result.user_resources.append(ref)
    selector = f"{MANAGED_BY_LABEL}=kymamesh"
    for core_kind in ("Secret", "ConfigMap"):  # the TLS Secret; the remembered settings
        for obj in cluster.list("v1", core_kind, namespace=namespace, label_selector=selector):
            if obj["metadata"]["name"] != LOCK_NAME:
                patch_objects.append(inv.ref_of(obj, "v1"))
    # the default revision tag of a canary upgrade: its webhooks fail closed once istiod is gone
    for obj in cluster.list(tags.WEBHOOK_API, tags.MUTATING, label_selector=selector):
        if tags.TAG_LABEL in (obj["metadata"].get("labels") or {}):
            patch_objects.append(inv.ref_of(obj, tags.WEBHOOK_API))
    # the network-policies step's NetworkPolicies (its own names, wherever they are)
    for obj in cluster.list("networking.k8s.io/v1", "NetworkPolicy", label_selector=selector):
        if obj["metadata"]["name"] in NETWORK_POLICY_NAMES:
            patch_objects.append(inv.ref_of(obj, "networking.k8s.io/v1"))
    # the identity step's Secret of values read at run time, beside Dex
    for obj in cluster.list("v1", "Secret", namespace=dex.namespace, label_selector=selector):
        patch_objects.append(inv.ref_of(obj, "v1"))
    result.patch_objects = sorted(patch_objects, key=lambda r: (_DELETE_RANK.get(r.kind, 2), r))
    result.user_resources.sort(key=lambda r: (r.kind, r.namespace, r.name))
    result.injection_namespaces = inv.injection_namespaces(cluster)
    return result


def refuse_if_needed(p: Plan, *, force: bool, existing_istio: bool, purge: bool) -> None:
    """The refusals of the module docstring; raise before anything is written."""
    namespace = pinned().namespace
    if p.installed_by in (inv.Installer.HELM, inv.Installer.OTHER) and not existing_istio:
        raise PreconditionError(
            f"the Istio in {namespace} was not installed by kymamesh ({_who(p)}); "
            "kymamesh leaves it alone",
            hint="pass --existing-istio to remove it anyway",
        )
    if existing_istio:
        names = {r.name for r in p.releases}
        strays = [d for d in p.istiods if d.helm_release not in names]
        if strays:
            held = ", ".join(f"{d.name} ({_holder(d)})" for d in strays)
            raise PreconditionError(
                f"kymamesh can only remove Istio installed as the Helm releases "
                f"{', '.join(r.release for r in pinned().releases)} in {namespace}; "
                f"this istiod is not one of them: {held}",
                hint="remove it with the tool that installed it (istioctl, helm uninstall)",
            )
    if not p.work(purge):
        return
    if p.user_resources and not force:
        listed = ", ".join(str(r) for r in p.user_resources[:_LISTED])
        more = len(p.user_resources) - _LISTED
        raise PreconditionError(
            f"{_count(len(p.user_resources), 'Istio resource')} that kymamesh did not create "
            "remain: " + listed + (f" and {more} more" if more > 0 else ""),
            hint="delete them first, or pass --force to uninstall anyway"
            + (" (with --purge they are deleted with their CRDs)" if purge else ""),
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _holder(d: inv.Istiod) -> str:
    return f"Helm release {d.helm_release}" if d.helm_release else "no Helm release"


def _who(p: Plan) -> str:
    if p.installed_by == inv.Installer.HELM:
        names = [r.name for r in p.releases] or [
            d.helm_release for d in p.istiods if d.helm_release
        ]
        return "Helm releases " + ", ".join(names) + " without kymamesh's mark"
    return "istiod " + ", ".join(d.name for d in p.istiods) + " belongs to no Helm release"


def run_uninstall(ctx: RunContext, *, purge: bool, force: bool, existing_istio: bool) -> None:
    """Plan, refuse or confirm, then delete in reverse install order."""
    p = plan(ctx)
    ctx.result.data = p.to_json(purge)
    refuse_if_joined(ctx.cluster, "uninstall refused")  # the peers' istiods watch this one
    refuse_if_needed(p, force=force, existing_istio=existing_istio, purge=purge)
    _notes(ctx, p, purge)
    if not p.work(purge):
        ctx.result.notes.insert(
            0,
            "nothing to uninstall: no kymamesh objects, Helm releases"
            + (" or Istio CRDs" if purge else "")
            + " found",
        )
        return
    if ctx.options.dry_run:
        _report_dry_run(ctx, p, purge)
        return
    ctx.confirm(_question(ctx, p, purge))
    ctx.before_write()
    p = plan(ctx)  # again, under the lock
    ctx.result.data = p.to_json(purge)
    refuse_if_needed(p, force=force, existing_istio=existing_istio, purge=purge)
    _delete(ctx, p, purge)


def _question(ctx: RunContext, p: Plan, purge: bool) -> str:
    parts = []
    if p.patch_objects:
        parts.append(_count(len(p.patch_objects), "Kyma patch object"))
    if p.releases:
        parts.append("the Helm releases " + ", ".join(r.name for r in p.releases))
    if purge and p.crds:
        parts.append(_count(len(p.crds), "Istio CRD") + " with every resource of their kinds")
    return f"uninstall Istio from context '{ctx.cluster.context}': delete " + ", ".join(parts) + "?"


def _notes(ctx: RunContext, p: Plan, purge: bool) -> None:
    notes = ctx.result.notes
    for name, revision in p.injection_namespaces:
        rev = "" if revision in ("", "default") else f" (revision {revision})"
        notes.append(
            f"namespace {name} is labelled for sidecar injection{rev}: its Pods keep their "
            "sidecars until they are restarted; `kymamesh inject-namespace "
            f"{name} --disable` removes the label"
        )
    if p.crds and not purge:
        notes.append(
            f"{len(p.crds)} Istio CRDs are kept, with any Istio resources in them; "
            "--purge deletes them"
        )
    if p.work(purge):
        notes.append(
            f"the namespace {pinned().namespace} is kept (kymamesh's lock lives there); "
            f"delete it yourself once empty"
        )


def _report_dry_run(ctx: RunContext, p: Plan, purge: bool) -> None:
    """One item per object that would go."""
    outcome, verb = Outcome.WOULD_CHANGE, "would delete"
    for ref in p.patch_objects:
        ctx.result.phase(PHASE_PATCH_OBJECTS).items.append(ItemResult(str(ref), outcome, verb))
    for r in p.releases:
        ctx.result.phase(PHASE_RELEASES).items.append(
            ItemResult(r.name, outcome, f"{verb} ({r.chart} {r.chart_version}, helm uninstall)")
        )
    if purge:
        for ref in p.crds:
            ctx.result.phase(PHASE_CRDS).items.append(ItemResult(ref.name, outcome, verb))


def _delete(ctx: RunContext, p: Plan, purge: bool) -> None:
    cluster = ctx.cluster
    namespace = pinned().namespace
    if p.patch_objects:
        phase = ctx.result.phase(PHASE_PATCH_OBJECTS)
        ctx.progress.phase(PHASE_PATCH_OBJECTS)
        for ref in p.patch_objects:
            item = ItemResult(str(ref), Outcome.UNCHANGED)
            phase.items.append(item)
            with ctx.progress.track(item):
                gone = cluster.delete(ref)
                item.outcome = Outcome.CHANGED if gone else Outcome.UNCHANGED
                item.summary = "deleted" if gone else "already gone"
    if p.releases:
        phase = ctx.result.phase(PHASE_RELEASES)
        ctx.progress.phase(PHASE_RELEASES)
        for r in p.releases:
            item = ItemResult(r.name, Outcome.UNCHANGED)
            phase.items.append(item)
            with ctx.progress.track(item, f"{r.name} ({r.chart} {r.chart_version})"):
                ctx.helm.uninstall(r.name, r.namespace or namespace, ctx.options.timeout)
                item.outcome = Outcome.CHANGED
                item.summary = "helm uninstall"
    if purge and p.crds:
        phase = ctx.result.phase(PHASE_CRDS)
        ctx.progress.phase(PHASE_CRDS)
        with ctx.progress.item(f"{len(p.crds)} CRDs") as tracker:
            for ref in p.crds:
                gone = cluster.delete(ref)
                phase.items.append(
                    ItemResult(
                        ref.name,
                        Outcome.CHANGED if gone else Outcome.UNCHANGED,
                        "deleted" if gone else "already gone",
                    )
                )
            _wait_gone(ctx, p.crds)
            tracker.done(Outcome.CHANGED, f"{len(p.crds)} deleted")


def _wait_gone(ctx: RunContext, refs: list[Ref]) -> None:
    """CRDs go only once their resources are gone; a reinstall right after needs them gone."""
    pending = list(refs)

    def still_there() -> str | None:
        nonlocal pending
        pending = [r for r in pending if ctx.cluster.get(r) is not None]
        return ", ".join(str(r) for r in pending) or None

    wait_until(
        still_there,
        ctx.options.timeout,
        lambda seen: (
            f"timed out after {ctx.options.timeout:.0f}s waiting for the deletion of: {seen}"
        ),
        hint="look at their finalizers and remaining resources with kubectl; re-run to continue",
        first=0.5,
        most=0.5,
    )
