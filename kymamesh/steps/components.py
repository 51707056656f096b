"""Step `mesh-components`: the mesh file's settings of istiod and the gateways.

HPA bounds, rollout strategy and resources of istiod, of the ingress gateway and of the
egress gateway (a Helm release phase 1 makes when the mesh file enables it), the
gateway Service's `externalTrafficPolicy`, and istiod's experimental features. Most of
them are values of Istio's charts, which `install` passes to phase 1
(`kymamesh.meshfile.chart_values`), so after an install this step finds them in place.
It checks them in the live objects all the same and edits what differs: what no chart
sets (the gateway's rollout strategy), and, on an Istio kymamesh did not install
(`patch --existing-istio`), everything. An object that does not exist (no HPA because
autoscaling is off) is named in a note, not made.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from kymamesh import meshfile
from kymamesh.adapters.cluster import Cluster, Obj, Ref
from kymamesh.diffs import unified
from kymamesh.errors import UsageError
from kymamesh.steps.base import ONCE_CHARTS_DONE, Change, StepContext
from kymamesh.units import same_quantity

COMPONENTS_KIND = "mesh-components"
ISTIOD_CONTAINER = "discovery"
GATEWAY_CONTAINER = "istio-proxy"
DEFAULT_GATEWAY = "istio-ingressgateway"


def _k8s_field() -> meshfile.Field:
    return meshfile.SCHEMA.child("components").child("pilot").child("k8s")


def components_wanted(params: Mapping[str, Any]) -> dict[str, Any]:
    """The step's parameters, each checked as its mesh file field."""
    step = "mesh-components"
    out: dict[str, Any] = {}
    for name in ("pilot", "ingressGateway"):
        if params.get(name) is not None:
            out[name] = meshfile.check_value(params[name], _k8s_field(), step, name)
    if params.get("egressGateway") is not None:
        f = meshfile.SCHEMA.child("components").child("egressGateway")
        out["egressGateway"] = meshfile.check_value(
            params["egressGateway"], f, step, "egressGateway"
        )
    policy = params.get("gatewayExternalTrafficPolicy")
    if policy is not None:
        f = meshfile.SCHEMA.child("config").child("gatewayExternalTrafficPolicy")
        out["gatewayExternalTrafficPolicy"] = meshfile.check_value(
            policy, f, step, "gatewayExternalTrafficPolicy"
        )
    if params.get("experimental") is not None:
        f = meshfile.SCHEMA.child("experimental").child("pilot")
        out["experimental"] = meshfile.check_value(params["experimental"], f, step, "experimental")
    mode = params.get("compatibilityMode")
    if mode is not None:
        out["compatibilityMode"] = meshfile.check_value(
            mode, meshfile.SCHEMA.child("compatibilityMode"), step, "compatibilityMode"
        )
    gateway = params.get("gatewayName", DEFAULT_GATEWAY)
    if not isinstance(gateway, str) or not gateway:
        raise UsageError(f"{step}: gatewayName must be the name of the ingress gateway Deployment")
    out["gatewayName"] = gateway
    return out


def _rolling(k8s: Mapping[str, Any]) -> dict[str, Any]:
    return dict((k8s.get("strategy") or {}).get("rollingUpdate") or {})


def _container(live: Obj, name: str) -> Mapping[str, Any] | None:
    spec = ((live.get("spec") or {}).get("template") or {}).get("spec") or {}
    return next((c for c in spec.get("containers") or [] if c.get("name") == name), None)


def _resource_gaps(live: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    have = live.get("resources") or {}
    gaps = []
    for kind in ("requests", "limits"):
        for name, value in sorted((wanted.get(kind) or {}).items()):
            found = (have.get(kind) or {}).get(name)
            if found is None or not same_quantity(found, value):
                gaps.append(f"{kind}.{name} {found or 'unset'} -> {value}")
    return gaps


def _env_gaps(live: Mapping[str, Any], wanted: Mapping[str, str]) -> list[str]:
    have = {e.get("name"): e.get("value") for e in live.get("env") or []}
    return [f"env {k}={v}" for k, v in sorted(wanted.items()) if have.get(k) != v]


def _edit_container(
    name: str, resources: Mapping[str, Any] | None, env: Mapping[str, str]
) -> Callable[[Obj], Mapping[str, Any] | None]:
    """A merge patch of the Deployment's Pod template: this container's resources and env
    as wanted (the whole container list is sent, conditional on the resourceVersion)."""

    def edit(live: Obj) -> Mapping[str, Any] | None:
        spec = ((live.get("spec") or {}).get("template") or {}).get("spec") or {}
        containers = copy.deepcopy(spec.get("containers") or [])
        changed = False
        for container in containers:
            if container.get("name") != name:
                continue
            if resources and _resource_gaps(container, resources):
                merged = copy.deepcopy(container.get("resources") or {})
                for kind in ("requests", "limits"):
                    for key, value in (resources.get(kind) or {}).items():
                        merged.setdefault(kind, {})[key] = value
                container["resources"] = merged
                changed = True
            if env and _env_gaps(container, env):
                entries = [e for e in container.get("env") or [] if e.get("name") not in env]
                entries += [{"name": k, "value": v} for k, v in sorted(env.items())]
                container["env"] = entries
                changed = True
        if not changed:
            return None
        return {"spec": {"template": {"spec": {"containers": containers}}}}

    return edit


def _patch(patch: Mapping[str, Any]) -> Callable[[Obj], Mapping[str, Any]]:
    """An edit that sends the same merge patch whatever the live object."""

    def edit(live: Obj) -> Mapping[str, Any]:
        return patch

    return edit


def _change(
    target: str, summary: str, ref: Ref, edit: Callable[[Obj], Any], before: Any, after: Any
) -> Change:
    def apply(cluster: Cluster) -> None:
        cluster.update(ref, edit)

    return Change(target=target, summary=summary, apply=apply, diff=unified(before, after, target))


def _workload_changes(
    ctx: StepContext,
    deployment: Ref,
    container: str,
    k8s: Mapping[str, Any],
    env: Mapping[str, str],
    chart: str,
) -> list[Change]:
    """HPA bounds, rollout strategy, container resources and env of one Deployment."""
    changes: list[Change] = []
    live = ctx.cluster.get(deployment)
    if live is None:
        ctx.notes.append(f"mesh-components: {deployment} does not exist (yet): not checked")
        return changes
    hpa = k8s.get("hpaSpec") or {}
    if hpa:
        ref = Ref(
            "autoscaling/v2", "HorizontalPodAutoscaler", deployment.name, deployment.namespace
        )
        live_hpa = ctx.cluster.get(ref)
        if live_hpa is None:
            ctx.notes.append(
                f"mesh-components: no HorizontalPodAutoscaler {ref.namespace}/{ref.name} "
                f"(autoscaling is off in the {chart} chart's values): hpaSpec not applied"
            )
        else:
            spec = live_hpa.get("spec") or {}
            patch = {k: v for k, v in hpa.items() if spec.get(k) != v}
            if patch:
                target = f"HorizontalPodAutoscaler/{ref.namespace}/{ref.name}"
                changes.append(
                    _change(
                        target,
                        ", ".join(f"{k} {spec.get(k)} -> {v}" for k, v in patch.items()),
                        ref,
                        _patch({"spec": patch}),
                        {k: spec.get(k) for k in patch},
                        patch,
                    )
                )
    target = f"Deployment/{deployment.namespace}/{deployment.name}"
    rolling = _rolling(k8s)
    live_rolling = ((live.get("spec") or {}).get("strategy") or {}).get("rollingUpdate") or {}
    moved = {k: v for k, v in rolling.items() if str(live_rolling.get(k)) != str(v)}
    if moved:
        changes.append(
            _change(
                target,
                "strategy "
                + ", ".join(f"{k} {live_rolling.get(k)} -> {v}" for k, v in moved.items()),
                deployment,
                _patch({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": moved}}}),
                {k: live_rolling.get(k) for k in moved},
                moved,
            )
        )
    resources = k8s.get("resources") or {}
    box = _container(live, container)
    if box is not None:
        gaps = _resource_gaps(box, resources) + _env_gaps(box, env)
        if gaps:
            changes.append(
                _change(
                    target,
                    f"container {container}: " + ", ".join(gaps),
                    deployment,
                    _edit_container(container, resources, env),
                    {"resources": box.get("resources"), "env": box.get("env")},
                    {"resources": resources, "env": dict(env)},
                )
            )
    return changes


def _service_change(ctx: StepContext, name: str, policy: str) -> list[Change]:
    ref = Ref("v1", "Service", name, ctx.namespace)
    live = ctx.cluster.get(ref)
    if live is None:
        ctx.notes.append(f"mesh-components: {ref} does not exist (yet): not checked")
        return []
    spec = live.get("spec") or {}
    found = spec.get("externalTrafficPolicy")
    if spec.get("type") not in ("LoadBalancer", "NodePort"):
        ctx.notes.append(
            f"mesh-components: Service {ctx.namespace}/{name} is of type {spec.get('type')}, "
            "which has no externalTrafficPolicy: gatewayExternalTrafficPolicy not applied"
        )
        return []
    if found == policy:
        return []
    target = f"Service/{ctx.namespace}/{name}"
    return [
        _change(
            target,
            f"externalTrafficPolicy {found} -> {policy}",
            ref,
            _patch({"spec": {"externalTrafficPolicy": policy}}),
            {"externalTrafficPolicy": found},
            {"externalTrafficPolicy": policy},
        )
    ]


class ComponentsStep:
    """istiod's and the ingress gateway's HPA, rollout strategy, resources and env, and the
    gateway Service's traffic policy, as the mesh file asks (see the module docstring)."""

    PARAMS: ClassVar[frozenset[str]] = frozenset(
        {
            "pilot",
            "ingressGateway",
            "egressGateway",
            "gatewayExternalTrafficPolicy",
            "experimental",
            "compatibilityMode",
            "gatewayName",
        }
    )
    RUNS_ONCE: ClassVar[str] = ONCE_CHARTS_DONE

    def preflight(self, ctx: StepContext) -> str | None:
        components_wanted(ctx.params)
        return None

    def check(self, ctx: StepContext) -> list[Change]:
        wanted = components_wanted(ctx.params)
        values = meshfile.chart_values(wanted)
        env = dict((values.get("istiod") or {}).get("env") or {})
        changes: list[Change] = []
        pilot = wanted.get("pilot") or {}
        if pilot or env:
            for plane in ctx.control_planes:
                if not plane.installed:
                    continue
                ref = Ref("apps/v1", "Deployment", plane.istiod, plane.namespace)
                changes += _workload_changes(ctx, ref, ISTIOD_CONTAINER, pilot, env, "istiod")
        gateway = wanted.get("ingressGateway") or {}
        name = wanted["gatewayName"]
        if gateway and ctx.istio_present:
            ref = Ref("apps/v1", "Deployment", name, ctx.namespace)
            changes += _workload_changes(ctx, ref, GATEWAY_CONTAINER, gateway, {}, "gateway")
        egress = wanted.get("egressGateway") or {}
        if meshfile.egress_enabled(wanted) and egress.get("k8s") and ctx.istio_present:
            ref = Ref("apps/v1", "Deployment", meshfile.EGRESS_RELEASE, ctx.namespace)
            changes += _workload_changes(ctx, ref, GATEWAY_CONTAINER, egress["k8s"], {}, "gateway")
        policy = wanted.get("gatewayExternalTrafficPolicy")
        if policy and ctx.istio_present:
            changes += _service_change(ctx, name, policy)
        return changes
