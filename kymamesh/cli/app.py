"""The `kymamesh` command. Heavy libraries are imported only by the commands that need them."""

from __future__ import annotations

import typer

from kymamesh.cli import (
    ca,
    charts,
    inject,
    install,
    mesh,
    patch,
    releases,
    status,
    uninstall,
    upgrade,
    version,
)
from kymamesh.cli.parsing import KymameshCommand, KymameshGroup

app = typer.Typer(
    name="kymamesh",
    cls=KymameshGroup,  # parser errors: error and hint lines, the JSON result, exit 2
    help="Install and maintain a Kyma Service Mesh: Istio, made Kyma-ready.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help text: typer's rich help would import rich's Markdown and Pygments,
    # about a quarter of a second before the first line is printed.
    rich_markup_mode=None,
)

app.command("install")(install.install)
app.command("patch")(patch.patch)
app.command("inject-namespace", cls=KymameshCommand)(inject.inject_namespace)
app.command("status")(status.status)
app.command("uninstall")(uninstall.uninstall)
app.add_typer(upgrade.app, name="upgrade")
app.add_typer(charts.app, name="charts")
app.add_typer(ca.app, name="ca")
app.add_typer(mesh.app, name="mesh")
app.command("releases")(releases.releases)
app.command("version")(version.version)


def main() -> None:
    app()
