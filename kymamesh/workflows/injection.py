"""`inject-namespace`: put a namespace's workloads into the mesh, or take them out.

Enabling labels the namespace `istio-injection=enabled` and the chosen
Deployments' Pod templates `sidecar.istio.io/inject: "true"` (Kyma's injection
policy is opt-in, so both are needed); changing the template rolls the
Deployment, and the new Pods get a sidecar from istiod's injector. Every name is
checked before anything is written, and labels already in place are not written
again. The report names the workloads whose running Pods still have no sidecar.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kymamesh.adapters.cluster import Obj, Ref
from kymamesh.context import RunContext
from kymamesh.diffs import unified_lines, yaml_lines
from kymamesh.errors import KymameshError, PreconditionError, UsageError, WaitTimeoutError
from kymamesh.istio.controlplane import INJECT_LABEL, INJECTION_LABEL, istiod_deployments
from kymamesh.istio.sidecars import (
    WorkloadSidecars,
    list_pods,
    replica_set_index,
    sidecar_coverage,
)
from kymamesh.output import ItemResult, Outcome
from kymamesh.workloads.rollouts import wait_for_rollouts

PHASE = "sidecar injection"
ENABLED = "enabled"
PROTECTED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")
_APPS = "apps/v1"


@dataclass(frozen=True)
class InjectRequest:
    namespace: str
    deployments: tuple[str, ...] = ()
    all_deployments: bool = False
    disable: bool = False
    wait: bool = False


@dataclass(frozen=True)
class LabelEdit:
    """One label to set (value) or remove (None) on one object, and where it sits."""

    ref: Ref
    path: tuple[str, ...]  # to the labels map, e.g. ("spec", "template", "metadata", "labels")
    key: str
    live: str | None
    wanted: str | None

    @property
    def needed(self) -> bool:
        return self.live != self.wanted

    def patch(self) -> dict[str, Any]:
        body: dict[str, Any] = {self.key: self.wanted}
        for part in reversed(self.path):
            body = {part: body}
        return body

    def summary(self) -> str:
        if self.wanted is None:
            return f"label {self.key} removed" if self.needed else f"no label {self.key}"
        return f"label {self.key}={self.wanted}"

    def diff(self) -> str:
        before = _label_lines(self.path, self.key, self.live)
        after = _label_lines(self.path, self.key, self.wanted)
        return unified_lines(list(before), list(after), str(self.ref))


@functools.lru_cache(maxsize=64)
def _label_lines(path: tuple[str, ...], key: str, value: str | None) -> tuple[str, ...]:
    """The YAML of a label edit's side, rendered once per run (not once per Deployment)."""
    body: dict[str, Any] = {key: value} if value is not None else {}
    for part in reversed(path):
        body = {part: body}
    return tuple(yaml_lines(body))


_TEMPLATE_LABELS = ("spec", "template", "metadata", "labels")


def _labels(obj: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any]:
    node: Any = obj
    for part in path:
        node = (node or {}).get(part) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else {}


def _template_inject(deployment: Mapping[str, Any]) -> str | None:
    value = _labels(deployment, _TEMPLATE_LABELS).get(INJECT_LABEL)
    return None if value is None else str(value)


def _check_request(ctx: RunContext, request: InjectRequest) -> None:
    if request.all_deployments and request.deployments:
        raise UsageError(
            "--all and --deployment exclude each other",
            hint="give --deployment NAME for some Deployments, or --all for every one",
        )
    if request.namespace in PROTECTED_NAMESPACES or request.namespace == ctx.namespace:
        raise UsageError(
            f"namespace {request.namespace} is a system namespace; kymamesh does not put it "
            "into the mesh",
            hint="label the namespaces of your own workloads",
        )


def plan(ctx: RunContext, request: InjectRequest) -> tuple[list[LabelEdit], list[Obj], list[Obj]]:
    """The label edits that bring the namespace to the requested state, the chosen
    Deployments and all of the namespace's; every name is checked before anything is
    written."""
    _check_request(ctx, request)
    cluster = ctx.cluster
    namespace = cluster.get(Ref("v1", "Namespace", request.namespace))
    if namespace is None:
        raise PreconditionError(
            f"namespace {request.namespace} not found",
            hint="create it first, or check --kubeconfig/--context",
        )
    if (namespace.get("metadata") or {}).get("deletionTimestamp"):
        raise PreconditionError(f"namespace {request.namespace} is being deleted")
    live = {
        str(d["metadata"]["name"]): d for d in cluster.list(_APPS, "Deployment", request.namespace)
    }
    if request.deployments:
        missing = [n for n in dict.fromkeys(request.deployments) if n not in live]
        if missing:
            known = ", ".join(sorted(live)) or "none"
            raise PreconditionError(
                f"Deployment{'s' if len(missing) > 1 else ''} not found in namespace "
                f"{request.namespace}: {', '.join(missing)}",
                hint=f"the Deployments there are: {known}; nothing was changed",
            )
        chosen = [live[n] for n in dict.fromkeys(request.deployments)]
    elif request.all_deployments:
        chosen = [live[n] for n in sorted(live)]
    elif request.disable:  # take every opted-in Deployment out
        chosen = [live[n] for n in sorted(live) if _template_inject(live[n]) == "true"]
    else:
        chosen = []

    ns_value = _labels(namespace, ("metadata", "labels")).get(INJECTION_LABEL)
    ns_live = None if ns_value is None else str(ns_value)
    # --disable removes only the label that enables injection (another value stays).
    ns_wanted = ENABLED if not request.disable else (None if ns_live == ENABLED else ns_live)
    edits = [
        LabelEdit(
            Ref("v1", "Namespace", request.namespace),
            ("metadata", "labels"),
            INJECTION_LABEL,
            ns_live,
            ns_wanted,
        )
    ]
    for deployment in chosen:
        live_value = _template_inject(deployment)
        edits.append(
            LabelEdit(
                Ref.of({**deployment, "apiVersion": _APPS, "kind": "Deployment"}),
                _TEMPLATE_LABELS,
                INJECT_LABEL,
                live_value,
                None if request.disable else "true",
            )
        )
    return edits, chosen, list(live.values())


PARALLEL_PATCHES = 8  # Deployment label patches in flight at once (independent objects)


def _patch_all(ctx: RunContext, edits: list[LabelEdit]) -> dict[int, KymameshError | None]:
    """Write the needed edits: the namespace's first, then the Deployments' side by side.

    Returns, by index in `edits`, None for a write made and the error of one that failed;
    after a failure no further write starts (the ones in flight finish), so the result
    says exactly what was written.
    """
    needed = [i for i, e in enumerate(edits) if e.needed]
    if not needed or ctx.options.dry_run:
        return {}
    ctx.before_write()
    done: dict[int, KymameshError | None] = {}
    failed = threading.Event()

    def write(i: int) -> None:
        if failed.is_set():
            return
        try:
            ctx.cluster.merge_patch(edits[i].ref, edits[i].patch())
        except KymameshError as exc:
            failed.set()
            done[i] = exc
        else:
            done[i] = None

    write(needed[0])  # the namespace label (or the first Deployment) alone: it may fail first
    rest = needed[1:]
    if rest and not failed.is_set():
        with ThreadPoolExecutor(max_workers=PARALLEL_PATCHES) as pool:
            list(pool.map(write, rest))
    return done


def run(ctx: RunContext, request: InjectRequest) -> None:
    """Apply the plan, wait if asked, and report which workloads run without sidecars.
    When something is to be written, the lock is taken and the plan made again under it
    (another run may have changed the namespace or its Deployments meanwhile)."""
    edits, chosen, deployments = plan(ctx, request)
    if any(e.needed for e in edits) and not ctx.options.dry_run and not ctx.locked:
        ctx.before_write()
        edits, chosen, deployments = plan(ctx, request)  # again, under the lock
    phase = ctx.result.phase(PHASE)
    ctx.progress.phase(PHASE)
    written = _patch_all(ctx, edits)
    first_error: KymameshError | None = None
    for index, edit in enumerate(edits):
        if edit.needed and not ctx.options.dry_run and index not in written:
            continue  # not attempted: an earlier write failed
        item = ItemResult(name=str(edit.ref), outcome=Outcome.UNCHANGED)
        phase.items.append(item)
        with ctx.progress.item(item.name) as tracker:
            if edit.needed:
                item.summary = edit.summary()
                item.changes = [f"{edit.ref}: {edit.summary()}"]
                item.diff = edit.diff()
                error = written.get(index)
                if ctx.options.dry_run:
                    item.outcome = Outcome.WOULD_CHANGE
                elif error is not None:
                    item.outcome = Outcome.FAILED
                    item.error = error.message
                    first_error = first_error or error
                    tracker.done(item.outcome, item.error)
                    item.duration_s = tracker.duration_s
                    continue
                else:
                    item.outcome = Outcome.CHANGED
            else:
                item.summary = f"already: {edit.summary()}"
            tracker.done(item.outcome, item.summary)
        item.duration_s = tracker.duration_s
    if first_error is not None:
        raise first_error
    refs = [Ref.of({**d, "apiVersion": _APPS, "kind": "Deployment"}) for d in chosen]
    if request.wait and refs and not ctx.options.dry_run:
        _wait_rollouts(ctx, refs)
    _report(ctx, request, edits, deployments, waited=request.wait and not ctx.options.dry_run)


def _wait_rollouts(ctx: RunContext, refs: list[Ref]) -> None:
    """Until every rollout is finished, as `kubectl rollout status` judges it
    (`kymamesh.workloads.rollouts`): every replica updated and available, no old one left."""

    def fail(waiting: list[str]) -> Exception:
        return WaitTimeoutError(
            f"timed out after {ctx.options.timeout:.0f}s; not rolled out: " + "; ".join(waiting),
            hint="look at these Deployments with kubectl rollout status; raise --timeout",
        )

    with ctx.progress.item(f"waiting for {len(refs)} rollout(s)") as tracker:
        wait_for_rollouts(ctx.cluster, refs, ctx.options.timeout, fail)
        tracker.done(Outcome.UNCHANGED, "rolled out")


def _report(
    ctx: RunContext,
    request: InjectRequest,
    edits: list[LabelEdit],
    deployments: list[Obj],
    waited: bool,
) -> None:
    """Notes and JSON data: each workload, its Pods, and how many have a sidecar."""
    cluster = ctx.cluster
    pods = list_pods(cluster, request.namespace)
    # the ReplicaSets tell which Deployment a Pod belongs to: read only when there are Pods
    # (a rollout of thousands of Deployments leaves as many ReplicaSets)
    owners = replica_set_index(cluster, request.namespace) if pods else {}
    coverage = sidecar_coverage(pods, owners)
    opted_in = {e.ref.name for e in edits[1:] if e.wanted == "true"} | _opted_in_deployments(
        deployments, edits
    )
    enabled = edits[0].wanted == ENABLED
    ctx.result.data.update(
        {
            "namespace": request.namespace,
            "injection": ENABLED if enabled else "disabled",
            "workloads": [
                {
                    "kind": w.workload.kind,
                    "name": w.workload.name,
                    "pods": w.pods,
                    "podsWithSidecar": w.with_sidecar,
                    "optedIn": _is_opted_in(w, opted_in),
                }
                for w in coverage
            ],
        }
    )
    if request.disable:
        still = [w for w in coverage if w.with_sidecar]
        if still:
            ctx.result.notes.append(
                "still running with a sidecar: "
                + ", ".join(_count(w, w.with_sidecar) for w in still)
                + "; existing Pods keep their sidecar until they are re-created"
            )
        return
    if not istiod_deployments(cluster, ctx.namespace):
        ctx.result.notes.append(
            f"no istiod found in {ctx.namespace}: the labels take effect once Istio is "
            "installed (kymamesh install)"
        )
    without = [w for w in coverage if w.without and _is_opted_in(w, opted_in)]
    if without:
        listing = ", ".join(_count(w, w.without) for w in without)
        if waited:
            ctx.result.notes.append(
                f"running without a sidecar after the rollout: {listing}. These Pods were "
                "created after injection was enabled, so istiod's injector should have added "
                "one: it did not run. Is istiod running, and does the API server reach its "
                "injection webhook? (A webhook with failurePolicy Ignore lets Pods through "
                "without a sidecar while istiod does not answer.)"
            )
        else:
            ctx.result.notes.append(
                f"running without a sidecar: {listing}. Existing Pods get a sidecar only when "
                "they are re-created (a changed template rolls the Deployment; use --wait to "
                "wait for it, or `kubectl rollout restart`); Pods created after injection was "
                "enabled that still have none mean istiod's injector did not run"
            )
    outside = [w for w in coverage if w.without and not _is_opted_in(w, opted_in)]
    if outside:
        ctx.result.notes.append(
            "not opted in, so no sidecar (Kyma injects only Pods labelled "
            f"{INJECT_LABEL}=true): " + ", ".join(str(w.workload) for w in outside)
        )


def _opted_in_deployments(deployments: list[Obj], edits: list[LabelEdit]) -> set[str]:
    """Deployments already opted in before this run (not among the edits; as planned)."""
    edited = {e.ref.name for e in edits[1:]}
    return {
        str(d["metadata"]["name"])
        for d in deployments
        if d["metadata"]["name"] not in edited and _template_inject(d) == "true"
    }


def _is_opted_in(workload: WorkloadSidecars, deployments: set[str]) -> bool:
    """Its template (Deployments) or any of its Pods carries the opt-in label."""
    if workload.workload.kind == "Deployment" and workload.workload.name in deployments:
        return True
    return workload.labelled > 0


def _count(workload: WorkloadSidecars, count: int) -> str:
    return f"{workload.workload} ({count} of {workload.pods} Pods)"
