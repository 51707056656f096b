"""Rollouts of workloads: when one is finished, whether a restart is under way, and the
wait for a set of them.

`rollout_unfinished` is the one judge of "a rollout finished", as `kubectl rollout
status` judges it (seen by its controller, every replica updated and available, no old
one left); the restarts of outdated sidecars (`kymamesh.workloads.restarts`) and
`inject-namespace --wait` wait with it. (Whether a Helm release's objects are ready is
the cluster adapter's `not_ready_reason`.)

A wait reads the workloads it waits for with as few requests as their number allows:
one list per kind and namespace when several share them (`read_workloads`), so that a
batch of hundreds of restarts costs a handful of requests per look. It looks soon after
a change and then less often, up to once a second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from kymamesh.adapters.cluster import Cluster, Obj, Ref
from kymamesh.errors import WaitTimeoutError
from kymamesh.waits import wait_until

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
REPLICA_SET = "ReplicaSet"
FIRST_POLL_S = 0.05  # the first pause between two looks; then half as long again each time
MAX_POLL_S = 1.0
# Up to this many objects of one kind in one namespace are read one by one; more, with
# one list of the namespace; more such namespaces than _NAMESPACE_LISTS_AT_MOST, with one
# list of the cluster
_GET_AT_MOST = 2
_NAMESPACE_LISTS_AT_MOST = 4


def rollout_unfinished(kind: str, obj: Mapping[str, Any] | None) -> str | None:
    """None when the workload's rollout is complete (as `kubectl rollout status` judges it:
    seen by its controller, every replica updated and available, no old one left);
    otherwise what is missing. A Deployment whose new Pods cannot be made says why (its
    ReplicaFailure condition: a webhook or a quota refuses them)."""
    if obj is None:
        return "not found"
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    generation = int((obj.get("metadata") or {}).get("generation") or 0)
    if int(status.get("observedGeneration") or 0) < generation:
        return "rollout not yet observed by its controller"
    if kind == "DaemonSet":
        want = int(status.get("desiredNumberScheduled") or 0)
        updated = int(status.get("updatedNumberScheduled") or 0)
        available = int(status.get("numberAvailable") or 0)
        if updated < want:
            return f"{updated} of {want} Pods updated"
        if available < want:
            return f"{available} of {want} updated Pods available"
        return None
    want = wanted_replicas(obj)
    updated = int(status.get("updatedReplicas") or 0)
    total = int(status.get("replicas") or 0)
    if kind == "Deployment":
        available = int(status.get("availableReplicas") or 0)
        if updated < want:
            return f"{updated} of {want} replicas updated" + _replica_failure(status)
        if total > updated:
            return f"{total - updated} old replica(s) pending termination"
        if available < updated:
            return f"{available} of {updated} updated replicas available"
        return None
    if kind == "StatefulSet":
        ready = int(status.get("readyReplicas") or 0)
        partition = int(
            ((spec.get("updateStrategy") or {}).get("rollingUpdate") or {}).get("partition") or 0
        )
        if updated < want - partition:
            return f"{updated} of {want - partition} replicas updated"
        if ready < want:
            return f"{ready} of {want} replicas ready"
        if not partition and status.get("updateRevision") != status.get("currentRevision"):
            return "update revision not yet current"
        return None
    if kind == REPLICA_SET:
        ready = int(status.get("readyReplicas") or 0)
        if total != want:
            return f"{total} of {want} replicas"
        if ready < want:
            return f"{ready} of {want} replicas ready"
        return None
    return None


def _replica_failure(status: Mapping[str, Any]) -> str:
    for condition in status.get("conditions") or []:
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            return f"; {condition.get('reason')}: {condition.get('message') or 'no message'}"
    return ""


def wanted_replicas(workload: Mapping[str, Any]) -> int:
    """How many Pods the workload wants (a DaemonSet: as many as it is scheduled on)."""
    spec = workload.get("spec") or {}
    if workload.get("kind") == "DaemonSet":
        return int((workload.get("status") or {}).get("desiredNumberScheduled") or 0)
    return int(spec["replicas"]) if spec.get("replicas") is not None else 1


def on_delete(workload: Mapping[str, Any]) -> bool:
    """A StatefulSet or DaemonSet that replaces its Pods only when they are deleted."""
    strategy = ((workload.get("spec") or {}).get("updateStrategy") or {}).get("type")
    return strategy == "OnDelete"


def rollout_pending(workload: Mapping[str, Any], pod_restarts: Iterable[str | None]) -> bool:
    """True when a restart of the workload is under way: its Pod template carries a restart
    annotation that one of its out-of-date Pods was not made with (that Pod is of an older
    template; the rollout replaces it). Out-of-date Pods made by the current template need
    another restart. Exact where a timestamp is not: restartedAt and a Pod's creation both
    have one-second steps, and a Pod made in the second of the restart is common."""
    template = (workload.get("spec") or {}).get("template") or {}
    current = ((template.get("metadata") or {}).get("annotations") or {}).get(RESTARTED_AT)
    return current is not None and any(r != current for r in pod_restarts)


def restart_pending(workload: Mapping[str, Any], oldest_pod: datetime | None) -> bool:
    """True when the workload was restarted after its oldest out-of-date Pod was made.

    The rollout replaces that Pod; restarting again would only churn. For callers that do
    not know which template each Pod was made with; `rollout_pending` is exact.
    """
    template = (workload.get("spec") or {}).get("template") or {}
    raw = ((template.get("metadata") or {}).get("annotations") or {}).get(RESTARTED_AT)
    if not raw or oldest_pod is None:
        return False
    try:
        restarted = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        return False
    return restarted >= oldest_pod


# -- reading and waiting -------------------------------------------------------------


def read_workloads(cluster: Cluster, refs: Iterable[Ref]) -> dict[Ref, Obj | None]:
    """The live objects of `refs` (None: gone): a few of one kind and namespace one by
    one, more with one list of their namespace, or of the cluster when they are spread
    over many namespaces. The number of requests does not grow with the workloads."""
    wanted = list(dict.fromkeys(refs))
    groups: dict[tuple[str, str], dict[str, list[Ref]]] = {}
    for ref in wanted:
        groups.setdefault((ref.api_version, ref.kind), {}).setdefault(ref.namespace, []).append(ref)
    found: dict[Ref, Obj | None] = {}
    for (api_version, kind), by_namespace in groups.items():
        crowded = [ns for ns, members in by_namespace.items() if len(members) > _GET_AT_MOST]
        whole = len(crowded) > _NAMESPACE_LISTS_AT_MOST
        if whole:
            sources = [cluster.list(api_version, kind)]
        else:
            sources = [cluster.list(api_version, kind, ns) for ns in crowded]
        listed: dict[tuple[str, str], Obj] = {}
        for items in sources:
            for obj in items:
                meta = obj.get("metadata") or {}
                listed[(str(meta.get("namespace") or ""), str(meta.get("name")))] = obj
        for namespace, members in by_namespace.items():
            for ref in members:
                if whole or namespace in crowded:
                    found[ref] = listed.get((namespace, ref.name))
                else:
                    found[ref] = cluster.get(ref)
    return found


def poll(
    check: Callable[[], list[str]], timeout: float, fail: Callable[[list[str]], Exception]
) -> None:
    """`waits.wait_until` over a check that lists what is still waited for: soon after the
    start, then less often (FIRST_POLL_S, growing by half up to MAX_POLL_S). On timeout,
    raise `fail(what is still waited for)`."""
    last: list[str] = []

    def pending() -> str | None:
        last[:] = check()
        return "; ".join(last) or None

    try:
        wait_until(pending, timeout, str, hint="", first=FIRST_POLL_S, most=MAX_POLL_S, grow=1.5)
    except WaitTimeoutError:
        raise fail(list(last)) from None


def unfinished(cluster: Cluster, refs: Iterable[Ref]) -> list[str]:
    """Each workload of `refs` whose rollout is not finished: `Kind/ns/name (why)`."""
    live = read_workloads(cluster, refs)
    return [
        f"{ref.kind}/{ref.namespace}/{ref.name} ({why})"
        for ref, obj in live.items()
        if (why := rollout_unfinished(ref.kind, obj)) is not None
    ]


def wait_for_rollouts(
    cluster: Cluster, refs: list[Ref], timeout: float, fail: Callable[[list[str]], Exception]
) -> None:
    """Wait until every rollout of `refs` is finished; on timeout raise `fail(the
    unfinished ones, as `unfinished` names them)`."""
    poll(lambda: unfinished(cluster, refs), timeout, fail)
