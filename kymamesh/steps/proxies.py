"""Step `restart-proxies`: name the workloads whose sidecar is out of date; restart on request.

istiod picks up changed ConfigMaps by itself, but a running sidecar keeps the
image and resources it was injected with until its Pod is re-created. By
default (`restart: false`) the step only lists such workloads, as a note and not
as a change, so a re-run still writes nothing. With `restart: true`
(`--restart-proxies`) each Deployment, StatefulSet or DaemonSet among them is
restarted the way `kubectl rollout restart` does it: a new
`kubectl.kubernetes.io/restartedAt` annotation on its Pod template.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

from kymamesh.cluster import Cluster, Ref
from kymamesh.errors import UsageError
from kymamesh.sidecars import (
    RESTARTED_AT,
    OutdatedWorkload,
    find_outdated,
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
            changes.append(_restart_change(ref, entry))
        if pinned:
            _note(
                ctx,
                "not restarted, because their Pod template sets the istio-proxy image itself "
                f"and a restart would bring the same one back: {_listing(pinned)}; update "
                "the image in the template (or use `image: auto`)",
            )
        if pending:
            _note(
                ctx,
                f"restart already under way (Pods not yet replaced): {_listing(pending)}",
            )
        return changes


def _restart_change(ref: Ref, entry: OutdatedWorkload) -> Change:
    def apply(cluster: Cluster) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}}
        cluster.merge_patch(ref, patch)

    return Change(
        target=str(entry.workload),
        summary=f"{entry.workload} restarted ({'; '.join(entry.reasons)})",
        apply=apply,
        diff=f"  {entry.workload}: spec.template.metadata.annotations[{RESTARTED_AT}] = <now>",
    )
