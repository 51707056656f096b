"""Step 1: mesh-wide strict mutual TLS.

The PeerAuthentication `default` in the mesh root namespace (istio-system),
without a selector, with `mtls.mode: STRICT`, labelled as kymamesh's. Istio
applies only the oldest mesh-wide PeerAuthentication when there are several,
so any other mesh-wide one in the root namespace that is weaker is set to
STRICT too (it is kept, not deleted: it is not kymamesh's).

Switching an existing mesh from PERMISSIVE (Istio's default when no mesh-wide
policy exists) or DISABLE to STRICT cuts off clients without a sidecar, so the
preflight asks first. On a cluster without istiod (an `install` before phase 1)
there is nothing to switch and nothing to ask.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from kymamesh.cluster import Cluster, Obj, Ref
from kymamesh.diffs import object_diff
from kymamesh.errors import PreconditionError, UsageError
from kymamesh.preflight import MANAGED_BY, istiod_deployments
from kymamesh.steps._configmaps import not_in_dry_run
from kymamesh.steps.base import Change, StepContext

KIND = "PeerAuthentication"
API_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")
STRICT = "STRICT"
KYMAMESH = "kymamesh"


def served_api_version(cluster: Cluster) -> str | None:
    """The newest served PeerAuthentication version, or None when the CRD is not served."""
    for api_version in API_VERSIONS:
        if cluster.serves(api_version, KIND):
            return api_version
    return None


def mode_of(policy: Mapping[str, Any]) -> str:
    """The mesh-level mode; a policy without one (UNSET) inherits Istio's default, PERMISSIVE."""
    mtls = (policy.get("spec") or {}).get("mtls") or {}
    return str(mtls.get("mode") or "UNSET").upper()


def is_mesh_wide(policy: Mapping[str, Any]) -> bool:
    """No selector (or one that selects nothing in particular): applies to the whole mesh."""
    selector = (policy.get("spec") or {}).get("selector") or {}
    return not (selector.get("matchLabels") or {})


def mesh_wide_policies(cluster: Cluster, api_version: str, namespace: str) -> list[Obj]:
    policies = cluster.list(api_version, KIND, namespace)
    return sorted(
        (p for p in policies if is_mesh_wide(p)),
        key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]),
    )


def _name_and_mode(params: Mapping[str, Any]) -> tuple[str, str]:
    name = params.get("name") or "default"
    mode = str(params.get("mode") or STRICT).upper()
    if mode != STRICT:
        raise UsageError(
            f"mtls-strict: mode {mode} would weaken mutual TLS; kymamesh only sets STRICT",
            hint="remove the mode setting from --config",
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

    def preflight(self, ctx: StepContext) -> str | None:
        _name_and_mode(ctx.params)
        api_version = served_api_version(ctx.cluster)
        present = bool(istiod_deployments(ctx.cluster, ctx.namespace))
        if api_version is None:
            if not present:
                return None  # nothing installed yet: phase 1 brings the CRDs, then STRICT is set
            raise _no_crd(ctx.namespace)
        policies = mesh_wide_policies(ctx.cluster, api_version, ctx.namespace)
        weak = [p for p in policies if mode_of(p) != STRICT]
        if weak:
            found = ", ".join(
                f"{mode_of(p)} in {KIND} {ctx.namespace}/{p['metadata']['name']}" for p in weak
            )
            what = f"mesh-wide mTLS is {found}"
        elif not policies and present:
            what = (
                f"mesh-wide mTLS is PERMISSIVE (Istio's default: no mesh-wide {KIND} "
                f"in {ctx.namespace})"
            )
        else:
            return None
        return (
            f"{what}; with STRICT, workloads without a sidecar can no longer reach workloads "
            "in the mesh. Switch mesh-wide mTLS to STRICT?"
        )

    def check(self, ctx: StepContext) -> list[Change]:
        name, mode = _name_and_mode(ctx.params)
        api_version = served_api_version(ctx.cluster)
        if api_version is None:
            if ctx.dry_run and not istiod_deployments(ctx.cluster, ctx.namespace):
                target = f"{KIND}/{ctx.namespace}/{name}"
                return [
                    Change(
                        target=target,
                        summary=f"create with mtls.mode {mode} (once phase 1 has installed the "
                        "Istio CRDs)",
                        apply=not_in_dry_run,
                        diff=object_diff(
                            None, _desired(API_VERSIONS[0], ctx.namespace, name, mode), target
                        ),
                    )
                ]
            raise _no_crd(ctx.namespace)
        desired = _desired(api_version, ctx.namespace, name, mode)
        ref = Ref.of(desired)
        changes = []
        live = ctx.cluster.get(ref)
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
        for other in mesh_wide_policies(ctx.cluster, api_version, ctx.namespace):
            if other["metadata"]["name"] == name or mode_of(other) == mode:
                continue
            other_ref = Ref(api_version, KIND, other["metadata"]["name"], ctx.namespace)
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
