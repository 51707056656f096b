"""`kymamesh version`: this tool's version and the Istio release it installs."""

from __future__ import annotations

import json

import typer

from kymamesh.cli.common import Output, OutputFormat


def version(output: Output = OutputFormat.text) -> None:
    """Print kymamesh's version and the supported Istio release."""
    from kymamesh import __version__
    from kymamesh.release import pinned

    release = pinned()
    info = {
        "kymamesh": __version__,
        "istio": str(release.version),
        "kubernetes": f"{release.kubernetes_min.major}.{release.kubernetes_min.minor}-"
        f"{release.kubernetes_max.major}.{release.kubernetes_max.minor}",
    }
    if output == OutputFormat.json:
        typer.echo(json.dumps(info, indent=2))
    else:
        typer.echo(
            f"kymamesh {info['kymamesh']} (Istio {info['istio']}, Kubernetes {info['kubernetes']})"
        )
