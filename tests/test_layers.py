"""The layers (cli -> pipeline -> steps -> adapters) are enforced by import-linter.

`scripts/test.sh` runs `lint-imports` on the project; these tests show that the
contracts in pyproject.toml do catch what they are for: each plants one bad import
in a copy of the package and expects the check to fail, naming the contract.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
LAYERS = "cli -> pipeline -> steps -> adapters"
LIBRARIES = "only the adapters import the kubernetes and helm libraries"


def _lint(tmp_path: Path, module: str | None = None, line: str = "") -> str:
    """Copy the package (and the contracts) to tmp_path, add `line` to `module`, lint it."""
    shutil.copytree(
        ROOT / "kymamesh", tmp_path / "kymamesh", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    if module:
        path = tmp_path / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = tmp_path / module.replace(".", "/") / "__init__.py"
        path.write_text(path.read_text() + "\n" + line + "\n")
    done = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(tmp_path / "pyproject.toml")],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return f"exit {done.returncode}\n{done.stdout}{done.stderr}"


@pytest.fixture(autouse=True)
def _needs_import_linter() -> None:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: install the test extra (pip install -e '.[test]')")


def test_the_package_keeps_both_contracts(tmp_path: Path) -> None:
    out = _lint(tmp_path)
    assert out.startswith("exit 0"), out
    assert f"{LAYERS}" in out and "2 kept, 0 broken" in out, out


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("kymamesh.steps.mtls", "import kymamesh.cli.common", LAYERS),  # a step imports the CLI
        # an import inside a function counts as well
        ("kymamesh.steps.tls", "def _late() -> None:\n    from kymamesh.cli import app", LAYERS),
        # a step imports the runner
        ("kymamesh.steps.addons", "from kymamesh.workflows import pipeline", LAYERS),
        ("kymamesh.workflows.pipeline", "from kymamesh.cli import common", LAYERS),
        ("kymamesh.adapters.cluster", "import kymamesh.steps.base", LAYERS),  # an adapter climbs
        (
            "kymamesh.adapters.lock",
            "from kymamesh.adapters.cluster import Ref",
            LAYERS,
        ),  # the lock, its API
        ("kymamesh.adapters.lock", "import kubernetes", LIBRARIES),
        ("kymamesh.steps.addons", "import kubernetes.client", LIBRARIES),
        ("kymamesh.workflows.status", "from pyhelm3 import Client", LIBRARIES),
        ("kymamesh.cli.install", "import kubernetes", LIBRARIES),
        (
            "kymamesh.adapters.cluster",
            "import pyhelm3",
            LIBRARIES,
        ),  # each adapter only its own library
    ],
)
def test_a_bad_import_breaks_the_check(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    out = _lint(tmp_path, module, line)
    assert out.startswith("exit 1"), out
    assert f"{contract}" in out and "BROKEN" in out, out
    assert module in out.split("Broken contracts", 1)[1], out
