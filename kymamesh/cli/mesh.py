"""`kymamesh mesh join`: one mesh across clusters (multi-primary)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

import typer

from kymamesh.cli import common as c
from kymamesh.context import RunContext
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
    dry_run: c.DryRun = False,
    output: c.Output = c.OutputFormat.text,
    verbose: c.Verbose = False,
    timeout: c.Timeout = 300.0,
    lock_wait: c.LockWait = 60.0,
) -> None:
    """Join clusters into one mesh: each istiod watches every peer's API server.

    Every cluster is checked before the first write (same mesh ID and trust domain,
    distinct cluster names, cacerts of one root, Istio minors at most one apart, API
    servers that answer). Then, for each pair: a reader ServiceAccount in one cluster,
    bound to Istio's reader ClusterRole, and in the other a remote secret with a token of
    it. Then each istiod must report every peer synced. A re-run writes nothing.
    """
    options = c.options_from(locals())

    def body(ctx: RunContext) -> None:
        from kymamesh import multicluster

        found = multicluster.targets(kubeconfigs or [], contexts or [])
        multicluster.join(ctx, found, api_server or [], parse_lifetime(token_lifetime))

    c.run_command("mesh join", options, body)
