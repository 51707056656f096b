"""The releases kymamesh installs: Istio's release catalog (`resources/istio/catalog.yaml`,
the supported minors with their newest known patches) and phase 1's release table
(`resources/istio/release.yaml`), and the pinned Dex (`resources/dex/release.yaml`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any

from kymamesh.errors import PreconditionError, UsageError
from kymamesh.istio.versions import Version
from kymamesh.resources import dex_dir, load_yaml, resources_dir


@dataclass(frozen=True)
class ChartRelease:
    """One row of phase 1: a Helm release made from one chart."""

    release: str
    chart: str
    ready: str
    values_key: str = ""  # the key of its values when it is not the chart's (a 2nd release)

    @property
    def values_for(self) -> str:
        """The key of this release's values in the value stack."""
        return self.values_key or self.chart

    def values_file(self) -> Path:
        return resources_dir() / "values" / f"{self.chart}.yaml"


@dataclass(frozen=True)
class PatchRelease:
    """One patch release the catalog knows, with the evidence for it."""

    version: Version
    date: str
    source: str


@dataclass(frozen=True)
class MinorLine:
    """One supported Istio minor: its newest known patch, where it runs, when it ends."""

    name: str  # "1.31"
    latest: Version
    kubernetes_min: Version
    kubernetes_max: Version
    end_of_life: date | None
    hub: str
    compatibility_versions: tuple[str, ...]
    behaviour_changes: tuple[str, ...]
    patches: tuple[PatchRelease, ...]

    @property
    def minor(self) -> tuple[int, int]:
        return self.latest.minor_line

    def kubernetes_range(self) -> str:
        low, high = self.kubernetes_min, self.kubernetes_max
        return f"{low.major}.{low.minor} to {high.major}.{high.minor}"

    def supports_kubernetes(self, server: Version) -> bool:
        return self.kubernetes_min.minor_line <= server.minor_line <= self.kubernetes_max.minor_line

    def known(self, version: Version) -> PatchRelease | None:
        return next((p for p in self.patches if p.version == version), None)


@dataclass(frozen=True)
class IstioRelease:
    """The Istio release one run installs: a version of a supported minor, the chart
    sources to fetch it from (in order), the image hub, and the Helm release table."""

    version: Version
    line: MinorLine
    chart_sources: tuple[str, ...]
    hub: str
    namespace: str
    releases: tuple[ChartRelease, ...]

    @property
    def kubernetes_min(self) -> Version:
        return self.line.kubernetes_min

    @property
    def kubernetes_max(self) -> Version:
        return self.line.kubernetes_max

    def chart(self, name: str) -> ChartRelease:
        for row in self.releases:
            if row.chart == name:
                return row
        raise KeyError(name)


@dataclass(frozen=True)
class Catalog:
    """The supported Istio minors (`resources/istio/catalog.yaml`), newest first, and
    the phase 1 release table (`resources/istio/release.yaml`)."""

    default: str
    lines: tuple[MinorLine, ...]
    chart_sources: tuple[str, ...]
    retired_hubs: tuple[str, ...]
    retired_chart_sources: tuple[str, ...]
    helm3_security_end: date
    namespace: str
    releases: tuple[ChartRelease, ...]

    def line_of(self, version: Version) -> MinorLine | None:
        return next((line for line in self.lines if line.minor == version.minor_line), None)

    def retired_registry(self, image_or_hub: str) -> str | None:
        """The switched-off registry an image reference or hub names, if any."""
        text = image_or_hub.strip()
        for retired in self.retired_hubs:
            if text == retired or text.startswith(retired + "/"):
                return retired
        return None

    def supported_minors(self) -> str:
        return ", ".join(line.name for line in self.lines)

    def release(self, version: Version, hub: str | None = None) -> IstioRelease:
        """The release of `version`, which must be of a supported minor."""
        line = self.line_of(version)
        if line is None:
            raise PreconditionError(
                f"Istio {version} is not of a minor kymamesh supports ({self.supported_minors()})",
                hint=f"install one of them (`kymamesh releases` lists the catalog), e.g. "
                f"--istio {self.default}",
            )
        return IstioRelease(
            version=version,
            line=line,
            chart_sources=self.chart_sources,
            hub=hub or line.hub,
            namespace=self.namespace,
            releases=self.releases,
        )

    def resolve(self, wanted: str | None = None, hub: str | None = None) -> IstioRelease:
        """`--istio`: None is the default minor's newest known patch; `1.31` a minor's
        newest known patch; `1.31.1` that exact version."""
        text = (wanted or self.default).strip()
        minor_only = re.fullmatch(r"v?(\d+)\.(\d+)", text)
        try:
            version = Version.parse(text)
        except PreconditionError:
            raise UsageError(
                f"--istio {text!r} is not an Istio version (a minor such as "
                f"{self.default}, or a release such as {self.lines[0].latest})",
                hint=f"`kymamesh releases` lists the supported ones: {self.supported_minors()}",
            ) from None
        if minor_only:
            line = self.line_of(version)
            if line is None:
                return self.release(version, hub)  # refused there, naming what is supported
            version = line.latest
        return self.release(version, hub)


def _day(raw: Any) -> date | None:
    if raw is None or raw == "":
        return None
    return raw if isinstance(raw, date) else date.fromisoformat(str(raw))


def _line(name: str, raw: dict[str, Any]) -> MinorLine:
    latest = Version.parse(str(raw["latest"]))
    if f"{latest.major}.{latest.minor}" != name:
        raise ValueError(f"catalog entry {name}: latest {latest} is of another minor")
    return MinorLine(
        name=name,
        latest=latest,
        kubernetes_min=Version.parse(str(raw["kubernetes"]["min"])),
        kubernetes_max=Version.parse(str(raw["kubernetes"]["max"])),
        end_of_life=_day(raw.get("endOfLife")),
        hub=str(raw["hub"]),
        compatibility_versions=tuple(str(v) for v in raw.get("compatibilityVersions") or ()),
        behaviour_changes=tuple(str(v) for v in raw.get("behaviourChanges") or ()),
        patches=tuple(
            PatchRelease(Version.parse(str(p["version"])), str(p["date"]), str(p["source"]))
            for p in raw.get("patches") or ()
        ),
    )


def parse_catalog(raw: dict[str, Any], table: dict[str, Any]) -> Catalog:
    lines = sorted(
        (_line(str(name), entry) for name, entry in raw["minors"].items()),
        key=lambda line: line.latest,
        reverse=True,
    )
    return Catalog(
        default=str(raw["default"]),
        lines=tuple(lines),
        chart_sources=tuple(str(s) for s in raw["chartSources"]),
        retired_hubs=tuple(str(h).rstrip("/") for h in raw.get("retiredHubs") or ()),
        retired_chart_sources=tuple(
            str(s).rstrip("/") for s in raw.get("retiredChartSources") or ()
        ),
        helm3_security_end=_day(raw["helm3SecurityEnd"]) or date.max,
        namespace=str(table["namespace"]),
        releases=tuple(
            ChartRelease(release=str(r["release"]), chart=str(r["chart"]), ready=str(r["ready"]))
            for r in table["releases"]
        ),
    )


@cache
def catalog() -> Catalog:
    """The release catalog and the release table, read once."""
    return parse_catalog(
        load_yaml(resources_dir() / "catalog.yaml"), load_yaml(resources_dir() / "release.yaml")
    )


def pinned() -> IstioRelease:
    """The default release: the newest known patch of the default minor."""
    return catalog().resolve(None)


@dataclass(frozen=True)
class DexRelease:
    """Dex, installed from its official chart when an identity configuration is given."""

    chart: str
    version: Version
    chart_repository: str
    release: str
    namespace: str
    port: int


@cache
def dex_pinned() -> DexRelease:
    raw = load_yaml(dex_dir() / "release.yaml")
    return DexRelease(
        chart=str(raw["chart"]),
        version=Version.parse(str(raw["version"])),
        chart_repository=str(raw["chartRepository"]),
        release=str(raw["release"]),
        namespace=str(raw["namespace"]),
        port=int(raw["port"]),
    )
