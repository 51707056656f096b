"""The command-line layer: one thin module per command; the work is in the pipeline."""

from __future__ import annotations


def main() -> None:
    """The `kymamesh` command: a quick answer when there is one, else the typer app."""
    import sys

    from kymamesh.cli.quick import answer_quickly

    if answer_quickly(sys.argv[1:]):
        return
    from kymamesh.cli.app import main as run

    run()
