"""Commands answered before typer is imported (see `kymamesh.cli.version`).

Only exact, plain forms are recognised; for anything else `answer_quickly`
returns False and typer parses the command line as usual (help, errors).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

_FORMATS = {"text": False, "json": True}


def _version_format(args: Sequence[str]) -> bool | None:
    """True for JSON, False for text, None when `args` is not a plain form."""
    if not args:
        return False
    if len(args) == 2 and args[0] in ("-o", "--output") and args[1] in _FORMATS:
        return _FORMATS[args[1]]
    if len(args) == 1:
        for prefix in ("--output=", "-o"):
            value = args[0].removeprefix(prefix)
            if args[0].startswith(prefix) and value in _FORMATS:
                return _FORMATS[value]
    return None


def render_version(as_json: bool) -> str:
    from kymamesh import __version__
    from kymamesh.istio.release import catalog

    table = catalog()
    release = table.resolve(None)
    info: dict[str, object] = {
        "kymamesh": __version__,
        "istio": str(release.version),
        "supportedIstio": [str(line.latest) for line in table.lines],
        "kubernetes": f"{release.kubernetes_min.major}.{release.kubernetes_min.minor}-"
        f"{release.kubernetes_max.major}.{release.kubernetes_max.minor}",
    }
    if as_json:
        return json.dumps(info, indent=2)
    others = ", ".join(str(line.latest) for line in table.lines if line.latest != release.version)
    return (
        f"kymamesh {info['kymamesh']} (Istio {info['istio']}, Kubernetes {info['kubernetes']}"
        + (f"; also Istio {others}" if others else "")
        + ")"
    )


def answer_quickly(argv: Sequence[str]) -> bool:
    """Print the answer and return True when `argv` (without the program) is one we know."""
    if argv[:1] != ["version"]:
        return False
    as_json = _version_format(argv[1:])
    if as_json is None:
        return False
    sys.stdout.write(render_version(as_json) + "\n")
    return True
