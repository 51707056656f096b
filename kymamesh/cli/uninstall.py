"""`kymamesh uninstall`: remove the Kyma patch's objects and the Istio releases, in reverse."""

from __future__ import annotations

from typing import Annotated

import typer

from kymamesh.cli import common as c
from kymamesh.context import Options, RunContext

Purge = Annotated[
    bool,
    typer.Option(
        "--purge",
        help="Also delete every Istio CRD (*.istio.io), and with them every Istio resource.",
    ),
]
Force = Annotated[
    bool,
    typer.Option(
        "--force", help="Go on although Istio resources that kymamesh did not create remain."
    ),
]
ExistingIstio = Annotated[
    bool,
    typer.Option(
        "--existing-istio",
        help="Also remove an Istio kymamesh did not install (Helm releases of the same names).",
    ),
]


@c.shared_options(*c.CLUSTER, "helm", *c.WRITES, *c.REPORT)
def uninstall(
    purge: Purge = False,
    force: Force = False,
    existing_istio: ExistingIstio = False,
    *,
    options: Options,
) -> None:
    """Uninstall Istio and the Kyma patch. CRDs and the istio-system namespace stay.

    Refuses while Istio resources kymamesh did not create remain (unless --force).

    Leaves an Istio kymamesh did not install alone (unless --existing-istio).
    """

    def body(ctx: RunContext) -> None:
        from kymamesh.workflows.uninstall import run_uninstall

        run_uninstall(ctx, purge=purge, force=force, existing_istio=existing_istio)

    c.run_command("uninstall", options, body)
