"""The install pipeline: phase 1 (the official Istio charts), then phase 2 (the Kyma patch).

`install()` and `adopt()` are the two workflows, whole: every refusal before the
first write, then the phases. The values, the patch list and the foreign-istiod
check are computed once per run.

Phase 1 is the ordered release table of `resources/istio/release.yaml`. Every
check that can refuse (values, chart source, version gate) runs for all three
releases before the first write. A release whose chart version and values are
already deployed is left alone, so a re-run writes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kymamesh import controlplane, tags
from kymamesh.cluster import Ref
from kymamesh.context import RunContext
from kymamesh.controlplane import ControlPlane
from kymamesh.diffs import object_diff
from kymamesh.errors import (
    ApiError,
    ChartSourceError,
    KymameshError,
    PreconditionError,
    UsageError,
    WaitTimeoutError,
)
from kymamesh.helm import DeployedRelease, LoadedChart
from kymamesh.inventory import INSTALL_DESCRIPTION, marked_by_kymamesh
from kymamesh.output import ItemResult, Outcome
from kymamesh.release import ChartRelease, IstioRelease, pinned
from kymamesh.values import (
    Values,
    ValueSource,
    ValueStack,
    check_security,
    load_user_file,
    parse_set,
    project_source,
)
from kymamesh.versions import Version, check_upgrade

__all__ = [
    "ChartInputs",
    "adopt",
    "install",
    "pinned",
    "plan_releases",
    "planned_control_plane",
    "refuse_foreign_istiod",
    "release_layout",
    "run_phase_charts",
]

PHASE_CHARTS = "phase 1: Istio charts"
_READY_KINDS = ("CustomResourceDefinition", "Deployment", "StatefulSet", "DaemonSet")


@dataclass(frozen=True)
class ChartInputs:
    """What the user asked for: where charts come from and which values to add."""

    charts_dir: Path | None = None
    values_files: tuple[Path, ...] = ()
    set_values: tuple[str, ...] = ()
    repository: str | None = None


@dataclass
class PlannedRelease:
    row: ChartRelease
    chart: LoadedChart
    values: Values
    deployed: DeployedRelease | None
    reasons: list[str] = field(default_factory=list)

    @property
    def needed(self) -> bool:
        return bool(self.reasons)


def build_values(inputs: ChartInputs, release: IstioRelease) -> ValueStack:
    """The value stack, validated for security. Reads files only: no cluster needed."""
    charts = [r.chart for r in release.releases]
    stack = ValueStack([project_source(charts)])
    for path in inputs.values_files:
        stack.sources.append(load_user_file(path, charts))
    if inputs.set_values:
        stack.sources.append(parse_set(inputs.set_values, charts))
    check_security(stack, charts)
    return stack


def load_chart(ctx: RunContext, inputs: ChartInputs, row: ChartRelease) -> LoadedChart:
    """The chart for one release row; refused unless its Chart.yaml names that chart."""
    release = pinned()
    if inputs.charts_dir is not None:
        chart = ctx.helm.load_local(inputs.charts_dir, row.chart)
    else:
        repo = inputs.repository or release.chart_repository
        chart = ctx.helm.load_remote(row.chart, repo, release.version)
    if chart.name != row.chart:
        raise ChartSourceError(
            f"chart {chart.source} is named {chart.name!r} in its Chart.yaml, but release "
            f"{release.namespace}/{row.release} is made from chart {row.chart!r}",
            hint=f"point the source at Istio's {row.chart} chart "
            "(`kymamesh charts pull --dest DIR` fetches the pinned ones)",
        )
    return chart


PatchSettings = Mapping[str, Mapping[str, Any]]


def install(
    ctx: RunContext,
    inputs: ChartInputs,
    given: PatchSettings,
    reset: bool,
    revision_based: bool = False,
) -> None:
    """`kymamesh install`: insecure values, unknown patch settings, a foreign istiod and
    every step's preflight are refused before the first write; then phase 1, then phase 2.
    `given` are the patch settings of this run; `reset` forgets the remembered ones;
    `revision_based` installs the pinned istiod beside the one running (a canary, see
    `kymamesh.canary`)."""
    from kymamesh import patching

    stack = build_values(inputs, pinned())  # insecure values first, before the cluster
    if revision_based:
        refuse_revision_value(stack)
    ctx.charts_dir = inputs.charts_dir  # Dex's chart comes from there too
    specs = patching.patch_list_for(ctx, given, reset=reset)
    layout = release_layout(ctx, stack, revision_based)
    stack = layout.stack
    ctx.planned_control_plane = planned_control_plane(stack)
    refuse_foreign_istiod(ctx, layout.istiod_release)
    patching.preflight(ctx, specs)
    run_phase_charts(ctx, inputs, stack, layout.rows)
    patching.run_patch(ctx, specs)
    if layout.canary:
        ctx.result.notes.extend(layout.next_steps)


def adopt(ctx: RunContext, given: PatchSettings, reset: bool, existing_istio: bool) -> None:
    """`kymamesh patch`: the adoption preflight (an Istio kymamesh can patch, and, without
    `existing_istio`, one kymamesh set up), every step's preflight, then phase 2."""
    from kymamesh import patching
    from kymamesh.inventory import set_up_by_kymamesh
    from kymamesh.preflight import adoption_preflight

    specs = patching.patch_list_for(ctx, given, reset=reset)
    found = adoption_preflight(ctx.cluster, ctx.namespace)
    ctx.result.data["istio"] = found.to_json()
    ctx.progress.info(f"found {found.describe()}")
    if not existing_istio and not set_up_by_kymamesh(ctx, found):
        raise PreconditionError(
            f"the Istio in {ctx.namespace} was not set up by kymamesh (installed by "
            f"{found.installed_by}; neither a Helm release marked by `kymamesh install` "
            "nor an object carrying kymamesh's label)",
            hint="to bring it to the Kyma state, run `kymamesh patch --existing-istio`",
        )
    patching.preflight(ctx, specs)
    patching.run_patch(ctx, specs)


def plan_releases(
    ctx: RunContext,
    inputs: ChartInputs,
    stack: ValueStack,
    rows: tuple[ChartRelease, ...] | None = None,
) -> list[PlannedRelease]:
    """Read-only: which releases need an install or upgrade, and why. Refuses early:
    releases kymamesh did not make first, before any chart is loaded.
    `rows`: the releases to plan (default: the pinned release table)."""
    release = pinned()
    ctx.cluster  # noqa: B018 - connect now, so an unreachable cluster is reported first
    rows = release.releases if rows is None else rows
    found = {row.release: ctx.helm.deployed(row.release, release.namespace) for row in rows}
    refuse_foreign_releases(found, release.namespace)
    plans = []
    for row in rows:
        chart = load_chart(ctx, inputs, row)
        plans.append(
            PlannedRelease(
                row=row,
                chart=chart,
                values=stack.merged(row.chart),
                deployed=found[row.release],
            )
        )
    for plan in plans:
        deployed = plan.deployed
        if deployed is None:
            plan.reasons.append(f"install {plan.chart.name} {plan.chart.version}")
            continue
        check_upgrade(
            f"release {release.namespace}/{plan.row.release}",
            deployed.chart_version,
            plan.chart.version,
        )
        if deployed.chart != plan.chart.name:
            plan.reasons.append(f"chart {deployed.chart} -> {plan.chart.name}")
        if deployed.chart_version != plan.chart.version:
            plan.reasons.append(f"upgrade {deployed.chart_version} -> {plan.chart.version}")
        if deployed.status != "deployed":
            plan.reasons.append(f"status is {deployed.status}")
        if deployed.values != plan.values:
            plan.reasons.append("values changed")
    return plans


def refuse_foreign_releases(deployed: Mapping[str, DeployedRelease | None], namespace: str) -> None:
    """Helm releases of the release table that kymamesh did not make (a plain `helm
    install`, another tool) are not `install`'s to take over: refused, as `patch` and the
    identity step refuse an Istio or a Dex someone else installed. kymamesh's releases carry
    its mark (`kymamesh.inventory.marked_by_kymamesh`), which Helm keeps on the revisions a
    person's own `helm upgrade` adds."""
    foreign = [r for r in deployed.values() if r is not None and not marked_by_kymamesh(r)]
    if not foreign:
        return
    names = ", ".join(
        f"{namespace}/{r.name} ({r.chart} {r.chart_version}, revision {r.revision})"
        for r in foreign
    )
    plural = len(foreign) > 1
    raise PreconditionError(
        f"Helm release{'s' if plural else ''} {names} {'were' if plural else 'was'} not "
        "installed by kymamesh; `install` does not take over an Istio someone else "
        "installed with Helm",
        hint="to bring that Istio to the Kyma state (and keep upgrading it with your own "
        "Helm), run `kymamesh patch --existing-istio`",
    )


def planned_control_plane(stack: ValueStack) -> ControlPlane:
    """The control plane the istiod release makes from these values (its revision and
    mesh root namespace); a bad revision name is a usage error."""
    return controlplane.planned_control_plane(pinned().namespace, stack.merged("istiod"))


REVISION_BASED_ORIGIN = "the revision-based upgrade"


@dataclass(frozen=True)
class ReleaseLayout:
    """Which Helm releases phase 1 manages, and the values the layout adds.

    In place (the default): the pinned release table. Revision-based (a canary
    upgrade, `install --revision-based`, or any run once such a revision exists):
    istiod is the release `istiod-REV` of revision REV (`1-30-3` for Istio 1.30.3)
    beside the revisions already running; istio-base is upgraded (the CRDs must be
    the new ones), but its validator stays with the default revision as long as an
    unnamed istiod runs; the gateway release is left as it is while another revision
    runs (its Pods move with the default tag, see `kymamesh upgrade promote`), and is
    upgraded once the old revision is gone (`kymamesh upgrade finish`).
    """

    rows: tuple[ChartRelease, ...]
    stack: ValueStack
    revision: str = ""  # the canary revision; "" in place
    others: tuple[ControlPlane, ...] = ()  # the other revisions running beside it

    @property
    def canary(self) -> bool:
        return bool(self.revision)

    @property
    def istiod_release(self) -> str:
        return next(r.release for r in self.rows if r.chart == "istiod")

    @property
    def next_steps(self) -> list[str]:
        if not self.others:
            return []
        old = ", ".join(p.revision for p in self.others)
        return [
            f"revision {self.revision} runs beside revision {old}, which still injects the "
            "Pods that ask for the default revision. Next: try it on a namespace "
            f"(`kubectl label namespace NS istio-injection- istio.io/rev={self.revision}` "
            "and re-create its Pods), then `kymamesh upgrade promote` (moves the default "
            "tag and restarts the workloads), and once every Pod runs the new sidecar, "
            "`kymamesh upgrade finish` (removes the old revision); `kymamesh upgrade "
            "rollback` moves the tag back"
        ]


def refuse_revision_value(stack: ValueStack) -> None:
    """A revision-based upgrade names its revision itself (`1-30-3`): refuse one set by hand."""
    revision = stack.merged("istiod").get("revision")
    if revision:
        raise UsageError(
            f"--revision-based names the new revision itself "
            f"({tags.revision_name(pinned().version)}), but istiod.revision is set to "
            f"{revision!r} (from {stack.origin_of('istiod', 'revision')})",
            hint="drop istiod.revision from --set/-f, or install without --revision-based",
        )


def release_of(plane: ControlPlane) -> str | None:
    annotations = ((plane.deployment or {}).get("metadata") or {}).get("annotations") or {}
    owner = annotations.get("meta.helm.sh/release-name")
    return str(owner) if owner else None


def canary_planes(
    planes: list[ControlPlane], revision: str
) -> tuple[ControlPlane | None, list[ControlPlane]]:
    """The canary revision's control plane (its Deployment made by the release
    `istiod-REV`), if running, and every other revision."""
    name = tags.istiod_release_name(revision)
    canary = next((p for p in planes if p.revision == revision and release_of(p) == name), None)
    return canary, [p for p in planes if p is not canary]


def _runs(plane: ControlPlane, version: Version) -> bool:
    found = controlplane.istiod_version(plane.deployment) if plane.deployment else None
    return found is not None and found >= version


def release_layout(
    ctx: RunContext,
    stack: ValueStack,
    revision_based: bool,
    gone: frozenset[str] = frozenset(),
) -> ReleaseLayout:
    """The releases of this run: in place, or revision-based when asked or when a
    canary revision made by kymamesh runs (so that every later run, `install` included,
    converges instead of upgrading the old revision in place). `gone`: revisions to
    count as removed (a dry run of `upgrade finish`)."""
    release = pinned()
    revision = tags.revision_name(release.version)
    planes = controlplane.find_control_planes(ctx.cluster, release.namespace)
    planes = [p for p in planes if p.revision not in gone]
    canary, others = canary_planes(planes, revision)
    if canary is None and not revision_based:
        return ReleaseLayout(rows=release.releases, stack=stack)
    if canary is None and not others:
        raise PreconditionError(
            f"--revision-based installs istiod {release.version} beside a running istiod, "
            f"but there is no istiod in {release.namespace}",
            hint="install without --revision-based",
        )
    if canary is None:
        refuse_revision_value(stack)
        current = [p for p in others if _runs(p, release.version)]
        if current:
            raise PreconditionError(
                f"istiod {', '.join(p.istiod for p in current)} in {release.namespace} "
                f"already runs Istio {release.version}: there is nothing to upgrade by "
                "revisions",
                hint="run `kymamesh install` without --revision-based to keep it up to date",
            )
    extra: dict[str, Values] = {"istiod": {"revision": revision}}
    if not any(p.suffix == "" for p in others):
        # no unnamed istiod any more: the cluster-wide validator goes to the new revision
        extra["base"] = {"defaultRevision": revision}
    rows = []
    for row in release.releases:
        if row.chart == "istiod":
            rows.append(replace(row, release=tags.istiod_release_name(revision)))
        elif row.chart == "gateway" and others:
            continue  # left with the old revision until `upgrade finish`
        else:
            rows.append(row)
    layered = ValueStack([*stack.sources, ValueSource(REVISION_BASED_ORIGIN, extra)])
    return ReleaseLayout(rows=tuple(rows), stack=layered, revision=revision, others=tuple(others))


def refuse_foreign_istiod(ctx: RunContext, release_name: str | None = None) -> None:
    """An istiod that no release of ours made (istioctl, a vendor) is not ours to overwrite:
    the Deployment of the revision `install` makes (`istiod`, or `istiod-REV`), which must
    belong to `release_name` (default: the istiod row of the release table)."""
    release = pinned()
    row = release.chart("istiod")
    if release_name is not None:
        row = replace(row, release=release_name)
    plane = ctx.planned_control_plane or ControlPlane(release.namespace)
    live = ctx.cluster.get(plane.istiod_ref)
    if live is None:
        return
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    owner = annotations.get("meta.helm.sh/release-name")
    if owner == row.release:
        return
    made_by = f"Helm release {owner}" if owner else "something other than Helm"
    raise PreconditionError(
        f"Deployment {release.namespace}/{plane.istiod} exists and was made by {made_by}, not "
        f"by the Helm release {row.release} that `install` manages; installing over it would "
        "fight over the same objects",
        hint="to bring that Istio to the Kyma state, run `kymamesh patch --existing-istio`"
        + ("" if not plane.suffix else f", or install another revision than {plane.revision}"),
    )


def readiness_refs(objects: list[dict[str, object]], namespace: str) -> list[Ref]:
    refs = []
    for obj in objects:
        if obj.get("kind") not in _READY_KINDS:
            continue
        ref = Ref.of(obj)
        if ref.kind != "CustomResourceDefinition" and not ref.namespace:
            ref = Ref(ref.api_version, ref.kind, ref.name, namespace)
        refs.append(ref)
    return refs


def _dry_run_diff(ctx: RunContext, plan: PlannedRelease, namespace: str) -> str:
    rendered = ctx.helm.template(plan.row.release, plan.chart, plan.values, namespace)
    parts = []
    for obj in rendered:
        if not isinstance(obj, dict) or "kind" not in obj:
            continue
        ref = Ref.of(obj)
        if not ref.namespace and ref.kind not in _CLUSTER_SCOPED:
            ref = Ref(ref.api_version, ref.kind, ref.name, namespace)
            obj = {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}
        diff = object_diff(ctx.cluster.get(ref), obj, str(ref))
        if diff:
            parts.append(diff)
    return "\n".join(parts)


_CLUSTER_SCOPED = (
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "Namespace",
)


def run_phase_charts(
    ctx: RunContext,
    inputs: ChartInputs,
    stack: ValueStack,
    rows: tuple[ChartRelease, ...] | None = None,
) -> None:
    """Phase 1: install or upgrade each release in order; each ready before the next.
    `rows`: the releases (default: the pinned release table)."""
    release = pinned()
    namespace = release.namespace
    phase = ctx.result.phase(PHASE_CHARTS)
    ctx.progress.phase(PHASE_CHARTS)
    plans = plan_releases(ctx, inputs, stack, rows)
    if any(p.needed for p in plans):
        ctx.helm.check()  # a helm that cannot install is refused before the first write
    if any(p.needed for p in plans) and not ctx.options.dry_run:
        ctx.before_write()
        plans = plan_releases(ctx, inputs, stack, rows)  # again, under the lock
    for plan in plans:
        label = f"{plan.row.release} ({plan.chart.name} {plan.chart.version})"
        item = ItemResult(name=plan.row.release, outcome=Outcome.UNCHANGED)
        phase.items.append(item)
        with ctx.progress.item(label) as tracker:
            try:
                _run_release(ctx, plan, item, namespace)
            except KymameshError as exc:
                item.outcome = Outcome.FAILED
                item.error = exc.message
                raise
            finally:
                tracker.done(item.outcome, item.summary)
        item.duration_s = tracker.duration_s


def _run_release(ctx: RunContext, plan: PlannedRelease, item: ItemResult, namespace: str) -> None:
    item.changes = list(plan.reasons)
    if not plan.needed:
        item.summary = f"{plan.chart.version} already deployed"
        if not ctx.options.dry_run:
            _wait_ready(ctx, plan, namespace, changed=False, known=plan.deployed)
        return
    if ctx.options.dry_run:
        item.outcome = Outcome.WOULD_CHANGE
        item.summary = "; ".join(plan.reasons)
        item.diff = _dry_run_diff(ctx, plan, namespace)
        return
    ctx.helm.install_or_upgrade(
        plan.row.release,
        plan.chart,
        plan.values,
        namespace,
        ctx.options.timeout,
        description=INSTALL_DESCRIPTION,
    )
    item.outcome = Outcome.CHANGED
    item.summary = "; ".join(plan.reasons)
    _wait_ready(ctx, plan, namespace, changed=True)


def _wait_ready(
    ctx: RunContext,
    plan: PlannedRelease,
    namespace: str,
    changed: bool,
    known: DeployedRelease | None = None,
) -> None:
    """`known`: the release as planned, when it was left alone (its manifest is read).

    After a release changed, its injection webhooks must answer too (see _wait_injector).
    """
    manifest = ctx.helm.manifest(plan.row.release, namespace, known)
    deadline = time.monotonic() + ctx.options.timeout
    ctx.cluster.wait_ready(readiness_refs(manifest, namespace), ctx.options.timeout)
    if not changed:  # a release left as it was: its webhooks were answered before
        return
    for hook in manifest:
        if hook.get("kind") == "MutatingWebhookConfiguration":
            labels = controlplane.labels_of(hook)
            revision = labels.get(controlplane.REVISION_LABEL, controlplane.DEFAULT_REVISION)
            _wait_injector(ctx, namespace, revision, max(1.0, deadline - time.monotonic()))


def _wait_injector(ctx: RunContext, namespace: str, revision: str, timeout: float) -> None:
    """Wait until istiod's injection webhook answers (a dry-run Pod is admitted).

    istiod is Ready before it has patched its CA bundle into its webhooks; a Pod the
    injector must see (the gateway's) is refused until then, and its ReplicaSet backs
    off for longer after each refusal. So the next release starts only once the
    injector answers.
    """
    probe = controlplane.injection_probe_pod(namespace, revision)
    deadline = time.monotonic() + timeout
    pause = 0.1  # istiod patches its CA bundle in a second or two: look soon, then less often
    while True:
        try:
            ctx.cluster.dry_run_create(probe)
            return
        except ApiError as exc:
            if time.monotonic() >= deadline:
                raise WaitTimeoutError(
                    f"timed out after {timeout:.0f}s; istiod's injection webhook (revision "
                    f"{revision}) does not answer: {exc.message}",
                    hint="look at istiod's log and its MutatingWebhookConfiguration; raise "
                    "--timeout if the cluster is slow",
                ) from None
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(1.0, pause * 2)
