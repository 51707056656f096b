#!/usr/bin/env bash
# Remakes constraints.txt: the exact versions of every package the project and its tests
# install (pip and the build backend included), resolved afresh from pyproject.toml in a
# throw-away virtual environment. scripts/test.sh (and so CI) installs with it, so a new
# release of a dependency reaches main only through a commit of this file.
#
# Run it on the first working day of each month (and whenever pyproject.toml's dependencies
# change), then `bash scripts/test.sh` with the new file, and commit it if the suite passes
# (docs/how-to/develop.md).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

"$PYTHON" -m venv "$tmp/venv"
py="$tmp/venv/bin/python"
"$py" -m pip install --quiet --upgrade pip
# The build backend (build-system.requires), so that --build-constraint pins it too.
mapfile -t build_requires < <("$py" -c '
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["build-system"]["requires"]))
')
"$py" -m pip install --quiet -e '.[test]' "${build_requires[@]}"
"$py" -m pip check

{
  echo "# Made by scripts/refresh-constraints.sh on $(date -u +%Y-%m-%d) with $("$py" --version)."
  echo "# Do not edit by hand: change pyproject.toml, then run the script again."
  "$py" -m pip freeze --all --exclude-editable --exclude setuptools --exclude wheel
} >constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt: $(grep -cv '^#' constraints.txt) packages"
git --no-pager diff --stat -- constraints.txt 2>/dev/null || true
