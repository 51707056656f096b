"""Write docs/reference/commands.md from the CLI itself, so the reference never drifts.

Run: python scripts/gen_reference.py        (rewrites the file)
     python scripts/gen_reference.py --check (exit 1 when the file is stale; a test runs this)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer.main

from kymamesh.cli.app import app

TARGET = Path(__file__).resolve().parent.parent / "docs" / "reference" / "commands.md"


def _walk(command: Any, path: list[str]) -> list[tuple[list[str], Any]]:
    found = [(path, command)]
    subcommands = getattr(command, "commands", None) or {}
    for name in sorted(subcommands):
        found += _walk(subcommands[name], [*path, name])
    return found


def _type_name(param: Any, ctx: Any) -> str:
    if param.is_flag:
        return "flag"
    if param.metavar:
        return str(param.metavar).replace("|", "\\|")
    shown = str(param.display_type(ctx)).strip("<>")
    return shown.replace("list[", "").replace("]", "").replace("|", "/") or "text"


def _option_line(param: Any, ctx: Any) -> str:
    if param.param_type_name == "argument":
        required = "required" if param.required else "optional"
        return f"| `{(param.metavar or param.name).upper()}` | argument | {required} |"
    names = ", ".join(f"`{n}`" for n in [*param.opts, *param.secondary_opts])
    help_text = (param.help or "").replace("|", "\\|")
    extra = []
    if param.envvar:
        extra.append(f"env `{param.envvar}`")
    if param.default not in (None, False, (), []) and not param.is_flag:
        default = getattr(param.default, "value", param.default)
        extra.append(f"default `{default}`")
    if param.multiple:
        extra.append("repeatable")
    suffix = f" ({'; '.join(extra)})" if extra else ""
    return f"| {names} | {_type_name(param, ctx)} | {help_text}{suffix} |"


def render() -> str:
    root = typer.main.get_command(app)
    lines = [
        "# Command reference",
        "",
        "Generated from the CLI by `python scripts/gen_reference.py`; "
        "`tests/test_docs.py` fails when it is stale.",
        "",
    ]
    for path, command in _walk(root, ["kymamesh"]):
        if getattr(command, "commands", None) and path != ["kymamesh"]:
            continue
        lines.append(f"## `{' '.join(path)}`")
        lines.append("")
        lines.append((command.help or "").strip())
        lines.append("")
        params = [p for p in command.params if p.name != "help"]
        if params:
            lines += ["| option | type | meaning |", "|---|---|---|"]
            ctx = command.context_class(command)
            lines += [_option_line(p, ctx) for p in params]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET} is stale: run python scripts/gen_reference.py", file=sys.stderr)
            return 1
        return 0
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
