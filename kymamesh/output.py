"""Results and progress: what a command did, as text for people and JSON for CI.

`Result` is the contract of `-o json` (documented in docs/reference/json-output.md
and pinned by tests/test_json_contract.py). `Progress` shows each phase and item
as it runs: spinners on a terminal, plain lines otherwise (CI logs), on stderr
so that stdout carries only the result.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TextIO

from kymamesh.errors import ExitCode, KymameshError

SCHEMA = "kymamesh.result/v1"


class Outcome(StrEnum):
    UNCHANGED = "unchanged"
    CHANGED = "changed"
    WOULD_CHANGE = "would-change"  # --dry-run
    FAILED = "failed"
    SKIPPED = "skipped"  # not run because an earlier item failed


@dataclass
class ItemResult:
    """One release of phase 1, one step of phase 2, one object of a command."""

    name: str
    outcome: Outcome
    summary: str = ""
    changes: list[str] = field(default_factory=list)
    diff: str = ""
    duration_s: float = 0.0
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "outcome": self.outcome.value,
            "summary": self.summary,
            "changes": list(self.changes),
            "diff": self.diff,
            "durationSeconds": round(self.duration_s, 3),
            "error": self.error,
        }


@dataclass
class PhaseResult:
    name: str
    items: list[ItemResult] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(i.outcome in (Outcome.CHANGED, Outcome.WOULD_CHANGE) for i in self.items)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "changed": self.changed,
            "items": [i.to_json() for i in self.items],
        }


@dataclass
class ErrorInfo:
    code: str
    message: str
    hint: str = ""

    @classmethod
    def of(cls, exc: KymameshError) -> ErrorInfo:
        return cls(code=exc.code, message=exc.message, hint=exc.hint or "")

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "hint": self.hint}


@dataclass
class Result:
    """What one command did. `status` is ok, failed or refused."""

    command: str
    dry_run: bool = False
    phases: list[PhaseResult] = field(default_factory=list)
    errors: list[ErrorInfo] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    exit_code: ExitCode = ExitCode.OK

    def phase(self, name: str) -> PhaseResult:
        for phase in self.phases:
            if phase.name == name:
                return phase
        phase = PhaseResult(name)
        self.phases.append(phase)
        return phase

    @property
    def changed(self) -> bool:
        return any(p.changed for p in self.phases)

    @property
    def status(self) -> str:
        if self.exit_code == ExitCode.OK:
            return "ok"
        if self.exit_code in (
            ExitCode.USAGE,
            ExitCode.PRECONDITION,
            ExitCode.NEEDS_CONFIRMATION,
        ):
            return "refused"
        if self.exit_code == ExitCode.UNHEALTHY:
            return "unhealthy"
        return "failed"

    def fail(self, exc: KymameshError) -> None:
        self.errors.append(ErrorInfo.of(exc))
        self.exit_code = exc.exit_code

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "command": self.command,
            "status": self.status,
            "exitCode": int(self.exit_code),
            "dryRun": self.dry_run,
            "changed": self.changed,
            "phases": [p.to_json() for p in self.phases],
            "errors": [e.to_json() for e in self.errors],
            "notes": list(self.notes),
            "data": self.data,
        }

    def render_json(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=False, default=str)

    def render_text(self, verbose: bool = False, brief: bool = False) -> str:
        """The result for people. `brief` when progress already showed each item on the
        same terminal: then only diffs, notes and the closing line are added."""
        lines: list[str] = []
        for phase in self.phases:
            if not phase.items:
                continue
            if brief:
                for item in phase.items:
                    if item.diff and (self.dry_run or verbose):
                        lines.append(f"{item.name}:")
                        lines.extend("    " + d for d in item.diff.rstrip().splitlines())
                continue
            lines.append(f"{phase.name}:")
            for item in phase.items:
                mark = _MARKS[item.outcome]
                summary = f": {item.summary}" if item.summary else ""
                lines.append(f"  {mark} {item.name} [{item.outcome.value}]{summary}")
                for change in item.changes:
                    if change != item.summary:
                        lines.append(f"      - {change}")
                if item.diff and (self.dry_run or verbose):
                    lines.extend("      " + d for d in item.diff.rstrip().splitlines())
                if item.error:
                    lines.append(f"      error: {item.error}")
        for note in self.notes:
            lines.append(f"note: {note}")
        if self.exit_code == ExitCode.OK:
            if self.dry_run:
                lines.append(
                    "dry run: nothing was written"
                    + ("; the changes above would be made" if self.changed else "; nothing to do")
                )
            elif self.phases:
                lines.append(
                    "done: "
                    + ("changes made" if self.changed else "already in place, nothing written")
                )
        return "\n".join(lines)


_MARKS = {
    Outcome.UNCHANGED: "=",
    Outcome.CHANGED: "✓",
    Outcome.WOULD_CHANGE: "~",
    Outcome.FAILED: "✗",
    Outcome.SKIPPED: "-",
}


class Progress:
    """Per phase and per item progress on stderr: spinners on a TTY, plain lines otherwise."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)()) and not quiet
        self._console: Any = None
        if self.interactive:
            from rich.console import Console

            self._console = Console(file=self.stream)

    def phase(self, name: str) -> None:
        if self.quiet:
            return
        if self._console is not None:
            from rich.text import Text

            self._console.print(Text(name, style="bold"))
        else:
            print(f"==> {name}", file=self.stream, flush=True)

    def info(self, message: str) -> None:
        if self.quiet:
            return
        if self._console is not None:
            from rich.text import Text

            self._console.print(Text(f"  {message}"), highlight=False)
        else:
            print(f"    {message}", file=self.stream, flush=True)

    @contextmanager
    def item(self, label: str) -> Iterator[ItemTracker]:
        """Track one item; it ends in a check mark or a cross, with its duration."""
        tracker = ItemTracker(label)
        start = time.monotonic()
        if not self.quiet and self._console is None:
            print(f"--> {label} ...", file=self.stream, flush=True)
        if self._console is not None:
            from rich.markup import escape

            status: Any = self._console.status(f"  {escape(label)} …")
        else:
            status = _no_status()
        try:
            with status:
                yield tracker
        except BaseException:
            if tracker.outcome is None:
                tracker.outcome = Outcome.FAILED
            raise
        finally:
            tracker.duration_s = time.monotonic() - start
            if not self.quiet:
                self._done(tracker)

    @contextmanager
    def track(self, item: ItemResult, label: str | None = None) -> Iterator[None]:
        """Show `item` while the block runs (under `label`, default its name), then as the
        block left it: its outcome and summary, or, when the block raises, failed with the
        error's message (re-raised). Its duration is recorded."""
        with self.item(label or item.name) as tracker:
            try:
                yield
            except Exception as exc:
                item.outcome = Outcome.FAILED
                item.error = exc.message if isinstance(exc, KymameshError) else str(exc)
                raise
            finally:
                tracker.done(item.outcome, item.summary or item.error)
        item.duration_s = tracker.duration_s

    def report(self, item: ItemResult) -> None:
        """Show an item that ran before (quietly, while something else was shown), as
        `item` would have shown it: its label, then its outcome and duration."""
        if self.quiet:
            return
        if self._console is None:
            print(f"--> {item.name} ...", file=self.stream, flush=True)
        tracker = ItemTracker(item.name, item.outcome, item.summary or item.error)
        tracker.duration_s = item.duration_s
        self._done(tracker)

    def _done(self, tracker: ItemTracker) -> None:
        outcome = tracker.outcome or Outcome.FAILED
        mark = _MARKS[outcome]
        summary = f": {tracker.summary}" if tracker.summary else ""
        line = f"  {mark} {tracker.label} [{outcome.value}]{summary} ({tracker.duration_s:.1f}s)"
        if self._console is not None:
            from rich.text import Text

            color = {"failed": "red", "changed": "green", "would-change": "yellow"}.get(
                outcome.value, "dim"
            )
            self._console.print(Text(line, style=color), highlight=False)
        else:
            print(line, file=self.stream, flush=True)


@contextmanager
def _no_status() -> Iterator[None]:
    yield


@dataclass
class ItemTracker:
    label: str
    outcome: Outcome | None = None
    summary: str = ""
    duration_s: float = 0.0

    def done(self, outcome: Outcome, summary: str = "") -> None:
        self.outcome = outcome
        self.summary = summary
