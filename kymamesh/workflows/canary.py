"""The canary upgrade: `kymamesh upgrade promote | rollback | finish`, and its state.

`kymamesh install --revision-based` installs the pinned istiod as a second revision
(`1-30-3`, Helm release `istiod-1-30-3`, see `pipeline.release_layout`) beside the
one running. A revision kymamesh installed that way is known by what kymamesh wrote
(the Helm release `istiod-REV` of revision REV, installed by kymamesh:
`pipeline.kymamesh_revisions`), not by the version this kymamesh pins: the canary is
the newest such revision. From there:

- `promote` points the default tag (`kymamesh.istio.tags`) at the canary revision, switches
  off the unnamed revision's own injector webhooks while the tag exists, waits until
  a Pod that asks for the default revision gets the canary's sidecar, and then
  restarts the workloads whose sidecar came from another revision than the one that
  now injects them, through the restart machinery of `kymamesh.workloads.restarts` (with the
  remembered `systemNamespaces`);
- `rollback` does the same towards the old revision;
- before the tag moves, the revision it is to point at must be ready, and a test Pod
  made where its labels decide which webhook is called must get that revision's
  sidecar (for the unnamed revision, whose own webhooks are off while the tag exists,
  that is checked right after the tag moved);
- `finish` removes the old revision's Helm release once no running Pod has a
  sidecar from it and no namespace names it (refused otherwise, naming them, exit
  3), then runs phase 1 again (istio-base's validator moves to the canary revision
  and the gateway release is upgraded) and phase 2. Everything that can refuse (the
  charts, the version gate, the values, the patch steps' preflight) runs before the
  old revision is removed, and it asks before removing it (unless `--yes`).

Every step reads the live state first and writes only what differs, so a re-run
writes nothing and a run killed in the middle converges on the next one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

from kymamesh import MANAGED_BY_LABEL, settings
from kymamesh.adapters.cluster import Cluster, Obj, Ref, not_ready_reason
from kymamesh.context import RunContext
from kymamesh.diffs import object_diff
from kymamesh.errors import (
    ApiError,
    KymameshError,
    PreconditionError,
    UsageError,
    WaitTimeoutError,
)
from kymamesh.istio import revisions, sidecars, tags
from kymamesh.istio.controlplane import (
    DEFAULT_REVISION,
    REVISION_LABEL,
    ControlPlane,
    find_control_planes,
    istiod_version,
)
from kymamesh.istio.release import pinned
from kymamesh.output import ItemResult, Outcome
from kymamesh.steps.base import Change
from kymamesh.waits import wait_until
from kymamesh.workflows import pipeline
from kymamesh.workloads import restarts as restarts_  # `restarts` names a plan below

PHASE_TAG = "default tag"
PHASE_RESTARTS = "workloads"
PHASE_REMOVE = "old revision"
_LISTED = 25  # Pods named in a refusal; all of them are in `data`


class RevisionInUseError(PreconditionError):
    """`finish` while Pods or namespaces still use the old revision (exit 3)."""

    code = "revision-in-use"


# -- the state -------------------------------------------------------------------------------


@dataclass
class CanaryState:
    """The revisions in the cluster and where the default tag points (read-only)."""

    namespace: str
    revision: str  # the canary revision (`1-31-1`); "" when there is none
    canary: ControlPlane | None
    others: list[ControlPlane]
    tag: Obj | None  # the live default-tag webhook
    default_injector: Obj | None  # the unnamed revision's own injector webhook, if any

    @property
    def holder(self) -> str | None:
        """The revision that injects Pods asking for the default one (None: nobody)."""
        if self.tag is not None:
            return tags.tag_revision(self.tag)
        if self.default_injector is not None and not tags.all_deactivated(self.default_injector):
            return DEFAULT_REVISION
        return None

    @property
    def phase(self) -> str:
        """none (no canary revision), canary (installed, tag on an old revision), promoted
        (tag on the canary, old revisions still there), finished (only the canary left)."""
        if self.canary is None:
            return "none"
        if not self.others:
            return "finished"
        return "promoted" if self.holder == self.revision else "canary"

    def problems(self) -> list[str]:
        """What `status` counts as unhealthy: a default tag that points at a revision with
        no istiod (its webhooks fail closed: no Pod asking for the default one is made)."""
        if self.tag is None:
            return []
        holder = self.holder
        known = {p.revision for p in ([self.canary] if self.canary else []) + self.others}
        if holder not in known:
            name = self.tag["metadata"]["name"]
            return [
                f"the default tag ({tags.MUTATING} {name}) points at revision {holder}, which "
                "has no istiod: Pods asking for the default revision are refused"
            ]
        return []

    def to_json(self) -> dict[str, Any]:
        planes = ([self.canary] if self.canary else []) + self.others
        return {
            "phase": self.phase,
            "revision": self.revision,
            "defaultTag": self.holder,
            "tagWebhook": (self.tag or {}).get("metadata", {}).get("name"),
            "revisions": [_plane_json(p, p is self.canary) for p in planes],
        }

    def lines(self) -> list[str]:
        """For `status` text: one line per fact."""
        if self.canary is None and self.tag is None:
            return []
        about = f" (revision {self.revision})" if self.revision else ""
        lines = [f"canary upgrade: {self.phase}{about}"]
        lines.append(f"  default tag: {self.holder or 'none'}")
        for p in ([self.canary] if self.canary else []) + self.others:
            j = _plane_json(p, p is self.canary)
            lines.append(
                f"  revision {j['revision']}: istiod {j['version'] or '?'}, release "
                f"{j['release'] or '-'}{' (canary)' if j['canary'] else ''}"
            )
        return lines


def _plane_json(plane: ControlPlane, canary: bool) -> dict[str, Any]:
    version = istiod_version(plane.deployment) if plane.deployment else None
    return {
        "revision": plane.revision,
        "istiod": plane.istiod,
        "version": str(version) if version else None,
        "release": pipeline.release_of(plane),
        "canary": canary,
    }


def read_state(ctx: RunContext) -> CanaryState:
    """The revisions in the Istio namespace, the canary among them, and the default tag."""
    cluster, namespace = ctx.cluster, ctx.namespace
    planes = find_control_planes(cluster, namespace)
    canary, others = pipeline.canary_planes(planes, pipeline.kymamesh_revisions(ctx, planes))
    return CanaryState(
        namespace=namespace,
        revision=canary.revision if canary is not None else "",
        canary=canary,
        others=others,
        tag=cluster.get(_webhook_ref(tags.tag_webhook_name(namespace))),
        default_injector=cluster.get(
            _webhook_ref(tags.injector_webhook_name(DEFAULT_REVISION, namespace))
        ),
    )


def _webhook_ref(name: str) -> Ref:
    return Ref(tags.WEBHOOK_API, tags.MUTATING, name)


# -- running planned actions ------------------------------------------------------------


@dataclass
class Action:
    """One write of a canary command: what, why, the diff, and how."""

    name: str
    summary: str
    apply: Callable[[], None]
    diff: str = ""


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _run(ctx: RunContext, phase_name: str, plan: Plan) -> None:
    """Apply the plan's actions in order (in a dry run: show them); one item each."""
    phase = ctx.result.phase(phase_name)
    ctx.progress.phase(phase_name)
    for note in plan.notes:
        if note not in ctx.result.notes:
            ctx.result.notes.append(note)
    for action in plan.actions:
        item = ItemResult(name=action.name, outcome=Outcome.WOULD_CHANGE, summary=action.summary)
        item.changes = [action.summary]
        item.diff = action.diff
        phase.items.append(item)
        if ctx.options.dry_run:
            continue
        with ctx.progress.track(item):
            ctx.before_write()
            action.apply()
            item.outcome = Outcome.CHANGED


# -- the default tag -------------------------------------------------------------------------


def tag_plan(cluster: Cluster, state: CanaryState, target: ControlPlane) -> Plan:
    """Point the default tag at `target`; switch off the unnamed revision's own injector."""
    plan = Plan()
    source_ref = _webhook_ref(tags.injector_webhook_name(target.revision, state.namespace))
    source = cluster.get(source_ref)
    if source is None or not tags.injector_webhooks(source):
        raise PreconditionError(
            f"revision {target.revision} has no injector webhook ({source_ref} is missing "
            "or has no sidecar-injector webhook), so the default tag cannot point at it",
            hint="re-run `kymamesh install --revision-based` to repair the revision",
        )
    wanted = tags.wanted_tag(
        tags.TagSource(target.revision, state.namespace, source), {MANAGED_BY_LABEL: "kymamesh"}
    )
    differences = tags.tag_differences(state.tag, wanted)
    if differences:
        name = wanted["metadata"]["name"]

        def write_tag() -> None:
            live = cluster.get(_webhook_ref(name))
            if live is None:
                cluster.create(wanted)
            else:
                body = {**wanted, "metadata": {**wanted["metadata"]}}
                body["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
                cluster.replace(body)

        plan.actions.append(
            Action(
                name=f"{tags.MUTATING}/{name}",
                summary=f"default tag -> revision {target.revision} ({'; '.join(differences)})",
                apply=write_tag,
                diff=object_diff(state.tag, wanted, f"{tags.MUTATING}/{name}"),
            )
        )
    injector = state.default_injector
    if injector is not None and not tags.all_deactivated(injector):
        ref = Ref.of({**injector, "apiVersion": tags.WEBHOOK_API, "kind": tags.MUTATING})

        def deactivate() -> None:
            cluster.update(ref, lambda live: {"webhooks": tags.deactivated_webhooks(live)})

        plan.actions.append(
            Action(
                name=str(ref),
                summary="injector webhooks of the unnamed revision switched off while the "
                "default tag exists (selector istio.io/deactivated=never-match)",
                apply=deactivate,
                diff=object_diff(
                    injector,
                    {**injector, "webhooks": tags.deactivated_webhooks(injector)},
                    str(ref),
                ),
            )
        )
    return plan


def wait_tag(cluster: Cluster, namespace: str, holder: str, timeout: float) -> None:
    """Wait until a Pod asking for the default revision gets the sidecar of `holder` (a
    dry run: nothing is created). The API server reads webhook changes within moments.
    A Pod admitted without a sidecar does not count: the probe is made where the
    default tag's webhooks are the ones called (`controlplane.probe_namespace`)."""
    denials = pipeline.Denials()

    def pending() -> str | None:
        try:
            got = revisions.probe_injection(cluster, DEFAULT_REVISION, namespace)
        except ApiError as exc:
            if denials.see(exc):
                raise PreconditionError(
                    f"the default tag points at revision {holder}, and its injector refuses "
                    f"Pods: {exc.message}",
                    hint=f"look at istiod's log and the injector ConfigMap of revision {holder}",
                ) from None
            return exc.message
        denials.see(None)
        if got == holder:
            return None
        return "admitted without a sidecar" if got is None else f"injected by revision {got}"

    wait_until(
        pending,
        timeout,
        lambda seen: (
            f"timed out after {timeout:.0f}s waiting for the default tag to reach "
            f"revision {holder}: a test Pod is still {seen}"
        ),
        hint=f"check that istiod of revision {holder} runs and answers; the default "
        "tag points at it now: re-run the same command, or move the tag back "
        "(`kymamesh upgrade promote` or `kymamesh upgrade rollback`)",
        first=0.5,
        most=0.5,
    )


# -- restarts --------------------------------------------------------------------------------


def moved_workloads(
    cluster: Cluster, holder: str
) -> tuple[list[sidecars.OutdatedWorkload], list[sidecars.OutdatedWorkload]]:
    """Workloads with a running Pod whose sidecar came from another revision than the one
    that injects it now (with the default tag on `holder`): (restartable, the others).
    Each records its moved Pods and the restart annotation each was made with, so that
    the restart machinery can tell a rollout under way (`rollouts.rollout_pending`)."""
    namespaces = {
        str(n["metadata"]["name"]): dict(n["metadata"].get("labels") or {})
        for n in cluster.list("v1", "Namespace")
    }
    moved = revisions.moved_pods(sidecars.list_pods(cluster), namespaces, holder)
    if not moved:
        return [], []
    entries = sidecars.group_by_workload(
        (
            (pod, [f"sidecar from revision {have}, now injected by revision {now}"])
            for pod, have, now in moved
        ),
        sidecars.replica_set_index(cluster),
    )
    return [e for e in entries if e.workload.restartable], [
        e for e in entries if not e.workload.restartable
    ]


def restart_plan(ctx: RunContext, holder: str, batch_size: int | str | None = None) -> Plan:
    """The workloads the tag moved, restarted by the restart machinery
    (`restarts.plan_restarts_for`): the Istio and system namespaces first, then in batches of
    `batch_size`, each batch's rollouts finished before the next; opt-outs respected;
    ReplicaSet-only Pods deleted one at a time; Jobs and bare Pods listed; a workload
    whose restart is under way is not restarted again."""
    cluster = ctx.cluster
    plan = Plan()
    restartable, others = moved_workloads(cluster, holder)
    if ctx.options.dry_run:  # the machinery asks the injector with dry-run Pods: list only
        for entry in restartable:
            plan.actions.append(
                Action(
                    name=str(entry.workload),
                    summary=f"{entry.workload} restarted ({'; '.join(entry.reasons)})",
                    apply=lambda: None,
                    diff=f"  {entry.workload}: restarted (opt-outs and batches decided then)",
                )
            )
        if others:
            plan.notes.append(
                "sidecars from another revision in Pods that kymamesh cannot restart: "
                + ", ".join(o.describe() for o in others)
            )
        return plan
    remembered = settings.load(cluster, ctx.namespace).get("restart-proxies") or {}
    params: dict[str, Any] = {"restart": True}
    if "systemNamespaces" in remembered:  # as `--restart-proxies` of install uses them
        params["systemNamespaces"] = remembered["systemNamespaces"]
    if batch_size is not None:
        params["batchSize"] = batch_size
    options = restarts_.restart_options(params, ctx.options.timeout)
    restarts = restarts_.plan_restarts_for(cluster, ctx.namespace, others + restartable, options)
    plan.notes.extend(n for n in restarts.notes if n not in plan.notes)
    for change in restarts.changes:
        plan.actions.append(
            Action(
                name=change.target,
                summary=change.summary,
                apply=_applier(change, cluster),
                diff=change.diff,
            )
        )
    return plan


def _applier(change: Change, cluster: Cluster) -> Callable[[], None]:
    return lambda: change.apply(cluster)


# -- the commands ----------------------------------------------------------------------------


def _need_canary(state: CanaryState) -> ControlPlane:
    if state.canary is None:
        raise PreconditionError(
            f"there is no canary revision in {state.namespace} (an istiod `istiod-REV` of "
            "the Helm release of that name that `kymamesh install --revision-based` made)",
            hint="install it first: `kymamesh install --revision-based`",
        )
    return state.canary


def _check_target(ctx: RunContext, plane: ControlPlane) -> None:
    """Before the default tag points at `plane`: its istiod must be ready, and a test Pod
    for a named revision must get that revision's sidecar. The unnamed revision's own
    webhooks are off while a tag exists, so no Pod reaches it before the tag moves:
    `wait_tag` checks it right after."""
    live = ctx.cluster.get(plane.istiod_ref)
    why = not_ready_reason(plane.istiod_ref, live)
    if (
        live is not None
        and not why
        and not int((live.get("status") or {}).get("availableReplicas") or 0)
    ):
        why = "no replica available: it is scaled to 0"
    if live is None or why:
        raise PreconditionError(
            f"istiod of revision {plane.revision} is not ready ({why or 'it is gone'}): the "
            "default tag is left where it is",
            hint=f"make {plane.istiod_ref} ready (`kymamesh status`), then re-run",
        )
    if plane.revision == DEFAULT_REVISION:
        return
    try:
        got = revisions.probe_injection(ctx.cluster, plane.revision, ctx.namespace)
    except ApiError as exc:
        raise PreconditionError(
            f"istiod of revision {plane.revision} does not answer its injector webhook: "
            f"{exc.message}",
            hint="check that its Deployment is ready (`kymamesh status`), then re-run",
        ) from None
    if got != plane.revision:
        raise PreconditionError(
            f"a test Pod for revision {plane.revision} got "
            + ("no sidecar" if got is None else f"the sidecar of revision {got}")
            + f": revision {plane.revision}'s injector does not inject; the default tag is "
            "left where it is",
            hint=f"look at MutatingWebhookConfiguration "
            f"{tags.injector_webhook_name(plane.revision, ctx.namespace)} and istiod's log",
        )


def move_tag(
    ctx: RunContext,
    target: ControlPlane,
    state: CanaryState,
    batch_size: int | str | None = None,
) -> None:
    """Point the default tag at `target`; once it took effect, restart the workloads that
    moved."""
    tag = tag_plan(ctx.cluster, state, target)
    if tag.actions and not ctx.options.dry_run:
        _check_target(ctx, target)  # a dry-run Pod: only when about to write
        ctx.before_write()
        tag = tag_plan(ctx.cluster, read_state(ctx), target)  # again, under the lock
    _run(ctx, PHASE_TAG, tag)
    if tag.actions and not ctx.options.dry_run:
        try:
            wait_tag(ctx.cluster, ctx.namespace, target.revision, ctx.options.timeout)
        except KymameshError as exc:
            _move_back(ctx, state, target, exc)
    restarts = restart_plan(ctx, target.revision, batch_size)  # after the tag took effect
    if restarts.actions and not ctx.options.dry_run and not tag.actions:
        # a re-run: the tag an earlier run wrote must be in effect; then plan under the lock
        wait_tag(ctx.cluster, ctx.namespace, target.revision, ctx.options.timeout)
        if not ctx.locked:
            ctx.before_write()
        restarts = restart_plan(ctx, target.revision, batch_size)
    _run(ctx, PHASE_RESTARTS, restarts)
    ctx.result.data["canary"] = read_state(ctx).to_json()


def _move_back(
    ctx: RunContext, before: CanaryState, target: ControlPlane, exc: KymameshError
) -> NoReturn:
    """The default tag did not take effect on `target` (its injector does not answer, or
    refuses Pods): point it back at the revision that held it before, so that Pods asking
    for the default revision are injected again rather than refused by a webhook that
    fails closed, then fail with why."""
    planes = ([before.canary] if before.canary is not None else []) + list(before.others)
    previous = next((p for p in planes if p.revision == before.holder), None)
    if previous is None or previous.revision == target.revision:
        raise exc
    _run(ctx, PHASE_TAG, tag_plan(ctx.cluster, read_state(ctx), previous))
    kind = WaitTimeoutError if isinstance(exc, WaitTimeoutError) else PreconditionError
    raise kind(
        f"{exc.message}; the default tag was moved back to revision {previous.revision}, "
        "which held it before",
        hint=f"make revision {target.revision}'s istiod answer (its Deployment, its "
        "injector ConfigMap and its log; `kymamesh status`), then re-run",
    ) from None


def promote(ctx: RunContext, batch_size: int | str | None = None) -> None:
    """`kymamesh upgrade promote`."""
    state = read_state(ctx)
    move_tag(ctx, _need_canary(state), state, batch_size)


def rollback(ctx: RunContext, revision: str | None, batch_size: int | str | None = None) -> None:
    """`kymamesh upgrade rollback`: the tag back to the old revision (`revision` when
    more than one other revision runs). Before any promote (no tag, and the unnamed
    revision injects the default Pods) there is nothing to roll back: no write."""
    state = read_state(ctx)
    _need_canary(state)
    if not state.others:
        raise PreconditionError(
            f"only revision {state.revision} is left (`upgrade finish` removed the old one): "
            "there is nothing to roll back to",
            hint="to go back to an older Istio, install it again",
        )
    names = [p.revision for p in state.others]
    if revision is not None:
        targets = [p for p in state.others if p.revision == revision]
        if not targets:
            raise UsageError(
                f"--revision {revision}: no such old revision (found: {', '.join(names)})",
                hint=f"pass one of: {', '.join(names)}",
            )
    elif len(state.others) == 1:
        targets = list(state.others)
    else:
        targets = [p for p in state.others if p.suffix == ""]
        if len(targets) != 1:
            raise UsageError(
                f"more than one old revision runs ({', '.join(names)}): which one should the "
                "default tag go back to?",
                hint="pass --revision NAME",
            )
    if state.tag is None and state.holder == targets[0].revision:
        ctx.result.notes.append(
            f"nothing to roll back: the default tag was never moved (no `upgrade promote` "
            f"ran), and revision {targets[0].revision} injects the Pods that ask for the "
            "default revision"
        )
        ctx.result.data["canary"] = state.to_json()
        return
    move_tag(ctx, targets[0], state, batch_size)


def _users(cluster: Cluster, old: set[str]) -> tuple[list[str], list[str]]:
    """Running Pods with a sidecar from an old revision ("ns/name (revision X)"), and
    namespaces whose `istio.io/rev` label names one."""
    pods = []
    for pod in sidecars.list_pods(cluster):
        if not sidecars.is_running(pod):
            continue
        revision = revisions.sidecar_revision(pod)
        if revision in old:
            meta = pod["metadata"]
            pods.append(f"{meta['namespace']}/{meta['name']} (revision {revision})")
    namespaces = []
    for ns in cluster.list("v1", "Namespace"):
        label = (ns["metadata"].get("labels") or {}).get(REVISION_LABEL)
        if label in old and label != DEFAULT_REVISION:
            namespaces.append(f"{ns['metadata']['name']} (istio.io/rev={label})")
    return sorted(pods), sorted(namespaces)


def finish(ctx: RunContext, inputs: pipeline.ChartInputs) -> None:
    """`kymamesh upgrade finish`: plan everything (refusals, phase 1 as if the old
    revisions were gone, phase 2's preflight), ask, remove the old revisions, then run
    phase 1 and phase 2, as `install` does."""
    from kymamesh.workflows import patching

    stack = pipeline.build_values(inputs, pinned())  # bad values first, before the cluster
    run = pipeline.ChartRun()
    patch_inputs = patching.PatchInputs(charts_dir=inputs.charts_dir)  # Dex's chart too
    specs = patching.patch_list_for(ctx, patch_inputs, {}, reset=False)
    state, plan = _finish_plan(ctx)
    canary = _need_canary(state)
    found = istiod_version(canary.deployment) if canary.deployment else None
    release = pipeline.resolve_release(  # the canary's own Istio release
        ctx,
        run,
        replace(inputs, istio=inputs.istio or (str(found) if found else None)),
        patching.image_hub(specs),
    )
    inputs = pipeline.with_compatibility_mode(inputs, specs, release)
    stack = pipeline.with_release_values(stack, release, inputs)
    stack = pipeline.with_mesh_values(stack, specs)  # the mesh file's chart values
    stack = pipeline.with_identity_values(stack, specs)  # mesh ID, cluster name, network
    pipeline.refuse_revision_value(stack, release)
    old = frozenset(p.revision for p in state.others)
    layout = pipeline.release_layout(ctx, run, stack, revision_based=False, gone=old)
    patch_inputs.planned_control_plane = pipeline.planned_control_plane(layout.stack)
    # everything that can refuse, before the old revision goes: the charts (local or from
    # the repository), the version gate, helm itself, every patch step's preflight
    planned = pipeline.plan_releases(
        ctx, run, inputs, layout.stack, layout.rows, revision_based=True
    )
    if plan.actions or any(p.needed for p in planned):
        ctx.helm.check()
    patching.preflight(ctx, patch_inputs, specs)
    if plan.actions and not ctx.options.dry_run:
        ctx.confirm(_question(ctx, plan))
        ctx.before_write()
        state, plan = _finish_plan(ctx)  # again, under the lock
    _run(ctx, PHASE_REMOVE, plan)
    if not ctx.options.dry_run:
        for plane in state.others:  # removed now, or still terminating from an earlier run
            _wait_gone(ctx.cluster, plane.istiod_ref, ctx.options.timeout)
    pipeline.run_phase_charts(ctx, run, inputs, layout.stack, layout.rows, revision_based=True)
    patching.run_patch(ctx, patch_inputs, specs)
    ctx.result.data["canary"] = read_state(ctx).to_json()


def _question(ctx: RunContext, plan: Plan) -> str:
    what = "; ".join(a.summary for a in plan.actions)
    return (
        f"remove the old control plane from context '{ctx.cluster.context}' ({what}; its "
        "istiod, ConfigMaps and webhooks go with it)?"
    )


def _finish_plan(ctx: RunContext) -> tuple[CanaryState, Plan]:
    """The refusals of `finish` (each before any write), then the releases to remove."""
    state = read_state(ctx)
    _need_canary(state)
    if state.holder != state.revision:
        raise PreconditionError(
            f"the default tag is on revision {state.holder or 'none'}, not on the canary "
            f"revision {state.revision}: finishing would remove the revision that injects "
            "the default Pods",
            hint="run `kymamesh upgrade promote` first",
        )
    old = {p.revision for p in state.others}
    pods, namespaces = _users(ctx.cluster, old)
    if pods or namespaces:
        ctx.result.data["usingOldRevision"] = {"pods": pods, "namespaces": namespaces}
        parts = []
        if pods:
            shown = ", ".join(pods[:_LISTED])
            more = f" and {len(pods) - _LISTED} more" if len(pods) > _LISTED else ""
            parts.append(f"{len(pods)} Pod(s) run a sidecar of it: {shown}{more}")
        if namespaces:
            parts.append(f"namespaces name it: {', '.join(namespaces)}")
        raise RevisionInUseError(
            f"the old revision {', '.join(sorted(old))} is still in use; " + "; ".join(parts),
            hint="`kymamesh upgrade promote` restarts the workloads it can; re-create Jobs "
            "and bare Pods, relabel those namespaces (istio.io/rev=default or "
            f"{state.revision}), then re-run `kymamesh upgrade finish`",
        )
    plan = Plan()
    for plane in state.others:
        release = pipeline.release_of(plane)
        if release is None:
            raise PreconditionError(
                f"istiod {plane.namespace}/{plane.istiod} of revision {plane.revision} was not "
                "installed by Helm, so kymamesh does not remove it",
                hint="remove that revision the way it was installed, then re-run",
            )
        deployed = ctx.helm.deployed(release, ctx.namespace)
        if deployed is None:
            meta = (plane.deployment or {}).get("metadata") or {}
            if meta.get("deletionTimestamp"):
                continue  # its release is gone and it is terminating: waited for
            raise PreconditionError(
                f"istiod {plane.namespace}/{plane.istiod} of revision {plane.revision} names "
                f"the Helm release {release}, which does not exist (any more), and it is not "
                "being deleted: kymamesh does not remove it by hand",
                hint=f"delete it (kubectl -n {plane.namespace} delete deployment "
                f"{plane.istiod}), or find what keeps it, then re-run",
            )

        def uninstall(release: str = release, ref: Ref = plane.istiod_ref) -> None:
            ctx.helm.uninstall(release, ctx.namespace, ctx.options.timeout)
            _wait_gone(ctx.cluster, ref, ctx.options.timeout)

        plan.actions.append(
            Action(
                name=f"release {release}",
                summary=f"helm uninstall {release} (revision {plane.revision}, "
                f"{deployed.chart} {deployed.chart_version})",
                apply=uninstall,
            )
        )
    return state, plan


def _wait_gone(cluster: Cluster, ref: Ref, timeout: float) -> None:
    """helm uninstall does not wait: the old istiod must be gone before phase 1 runs."""
    wait_until(
        lambda: None if cluster.get(ref) is None else "still there",
        timeout,
        lambda _: f"{ref} is still there {timeout:.0f}s after its release was uninstalled",
        hint="look at what holds it (finalizers), then re-run",
        first=0.5,
        most=0.5,
    )
