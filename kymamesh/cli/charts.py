"""`kymamesh charts pull`: fetch an Istio release's charts for an offline install later."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kymamesh.cli import common as c
from kymamesh.context import RunContext

app = typer.Typer(help="Work with the Istio charts of the release catalog.", no_args_is_help=True)


@app.command("pull")
def pull(
    dest: Annotated[
        Path, typer.Option("--dest", help="Folder to put the chart packages in.", file_okay=False)
    ],
    istio: Annotated[
        str | None,
        typer.Option(
            "--istio",
            metavar="VERSION",
            help="Istio release: a minor (its newest known patch) or a version; default the "
            "newest supported minor.",
        ),
    ] = None,
    repo: c.Repo = None,
    plain_http: c.PlainHttp = False,
    helm: c.HelmPath = None,
    output: c.Output = c.OutputFormat.text,
    verbose: c.Verbose = False,
) -> None:
    """Download base, istiod and gateway of an Istio release, and Dex's chart, into DEST (for
    --charts-dir). Each chart comes from the first chart source that serves it."""
    options = c.options_from(locals())

    def body(ctx: RunContext) -> None:
        from kymamesh import releases

        releases.pull(ctx, dest, istio, tuple(repo or ()), plain_http)

    c.run_command("charts pull", options, body)
