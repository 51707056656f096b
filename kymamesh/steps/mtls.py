"""Step 1: mesh-wide strict mutual TLS.

The PeerAuthentication `default` in the mesh root namespace (`rootNamespace` of
each control plane's mesh config; the istiod namespace when unset), without a
selector, with `mtls.mode: STRICT`, labelled as kymamesh's. Istio applies only
the oldest mesh-wide PeerAuthentication when there are several, so any other
mesh-wide one in the root namespace that is weaker is set to STRICT too (it is
kept, not deleted: it is not kymamesh's).

Switching an existing mesh from PERMISSIVE (Istio's default when no mesh-wide
policy exists) or DISABLE to STRICT cuts off clients without a sidecar, so the
preflight asks first. On a cluster without istiod (an `install` before phase 1)
there is nothing to switch and nothing to ask.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from kymamesh.adapters.cluster import Cluster, Obj, Ref
from kymamesh.diffs import object_diff
from kymamesh.errors import InsecureValuesError, PreconditionError
from kymamesh.istio.controlplane import (
    PEER_AUTHENTICATION,
    SECURITY_API_VERSIONS,
    is_mesh_wide,
    mesh_wide_policies,
    root_namespaces,
    served_peer_authentication,
)
from kymamesh.istio.controlplane import (
    mtls_mode_of as mode_of,
)
from kymamesh.istio.preflight import MANAGED_BY
from kymamesh.steps._configmaps import not_in_dry_run
from kymamesh.steps.base import ONCE_ISTIOD_ANSWERS, Change, StepContext

KIND = PEER_AUTHENTICATION
STRICT = "STRICT"
KYMAMESH = "kymamesh"


def _name_and_mode(params: Mapping[str, Any]) -> tuple[str, str]:
    name = params.get("name") or "default"
    mode = str(params.get("mode") or STRICT).upper()
    if mode != STRICT:
        raise InsecureValuesError(  # a well-formed setting that weakens security: as --set
            f"mtls-strict: mode {mode} would weaken mutual TLS; kymamesh only sets STRICT",
            hint="remove the mode setting from --config (or set it to STRICT)",
        )
    return str(name), mode


def _no_crd(namespace: str) -> PreconditionError:
    return PreconditionError(
        f"the API server does not serve {KIND} (security.istio.io) although istiod runs in "
        f"{namespace}",
        hint="install the Istio CRDs (the `base` chart, release istio-base) and re-run",
    )


class PeerAuthenticationStep:
    PARAMS: ClassVar[frozenset[str]] = frozenset({"name", "mode"})
    RUNS_ONCE: ClassVar[str] = ONCE_ISTIOD_ANSWERS

    def preflight(self, ctx: StepContext) -> str | None:
        _name_and_mode(ctx.params)
        api_version = served_peer_authentication(ctx.cluster)
        present = ctx.istio_present
        roots = root_namespaces(ctx.control_planes)
        for root in roots:
            if root != ctx.namespace:  # the Istio namespace is made by the run itself
                _require_namespace(ctx.cluster, root)
        if api_version is None:
            if not present:
                return None  # nothing installed yet: phase 1 brings the CRDs, then STRICT is set
            raise _no_crd(ctx.namespace)
        found = []
        for root in roots:
            policies = mesh_wide_policies(ctx.cluster, api_version, root)
            found += [
                f"{mode_of(p)} in {KIND} {root}/{p['metadata']['name']}"
                for p in policies
                if mode_of(p) != STRICT
            ]
            if not policies and present:
                found.append(f"PERMISSIVE (Istio's default: no mesh-wide {KIND} in {root})")
        if not found:
            return None
        return (
            f"mesh-wide mTLS is {', '.join(found)}; with STRICT, workloads without a sidecar "
            "can no longer reach workloads in the mesh. Switch mesh-wide mTLS to STRICT?"
        )

    def check(self, ctx: StepContext) -> list[Change]:
        name, mode = _name_and_mode(ctx.params)
        api_version = served_peer_authentication(ctx.cluster)
        if api_version is None:
            if ctx.dry_run and not ctx.istio_present:
                return [_pending(root, name, mode) for root in root_namespaces(ctx.control_planes)]
            raise _no_crd(ctx.namespace)
        changes = []
        for root in root_namespaces(ctx.control_planes):
            if root != ctx.namespace:  # istiod runs in its own namespace: that one exists
                _require_namespace(ctx.cluster, root)
            changes += _root_changes(ctx.cluster, api_version, root, name, mode)
        return changes


def _require_namespace(cluster: Cluster, root: str) -> None:
    if cluster.get(Ref("v1", "Namespace", root)) is None:
        raise PreconditionError(
            f"the mesh root namespace {root} (meshConfig.rootNamespace) does not exist, so the "
            f"mesh-wide {KIND} cannot be written there",
            hint=f"create namespace {root}, or set istiod's meshConfig.rootNamespace to an "
            "existing namespace",
        )


def _pending(root: str, name: str, mode: str) -> Change:
    target = f"{KIND}/{root}/{name}"
    return Change(
        target=target,
        summary=f"create with mtls.mode {mode} (once phase 1 has installed the Istio CRDs)",
        apply=not_in_dry_run,
        diff=object_diff(None, _desired(SECURITY_API_VERSIONS[0], root, name, mode), target),
    )


def _root_changes(
    cluster: Cluster, api_version: str, root: str, name: str, mode: str
) -> list[Change]:
    """The changes that make mesh-wide mTLS STRICT in one mesh root namespace."""
    desired = _desired(api_version, root, name, mode)
    ref = Ref.of(desired)
    changes = []
    live = cluster.get(ref)
    if live is None:
        changes.append(
            Change(
                target=str(ref),
                summary=f"created with mtls.mode {mode}",
                apply=lambda cluster: _create(cluster, desired),
                diff=object_diff(None, desired, str(ref)),
            )
        )
    else:
        reasons = []
        patch: dict[str, Any] = {}
        if mode_of(live) != mode:
            reasons.append(f"mtls.mode {mode_of(live)} -> {mode}")
            patch["spec"] = {"mtls": {"mode": mode}}
        if not is_mesh_wide(live):
            reasons.append("selector removed (mesh-wide)")
            patch.setdefault("spec", {})["selector"] = None
        labels = live["metadata"].get("labels") or {}
        if labels.get(MANAGED_BY) != KYMAMESH:
            reasons.append(f"labelled {MANAGED_BY}={KYMAMESH}")
            patch["metadata"] = {"labels": {MANAGED_BY: KYMAMESH}}
        if reasons:
            changes.append(
                Change(
                    target=str(ref),
                    summary=", ".join(reasons),
                    apply=_patcher(ref, patch),
                    diff=object_diff(live, desired, str(ref)),
                )
            )
    for other in mesh_wide_policies(cluster, api_version, root):
        if other["metadata"]["name"] == name or mode_of(other) == mode:
            continue
        other_ref = Ref(api_version, KIND, other["metadata"]["name"], root)
        wanted = {**other, "spec": {**(other.get("spec") or {}), "mtls": {"mode": mode}}}
        changes.append(
            Change(
                target=str(other_ref),
                summary=f"mtls.mode {mode_of(other)} -> {mode} (another mesh-wide policy; "
                "Istio applies the oldest one)",
                apply=_patcher(other_ref, {"spec": {"mtls": {"mode": mode}}}),
                diff=object_diff(other, wanted, str(other_ref)),
            )
        )
    return changes


def _desired(api_version: str, namespace: str, name: str, mode: str) -> Obj:
    return {
        "apiVersion": api_version,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": {MANAGED_BY: KYMAMESH}},
        "spec": {"mtls": {"mode": mode}},
    }


def _create(cluster: Cluster, desired: Obj) -> None:
    cluster.apply(desired)


def _patcher(ref: Ref, patch: Mapping[str, Any]) -> Callable[[Cluster], None]:
    def apply(cluster: Cluster) -> None:
        cluster.merge_patch(ref, patch)

    return apply
