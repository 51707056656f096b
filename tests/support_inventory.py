"""Fakes for the status and uninstall unit tests: Helm, and the in-memory cluster of
`tests.support_fake_cluster`."""

from __future__ import annotations

from typing import Any

from kymamesh.adapters.helm import DeployedRelease
from kymamesh.context import Options, RunContext
from kymamesh.istio.versions import Version
from kymamesh.output import Progress, Result
from tests.support_fake_cluster import FakeCluster


def release(
    name: str, chart: str, *, status: str = "deployed", by_kymamesh: bool = True
) -> DeployedRelease:
    return DeployedRelease(
        name=name,
        namespace="istio-system",
        revision=1,
        status=status,
        chart=chart,
        chart_version=Version(1, 30, 3),
        app_version="1.30.3",
        values={},
        description="kymamesh 0.1.0" if by_kymamesh else "Install complete",
    )


def crd(
    group: str, kind: str, plural: str, versions: tuple[str, ...] = ("v1",), storage: str = "v1"
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": {"kind": kind, "plural": plural},
            "versions": [{"name": v, "served": True, "storage": v == storage} for v in versions],
        },
    }


def obj(
    api_version: str,
    kind: str,
    name: str,
    namespace: str = "",
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    **rest: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = labels
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": api_version, "kind": kind, "metadata": meta, **rest}


def istiod(
    version: str = "1.30.3", revision: str = "default", release_name: str | None = "istiod"
) -> dict[str, Any]:
    name = "istiod" if revision == "default" else f"istiod-{revision}"
    return obj(
        "apps/v1",
        "Deployment",
        name,
        "istio-system",
        labels={"app": "istiod", "istio.io/rev": revision},
        annotations={"meta.helm.sh/release-name": release_name} if release_name else None,
        spec={
            "replicas": 1,
            "template": {
                "spec": {
                    "containers": [
                        {"name": "discovery", "image": f"docker.io/istio/pilot:{version}"}
                    ]
                }
            },
        },
        status={"observedGeneration": 1, "updatedReplicas": 1, "availableReplicas": 1},
    )


class FakeHelm:
    def __init__(self, releases: list[DeployedRelease]) -> None:
        self.releases = {r.name: r for r in releases}
        self.uninstalled: list[str] = []

    def deployed(self, name: str, namespace: str) -> DeployedRelease | None:
        return self.releases.get(name)

    def uninstall(self, name: str, namespace: str, timeout: float) -> None:
        self.uninstalled.append(name)
        self.releases.pop(name, None)


def context(cluster: FakeCluster, helm: FakeHelm, **options: Any) -> RunContext:
    return RunContext(
        options=Options(**options),
        result=Result(command="test"),
        progress=Progress(quiet=True),
        _cluster=cluster,  # type: ignore[arg-type]
        _helm=helm,  # type: ignore[arg-type]
    )
