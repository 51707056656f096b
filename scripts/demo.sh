#!/usr/bin/env bash
# The main job on a fresh machine: set up kymamesh, start a local test cluster,
# install the Kyma Service Mesh into it (phase 1 with the project's fixture
# charts, then the Kyma patch), re-run to show it converges, put a sample
# workload into the mesh (istiod runs in the test cluster and injects its
# sidecar), show the status, and stop the cluster. Against a real cluster you
# would run just `kymamesh install` (see the README).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${KYMAMESH_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet -e .
"$VENV/bin/python" tests/cluster/testcluster.py build

DIR="$(mktemp -d /tmp/kymamesh-demo.XXXXXX)"
trap '"$VENV/bin/python" tests/cluster/testcluster.py down --dir "$DIR"' EXIT
"$VENV/bin/python" tests/cluster/testcluster.py up --dir "$DIR"
# shellcheck disable=SC1091
. "$DIR/env"

echo "==> kymamesh install"
"$VENV/bin/kymamesh" install --charts-dir tests/fixtures/charts --domain demo.example.com -y
echo "==> kymamesh install again (converged: nothing to write)"
"$VENV/bin/kymamesh" install --charts-dir tests/fixtures/charts --domain demo.example.com -y
echo "==> kymamesh inject-namespace (a sample workload into the mesh)"
kubectl create namespace shop
kubectl -n shop create deployment cart --image=registry.example/cart:1.0
kubectl -n shop rollout status deployment/cart --timeout=60s
"$VENV/bin/kymamesh" inject-namespace shop --all --wait -y
echo "==> kymamesh status"
"$VENV/bin/kymamesh" status
echo "==> the sample workload's Pod, with the sidecar istiod injected"
kubectl -n shop get pods -l app=cart \
  -o jsonpath='{range .items[*]}{.metadata.name}: {range .spec.containers[*]}{.name} (memory limit {.resources.limits.memory}) {end}{"\n"}{end}'
if ! kubectl -n shop get pods -l app=cart -o jsonpath='{.items[*].spec.containers[*].name}' | grep -qw istio-proxy; then
  echo "demo failed: the cart Pod has no istio-proxy sidecar" >&2
  exit 1
fi
