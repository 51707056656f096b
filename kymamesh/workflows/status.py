"""`kymamesh status`: what is installed now, read-only, and whether it is healthy.

It reports the three Helm releases of the pinned release table (chart version,
state, revision), each istiod (version from its image, revision, readiness),
who installed Istio (see `kymamesh.istio.inventory`), the mesh-wide mTLS mode (the
PeerAuthentication without a selector in the mesh root namespace), every step
of the Kyma patch as applied or not (the step's own `check`, so `status` and
`patch` never disagree), and per namespace with injection on or sidecars
running: injection, Pods with and without a sidecar, sidecars older than istiod.

Healthy, exit 0, when all of these hold; otherwise exit 7 (UNHEALTHY) and
`data.problems` says why:

- an istiod Deployment (of any revision) exists in istio-system, and each one is ready;
- every Helm release of the release table that exists is `deployed`, and when
  kymamesh installed Istio all three exist;
- every patch step's check finds nothing to change;
- the live mesh config of every revision (ConfigMap istio or istio-REV, key
  `mesh`) breaks none of the install's security rules under `meshConfig.`
  (`resources/istio/security.yaml`).
- a default revision tag (`istio-revision-tag-default`) points at a revision that
  has an istiod;
- every ready istiod runs the mesh config of its revision's ConfigMap: asked through
  its `/debug/mesh` view (a port-forward to each istiod Pod) and its log since the
  ConfigMap last changed (`kymamesh.istio.meshview`). An istiod that rejected the ConfigMap
  ("invalid mesh config, using last known state"), runs other values than it holds, or
  cannot be asked makes the mesh unhealthy; a difference within the two minutes a
  changed ConfigMap takes to reach a Pod is advice;
- no change of root is under way (Secret cacerts marked by `install --ca DIR
  --restart-proxies` and not cleared: a run stopped before every workload moved to the
  new root, so workloads of the two roots do not trust each other; `kymamesh.identity.meshca`).

Each control plane revision is reported with its ConfigMaps and mesh root
namespace; the patch steps check every revision, so a revision left unpatched
shows as a step not applied, naming its ConfigMap.

During and after a canary upgrade (`kymamesh.workflows.canary`), the revisions, the one the
default tag points at and the phase are reported too (`data.canary`), and the
canary revision's Helm release (`istiod-REV`) is listed with the others.

Sidecar coverage and sidecars older than istiod are reported, not judged: the
Kyma patch makes injection opt-in, and restarting workloads is the user's call
(`patch --restart-proxies`).

It never writes: the body runs as a dry run, so any write would be a bug that
fails loudly instead of changing the cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from kymamesh import unverified
from kymamesh.adapters.cluster import Cluster, Obj
from kymamesh.adapters.helm import DeployedRelease
from kymamesh.context import RunContext
from kymamesh.errors import ExitCode, IstiodUnreachableError, KymameshError
from kymamesh.identity import meshca, meshidentity
from kymamesh.istio import inventory as inv
from kymamesh.istio import meshview, sidecars
from kymamesh.istio.controlplane import (
    DISCOVERY_CONTAINER,
    MESH_CONFIGMAP,
    MESH_KEY,
    TEMPLATES_ANNOTATION,
    ControlPlane,
    effective_mtls,
    mesh_wide_policies,
    parse_mesh,
    served_peer_authentication,
)
from kymamesh.istio.release import pinned
from kymamesh.istio.security import mesh_config_problems
from kymamesh.istio.versions import Version
from kymamesh.meshfile import EGRESS_RELEASE
from kymamesh.workflows.canary import CanaryState
from kymamesh.workflows.canary import read_state as read_canary
from kymamesh.workflows.multicluster import peer_entries
from kymamesh.workflows.patching import PatchInputs, StepSpec, check_all
from kymamesh.workflows.pipeline import release_of as pipeline_release_of


@dataclass(frozen=True)
class ReleaseState:
    name: str
    chart: str  # the chart of the release table
    release: DeployedRelease | None

    def to_json(self) -> dict[str, Any]:
        r = self.release
        return {
            "name": self.name,
            "chart": r.chart if r else self.chart,
            "chartVersion": str(r.chart_version) if r else None,
            "appVersion": r.app_version if r else None,
            "status": r.status if r else "missing",
            "revision": r.revision if r else None,
            "byKymamesh": inv.marked_by_kymamesh(r) if r else False,
        }


@dataclass(frozen=True)
class MtlsState:
    mode: str | None  # STRICT, PERMISSIVE or DISABLE; None when Istio's CRDs are missing
    policy: str | None  # namespace/name of the mesh-wide PeerAuthentication, if any
    root_namespace: str = ""  # the mesh root namespace judged

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "policy": self.policy, "rootNamespace": self.root_namespace}


@dataclass(frozen=True)
class StepState:
    name: str
    description: str
    applied: bool
    pending: list[str] = field(default_factory=list)
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "applied": self.applied,
            "pending": list(self.pending),
            "error": self.error,
        }


@dataclass(frozen=True)
class NamespaceState:
    name: str
    injection: bool
    revision: str
    with_sidecar: int
    without_sidecar: int
    outdated: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "injectionEnabled": self.injection,
            "revision": self.revision or None,
            "podsWithSidecar": self.with_sidecar,
            "podsWithoutSidecar": self.without_sidecar,
            "outdatedSidecars": self.outdated,
        }


@dataclass(frozen=True)
class MeshStatus:
    namespace: str
    supported: Version
    installed_by: inv.Installer
    crds: int
    releases: list[ReleaseState]
    istiods: list[inv.Istiod]
    mtls: MtlsState
    steps: list[StepState]
    namespaces: list[NamespaceState]
    problems: list[str]
    identity: dict[str, Any] | None = None  # see kymamesh.steps.identity.describe
    canary: CanaryState | None = None  # a revision-based upgrade under way or done
    # every workload with an outdated sidecar, and what --restart-proxies does about it
    outdated: list[dict[str, Any]] = field(default_factory=list)
    # every container running an image from a registry Istio switched off, with its fix
    retired_images: list[dict[str, str]] = field(default_factory=list)
    # what is behind: a newer patch, an end of life, Helm 3 (advice; not unhealthy)
    advice: list[str] = field(default_factory=list)
    # the cluster's mesh ID, cluster name, network, trust domain (kymamesh.identity.meshidentity)
    multicluster: dict[str, Any] | None = None
    # what each ready istiod Pod runs, against its ConfigMap (kymamesh.istio.meshview)
    mesh_configs: list[meshview.RunningMesh] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The `data` of `status -o json`: stable camelCase keys (docs/reference/json-output.md)."""
        state, description, conditions = module_state(self)
        return {
            "healthy": self.healthy,
            "state": state,
            "description": description,
            "conditions": conditions,
            "problems": list(self.problems),
            "istio": {
                "namespace": self.namespace,
                "installed": bool(self.istiods),
                "installedBy": self.installed_by.value,
                "supportedVersion": str(self.supported),
                "crds": self.crds,
            },
            "releases": [r.to_json() for r in self.releases],
            "istiod": [d.to_json() for d in self.istiods],
            "mtls": self.mtls.to_json(),
            "steps": [s.to_json() for s in self.steps],
            "namespaces": [n.to_json() for n in self.namespaces],
            "identity": self.identity,
            "canary": self.canary.to_json() if self.canary else None,
            "outdatedSidecars": [dict(o) for o in self.outdated],
            "retiredRegistryImages": [dict(r) for r in self.retired_images],
            "advice": list(self.advice),
            "multicluster": self.multicluster,
            "meshConfigs": [m.to_json() for m in self.mesh_configs],
        }


# -- a state in the spirit of the Kyma Istio module's ---------------------------------

READY, PROCESSING, ERROR, DELETING, WARNING = "Ready", "Processing", "Error", "Deleting", "Warning"
_IN_PROGRESS = ("pending-install", "pending-upgrade", "pending-rollback")


def _condition(kind: str, status: bool | None, reason: str, message: str) -> dict[str, str]:
    return {
        "type": kind,
        "status": "Unknown" if status is None else "True" if status else "False",
        "reason": reason,
        "message": message,
    }


def mesh_config_condition(states: list[meshview.RunningMesh]) -> dict[str, str]:
    """`MeshConfigApplied`: whether every ready istiod runs its ConfigMap's mesh config."""
    kind = "MeshConfigApplied"
    by_state: dict[str, list[meshview.RunningMesh]] = {}
    for m in states:
        by_state.setdefault(m.state, []).append(m)
    rejected, differs = (
        by_state.get(meshview.REJECTED_STATE, []),
        by_state.get(meshview.DIFFERS, []),
    )
    if rejected or differs:
        reason = "MeshConfigRejected" if rejected else "MeshConfigDiffers"
        return _condition(
            kind, False, reason, "; ".join(str(m.problem()) for m in rejected + differs)
        )
    if meshview.UNCHECKED in by_state:
        lines = "; ".join(str(m.problem()) for m in by_state[meshview.UNCHECKED])
        return _condition(kind, None, "IstiodUnreachable", lines)
    if meshview.PENDING in by_state:
        lines = "; ".join(str(m.note()) for m in by_state[meshview.PENDING])
        return _condition(kind, None, "MeshConfigPending", lines)
    if not states:
        return _condition(kind, None, "NotChecked", "no ready istiod to ask")
    return _condition(
        kind, True, "MeshConfigApplied", "every istiod runs the mesh config of its ConfigMap"
    )


def module_state(st: MeshStatus) -> tuple[str, str, list[dict[str, str]]]:
    """The mesh's state as the Kyma Istio module reports its resource's: a state (Ready,
    Processing, Error, Deleting, Warning), a description, and conditions of type `Ready`
    and `ProxySidecarRestartSucceeded` with a reason each (docs/reference/json-output.md).

    Deleting: a release being uninstalled. Processing: a release being installed or
    upgraded. Error: no istiod, an istiod not ready, a release missing or failed, an
    insecure mesh config, a step that cannot be checked, or anything else `status` judges
    unhealthy beyond the two below. Warning: the only problems are patch steps not
    applied (drift), or sidecars out of date. Ready otherwise.
    """
    statuses = [r.release.status for r in st.releases if r.release is not None]
    pending_steps = [s for s in st.steps if not s.applied and not s.error]
    drift = [p for p in st.problems if p.startswith("patch step ") and "check failed" not in p]
    others = [p for p in st.problems if p not in drift]
    if "uninstalling" in statuses:
        state, reason = DELETING, "IstioUninstalling"
    elif any(x in _IN_PROGRESS for x in statuses):
        state, reason = PROCESSING, "ReconcileUnknown"
    elif not st.istiods:
        state, reason = ERROR, "IstioNotInstalled"
    elif others:
        state, reason = ERROR, "ReconcileFailed"
    elif pending_steps:
        state, reason = WARNING, "PatchNotApplied"
    else:
        state, reason = READY, "ReconcileSucceeded"
    message = "; ".join(st.problems) or "the mesh is in the state kymamesh leaves"
    conditions = [_condition("Ready", state == READY, reason, message)]
    manual = [o for o in st.outdated if o.get("action") in ("manual", "opted-out")]
    if not st.outdated:
        restart = _condition(
            "ProxySidecarRestartSucceeded",
            True,
            "ProxySidecarRestartSucceeded",
            "every sidecar is up to date",
        )
    elif manual:
        names = ", ".join(f"{o['kind']}/{o['namespace']}/{o['name']}" for o in manual)
        restart = _condition(
            "ProxySidecarRestartSucceeded",
            False,
            "ProxySidecarManualRestartRequired",
            f"out-of-date sidecars kymamesh does not restart: {names}",
        )
    else:
        restart = _condition(
            "ProxySidecarRestartSucceeded",
            False,
            "ProxySidecarRestartRequired",
            f"{len(st.outdated)} workload(s) run out-of-date sidecars: run "
            "`kymamesh patch --restart-proxies`",
        )
    conditions.append(restart)
    conditions.append(mesh_config_condition(st.mesh_configs))
    if state == READY and st.outdated:
        return WARNING, restart["message"], conditions
    return state, message if state != READY else "Istio is ready", conditions


# -- gathering ---------------------------------------------------------------


def inspect(ctx: RunContext, patch_inputs: PatchInputs, specs: list[StepSpec]) -> MeshStatus:
    """Read everything `status` reports. `specs` is the patch list (`patch_list_for`, which
    set the remembered settings in `patch_inputs` the steps are checked with)."""
    cluster = ctx.cluster
    release = pinned()
    namespace = release.namespace
    canary = read_canary(ctx)
    releases = []
    for row in release.releases:
        deployed = ctx.helm.deployed(row.release, namespace)
        if row.chart == "istiod" and canary.canary is not None:
            name = pipeline_release_of(canary.canary)
            if deployed is not None:  # the old revision, beside the canary
                releases.append(ReleaseState(row.release, row.chart, deployed))
            row = replace(row, release=name or row.release)
            deployed = ctx.helm.deployed(row.release, namespace)
        releases.append(ReleaseState(row.release, row.chart, deployed))
    egress = ctx.helm.deployed(EGRESS_RELEASE, namespace)  # the mesh file's egress gateway
    if egress is not None:
        releases.append(ReleaseState(EGRESS_RELEASE, "gateway", egress))
    crds = inv.istio_crds(cluster)
    istiods = inv.find_istiods(cluster, namespace)
    installed_by = inv.installer({r.name: r.release for r in releases}, istiods)
    planes = [d.plane for d in istiods if d.plane is not None]
    planes.sort(key=lambda p: (p.suffix != "", p.revision))
    mtls = mesh_mtls(cluster, planes[0].root_namespace if planes else namespace)
    steps = check_steps(ctx, patch_inputs, specs, istio_present=bool(istiods))
    injectors = sidecars.read_injectors(cluster, namespace)
    pods = sidecars.list_pods(cluster)  # read once: the checks below share them
    namespaces = namespace_states(
        cluster.list("v1", "Namespace"),
        pods,
        istiods,
        injectors.resources,
        injectors.images,
    )
    problems = judge(installed_by, releases, istiods, steps, namespace)
    for plane in planes:
        problems += mesh_config_security(cluster, plane)
    problems += canary.problems()
    for name, why in unverified.marks(cluster, namespace).items():
        problems.append(
            f"Helm release {namespace}/{name}: its injector has not been seen to answer since "
            f"kymamesh last changed it ({why}; ConfigMap {namespace}/{unverified.NAME}); "
            "re-run kymamesh install, which checks it again"
        )
    running = [
        replace(m, fix=mesh_config_fix(installed_by, m.configmap))
        for m in running_mesh_configs(cluster, istiods)
    ]
    problems += [line for m in running if (line := m.problem())]
    if istiods and (root_change := meshca.unfinished(cluster, namespace)):
        problems.append(f"shared trust: {root_change}")
    identity = identity_state(ctx, patch_inputs, specs) if istiods else None
    outdated = outdated_sidecars(cluster, namespace, specs) if istiods else []
    if identity and identity.get("enabled") and identity.get("ready") is False:
        problems.append(f"identity: Dex is not ready: {identity.get('notReady')}")
    retired = retired_registry_images(pods, installed_by)
    if retired:
        stale = sorted({f"{r['namespace']}/{r['pod']}" for r in retired})
        problems.append(
            f"{len(stale)} Pod(s) run Istio images from a registry Istio has switched off; "
            "they fail to start once rescheduled (see retired-registry images)"
        )
    advice = currency_advice(istiods, helm_major(ctx) if releases_by_helm(releases) else None)
    advice += [line for m in running if (line := m.note())]
    return MeshStatus(
        namespace=namespace,
        supported=release.version,
        installed_by=installed_by,
        crds=len(crds),
        releases=releases,
        istiods=istiods,
        mtls=mtls,
        steps=steps,
        namespaces=namespaces,
        problems=problems,
        identity=identity,
        canary=canary if canary.canary is not None or canary.tag is not None else None,
        outdated=outdated,
        retired_images=retired,
        advice=advice,
        multicluster={**meshidentity.live(cluster, namespace), "peers": peer_entries(cluster)}
        if istiods
        else None,
        mesh_configs=running,
    )


def helm_major(ctx: RunContext) -> int | None:
    try:
        return ctx.helm.major
    except KymameshError:  # no usable helm here: nothing to say about its version
        return None


def releases_by_helm(releases: list[ReleaseState]) -> bool:
    return any(r.release is not None for r in releases)


def retired_registry_images(pods: list[Obj], installed_by: inv.Installer) -> list[dict[str, str]]:
    """Each container (init containers too) whose image comes from a registry Istio switched
    off, with the command that moves it (`resources/istio/catalog.yaml`, retiredHubs)."""
    from kymamesh.istio.release import catalog

    table = catalog()
    if installed_by == inv.Installer.KYMAMESH:
        sidecar_fix = "kymamesh patch --restart-proxies"
        istiod_fix = "kymamesh install"
    else:
        sidecar_fix = "kymamesh patch --existing-istio --restart-proxies"
        istiod_fix = (
            "helm upgrade the istiod release with --set hub=docker.io/istio "
            "--set global.hub=docker.io/istio (or kymamesh install, which manages it)"
        )
    found = []
    for pod in pods:
        spec = pod.get("spec") or {}
        for container in [*(spec.get("initContainers") or ()), *(spec.get("containers") or ())]:
            image = str(container.get("image") or "")
            if not table.retired_registry(image):
                continue
            name = str(container.get("name") or "")
            fix = istiod_fix if name == "discovery" else sidecar_fix
            found.append(
                {
                    "namespace": str(pod["metadata"].get("namespace") or ""),
                    "pod": str(pod["metadata"].get("name") or ""),
                    "container": name,
                    "image": image,
                    "fix": fix,
                }
            )
    return found


def currency_advice(istiods: list[inv.Istiod], helm_major: int | None) -> list[str]:
    """What is behind, from the release catalog: a newer patch of the running minor, a
    minor past its end of life or not supported, Helm 3 in use."""
    from datetime import date

    from kymamesh.istio.release import catalog

    table = catalog()
    advice = []
    for d in istiods:
        if d.version is None:
            continue
        line = table.line_of(d.version)
        where = f"istiod {d.namespace}/{d.name} runs Istio {d.version}"
        if line is None:
            advice.append(
                f"{where}, of a minor this kymamesh does not install (it supports "
                f"{table.supported_minors()}): upgrade with kymamesh install"
                + (" --revision-based" if d.version.minor_line < table.lines[-1].minor else "")
            )
            continue
        if d.version < line.latest:
            advice.append(
                f"{where}; {line.latest} is out (security fixes): kymamesh install --istio "
                f"{line.latest} --restart-proxies"
            )
        if line.end_of_life and line.end_of_life <= date.today():
            advice.append(
                f"{where}; Istio {line.name} reached its end of life on "
                f"{line.end_of_life.isoformat()}: upgrade to {table.lines[0].name}"
            )
    if helm_major == 3:
        end = table.helm3_security_end
        advice.append(
            f"Helm 3 is in use; its security fixes end {end.isoformat()}: use Helm 4 (--helm)"
        )
    return advice


def retired_lines(retired: list[dict[str, str]]) -> list[str]:
    if not retired:
        return []
    lines = ["retired-registry images (Istio switched these registries off):"]
    for r in retired:
        lines.append(
            f"  {r['namespace']}/{r['pod']} {r['container']}: {r['image']} -> fix: {r['fix']}"
        )
    return lines


def outdated_sidecars(
    cluster: Cluster, namespace: str, specs: list[StepSpec]
) -> list[dict[str, Any]]:
    """Each workload with an outdated sidecar and what `--restart-proxies` would do
    (step restart-proxies' own plan, without restarting: no dry-run Pods are made)."""
    from kymamesh.workloads.restarts import plan_restarts, restart_options

    params: dict[str, Any] = {}
    for spec in specs:
        if spec.kind == "restart-proxies":
            params = dict(spec.params)
    params["restart"] = False
    try:
        options = restart_options(params)
    except KymameshError:  # the step's own check names the bad setting
        return []
    return plan_restarts(cluster, namespace, options).to_json()


def identity_state(
    ctx: RunContext, patch_inputs: PatchInputs, specs: list[StepSpec]
) -> dict[str, Any] | None:
    """The identity part (Dex, issuer, connectors, policies); None without the step."""
    from kymamesh.steps.identity import describe
    from kymamesh.workflows.patching import step_context

    for spec in specs:
        if spec.kind == "identity":
            try:
                return describe(step_context(ctx, patch_inputs, spec, specs))
            except KymameshError as exc:  # the step's own check reports it as well
                return {"enabled": None, "error": exc.message}
    return None


def mesh_config_security(cluster: Cluster, plane: ControlPlane) -> list[str]:
    """A revision's live mesh config judged by the install's security rules
    (`kymamesh.istio.security`)."""
    ref = plane.configmap(MESH_CONFIGMAP)
    cm = cluster.get(ref)
    mesh = parse_mesh(((cm or {}).get("data") or {}).get(MESH_KEY))
    where = f"ConfigMap {ref.namespace}/{ref.name}"
    if mesh is None:
        return [f"{where}: key mesh is not a YAML map"]
    return [f"{where}: {p}" for p in mesh_config_problems(mesh)]


def running_mesh_configs(cluster: Cluster, istiods: list[inv.Istiod]) -> list[meshview.RunningMesh]:
    """What each Pod of every ready istiod runs, against its revision's ConfigMap `istio`:
    one port-forward (istiod's `/debug/mesh`) and one log read (what it said since the
    ConfigMap last changed) per istiod Pod. An istiod that is not ready is not asked
    (`judge` names it already)."""
    from datetime import datetime

    found: list[meshview.RunningMesh] = []
    for d in istiods:
        plane = d.plane
        if d.ready is not None or plane is None:
            continue
        ref = plane.configmap(MESH_CONFIGMAP)
        where = f"{ref.namespace}/{ref.name}"
        configmap = cluster.get(ref)
        written = parse_mesh(((configmap or {}).get("data") or {}).get(MESH_KEY))
        if configmap is None or written is None:
            continue  # mesh_config_security names it
        # One istiod: all istiod Pods (whatever their revision label); several: by revision.
        revision = plane.revision if len(istiods) > 1 else None
        try:
            answers = cluster.istiod_debug(
                meshview.MESH_VIEW, revision=revision, namespace=d.namespace
            )
            failures: dict[str, str] = {}
        except IstiodUnreachableError as exc:
            answers, failures = exc.answers, exc.failures
            if not answers and not failures:
                found.append(
                    meshview.RunningMesh(
                        d.namespace, "", plane.revision, where, meshview.UNCHECKED, (), exc.message
                    )
                )
                continue
        since = meshview.last_written(configmap)
        age = None
        changed = None
        if since:
            changed = datetime.fromisoformat(since.replace("Z", "+00:00"))
            age = max(0.0, (datetime.now(changed.tzinfo) - changed).total_seconds())
        for pod, why in sorted(failures.items()):
            found.append(
                meshview.RunningMesh(
                    d.namespace, pod, plane.revision, where, meshview.UNCHECKED, (), why, age
                )
            )
        for pod, view in sorted(answers.items()):
            try:
                log = cluster.pod_log(
                    d.namespace, pod, container=DISCOVERY_CONTAINER, since_time=since or None
                )
            except KymameshError:  # the view alone still tells a difference
                log = ""
            found.append(
                meshview.judge(
                    d.namespace,
                    pod,
                    plane.revision,
                    where,
                    written,
                    view,
                    meshview.rejection(log),
                    age,
                    meshview.said_after(log, changed),
                )
            )
    return found


def mesh_config_fix(installed_by: inv.Installer, configmap: str) -> str:
    """What to run when istiod does not run its ConfigMap's mesh config."""
    if installed_by == inv.Installer.KYMAMESH:
        return (
            "re-run `kymamesh install` (it writes the mesh config again from the chart and "
            "the Kyma patch)"
        )
    namespace, _, name = configmap.partition("/")
    return (
        f"correct the field(s) in ConfigMap {configmap} (`kubectl -n {namespace} edit "
        f"configmap {name}`), then run `kymamesh patch`"
    )


def mesh_config_lines(states: list[meshview.RunningMesh]) -> list[str]:
    """One line per istiod Pod: does it run its ConfigMap's mesh config?"""
    lines = []
    for m in states:
        text = {
            meshview.APPLIED: f"runs the mesh config of ConfigMap {m.configmap}",
            meshview.PENDING: f"has not read ConfigMap {m.configmap} yet",
            meshview.DIFFERS: f"does not run the mesh config of ConfigMap {m.configmap}",
            meshview.REJECTED_STATE: f"rejected the mesh config of ConfigMap {m.configmap}",
            meshview.UNCHECKED: f"could not be asked ({m.reason})",
        }[m.state]
        fields = "; ".join(d.describe() for d in m.differences)
        lines.append(f"mesh config: {m.who} {text}" + (f": {fields}" if fields else ""))
    return lines


def mesh_mtls(cluster: Cluster, root: str) -> MtlsState:
    """Mesh-wide mode: the oldest PeerAuthentication without a selector in the root namespace."""
    api = served_peer_authentication(cluster)
    if api is None:
        return MtlsState(None, None, root)
    mode, policy = effective_mtls(mesh_wide_policies(cluster, api, root))
    name = f"{root}/{policy['metadata']['name']}" if policy else None
    return MtlsState(mode, name, root)


def check_steps(
    ctx: RunContext, patch_inputs: PatchInputs, specs: list[StepSpec], istio_present: bool
) -> list[StepState]:
    """Each step's own read-only check; a step that wants no change is applied."""
    states = []
    for spec in specs:
        if not istio_present:
            states.append(
                StepState(spec.name, spec.description, False, error="not checked: no istiod found")
            )
            continue
        try:
            changes = check_all(ctx, patch_inputs, [spec], specs)[spec.name]
        except KymameshError as exc:  # one failing check must not hide the others
            # (a bug, any other exception, is not a fact about the mesh: it ends the run
            # with exit 1, not 7)
            states.append(StepState(spec.name, spec.description, False, error=exc.message))
            continue
        states.append(
            StepState(
                spec.name,
                spec.description,
                applied=not changes,
                pending=[f"{c.target}: {c.summary}" for c in changes],
            )
        )
    return states


def judge(
    installed_by: inv.Installer,
    releases: list[ReleaseState],
    istiods: list[inv.Istiod],
    steps: list[StepState],
    namespace: str,
) -> list[str]:
    """The health rule of the module docstring, as a list of what is wrong."""
    problems = []
    if not istiods:
        problems.append(f"Istio is not installed: no istiod Deployment in {namespace}")
    for d in istiods:
        if d.ready is not None:
            problems.append(f"istiod {d.namespace}/{d.name} is not ready: {d.ready}")
    for r in releases:
        if r.release is None:
            if installed_by == inv.Installer.KYMAMESH:
                problems.append(f"Helm release {namespace}/{r.name} is missing")
        elif r.release.status != "deployed":
            problems.append(release_problem(installed_by, r.release, namespace))
    for s in steps:
        if s.error and s.error.startswith("not checked"):
            continue
        if s.error:
            problems.append(f"patch step {s.name}: check failed: {s.error}")
        elif not s.applied:
            problems.append(f"patch step {s.name} is not applied: " + "; ".join(s.pending))
    return problems


def release_problem(installed_by: inv.Installer, release: DeployedRelease, namespace: str) -> str:
    """A release that is not `deployed`: Helm's own word on why (the revision's
    description), and what to run."""
    what = f"Helm release {namespace}/{release.name} is {release.status}"
    why = " ".join(release.description.split())
    if why:
        what += f" (revision {release.revision}: {why})"
    if release.status.startswith("pending"):
        return (
            f"{what}: a Helm command is still working on it, or was cut short (`helm history "
            f"{release.name} -n {namespace}` shows it); helm refuses other upgrades meanwhile"
        )
    if installed_by != inv.Installer.KYMAMESH:
        return f"{what}: see `helm history {release.name} -n {namespace}`"
    repair = "run `kymamesh install` to repair it"
    if 'conflict with "kymamesh"' in why:  # server-side apply: fields the Kyma patch owns
        return (
            f"{what}: a Helm upgrade conflicts with the fields the Kyma patch owns; {repair} "
            "(give your change as `--set CHART.KEY=VALUE`), or re-run your helm upgrade with "
            "`--force-conflicts`, then `kymamesh patch`"
        )
    return f"{what}: {repair}"


# -- sidecars ----------------------------------------------------------------


def is_gateway(pod: Mapping[str, Any]) -> bool:
    """A gateway Pod runs the proxy as its workload, not as a sidecar."""
    templates = inv.annotations_of(pod).get(TEMPLATES_ANNOTATION, "")
    return "gateway" in [t.strip() for t in templates.split(",")]


def namespace_states(
    namespaces: list[Obj],
    pods: list[Obj],
    istiods: list[inv.Istiod],
    proxy_resources: Mapping[str, Mapping[str, Any]] | None = None,
    proxy_images: Mapping[str, str] | None = None,
) -> list[NamespaceState]:
    """Per namespace with injection on or a sidecar running: coverage and outdated sidecars.

    Outdated is the judgement of step restart-proxies (`sidecars.outdated_reasons`): a
    proxy of another version than its istiod, or resources other than its revision's
    injector (`proxy_resources`, by revision) would give it now.
    """
    by_revision = {d.revision: d.version for d in istiods if d.version}
    counts: dict[str, list[int]] = {}
    for pod in pods:
        if not sidecars.is_running(pod) or is_gateway(pod):
            continue
        ns = str(pod["metadata"].get("namespace") or "")
        row = counts.setdefault(ns, [0, 0, 0])
        if not sidecars.has_sidecar(pod):
            row[1] += 1
            continue
        row[0] += 1
        if sidecars.outdated_reasons(pod, by_revision, proxy_resources or {}, proxy_images):
            row[2] += 1
    states = []
    for ns_obj in namespaces:
        name = str(ns_obj["metadata"]["name"])
        enabled, revision = inv.injection_of(ns_obj)
        with_sidecar, without, outdated = counts.get(name, [0, 0, 0])
        if not enabled and not with_sidecar:
            continue
        states.append(NamespaceState(name, enabled, revision, with_sidecar, without, outdated))
    return sorted(states, key=lambda s: s.name)


# -- presentation --------------------------------------------------------------


def plain_lines(st: MeshStatus) -> list[str]:
    """The text result for logs and pipes: one fact per line."""
    lines = [_headline(st)]
    lines.append("releases:")
    for r in st.releases:
        j = r.to_json()
        if r.release is None:
            lines.append(f"  {r.name}: missing")
        else:
            lines.append(
                f"  {r.name}: {j['chart']} {j['chartVersion']} {j['status']} "
                f"(revision {j['revision']}{', by kymamesh' if j['byKymamesh'] else ''})"
            )
    for d in st.istiods:
        lines.append(f"istiod: {_istiod_text(d)}")
    lines.extend(mesh_config_lines(st.mesh_configs))
    lines.append(f"mTLS (mesh-wide): {_mtls_text(st.mtls)}")
    lines.extend(st.canary.lines() if st.canary else [])
    lines.append("patch steps:")
    for s in st.steps:
        lines.append(f"  {'✓' if s.applied else '✗'} {s.name}: {_step_text(s)}")
    lines.extend(identity_lines(st.identity))
    lines.extend(meshidentity.status_lines(st.multicluster))
    lines.append("namespaces:" if st.namespaces else "namespaces: none with injection or sidecars")
    for n in st.namespaces:
        lines.append(
            f"  {n.name}: injection {_injection_text(n)}, {n.with_sidecar} with sidecar, "
            f"{n.without_sidecar} without, {n.outdated} outdated"
        )
    lines.extend(outdated_lines(st.outdated))
    lines.extend(retired_lines(st.retired_images))
    lines.extend(f"advice: {a}" for a in st.advice)
    lines.extend(_verdict(st))
    return lines


def print_rich(st: MeshStatus, stream: TextIO) -> None:
    """The text result on a terminal: tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream)
    console.print(f"[bold]{_headline(st)}[/bold]", highlight=False)

    releases = Table(title="Helm releases", title_justify="left")
    for column in ("release", "chart", "version", "state", "revision", "by kymamesh"):
        releases.add_column(column)
    for r in st.releases:
        j = r.to_json()
        state = j["status"]
        color = "green" if state == "deployed" else "red"
        releases.add_row(
            r.name,
            j["chart"],
            j["chartVersion"] or "-",
            f"[{color}]{state}[/{color}]",
            str(j["revision"] or "-"),
            "yes" if j["byKymamesh"] else "no",
        )
    console.print(releases)
    for d in st.istiods:
        console.print(f"istiod: {_istiod_text(d)}", highlight=False)
    for line in mesh_config_lines(st.mesh_configs):
        console.print(line, highlight=False, markup=False)
    console.print(f"mTLS (mesh-wide): {_mtls_text(st.mtls)}", highlight=False)
    for line in st.canary.lines() if st.canary else []:
        console.print(line, highlight=False)

    steps = Table(title="Kyma patch steps", title_justify="left")
    for column in ("step", "applied", "details"):
        steps.add_column(column)
    for s in st.steps:
        mark = "[green]✓ yes[/green]" if s.applied else "[red]✗ no[/red]"
        steps.add_row(s.name, mark, s.description if s.applied else _step_text(s))
    console.print(steps)
    for line in identity_lines(st.identity):
        console.print(line, highlight=False, markup=False)
    for line in meshidentity.status_lines(st.multicluster):
        console.print(line, highlight=False, markup=False)

    if st.namespaces:
        ns_table = Table(title="Namespaces", title_justify="left")
        for column in ("namespace", "injection", "with sidecar", "without", "outdated"):
            ns_table.add_column(column)
        for n in st.namespaces:
            ns_table.add_row(
                n.name,
                _injection_text(n),
                str(n.with_sidecar),
                str(n.without_sidecar),
                f"[yellow]{n.outdated}[/yellow]" if n.outdated else "0",
            )
        console.print(ns_table)
    else:
        console.print("namespaces: none with injection or sidecars")
    for line in outdated_lines(st.outdated):
        console.print(line, highlight=False, markup=False)
    for line in retired_lines(st.retired_images):
        console.print(line, highlight=False, markup=False)
    for line in st.advice:
        console.print(f"[yellow]advice: {line}[/yellow]", highlight=False)
    for line in _verdict(st):
        color = "green" if st.healthy else "red"
        console.print(f"[{color}]{line}[/{color}]", highlight=False)


def outdated_lines(outdated: list[dict[str, Any]]) -> list[str]:
    """Outdated sidecars by namespace, each workload with what --restart-proxies does."""
    if not outdated:
        return []
    lines = ["outdated sidecars (kymamesh patch --restart-proxies):"]
    namespace = None
    for o in outdated:
        if o["namespace"] != namespace:
            namespace = o["namespace"]
            lines.append(f"  {namespace}:")
        lines.append(
            f"    {o['kind']}/{o['name']} ({len(o['pods'])} Pod(s); {'; '.join(o['reasons'])}): "
            f"{o['action']}, {o['detail']}"
        )
    return lines


def identity_lines(identity: Mapping[str, Any] | None) -> list[str]:
    if identity is None:
        return []
    if identity.get("error"):
        return [f"identity: not checked: {identity['error']}"]
    release = identity.get("release")
    if not identity.get("enabled") and release is None:
        return ["identity: off (kymamesh install|patch --identity FILE turns it on)"]
    foreign = release is not None and release.get("byKymamesh") is False
    if identity.get("enabled"):
        lines = ["identity: on"]
    elif foreign:
        lines = ["identity: off (the Dex below is not kymamesh's: left alone)"]
    else:
        lines = ["identity: off, but Dex remains"]
    if release is None:
        lines.append("  Dex: not installed")
    else:
        ready = "ready" if identity.get("ready") else f"not ready: {identity.get('notReady')}"
        lines.append(
            f"  Dex: release {release['namespace']}/{release['name']} {release['chartVersion']} "
            f"(Dex {release['appVersion']}) {release['status']}, {ready}"
            + (", not installed by kymamesh" if foreign else "")
        )
    lines.append(f"  issuer: {identity.get('issuer') or 'unknown'}")
    connectors = ", ".join(f"{c['id']} ({c['type']})" for c in identity.get("connectors") or [])
    lines.append(f"  connectors: {connectors or 'none'}")
    hosts = ", ".join(identity.get("requireTokenHosts") or [])
    lines.append(f"  hosts requiring a token: {hosts or 'none'}")
    for o in identity.get("objects") or []:
        if not o["present"]:
            state = "missing"
        elif not o["wanted"]:
            state = "present, not wanted"
        else:
            state = "present, matches" if o["matches"] else "present, differs"
        lines.append(f"  {o['kind']} {o['name']}: {state}")
    return lines


def _headline(st: MeshStatus) -> str:
    versions = sorted({str(d.version) for d in st.istiods if d.version})
    found = f"Istio {', '.join(versions)}" if versions else "Istio"
    if not st.istiods:
        return f"Istio: not installed in {st.namespace} (kymamesh installs {_supported()})"
    by = {
        inv.Installer.KYMAMESH: "installed by kymamesh",
        inv.Installer.HELM: "installed with Helm, not by kymamesh",
        inv.Installer.OTHER: "installed by another tool (no kymamesh Helm release)",
        inv.Installer.NONE: "installer unknown",
    }[st.installed_by]
    return f"{found} in {st.namespace}, {by} (kymamesh installs {_supported()})"


def _supported() -> str:
    from kymamesh.istio.release import catalog

    return ", ".join(str(line.latest) for line in catalog().lines)


def _istiod_text(d: inv.Istiod) -> str:
    version = str(d.version) if d.version else f"unknown version (image {d.image or 'none'})"
    ready = "ready" if d.ready is None else f"not ready: {d.ready}"
    plane = d.plane or ControlPlane.named(d.namespace, d.revision)
    return (
        f"{d.name} {version}, revision {d.revision}, {d.replicas} available, {ready} "
        f"(ConfigMaps {plane.mesh_configmap}, {plane.injector_configmap}; mesh root "
        f"namespace {plane.root_namespace})"
    )


def _mtls_text(m: MtlsState) -> str:
    if m.mode is None:
        return "unknown (the PeerAuthentication CRD is not served)"
    if m.policy is None:
        return f"{m.mode} (no mesh-wide PeerAuthentication in {m.root_namespace}: Istio's default)"
    return f"{m.mode} (PeerAuthentication {m.policy})"


def _step_text(s: StepState) -> str:
    if s.error:
        return s.error
    if s.applied:
        return "applied"
    return "not applied: " + "; ".join(s.pending)


def _injection_text(n: NamespaceState) -> str:
    if not n.injection:
        return "off"
    return "on" if n.revision in ("", "default") else f"on (revision {n.revision})"


def _verdict(st: MeshStatus) -> list[str]:
    if st.healthy:
        return ["healthy"]
    return ["unhealthy:"] + [f"  - {p}" for p in st.problems]


def exit_code(st: MeshStatus) -> ExitCode:
    return ExitCode.OK if st.healthy else ExitCode.UNHEALTHY
