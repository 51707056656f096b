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
LeaveMesh = Annotated[
    bool,
    typer.Option(
        "--leave-mesh",
        help="On a cluster joined in a mesh: leave it first (as `mesh leave`), naming every "
        "peer with --peer-kubeconfig or --peer-context.",
    ),
]
PeerKubeconfigs = Annotated[
    list[str] | None,
    typer.Option(
        "--peer-kubeconfig",
        metavar="FILE",
        help="With --leave-mesh: a peer cluster of the mesh, by its kubeconfig (repeat).",
    ),
]
PeerContexts = Annotated[
    list[str] | None,
    typer.Option(
        "--peer-context",
        metavar="NAME",
        help="With --leave-mesh: a peer cluster, by a context of the kubeconfig (repeat; with "
        "--peer-kubeconfig, paired in order).",
    ),
]


@c.shared_options(*c.CLUSTER, "helm", *c.WRITES, *c.REPORT)
def uninstall(
    purge: Purge = False,
    force: Force = False,
    existing_istio: ExistingIstio = False,
    leave_mesh: LeaveMesh = False,
    peer_kubeconfig: PeerKubeconfigs = None,
    peer_context: PeerContexts = None,
    *,
    options: Options,
) -> None:
    """Uninstall Istio and the Kyma patch. CRDs and the istio-system namespace stay.

    Refuses while Istio resources kymamesh did not create remain (unless --force).

    Leaves an Istio kymamesh did not install alone (unless --existing-istio).

    Refuses on a cluster joined in a mesh, naming its peers (unless --leave-mesh: it
    leaves the mesh first).
    """

    def body(ctx: RunContext) -> None:
        from kymamesh.errors import UsageError
        from kymamesh.workflows.multicluster import targets
        from kymamesh.workflows.uninstall import run_uninstall

        if (peer_kubeconfig or peer_context) and not leave_mesh:
            raise UsageError(
                "--peer-kubeconfig and --peer-context go with --leave-mesh",
                hint="add --leave-mesh to leave the mesh first, or leave them out",
            )
        kubeconfigs = peer_kubeconfig or ([options.kubeconfig] if options.kubeconfig else [])
        peers = (
            targets(kubeconfigs, peer_context or [], least=1)
            if peer_kubeconfig or (peer_context)
            else []
        )
        run_uninstall(
            ctx,
            purge=purge,
            force=force,
            existing_istio=existing_istio,
            leave_peers=peers if leave_mesh else None,
        )

    c.run_command("uninstall", options, body)
