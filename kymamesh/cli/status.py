"""`kymamesh status`: what is installed, read-only; the exit code says healthy (0) or not (7)."""

from __future__ import annotations

import sys

from kymamesh.cli import common as c
from kymamesh.cli import patch_options as p
from kymamesh.context import Options, RunContext


@c.shared_options(*c.CLUSTER, "helm", *c.REPORT)
def status(
    config: p.PatchConfig = None,
    domain: p.Domain = None,
    tls_cert: p.TlsCert = None,
    tls_key: p.TlsKey = None,
    *,
    options: Options,
) -> None:
    """Show releases, istiod, mTLS, each patch step and sidecar coverage. Writes nothing.

    Exit 0 when healthy, 7 when not, so CI can gate on it.

    Each istiod is asked for the mesh config it runs (its /debug/mesh view, through a
    port-forward to each istiod Pod, and its log): a mesh config istiod rejected, or
    one it cannot be asked about, is unhealthy.

    The steps are checked with the settings remembered in the cluster by the last
    install or patch; --config, --domain and --tls-* check against others.
    """

    def body(ctx: RunContext) -> None:
        from kymamesh.workflows import patching
        from kymamesh.workflows import status as mesh

        given = p.patch_overrides(config, domain, tls_cert, tls_key)
        patch_inputs = patching.PatchInputs()  # the remembered settings the steps are checked with
        specs = patching.patch_list_for(ctx, patch_inputs, given)  # unknown settings: first
        # Checks as a dry run: a write by mistake fails loudly instead of happening.
        ctx.options.dry_run = True
        with ctx.cluster.snapshot():  # read-only: each object is asked for once
            state = mesh.inspect(ctx, patch_inputs, specs)
        ctx.result.data = state.to_json()
        ctx.result.exit_code = mesh.exit_code(state)
        if ctx.options.output == c.OutputFormat.json:
            return
        if sys.stdout.isatty():
            mesh.print_rich(state, sys.stdout)
        else:
            sys.stdout.write("\n".join(mesh.plain_lines(state)) + "\n")
        sys.stdout.flush()

    c.run_command("status", options, body)
