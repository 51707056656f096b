"""The docs stay true to the CLI: the command reference is generated and must be current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import typer.main

from kymamesh.cli.app import app

ROOT = Path(__file__).resolve().parent.parent


def test_command_reference_is_current() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_reference.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr


def test_every_option_is_in_the_reference() -> None:
    """Belt and braces: fails naming the option that the reference lacks."""
    text = (ROOT / "docs" / "reference" / "commands.md").read_text()
    root = typer.main.get_command(app)
    missing = []
    stack = [("kymamesh", root)]
    while stack:
        path, command = stack.pop()
        for name, sub in (getattr(command, "commands", None) or {}).items():
            stack.append((f"{path} {name}", sub))
        if getattr(command, "commands", None) and path != "kymamesh":
            continue  # a group: its subcommands have the sections
        section = text.split(f"## `{path}`", 1)
        if len(section) != 2:
            missing.append(path)
            continue
        body = section[1].split("\n## ", 1)[0]
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-") and opt != "--help" and f"`{opt}`" not in body:
                    missing.append(f"{path} {opt}")
    assert not missing, f"not in docs/reference/commands.md: {missing}"


def test_exit_codes_doc_lists_every_code() -> None:
    from kymamesh.errors import ExitCode

    text = (ROOT / "docs" / "reference" / "exit-codes.md").read_text()
    for code in ExitCode:
        assert f"| {int(code)} | {code.name} |" in text


def test_readme_names_the_commands_that_take_dry_run_and_yes() -> None:
    """README says which commands take --dry-run and -y; the CLI agrees."""
    import re

    import typer.main

    from kymamesh.cli.app import app

    def walk(command: Any, path: list[str]) -> dict[str, Any]:
        subs = getattr(command, "commands", None) or {}
        if not subs:
            return {" ".join(path): command}
        found: dict[str, Any] = {}
        for name, sub in subs.items():
            found.update(walk(sub, [*path, name]))
        return found

    commands = walk(typer.main.get_command(app), [])
    taking = {
        name
        for name, command in commands.items()
        if {"--dry-run", "--yes"} <= {o for p in command.params for o in p.opts}
    }
    readme = (ROOT / "README.md").read_text()
    sentence = readme[readme.index("The commands that write to the cluster") :].split(
        "take `--dry-run`"
    )[0]
    assert set(re.findall(r"`([a-z -]+)`", sentence)) == taking
    for name, command in commands.items():
        opts = {o for p in command.params for o in p.opts}
        assert name == "version" or {"--output", "--verbose"} <= opts, name
