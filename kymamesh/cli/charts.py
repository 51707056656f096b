"""`kymamesh charts pull`: fetch an Istio release's charts for an offline install later."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from kymamesh.cli import common as c
from kymamesh.context import Options, RunContext
from kymamesh.errors import UsageError


def prepare_dest(dest: Path) -> None:
    """Make the --dest folder and check that files can be written there, before any download."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=dest, prefix=".kymamesh-"):
            pass
    except OSError as exc:
        reason = "it is a file" if dest.is_file() else exc.strerror or type(exc).__name__
        raise UsageError(
            f"cannot write chart packages into --dest {dest}: {reason}",
            hint="give --dest a folder you can write to (it is made if missing)",
        ) from None


app = typer.Typer(help="Work with the Istio charts of the release catalog.", no_args_is_help=True)


@app.command("pull")
@c.shared_options("helm", *c.REPORT)
def pull(
    dest: Annotated[
        Path,
        typer.Option(
            "--dest", metavar="DIR", help="Folder to put the chart packages in.", file_okay=False
        ),
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
    *,
    options: Options,
) -> None:
    """Download base, istiod and gateway of an Istio release, and Dex's chart, into DEST (for
    --charts-dir). Each chart comes from the first chart source that serves it."""

    def body(ctx: RunContext) -> None:
        from kymamesh.workflows import releases

        prepare_dest(dest)
        releases.pull(ctx, dest, istio, tuple(repo or ()), plain_http)

    c.run_command("charts pull", options, body)
