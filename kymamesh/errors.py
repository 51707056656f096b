"""Errors a user can act on, each with a stable exit code.

Every failure that reaches the user is a `KymameshError`: a message (what was
expected, what was found) and a hint (what to do). The CLI turns it into one
line on stderr, an `errors` entry in the JSON result and its exit code.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented in docs/reference/exit-codes.md; a test pins the numbers."""

    OK = 0
    FAILURE = 1  # an unexpected error (a bug, or an API error kymamesh does not know)
    USAGE = 2  # bad command line or bad input file
    PRECONDITION = 3  # the cluster or the input is not as required; nothing was changed
    TIMEOUT = 4  # waiting for readiness or for the lock ran out of time
    PARTIAL = 5  # some changes were made, then a step failed: re-run to converge
    NEEDS_CONFIRMATION = 6  # a change needs --yes (no terminal) or was declined
    UNHEALTHY = 7  # `status`: the mesh is not in the state kymamesh leaves
    LOCK_LOST = 8  # the run lost its lock while writing and stopped before its next write
    INTERRUPTED = 130  # Ctrl-C (SIGINT): 128 + 2, as shells report a process ended by it


class KymameshError(Exception):
    """Base of every error meant for the user."""

    exit_code: ExitCode = ExitCode.FAILURE
    code: str = "error"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(KymameshError):
    exit_code = ExitCode.USAGE
    code = "usage"


class PreconditionError(KymameshError):
    exit_code = ExitCode.PRECONDITION
    code = "precondition"


class InsecureValuesError(PreconditionError):
    code = "insecure-values"


class VersionGateError(PreconditionError):
    code = "version-gate"


class ClusterUnreachableError(PreconditionError):
    code = "cluster-unreachable"


class IstiodUnreachableError(PreconditionError):
    """istiod's debug views (`/debug/*` on its monitoring port) did not answer: no ready istiod
    Pod, or one or more that could not be reached or refused. `answers` holds what the
    others returned ({Pod name: body}), `failures` each failed Pod and why."""

    code = "istiod-unreachable"

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        answers: dict[str, bytes] | None = None,
        failures: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, hint)
        self.answers = dict(answers or {})
        self.failures = dict(failures or {})


class ForbiddenError(PreconditionError):
    code = "forbidden"


class HelmMissingError(PreconditionError):
    code = "helm-missing"


class ChartSourceError(PreconditionError):
    code = "chart-source"


class WaitTimeoutError(KymameshError):
    exit_code = ExitCode.TIMEOUT
    code = "timeout"


class LockHeldError(KymameshError):
    exit_code = ExitCode.TIMEOUT
    code = "lock-held"


class LockLostError(KymameshError):
    """The run no longer holds its lock (the Lease went unrenewed, or another run took it)."""

    exit_code = ExitCode.LOCK_LOST
    code = "lock-lost"


class PartialFailureError(KymameshError):
    exit_code = ExitCode.PARTIAL
    code = "partial-failure"


class ConfirmationRequiredError(KymameshError):
    exit_code = ExitCode.NEEDS_CONFIRMATION
    code = "needs-confirmation"


class InterruptedRunError(KymameshError):
    """Ctrl-C: the run stopped where it was; the lock (if taken) was released."""

    exit_code = ExitCode.INTERRUPTED
    code = "interrupted"


class ApiError(KymameshError):
    """An API call failed for good (not retried further)."""

    code = "api-error"

    def __init__(self, message: str, status: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.status = status


class NotFoundError(ApiError):
    code = "not-found"


class ConflictError(ApiError):
    code = "conflict"


def yaml_problem(exc: Exception) -> str:
    """A YAML parse error in one line: what is wrong and where (line, column)."""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
