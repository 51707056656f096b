#!/bin/sh
# helm, measured: appends the peak resident set (KiB) of each helm run to the file named
# by KYMAMESH_BENCH_HELM_PEAKS. benchmarks/bench.py points KYMAMESH_HELM here. GNU time
# is the parent of helm, so helm's figure does not include kymamesh's own memory
# (a child's ru_maxrss starts from what its parent had resident when it forked).
exec /usr/bin/time -a -f %M -o "$KYMAMESH_BENCH_HELM_PEAKS" "${KYMAMESH_BENCH_HELM:-helm}" "$@"
