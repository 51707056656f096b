"""What a step kind is: the contract between the patch runner and the steps.

A step kind is a class with the parameters it takes (`PARAMS`) and two read-only
methods, `preflight` and `check` (see `kymamesh.workflows.patching` for how the runner uses
them). It lives here, in the steps layer, so that a step needs nothing from the
runner above it: the layers (cli -> pipeline -> steps -> adapters) only point down.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from kymamesh.adapters.cluster import Cluster
from kymamesh.istio.controlplane import ControlPlane, find_control_planes

if TYPE_CHECKING:
    from kymamesh.adapters.helm import Helm


# When `install` may run a step (`RUNS_ONCE`): phase 2 starts before phase 1 ends where a
# step needs no more of it (kymamesh.workflows.patching.PatchRun). The steps of the list are
# independent of each other; a step that reads what another writes runs after it.
ONCE_CONFIG_WRITTEN = "config-written"  # istiod's release written: its ConfigMaps are there
ONCE_ISTIOD_ANSWERS = "istiod-answers"  # istiod serves: its webhooks check Istio's objects
ONCE_CHARTS_DONE = "charts-done"  # phase 1 done: every release installed and ready
STAGES = (ONCE_CONFIG_WRITTEN, ONCE_ISTIOD_ANSWERS, ONCE_CHARTS_DONE)


@dataclass(frozen=True)
class Change:
    """One difference between live and wanted, and how to remove it."""

    target: str
    summary: str
    apply: Callable[[Cluster], None]
    diff: str = ""


@dataclass
class StepContext:
    """What a step works on. `control_planes` are the istiod revisions found in the
    cluster (each one gets the patch), or, when there is none yet, the one `install`
    is about to make (not `installed`)."""

    cluster: Cluster
    namespace: str
    params: Mapping[str, Any]
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)
    timeout: float = 300.0  # --timeout: how long a step may wait for the cluster
    planes: tuple[ControlPlane, ...] | None = None
    # the parameters of every step of the patch list, by step name (a step may read another's,
    # e.g. the gateway's domain)
    steps: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # for a step that installs a Helm release: the helm adapter (made on first use) and
    # --charts-dir
    helm: Callable[[], Helm] | None = None
    charts_dir: Path | None = None
    # secret values read at run time (files, environment) for this run only; never remembered
    secret_values: Mapping[str, str] = field(default_factory=dict)
    # this step's parameters as remembered from the former run (before this run's settings)
    remembered: Mapping[str, Any] = field(default_factory=dict)

    @property
    def control_planes(self) -> tuple[ControlPlane, ...]:
        if self.planes is None:  # found on first use when not given
            found = find_control_planes(self.cluster, self.namespace)
            self.planes = tuple(found) or (ControlPlane(self.namespace),)
        return self.planes

    @property
    def istio_present(self) -> bool:
        return any(p.installed for p in self.control_planes)


class Step(Protocol):
    PARAMS: ClassVar[frozenset[str]]  # the parameters the kind takes (top-level keys)
    RUNS_ONCE: ClassVar[str]  # what of phase 1 `install` must have done first (STAGES)

    def preflight(self, ctx: StepContext) -> str | None: ...

    def check(self, ctx: StepContext) -> list[Change]: ...


StepKind = type[Step]
"""A step kind: the class, made once per run of the step with no arguments."""
