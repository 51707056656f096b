"""The release catalog as commands see it: `kymamesh releases` (what kymamesh supports,
what the cluster runs, and with `--refresh` what the chart sources serve now) and
`kymamesh charts pull` (an Istio release's charts, from the first source that serves
them, for an offline install later)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kymamesh.context import RunContext
from kymamesh.errors import ChartSourceError, KymameshError
from kymamesh.istio.release import Catalog, IstioRelease, MinorLine, catalog, dex_pinned
from kymamesh.output import ItemResult, Outcome
from kymamesh.workflows.pipeline import chart_sources, from_first_source

PHASE_PULL = "charts pull"
PHASE_CATALOG = "release catalog"


def line_json(line: MinorLine, table: Catalog) -> dict[str, Any]:
    return {
        "minor": line.name,
        "latest": str(line.latest),
        "default": line.name == table.default,
        "kubernetes": {
            "min": line.kubernetes_range().split(" to ")[0],
            "max": line.kubernetes_range().split(" to ")[1],
        },
        "endOfLife": line.end_of_life.isoformat() if line.end_of_life else None,
        "hub": line.hub,
        "compatibilityVersions": list(line.compatibility_versions),
        "patches": [
            {"version": str(p.version), "date": p.date, "source": p.source} for p in line.patches
        ],
    }


def show(ctx: RunContext, refresh: bool, repos: tuple[str, ...], plain_http: bool) -> None:
    """`kymamesh releases`: the catalog, the cluster's Istio when one is reachable, and with
    `refresh` the newer patches the chart sources serve. Reads only."""
    table = catalog()
    ctx.result.data["default"] = str(table.resolve(None).version)
    ctx.result.data["catalog"] = [line_json(line, table) for line in table.lines]
    sources = chart_sources(repos, table.resolve(None))
    ctx.result.data["chartSources"] = list(sources)
    ctx.result.data["retiredHubs"] = list(table.retired_hubs)
    ctx.result.data["cluster"] = _cluster_istio(ctx)
    if refresh:
        ctx.result.data["refresh"] = _refresh(ctx, table, sources, plain_http)


def _cluster_istio(ctx: RunContext) -> dict[str, Any] | None:
    """The Istio versions the cluster runs, or None when no cluster is reachable (the
    catalog is still shown: `releases` needs no cluster)."""
    from kymamesh.istio.controlplane import find_control_planes, istiod_version

    try:
        planes = find_control_planes(ctx.cluster, ctx.namespace)
    except KymameshError as exc:
        ctx.result.notes.append(f"no cluster read: {exc.message}")
        return None
    table = catalog()
    running = []
    for plane in planes:
        version = istiod_version(plane.deployment) if plane.deployment else None
        line = table.line_of(version) if version else None
        running.append(
            {
                "revision": plane.revision,
                "istiod": plane.istiod,
                "version": str(version) if version else None,
                "supported": line is not None,
                "newerPatch": str(line.latest)
                if line and version and version < line.latest
                else None,
            }
        )
    return {"namespace": ctx.namespace, "istiods": running}


def _refresh(
    ctx: RunContext, table: Catalog, sources: tuple[str, ...], plain_http: bool
) -> dict[str, Any]:
    """The istiod chart versions the first readable source serves, and the patches newer
    than the catalog's for each supported minor. A source that cannot be read is named."""
    for source in sources:
        try:
            served = ctx.helm.chart_versions("istiod", source, plain_http)
        except ChartSourceError as exc:
            ctx.result.notes.append(f"{source}: {exc.message}")
            continue
        newer: dict[str, list[str]] = {}
        for line in table.lines:
            later = sorted(
                v
                for v in served
                if v.minor_line == line.minor and v > line.latest and not v.is_prerelease
            )
            if later:
                newer[line.name] = [str(v) for v in later]
        newest = max((v for v in served if not v.is_prerelease), default=None)
        newer_minor = (
            str(newest)
            if newest is not None and all(newest.minor_line > line.minor for line in table.lines)
            else None
        )
        return {"source": source, "newerPatches": newer, "newerMinor": newer_minor}
    return {"source": None, "newerPatches": {}, "newerMinor": None}


def render_text(data: dict[str, Any]) -> list[str]:
    """The human lines of `kymamesh releases`."""
    lines = []
    for entry in data["catalog"]:
        mark = " (default)" if entry["default"] else ""
        eol = entry["endOfLife"] or "not announced"
        k8s = entry["kubernetes"]
        lines.append(
            f"Istio {entry['minor']}{mark}: newest known patch {entry['latest']}, Kubernetes "
            f"{k8s['min']} to {k8s['max']}, end of life {eol}, images from {entry['hub']}"
        )
    lines.append("chart sources, in order: " + ", ".join(data["chartSources"]))
    cluster = data.get("cluster")
    if cluster is not None:
        if not cluster["istiods"]:
            lines.append(f"the cluster runs no istiod in {cluster['namespace']}")
        for istiod in cluster["istiods"]:
            state = "supported" if istiod["supported"] else "not supported by this kymamesh"
            behind = f"; {istiod['newerPatch']} is out" if istiod["newerPatch"] else ""
            lines.append(
                f"the cluster runs Istio {istiod['version'] or 'of unknown version'} "
                f"(istiod {istiod['istiod']}, revision {istiod['revision']}): {state}{behind}"
            )
    refresh = data.get("refresh")
    if refresh is not None:
        if refresh["source"] is None:
            lines.append("refresh: no chart source could be read")
        else:
            newer = refresh["newerPatches"]
            for minor, versions in newer.items():
                lines.append(
                    f"{refresh['source']} serves newer {minor} patches: {', '.join(versions)}"
                )
            if refresh["newerMinor"]:
                lines.append(f"{refresh['source']} serves a newer minor: {refresh['newerMinor']}")
            if not newer and not refresh["newerMinor"]:
                lines.append(f"{refresh['source']} serves nothing newer than the catalog")
    return lines


def pull(
    ctx: RunContext, dest: Path, istio: str | None, repos: tuple[str, ...], plain_http: bool
) -> None:
    """`kymamesh charts pull`: base, istiod and gateway of one Istio release (from the first
    chart source that serves each), and Dex's chart, into `dest`."""
    release = catalog().resolve(istio)
    sources = chart_sources(repos, release)
    phase = ctx.result.phase(PHASE_PULL)
    ctx.progress.phase(f"charts pull: Istio {release.version} from {' or '.join(sources)}")
    served: dict[str, str] = {}
    for row in release.releases:
        item = ItemResult(name=row.chart, outcome=Outcome.UNCHANGED)
        phase.items.append(item)
        target = dest / f"{row.chart}-{release.version}.tgz"
        with ctx.progress.track(item):
            if target.exists():
                item.summary = f"{target} already there"
            else:
                source = _pull_first(ctx, row.chart, release, sources, dest, plain_http)
                served[row.chart] = source
                item.outcome = Outcome.CHANGED
                item.summary = f"saved {target} (from {source})"
    dex = dex_pinned()  # from its own pinned repository: --repo is Istio's
    target = dest / f"{dex.chart}-{dex.version}.tgz"
    item = ItemResult(name=dex.chart, outcome=Outcome.UNCHANGED)
    phase.items.append(item)
    with ctx.progress.track(item, f"{dex.chart} (identity, from {dex.chart_repository})"):
        if target.exists():
            item.summary = f"{target} already there"
        else:
            ctx.helm.pull(dex.chart, dex.chart_repository, dex.version, dest)
            item.outcome = Outcome.CHANGED
            item.summary = f"saved {target}"
    ctx.result.data["dest"] = str(dest)
    ctx.result.data["istio"] = str(release.version)
    ctx.result.data["servedBy"] = served
    ctx.result.notes.append(f"install offline with: kymamesh install --charts-dir {dest}")


def _pull_first(
    ctx: RunContext,
    chart: str,
    release: IstioRelease,
    sources: tuple[str, ...],
    dest: Path,
    plain_http: bool,
) -> str:
    source, _ = from_first_source(
        ctx,
        f"{chart} {release.version}",
        sources,
        lambda source: ctx.helm.pull(chart, source, release.version, dest, plain_http),
    )
    return source
