"""`kymamesh install`: phase 1 (the official Istio charts), then phase 2 (the Kyma patch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kymamesh.cli import common as c
from kymamesh.cli import patch_options as p
from kymamesh.context import Options, RunContext

Istio = Annotated[
    str | None,
    typer.Option(
        "--istio",
        metavar="VERSION",
        help="Istio to install: a minor (its newest known patch, e.g. 1.31) or a release "
        "(1.31.1); default the newest supported minor. `kymamesh releases` lists them.",
    ),
]
CompatibilityVersion = Annotated[
    str | None,
    typer.Option(
        "--compatibility-version",
        metavar="MINOR",
        help="On a minor upgrade, keep the previous minor's behaviour for now (the charts' "
        "compatibilityVersion profile, e.g. 1.30).",
    ),
]
SkipVersionCheck = Annotated[
    bool,
    typer.Option(
        "--skip-version-check",
        help="Install even when the cluster's Kubernetes is outside the Istio release's range.",
    ),
]


@c.shared_options(*c.CLUSTER, "helm", *c.WRITES, *c.REPORT)
def install(
    istio: Istio = None,
    charts_dir: c.ChartsDir = None,
    values: c.ValuesFiles = None,
    set_values: c.SetValues = None,
    repo: c.Repo = None,
    plain_http: c.PlainHttp = False,
    config: p.PatchConfig = None,
    domain: p.Domain = None,
    tls_cert: p.TlsCert = None,
    tls_key: p.TlsKey = None,
    restart_proxies: p.RestartProxies = False,
    revision_based: Annotated[
        bool,
        typer.Option(
            "--revision-based",
            help="Canary upgrade: install istiod as a new revision (e.g. 1-31-1) beside the "
            "running one, which keeps the default tag; then `kymamesh upgrade promote`.",
        ),
    ] = False,
    take_over: Annotated[
        bool,
        typer.Option(
            "--take-over",
            help="Adopt an Istio applied without Helm (the Kyma Istio module, istioctl) into "
            "kymamesh's Helm releases, in place, istiod and its webhooks serving throughout "
            "(Helm 4). Stop the module's manager first.",
        ),
    ] = False,
    restart_batch: p.RestartBatch = None,
    identity: p.Identity = None,
    hub: p.Hub = None,
    compatibility_version: CompatibilityVersion = None,
    skip_version_check: SkipVersionCheck = False,
    mesh: p.Mesh = None,
    mesh_id: p.MeshId = None,
    cluster_name: p.ClusterName = None,
    network: p.Network = None,
    ca: Annotated[
        Path | None,
        typer.Option(
            "--ca",
            metavar="DIR",
            help="The mesh's root CA (`kymamesh ca create --out DIR`), or an intermediate of "
            "your own (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem): this "
            "cluster's intermediate CA, issued by that root, goes into Secret "
            "istio-system/cacerts before istiod starts. An istiod already running on another "
            "CA is refused with the plan, carried out with --restart-proxies (istiod, then "
            "every sidecar and gateway restarted on the new root).",
            file_okay=False,
        ),
    ] = None,
    reset_settings: p.ResetSettings = False,
    *,
    options: Options,
) -> None:
    """Install Istio with security on, then apply the Kyma patch. A re-run converges."""

    def body(ctx: RunContext) -> None:
        from kymamesh.workflows import patching, pipeline

        inputs = c.chart_inputs(
            charts_dir,
            values,
            set_values,
            repo,
            plain_http,
            istio=istio,
            compatibility_version=compatibility_version,
            skip_version_check=skip_version_check,
        )
        patch_inputs = patching.PatchInputs(charts_dir=charts_dir)  # Dex's chart too
        given = p.patch_overrides(
            config, domain, tls_cert, tls_key, restart_proxies, restart_batch, hub
        )
        p.add_identity(given, patch_inputs, identity)
        p.add_mesh(given, ctx, mesh)
        p.add_mesh_identity(given, mesh_id, cluster_name, network)
        pipeline.install(
            ctx,
            inputs,
            patch_inputs,
            given,
            reset=reset_settings,
            revision_based=revision_based,
            take_over=take_over,
            ca_dir=ca,
        )

    c.run_command("install", options, body)
