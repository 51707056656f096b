"""`kymamesh inject-namespace`: put a namespace's workloads into the mesh (or take them out)."""

from __future__ import annotations

from typing import Annotated

import typer

from kymamesh.cli import common as c
from kymamesh.context import RunContext


def inject_namespace(
    namespace: Annotated[str, typer.Argument(help="The namespace to put into the mesh.")],
    deployment: Annotated[
        list[str] | None,
        typer.Option(
            "--deployment",
            "-d",
            help="A Deployment whose Pods get a sidecar (its Pod template is labelled, so it "
            "rolls).",
        ),
    ] = None,
    all_deployments: Annotated[
        bool, typer.Option("--all", help="Every Deployment in the namespace.")
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until the chosen Deployments have rolled out.")
    ] = False,
    disable: Annotated[
        bool,
        typer.Option(
            "--disable",
            help="Take the namespace out of the mesh: remove the labels again (from the chosen "
            "Deployments, or from every opted-in one).",
        ),
    ] = False,
    kubeconfig: c.Kubeconfig = None,
    context: c.Context = None,
    dry_run: c.DryRun = False,
    output: c.Output = c.OutputFormat.text,
    yes: c.Yes = False,
    verbose: c.Verbose = False,
    timeout: c.Timeout = 300.0,
    lock_wait: c.LockWait = 60.0,
) -> None:
    """Label a namespace (and Deployments) for sidecar injection. A re-run writes nothing.

    Existing Pods get a sidecar only when they are re-created; the output names the
    workloads that still run without one.
    """
    options = c.options_from(locals())

    def body(ctx: RunContext) -> None:
        from kymamesh import injection

        injection.run(
            ctx,
            injection.InjectRequest(
                namespace=namespace,
                deployments=tuple(deployment or ()),
                all_deployments=all_deployments,
                disable=disable,
                wait=wait,
            ),
        )

    c.run_command("inject-namespace", options, body)
