"""`kymamesh version`: this tool's version and the Istio release it installs.

Scripts ask for it often, so `main()` answers the plain forms (`version`, with
`-o/--output text|json`) through `kymamesh.cli.quick` before typer is imported:
typer builds a pydantic adapter for every option it parses, which costs more
than the rest of the command. Anything else (`--help`, a bad value) goes through
typer as usual; both paths print `render_version()`.
"""

from __future__ import annotations

import typer

from kymamesh.cli.common import Output, OutputFormat
from kymamesh.cli.quick import render_version


def version(output: Output = OutputFormat.text) -> None:
    """Print kymamesh's version and the supported Istio release."""
    typer.echo(render_version(output == OutputFormat.json))
