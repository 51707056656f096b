"""Run `kymamesh ARGS` in this process and report its peak memory.

    python benchmarks/peak.py ARGS...

Writes "SELF_KIB CHILDREN_KIB" to the file named by KYMAMESH_BENCH_MEMORY when the
command ends, however it ends: the peak resident set of this process (kymamesh itself)
and of its largest child (helm). The exit code is the command's.
"""

from __future__ import annotations

import os
import resource
import runpy
import sys


def _report() -> None:
    path = os.environ.get("KYMAMESH_BENCH_MEMORY")
    if not path:
        return
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(path, "w") as f:
        f.write(f"{own} {children}\n")


def main() -> None:
    sys.argv = ["kymamesh", *sys.argv[1:]]
    try:
        runpy.run_module("kymamesh", run_name="__main__", alter_sys=True)
    finally:
        _report()


if __name__ == "__main__":
    main()
