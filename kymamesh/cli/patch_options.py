"""Options that set parameters of the Kyma patch steps; `install` and `patch` share them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from kymamesh.errors import UsageError

PatchConfig = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="YAML file of patch step settings: `steps: {STEP: {PARAM: VALUE}}`.",
        dir_okay=False,
    ),
]
Domain = Annotated[
    str | None,
    typer.Option("--domain", help="Domain of the ingress gateway certificate (*.DOMAIN)."),
]
TlsCert = Annotated[
    Path | None,
    typer.Option("--tls-cert", help="PEM certificate for the ingress gateway.", dir_okay=False),
]
TlsKey = Annotated[
    Path | None,
    typer.Option("--tls-key", help="PEM private key matching --tls-cert.", dir_okay=False),
]
RestartProxies = Annotated[
    bool,
    typer.Option("--restart-proxies", help="Restart workloads whose sidecar is out of date."),
]

ResetSettings = Annotated[
    bool,
    typer.Option(
        "--reset-settings",
        help="Forget the patch settings remembered from earlier runs; start from the defaults.",
    ),
]


def patch_overrides(
    config: Path | None,
    domain: str | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    restart_proxies: bool = False,
) -> dict[str, dict[str, Any]]:
    """Step parameters from --config, then from the flags (flags win)."""
    overrides: dict[str, dict[str, Any]] = {}
    if config is not None:
        try:
            raw = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise UsageError(f"cannot read --config {config}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise UsageError(f"--config {config} is not valid YAML: {exc}") from None
        steps = raw.get("steps") if isinstance(raw, dict) else None
        if not isinstance(steps, dict) or set(raw) - {"steps"}:
            raise UsageError(
                f"--config {config} must be a map with one key `steps`",
                hint="write e.g. `steps: {sidecar-resources: {proxy: {limits: {memory: 512Mi}}}}`",
            )
        for name, params in steps.items():
            if not isinstance(params, dict):
                raise UsageError(f"--config {config}: steps.{name} must be a map of settings")
            overrides[str(name)] = dict(params)
    tls = overrides.setdefault("ingress-gateway-tls", {})
    if domain:
        tls["domain"] = domain
    if (tls_cert is None) != (tls_key is None):
        raise UsageError(
            "--tls-cert and --tls-key go together",
            hint="give both, or neither for a self-signed one",
        )
    if tls_cert is not None and tls_key is not None:
        tls["certFile"] = str(tls_cert)
        tls["keyFile"] = str(tls_key)
    if not tls:
        overrides.pop("ingress-gateway-tls")
    if restart_proxies:
        overrides.setdefault("restart-proxies", {})["restart"] = True
    return overrides
