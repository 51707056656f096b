"""The pinned releases: Istio (`resources/istio/release.yaml`) and Dex
(`resources/dex/release.yaml`), each one typed read."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from kymamesh.resources import dex_dir, load_yaml, resources_dir
from kymamesh.versions import Version


@dataclass(frozen=True)
class ChartRelease:
    """One row of phase 1: a Helm release made from one chart."""

    release: str
    chart: str
    ready: str

    def values_file(self) -> Path:
        return resources_dir() / "values" / f"{self.chart}.yaml"


@dataclass(frozen=True)
class IstioRelease:
    version: Version
    kubernetes_min: Version
    kubernetes_max: Version
    chart_repository: str
    chart_oci: str
    namespace: str
    releases: tuple[ChartRelease, ...]

    def chart(self, name: str) -> ChartRelease:
        for row in self.releases:
            if row.chart == name:
                return row
        raise KeyError(name)


def _parse(raw: dict[str, Any]) -> IstioRelease:
    return IstioRelease(
        version=Version.parse(str(raw["version"])),
        kubernetes_min=Version.parse(str(raw["kubernetes"]["min"])),
        kubernetes_max=Version.parse(str(raw["kubernetes"]["max"])),
        chart_repository=str(raw["chartRepository"]),
        chart_oci=str(raw["chartOCI"]),
        namespace=str(raw["namespace"]),
        releases=tuple(
            ChartRelease(release=str(r["release"]), chart=str(r["chart"]), ready=str(r["ready"]))
            for r in raw["releases"]
        ),
    )


@cache
def pinned() -> IstioRelease:
    """The supported Istio release."""
    return _parse(load_yaml(resources_dir() / "release.yaml"))


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
