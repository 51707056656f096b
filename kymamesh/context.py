"""What every command shares: options, the lazily made cluster and helm adapters,
the lock taken before the first write, confirmations, progress and the result.

Nothing more: what only some commands need is handed to them explicitly by the workflow
that needs it (the patch's inputs, `kymamesh.workflows.patching.PatchInputs`; phase 1's
release and charts, `kymamesh.workflows.pipeline.ChartRun`)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kymamesh.errors import ConfirmationRequiredError
from kymamesh.output import Progress, Result

if TYPE_CHECKING:
    from kymamesh.adapters.cluster import Cluster
    from kymamesh.adapters.helm import Helm


@dataclass
class Options:
    kubeconfig: str | None = None
    context: str | None = None
    helm: str | None = None
    dry_run: bool = False
    yes: bool = False
    verbose: bool = False
    output: str = "text"
    timeout: float = 300.0
    lock_wait: float = 60.0


@dataclass
class RunContext:
    """One command's run: what every command shares, and nothing only some need."""

    options: Options
    result: Result
    progress: Progress
    namespace: str = "istio-system"
    _cluster: Cluster | None = None
    _helm: Helm | None = None
    _stack: ExitStack = field(default_factory=ExitStack)
    _locked: bool = False
    _helm_writes: int = 0

    @property
    def cluster(self) -> Cluster:
        if self._cluster is None:
            from kymamesh.adapters.cluster import Cluster

            self._cluster = Cluster.connect(self.options.kubeconfig, self.options.context)
            self._cluster.server_version()  # fail early and clearly when unreachable
        return self._cluster

    @property
    def helm(self) -> Helm:
        if self._helm is None:
            from kymamesh.adapters.helm import Helm, find_helm

            self._helm = Helm(
                find_helm(self.options.helm),
                self.options.kubeconfig,
                self.options.context,
                fence=self._check_lock,
                release_secrets=self._release_secrets,
                drop_release_secret=self._drop_release_secret,
                output=_helm_line if self.options.verbose else None,
            )
        return self._helm

    def _release_secrets(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """Helm's release records are Secrets: the helm adapter reads them through the API."""
        return self.cluster.list("v1", "Secret", namespace, selector)

    def _drop_release_secret(self, namespace: str, name: str) -> None:
        from kymamesh.adapters.cluster import Ref

        self.cluster.delete(Ref("v1", "Secret", name, namespace))

    @property
    def locked(self) -> bool:
        """Whether this run holds the lock (taken by its first write)."""
        return self._locked

    def before_write(self) -> None:
        """Called before every write: takes the lock once (and never in a dry run)."""
        if self.options.dry_run:
            raise AssertionError("a dry run must not write")
        if self._locked:
            self.cluster.fence()  # early; the write itself counts when it is made
            return
        self.take_lock()

    def take_lock(self) -> None:
        """Take the lock for the rest of the command, waiting while another run holds it."""
        if self._locked:
            return
        self.cluster.ensure_namespace(self.namespace)
        self._stack.enter_context(
            self.cluster.lock(self.namespace, self.options.lock_wait, self.progress.info)
        )
        self._locked = True

    def lock_held_elsewhere(self) -> str | None:
        """For a run that found nothing to change (and so took no lock): who holds the
        lock now, when another run does; one read of the Lease. None for a dry run, a run
        that holds the lock itself or never connected to the cluster."""
        if self._locked or self._cluster is None or self.options.dry_run:
            return None
        return self._cluster.lock_held_by(self.namespace)

    def _check_lock(self) -> None:
        """The fence for writes made through helm: the same check as the cluster adapter's."""
        self._helm_writes += 1
        if self._cluster is not None:
            self._cluster.check_lock()

    @property
    def writes_started(self) -> bool:
        """Whether this run has written to the cluster (the lock's Lease aside): then a
        failure leaves the cluster changed. A refusal made under the lock before the
        first write is still a refusal."""
        return self._helm_writes > 0 or (self._cluster is not None and self._cluster.writes > 0)

    def confirm(self, question: str) -> None:
        """Go on when --yes was given or the user says yes; otherwise refuse."""
        if self.options.yes:
            return
        if not sys.stdin.isatty() or self.options.output == "json":
            raise ConfirmationRequiredError(
                f"{question} (no terminal to ask on)",
                hint="re-run with --yes to confirm",
            )
        import typer

        if not typer.confirm(question, default=False, err=True):
            raise ConfirmationRequiredError(
                f"{question}: declined", hint="nothing was changed by this step"
            )

    @contextmanager
    def session(self) -> Iterator[RunContext]:
        """The command's lifetime: the lock (if taken) is released at the end."""
        try:
            with self._stack:
                yield self
        finally:
            if self._cluster is not None:
                self._cluster.close()


def _helm_line(line: str) -> None:
    """-v: one line of helm's own output, on stderr."""
    print(f"helm: {line}", file=sys.stderr, flush=True)
