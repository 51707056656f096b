"""Command-line errors found while parsing (an unknown option, `--timeout abc`, `-o yaml`)
reported like every other failure: one `error:` and one `hint:` line on stderr, the JSON
result on stdout with `-o json`, exit 2 (usage)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer import _click
from typer.core import TyperCommand, TyperGroup

from kymamesh.context import Options
from kymamesh.errors import ExitCode, UsageError
from kymamesh.output import Result


def wants_json(args: Sequence[str]) -> bool:
    """Whether the command line asks for `-o json`, read without the parser (which failed)."""
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg in ("-o", "--output") and i + 1 < len(args):
            if args[i + 1] == "json":
                return True
        elif arg in ("--output=json", "-ojson", "-o=json"):
            return True
    return False


def _command_of(ctx: Any) -> str:
    """The command words (`upgrade promote`) of the context the error was raised in."""
    words = []
    while ctx is not None and ctx.parent is not None:
        words.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(words))


def _param_hint(exc: Any) -> str:
    """What the option takes, by its metavar (`give --timeout SECONDS`)."""
    param = getattr(exc, "param", None)
    metavar = getattr(param, "metavar", None)
    if param is None or not metavar:
        return ""
    if getattr(param, "param_type_name", "") == "argument":
        return f"give {metavar}"
    return f"give {'/'.join(param.opts)} {metavar}"


def usage_error(exc: Any, args: Sequence[str]) -> UsageError:
    """The parser's error as kymamesh's own usage error, with a hint."""
    ctx = getattr(exc, "ctx", None)
    command = _command_of(ctx)
    help_cmd = f"kymamesh {command} --help" if command else "kymamesh --help"
    parts = [p for p in (_param_hint(exc), f"see `{help_cmd}` for the options") if p]
    return UsageError(exc.format_message(), hint="; ".join(parts))


def report(exc: Any, args: Sequence[str]) -> int:
    """Print a parser error the way `run_command` prints every failure; the exit code."""
    from kymamesh.cli.common import emit

    error = usage_error(exc, args)
    result = Result(command=_command_of(getattr(exc, "ctx", None)))
    result.fail(error)
    emit(result, Options(output="json" if wants_json(args) else "text"))
    return int(ExitCode.USAGE)


class KymameshGroup(TyperGroup):
    """The root command: parser errors go through `report`; exit codes as documented."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        try:
            code = super().main(
                args=argv,
                prog_name=prog_name,
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
        except _click.exceptions.NoArgsIsHelpError as exc:
            exc.show()  # no arguments at all: the help, as before
            code = exc.exit_code
        except _click.exceptions.ClickException as exc:
            code = report(exc, argv)
        except typer.Abort:
            print("aborted", file=sys.stderr)
            code = int(ExitCode.FAILURE)
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


class KymameshCommand(TyperCommand):
    """A command whose arguments show their metavar alone in help (`NAMESPACE`), without
    the Python type typer adds after it (`NAMESPACE <str>`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if getattr(param, "param_type_name", "") == "argument" and param.metavar:
                setattr(param, "display_type_rich", _no_type)  # noqa: B010


def _no_type(ctx: Any) -> str:
    return ""
