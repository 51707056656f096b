"""Phase 2 started beside phase 1 (`PatchRun.run_ahead`, `pipeline.Beside`): which steps run
when, what the output and the result show, and what happens when a step or phase 1 fails
(pure logic: fake step kinds on the fake cluster)."""

from __future__ import annotations

import io
import threading
from typing import Any, ClassVar

import pytest
from support_fake_cluster import FakeCluster, run_context

from kymamesh.errors import PartialFailureError, PreconditionError, WaitTimeoutError
from kymamesh.output import Outcome, Progress
from kymamesh.steps.base import (
    ONCE_CHARTS_DONE,
    ONCE_CONFIG_WRITTEN,
    ONCE_ISTIOD_ANSWERS,
    Change,
    StepContext,
)
from kymamesh.workflows import patching
from kymamesh.workflows.pipeline import Beside

APPLIED: list[str] = []  # the steps' writes, in the order made
FAILS_ONCE: set[str] = set()  # steps whose first check refuses (then they work)


class _Fake:
    PARAMS: ClassVar[frozenset[str]] = frozenset()
    RUNS_ONCE: ClassVar[str] = ONCE_CHARTS_DONE

    def preflight(self, ctx: StepContext) -> str | None:
        return None

    def check(self, ctx: StepContext) -> list[Change]:
        name = str(ctx.params["name"])
        if name in FAILS_ONCE:
            FAILS_ONCE.discard(name)
            raise PreconditionError(f"{name}: not yet")
        if name in APPLIED:
            return []
        return [Change(target=name, summary="made", apply=lambda _c: APPLIED.append(name))]


class Config(_Fake):
    RUNS_ONCE = ONCE_CONFIG_WRITTEN


class Istiod(_Fake):
    RUNS_ONCE = ONCE_ISTIOD_ANSWERS


class Charts(_Fake):
    RUNS_ONCE = ONCE_CHARTS_DONE


KINDS: dict[str, Any] = {"config": Config, "istiod": Istiod, "charts": Charts}
LIST = [("mtls", "istiod"), ("resources", "config"), ("policy", "config"),
        ("components", "charts"), ("tls", "istiod"), ("restarts", "charts")]  # fmt: skip


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> Any:
    APPLIED.clear()
    FAILS_ONCE.clear()
    monkeypatch.setattr(patching, "step_kinds", lambda: KINDS)
    monkeypatch.setattr(patching, "_remember_settings", lambda ctx, inputs: None)
    ctx = run_context(FakeCluster(), command="install")
    out = io.StringIO()
    ctx.progress = Progress(stream=out)
    specs = [patching.StepSpec(name, kind, {"name": name}) for name, kind in LIST]
    return ctx, patching.PatchRun(ctx, patching.PatchInputs(), specs), out


def test_steps_run_ahead_by_stage_and_show_in_list_order(run: Any) -> None:
    ctx, patch, out = run
    patch.run_ahead(ONCE_CONFIG_WRITTEN)
    assert APPLIED == ["resources", "policy"]
    assert out.getvalue() == ""  # quietly: phase 1 is still showing its own items
    patch.run_ahead(ONCE_ISTIOD_ANSWERS)
    assert APPLIED == ["resources", "policy", "mtls", "tls"]
    patch.finish()
    assert APPLIED == ["resources", "policy", "mtls", "tls", "components", "restarts"]
    lines = [line for line in out.getvalue().splitlines() if line.startswith("-->")]
    assert lines == [f"--> {name} ..." for name, _ in LIST]
    assert out.getvalue().startswith("==> phase 2: Kyma patch\n")
    items = ctx.result.phase(patching.PHASE_PATCH).items
    assert [i.name for i in items] == [name for name, _ in LIST]
    assert all(i.outcome == Outcome.CHANGED for i in items)


def test_a_later_stage_runs_the_earlier_stages_steps_too(run: Any) -> None:
    """Beside a gateway when istiod was left as it was: no ConfigMap stage came first."""
    _, patch, _ = run
    patch.run_ahead(ONCE_ISTIOD_ANSWERS)
    assert APPLIED == ["mtls", "resources", "policy", "tls"]


def test_without_running_ahead_finish_is_the_patch_in_order(run: Any) -> None:
    _, patch, _ = run
    patch.finish()
    assert [name for name, _ in LIST] == APPLIED


def test_a_step_that_failed_ahead_runs_again_after_phase_1(run: Any) -> None:
    ctx, patch, out = run
    FAILS_ONCE.add("policy")
    patch.run_ahead(ONCE_CONFIG_WRITTEN)
    assert APPLIED == ["resources"]
    patch.finish()  # no PARTIAL: the second try worked
    assert APPLIED == ["resources", "mtls", "policy", "components", "tls", "restarts"]
    items = ctx.result.phase(patching.PHASE_PATCH).items
    assert [(i.name, i.outcome) for i in items] == [(n, Outcome.CHANGED) for n, _ in LIST]
    assert "not yet" not in out.getvalue()


def test_a_step_that_fails_again_makes_the_run_partial(run: Any) -> None:
    ctx, patch, _ = run
    FAILS_ONCE.add("tls")
    patch.run_ahead(ONCE_ISTIOD_ANSWERS)
    FAILS_ONCE.add("tls")
    with pytest.raises(PartialFailureError, match="patch steps failed: tls"):
        patch.finish()
    items = {i.name: i for i in ctx.result.phase(patching.PHASE_PATCH).items}
    assert len(items) == len(LIST)
    assert items["tls"].outcome == Outcome.FAILED and "not yet" in items["tls"].error


def test_when_phase_1_fails_the_result_lists_what_ran_ahead(run: Any) -> None:
    ctx, patch, _ = run
    patch.run_ahead(ONCE_CONFIG_WRITTEN)
    # phase 1 then fails: finish() is never called
    items = ctx.result.phase(patching.PHASE_PATCH).items
    assert [(i.name, i.outcome) for i in items] == [
        ("resources", Outcome.CHANGED),
        ("policy", Outcome.CHANGED),
    ]


def test_beside_runs_one_stage_at_a_time_and_raises_its_error_after_the_block() -> None:
    seen: list[tuple[str, str]] = []
    gate = threading.Event()

    def ahead(stage: str) -> None:
        if stage == ONCE_CONFIG_WRITTEN:
            gate.wait(10)
        seen.append((stage, threading.current_thread().name))
        if stage == ONCE_ISTIOD_ANSWERS:
            raise PreconditionError("lost")

    beside = Beside(ahead)
    with pytest.raises(PreconditionError, match="lost"), beside:
        beside.start(ONCE_CONFIG_WRITTEN)
        assert beside.reached(ONCE_CONFIG_WRITTEN) and seen == []
        gate.set()
        beside.start(ONCE_ISTIOD_ANSWERS)  # after the stage before ended
        beside.start(ONCE_ISTIOD_ANSWERS)  # once only
    assert [s for s, _ in seen] == [ONCE_CONFIG_WRITTEN, ONCE_ISTIOD_ANSWERS]
    assert all(name.startswith("kymamesh-") for _, name in seen)


def test_beside_lets_the_blocks_own_error_win() -> None:
    def ahead(stage: str) -> None:
        raise PreconditionError("the thread's")

    beside = Beside(ahead)
    with pytest.raises(WaitTimeoutError, match="istiod not ready"), beside:
        beside.start(ONCE_CONFIG_WRITTEN)
        raise WaitTimeoutError("istiod not ready")


def test_nothing_runs_beside_without_ahead() -> None:
    beside = Beside(None)
    with beside:
        beside.start(ONCE_CONFIG_WRITTEN)
    assert not beside.reached(ONCE_CONFIG_WRITTEN)
