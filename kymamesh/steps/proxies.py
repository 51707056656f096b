"""Step `restart-proxies`: name the workloads whose sidecar is out of date; restart on request.

istiod picks up changed ConfigMaps by itself, but a running sidecar keeps the
image and resources it was injected with until its Pod is re-created. By
default (`restart: false`) the step only lists such workloads, as a note and not
as a change, so a re-run still writes nothing. With `restart: true`
(`--restart-proxies`) each Deployment, StatefulSet or DaemonSet among them is
restarted the way `kubectl rollout restart` does it: a new
`kubectl.kubernetes.io/restartedAt` annotation on its Pod template.

A restart is worth it only once istiod's injector gives the new sidecar: istiod reads
its ConfigMaps from a volume, which the kubelet refreshes up to a minute or more after a
change (a patch run changes them just before this step). So before restarting a
workload, the step asks the API server for a dry-run Pod of its template and waits, up
to --timeout, until the sidecar injected into that Pod is current.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

from kymamesh.cluster import Cluster, Obj, Ref
from kymamesh.errors import ApiError, UsageError, WaitTimeoutError
from kymamesh.sidecars import (
    RESTARTED_AT,
    OutdatedWorkload,
    control_plane,
    find_outdated,
    outdated_reasons,
    proxy_container,
    restart_pending,
    template_proxy_version,
)
from kymamesh.steps.base import Change, StepContext


def _note(ctx: StepContext, text: str) -> None:
    if text not in ctx.notes:
        ctx.notes.append(text)


def _restart(params: Mapping[str, Any]) -> bool:
    value = params.get("restart", False)
    if not isinstance(value, bool):
        raise UsageError(f"restart-proxies: restart must be true or false, not {value!r}")
    return value


def _listing(items: list[OutdatedWorkload]) -> str:
    return ", ".join(o.describe() for o in items)


class RestartProxiesStep:
    """Lists (and with `restart: true` restarts) workloads with out-of-date sidecars."""

    PARAMS: ClassVar[frozenset[str]] = frozenset({"restart"})

    def preflight(self, ctx: StepContext) -> str | None:
        _restart(ctx.params)
        return None

    def check(self, ctx: StepContext) -> list[Change]:
        restart = _restart(ctx.params)
        outdated = find_outdated(ctx.cluster, ctx.namespace)
        if not outdated:
            return []
        others = [o for o in outdated if not o.workload.restartable]
        if others:
            _note(
                ctx,
                f"out-of-date sidecars in Pods that kymamesh cannot restart: {_listing(others)}; "
                "re-create these Pods yourself",
            )
        restartable = [o for o in outdated if o.workload.restartable]
        if not restartable:
            return []
        if not restart:
            _note(
                ctx,
                f"{len(restartable)} workload(s) run out-of-date sidecars: "
                f"{_listing(restartable)}; "
                "restart them to update (re-run with --restart-proxies, or `kubectl rollout "
                "restart`)",
            )
            return []
        changes = []
        pending = []
        pinned = []
        uninjected = []
        self_set = []
        for entry in restartable:
            workload = entry.workload
            ref = Ref("apps/v1", workload.kind, workload.name, workload.namespace)
            live = ctx.cluster.get(ref)
            if live is None:
                continue
            if template_proxy_version(live) in entry.versions:
                pinned.append(entry)
                continue
            if restart_pending(live, entry.oldest_pod):
                pending.append(entry)
                continue
            gives = injector_gives(ctx.cluster, live, ctx.namespace)
            if gives is None:
                uninjected.append(entry)
                continue
            if gives and _template_sets_proxy_resources(live):
                self_set.append(entry)  # they override the injector's: a restart changes nothing
                continue
            changes.append(_restart_change(ref, entry, ctx.namespace, ctx.timeout))
        if pinned:
            _note(
                ctx,
                "not restarted, because their Pod template sets the istio-proxy image itself "
                f"and a restart would bring the same one back: {_listing(pinned)}; update "
                "the image in the template (or use `image: auto`)",
            )
        if self_set:
            _note(
                ctx,
                "not restarted, because their Pod template sets the istio-proxy resources "
                f"itself, which override the injector's: {_listing(self_set)}; change them in "
                "the template (or remove them to take the injector's)",
            )
        if uninjected:
            _note(
                ctx,
                "not restarted, because their new Pods would get no sidecar at all (injection "
                "is off for them, or istiod's injector does not answer and its webhook lets "
                f"Pods through): {_listing(uninjected)}",
            )
        if pending:
            _note(
                ctx,
                f"restart already under way (Pods not yet replaced): {_listing(pending)}",
            )
        return changes


def _restart_change(
    ref: Ref, entry: OutdatedWorkload, istio_namespace: str, timeout: float
) -> Change:
    def apply(cluster: Cluster) -> None:
        wait_for_injector(cluster, ref, istio_namespace, timeout)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}}
        cluster.merge_patch(ref, patch)

    return Change(
        target=str(entry.workload),
        summary=f"{entry.workload} restarted ({'; '.join(entry.reasons)})",
        apply=apply,
        diff=f"  {entry.workload}: spec.template.metadata.annotations[{RESTARTED_AT}] = <now>",
    )


def _template_sets_proxy_resources(workload: Obj) -> bool:
    template = (workload.get("spec") or {}).get("template") or {}
    return bool((proxy_container({"spec": template.get("spec") or {}}) or {}).get("resources"))


def _probe_pod(workload: Obj) -> Obj:
    """A Pod of the workload's template, to be created as a dry run only."""
    meta = workload["metadata"]
    template = (workload.get("spec") or {}).get("template") or {}
    tmeta = template.get("metadata") or {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"{meta['name']}-",
            "namespace": meta["namespace"],
            "labels": dict(tmeta.get("labels") or {}),
            "annotations": dict(tmeta.get("annotations") or {}),
        },
        "spec": template.get("spec") or {},
    }


def injector_gives(cluster: Cluster, workload: Obj, istio_namespace: str) -> list[str] | None:
    """What is still out of date in the sidecar the injector gives this workload's Pods now:
    [] when it is current, None when they would get none. A dry run: nothing is created."""
    versions, resources = control_plane(cluster, istio_namespace)
    try:
        pod = cluster.dry_run_create(_probe_pod(workload))
    except ApiError as exc:  # e.g. the injector refuses while istiod restarts
        return [f"the dry-run Pod was refused: {exc.message}"]
    if proxy_container(pod) is None:
        return None
    return outdated_reasons(pod, versions, resources)


def wait_for_injector(cluster: Cluster, ref: Ref, istio_namespace: str, timeout: float) -> None:
    """Wait until istiod injects a current sidecar into the workload's Pods."""
    deadline = time.monotonic() + timeout
    while True:
        workload = cluster.get(ref)
        if workload is None:
            return  # gone: nothing to restart, and merge_patch will say so
        reasons = injector_gives(cluster, workload, istio_namespace)
        if not reasons:  # current, or no sidecar at all (the step's check leaves those out)
            return
        if time.monotonic() >= deadline:
            raise WaitTimeoutError(
                f"{ref}: not restarted, because istiod's injector still gives an out-of-date "
                f"sidecar after {timeout:.0f}s ({'; '.join(reasons)})",
                hint="istiod reads its ConfigMaps from a volume the kubelet refreshes within "
                "a minute or two; check that istiod runs, then re-run with --restart-proxies",
            )
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
