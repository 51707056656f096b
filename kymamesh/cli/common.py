"""Options every command takes, and the one place that turns errors into exit codes."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import sys
import traceback
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from kymamesh.context import Options, RunContext
from kymamesh.errors import ExitCode, InterruptedRunError, KymameshError, UsageError
from kymamesh.output import Progress, Result

if TYPE_CHECKING:
    from kymamesh.workflows.pipeline import ChartInputs


class OutputFormat(StrEnum):
    text = "text"
    json = "json"


Kubeconfig = Annotated[
    str | None,
    typer.Option(
        "--kubeconfig",
        metavar="FILE",
        envvar="KUBECONFIG",
        help="Kubeconfig file (default: $KUBECONFIG, ~/.kube/config).",
    ),
]
Context = Annotated[
    str | None, typer.Option("--context", metavar="NAME", help="Kubeconfig context to use.")
]
HelmPath = Annotated[
    str | None,
    typer.Option(
        "--helm",
        metavar="FILE",
        envvar="KYMAMESH_HELM",
        help="The helm binary (default: helm on PATH).",
    ),
]
DryRun = Annotated[
    bool, typer.Option("--dry-run", help="Show what would change, as a diff; write nothing.")
]
Output = Annotated[
    OutputFormat,
    typer.Option(
        "--output", "-o", metavar="text|json", help="Result format: text, or json for CI."
    ),
]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Answer yes to confirmations.")]
Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="Show tracebacks and helm's own output.")
]
Timeout = Annotated[
    float,
    typer.Option(
        "--timeout", metavar="SECONDS", help="Seconds to wait for readiness (at least 1)."
    ),
]
LockWait = Annotated[
    float,
    typer.Option(
        "--lock-wait", metavar="SECONDS", help="Seconds to wait for another kymamesh run to finish."
    ),
]
ChartsDir = Annotated[
    Path | None,
    typer.Option(
        "--charts-dir",
        metavar="DIR",
        help="Install from local chart folders or .tgz packages (base, istiod, gateway; dex).",
        file_okay=False,
    ),
]


def _check_repo(value: str | None) -> str | None:
    """A chart repository is an https://, http:// or oci:// URL with a host (what helm takes)."""
    if value is None:
        return None
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in ("https", "http", "oci") or not rest.split("/")[0]:
        raise typer.BadParameter(
            f"{value!r} is not a chart repository URL: give https://HOST/PATH or "
            "oci://HOST/PATH (e.g. oci://ghcr.io/istio/release/charts)"
        )
    return value


def _check_repos(values: list[str] | None) -> list[str] | None:
    for value in values or ():
        _check_repo(value)
    return values


Repo = Annotated[
    list[str] | None,
    typer.Option(
        "--repo",
        metavar="URL",
        callback=_check_repos,
        help="Chart source (https:// Helm repository or oci:// registry) instead of the "
        "release catalog's; repeat it for sources tried in order.",
    ),
]
PlainHttp = Annotated[
    bool,
    typer.Option(
        "--plain-http",
        help="Reach oci:// chart sources over plain HTTP (a registry without TLS).",
    ),
]
ValuesFiles = Annotated[
    list[Path] | None,
    typer.Option(
        "--values",
        "-f",
        metavar="FILE",
        help="Values file (top-level keys: base, istiod, gateway).",
    ),
]
SetValues = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="CHART.KEY=VALUE",
        help="CHART.key=value in Helm's --set syntax, e.g. istiod.pilot.replicaCount=2 "
        "(a=1,b=2: two keys; list[0]=x; key={a,b}: a list; \\, a comma in a value).",
    ),
]


# The options shared by commands, declared once: name -> (annotation, default), in the
# order `--help` lists them, after each command's own options.
SHARED: dict[str, tuple[Any, Any]] = {
    "kubeconfig": (Kubeconfig, None),
    "context": (Context, None),
    "helm": (HelmPath, None),
    "dry_run": (DryRun, False),
    "output": (Output, OutputFormat.text),
    "yes": (Yes, False),
    "verbose": (Verbose, False),
    "timeout": (Timeout, 300.0),
    "lock_wait": (LockWait, 60.0),
}
CLUSTER = ("kubeconfig", "context")  # a command that reads a cluster
REPORT = ("output", "verbose")  # every command that reports a result
WRITES = ("dry_run", "yes", "timeout", "lock_wait")  # a command that writes to a cluster

F = TypeVar("F", bound=Callable[..., None])


def shared_options(*names: str) -> Callable[[F], F]:
    """Give a command the shared options `names` (see SHARED; listed in SHARED's order).
    The command takes a keyword-only `options: Options` instead of them; the CLI shows
    them as if the command declared them itself, after its own."""
    unknown = set(names) - set(SHARED)
    if unknown:
        raise ValueError(f"no shared option {sorted(unknown)}")
    chosen = [n for n in SHARED if n in names]

    def wrap(command: F) -> F:
        own = inspect.signature(command, eval_str=True)
        params = [p for p in own.parameters.values() if p.name != "options"]
        params += [
            inspect.Parameter(
                n, inspect.Parameter.KEYWORD_ONLY, annotation=SHARED[n][0], default=SHARED[n][1]
            )
            for n in chosen
        ]

        @functools.wraps(command)
        def run(**arguments: Any) -> None:
            shared = {n: arguments.pop(n) for n in chosen}
            command(**arguments, options=options_from(shared))

        run.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        return run  # type: ignore[return-value]

    return wrap


def chart_inputs(
    charts_dir: Path | None,
    values: list[Path] | None,
    set_values: list[str] | None,
    repo: list[str] | None,
    plain_http: bool,
    **more: Any,
) -> ChartInputs:
    """Phase 1's inputs out of the chart options (ChartsDir, ValuesFiles, SetValues, Repo,
    PlainHttp) and any more of ChartInputs' fields."""
    from kymamesh.workflows.pipeline import ChartInputs

    return ChartInputs(
        charts_dir=charts_dir,
        values_files=tuple(values or ()),
        set_values=tuple(set_values or ()),
        repository=tuple(repo or ()),
        plain_http=plain_http,
        **more,
    )


def options_from(arguments: Mapping[str, Any]) -> Options:
    """The shared options out of a command's arguments (pass its `locals()`)."""
    names = {f.name for f in dataclasses.fields(Options)}
    values = {k: v for k, v in arguments.items() if k in names}
    if isinstance(values.get("output"), OutputFormat):
        values["output"] = values["output"].value
    return Options(**values)


MAX_WAIT_S = 86400.0  # a day: longer waits are a typo (`1e10`), not a plan


def check_options(options: Options) -> None:
    """Refuse waits that are not a finite number of seconds in range, before anything runs."""
    for flag, value, least in (
        ("--timeout", options.timeout, 1.0),
        ("--lock-wait", options.lock_wait, 0.0),
    ):
        if not math.isfinite(value) or not least <= value <= MAX_WAIT_S:
            raise UsageError(
                f"{flag} {value:g} is not a number of seconds from {least:g} to {MAX_WAIT_S:g}",
                hint=f"give {flag} a number of seconds from {least:g} to {MAX_WAIT_S:g} "
                f"(a day), e.g. {flag} 300",
            )


def run_command(
    command: str,
    options: Options,
    body: Callable[[RunContext], None],
) -> None:
    """Run a command body; print the result; exit with its code. Never returns."""
    import logging

    if options.verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    else:
        # pyhelm3 warns about every failed helm call, including the expected
        # "release: not found"; kymamesh reports real failures itself.
        logging.getLogger("pyhelm3").setLevel(logging.ERROR)
    result = Result(command=command, dry_run=options.dry_run)
    progress = Progress(quiet=False)
    ctx = RunContext(options=options, result=result, progress=progress)
    try:
        check_options(options)
        with ctx.session():
            body(ctx)
            holder = ctx.lock_held_elsewhere() if result.exit_code == ExitCode.OK else None
            if holder is not None:
                # Nothing to change, but another run holds the lock and may be changing the
                # same objects (an `uninstall` started just before this `install`): wait for
                # it, then check again, under the lock.
                progress.info(
                    f"nothing to change, but another kymamesh run holds the lock ({holder}): "
                    "checking again once it has finished"
                )
                ctx.take_lock()
                result = ctx.result = Result(command=command, dry_run=options.dry_run)
                body(ctx)
                result.notes.append(
                    f"another kymamesh run ({holder}) held the lock when this one found "
                    "nothing to change; checked again once it had finished"
                )
    except KymameshError as exc:
        if options.verbose:
            traceback.print_exc()
        result.fail(exc)
        if ctx.writes_started and result.exit_code in (ExitCode.PRECONDITION, ExitCode.FAILURE):
            result.exit_code = ExitCode.PARTIAL  # something was written before it failed
    except KeyboardInterrupt:
        result.fail(
            InterruptedRunError(
                "interrupted (Ctrl-C)"
                + (" after writing to the cluster" if ctx.writes_started else ""),
                hint="re-run the same command; it converges",
            )
        )
    except Exception as exc:  # a bug: say so plainly, with the traceback under -v
        if options.verbose:
            traceback.print_exc()
        result.fail(
            KymameshError(
                f"unexpected error: {type(exc).__name__}: {exc}",
                hint="re-run with -v for the traceback and report it",
            )
        )
    emit(result, options)
    raise typer.Exit(int(result.exit_code))


def emit(result: Result, options: Options) -> None:
    if options.output == OutputFormat.json:
        sys.stdout.write(result.render_json() + "\n")
    else:
        # On one terminal, progress already showed every item: do not repeat them.
        same_terminal = sys.stdout.isatty() and sys.stderr.isatty()
        text = result.render_text(verbose=options.verbose, brief=same_terminal)
        if text:
            sys.stdout.write(text + "\n")
    for error in result.errors:
        print(f"error: {error.message}", file=sys.stderr)
        if error.hint:
            print(f"hint: {error.hint}", file=sys.stderr)
    sys.stdout.flush()
