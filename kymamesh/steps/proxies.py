"""Step `restart-proxies`: name the workloads whose sidecar is out of date; restart on request.

By default (`restart: false`) the step only lists such workloads, as notes and not as
changes, so a re-run still writes nothing. With `restart: true` (`--restart-proxies`) it
restarts them in batches (`batchSize`, `--restart-batch`: a number or a share such as
`10%`), the system namespaces first (`systemNamespaces`). The planning and the restarts
themselves are `kymamesh.workloads.restarts`, which the canary and `status` use too.
"""

from __future__ import annotations

from typing import ClassVar

from kymamesh.steps.base import ONCE_CHARTS_DONE, Change, StepContext
from kymamesh.workloads import (
    restarts,  # a module: kymamesh.workloads.restarts imports this package's base
)


class RestartProxiesStep:
    """Lists (and with `restart: true` restarts) workloads with out-of-date sidecars."""

    PARAMS: ClassVar[frozenset[str]] = frozenset({"restart", "batchSize", "systemNamespaces"})
    RUNS_ONCE: ClassVar[str] = ONCE_CHARTS_DONE

    def preflight(self, ctx: StepContext) -> str | None:
        restarts.restart_options(ctx.params, ctx.timeout)
        return None

    def check(self, ctx: StepContext) -> list[Change]:
        options = restarts.restart_options(ctx.params, ctx.timeout)
        plan = restarts.plan_restarts(ctx.cluster, ctx.namespace, options, ctx.control_planes)
        for note in plan.notes:
            if note not in ctx.notes:
                ctx.notes.append(note)
        return plan.changes
