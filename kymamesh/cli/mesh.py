"""`kymamesh mesh join`: one mesh across clusters (multi-primary)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

import typer

from kymamesh.cli import common as c
from kymamesh.context import Options, RunContext
from kymamesh.errors import UsageError

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
@c.shared_options("dry_run", "timeout", "lock_wait", *c.REPORT)
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
    *,
    options: Options,
) -> None:
    """Join clusters into one mesh: each istiod watches every peer's API server.

    Every cluster is checked before the first write (same mesh ID and trust domain,
    distinct cluster names, cacerts of one root, Istio minors at most one apart, API
    servers that answer). Then, for each pair: a reader ServiceAccount in one cluster,
    bound to Istio's reader ClusterRole, and in the other a remote secret with a token of
    it. Then each istiod must report every peer synced. A re-run writes nothing.
    """

    def body(ctx: RunContext) -> None:
        from kymamesh.workflows import multicluster

        found = multicluster.targets(kubeconfigs or [], contexts or [])
        multicluster.join(ctx, found, api_server or [], parse_lifetime(token_lifetime))

    c.run_command("mesh join", options, body)


@app.command("rotate")
@c.shared_options("dry_run", "timeout", "lock_wait", *c.REPORT)
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
@c.shared_options("dry_run", "timeout", "lock_wait", *c.REPORT)
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
