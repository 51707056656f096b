"""Every package the code imports is declared in pyproject.toml, and pinned in constraints.txt.

kymamesh/ may import only the standard library and `[project] dependencies`; tests/,
scripts/ and benchmarks/ may also import the `test` extra. A package that arrives only as
another's dependency can disappear with that package's next release.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement (`PyYAML>=6` -> `pyyaml`)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _declared() -> tuple[set[str], set[str]]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    test = {_name(r) for r in project["optional-dependencies"]["test"]}
    return runtime, test


def _imports(folders: list[str]) -> dict[str, set[str]]:
    """Top-level module -> the files that import it (absolute imports only)."""
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "tests/cluster/" in path.as_posix():
                continue  # the test cluster's scripts run before the project is installed
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _local(folders: list[str]) -> set[str]:
    """Modules of the project itself: its package and the files and folders of `folders`."""
    names = {"kymamesh"}
    for folder in folders:
        names.add(folder)
        for path in (ROOT / folder).iterdir():
            names.add(path.stem)
    return names


def _undeclared(folders: list[str], allowed: set[str]) -> list[str]:
    dists = packages_distributions()
    local = _local(folders)
    missing = []
    for module, files in sorted(_imports(folders).items()):
        if module in sys.stdlib_module_names or module in local:
            continue
        providers = {_name(d) for d in dists.get(module, [])}
        if not providers & allowed:
            where = ", ".join(sorted(files)[:3])
            missing.append(f"{module} (from {sorted(providers) or 'nothing installed'}): {where}")
    return missing


def test_the_package_imports_only_declared_dependencies() -> None:
    runtime, _ = _declared()
    assert _undeclared(["kymamesh"], runtime) == []


def test_tests_scripts_and_benchmarks_import_only_declared_packages() -> None:
    runtime, test = _declared()
    assert _undeclared(["tests", "scripts", "benchmarks"], runtime | test) == []


def test_the_check_sees_an_undeclared_import() -> None:
    # urllib3 arrives with kubernetes; without its own line it would count as undeclared.
    runtime, _ = _declared()
    missing = _undeclared(["kymamesh"], runtime - {"urllib3"})
    assert any(m.startswith("urllib3 ") for m in missing), missing


def test_every_declared_package_is_pinned_in_constraints() -> None:
    runtime, test = _declared()
    pinned: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (NAME==VERSION)"
            pinned[_name(name)] = version
    assert sorted((runtime | test | {"pip", "hatchling"}) - set(pinned)) == []
