"""`kymamesh upgrade promote | rollback | finish`: the steps of a canary upgrade."""

from __future__ import annotations

from typing import Annotated

import typer

from kymamesh.cli import common as c
from kymamesh.context import Options, RunContext

RestartBatch = Annotated[
    str | None,
    typer.Option(
        "--restart-batch",
        metavar="N|N%",
        help="Restart the moved workloads N at a time, or N% of them (e.g. 10%; the Istio "
        "and system namespaces first), each batch's rollouts finished before the next "
        "(default 10).",
    ),
]


def _batch(raw: str | None) -> int | str | None:
    from kymamesh.cli.patch_options import restart_batch_value

    return None if raw is None else restart_batch_value(raw)


app = typer.Typer(
    help="Canary upgrade steps, after `kymamesh install --revision-based`.",
    no_args_is_help=True,
)


@app.command("promote")
@c.shared_options(*c.CLUSTER, "helm", "dry_run", "timeout", "lock_wait", *c.REPORT)
def promote(
    restart_batch: RestartBatch = None,
    *,
    options: Options,
) -> None:
    """Point the default tag at the new revision and restart the workloads it moves.

    Pods that ask for the default revision (istio-injection=enabled,
    istio.io/rev=default, sidecar.istio.io/inject=true) are injected by the new
    revision from then on. Refused (exit 3), with nothing written, unless the new
    istiod is ready and injects a test Pod. It does not ask (no --yes): `upgrade
    rollback` undoes it. A re-run converges.
    """

    def body(ctx: RunContext) -> None:
        from kymamesh.workflows import canary

        canary.promote(ctx, _batch(restart_batch))

    c.run_command("upgrade promote", options, body)


@app.command("rollback")
@c.shared_options(*c.CLUSTER, "helm", "dry_run", "timeout", "lock_wait", *c.REPORT)
def rollback(
    revision: Annotated[
        str | None,
        typer.Option(
            "--revision",
            metavar="REVISION",
            help="The old revision to go back to, when more than one.",
        ),
    ] = None,
    restart_batch: RestartBatch = None,
    *,
    options: Options,
) -> None:
    """Point the default tag back at the old revision and restart the workloads it moves.

    Refused (exit 3), with nothing written, unless the old istiod is ready. Before any
    promote there is nothing to roll back (no write). It does not ask (no --yes):
    `upgrade promote` undoes it.
    """

    def body(ctx: RunContext) -> None:
        from kymamesh.workflows import canary

        canary.rollback(ctx, revision, _batch(restart_batch))

    c.run_command("upgrade rollback", options, body)


@app.command("finish")
@c.shared_options(*c.CLUSTER, "helm", *c.WRITES, *c.REPORT)
def finish(
    charts_dir: c.ChartsDir = None,
    values: c.ValuesFiles = None,
    set_values: c.SetValues = None,
    repo: c.Repo = None,
    plain_http: c.PlainHttp = False,
    *,
    options: Options,
) -> None:
    """Remove the old revision once no Pod uses it, then upgrade istio-base and the gateway.

    Refused (exit 3), naming them, while a running Pod has a sidecar of the old
    revision or a namespace is labelled with it; the charts, the version gate and the
    patch are checked before anything is removed. Asks before removing the old control
    plane (--yes to confirm without a terminal). Give the chart options of install;
    phase 2 (the Kyma patch) runs after phase 1, as in install.
    """

    def body(ctx: RunContext) -> None:
        from kymamesh.workflows import canary

        canary.finish(ctx, c.chart_inputs(charts_dir, values, set_values, repo, plain_http))

    c.run_command("upgrade finish", options, body)
