#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine, then runs them all:
# a virtual environment with the project and its test tools (the versions pinned in
# constraints.txt), the test cluster's binaries (built once, cached in
# ~/.cache/kymamesh/testcluster), lint, types, pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k install`).
# Environment: KYMAMESH_VENV (the venv), KYMAMESH_TEST_WORKERS (pytest processes, 3).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${KYMAMESH_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# Exact versions from constraints.txt (pip, the build backend and every dependency), so a
# new release of any of them cannot change a run; scripts/refresh-constraints.sh remakes it.
"$VENV/bin/python" -m pip install --quiet -c constraints.txt pip
"$VENV/bin/python" -m pip install --quiet -c constraints.txt --build-constraint constraints.txt \
  -e '.[test]'

echo "==> test cluster binaries"
"$VENV/bin/python" tests/cluster/testcluster.py build

echo "==> lint and types"
"$VENV/bin/ruff" check kymamesh tests scripts benchmarks
"$VENV/bin/ruff" format --check kymamesh tests scripts benchmarks
"$VENV/bin/mypy"
"$VENV/bin/lint-imports" --no-cache  # the layers: docs/explanation/architecture.md
"$VENV/bin/python" scripts/gen_reference.py --check

echo "==> tests"
# Three pytest processes (pytest-xdist), each with its own test clusters, take whole files
# (longest first, see tests/conftest.py): more than the two cores, as the cluster tests
# mostly wait for the clusters. KYMAMESH_TEST_WORKERS=0 runs them in this process.
WORKERS="${KYMAMESH_TEST_WORKERS:-3}"
PARALLEL=()
if [ "$WORKERS" != 0 ]; then
  PARALLEL=(-n "$WORKERS" --dist loadfile --no-loadscope-reorder)
fi
exec "$VENV/bin/python" -m pytest "${PARALLEL[@]}" "$@"
