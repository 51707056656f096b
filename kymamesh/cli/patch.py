"""`kymamesh patch`: apply the Kyma patch (phase 2) to a running Istio."""

from __future__ import annotations

from typing import Annotated

import typer

from kymamesh.cli import common as c
from kymamesh.cli import patch_options as p
from kymamesh.context import Options, RunContext

ExistingIstio = Annotated[
    bool,
    typer.Option(
        "--existing-istio",
        help="Adopt an Istio that kymamesh did not install (istioctl, plain Helm, a vendor).",
    ),
]


@c.shared_options(*c.CLUSTER, "helm", *c.WRITES, *c.REPORT)
def patch(
    existing_istio: ExistingIstio = False,
    charts_dir: c.ChartsDir = None,
    config: p.PatchConfig = None,
    domain: p.Domain = None,
    tls_cert: p.TlsCert = None,
    tls_key: p.TlsKey = None,
    restart_proxies: p.RestartProxies = False,
    restart_batch: p.RestartBatch = None,
    identity: p.Identity = None,
    hub: p.Hub = None,
    mesh: p.Mesh = None,
    reset_settings: p.ResetSettings = False,
    *,
    options: Options,
) -> None:
    """Apply the Kyma patch to a running Istio. Checks it first; a re-run converges."""

    def body(ctx: RunContext) -> None:
        from kymamesh.workflows import patching, pipeline

        patch_inputs = patching.PatchInputs(charts_dir=charts_dir)
        given = p.patch_overrides(
            config, domain, tls_cert, tls_key, restart_proxies, restart_batch, hub
        )
        p.add_identity(given, patch_inputs, identity)
        p.add_mesh(given, ctx, mesh)
        pipeline.adopt(
            ctx, patch_inputs, given, reset=reset_settings, existing_istio=existing_istio
        )

    c.run_command("patch", options, body)
