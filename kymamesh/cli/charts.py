"""`kymamesh charts pull`: fetch the pinned charts for an offline install later."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from kymamesh.cli import common as c
from kymamesh.context import RunContext
from kymamesh.errors import UsageError
from kymamesh.output import ItemResult, Outcome


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


app = typer.Typer(help="Work with the pinned Istio charts.", no_args_is_help=True)


@app.command("pull")
def pull(
    dest: Annotated[
        Path,
        typer.Option(
            "--dest", metavar="DIR", help="Folder to put the chart packages in.", file_okay=False
        ),
    ],
    repo: c.Repo = None,
    helm: c.HelmPath = None,
    output: c.Output = c.OutputFormat.text,
    verbose: c.Verbose = False,
) -> None:
    """Download base, istiod and gateway at the pinned version, and Dex's chart, into DEST
    (for --charts-dir)."""
    options = c.options_from(locals())

    def body(ctx: RunContext) -> None:
        from kymamesh.release import dex_pinned, pinned

        prepare_dest(dest)
        release = pinned()
        source = repo or release.chart_repository
        phase = ctx.result.phase("charts pull")
        ctx.progress.phase(f"charts pull: Istio {release.version} from {source}")
        for row in release.releases:
            target = dest / f"{row.chart}-{release.version}.tgz"
            item = ItemResult(name=row.chart, outcome=Outcome.UNCHANGED)
            phase.items.append(item)
            with ctx.progress.item(row.chart) as tracker:
                if target.exists():
                    item.summary = f"{target} already there"
                else:
                    ctx.helm.pull(row.chart, source, release.version, dest)
                    item.outcome = Outcome.CHANGED
                    item.summary = f"saved {target}"
                tracker.done(item.outcome, item.summary)
        dex = dex_pinned()  # from its own pinned repository: --repo is Istio's
        target = dest / f"{dex.chart}-{dex.version}.tgz"
        item = ItemResult(name=dex.chart, outcome=Outcome.UNCHANGED)
        phase.items.append(item)
        with ctx.progress.item(f"{dex.chart} (identity, from {dex.chart_repository})") as tracker:
            if target.exists():
                item.summary = f"{target} already there"
            else:
                ctx.helm.pull(dex.chart, dex.chart_repository, dex.version, dest)
                item.outcome = Outcome.CHANGED
                item.summary = f"saved {target}"
            tracker.done(item.outcome, item.summary)
        ctx.result.data["dest"] = str(dest)
        ctx.result.notes.append(f"install offline with: kymamesh install --charts-dir {dest}")

    c.run_command("charts pull", options, body)
