"""Phase 2, the Kyma patch: an ordered list of idempotent steps.

The list is data (`patches/kyma.yaml`): each entry names a step, its kind and
its parameters. A step kind (a class in `kymamesh/steps/`, registered in the
typed table `kymamesh.steps.KINDS`; the contract is `kymamesh.steps.base.Step`)
implements two read-only methods:

- `preflight(ctx)`: refuses bad input before anything is written, and may return
  a question that needs the user's yes (for example: weaken a PERMISSIVE mesh);
- `check(ctx)`: the changes that would bring the live state to the wanted one,
  each with a summary, a diff and the action that makes it. No change means the
  step is in place; `status` uses the same check.

The runner applies the changes, then checks again to verify, and turns each step
into an outcome: unchanged, changed (with a summary), would-change (dry run) or
failed (with the reason). A failed step does not stop the steps after it; the
command then exits with PARTIAL.

What the patch works from besides the shared `RunContext` and the patch list (the
remembered settings, `--charts-dir`, the identity file's secrets, the control plane
`install` is about to make) is one `PatchInputs`, made by the command or workflow that
patches and handed to each function here that needs it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kymamesh.context import RunContext
from kymamesh.errors import KymameshError, LockLostError, PartialFailureError, UsageError
from kymamesh.istio.controlplane import ControlPlane, find_control_planes
from kymamesh.istio.values import deep_merge
from kymamesh.output import ItemResult, Outcome
from kymamesh.resources import load_yaml, patches_dir
from kymamesh.steps.base import STAGES, Change, Step, StepContext, StepKind

PHASE_PATCH = "phase 2: Kyma patch"


@dataclass
class PatchInputs:
    """What phase 2 works from besides the patch list and the `RunContext` every command
    shares. Made by the command or workflow that patches (`install`, `patch`, `upgrade
    finish`; `status` makes one to check the steps against the remembered settings) and
    handed to the functions that need it; each step gets its part in its `StepContext`."""

    # --charts-dir, for the releases the patch installs (Dex)
    charts_dir: Path | None = None
    # secret values the identity file had read from files or the environment: for this
    # run's steps only, never remembered or shown
    secret_values: dict[str, str] = field(default_factory=dict, repr=False)
    # the patch settings remembered from the former run, before this run's were merged in
    # (set by `patch_list_for`)
    remembered: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the patch settings to remember after a successful patch (set by `patch_list_for`;
    # see kymamesh.settings); None: nothing to remember
    to_remember: dict[str, dict[str, Any]] | None = None
    # the control plane `install` makes (from the istiod values), for steps run before it exists
    planned_control_plane: ControlPlane | None = None


@dataclass(frozen=True)
class StepSpec:
    """One row of the patch list."""

    name: str
    kind: str
    params: Mapping[str, Any]
    description: str = ""


def step_kinds() -> Mapping[str, StepKind]:
    from kymamesh.steps import KINDS

    return KINDS


def load_patch_list(overrides: Mapping[str, Mapping[str, Any]] | None = None) -> list[StepSpec]:
    """The ordered patch list, with the user's parameter overrides merged in."""
    raw = load_yaml(patches_dir() / "kyma.yaml")
    given = dict(overrides or {})
    overrides = dict(given)
    specs = []
    for entry in raw["steps"]:
        name = str(entry["name"])
        params = deep_merge(entry.get("params") or {}, overrides.pop(name, {}) or {})
        specs.append(
            StepSpec(
                name=name,
                kind=str(entry["kind"]),
                params=params,
                description=str(entry.get("description", "")),
            )
        )
    if overrides:
        known = ", ".join(s.name for s in specs)
        raise UsageError(
            f"settings given for unknown patch steps: {', '.join(sorted(overrides))}",
            hint=f"the patch steps are: {known}",
        )
    kinds = step_kinds()
    for spec in specs:
        if spec.kind not in kinds:
            raise UsageError(f"patch step {spec.name} has unknown kind {spec.kind}")
    for spec in specs:
        unknown = sorted(set(given.get(spec.name) or {}) - known_params(spec))
        if unknown:
            raise UsageError(
                f"settings given for patch step {spec.name} that it does not take: "
                + ", ".join(map(str, unknown)),
                hint=f"{spec.name} takes: {', '.join(sorted(known_params(spec)))}",
            )
    return specs


def known_params(spec: StepSpec) -> frozenset[str]:
    """The parameters a step takes: those its kind declares."""
    return step_kinds()[spec.kind].PARAMS


def patch_list_for(
    ctx: RunContext,
    inputs: PatchInputs,
    given: Mapping[str, Mapping[str, Any]],
    reset: bool = False,
) -> list[StepSpec]:
    """The patch list for this cluster: defaults, then the settings remembered there
    (`kymamesh.settings`; none with `reset`), then the ones given now. Unknown given
    steps or parameters are a usage error, raised before the cluster is contacted.
    Sets `inputs.remembered` and `inputs.to_remember`."""
    from kymamesh import settings

    known = {spec.name: known_params(spec) for spec in load_patch_list(given)}
    stored = {} if reset else settings.load(ctx.cluster, ctx.namespace)
    remembered = {  # what an older kymamesh remembered that this one no longer takes is dropped
        name: {k: v for k, v in params.items() if k in known[name]}
        for name, params in stored.items()
        if name in known
    }
    merged = settings.effective(remembered, given)
    inputs.remembered = remembered
    inputs.to_remember = settings.to_remember(merged)
    return load_patch_list(merged)


def image_hub(specs: list[StepSpec]) -> str | None:
    """The image hub the user asked for (`--hub`, or remembered): step
    `sidecar-image-hub`'s `hub`, which phase 1 installs from too, so both agree."""
    for spec in specs:
        if spec.kind == "image-hub":
            hub = spec.params.get("hub")
            return str(hub).strip().rstrip("/") if hub else None
    return None


def _remember_settings(ctx: RunContext, inputs: PatchInputs) -> None:
    from kymamesh import settings

    wanted = inputs.to_remember
    if wanted is None or ctx.options.dry_run:
        return
    if not settings.differs(ctx.cluster, ctx.namespace, wanted):
        return
    ctx.before_write()
    settings.remember(ctx.cluster, ctx.namespace, wanted)
    ctx.result.notes.append(
        f"remembered the patch settings in {settings.ref(ctx.namespace)}; "
        "later runs start from them"
    )


def control_planes(ctx: RunContext, inputs: PatchInputs) -> tuple[ControlPlane, ...]:
    """The control planes the patch applies to: every revision in the cluster, and the
    one `install` is about to make when it is not there yet (from the istiod values);
    with neither, the default revision, not installed."""
    found = find_control_planes(ctx.cluster, ctx.namespace)
    planned = inputs.planned_control_plane
    if planned is not None and planned.istiod not in {p.istiod for p in found}:
        found.append(planned)
    return tuple(found) or (ControlPlane(ctx.namespace),)


def _context(
    ctx: RunContext,
    inputs: PatchInputs,
    spec: StepSpec,
    specs: list[StepSpec],
    planes: tuple[ControlPlane, ...] | None = None,
) -> StepContext:
    return StepContext(
        cluster=ctx.cluster,
        namespace=ctx.namespace,
        params=spec.params,
        dry_run=ctx.options.dry_run,
        timeout=ctx.options.timeout,
        planes=control_planes(ctx, inputs) if planes is None else planes,
        steps={s.name: s.params for s in specs},
        helm=lambda: ctx.helm,
        charts_dir=inputs.charts_dir,
        secret_values=inputs.secret_values,
        remembered=inputs.remembered.get(spec.name) or {},
    )


def step_context(
    ctx: RunContext, inputs: PatchInputs, spec: StepSpec, specs: list[StepSpec]
) -> StepContext:
    """What step `spec` of the patch list `specs` works on (for read-only use: `status`)."""
    return _context(ctx, inputs, spec, specs)


def preflight(ctx: RunContext, inputs: PatchInputs, specs: list[StepSpec]) -> None:
    """Read-only checks of every step, and the confirmations they need, before any write."""
    kinds = step_kinds()
    questions = []
    planes = control_planes(ctx, inputs)
    for spec in specs:
        question = kinds[spec.kind]().preflight(_context(ctx, inputs, spec, specs, planes))
        if question:
            questions.append(f"{spec.name}: {question}")
    if questions and not ctx.options.dry_run:
        if len(questions) == 1:
            ctx.confirm(questions[0])
            return
        for q in questions:
            ctx.progress.info(q)
        ctx.confirm("apply these changes?")


def check_all(
    ctx: RunContext,
    inputs: PatchInputs,
    specs: list[StepSpec],
    patch_list: list[StepSpec] | None = None,
) -> dict[str, list[Change]]:
    """The read-only check of every step of `specs` (used by `status`); `patch_list`, the
    whole list the steps belong to, when `specs` is a part of it."""
    kinds = step_kinds()
    planes = control_planes(ctx, inputs)
    whole = specs if patch_list is None else patch_list
    return {
        spec.name: kinds[spec.kind]().check(_context(ctx, inputs, spec, whole, planes))
        for spec in specs
    }


def run_patch(ctx: RunContext, inputs: PatchInputs, specs: list[StepSpec]) -> None:
    """Phase 2: run every step in order; raise PARTIAL at the end if one failed."""
    PatchRun(ctx, inputs, specs).finish()


class PatchRun:
    """Phase 2 of one run, which `install` starts before phase 1 ends.

    `run_ahead(stage)` runs, quietly and in list order, each step not run yet whose kind
    may run at that point of phase 1 (its `RUNS_ONCE`, see `kymamesh.steps.base`), while
    phase 1 goes on in another thread: istiod's ConfigMaps are edited while istiod starts,
    the mesh-wide objects written while the gateway installs. `finish()` is phase 2 as it
    shows: the header, each step in list order (one that ran ahead is reported as it
    ended), the others run then. A step that failed ahead runs again in `finish`, so
    running ahead never ends worse than running in order. The result lists every step
    that ran, also when phase 1 fails after some ran ahead.
    """

    def __init__(self, ctx: RunContext, inputs: PatchInputs, specs: list[StepSpec]) -> None:
        self.ctx = ctx
        self.inputs = inputs
        self.specs = specs
        self._kinds = step_kinds()
        self._ran: dict[str, ItemResult] = {}  # the steps run ahead, by name

    def run_ahead(self, stage: str) -> None:
        """Run the steps that need no more of phase 1 than `stage` (one of STAGES)."""
        reached = STAGES[: STAGES.index(stage) + 1]
        todo = [
            s
            for s in self.specs
            if s.name not in self._ran and self._kinds[s.kind].RUNS_ONCE in reached
        ]
        if not todo:
            return
        planes = control_planes(self.ctx, self.inputs)
        phase = self.ctx.result.phase(PHASE_PATCH)
        for spec in todo:
            item = ItemResult(name=spec.name, outcome=Outcome.UNCHANGED)
            self._ran[spec.name] = item
            phase.items.append(item)
            started = time.monotonic()
            try:
                self._run(spec, planes, item)
            finally:
                item.duration_s = time.monotonic() - started

    def finish(self) -> None:
        """Phase 2: every step in list order; PARTIAL at the end if one failed."""
        ctx = self.ctx
        phase = ctx.result.phase(PHASE_PATCH)
        ctx.progress.phase(PHASE_PATCH)
        failed = []
        planes: tuple[ControlPlane, ...] | None = None
        items = []
        for spec in self.specs:
            item = self._ran.get(spec.name)
            if item is not None and item.outcome != Outcome.FAILED:
                ctx.progress.report(item)
                items.append(item)
                continue
            item = ItemResult(name=spec.name, outcome=Outcome.UNCHANGED)
            items.append(item)
            phase.items.append(item)
            if planes is None:  # once: no step adds a revision or moves the root namespace
                planes = control_planes(ctx, self.inputs)
            with ctx.progress.item(spec.name) as tracker:
                try:
                    self._run(spec, planes, item)
                except LockLostError:
                    tracker.done(item.outcome, item.error)
                    raise
                tracker.done(item.outcome, item.summary or item.error)
            item.duration_s = tracker.duration_s
            if item.outcome == Outcome.FAILED:
                failed.append(spec.name)
        ours = [*self._ran.values(), *items]
        others = [i for i in phase.items if not _among(i, ours)]  # of an earlier run
        phase.items[:] = [*others, *items]  # in list order
        if not failed:
            _remember_settings(ctx, self.inputs)
        if failed:
            raise PartialFailureError(
                f"patch steps failed: {', '.join(failed)}",
                hint="fix the cause named above and re-run; steps already applied are kept "
                "and a re-run converges",
            )

    def _run(self, spec: StepSpec, planes: tuple[ControlPlane, ...], item: ItemResult) -> None:
        """One step; its failure is recorded on `item` (a lost lock is raised: no further
        step may write)."""
        ctx = self.ctx
        sctx = _context(ctx, self.inputs, spec, self.specs, planes)
        try:
            _run_step(ctx, self._kinds[spec.kind](), sctx, item)
        except LockLostError as exc:
            item.outcome = Outcome.FAILED
            item.error = exc.message
            raise
        except KymameshError as exc:
            item.outcome = Outcome.FAILED
            item.error = exc.message + (f" ({exc.hint})" if exc.hint else "")
            if ctx.options.verbose:
                import traceback

                traceback.print_exc()
        finally:
            for note in sctx.notes:  # a step's check runs more than once: keep each note once
                if note not in ctx.result.notes:
                    ctx.result.notes.append(note)


def _among(item: ItemResult, items: list[ItemResult]) -> bool:
    return any(item is i for i in items)


def _run_step(ctx: RunContext, step: Step, sctx: StepContext, item: ItemResult) -> None:
    held = ctx.locked  # then this check is already one made under the lock
    changes = step.check(sctx)
    if not changes:
        return
    if ctx.options.dry_run:
        item.outcome = Outcome.WOULD_CHANGE
        item.summary = "; ".join(c.summary for c in changes)
        item.changes = [f"{c.target}: {c.summary}" for c in changes]
        item.diff = "\n".join(c.diff for c in changes if c.diff)
        return
    ctx.before_write()
    if not held:
        changes = step.check(sctx)  # again, under the lock
    for change in changes:
        change.apply(sctx.cluster)
    item.changes = [f"{c.target}: {c.summary}" for c in changes]
    item.summary = "; ".join(c.summary for c in changes)
    item.outcome = Outcome.CHANGED if changes else Outcome.UNCHANGED
    remaining = step.check(sctx)
    if remaining:
        item.outcome = Outcome.FAILED
        raise PartialFailureError(
            "not in place after applying: "
            + "; ".join(f"{c.target}: {c.summary}" for c in remaining),
            hint="something else may be changing the same objects",
        )
