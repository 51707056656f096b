"""`kymamesh releases`: the Istio releases kymamesh supports, and what the cluster runs."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from kymamesh.cli import common as c
from kymamesh.context import Options, RunContext


@c.shared_options(*c.CLUSTER, *c.REPORT)
def releases(
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh",
            help="Also read the chart sources (or --repo) and show patches newer than the "
            "catalog's. Never needed to install.",
        ),
    ] = False,
    repo: c.Repo = None,
    plain_http: c.PlainHttp = False,
    *,
    options: Options,
) -> None:
    """List the release catalog (each supported Istio minor, its newest known patch, its
    Kubernetes range and end of life), the default, and the Istio the cluster runs."""

    def body(ctx: RunContext) -> None:
        from kymamesh.workflows import releases as workflow

        workflow.show(ctx, refresh, tuple(repo or ()), plain_http)
        if ctx.options.output == c.OutputFormat.text:
            sys.stdout.write("\n".join(workflow.render_text(ctx.result.data)) + "\n")

    c.run_command("releases", options, body)
