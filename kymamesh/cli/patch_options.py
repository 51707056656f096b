"""Options that set parameters of the Kyma patch steps; `install` and `patch` share them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kymamesh.context import RunContext
from kymamesh.errors import UsageError

if TYPE_CHECKING:
    from kymamesh.workflows.patching import PatchInputs

PatchConfig = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        help="YAML file of patch step settings: `steps: {STEP: {PARAM: VALUE}}`.",
    ),
]
Domain = Annotated[
    str | None,
    typer.Option(
        "--domain", metavar="DOMAIN", help="Domain of the ingress gateway certificate (*.DOMAIN)."
    ),
]
TlsCert = Annotated[
    Path | None,
    typer.Option(
        "--tls-cert",
        metavar="FILE",
        help="PEM certificate for the ingress gateway.",
        dir_okay=False,
    ),
]
TlsKey = Annotated[
    Path | None,
    typer.Option(
        "--tls-key", metavar="FILE", help="PEM private key matching --tls-cert.", dir_okay=False
    ),
]
RestartProxies = Annotated[
    bool,
    typer.Option(
        "--restart-proxies",
        help="Restart workloads whose sidecar is out of date: the Istio and kyma-system "
        "namespaces first, then the rest in batches.",
    ),
]
RestartBatch = Annotated[
    str | None,
    typer.Option(
        "--restart-batch",
        metavar="N|N%",
        help="With --restart-proxies: restart N workloads at a time, or N% of them (e.g. "
        "10%), each batch's rollouts finished before the next (default 10).",
    ),
]


def restart_batch_value(raw: str) -> int | str:
    """`--restart-batch` as the step's `batchSize`: a whole number of at least 1, or a
    percentage from 1% to 100% (kept as text, e.g. "10%"); anything else is a usage error
    naming the value."""
    from kymamesh.workloads.restarts import parse_percent

    text = raw.strip()
    if text.endswith("%"):
        if parse_percent(text) is not None:
            return text.replace(" ", "")
    else:
        try:
            number = int(text)
        except ValueError:
            number = None
        if number is not None:
            if number < 1:
                raise UsageError(
                    f"--restart-batch must be at least 1, not {number}",
                    hint="give how many workloads to restart at once, e.g. --restart-batch 5, "
                    "or a share of them, e.g. --restart-batch 10%",
                )
            return number
    raise UsageError(
        f"--restart-batch must be a whole number of at least 1 or a percentage from 1% to "
        f"100%, not {raw!r}",
        hint="e.g. --restart-batch 5 (five workloads at a time) or --restart-batch 10% "
        "(a tenth of them)",
    )


Hub = Annotated[
    str | None,
    typer.Option(
        "--hub",
        metavar="REGISTRY",
        help="Image registry for istiod, gateways and sidecars, e.g. a mirror "
        "(default: the release catalog's, docker.io/istio). Remembered.",
    ),
]

Identity = Annotated[
    str | None,
    typer.Option(
        "--identity",
        metavar="FILE|none",
        help="Identity file (Dex connectors, static clients, hosts that require a token), "
        "or `none` to turn identity off and remove what it made.",
    ),
]

Mesh = Annotated[
    str | None,
    typer.Option(
        "--mesh",
        metavar="FILE|cluster:",
        help="Mesh file (docs/reference/mesh-file.md), or a Kyma Istio module `Istio` "
        "resource, or `cluster:` to read the module's kyma-system/default from the cluster.",
    ),
]

MeshId = Annotated[
    str | None,
    typer.Option(
        "--mesh-id",
        metavar="ID",
        help="The mesh this cluster belongs to (istiod's global.meshID; the same in every "
        "cluster of a multi-cluster mesh). Remembered.",
    ),
]
ClusterName = Annotated[
    str | None,
    typer.Option(
        "--cluster-name",
        metavar="NAME",
        help="This cluster's name in the mesh (global.multiCluster.clusterName; a DNS-1123 "
        "label, unique in the mesh). Remembered.",
    ),
]
Network = Annotated[
    str | None,
    typer.Option(
        "--network",
        metavar="NET",
        help="The network of this cluster's Pods (global.network and the label "
        "topology.istio.io/network on istio-system). Remembered.",
    ),
]

ResetSettings = Annotated[
    bool,
    typer.Option(
        "--reset-settings",
        help="Forget the patch settings remembered from earlier runs; start from the defaults.",
    ),
]


_CONFIG_EXAMPLE = "`steps: {sidecar-resources: {proxy: {limits: {memory: 512Mi}}}}`"


def read_config(config: Path) -> dict[str, dict[str, Any]]:
    """The step settings of a `--config` file: `steps: {STEP: {PARAM: VALUE}}`."""
    from kymamesh import userfiles

    raw = userfiles.read(config, f"--config {config}", f"e.g. {_CONFIG_EXAMPLE}") or {}
    steps = raw.get("steps") if isinstance(raw, dict) else None
    if not isinstance(steps, dict) or set(raw) - {"steps"}:
        if not isinstance(raw, dict):
            found = f"a YAML {type(raw).__name__}"
        elif set(raw) - {"steps"}:
            found = "keys " + ", ".join(sorted(map(str, raw)))
        else:
            found = f"`steps` is a YAML {type(steps).__name__}" if "steps" in raw else "no `steps`"
        raise UsageError(
            f"--config {config} must be a map with one key `steps` (found {found})",
            hint=f"write e.g. {_CONFIG_EXAMPLE}",
        )
    overrides: dict[str, dict[str, Any]] = {}
    for name, params in steps.items():
        if not isinstance(params, dict):
            raise UsageError(
                f"--config {config}: steps.{name} must be a map of settings",
                hint=f"write e.g. {_CONFIG_EXAMPLE}",
            )
        overrides[str(name)] = dict(params)
    return overrides


def patch_overrides(
    config: Path | None,
    domain: str | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    restart_proxies: bool = False,
    restart_batch: str | None = None,
    hub: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Step parameters from --config, then from the flags (flags win)."""
    overrides: dict[str, dict[str, Any]] = {}
    if config is not None:
        overrides.update(read_config(config))
    if hub is not None:
        from kymamesh.workflows.pipeline import check_hub

        check_hub(hub)
        overrides.setdefault("sidecar-image-hub", {})["hub"] = hub.strip().rstrip("/")
    tls = overrides.setdefault("ingress-gateway-tls", {})
    if domain is not None:
        if not domain.strip():
            raise UsageError(
                "--domain is empty",
                hint="give the domain the ingress gateway serves, e.g. --domain example.com, "
                "or leave --domain out to keep the remembered (or default) one",
            )
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
    if restart_batch is not None:
        batch = restart_batch_value(restart_batch)
        if not restart_proxies and overrides.get("restart-proxies", {}).get("restart") is not True:
            raise UsageError(
                "--restart-batch goes with --restart-proxies",
                hint="add --restart-proxies to restart outdated sidecars in batches of "
                f"{restart_batch}, or leave --restart-batch out",
            )
        overrides.setdefault("restart-proxies", {})["batchSize"] = batch
    if restart_proxies:
        overrides.setdefault("restart-proxies", {})["restart"] = True
    return overrides


def add_identity(
    given: dict[str, dict[str, Any]], patch_inputs: PatchInputs, identity: str | None
) -> None:
    """`--identity FILE|none` as the parameters of step `identity`; the secrets the file
    reads from files or the environment go to the run's `patch_inputs` only (never
    remembered)."""
    from kymamesh.identity import dexfile as idn

    if identity is None:
        return
    if identity.strip().lower() == "none":
        given["identity"] = idn.disabled_params()
        return
    params, values = idn.read_identity_file(Path(identity))
    given["identity"] = params
    patch_inputs.secret_values.update(values)


def add_mesh(given: dict[str, dict[str, Any]], ctx: RunContext, mesh: str | None) -> None:
    """`--mesh FILE|cluster:` as the parameters of the patch steps it sets (over `--config`'s)."""
    from kymamesh import meshfile
    from kymamesh.istio.values import deep_merge

    if mesh is None:
        return
    if mesh.strip() == meshfile.CLUSTER_SOURCE:
        spec = meshfile.read_from_cluster(ctx.cluster)
    elif mesh.startswith(meshfile.CLUSTER_SOURCE):
        raise UsageError(
            f"--mesh {mesh}: `{meshfile.CLUSTER_SOURCE}` takes nothing after the colon",
            hint=f"write --mesh {meshfile.CLUSTER_SOURCE} to read "
            f"{meshfile.MODULE_NAMESPACE}/{meshfile.MODULE_NAME}",
        )
    else:
        spec = meshfile.read_mesh_file(Path(mesh))
    translation = meshfile.translate(spec)
    merged = deep_merge(given, translation.steps)
    given.clear()
    given.update({k: dict(v) for k, v in merged.items()})


def add_mesh_identity(
    given: dict[str, dict[str, Any]],
    mesh_id: str | None,
    cluster_name: str | None,
    network: str | None,
) -> None:
    """`--mesh-id`, `--cluster-name`, `--network` as the parameters of step
    `multicluster-identity` (over `--config`'s); each checked (exit 2)."""
    from kymamesh.identity import meshidentity

    params = meshidentity.from_flags(mesh_id, cluster_name, network)
    if params:
        given.setdefault(meshidentity.STEP, {}).update(params)
