"""Where the project's data lives: `resources/istio/`, `resources/dex/` and `patches/`.

In a wheel they ship inside the package (`kymamesh/_data/`); in a checkout
(editable install, tests) they are the folders at the repository root.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from kymamesh.adapters import yamlfast

_PACKAGE = Path(__file__).resolve().parent


@cache
def data_root() -> Path:
    bundled = _PACKAGE / "_data"
    if (bundled / "resources").is_dir():
        return bundled
    return _PACKAGE.parent


def resources_dir() -> Path:
    return data_root() / "resources" / "istio"


def dex_dir() -> Path:
    """The pinned Dex release (`resources/dex/`), beside the Istio one."""
    return data_root() / "resources" / "dex"


def patches_dir() -> Path:
    return data_root() / "patches"


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yamlfast.load(fh)
