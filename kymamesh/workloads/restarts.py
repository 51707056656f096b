"""Restarting workloads whose sidecar is out of date: who may be restarted, in which
order, and how. Step `restart-proxies`, the canary's `upgrade promote` and `rollback`,
the in-place upgrade (`install --restart-proxies`) and `status` all plan with it.

istiod picks up changed ConfigMaps by itself, but a running sidecar keeps the image and
resources it was injected with until its Pod is re-created (after an upgrade: the old
version). A restart, when asked for, is safe:

- the workloads of the system namespaces first (the Istio namespace, then
  `systemNamespaces`, by default `kyma-system`), then the rest; each group in batches of
  `batchSize` (`--restart-batch`: a number of workloads, or a share of them such as
  `10%`), every rollout of a batch finished (as `kubectl rollout status` judges it, up to
  --timeout: `kymamesh.workloads.rollouts`) before the next batch starts, which it does as soon as
  the cluster has finished the last one;
- a Deployment, StatefulSet or DaemonSet is restarted the way `kubectl rollout restart`
  does it, a new `kubectl.kubernetes.io/restartedAt` annotation on its Pod template (a
  StatefulSet or DaemonSet with the `OnDelete` strategy, which would ignore that, and a
  ReplicaSet without a Deployment: their outdated Pods are deleted one at a time, each
  replacement ready before the next);
- Jobs, bare Pods and Pods of other controllers are never touched, only listed with
  what to do; so are workloads opted out with `kymamesh.io/restart: "false"` on
  themselves or on their namespace, and Pods annotated `sidecar.istio.io/proxyImage`
  are not counted at all.

A restart is worth it only once istiod's injector gives the new sidecar: istiod reads
its ConfigMaps from a volume, which the kubelet refreshes up to a minute or more after a
change (a patch run changes them just before this step). So before restarting, the
injector is asked with a dry-run Pod of the workload's template, and waited for, up to
--timeout, until the sidecar it injects is current.

What a plan costs does not grow with the workloads: the control planes are read once
(`sidecars.read_injectors`: istiod and two ConfigMaps per revision) and every Pod is
judged from that; Pods, ReplicaSets and the workloads are read with one list per kind
(`rollouts.read_workloads`); and the injector is asked once per Pod-template shape
(`template_shape`: what the injector reads to decide the sidecar that is judged), not
once per workload.

`plan_restarts` and `plan_restarts_for` are the entry points: a cluster, the Istio
namespace and `RestartOptions`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kymamesh.adapters.cluster import Cluster, Obj, Ref
from kymamesh.errors import ApiError, UsageError, WaitTimeoutError
from kymamesh.istio.controlplane import ControlPlane
from kymamesh.istio.sidecars import (
    Injectors,
    OutdatedWorkload,
    Workload,
    find_outdated,
    proxy_container,
    read_injectors,
    template_proxy_version,
)
from kymamesh.steps.base import Change
from kymamesh.waits import wait_until
from kymamesh.workloads.rollouts import (
    RESTARTED_AT,
    on_delete,
    poll,
    read_workloads,
    restart_pending,
    rollout_pending,
    wait_for_rollouts,
    wanted_replicas,
)

DEFAULT_BATCH_SIZE = 10
DEFAULT_SYSTEM_NAMESPACES = ("kyma-system",)
# On a workload or a namespace: "false" keeps kymamesh from restarting it (listed only);
# on a workload, "true" restarts it even in a namespace annotated "false".
RESTART_ANNOTATION = "kymamesh.io/restart"
_REFUSED = "the dry-run Pod was refused: "
_INJECTOR_POLL_S = 2.0


# -- options -----------------------------------------------------------------------


@dataclass(frozen=True)
class RestartOptions:
    """How to deal with outdated sidecars: list only, or restart in batches.

    `batch_size`: workloads per batch, or a share of the workloads to restart (`"10%"`).
    """

    restart: bool = False
    batch_size: int | str = DEFAULT_BATCH_SIZE
    system_namespaces: tuple[str, ...] = DEFAULT_SYSTEM_NAMESPACES  # after the Istio namespace
    timeout: float = 300.0  # each wait: the injector, one Pod's replacement, one batch

    def batch_of(self, total: int) -> int:
        """Workloads per batch when `total` are restarted (a share rounds up, at least 1)."""
        return batch_count(self.batch_size, total)


def parse_percent(value: str) -> int | None:
    """`"10%"` -> 10; None when `value` is not a whole percentage from 1 to 100."""
    number = value.strip()
    if not number.endswith("%") or not number[:-1].strip().isdigit():
        return None
    percent = int(number[:-1])
    return percent if 1 <= percent <= 100 else None


def batch_count(batch: int | str, total: int) -> int:
    if isinstance(batch, str):
        percent = parse_percent(batch) or 100
        return max(1, math.ceil(total * percent / 100))
    return batch


def restart_options(params: Mapping[str, Any], timeout: float = 300.0) -> RestartOptions:
    """The step's parameters, checked; a bad one is a usage error naming it."""
    restart = params.get("restart", False)
    if not isinstance(restart, bool):
        raise UsageError(f"restart-proxies: restart must be true or false, not {restart!r}")
    batch = params.get("batchSize", DEFAULT_BATCH_SIZE)
    valid = (isinstance(batch, str) and parse_percent(batch) is not None) or (
        isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1
    )
    if not valid:
        raise UsageError(
            f"restart-proxies: batchSize must be a whole number of at least 1, not {batch!r}",
            hint="give --restart-batch N (N >= 1): how many workloads restart at once, or "
            "a share of them from 1% to 100% (e.g. --restart-batch 10%)",
        )
    system = params.get("systemNamespaces", list(DEFAULT_SYSTEM_NAMESPACES))
    if not isinstance(system, list) or not all(isinstance(n, str) and n for n in system):
        raise UsageError(
            f"restart-proxies: systemNamespaces must be a list of namespace names, not {system!r}",
            hint="e.g. `systemNamespaces: [kyma-system]`",
        )
    return RestartOptions(restart, batch, tuple(system), timeout)


# -- who may be restarted, and in which order ----------------------------------------


def opted_out(
    workload_annotations: Mapping[str, Any], namespace_annotations: Mapping[str, Any]
) -> str | None:
    """Why a workload must not be restarted (RESTART_ANNOTATION), or None.

    The workload's own annotation wins over its namespace's. "false" opts out, "true"
    opts in; any other value opts out too (kymamesh does not guess: it leaves it alone).
    """
    for where, found in (
        ("workload", workload_annotations),
        ("namespace", namespace_annotations),
    ):
        raw = found.get(RESTART_ANNOTATION)
        if raw is None:
            continue
        value = str(raw).strip().lower()
        if value == "true":
            return None
        if value == "false":
            return f"its {where} is annotated {RESTART_ANNOTATION}=false"
        return (
            f"its {where} is annotated {RESTART_ANNOTATION}={raw!r}, which is neither "
            '"true" nor "false"'
        )
    return None


def what_to_do(workload: Workload) -> str:
    """For a workload kymamesh never restarts: how its owner gets the new sidecar."""
    if workload.kind == "Job":
        return (
            "a Job's Pods are never restarted; they get the new sidecar when the Job runs "
            "again (e.g. its CronJob's next run), or delete and re-create the Job"
        )
    if workload.kind == "Pod":
        return (
            "a bare Pod is never restarted; re-create it yourself (kubectl replace --force "
            "-f pod.yaml)"
        )
    return f"restart it through its controller ({workload.kind}), which kymamesh does not drive"


def restart_batches(
    entries: Iterable[OutdatedWorkload], system_namespaces: Iterable[str], batch_size: int
) -> list[list[OutdatedWorkload]]:
    """The order of the restarts: the system namespaces' workloads first (in the order of
    `system_namespaces`), then the rest; each group cut into batches of `batch_size`, so a
    batch never mixes system and other workloads. Within a group: by namespace, kind, name."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, not {batch_size}")
    order = {ns: i for i, ns in enumerate(dict.fromkeys(system_namespaces))}
    found = list(entries)

    def key(e: OutdatedWorkload) -> tuple[int, str, str, str]:
        w = e.workload
        return (order.get(w.namespace, len(order)), w.namespace, w.kind, w.name)

    system = sorted((e for e in found if e.workload.namespace in order), key=key)
    rest = sorted((e for e in found if e.workload.namespace not in order), key=key)
    batches = []
    for group in (system, rest):
        for start in range(0, len(group), batch_size):
            batches.append(group[start : start + batch_size])
    return batches


# -- the plan ------------------------------------------------------------------------


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


def workload_ref(workload: Workload) -> Ref:
    return Ref(workload.api_version, workload.kind, workload.name, workload.namespace)


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


def plan_restarts(
    cluster: Cluster,
    istio_namespace: str,
    options: RestartOptions,
    planes: Iterable[ControlPlane] | None = None,
) -> RestartPlan:
    """Find the workloads with outdated sidecars and sort them: restarted (in batches,
    only with `options.restart`), opted out, left to the user, or not worth a restart.
    Read-only (the injector is asked with dry-run Pods); the changes write when applied.
    `planes`: the control planes, when the caller has found them already."""
    injectors = read_injectors(cluster, istio_namespace, planes)
    outdated = find_outdated(cluster, injectors)
    return plan_restarts_for(cluster, istio_namespace, outdated, options, injectors)


def _namespace_annotations(
    cluster: Cluster, namespaces: Iterable[str]
) -> dict[str, Mapping[str, Any]]:
    wanted = sorted(set(namespaces))
    if len(wanted) > 2:  # one list instead of a read per namespace
        listed = {
            str(n["metadata"]["name"]): _annotations(n) for n in cluster.list("v1", "Namespace")
        }
        return {ns: listed.get(ns, {}) for ns in wanted}
    return {ns: _annotations(cluster.get(Ref("v1", "Namespace", ns))) for ns in wanted}


def plan_restarts_for(
    cluster: Cluster,
    istio_namespace: str,
    outdated: list[OutdatedWorkload],
    options: RestartOptions,
    injectors: Injectors | None = None,
    new_certificates: bool = False,
) -> RestartPlan:
    """`plan_restarts` for workloads the caller found (e.g. those whose Pods another
    revision now injects): the same opt-outs, checks, order and batches. `injectors`: the
    control planes as read for this plan (read when not given). `new_certificates`: the
    Pods need new certificates (a change of root), which a restart gives them even where
    their template pins the proxy's image or resources."""
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
    restartable = [o for o in outdated if o.workload.restartable]
    live_objects = read_workloads(cluster, (workload_ref(o.workload) for o in restartable))
    present = [
        (entry, obj)
        for entry in restartable
        if (obj := live_objects.get(workload_ref(entry.workload))) is not None
    ]
    namespaces = _namespace_annotations(cluster, (e.workload.namespace for e, _ in present))
    candidates: list[tuple[OutdatedWorkload, Obj]] = []
    for entry, live in present:
        why = opted_out(_annotations(live), namespaces[entry.workload.namespace])
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
    injector = InjectorAnswers(
        cluster, injectors or read_injectors(cluster, istio_namespace), options.timeout
    )
    pinned, self_set, uninjected = [], [], []
    chosen: dict[Workload, tuple[OutdatedWorkload, Obj]] = {}
    for entry, live in candidates:
        if not new_certificates and template_proxy_version(live) in entry.versions:
            pinned.append(entry)
            continue
        if not _deletes_pods(entry, live) and _pending(live, entry):
            plan.pending.append(entry)
            continue
        gives = injector.gives(live)
        if gives is None:
            uninjected.append(entry)
            continue
        if gives and not new_certificates and _template_sets_proxy_resources(live):
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
    batch = options.batch_of(len(chosen))
    plan.batches = restart_batches([e for e, _ in chosen.values()], system, batch)
    templates = {w: obj for w, (_, obj) in chosen.items()}
    plan.changes = _changes(plan, templates, injector.fresh(), options, not new_certificates)
    return plan


# -- the changes -------------------------------------------------------------------


PARALLEL_RESTARTS = 8  # restarts of one batch in flight at once (independent workloads)


def _changes(
    plan: RestartPlan,
    live: Mapping[Workload, Obj],
    injector: InjectorAnswers,
    opts: RestartOptions,
    current_sidecar: bool = True,
) -> list[Change]:
    """One change per workload, batch by batch; the first change of a batch carries out
    the whole batch (`_Batch`), the others are its parts, already done when applied.
    `current_sidecar`: each batch waits until the injector gives a current sidecar."""
    changes = []
    count = len(plan.batches)
    for number, members in enumerate(plan.batches, start=1):
        batch = _Batch(
            members=[(e, live[e.workload]) for e in members],
            label=f"batch {number}/{count}",
            later=[e for b in plan.batches[number:] for e in b],
            before=plan.pending if number == 1 else [],
            injector=injector,
            opts=opts,
            current_sidecar=current_sidecar,
        )
        changes += [_change(entry, obj, batch) for entry, obj in batch.members]
    return changes


@dataclass
class _Batch:
    """One batch of restarts: begun once the restarts an earlier run left under way (before
    the first batch) have finished and the injector gives each template shape of the batch
    its current sidecar; then every workload restarted, PARALLEL_RESTARTS at a time (after
    a refused one, no further restart starts); done when every rollout has finished."""

    members: list[tuple[OutdatedWorkload, Obj]]
    label: str
    later: list[OutdatedWorkload]
    before: list[OutdatedWorkload]
    injector: InjectorAnswers
    opts: RestartOptions
    current_sidecar: bool = True  # False: a restart is due whatever sidecar it gives
    started: bool = False

    def apply(self, cluster: Cluster) -> None:
        if self.started:
            return
        self.started = True
        first = self.members[0][0]
        if self.before:
            wait_for_restarts(
                cluster,
                self.before,
                self.opts.timeout,
                "restarts begun by an earlier run",
                later=[first],
            )
        for entry, live in self.members:
            if self.current_sidecar:
                self.injector.wait_current(workload_ref(entry.workload), live)
        self._restart_all(cluster)
        entries = [e for e, _ in self.members]
        wait_for_restarts(cluster, entries, self.opts.timeout, self.label, self.later)

    def _restart_all(self, cluster: Cluster) -> None:
        failed: list[Exception] = []

        def restart(member: tuple[OutdatedWorkload, Obj]) -> None:
            if failed:
                return
            try:
                _restart(cluster, member[0], member[1], self.opts.timeout)
            except Exception as exc:  # the first one is raised once the others in flight end
                failed.append(exc)

        if len(self.members) == 1:
            restart(self.members[0])
        else:
            workers = min(PARALLEL_RESTARTS, len(self.members))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(restart, self.members))
        if failed:
            raise failed[0]


def _restart(cluster: Cluster, entry: OutdatedWorkload, live: Obj, timeout: float) -> None:
    """One workload: a new restart annotation on its template, or its outdated Pods
    deleted one at a time."""
    ref = workload_ref(entry.workload)
    if _deletes_pods(entry, live):
        delete_outdated_pods(cluster, ref, entry.pods, timeout)
        return
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}}
    cluster.merge_patch(ref, patch)


def _change(entry: OutdatedWorkload, live: Obj, batch: _Batch) -> Change:
    """One workload's restart, as a part of its batch."""
    reasons = "; ".join(entry.reasons)
    label = batch.label
    if _deletes_pods(entry, live):
        summary = f"{entry.workload}: Pods {', '.join(entry.pods)} deleted, {label} ({reasons})"
        diff = f"  {label}: {entry.workload}: delete Pods {', '.join(entry.pods)} one at a time"
    else:
        summary = f"{entry.workload} restarted, {label} ({reasons})"
        annotation = f"spec.template.metadata.annotations[{RESTARTED_AT}]"
        diff = f"  {label}: {entry.workload}: {annotation} = <now>"
    return Change(target=str(entry.workload), summary=summary, apply=batch.apply, diff=diff)


def wait_for_restarts(
    cluster: Cluster,
    entries: list[OutdatedWorkload],
    timeout: float,
    label: str,
    later: list[OutdatedWorkload],
) -> None:
    """Wait until every rollout of `entries` is finished; on timeout name the unfinished
    ones and the workloads not restarted because of them."""

    def fail(waiting: list[str]) -> Exception:
        stopped = (
            f"; not restarted yet: {', '.join(str(e.workload) for e in later)}" if later else ""
        )
        return WaitTimeoutError(
            f"{label}: rollouts not finished after {timeout:.0f}s: {'; '.join(waiting)}{stopped}",
            hint="look at them (kubectl rollout status, kubectl describe); once they are "
            "done, re-run with --restart-proxies to go on (finished restarts are not repeated)",
        )

    wait_for_rollouts(cluster, [workload_ref(e.workload) for e in entries], timeout, fail)


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

        def replaced(uid: Any = uid) -> list[str]:
            live = cluster.get(ref)
            if live is None:
                return []
            pods = [p for p in _owned_pods(cluster, live) if p["metadata"].get("uid") != uid]
            want = wanted_replicas(live)
            ready = sum(1 for p in pods if _ready(p))
            return [] if ready >= want else [f"{ready} of {want} Pods ready"]

        def fail(waiting: list[str], name: str = name) -> Exception:
            return WaitTimeoutError(
                f"{ref}: Pod {name} deleted, but its replacement is not ready after "
                f"{timeout:.0f}s ({'; '.join(waiting)})",
                hint="look at its Pods (kubectl describe); re-run with --restart-proxies to go on",
            )

        poll(replaced, timeout, fail)


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


def _istio_key(key: str) -> bool:
    """A label or annotation of Istio's (`*.istio.io/...`, `istio.io/...`)."""
    domain, slash, _ = key.partition("/")
    return bool(slash) and (domain == "istio.io" or domain.endswith(".istio.io"))


def template_shape(workload: Obj, selector_labels: frozenset[str] = frozenset()) -> str:
    """What the injector reads to decide the sidecar that `outdated_reasons` judges, for a
    workload's Pods: its namespace (whose labels and admission rules apply), the Pod
    template's labels and annotations of Istio's (`*istio.io/*`: the revision, opt-in,
    resources, proxy config, templates), its `prometheus.io/*` annotations (Prometheus
    merge), the labels the injectors' never/alwaysInjectSelector read (`selector_labels`),
    the template's own `istio-proxy` container and `hostNetwork`. Workloads of one shape
    get the same sidecar, so the injector is asked once for all of them."""
    meta = workload.get("metadata") or {}
    template = (workload.get("spec") or {}).get("template") or {}
    tmeta = template.get("metadata") or {}
    spec = template.get("spec") or {}
    labels = {
        k: v
        for k, v in (tmeta.get("labels") or {}).items()
        if _istio_key(str(k)) or k in selector_labels
    }
    annotations = {
        k: v
        for k, v in (tmeta.get("annotations") or {}).items()
        if _istio_key(str(k)) or str(k).startswith("prometheus.io/")
    }
    proxy = proxy_container({"spec": spec})
    shape = [meta.get("namespace"), labels, annotations, proxy, bool(spec.get("hostNetwork"))]
    return json.dumps(shape, sort_keys=True, default=str)


class InjectorAnswers:
    """What istiod's injector gives the Pods of a template shape, asked with one dry-run
    Pod per shape: while planning, each shape's answer once; while restarting, until it
    is current (then no longer asked for that shape)."""

    def __init__(self, cluster: Cluster, injectors: Injectors, timeout: float) -> None:
        self.cluster = cluster
        self.injectors = injectors
        self.timeout = timeout
        self._planned: dict[str, list[str] | None] = {}
        self._current: set[str] = set()

    def fresh(self) -> InjectorAnswers:
        """The same, without the answers kept while planning: a restart asks again."""
        return InjectorAnswers(self.cluster, self.injectors, self.timeout)

    def _shape(self, workload: Obj) -> str:
        return template_shape(workload, self.injectors.selector_labels)

    def _ask(self, workload: Obj) -> list[str] | None:
        """What is still out of date in the sidecar the injector gives this workload's Pods
        now: [] when it is current, None when they would get none. A dry run."""
        try:
            pod = self.cluster.dry_run_create(_probe_pod(workload))
        except ApiError as exc:  # e.g. the injector refuses while istiod restarts, or a quota
            return [f"{_REFUSED}{exc.message}"]
        if proxy_container(pod) is None:
            return None
        return self.injectors.outdated(pod)

    def gives(self, workload: Obj) -> list[str] | None:
        """`_ask`, once per shape."""
        shape = self._shape(workload)
        if shape not in self._planned:
            self._planned[shape] = self._ask(workload)
        return self._planned[shape]

    def wait_current(self, ref: Ref, workload: Obj) -> None:
        """Wait until istiod injects a current sidecar (or none) into the workload's Pods."""
        shape = self._shape(workload)
        if shape in self._current:
            return
        last: list[str] = []

        def pending() -> str | None:
            last[:] = self._ask(workload) or []  # [] when current, or no sidecar at all
            return "; ".join(last) or None

        try:
            wait_until(
                pending,
                self.timeout,
                str,
                hint="",
                first=_INJECTOR_POLL_S,
                most=_INJECTOR_POLL_S,
            )
        except WaitTimeoutError:
            raise _injector_timeout(ref, list(last), self.timeout) from None
        self._current.add(shape)


def _injector_timeout(ref: Ref, reasons: list[str], timeout: float) -> WaitTimeoutError:
    if all(r.startswith(_REFUSED) for r in reasons):
        return WaitTimeoutError(
            f"{ref}: not restarted, because a dry-run Pod of its template is still "
            f"refused after {timeout:.0f}s, so its new Pods would be too "
            f"({'; '.join(r.removeprefix(_REFUSED) for r in reasons)})",
            hint="fix what refuses the Pod (a ResourceQuota, an admission webhook, "
            "istiod's injector), then re-run with --restart-proxies",
        )
    return WaitTimeoutError(
        f"{ref}: not restarted, because istiod's injector still gives an out-of-date "
        f"sidecar after {timeout:.0f}s ({'; '.join(reasons)})",
        hint="istiod reads its ConfigMaps from a volume the kubelet refreshes within "
        "a minute or two; check that istiod runs, then re-run with --restart-proxies",
    )
