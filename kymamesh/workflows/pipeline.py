"""The install pipeline: phase 1 (the official Istio charts), then phase 2 (the Kyma patch).

`install()` and `adopt()` are the two workflows, whole: every refusal before the
first write, then the phases. The values, the patch list and the foreign-istiod
check are computed once per run.

Phase 1 is the ordered release table of `resources/istio/release.yaml`, made from
the charts of one Istio release of the catalog (`kymamesh.istio.release`): the one
`--istio` names, or the charts' own version with `--charts-dir`. Every check that
can refuse (values, Kubernetes range, chart source, version gate) runs for all
three releases before the first write. A release whose chart version and values
are already deployed is left alone, so a re-run writes nothing.

What a run works out for phase 1 (the release, the charts loaded for it) is its
`ChartRun`, and what phase 2 works from is its `patching.PatchInputs`: each made by
the workflow (or command) that starts the run and handed to the functions that need
it; the `RunContext` carries only what every command shares.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from kymamesh import meshfile, unverified
from kymamesh.adapters.cluster import Cluster, Ref
from kymamesh.adapters.helm import DeployedRelease, LoadedChart
from kymamesh.context import RunContext
from kymamesh.diffs import object_diff
from kymamesh.errors import (
    ApiError,
    ChartSourceError,
    KymameshError,
    PreconditionError,
    UsageError,
    VersionGateError,
)
from kymamesh.identity import meshca, meshidentity
from kymamesh.istio import controlplane, revisions, tags
from kymamesh.istio.controlplane import ControlPlane
from kymamesh.istio.inventory import INSTALL_DESCRIPTION, marked_by_kymamesh
from kymamesh.istio.release import ChartRelease, IstioRelease, catalog, pinned
from kymamesh.istio.values import (
    Values,
    ValueSource,
    ValueStack,
    check_mesh_config,
    check_security,
    load_user_file,
    parse_set,
    project_source,
)
from kymamesh.istio.versions import Version, check_upgrade
from kymamesh.output import ItemResult, Outcome
from kymamesh.steps.base import ONCE_CONFIG_WRITTEN, ONCE_ISTIOD_ANSWERS
from kymamesh.waits import wait_until
from kymamesh.workflows.patching import PatchInputs
from kymamesh.workloads import restarts

__all__ = [
    "ChartInputs",
    "ChartRun",
    "adopt",
    "install",
    "pinned",
    "plan_releases",
    "planned_control_plane",
    "refuse_foreign_istiod",
    "release_layout",
    "resolve_release",
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
    repository: tuple[str, ...] = ()  # --repo: chart sources in order (default: the catalog's)
    plain_http: bool = False  # --plain-http: oci:// sources without TLS
    istio: str | None = None  # --istio: a minor (its newest known patch) or a version
    hub: str | None = None  # --hub: the image registry (default: the catalog's)
    compatibility_version: str | None = None  # --compatibility-version: the previous minor
    skip_version_check: bool = False  # --skip-version-check: the Kubernetes range


@dataclass
class ChartRun:
    """What one run works out for phase 1: the Istio release it installs (set by
    `resolve_release`; until then the default one) and the charts loaded for it, each
    once per run. Made by the workflow that runs phase 1 (`install`, `upgrade finish`)."""

    release: IstioRelease | None = None
    loaded: dict[str, LoadedChart] = field(default_factory=dict)  # by chart name


@dataclass
class PlannedRelease:
    row: ChartRelease
    chart: LoadedChart
    values: Values
    deployed: DeployedRelease | None
    reasons: list[str] = field(default_factory=list)
    # its injector not seen to answer since kymamesh last changed it (`kymamesh.unverified`)
    unverified: str = ""

    @property
    def needed(self) -> bool:
        """Whether helm must install or upgrade it."""
        return bool(self.reasons)

    @property
    def acts(self) -> bool:
        """Whether this run writes for it: a helm upgrade, or a mark to clear."""
        return self.needed or bool(self.unverified)


def build_values(inputs: ChartInputs, release: IstioRelease) -> ValueStack:
    """The value stack, validated for security. Reads files only: no cluster needed."""
    charts = [r.chart for r in release.releases]
    stack = ValueStack([project_source(charts)])
    for path in inputs.values_files:
        stack.sources.append(load_user_file(path, charts))
    if inputs.set_values:
        stack.sources.append(parse_set(inputs.set_values, charts))
    check_security(stack, charts)
    check_mesh_config(stack, f"{release.version.major}.{release.version.minor}")
    return stack


def the_release(run: ChartRun) -> IstioRelease:
    """The Istio release of this run (`resolve_release`), or the default one."""
    return run.release or pinned()


def chart_sources(repos: tuple[str, ...], release: IstioRelease) -> tuple[str, ...]:
    """The chart sources to try in order: `--repo` (each checked), else the catalog's."""
    for repo in repos:
        if repo.rstrip("/") in catalog().retired_chart_sources:
            raise UsageError(
                f"--repo {repo} is a chart location Istio has switched off",
                hint="leave --repo out (kymamesh uses "
                f"{' then '.join(release.chart_sources)}), or name your own mirror",
            )
        if not repo.startswith(("https://", "http://", "oci://")):
            raise UsageError(
                f"--repo {repo} is not a chart source",
                hint="give an https:// Helm repository or an oci:// registry path",
            )
    return repos or release.chart_sources


def load_chart(
    ctx: RunContext, run: ChartRun, inputs: ChartInputs, row: ChartRelease
) -> LoadedChart:
    """The chart for one release row, loaded once per run; refused unless its Chart.yaml
    names that chart. Remote charts come from the first source that serves them."""
    release = the_release(run)
    chart = run.loaded.get(row.chart)
    if chart is None and inputs.charts_dir is not None:
        chart = ctx.helm.load_local(inputs.charts_dir, row.chart)
    elif chart is None:
        chart = _load_remote(ctx, inputs, row.chart, release)
    if chart.name != row.chart:
        raise ChartSourceError(
            f"chart {chart.source} is named {chart.name!r} in its Chart.yaml, but release "
            f"{release.namespace}/{row.release} is made from chart {row.chart!r}",
            hint=f"point the source at Istio's {row.chart} chart "
            "(`kymamesh charts pull --dest DIR` fetches them)",
        )
    run.loaded[row.chart] = chart
    return chart


def _load_remote(
    ctx: RunContext, inputs: ChartInputs, chart: str, release: IstioRelease
) -> LoadedChart:
    sources = chart_sources(inputs.repository, release)
    source, loaded = from_first_source(
        ctx,
        f"{chart} {release.version}",
        sources,
        lambda source: ctx.helm.load_remote(chart, source, release.version, inputs.plain_http),
    )
    ctx.result.data.setdefault("chartSources", {})[chart] = source
    return loaded


T = TypeVar("T")


def from_first_source(
    ctx: RunContext, what: str, sources: tuple[str, ...], fetch: Callable[[str], T]
) -> tuple[str, T]:
    """`fetch` from each chart source in order until one serves: (that source, its answer).
    Every source refusing is one error naming each source's refusal."""
    failures: list[ChartSourceError] = []
    for source in sources:
        try:
            found = fetch(source)
        except ChartSourceError as exc:
            failures.append(exc)
            if len(sources) > 1:
                ctx.progress.info(f"{what}: {source} did not serve it")
            continue
        if source != sources[0]:
            ctx.progress.info(f"{what} came from {source}")
        return source, found
    if len(failures) == 1:
        raise failures[0]
    raise ChartSourceError(
        f"no chart source served {what}: " + "; ".join(f.message for f in failures),
        hint="check the network access to the chart sources, or pass --repo with a mirror "
        "(`kymamesh charts pull` elsewhere and --charts-dir for an air-gapped cluster)",
    )


def _local_release(
    ctx: RunContext, run: ChartRun, inputs: ChartInputs, hub: str | None
) -> IstioRelease:
    """With --charts-dir, the Istio release is the charts' own version: one version for
    all three charts, of a supported minor, and the one --istio names if given."""
    assert inputs.charts_dir is not None
    table = catalog()
    charts = {
        row.chart: ctx.helm.load_local(inputs.charts_dir, row.chart) for row in table.releases
    }
    versions = {chart.version for chart in charts.values()}
    if len(versions) > 1:
        found = ", ".join(f"{c.name} {c.version}" for c in charts.values())
        raise ChartSourceError(
            f"the charts in {inputs.charts_dir} are of different Istio releases ({found})",
            hint="keep the base, istiod and gateway charts of one release together "
            "(`kymamesh charts pull --istio VERSION --dest DIR`)",
        )
    version = next(iter(versions))
    release = table.release(version, hub)
    if inputs.istio:
        wanted = table.resolve(inputs.istio)
        exact = inputs.istio.count(".") >= 2
        if (exact and wanted.version != version) or (
            not exact and wanted.version.minor_line != version.minor_line
        ):
            raise UsageError(
                f"--istio {inputs.istio} but the charts in {inputs.charts_dir} are {version}",
                hint="leave --istio out to install the charts' own version, or point "
                "--charts-dir at the charts of the release you want",
            )
    for row in table.releases:
        run.loaded[row.chart] = charts[row.chart]
    return release


def resolve_release(
    ctx: RunContext, run: ChartRun, inputs: ChartInputs, hub: str | None = None
) -> IstioRelease:
    """The Istio release this run installs, set on `run.release`: refused when it is not
    of a supported minor, or (unless --skip-version-check) when the cluster's Kubernetes
    is outside that minor's range."""
    check_hub(hub)
    if inputs.charts_dir is not None:
        release = _local_release(ctx, run, inputs, hub)
    else:
        release = catalog().resolve(inputs.istio, hub)
        line = release.line
        if release.version > line.latest:
            ctx.result.notes.append(
                f"Istio {release.version} is newer than the newest patch kymamesh knows of "
                f"{line.name} ({line.latest})"
            )
        elif release.version < line.latest:
            ctx.result.notes.append(
                f"Istio {release.version} is behind {line.latest}, the newest known patch of "
                f"{line.name}"
            )
    if inputs.compatibility_version and (
        inputs.compatibility_version not in release.line.compatibility_versions
    ):
        offered = ", ".join(release.line.compatibility_versions) or "none"
        raise UsageError(
            f"--compatibility-version {inputs.compatibility_version}: Istio "
            f"{release.line.name} offers the behaviour of {offered}",
            hint="name the previous minor the charts ship a compatibility profile for, or "
            "leave the option out",
        )
    run.release = release
    ctx.result.data["istioRelease"] = str(release.version)
    if not inputs.skip_version_check:
        check_kubernetes(ctx, release)
    return release


def check_kubernetes(ctx: RunContext, release: IstioRelease) -> None:
    """Istio supports a range of Kubernetes versions per minor; refuse outside it."""
    server = ctx.cluster.server_version()
    if release.line.supports_kubernetes(server):
        return
    raise VersionGateError(
        f"the cluster runs Kubernetes {server}; Istio {release.line.name} supports "
        f"Kubernetes {release.line.kubernetes_range()}",
        hint="install an Istio release that supports this Kubernetes (`kymamesh releases`), "
        "or pass --skip-version-check if you know better",
    )


_HUB = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9._-]+)*$")


def check_hub(hub: str | None) -> None:
    """A registry path such as `docker.io/istio` or `mirror.example:5000/istio`; never one
    that Istio switched off."""
    if hub is None:
        return
    text = hub.strip().rstrip("/")
    if not text or not _HUB.match(text):
        raise UsageError(
            f"--hub {hub!r} is not an image registry path",
            hint="write a registry and path without scheme or tag, e.g. docker.io/istio "
            "or mirror.example.com:5000/istio",
        )
    if catalog().retired_registry(text):
        raise UsageError(
            f"--hub {hub} is a registry Istio has switched off",
            hint="use docker.io/istio (the default) or a mirror of it",
        )


def release_values(release: IstioRelease, inputs: ChartInputs) -> ValueSource:
    """What the release adds to the values: its image hub (the chart's default hub is
    never trusted: the published 1.30 charts name a retired registry), and the
    compatibility profile asked for."""
    values: dict[str, Values] = {"istiod": {"hub": release.hub, "global": {"hub": release.hub}}}
    if inputs.compatibility_version:
        for row in release.releases:
            values.setdefault(row.chart, {})["compatibilityVersion"] = inputs.compatibility_version
    return ValueSource(f"the Istio {release.version} release", values)


def with_release_values(
    stack: ValueStack, release: IstioRelease, inputs: ChartInputs
) -> ValueStack:
    """The stack with the release's values under the user's (a user's own `--set
    istiod.hub=...` wins, checked like every hub)."""
    layered = ValueStack([stack.sources[0], release_values(release, inputs), *stack.sources[1:]])
    merged = layered.merged("istiod")
    glob = merged.get("global")
    hubs = {
        "hub": merged.get("hub"),
        "global.hub": glob.get("hub") if isinstance(glob, dict) else None,
    }
    for key, value in hubs.items():
        if isinstance(value, str) and value and catalog().retired_registry(value):
            raise UsageError(
                f"istiod.{key} is {value} (from {layered.origin_of('istiod', key)}), a registry "
                "Istio has switched off",
                hint="drop it (kymamesh sets the hub), or pass --hub with a mirror",
            )
    return layered


PatchSettings = Mapping[str, Mapping[str, Any]]

MESH_ORIGIN = "the mesh file (patch step mesh-components)"


def _components(specs: list[Any]) -> dict[str, Any]:
    from kymamesh.steps.components import COMPONENTS_KIND, components_wanted

    params = next((s.params for s in specs if s.kind == COMPONENTS_KIND), None)
    return components_wanted(params) if params else {}


def mesh_values(specs: list[Any]) -> dict[str, Values]:
    """The chart values of the mesh file's component settings (step `mesh-components`,
    remembered like every patch setting): HPA bounds, rollout and resources of istiod
    and the gateway, the gateway Service's traffic policy, istiod's experimental env."""
    wanted = _components(specs)
    return meshfile.chart_values(wanted) if wanted else {}


def with_compatibility_mode(
    inputs: ChartInputs, specs: list[Any], release: IstioRelease
) -> ChartInputs:
    """The mesh file's `compatibilityMode: true` is `--compatibility-version` of the minor
    before the release's (the flag, when given, wins); refused when the release's charts
    offer no profile of that minor."""
    if inputs.compatibility_version or not _components(specs).get("compatibilityMode"):
        return inputs
    previous = f"{release.version.major}.{release.version.minor - 1}"
    if previous not in release.line.compatibility_versions:
        offered = ", ".join(release.line.compatibility_versions) or "none"
        raise UsageError(
            f"compatibilityMode: Istio {release.line.name} offers no behaviour of {previous} "
            f"(its compatibility profiles: {offered})",
            hint="drop compatibilityMode from the mesh file, or pass --compatibility-version",
        )
    return replace(inputs, compatibility_version=previous)


IDENTITY_ORIGIN = "--mesh-id/--cluster-name/--network (patch step multicluster-identity)"


def with_identity_values(stack: ValueStack, specs: list[Any]) -> ValueStack:
    """The stack with the cluster's mesh ID, cluster name and network (given now or
    remembered) above kymamesh's values, below the user's `-f`/`--set`, which must not
    contradict them."""
    params = next((s.params for s in specs if s.kind == meshidentity.KIND), None)
    return _layered(stack, meshidentity.chart_values(params or {}), IDENTITY_ORIGIN)


def with_mesh_values(stack: ValueStack, specs: list[Any]) -> ValueStack:
    """The stack with the mesh file's values above kymamesh's and the release's, below the
    user's `-f`/`--set`, which must not contradict them."""
    return _layered(stack, mesh_values(specs), MESH_ORIGIN)


def _layered(stack: ValueStack, values: dict[str, Values], origin_name: str) -> ValueStack:
    if not values:
        return stack
    source = ValueSource(origin_name, values)
    layered = ValueStack([stack.sources[0], source, *stack.sources[1:]])
    for chart, chart_values in values.items():
        merged = layered.merged(chart)
        for dotted, wanted in _leaves(chart_values):
            found = _at(merged, dotted)
            origin = layered.origin_of(chart, dotted)
            if found != wanted and origin != origin_name:
                if origin_name == MESH_ORIGIN:
                    raise UsageError(
                        f"{chart}.{dotted} is {found!r} (from {origin}), but the mesh file sets "
                        f"{wanted!r}; the step mesh-components would undo the chart's value",
                        hint=f"drop {chart}.{dotted} from -f/--set, or change the mesh file",
                    )
                raise UsageError(
                    f"{chart}.{dotted} is {found!r} (from {origin}), but {origin_name} "
                    f"sets {wanted!r}",
                    hint=f"drop {chart}.{dotted} from -f/--set; the flags set it",
                )
    return layered


def _leaves(values: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            found += _leaves(value, dotted + ".")
        else:
            found.append((dotted, value))
    return found


def _at(values: Mapping[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def install(
    ctx: RunContext,
    inputs: ChartInputs,
    patch_inputs: PatchInputs,
    given: PatchSettings,
    reset: bool,
    revision_based: bool = False,
    take_over: bool = False,
    ca_dir: Path | None = None,
) -> None:
    """`kymamesh install`: insecure values, unknown patch settings, an Istio release outside
    the catalog or the cluster's Kubernetes range, a foreign istiod and every step's
    preflight are refused before the first write; then phase 1, then phase 2.
    `patch_inputs`: phase 2's (`--charts-dir`, which Dex's chart comes from too, and the
    identity file's secrets; the rest is set here);
    `given` are the patch settings of this run; `reset` forgets the remembered ones;
    `revision_based` installs the release's istiod beside the one running (a canary, see
    `kymamesh.workflows.canary`); `take_over` adopts an Istio applied without Helm into the
    releases (`kymamesh.workflows.takeover`)."""
    from kymamesh.workflows import patching, takeover

    stack = build_values(inputs, pinned())  # insecure values first, before the cluster
    run = ChartRun()
    specs = patching.patch_list_for(ctx, patch_inputs, given, reset=reset)
    meshfile.refuse_module_manager(ctx.cluster)
    release = resolve_release(ctx, run, inputs, patching.image_hub(specs))
    inputs = with_compatibility_mode(inputs, specs, release)
    stack = with_release_values(stack, release, inputs)
    stack = with_mesh_values(stack, specs)
    stack = with_identity_values(stack, specs)
    if revision_based:
        refuse_revision_value(stack, release)
    layout = release_layout(ctx, run, stack, revision_based)
    stack = layout.stack
    planned = planned_control_plane(stack)
    patch_inputs.planned_control_plane = planned
    if take_over and not layout.canary:
        takeover.preflight(ctx, release, planned, layout.istiod_release)
    else:
        refuse_foreign_istiod(ctx, planned, layout.istiod_release)
    ca_plan = _plan_ca(ctx, specs, ca_dir, release.namespace)
    if ca_dir is None and (unfinished := meshca.unfinished(ctx.cluster, release.namespace)):
        ctx.result.notes.append(unfinished)
    patching.preflight(ctx, patch_inputs, specs)
    if ca_plan is not None:  # before istiod starts: it signs with the CA it finds at start
        ca_plan = meshca.run(ctx, ca_plan, lambda: _plan_ca(ctx, specs, ca_dir, release.namespace))
    egress = meshfile.egress_enabled(_components(specs))
    rows = (*layout.rows, egress_row()) if egress and not layout.canary else layout.rows
    patch = patching.PatchRun(ctx, patch_inputs, specs)
    # phase 2 overlaps phase 1's waits where it can (not beside a canary, a take-over or a
    # change of the mesh CA)
    alone = layout.canary or take_over or ca_plan is not None or ctx.options.dry_run
    ahead = None if alone else patch.run_ahead
    run_phase_charts(
        ctx,
        run,
        inputs,
        stack,
        rows,
        revision_based=layout.canary,
        take_over=take_over,
        ahead=ahead,
    )
    if not egress and not layout.canary:
        remove_egress_gateway(ctx, run)
    if take_over:
        takeover.report_leftovers(ctx, release.namespace)
    if ca_plan is not None:  # a change of root: istiod takes the new one when it starts
        meshca.change_root_istiods(ctx, ca_plan)
    patch.finish()
    if ca_plan is not None:  # then the workloads, restarted for certificates of it
        meshca.change_root_workloads(ctx, ca_plan)
    if layout.canary:
        ctx.result.notes.extend(layout.next_steps)


def _plan_ca(
    ctx: RunContext, specs: list[Any], ca_dir: Path | None, namespace: str
) -> meshca.CaPlan | None:
    """`--ca DIR`: this cluster's plug-in CA (Secret cacerts), read-only; None without it.
    A change of root on a running istiod restarts as `--restart-proxies` says (step
    restart-proxies' parameters: whether, batches, system namespaces)."""
    if ca_dir is None:
        return None
    identity = next((s.params for s in specs if s.kind == meshidentity.KIND), None) or {}
    name = meshidentity.wanted(identity).get("clusterName")
    params = next((s.params for s in specs if s.kind == "restart-proxies"), None) or {}
    restart = restarts.restart_options(params, ctx.options.timeout)
    return meshca.plan(ctx.cluster, namespace, ca_dir, name, restart=restart)


def egress_row() -> ChartRelease:
    """The egress gateway's release: a second release of the gateway chart, with values of
    its own (`kymamesh.meshfile.egress_values`)."""
    return ChartRelease(
        release=meshfile.EGRESS_RELEASE,
        chart="gateway",
        ready="the egress gateway Deployment is Available",
        values_key=meshfile.EGRESS_VALUES,
    )


def remove_egress_gateway(ctx: RunContext, run: ChartRun) -> None:
    """The egress gateway kymamesh installed goes when the mesh file no longer enables it
    (a release of that name kymamesh did not make is left alone)."""
    namespace = the_release(run).namespace
    deployed = ctx.helm.deployed(meshfile.EGRESS_RELEASE, namespace)
    if deployed is None or not marked_by_kymamesh(deployed):
        return
    item = ItemResult(name=meshfile.EGRESS_RELEASE, outcome=Outcome.WOULD_CHANGE)
    item.summary = "uninstall: the mesh file does not enable the egress gateway"
    item.changes = [item.summary]
    ctx.result.phase(PHASE_CHARTS).items.append(item)
    if ctx.options.dry_run:
        return
    ctx.before_write()
    ctx.helm.uninstall(meshfile.EGRESS_RELEASE, namespace, ctx.options.timeout)
    item.outcome = Outcome.CHANGED


def adopt(
    ctx: RunContext,
    patch_inputs: PatchInputs,
    given: PatchSettings,
    reset: bool,
    existing_istio: bool,
) -> None:
    """`kymamesh patch`: the adoption preflight (an Istio kymamesh can patch, and, without
    `existing_istio`, one kymamesh set up), every step's preflight, then phase 2.
    `patch_inputs`: phase 2's (`--charts-dir`, the identity file's secrets)."""
    from kymamesh.istio.inventory import set_up_by_kymamesh
    from kymamesh.istio.preflight import adoption_preflight
    from kymamesh.workflows import patching

    specs = patching.patch_list_for(ctx, patch_inputs, given, reset=reset)
    meshfile.refuse_module_manager(ctx.cluster)
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
    patching.preflight(ctx, patch_inputs, specs)
    if meshfile.egress_enabled(_components(specs)):
        ctx.result.notes.append(
            "the mesh file enables the egress gateway: `kymamesh install` makes it (Helm "
            f"release {meshfile.EGRESS_RELEASE}); `patch` installs no Helm release"
        )
    patching.run_patch(ctx, patch_inputs, specs)


def plan_releases(
    ctx: RunContext,
    run: ChartRun,
    inputs: ChartInputs,
    stack: ValueStack,
    rows: tuple[ChartRelease, ...] | None = None,
    revision_based: bool = False,
) -> list[PlannedRelease]:
    """Read-only: which releases need an install or upgrade, and why. Refuses early:
    releases kymamesh did not make first, before any chart is loaded.
    `rows`: the releases to plan (default: the release table); `revision_based`: the
    version gate of an upgrade by revisions (up to two minors)."""
    release = the_release(run)
    ctx.cluster  # noqa: B018 - connect now, so an unreachable cluster is reported first
    rows = release.releases if rows is None else rows
    found = {row.release: ctx.helm.deployed(row.release, release.namespace) for row in rows}
    refuse_foreign_releases(found, release.namespace)
    marked = unverified.marks(ctx.cluster, release.namespace) if any(found.values()) else {}
    plans = []
    for row in rows:
        chart = load_chart(ctx, run, inputs, row)
        plans.append(
            PlannedRelease(
                row=row,
                chart=chart,
                values=stack.merged(row.values_for),
                deployed=found[row.release],
                unverified=marked.get(row.release, "") if found[row.release] else "",
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
            revision_based=revision_based,
        )
        if deployed.chart != plan.chart.name:
            plan.reasons.append(f"chart {deployed.chart} -> {plan.chart.name}")
        if deployed.chart_version != plan.chart.version:
            plan.reasons.append(f"upgrade {deployed.chart_version} -> {plan.chart.version}")
        if deployed.status != "deployed":
            plan.reasons.append(f"status is {deployed.status}")
        if deployed.values != plan.values:
            plan.reasons.append("values changed")
        if plan.row.chart == "istiod" and not plan.reasons:
            plan.reasons.extend(unreadable_mesh_config(ctx, stack, plan.chart.version))
    return plans


def unreadable_mesh_config(ctx: RunContext, stack: ValueStack, version: Version) -> list[str]:
    """Why the istiod release must be upgraded although nothing of it changed: its live mesh
    config (ConfigMap `istio`, key `mesh`, edited behind kymamesh's back) is one istiod cannot
    read, so istiod runs an older one ("invalid mesh config, using last known state") and a
    restarted istiod cannot start. The upgrade writes the chart's mesh config again (Helm's
    three-way merge; Helm 4 with --force-conflicts), and phase 2 patches it as always."""
    from kymamesh.istio.meshschema import mesh_config_problems

    ref = planned_control_plane(stack).configmap(controlplane.MESH_CONFIGMAP)
    live = ctx.cluster.get(ref)
    if live is None:
        return []
    mesh = controlplane.parse_mesh((live.get("data") or {}).get(controlplane.MESH_KEY))
    problems = ["key mesh is not a YAML map"] if mesh is None else []
    if mesh is not None:
        problems = mesh_config_problems(mesh, f"{version.major}.{version.minor}")
    if not problems:
        return []
    return [
        f"ConfigMap {ref.namespace}/{ref.name} holds a mesh config istiod cannot read "
        f"({'; '.join(problems)}): written again from the chart"
    ]


def refuse_foreign_releases(deployed: Mapping[str, DeployedRelease | None], namespace: str) -> None:
    """Helm releases of the release table that kymamesh did not make (a plain `helm
    install`, another tool) are not `install`'s to take over: refused, as `patch` and the
    identity step refuse an Istio or a Dex someone else installed. kymamesh's releases carry
    its mark (`kymamesh.istio.inventory.marked_by_kymamesh`), which Helm keeps on the revisions a
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


def behaviour_notes(release: IstioRelease, plans: list[PlannedRelease]) -> list[str]:
    """What changes for a mesh that comes from the previous minor (unless kept by
    --compatibility-version)."""
    changes = release.line.behaviour_changes
    for plan in plans:
        deployed = plan.deployed
        if plan.row.chart != "istiod" or deployed is None or not changes:
            continue
        if deployed.chart_version.minor_line >= release.version.minor_line:
            continue
        if plan.values.get("compatibilityVersion"):
            return []
        return [
            f"Istio {release.line.name} changes behaviour: {'; '.join(changes)}. To keep the "
            f"behaviour of {deployed.chart_version.major}.{deployed.chart_version.minor} for "
            f"now, re-run with --compatibility-version "
            f"{deployed.chart_version.major}.{deployed.chart_version.minor}"
        ]
    return []


def planned_control_plane(stack: ValueStack) -> ControlPlane:
    """The control plane the istiod release makes from these values (its revision and
    mesh root namespace); a bad revision name is a usage error."""
    return controlplane.planned_control_plane(catalog().namespace, stack.merged("istiod"))


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


def refuse_revision_value(stack: ValueStack, release: IstioRelease) -> None:
    """A revision-based upgrade names its revision itself (`1-31-1`): refuse one set by hand."""
    revision = stack.merged("istiod").get("revision")
    if revision:
        raise UsageError(
            f"--revision-based names the new revision itself "
            f"({tags.revision_name(release.version)}), but istiod.revision is set to "
            f"{revision!r} (from {stack.origin_of('istiod', 'revision')})",
            hint="drop istiod.revision from --set/-f, or install without --revision-based",
        )


def release_of(plane: ControlPlane) -> str | None:
    annotations = ((plane.deployment or {}).get("metadata") or {}).get("annotations") or {}
    owner = annotations.get("meta.helm.sh/release-name")
    return str(owner) if owner else None


def kymamesh_revisions(ctx: RunContext, planes: list[ControlPlane]) -> list[ControlPlane]:
    """The named revisions kymamesh installed by revisions (`install --revision-based`),
    known by what kymamesh wrote, whatever Istio version they run and this kymamesh
    supports: the revision's istiod belongs to the Helm release `istiod-REV`, and
    kymamesh installed or upgraded that release (its description, on the current Helm
    revision or, when the current one failed, on an earlier one)."""
    found = []
    for plane in planes:
        name = tags.istiod_release_name(plane.revision)
        if not plane.suffix or release_of(plane) != name:
            continue
        if made_by_kymamesh(ctx, name, plane.namespace):
            found.append(plane)
    return found


def made_by_kymamesh(ctx: RunContext, release: str, namespace: str) -> bool:
    from kymamesh.adapters.helm import RELEASE_SECRET_TYPE, decode_release
    from kymamesh.istio.inventory import KYMAMESH_MARK, marked_by_kymamesh

    deployed = ctx.helm.deployed(release, namespace)
    if deployed is None:
        return False
    if marked_by_kymamesh(deployed):
        return True
    if deployed.status == "deployed":  # a later `helm upgrade` of someone else: theirs now
        return False
    # a failed or pending revision carries helm's message: the revisions before it tell
    for secret in ctx.cluster.list("v1", "Secret", namespace, f"owner=helm,name={release}"):
        if secret.get("type") != RELEASE_SECRET_TYPE:
            continue
        try:
            info = decode_release(secret).get("info") or {}
        except (KeyError, TypeError, ValueError, OSError, EOFError):
            continue
        if str(info.get("description") or "").strip().lower().startswith(KYMAMESH_MARK):
            return True
    return False


def canary_planes(
    planes: list[ControlPlane], ours: list[ControlPlane], revision: str | None = None
) -> tuple[ControlPlane | None, list[ControlPlane]]:
    """The canary: among the revisions kymamesh installed by revisions (`ours`), the one
    named `revision` if given, else the newest (the highest istiod version); and every
    other control plane."""
    if revision is not None:
        canary = next((p for p in ours if p.revision == revision), None)
    else:
        ranked = sorted(ours, key=lambda p: (_version_of(p), p.revision))
        canary = ranked[-1] if ranked else None
    return canary, [p for p in planes if p is not canary]


def _version_of(plane: ControlPlane) -> Version:
    found = controlplane.istiod_version(plane.deployment) if plane.deployment else None
    return found or Version(0, 0, 0)


def _refuse_current(planes: list[ControlPlane], version: Version, namespace: str) -> None:
    """Nothing to upgrade by revisions when an istiod already runs the pinned release."""
    current = [p for p in planes if _runs(p, version)]
    if current:
        raise PreconditionError(
            f"istiod {', '.join(p.istiod for p in current)} in {namespace} already runs "
            f"Istio {version}: there is nothing to upgrade by revisions",
            hint="run `kymamesh install` without --revision-based to keep it up to date",
        )


def _runs(plane: ControlPlane, version: Version) -> bool:
    found = controlplane.istiod_version(plane.deployment) if plane.deployment else None
    return found is not None and found >= version


def release_layout(
    ctx: RunContext,
    run: ChartRun,
    stack: ValueStack,
    revision_based: bool,
    gone: frozenset[str] = frozenset(),
) -> ReleaseLayout:
    """The releases of this run: in place, or revision-based when asked or when a
    revision kymamesh installed by revisions runs (so that every later run, `install`
    included, converges on it instead of adding an unnamed istiod beside it). `gone`:
    revisions to count as removed (`upgrade finish` plans before it removes them).

    Revision-based, the new revision is named after the release's version (`1-31-1`); a
    later plain `install` converges on that one, or on the only revision kymamesh
    installed by revisions when it is named after another version (upgraded in place,
    within the version gate)."""
    release = the_release(run)
    target = tags.revision_name(release.version)
    planes = controlplane.find_control_planes(ctx.cluster, release.namespace)
    planes = [p for p in planes if p.revision not in gone]
    ours = kymamesh_revisions(ctx, planes)
    if revision_based or any(p.revision == target for p in ours):
        canary, others = canary_planes(planes, ours, target)
    elif len(ours) > 1:
        names = ", ".join(sorted(p.revision for p in ours))
        raise PreconditionError(
            f"revisions {names} (each installed by kymamesh) run side by side in "
            f"{release.namespace}: a canary upgrade is under way, and neither is Istio "
            f"{release.version}'s revision {target}",
            hint="finish it first (`kymamesh upgrade promote`, then `kymamesh upgrade finish`)",
        )
    else:
        canary, others = canary_planes(planes, ours)
    if canary is None and not revision_based:
        return ReleaseLayout(rows=release.releases, stack=stack)
    if canary is None and not others:
        raise PreconditionError(
            f"--revision-based installs istiod {release.version} beside a running istiod, "
            f"but there is no istiod in {release.namespace}",
            hint="install without --revision-based",
        )
    if canary is None:
        refuse_revision_value(stack, release)
        for plane in others:
            found = controlplane.istiod_version(plane.deployment) if plane.deployment else None
            if found is not None and found.minor_line != release.version.minor_line:
                check_upgrade(f"istiod {plane.istiod}", found, release.version, revision_based=True)
        _refuse_current(others, release.version, release.namespace)
    elif revision_based and not others:
        _refuse_current([canary], release.version, release.namespace)
    revision = canary.revision if canary is not None else target
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


def refuse_foreign_istiod(
    ctx: RunContext, plane: ControlPlane, release_name: str | None = None
) -> None:
    """An istiod that no release of ours made (istioctl, a vendor) is not ours to overwrite:
    the Deployment of `plane`, the revision `install` makes (`istiod`, or `istiod-REV`),
    which must belong to `release_name` (default: the istiod row of the release table)."""
    release = pinned()
    row = release.chart("istiod")
    if release_name is not None:
        row = replace(row, release=release_name)
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
        + ("" if owner else "; to bring it under kymamesh's releases: `install --take-over`")
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
    run: ChartRun,
    inputs: ChartInputs,
    stack: ValueStack,
    rows: tuple[ChartRelease, ...] | None = None,
    revision_based: bool = False,
    take_over: bool = False,
    ahead: Callable[[str], None] | None = None,
) -> None:
    """Phase 1: install or upgrade each release in order; each ready before the next.
    `rows`: the releases (default: the release table); `take_over`: objects applied
    without Helm are adopted (`kymamesh.workflows.takeover`); `ahead(stage)`: phase 2's
    steps that need no more than `stage` (`kymamesh.steps.base.STAGES`), run in a thread
    beside phase 1's waits: once istiod's release is written, while istiod starts; once
    istiod answers, while the next releases install."""
    release = the_release(run)
    namespace = release.namespace
    phase = ctx.result.phase(PHASE_CHARTS)
    ctx.progress.phase(f"{PHASE_CHARTS} (Istio {release.version})")
    plans = plan_releases(ctx, run, inputs, stack, rows, revision_based)
    if take_over:
        from kymamesh.workflows import takeover

        takeover.refuse_other_releases(ctx, plans, namespace)
    if any(p.needed for p in plans):
        ctx.helm.check()  # a helm that cannot install is refused before the first write
    if any(p.acts for p in plans) and not ctx.options.dry_run:
        ctx.before_write()
        plans = plan_releases(
            ctx, run, inputs, stack, rows, revision_based
        )  # again, under the lock
    ctx.result.notes.extend(behaviour_notes(release, plans))
    beside = Beside(None if ctx.options.dry_run else ahead)
    with beside:
        for plan in plans:
            label = f"{plan.row.release} ({plan.chart.name} {plan.chart.version})"
            item = ItemResult(name=plan.row.release, outcome=Outcome.UNCHANGED)
            phase.items.append(item)
            if plan.needed and plan.row.chart != "base" and beside.reached(ONCE_CONFIG_WRITTEN):
                beside.start(ONCE_ISTIOD_ANSWERS)  # istiod answers: beside the next release
            with ctx.progress.track(item, label):
                _run_release(ctx, plan, item, namespace, take_over, beside)


class Beside:
    """Phase 2's steps run ahead (`run_phase_charts`'s `ahead`), one stage at a time in a
    thread of their own; leaving the block waits for the last, then raises what it raised
    (unless the block raised first: its error is the one to tell)."""

    def __init__(self, ahead: Callable[[str], None] | None) -> None:
        self._ahead = ahead
        self._stages: list[str] = []
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def reached(self, stage: str) -> bool:
        return stage in self._stages

    def start(self, stage: str) -> None:
        """Run the steps of `stage` beside what follows (after the stage before ended)."""
        if self._ahead is None or stage in self._stages:
            return
        self.join()
        self._stages.append(stage)
        ahead = self._ahead

        def run() -> None:
            try:
                ahead(stage)
            except BaseException as exc:  # raised in the caller's thread by join()
                self._error = exc

        self._thread = threading.Thread(target=run, name=f"kymamesh-{stage}", daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def __enter__(self) -> Beside:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if exc is None:
            self.join()
            return
        with contextlib.suppress(BaseException):
            self.join()


def _run_release(
    ctx: RunContext,
    plan: PlannedRelease,
    item: ItemResult,
    namespace: str,
    take_over: bool,
    beside: Beside | None = None,
) -> None:
    from kymamesh.workflows import takeover

    item.changes = list(plan.reasons)
    if not plan.needed:
        item.summary = f"{plan.chart.version} already deployed"
        handed = takeover.hand_over(ctx, plan.row.release, namespace) if take_over else []
        if handed:  # an earlier take-over cut short after Helm's part
            item.changes += handed
            item.outcome = Outcome.WOULD_CHANGE if ctx.options.dry_run else Outcome.CHANGED
            item.summary = "taken over from Istio's installer"
        if plan.unverified:
            # changed by an earlier run whose injector check failed or was cut short
            item.changes.append(f"injector not seen to answer since: {plan.unverified}")
            if ctx.options.dry_run:
                item.outcome = Outcome.WOULD_CHANGE
                item.summary += "; would check its injector answers again"
                return
            _wait_ready(ctx, plan, namespace, changed=True, known=plan.deployed)
            item.outcome = Outcome.CHANGED
            item.summary += "; its injector answers again"
        elif not ctx.options.dry_run:
            _wait_ready(ctx, plan, namespace, changed=bool(handed), known=plan.deployed)
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
        take_ownership=take_over and plan.deployed is None,
    )
    if take_over:
        item.changes += takeover.hand_over(ctx, plan.row.release, namespace)
    item.outcome = Outcome.CHANGED
    item.summary = "; ".join(plan.reasons)
    if beside is not None and plan.row.chart == "istiod":
        beside.start(ONCE_CONFIG_WRITTEN)  # istiod's ConfigMaps are there: while it starts
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
    injectors = [h for h in manifest if h.get("kind") == "MutatingWebhookConfiguration"]
    if not changed:  # a release left as it was: its webhooks were answered before
        ctx.cluster.wait_ready(readiness_refs(manifest, namespace), ctx.options.timeout)
        return
    marks = {plan.row.release: plan.unverified} if plan.unverified else {}
    if injectors and not plan.unverified:  # marked until its injector answers
        unverified.mark(ctx.cluster, namespace, plan.row.release, unverified.WAITING)
        marks = {plan.row.release: unverified.WAITING}
    try:
        ctx.cluster.wait_ready(readiness_refs(manifest, namespace), ctx.options.timeout)
        for hook in injectors:
            labels = controlplane.labels_of(hook)
            revision = labels.get(controlplane.REVISION_LABEL, controlplane.DEFAULT_REVISION)
            _wait_injector(ctx, namespace, revision, max(1.0, deadline - time.monotonic()))
    except KymameshError as exc:
        if injectors:
            with contextlib.suppress(KymameshError):  # the wait's own error is the one to tell
                unverified.mark(ctx.cluster, namespace, plan.row.release, exc.message)
        raise
    unverified.clear(ctx.cluster, namespace, plan.row.release, marks)


DENIAL_SETTLE_S = 2.0  # the same denial this long: istiod means it (not a start-up blip)


def webhook_denial(exc: ApiError) -> bool:
    """Whether an admission webhook answered and refused (a deterministic answer: a 4xx
    whose message says a webhook denied the request), as opposed to a webhook that cannot
    be reached yet (no endpoint, connection refused, a CA bundle not patched in yet, a
    timeout: a 500 "failed calling webhook", or no answer at all)."""
    return (
        exc.status is not None
        and 400 <= exc.status < 500
        and exc.status != 429
        and "denied the request" in exc.message
    )


class Denials:
    """Tells when a webhook's denial is meant: the same denial (`webhook_denial`) seen
    again after DENIAL_SETTLE_S, not a blip while istiod starts."""

    def __init__(self) -> None:
        self._first: tuple[str, float] | None = None  # the denial, and since when

    def see(self, exc: ApiError | None) -> bool:
        """Record one probe's error (None: it got an answer); True once settled."""
        now = time.monotonic()
        if exc is None or not webhook_denial(exc):
            self._first = None
            return False
        if self._first is None or self._first[0] != exc.message:
            self._first = (exc.message, now)
            return False
        return now - self._first[1] >= DENIAL_SETTLE_S


def _older_istiods(cluster: Cluster, namespace: str, revision: str) -> str:
    """The istiod Pods of `revision` that run an older image than their Deployment's
    template ("" when none): during an upgrade they may answer the injection webhook with
    the new template, which an older istiod cannot render."""
    names: list[str] = []
    for deployment in controlplane.istiod_deployments(cluster, namespace):
        if controlplane.revision_of(deployment) != revision:
            continue
        match = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        selector = ",".join(f"{k}={v}" for k, v in sorted(match.items()))
        pods = cluster.list("v1", "Pod", namespace, label_selector=selector) if match else []
        names += controlplane.older_istiod_pods(deployment, pods)
    return ", ".join(names)


def _wait_injector(ctx: RunContext, namespace: str, revision: str, timeout: float) -> None:
    """Wait until istiod's injection webhook answers: a dry-run Pod gets the sidecar of
    the revision expected to inject it (`revision`; for the unnamed one, the revision the
    default tag points at, if there is one).

    istiod is Ready before it has patched its CA bundle into its webhooks; a Pod the
    injector must see (the gateway's) is refused until then, and its ReplicaSet backs
    off for longer after each refusal. So the next release starts only once the
    injector answers. The probe is made where its labels decide which webhook is called
    (`controlplane.probe_namespace`): a Pod admitted without a sidecar proves nothing. A
    webhook that answers with a denial (a template istiod cannot render) is answering:
    the same denial for DENIAL_SETTLE_S ends the wait with its message instead of
    waiting out the timeout, unless istiod Pods of an older image (an upgrade's Pods on
    their way out) still run: those render the new template with an older istiod, so the
    denial is judged again once they are gone.
    """
    expected = revision
    if revision == controlplane.DEFAULT_REVISION:
        tag = ctx.cluster.get(
            Ref(tags.WEBHOOK_API, tags.MUTATING, tags.tag_webhook_name(namespace))
        )
        expected = tags.tag_revision(tag) or revision
    denials = Denials()

    def pending() -> str | None:
        try:
            got = revisions.probe_injection(ctx.cluster, revision, namespace)
        except ApiError as exc:
            if denials.see(exc):
                older = _older_istiods(ctx.cluster, namespace, revision)
                if older:  # the denial may be theirs: judge it again once they are gone
                    denials.see(None)
                    return f"{exc.message} (istiod Pods of an older image still run: {older})"
                raise PreconditionError(
                    f"istiod's injection webhook (revision {expected}) answers, and refuses "
                    f"Pods: {exc.message}",
                    hint="the injection template cannot be rendered with these values (or "
                    "istiod refuses them): fix the values given with -f/--set, or look at "
                    "istiod's log, and re-run",
                ) from None
            return exc.message
        denials.see(None)
        if got == expected:
            return None
        return "a test Pod got " + (
            "no sidecar" if got is None else f"the sidecar of revision {got}"
        )

    # istiod patches its CA bundle in a second or two: look soon, then less often
    wait_until(
        pending,
        timeout,
        lambda seen: (
            f"timed out after {timeout:.0f}s; istiod's injection webhook (revision "
            f"{expected}) does not answer: {seen}"
        ),
        hint="look at istiod's log and its MutatingWebhookConfiguration; raise "
        "--timeout if the cluster is slow",
    )
