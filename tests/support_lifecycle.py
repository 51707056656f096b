"""Shared by the status and uninstall cluster tests: run the CLI, install Istio two ways."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHARTS = ROOT / "tests" / "fixtures" / "charts"
NAMESPACE = "istio-system"
RELEASES = (("istio-base", "base"), ("istiod", "istiod"), ("istio-ingressgateway", "gateway"))


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def doc(self) -> dict[str, Any]:
        return dict(json.loads(self.stdout))

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def kymamesh(cluster: Any, *args: str, timeout: float = 600) -> Run:
    """The real entry point, against `cluster`, with its helm on PATH."""
    env = dict(cluster.env)
    env["KYMAMESH_HELM"] = str(cluster.helm)
    done = subprocess.run(
        [sys.executable, "-m", "kymamesh", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def install(cluster: Any) -> None:
    run = kymamesh(cluster, "install", "--charts-dir", str(CHARTS), "-y")
    assert run.code == 0, str(run)


def helm_install_foreign(cluster: Any) -> None:
    """Istio as someone else installs it: plain `helm install` of the charts, no kymamesh."""
    for release, chart in RELEASES:
        cluster.helm_run(
            "install", release, str(CHARTS / chart), "-n", NAMESPACE, "--create-namespace"
        )


def meshed_deployment(name: str) -> dict[str, Any]:
    """A one-replica Deployment whose Pods ask for a sidecar (`sidecar.istio.io/inject`)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, "sidecar.istio.io/inject": "true"}},
                "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]},
            },
        },
    }


def writes_during(cluster: Any, fn: Any) -> tuple[Any, Any]:
    """(fn(), the writes to the cluster while it ran: by kymamesh and by helm)."""
    mark = cluster.audit.mark()
    result = fn()
    return result, cluster.audit.writes_since(mark)


def get(cluster: Any, *args: str) -> dict[str, Any] | None:
    """`kubectl get ... -o json`, or None when not found."""
    run = cluster.kubectl("get", *args, "-o", "json", check=False)
    if run.returncode != 0:
        assert "NotFound" in run.stderr or "not found" in run.stderr, run.stderr
        return None
    return dict(json.loads(run.stdout))


def istio_crds(cluster: Any) -> list[str]:
    doc = get(cluster, "crd") or {"items": []}
    return sorted(
        c["metadata"]["name"] for c in doc["items"] if c["spec"]["group"].endswith(".istio.io")
    )


def apply(cluster: Any, manifest: str) -> None:
    cluster.kubectl("apply", "-f", "-", input=manifest)


def install_as_an_earlier_kymamesh(
    cluster: Any, charts: Path, *patch_args: str, timeout: str = "300s"
) -> None:
    """An Istio of a minor this kymamesh no longer installs (1.29), as an earlier kymamesh
    release left it: the three Helm releases with kymamesh's values and the revision
    description its install writes, then the Kyma patch by this kymamesh (`patch_args`:
    e.g. `--config FILE`, remembered like an install's)."""
    values = ROOT / "resources" / "istio" / "values"
    for release, chart in RELEASES:
        cluster.helm_run(
            "upgrade", "--install", release, str(charts / chart), "-n", NAMESPACE,
            "--create-namespace", "-f", str(values / f"{chart}.yaml"),
            "--description", "kymamesh 0.0.1", "--wait", "--timeout", timeout,
        )  # fmt: skip
    run = kymamesh(cluster, "patch", "-y", "--timeout", "180", *patch_args)
    assert run.code == 0, str(run)


def schemaless_crd(group: str, kind: str, version: str = "v1") -> dict[str, Any]:
    """A namespaced CustomResourceDefinition an API server accepts, of one served version
    whose objects may hold anything (plural: the kind in lower case with an s)."""
    plural = kind.lower() + "s"
    schema = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.lower(), "kind": kind},
            "versions": [{"name": version, "served": True, "storage": True, "schema": schema}],
        },
    }
