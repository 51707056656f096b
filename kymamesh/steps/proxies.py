"""Step `restart-proxies`: name the workloads whose sidecar is out of date; restart on request.

istiod picks up changed ConfigMaps by itself, but a running sidecar keeps the
image and resources it was injected with until its Pod is re-created (after an
upgrade: the old version). By default (`restart: false`) the step only lists such
workloads, as notes and not as changes, so a re-run still writes nothing. With
`restart: true` (`--restart-proxies`) it restarts them, safely:

- the workloads of the system namespaces first (the Istio namespace, then
  `systemNamespaces`, by default `kyma-system`), then the rest; each group in batches
  of `batchSize` (`--restart-batch`), every rollout of a batch finished (as `kubectl
  rollout status` judges it, up to --timeout) before the next batch starts;
- a Deployment, StatefulSet or DaemonSet is restarted the way `kubectl rollout
  restart` does it, a new `kubectl.kubernetes.io/restartedAt` annotation on its Pod
  template (a StatefulSet or DaemonSet with the `OnDelete` strategy, which would ignore
  that, and a ReplicaSet without a Deployment: their outdated Pods are deleted one at a
  time, each replacement ready before the next);
- Jobs, bare Pods and Pods of other controllers are never touched, only listed with
  what to do; so are workloads opted out with `kymamesh.io/restart: "false"` on
  themselves or on their namespace, and Pods annotated `sidecar.istio.io/proxyImage`
  are not counted at all.

A restart is worth it only once istiod's injector gives the new sidecar: istiod reads
its ConfigMaps from a volume, which the kubelet refreshes up to a minute or more after a
change (a patch run changes them just before this step). So before restarting a
workload, the step asks the API server for a dry-run Pod of its template and waits, up
to --timeout, until the sidecar injected into that Pod is current.

`plan_restarts` and `restart_outdated` are the entry points for other callers (e.g. an
upgrade that moves workloads to another revision): a cluster, the Istio namespace and
`RestartOptions`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from kymamesh.cluster import Cluster, Obj, Ref
from kymamesh.errors import ApiError, UsageError, WaitTimeoutError
from kymamesh.sidecars import (
    RESTARTED_AT,
    OutdatedWorkload,
    Workload,
    control_plane,
    find_outdated,
    mesh_proxy_configs,
    on_delete,
    opted_out,
    outdated_reasons,
    proxy_container,
    restart_batches,
    restart_pending,
    rollout_pending,
    rollout_unfinished,
    template_proxy_version,
    what_to_do,
)
from kymamesh.steps.base import Change, StepContext

DEFAULT_BATCH_SIZE = 10
DEFAULT_SYSTEM_NAMESPACES = ("kyma-system",)
_POLL_S = 1.0
_REFUSED = "the dry-run Pod was refused: "


@dataclass(frozen=True)
class RestartOptions:
    """How to deal with outdated sidecars: list only, or restart in batches."""

    restart: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    system_namespaces: tuple[str, ...] = DEFAULT_SYSTEM_NAMESPACES  # after the Istio namespace
    timeout: float = 300.0  # each wait: the injector, one Pod's replacement, one batch


def restart_options(params: Mapping[str, Any], timeout: float = 300.0) -> RestartOptions:
    """The step's parameters, checked; a bad one is a usage error naming it."""
    restart = params.get("restart", False)
    if not isinstance(restart, bool):
        raise UsageError(f"restart-proxies: restart must be true or false, not {restart!r}")
    batch = params.get("batchSize", DEFAULT_BATCH_SIZE)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise UsageError(
            f"restart-proxies: batchSize must be a whole number of at least 1, not {batch!r}",
            hint="give --restart-batch N (N >= 1): how many workloads restart at once",
        )
    system = params.get("systemNamespaces", list(DEFAULT_SYSTEM_NAMESPACES))
    if not isinstance(system, list) or not all(isinstance(n, str) and n for n in system):
        raise UsageError(
            f"restart-proxies: systemNamespaces must be a list of namespace names, not {system!r}",
            hint="e.g. `systemNamespaces: [kyma-system]`",
        )
    return RestartOptions(restart, batch, tuple(system), timeout)


@dataclass
class RestartPlan:
    """What `plan_restarts` found: the restarts in order (`changes`, one per workload,
    batch by batch) and, as notes, everything listed but not restarted."""

    batches: list[list[OutdatedWorkload]] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    opted_out: list[OutdatedWorkload] = field(default_factory=list)
    manual: list[OutdatedWorkload] = field(default_factory=list)  # Jobs, bare Pods, ...
    pending: list[OutdatedWorkload] = field(default_factory=list)  # restarted, not yet done
    # every outdated workload found, with what kymamesh does about it: `restart` (template
    # annotation), `delete-pods`, `opted-out` or `manual` (never touched), and why
    actions: list[tuple[OutdatedWorkload, str, str]] = field(default_factory=list)

    def to_json(self) -> list[dict[str, Any]]:
        """`status -o json`'s `outdatedSidecars` (docs/reference/json-output.md)."""
        return [
            {
                "namespace": entry.workload.namespace,
                "kind": entry.workload.kind,
                "name": entry.workload.name,
                "pods": list(entry.pods),
                "reasons": list(entry.reasons),
                "action": action,
                "detail": detail,
            }
            for entry, action, detail in sorted(self.actions, key=_by_namespace)
        ]


def _by_namespace(row: tuple[OutdatedWorkload, str, str]) -> tuple[str, str, str]:
    w = row[0].workload
    return (w.namespace, w.kind, w.name)


def _listing(items: list[OutdatedWorkload]) -> str:
    return ", ".join(o.describe() for o in items)


def _workload_ref(entry: OutdatedWorkload) -> Ref:
    w = entry.workload
    return Ref(w.api_version, w.kind, w.name, w.namespace)


def _annotations(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return ((obj or {}).get("metadata") or {}).get("annotations") or {}


def _pending(live: Obj, entry: OutdatedWorkload) -> bool:
    """A restart of the workload is under way (by the Pods' restart annotations, when the
    finder recorded them; else by time)."""
    if entry.pod_restarts:
        return rollout_pending(live, entry.pod_restarts)
    return restart_pending(live, entry.oldest_pod)


def _deletes_pods(entry: OutdatedWorkload, live: Obj) -> bool:
    return entry.workload.by_deleting_pods or on_delete(live)


def plan_restarts(cluster: Cluster, istio_namespace: str, options: RestartOptions) -> RestartPlan:
    """Find the workloads with outdated sidecars and sort them: restarted (in batches,
    only with `options.restart`), opted out, left to the user, or not worth a restart.
    Read-only (the injector is asked with dry-run Pods); the changes write when applied."""
    return plan_restarts_for(
        cluster, istio_namespace, find_outdated(cluster, istio_namespace), options
    )


def plan_restarts_for(
    cluster: Cluster,
    istio_namespace: str,
    outdated: list[OutdatedWorkload],
    options: RestartOptions,
) -> RestartPlan:
    """`plan_restarts` for workloads the caller found (e.g. those whose Pods another
    revision now injects): the same opt-outs, checks, order and batches."""
    plan = RestartPlan()
    if not outdated:
        return plan
    plan.manual = [o for o in outdated if not o.workload.restartable]
    for entry in plan.manual:
        plan.actions.append((entry, "manual", what_to_do(entry.workload)))
        plan.notes.append(
            f"out-of-date sidecar in {entry.describe()}, not restarted: "
            + what_to_do(entry.workload)
        )
    namespaces: dict[str, Mapping[str, Any]] = {}
    candidates: list[tuple[OutdatedWorkload, Obj]] = []
    for entry in (o for o in outdated if o.workload.restartable):
        live = cluster.get(_workload_ref(entry))
        if live is None:
            continue
        ns = entry.workload.namespace
        if ns not in namespaces:
            namespaces[ns] = _annotations(cluster.get(Ref("v1", "Namespace", ns)))
        why = opted_out(_annotations(live), namespaces[ns])
        if why is not None:
            plan.opted_out.append(entry)
            plan.actions.append((entry, "opted-out", why))
            plan.notes.append(f"opted out, not restarted ({why}): {entry.describe()}")
            continue
        candidates.append((entry, live))
        if _deletes_pods(entry, live):
            how = "its outdated Pods are deleted one at a time (no Deployment restarts them)"
            plan.actions.append((entry, "delete-pods", how))
        else:
            plan.actions.append((entry, "restart", "restarted like `kubectl rollout restart`"))
    if not candidates:
        return plan
    if not options.restart:
        plan.notes.append(
            f"{len(candidates)} workload(s) run out-of-date sidecars: "
            f"{_listing([e for e, _ in candidates])}; "
            "restart them to update (re-run with --restart-proxies, or `kubectl rollout "
            "restart`)",
        )
        return plan
    pinned, self_set, uninjected = [], [], []
    chosen: dict[Workload, tuple[OutdatedWorkload, Obj]] = {}
    for entry, live in candidates:
        if template_proxy_version(live) in entry.versions:
            pinned.append(entry)
            continue
        if not _deletes_pods(entry, live) and _pending(live, entry):
            plan.pending.append(entry)
            continue
        gives = injector_gives(cluster, live, istio_namespace)
        if gives is None:
            uninjected.append(entry)
            continue
        if gives and _template_sets_proxy_resources(live):
            self_set.append(entry)  # they override the injector's: a restart changes nothing
            continue
        chosen[entry.workload] = (entry, live)
    if pinned:
        plan.notes.append(
            "not restarted, because their Pod template sets the istio-proxy image itself "
            f"and a restart would bring the same one back: {_listing(pinned)}; update "
            "the image in the template (or use `image: auto`)",
        )
    if self_set:
        plan.notes.append(
            "not restarted, because their Pod template sets the istio-proxy resources "
            f"itself, which override the injector's: {_listing(self_set)}; change them in "
            "the template (or remove them to take the injector's)",
        )
    if uninjected:
        plan.notes.append(
            "not restarted, because their new Pods would get no sidecar at all (injection "
            "is off for them, or istiod's injector does not answer and its webhook lets "
            f"Pods through): {_listing(uninjected)}",
        )
    if plan.pending:
        plan.notes.append(
            f"restart already under way (Pods not yet replaced): {_listing(plan.pending)}",
        )
    system = (istio_namespace, *options.system_namespaces)
    plan.batches = restart_batches([e for e, _ in chosen.values()], system, options.batch_size)
    templates = {w: obj for w, (_, obj) in chosen.items()}
    plan.changes = _changes(plan, templates, istio_namespace, options)
    return plan


def restart_outdated(
    cluster: Cluster, istio_namespace: str, options: RestartOptions
) -> RestartPlan:
    """Plan and carry out the restarts, batch by batch (see the module docstring). The
    caller holds kymamesh's lock. Returns the plan; its `changes` are what was done."""
    plan = plan_restarts(cluster, istio_namespace, options)
    for change in plan.changes:
        change.apply(cluster)
    return plan


# -- the changes -------------------------------------------------------------------


def _changes(
    plan: RestartPlan, live: Mapping[Workload, Obj], istio_namespace: str, opts: RestartOptions
) -> list[Change]:
    changes = []
    count = len(plan.batches)
    for number, batch in enumerate(plan.batches, start=1):
        label = f"batch {number}/{count}"
        later = [e for b in plan.batches[number:] for e in b]
        for position, entry in enumerate(batch):
            first = number == 1 and position == 0
            last = position == len(batch) - 1
            changes.append(
                _change(
                    entry,
                    _deletes_pods(entry, live[entry.workload]),
                    label,
                    istio_namespace,
                    opts,
                    before=plan.pending if first else [],
                    after=(batch, later) if last else None,
                )
            )
    return changes


def _change(
    entry: OutdatedWorkload,
    delete_pods: bool,
    label: str,
    istio_namespace: str,
    opts: RestartOptions,
    before: list[OutdatedWorkload],
    after: tuple[list[OutdatedWorkload], list[OutdatedWorkload]] | None,
) -> Change:
    """One workload's restart; the first also waits for restarts an earlier run left under
    way, the last of a batch for the whole batch's rollouts."""
    ref = _workload_ref(entry)
    reasons = "; ".join(entry.reasons)

    def apply(cluster: Cluster) -> None:
        if before:
            wait_for_rollouts(
                cluster, before, opts.timeout, "restarts begun by an earlier run", later=[entry]
            )
        wait_for_injector(cluster, ref, istio_namespace, opts.timeout)
        if delete_pods:
            delete_outdated_pods(cluster, ref, entry.pods, opts.timeout)
        else:
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}}
            cluster.merge_patch(ref, patch)
        if after is not None:
            batch, later = after
            wait_for_rollouts(cluster, batch, opts.timeout, label, later)

    if delete_pods:
        summary = f"{entry.workload}: Pods {', '.join(entry.pods)} deleted, {label} ({reasons})"
        diff = f"  {label}: {entry.workload}: delete Pods {', '.join(entry.pods)} one at a time"
    else:
        summary = f"{entry.workload} restarted, {label} ({reasons})"
        annotation = f"spec.template.metadata.annotations[{RESTARTED_AT}]"
        diff = f"  {label}: {entry.workload}: {annotation} = <now>"
    return Change(target=str(entry.workload), summary=summary, apply=apply, diff=diff)


def _restart_change(
    ref: Ref, entry: OutdatedWorkload, istio_namespace: str, timeout: float
) -> Change:
    """One workload's restart on its own, as the first version of this module made it (the
    injector waited for, no rollout waited for); `plan_restarts_for` is the entry point
    with batches, their waits and opt-outs."""
    options = RestartOptions(restart=True, batch_size=1, timeout=timeout)
    return _change(entry, False, "batch 1/1", istio_namespace, options, [], None)


def _poll(
    check: Callable[[], list[str]], timeout: float, fail: Callable[[list[str]], Exception]
) -> None:
    """Call `check` until it returns nothing left to wait for, up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        waiting = check()
        if not waiting:
            return
        if time.monotonic() >= deadline:
            raise fail(waiting)
        time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))


def wait_for_rollouts(
    cluster: Cluster,
    entries: list[OutdatedWorkload],
    timeout: float,
    label: str,
    later: list[OutdatedWorkload],
) -> None:
    """Wait until every rollout of `entries` is finished; on timeout name the unfinished
    ones and the workloads not restarted because of them."""

    def unfinished() -> list[str]:
        found = []
        for entry in entries:
            why = rollout_unfinished(entry.workload.kind, cluster.get(_workload_ref(entry)))
            if why is not None:
                found.append(f"{entry.workload} ({why})")
        return found

    def fail(waiting: list[str]) -> Exception:
        stopped = (
            f"; not restarted yet: {', '.join(str(e.workload) for e in later)}" if later else ""
        )
        return WaitTimeoutError(
            f"{label}: rollouts not finished after {timeout:.0f}s: {'; '.join(waiting)}{stopped}",
            hint="look at them (kubectl rollout status, kubectl describe); once they are "
            "done, re-run with --restart-proxies to go on (finished restarts are not repeated)",
        )

    _poll(unfinished, timeout, fail)


def _owned_pods(cluster: Cluster, owner: Obj) -> list[Obj]:
    uid = owner["metadata"].get("uid")
    return [
        p
        for p in cluster.list("v1", "Pod", owner["metadata"]["namespace"])
        if any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences") or [])
        and not p["metadata"].get("deletionTimestamp")
    ]


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def delete_outdated_pods(cluster: Cluster, ref: Ref, names: list[str], timeout: float) -> None:
    """Delete the workload's outdated Pods one at a time; after each, wait until the
    workload has all its replicas ready again, none of them the deleted one."""
    for name in names:
        owner = cluster.get(ref)
        if owner is None:
            return
        pod = cluster.get(Ref("v1", "Pod", name, ref.namespace))
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            continue
        uid = pod["metadata"].get("uid")
        cluster.delete(Ref("v1", "Pod", name, ref.namespace))

        def replaced(owner: Obj = owner, uid: Any = uid) -> list[str]:
            live = cluster.get(ref)
            if live is None:
                return []
            pods = [p for p in _owned_pods(cluster, live) if p["metadata"].get("uid") != uid]
            want = _wanted_pods(live)
            ready = sum(1 for p in pods if _ready(p))
            return [] if ready >= want else [f"{ready} of {want} Pods ready"]

        def fail(waiting: list[str], name: str = name) -> Exception:
            return WaitTimeoutError(
                f"{ref}: Pod {name} deleted, but its replacement is not ready after "
                f"{timeout:.0f}s ({'; '.join(waiting)})",
                hint="look at its Pods (kubectl describe); re-run with --restart-proxies to go on",
            )

        _poll(replaced, timeout, fail)


def _wanted_pods(workload: Obj) -> int:
    spec = workload.get("spec") or {}
    if workload.get("kind") == "DaemonSet":
        return int((workload.get("status") or {}).get("desiredNumberScheduled") or 0)
    return int(spec["replicas"]) if spec.get("replicas") is not None else 1


# -- the step --------------------------------------------------------------------


class RestartProxiesStep:
    """Lists (and with `restart: true` restarts) workloads with out-of-date sidecars."""

    PARAMS: ClassVar[frozenset[str]] = frozenset({"restart", "batchSize", "systemNamespaces"})

    def preflight(self, ctx: StepContext) -> str | None:
        restart_options(ctx.params, ctx.timeout)
        return None

    def check(self, ctx: StepContext) -> list[Change]:
        plan = plan_restarts(ctx.cluster, ctx.namespace, restart_options(ctx.params, ctx.timeout))
        for note in plan.notes:
            if note not in ctx.notes:
                ctx.notes.append(note)
        return plan.changes


# -- the injector ----------------------------------------------------------------


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
    versions, resources, images = control_plane(cluster, istio_namespace)
    mesh = mesh_proxy_configs(cluster, istio_namespace)
    try:
        pod = cluster.dry_run_create(_probe_pod(workload))
    except ApiError as exc:  # e.g. the injector refuses while istiod restarts, or a quota
        return [f"{_REFUSED}{exc.message}"]
    if proxy_container(pod) is None:
        return None
    return outdated_reasons(pod, versions, resources, images, mesh)


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
            if all(r.startswith(_REFUSED) for r in reasons):
                raise WaitTimeoutError(
                    f"{ref}: not restarted, because a dry-run Pod of its template is still "
                    f"refused after {timeout:.0f}s, so its new Pods would be too "
                    f"({'; '.join(r.removeprefix(_REFUSED) for r in reasons)})",
                    hint="fix what refuses the Pod (a ResourceQuota, an admission webhook, "
                    "istiod's injector), then re-run with --restart-proxies",
                )
            raise WaitTimeoutError(
                f"{ref}: not restarted, because istiod's injector still gives an out-of-date "
                f"sidecar after {timeout:.0f}s ({'; '.join(reasons)})",
                hint="istiod reads its ConfigMaps from a volume the kubelet refreshes within "
                "a minute or two; check that istiod runs, then re-run with --restart-proxies",
            )
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
