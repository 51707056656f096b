"""Run `kymamesh ARGS` in this process and report its peak memory.

    python benchmarks/peak.py ARGS...

When the command ends, however it ends (its exit runs the atexit handlers, then ends the
process at once: see `kymamesh.cli.end`), writes this process's peak resident set in KiB
(`VmHWM` of /proc/self/status) to the file named by KYMAMESH_BENCH_MEMORY. VmHWM belongs
to the address space made at exec, so unlike `getrusage`'s ru_maxrss it does not include
what the parent process had resident when it started this one. The exit code is the
command's.
"""

from __future__ import annotations

import atexit
import os
import runpy
import sys


def _report() -> None:
    path = os.environ.get("KYMAMESH_BENCH_MEMORY")
    if not path:
        return
    with open("/proc/self/status") as f:
        kib = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    with open(path, "w") as f:
        f.write(f"{kib}\n")


def main() -> None:
    sys.argv = ["kymamesh", *sys.argv[1:]]
    atexit.register(_report)
    runpy.run_module("kymamesh", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
