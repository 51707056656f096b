"""The quick paths of the CLI: `version` answered before typer is imported, help without
rich's Markdown; same output as the typer command, and anything else left to typer."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from kymamesh.cli.app import app
from kymamesh.cli.quick import answer_quickly

_PROBE = """
import contextlib, io, sys
from kymamesh.cli import main
sys.argv = ["kymamesh", *sys.argv[1:]]
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main()
    except SystemExit:
        pass
loaded = sorted(m for m in ("typer", "pydantic", "rich.markdown", "kubernetes", "pyhelm3")
                if m in sys.modules)
print(repr((out.getvalue(), loaded)))
"""


def _run(*argv: str) -> tuple[str, list[str]]:
    """The entry point in a fresh interpreter: (stdout, which heavy modules it loaded)."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, check=True
    )
    out, loaded = eval(done.stdout)  # our own repr() of a (str, list[str]) tuple
    return out, loaded


@pytest.mark.parametrize(
    "argv", [["version"], ["version", "-o", "json"], ["version", "--output=text"]]
)
def test_version_is_answered_without_typer_and_says_what_typer_says(argv: list[str]) -> None:
    out, loaded = _run(*argv)
    assert loaded == []
    assert out == CliRunner().invoke(app, argv).output
    assert "kymamesh 0.1.0" in out or '"kymamesh": "0.1.0"' in out


@pytest.mark.parametrize(
    "argv",
    [["version", "-o", "yaml"], ["version", "--help"], ["version", "-o"], ["status"], []],
)
def test_other_command_lines_are_left_to_typer(argv: list[str]) -> None:
    assert answer_quickly(argv) is False


def test_help_does_not_load_rich_markdown_or_the_adapters_libraries() -> None:
    out, loaded = _run("--help")
    assert "Usage: kymamesh" in out and "install" in out
    assert "rich.markdown" not in loaded
    assert "kubernetes" not in loaded and "pyhelm3" not in loaded
