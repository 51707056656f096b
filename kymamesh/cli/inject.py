"""`kymamesh inject-namespace`: put a namespace's workloads into the mesh (or take them out)."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from kymamesh.cli import common as c
from kymamesh.context import Options, RunContext

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _check_namespace(value: str) -> str:
    """A namespace name is a DNS label (RFC 1123), as the API server requires."""
    if len(value) > 63 or not _DNS_LABEL.fullmatch(value):
        raise typer.BadParameter(
            f"{value!r} is not a namespace name: lower-case letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63"
        )
    return value


def _check_deployments(values: list[str] | None) -> list[str] | None:
    """A Deployment name is a DNS subdomain (RFC 1123), as the API server requires."""
    for value in values or ():
        if len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
            raise typer.BadParameter(
                f"{value!r} is not a Deployment name: lower-case letters, digits, '-' and "
                "'.', starting and ending with a letter or digit, at most 253"
            )
    return values


@c.shared_options(*c.CLUSTER, *c.WRITES, *c.REPORT)
def inject_namespace(
    namespace: Annotated[
        str,
        typer.Argument(
            metavar="NAMESPACE",
            callback=_check_namespace,
            help="The namespace to put into the mesh.",
        ),
    ],
    deployment: Annotated[
        list[str] | None,
        typer.Option(
            "--deployment",
            "-d",
            metavar="NAME",
            callback=_check_deployments,
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
    *,
    options: Options,
) -> None:
    """Label a namespace (and Deployments) for sidecar injection. A re-run writes nothing.

    Existing Pods get a sidecar only when they are re-created; the output names the
    workloads that still run without one.
    """

    def body(ctx: RunContext) -> None:
        from kymamesh.workflows import injection

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
