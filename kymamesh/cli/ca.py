"""`kymamesh ca create`: a root CA for a mesh of several clusters (its key stays with you)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kymamesh.cli import common as c
from kymamesh.context import Options, RunContext

app = typer.Typer(help="The mesh's root of trust (shared by its clusters).", no_args_is_help=True)


@app.command("create")
@c.shared_options(*c.REPORT)
def create(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            metavar="DIR",
            help="Folder for root-cert.pem and root-key.pem (made if missing; never overwritten).",
            file_okay=False,
        ),
    ],
    name: Annotated[
        str,
        typer.Option("--name", metavar="NAME", help="Names the root: CN=NAME root CA."),
    ] = "mesh",
    days: Annotated[
        int, typer.Option("--days", metavar="N", help="How long the root is valid, in days.")
    ] = 3650,
    *,
    options: Options,
) -> None:
    """Make a root CA in DIR: root-cert.pem and root-key.pem (readable by you only).

    Then `kymamesh install --ca DIR` on each cluster gives it an intermediate CA of its
    own, issued by this root. The root's key never leaves DIR: keep it safe and offline.
    """

    def body(ctx: RunContext) -> None:
        from kymamesh.identity import meshca

        facts = meshca.create_root(out, name, days)
        ctx.result.data = facts
        ctx.result.notes.append(
            f"root CA {facts['subject']} in {facts['rootCert']}, valid until {facts['notAfter']}; "
            f"its key {facts['rootKey']} stays with you (never in a cluster)"
        )

    c.run_command("ca create", options, body)
