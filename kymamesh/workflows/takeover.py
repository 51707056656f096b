"""`install --take-over`: an Istio applied without Helm, brought under kymamesh's releases.

The Kyma Istio module (like istioctl and the Istio operator) installs Istio with Istio's
installer library: it renders Istio's charts and applies every object server-side, with
force, as the field manager `istio-operator`, labelled with the installer's labels
(`operator.istio.io/component`, `operator.istio.io/managed`, `operator.istio.io/version`,
`install.operator.istio.io/owning-resource[-namespace]`). The module's own manager then
adds `kyma-project.io/module: istio` to the objects (a merge patch), and its overlays put
the same label on the Pod templates. None of these objects carries Helm's marks.

Taking such an Istio over, object by object and without a gap (the objects are updated
in place, never deleted and made again, so istiod keeps serving and its webhooks stay
registered through the move):

1. preflight (before any write): the module's manager is stopped, Helm is 4 or newer
   (it applies server-side, so the release owns every field the chart renders; Helm 3's
   client-side merge leaves the fields whose values agree with the installer's owned by
   the installer alone), istiod is not another Helm release's, and its version passes
   the version gate;
2. phase 1 installs each release with `helm upgrade --install --take-ownership
   --force-conflicts`: Helm adopts the existing objects (it skips its check for its own
   annotations) and takes over the fields the installer owned with other values;
3. then the installer gives up the rest (`hand_over`): for each object of the release, a
   server-side apply of an empty object as `istio-operator` removes the fields only the
   installer owned (settings the charts do not render: the module's extra istiod env,
   annotations, its Pod template label) and leaves the ones Helm owns too; the
   installer's and the module's labels left on the object are removed. A Deployment
   whose Pod template changed rolls, new Pods first (the charts' rolling update), and
   the release is ready again before the next one starts;
4. objects the installer made that no release renders are listed (`leftovers`), not
   deleted: a person decides about them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kymamesh.adapters.cluster import Ref
from kymamesh.context import RunContext
from kymamesh.errors import PreconditionError
from kymamesh.istio import controlplane
from kymamesh.istio.release import IstioRelease
from kymamesh.istio.versions import check_upgrade

# Istio's installer library applies as this field manager (istioctl, the Istio operator
# and the Kyma Istio module's istio_install alike).
INSTALLER_FIELD_MANAGER = "istio-operator"
# the labels Istio's installer puts on every object it applies
INSTALLER_LABELS = (
    "operator.istio.io/component",
    "operator.istio.io/managed",
    "operator.istio.io/version",
    "install.operator.istio.io/owning-resource",
    "install.operator.istio.io/owning-resource-namespace",
)
# the label the Kyma Istio module's manager adds to the objects of its Istio
MODULE_LABEL = "kyma-project.io/module"
MODULE_LABEL_VALUE = "istio"
OWNER_LABEL = "install.operator.istio.io/owning-resource"
HELM_RELEASE_ANNOTATION = "meta.helm.sh/release-name"

# the kinds looked at for leftovers (objects the installer made that no release renders)
LEFTOVER_KINDS = (
    ("apps/v1", "Deployment"),
    ("apps/v1", "DaemonSet"),
    ("v1", "Service"),
    ("v1", "ServiceAccount"),
    ("v1", "ConfigMap"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("policy/v1", "PodDisruptionBudget"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration"),
    ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration"),
)
_CLUSTER_SCOPED = frozenset(
    {
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    }
)


def preflight(
    ctx: RunContext, release: IstioRelease, plane: controlplane.ControlPlane, istiod_release: str
) -> None:
    """Read-only, before the first write: what `--take-over` needs; `plane` is the control
    plane the install makes (its istiod is the one taken over)."""
    if ctx.helm.major < 4:
        raise PreconditionError(
            f"--take-over needs Helm 4 (found Helm {ctx.helm.version}): Helm 3 merges "
            "client-side and would leave the fields Istio's installer set owned by the "
            "installer, not by the release",
            hint="install Helm 4 (or pass --helm PATH to one) and re-run",
        )
    live = ctx.cluster.get(plane.istiod_ref)
    if live is None:
        return  # nothing to take over: a plain install
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    owner = annotations.get(HELM_RELEASE_ANNOTATION)
    if owner and owner != istiod_release:
        raise PreconditionError(
            f"Deployment {release.namespace}/{plane.istiod} belongs to the Helm release "
            f"{owner}; --take-over adopts objects applied without Helm, not another release's",
            hint="to bring that Istio to the Kyma state, run `kymamesh patch --existing-istio`",
        )
    found = controlplane.istiod_version(live)
    if found is not None and not owner:
        check_upgrade(f"istiod {release.namespace}/{plane.istiod}", found, release.version)


def _ref(obj: Mapping[str, Any], namespace: str) -> Ref:
    ref = Ref.of(obj)
    if not ref.namespace and ref.kind not in _CLUSTER_SCOPED:
        ref = Ref(ref.api_version, ref.kind, ref.name, namespace)
    return ref


def _installer_applied(live: Mapping[str, Any]) -> bool:
    entries = (live.get("metadata") or {}).get("managedFields") or []
    return any(
        e.get("manager") == INSTALLER_FIELD_MANAGER and e.get("operation") == "Apply"
        for e in entries
    )


def _stray_labels(live: Mapping[str, Any], rendered: Mapping[str, Any]) -> list[str]:
    """The installer's and the module's labels on the object that the chart does not set."""
    have = (live.get("metadata") or {}).get("labels") or {}
    wanted = (rendered.get("metadata") or {}).get("labels") or {}
    return sorted(
        k
        for k in have
        if (k in INSTALLER_LABELS or (k == MODULE_LABEL and have[k] == MODULE_LABEL_VALUE))
        and k not in wanted
    )


def hand_over(ctx: RunContext, release: str, namespace: str) -> list[str]:
    """After Helm adopted a release's objects: the installer gives up the fields it alone
    owned, and its labels go. Returns what changed (one line per object); writes nothing
    when there is nothing left of the installer (a re-run)."""
    changed = []
    for rendered in ctx.helm.manifest(release, namespace):
        if not isinstance(rendered, dict) or "kind" not in rendered:
            continue
        ref = _ref(rendered, namespace)
        live = ctx.cluster.get(ref)
        if live is None:
            continue
        what = []
        if _installer_applied(live):
            if not ctx.options.dry_run:
                live = ctx.cluster.release_field_manager(ref, INSTALLER_FIELD_MANAGER)
            what.append(f"fields of {INSTALLER_FIELD_MANAGER} released")
        stray = _stray_labels(live, rendered)
        if stray:
            if not ctx.options.dry_run:
                ctx.cluster.merge_patch(ref, {"metadata": {"labels": dict.fromkeys(stray)}})
            what.append("labels " + ", ".join(stray) + " removed")
        if what:
            changed.append(f"{ref}: {'; '.join(what)}")
    return changed


def leftovers(ctx: RunContext, namespace: str) -> list[str]:
    """Objects Istio's installer made that no Helm release took over: they carry its owner
    label (Istio's charts render it too, so objects of a release are left out), in the
    Istio namespace and cluster-wide."""
    found = []
    for api_version, kind in LEFTOVER_KINDS:
        where = "" if kind in _CLUSTER_SCOPED else namespace
        for obj in ctx.cluster.list(api_version, kind, where, OWNER_LABEL):
            annotations = (obj.get("metadata") or {}).get("annotations") or {}
            if not annotations.get(HELM_RELEASE_ANNOTATION):
                found.append(str(_ref(obj, namespace)))
    return sorted(found)


def report_leftovers(ctx: RunContext, namespace: str) -> None:
    """`takeOver.leftovers` of the result, and a note naming them."""
    left = leftovers(ctx, namespace)
    ctx.result.data["takeOver"] = {"leftovers": left}
    if left:
        ctx.result.notes.append(
            "objects Istio's installer made that no release renders were left as they are: "
            f"{', '.join(left)}; delete them once nothing needs them"
        )


def refuse_other_releases(ctx: RunContext, plans: Sequence[Any], namespace: str) -> None:
    """Read-only, before the first write: `--take-ownership` skips Helm's own check, so an
    object a release would adopt that belongs to another Helm release (its
    `meta.helm.sh/release-name`) is refused here, naming both; nothing is taken from another
    release. `plans`: phase 1's planned releases (`kymamesh.workflows.pipeline.PlannedRelease`)."""
    taken = []
    for plan in plans:
        if plan.deployed is not None:
            continue  # the release exists: Helm checks ownership itself
        release = plan.row.release
        for rendered in ctx.helm.template(release, plan.chart, plan.values, namespace):
            if not isinstance(rendered, dict) or "kind" not in rendered:
                continue
            ref = _ref(rendered, namespace)
            live = ctx.cluster.get(ref)
            annotations = ((live or {}).get("metadata") or {}).get("annotations") or {}
            owner = annotations.get(HELM_RELEASE_ANNOTATION)
            if owner and owner != release:
                taken.append(f"{ref} (Helm release {owner}, wanted by {release})")
    if taken:
        raise PreconditionError(
            "--take-over would take objects from other Helm releases: " + ", ".join(taken),
            hint="uninstall those releases, or remove the objects from them, and re-run",
        )
