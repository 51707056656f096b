"""`kymamesh mesh join`: one mesh across clusters (multi-primary)."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kymamesh.cli import common as c
from kymamesh.context import Options, RunContext
from kymamesh.errors import UsageError

if TYPE_CHECKING:
    from kymamesh.identity.meshca import MeshCa
    from kymamesh.workflows.multicluster import ChartSource

app = typer.Typer(help="One mesh across clusters.", no_args_is_help=True)

Kubeconfigs = Annotated[
    list[str] | None,
    typer.Option(
        "--kubeconfig",
        metavar="FILE",
        help="A cluster of the mesh, by its kubeconfig (repeat: one per cluster).",
    ),
]
Contexts = Annotated[
    list[str] | None,
    typer.Option(
        "--context",
        metavar="NAME",
        help="A cluster of the mesh, by a context of the kubeconfig (repeat; with "
        "--kubeconfig, paired in order).",
    ),
]
ApiServers = Annotated[
    list[str] | None,
    typer.Option(
        "--api-server",
        metavar="NAME=URL",
        help="The URL the peers reach cluster NAME's API server at (default: the kubeconfig's "
        "server), e.g. a private endpoint.",
    ),
]

GatewayChartsDirs = Annotated[
    list[Path] | None,
    typer.Option(
        "--charts-dir",
        metavar="DIR",
        file_okay=False,
        help="On several networks: the gateway chart for the east-west gateways from a local "
        "chart folder (repeat: one per Istio release of the clusters).",
    ),
]
GatewayWait = Annotated[
    float,
    typer.Option(
        "--gateway-wait",
        metavar="SECONDS",
        help="On several networks: how long to wait for a new east-west gateway's address "
        "from the load balancer.",
    ),
]


def chart_source(
    charts_dirs: list[Path] | None, repo: list[str] | None, plain_http: bool
) -> ChartSource:
    """Where `mesh join` takes the gateway chart from (the east-west gateways)."""
    from kymamesh.workflows.multicluster import ChartSource

    return ChartSource(tuple(charts_dirs or ()), tuple(repo or ()), plain_http)


def check_gateway_wait(seconds: float) -> float:
    if not math.isfinite(seconds) or not 1 <= seconds <= c.MAX_WAIT_S:
        raise UsageError(
            f"--gateway-wait {seconds:g} is not a number of seconds from 1 to {c.MAX_WAIT_S:g}",
            hint="give the seconds to wait for a load balancer's address, e.g. --gateway-wait 300",
        )
    return seconds


_DURATION = re.compile(r"^(\d+)([dhm])$")


def parse_lifetime(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if not match:
        raise UsageError(
            f"--token-lifetime {text!r} is not a duration",
            hint="give a number with d, h or m, e.g. --token-lifetime 30d",
        )
    n, unit = int(match.group(1)), match.group(2)
    return {"d": timedelta(days=n), "h": timedelta(hours=n), "m": timedelta(minutes=n)}[unit]


@app.command("join")
@c.shared_options("helm", "dry_run", "timeout", "lock_wait", *c.REPORT)
def join(
    kubeconfigs: Kubeconfigs = None,
    contexts: Contexts = None,
    api_server: ApiServers = None,
    token_lifetime: Annotated[
        str,
        typer.Option(
            "--token-lifetime",
            metavar="DURATION",
            help="How long each reader token is valid (30d, 12h, 90m); a re-run renews one "
            "with less than a third left.",
        ),
    ] = "30d",
    charts_dir: GatewayChartsDirs = None,
    repo: c.Repo = None,
    plain_http: c.PlainHttp = False,
    gateway_wait: GatewayWait = 300.0,
    ca: Annotated[
        Path | None,
        typer.Option(
            "--ca",
            metavar="DIR",
            help="The mesh's root CA (`kymamesh ca create --out DIR`): each cluster without "
            "cacerts of it gets its own intermediate; an istiod running on another CA is "
            "refused with the plan, carried out with --restart-proxies.",
            file_okay=False,
        ),
    ] = None,
    restart_proxies: Annotated[
        bool,
        typer.Option(
            "--restart-proxies",
            help="With --ca: move a running istiod to the mesh root (istiod, then every "
            "sidecar and gateway restarted in batches).",
        ),
    ] = False,
    restart_batch: Annotated[
        str | None,
        typer.Option(
            "--restart-batch",
            metavar="N|N%",
            help="With --restart-proxies: restart N workloads at a time, or N% of them "
            "(default 10).",
        ),
    ] = None,
    *,
    options: Options,
) -> None:
    """Join clusters into one mesh: each istiod watches every peer's API server.

    Every cluster is checked before the first write (same mesh ID and trust domain,
    distinct cluster names, cacerts of one root, Istio minors at most one apart, API
    servers that answer). On several networks, a cluster without an east-west gateway gets
    one (Helm release istio-eastwestgateway of Istio's gateway chart of its release), and
    join waits for its address. Then, for each pair: a reader ServiceAccount in one cluster,
    bound to Istio's reader ClusterRole, and in the other a remote secret with a token of
    it. Then each istiod must report every peer synced. A re-run writes nothing. With
    --ca DIR, each cluster first gets its plug-in CA of that root.
    """

    def body(ctx: RunContext) -> None:
        from kymamesh.workflows import multicluster

        found = multicluster.targets(kubeconfigs or [], contexts or [])
        shared = mesh_ca(ca, restart_proxies, restart_batch, options.timeout)
        multicluster.join(
            ctx,
            found,
            api_server or [],
            parse_lifetime(token_lifetime),
            source=chart_source(charts_dir, repo, plain_http),
            gateway_wait=check_gateway_wait(gateway_wait),
            ca=shared,
        )

    c.run_command("mesh join", options, body)


def mesh_ca(
    ca: Path | None, restart_proxies: bool, restart_batch: str | None, timeout: float
) -> MeshCa | None:
    """`--ca DIR` with how a change of root restarts; the flags that need it, checked."""
    from kymamesh.cli.patch_options import restart_batch_value
    from kymamesh.identity.meshca import MeshCa
    from kymamesh.workloads.restarts import DEFAULT_BATCH_SIZE, RestartOptions

    if ca is None:
        if restart_proxies or restart_batch is not None:
            raise UsageError(
                "--restart-proxies and --restart-batch go with --ca",
                hint="give --ca DIR (the mesh root), or leave them out",
            )
        return None
    if restart_batch is not None and not restart_proxies:
        raise UsageError(
            "--restart-batch goes with --restart-proxies",
            hint="add --restart-proxies, or leave --restart-batch out",
        )
    batch = restart_batch_value(restart_batch) if restart_batch else DEFAULT_BATCH_SIZE
    return MeshCa(ca, RestartOptions(restart_proxies, batch, timeout=timeout))


@app.command("rotate")
@c.shared_options("helm", "dry_run", "timeout", "lock_wait", *c.REPORT)
def rotate(
    kubeconfigs: Kubeconfigs = None,
    contexts: Contexts = None,
    api_server: ApiServers = None,
    token_lifetime: Annotated[
        str,
        typer.Option(
            "--token-lifetime",
            metavar="DURATION",
            help="How long each new reader token is valid (30d, 12h, 90m).",
        ),
    ] = "30d",
    *,
    options: Options,
) -> None:
    """Renew every reader token of a joined mesh: new tokens, the remote secrets updated,
    every istiod synced on them, then the old tokens revoked (their Secrets deleted).

    Name every cluster of the mesh, as for `mesh join`; the same checks run first.
    """

    def body(ctx: RunContext) -> None:
        from kymamesh.workflows import multicluster

        found = multicluster.targets(kubeconfigs or [], contexts or [])
        multicluster.join(ctx, found, api_server or [], parse_lifetime(token_lifetime), rotate=True)

    c.run_command("mesh rotate", options, body)


@app.command("leave")
@c.shared_options("helm", "dry_run", "timeout", "lock_wait", *c.REPORT)
def leave(
    kubeconfigs: Kubeconfigs = None,
    contexts: Contexts = None,
    *,
    options: Options,
) -> None:
    """Take a cluster out of the mesh: the first cluster named leaves, the others are its
    peers (all of them: each one's remote secret for it is removed too).

    Deletes what `mesh join` wrote between them, on both sides (remote secrets, reader
    accounts, their bindings and token Secrets, which revokes the tokens), then waits
    until no istiod lists the other side.
    """

    def body(ctx: RunContext) -> None:
        from kymamesh.workflows import multicluster

        multicluster.leave(ctx, multicluster.targets(kubeconfigs or [], contexts or []))

    c.run_command("mesh leave", options, body)


@app.command("status")
@c.shared_options(*c.REPORT)
def status(
    kubeconfigs: Kubeconfigs = None,
    contexts: Contexts = None,
    *,
    options: Options,
) -> None:
    """Show each cluster's peers: their sync state in its istiod, when each token expires,
    and what is wrong (a peer not synced, a token expired or revoked, a pair not joined).
    Writes nothing. Exit 0 when healthy, 7 when not."""

    def body(ctx: RunContext) -> None:
        from kymamesh.errors import ExitCode
        from kymamesh.workflows import multicluster

        found = multicluster.targets(kubeconfigs or [], contexts or [], least=1)
        if not multicluster.mesh_status(ctx, found):
            ctx.result.exit_code = ExitCode.UNHEALTHY

    c.run_command("mesh status", options, body)
